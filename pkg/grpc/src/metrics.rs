//! A minimal Prometheus endpoint: `GET /metrics` over plain HTTP/1.1, and helpers to write the
//! text exposition format (version 0.0.4).
//!
//! Why by hand and not a metrics crate or hyper's server: the daemons expose a few dozen
//! counters that already live in atomics; a scrape is one request per connection from a
//! collector on a management address. A small handler with hard bounds (request head size,
//! read timeout, concurrent scrapes) is easier to reason about than a general HTTP server on
//! a second port, and adds no dependency.
//!
//! The endpoint is unauthenticated, like every Prometheus exporter: it is off by default and
//! meant for a loopback or management address. It reveals counts and certificate expiry
//! times, never names, serials or keys.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// The largest request head read; a scraper sends a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long a client gets to send its request head and read the answer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes served at the same time; more wait in the listen backlog.
pub const MAX_CONCURRENT_SCRAPES: usize = 16;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the current metrics as exposition text; called once per scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A bound, not yet serving metrics listener.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves scrapes until `shutdown` completes; open scrapes are dropped then.
    pub fn spawn(
        self,
        render: Render,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        tokio::spawn(self.serve(render, shutdown))
    }

    /// Serves scrapes until the returned guard is dropped.
    pub fn serve_until_dropped(self, render: Render) -> ServingGuard {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = self.spawn(render, async {
            let _ = stopped.await;
        });
        ServingGuard {
            _stop: stop,
            _task: task,
        }
    }

    async fn serve(self, render: Render, shutdown: impl Future<Output = ()> + Send) {
        info!(addr = %self.local_addr, "Serving metrics on GET /metrics");
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES));
        let mut scrapes = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Take a permit before accepting, so excess scrapers wait in the kernel's backlog
            // instead of as tasks here.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = scrapes.join_next(), if !scrapes.is_empty() => continue,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let render = Arc::clone(&render);
                    scrapes.spawn(async move {
                        let served =
                            tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &render)).await;
                        match served {
                            Ok(Ok(())) => {}
                            Ok(Err(err)) => {
                                debug!(peer.addr = %peer, error = %err, "Scrape failed")
                            }
                            Err(_) => debug!(peer.addr = %peer, "Scrape timed out"),
                        }
                        drop(permit);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %err, "Metrics accept failed");
                    tokio::time::sleep(crate::ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
        scrapes.shutdown().await;
    }
}

/// Reads one request head and answers it; the connection is closed afterwards.
async fn answer(mut stream: TcpStream, render: &Render) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break false;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_HEAD {
            break false;
        }
    };
    let reply = if complete {
        route(&head)
    } else if head.len() > MAX_REQUEST_HEAD {
        Reply::Error("431 Request Header Fields Too Large")
    } else {
        // The client hung up mid-request: nobody to answer.
        return Ok(());
    };
    let (status, content_type, body) = match reply {
        Reply::Metrics => {
            // Rendering may read certificate files: keep it off the async workers.
            let render = Arc::clone(render);
            let body = tokio::task::spawn_blocking(move || render())
                .await
                .map_err(io::Error::other)?;
            ("200 OK", CONTENT_TYPE, body)
        }
        Reply::Head => ("200 OK", CONTENT_TYPE, String::new()),
        Reply::Error(status) => (status, "text/plain; charset=utf-8", format!("{status}\n")),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Lingering close: read what the client still sends (bounded) so that closing with unread
    // input does not reset the connection before the client has read the answer.
    let mut drained = 0;
    while drained < MAX_DRAIN {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// Most bytes read and discarded after answering; see [`answer`].
const MAX_DRAIN: usize = 64 * 1024;

/// What to answer a complete request head with.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// `GET /metrics`: the rendered metrics.
    Metrics,
    /// `HEAD /metrics`: the headers only.
    Head,
    /// Anything else: this status line, with itself as the body.
    Error(&'static str),
}

fn route(head: &[u8]) -> Reply {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Reply::Error("400 Bad Request");
    };
    // A query string (`?name[]=…`) is accepted and ignored: the whole set is always returned.
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Reply::Metrics,
        ("HEAD", "/metrics") => Reply::Head,
        (_, "/metrics") => Reply::Error("405 Method Not Allowed"),
        _ => Reply::Error("404 Not Found"),
    }
}

/// Writes the exposition text: one `# HELP` / `# TYPE` header per family, then its samples.
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

impl TextEncoder {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family; `kind` is `counter` or `gauge`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample with its labels (`name{a="x",b="y"} value`); label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The finished document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Label values escape backslash, double quote and line feed (the format's three escapes).
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Stops a metrics endpoint when dropped (the closed channel ends its accept loop).
#[derive(Debug)]
pub struct ServingGuard {
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<()>,
}

/// The earliest NotAfter (Unix seconds) among the certificates in a PEM file, for the
/// `basalt_cert_not_after_seconds` gauges. For a chain that is the leaf or an intermediate that
/// runs out first; for a CA bundle, the first CA to expire. `None` when the file cannot be read
/// or holds no certificate (mid-rotation: the sample is left out).
pub fn earliest_not_after(path: &Path) -> Option<i64> {
    let bytes = std::fs::read(path).ok()?;
    basalt_pki::certificates_from_pem(&bytes)
        .ok()?
        .iter()
        .filter_map(|der| basalt_pki::Identity::from_der(der).ok())
        .map(|identity| identity.not_after.unix_timestamp())
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_escape_label_values_and_families_have_help_and_type() {
        let mut text = TextEncoder::new();
        text.family("x_total", "counter", "Things.");
        text.sample("x_total", &[("a", "q\"b\\c\nd"), ("b", "y")], 3);
        text.sample("x_total", &[], 0);
        assert_eq!(
            text.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\c\\nd\",b=\"y\"} 3\nx_total 0\n"
        );
    }

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Reply::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"), Reply::Metrics);
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Reply::Head);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Reply::Error("405 Method Not Allowed")
        );
        assert_eq!(
            route(b"GET / HTTP/1.1\r\n\r\n"),
            Reply::Error("404 Not Found")
        );
        assert_eq!(route(b"\r\n\r\n"), Reply::Error("400 Bad Request"));
        assert_eq!(
            route(&[0xff, 0xfe, b'\n', b'\n']),
            Reply::Error("400 Bad Request")
        );
    }
}
