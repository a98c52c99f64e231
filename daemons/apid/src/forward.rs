//! Forwarding to machined: the HTTP/2 request goes to machined's unix socket as it came, bytes
//! untouched, with apid's own `talos-role` and `basalt-caller`.
//!
//! Nothing here knows a method: unary, server-streaming, client-streaming and bidi calls all
//! work the same way, because the request and response bodies are streamed through (HTTP/2
//! flow control gives backpressure in both directions) and the response's headers, body and
//! trailers come back unchanged. Dropping the client's stream drops the upstream request and
//! response, which resets the upstream stream, so machined sees the cancellation.
//!
//! The connection to machined is one hyper HTTP/2 client connection over the unix socket,
//! shared by every call. Calls go straight to hyper's [`SendRequest`] (cheap to clone): no
//! tower `Buffer` task, no reconnect layer in between, because every hand-off between tasks
//! is a possible thread wake-up and apid's latency budget is a few of those. The connection is
//! made lazily (apid starts before machined's socket exists) and again by the first call after
//! it closed (machined restarted); a failed connect surfaces at once as `Unavailable`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use basalt_grpc::{LimitedBody, MAX_MESSAGE_SIZE};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tracing::debug;

use crate::audit::AuditGuard;
use crate::body::{Enforce, ResponseBody};
use crate::error::{BoxError, Error};
use crate::peer::CallIdentity;

/// HTTP/2 stream window towards machined: Talos's `InitialWindowSize` (65535 × 32).
const STREAM_WINDOW: u32 = 65_535 * 32;
/// HTTP/2 connection window towards machined: Talos's `InitialConnWindowSize` (65535 × 16).
const CONNECTION_WINDOW: u32 = 65_535 * 16;
/// A unix-socket connect either succeeds or fails at once; this only guards a wedged kernel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The `:authority` machined sees; only a label on a unix socket.
const AUTHORITY: &str = "machined";

/// The request body sent upstream: the client's body under the message limit.
type UpstreamBody = LimitedBody<Incoming>;

/// The upstream: machined on its unix socket.
#[derive(Debug)]
pub(crate) struct Machined {
    socket: PathBuf,
    builder: http2::Builder<TokioExecutor>,
    /// The open connection, if any. Held only to clone or replace the sender, never across an
    /// `.await`.
    current: Mutex<Option<SendRequest<UpstreamBody>>>,
    /// Serializes connecting, so a burst of calls after machined came back opens one
    /// connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Machined {
    /// A lazily connected client for `socket`; nothing is dialled until the first call.
    pub(crate) fn new(socket: &Path) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        Self {
            socket: socket.to_path_buf(),
            builder,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Forwards one call. `request` has already had the client's internal metadata removed.
    pub(crate) async fn forward(
        &self,
        request: Request<Incoming>,
        call: &CallIdentity,
        audit: AuditGuard,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = request.into_parts();
        call.apply(&mut parts.headers);
        parts.uri = upstream_uri(parts.uri);
        let timeout = parts
            .headers
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = timeout.map(|timeout| (Instant::now() + timeout, timeout));

        // The client's messages are checked as they stream to machined; an oversized one ends
        // the upstream request with an error and is reported here.
        let request_too_large = Arc::new(OnceLock::new());
        let body = LimitedBody::new(body, MAX_MESSAGE_SIZE).with_report(request_too_large.clone());
        let upstream = Request::from_parts(parts, body);

        // Dropping this future (deadline, or the client went away) cancels the upstream stream.
        let call_upstream = async {
            let mut sender = self.sender().await?;
            sender
                .send_request(upstream)
                .await
                .map_err(|err| Box::new(err) as BoxError)
        };
        let result = match deadline {
            Some((at, timeout)) => match tokio::time::timeout_at(at, call_upstream).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    return ResponseBody::error(Error::DeadlineExceeded { timeout }, Some(audit));
                }
            },
            None => call_upstream.await,
        };
        match result {
            Ok(response) => ResponseBody::upstream(
                response,
                audit,
                Enforce {
                    message_limit: true,
                    deadline,
                    request_too_large: Some(request_too_large),
                },
            ),
            Err(source) => {
                let err = match request_too_large.get() {
                    Some(too_large) => Error::RequestTooLarge(*too_large),
                    None => Error::MachinedUnreachable {
                        socket: self.socket.clone(),
                        source,
                    },
                };
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "Forwarding to machined failed"
                );
                ResponseBody::error(err, Some(audit))
            }
        }
    }

    /// The open connection's sender, connecting first if there is none or it closed.
    async fn sender(&self) -> Result<SendRequest<UpstreamBody>, BoxError> {
        if let Some(sender) = self.open_sender() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        // Another call may have connected while this one waited.
        if let Some(sender) = self.open_sender() {
            return Ok(sender);
        }
        let sender = self.connect().await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
        Ok(sender)
    }

    fn open_sender(&self) -> Option<SendRequest<UpstreamBody>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.socket))
            .await
            .map_err(|elapsed| Box::new(elapsed) as BoxError)??;
        let (sender, connection) = self.builder.handshake(TokioIo::new(stream)).await?;
        debug!(machined.socket = %self.socket.display(), "Connected to machined");
        // The connection task ends when machined closes the socket or every sender is gone;
        // `is_closed` then tells the next call to reconnect.
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(
                    error = &err as &dyn std::error::Error,
                    "Connection to machined ended with an error"
                );
            }
        });
        Ok(sender)
    }
}

/// `http://machined/<path>`: the scheme and authority hyper's HTTP/2 client needs, the path
/// (and query, if any) as the client sent it.
fn upstream_uri(uri: Uri) -> Uri {
    let mut parts = uri.into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(Authority::from_static(AUTHORITY));
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, which is all `from_parts` checks.
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://machined/"))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
/// A malformed value is ignored (the header is still forwarded; machined decides).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_upstream_uri_keeps_the_path() {
        let uri = upstream_uri(Uri::from_static(
            "https://10.0.0.1:50000/machine.MachineService/Version",
        ));
        assert_eq!(uri, "http://machined/machine.MachineService/Version");
        let uri = upstream_uri(Uri::from_static("/a.B/C?x=1"));
        assert_eq!(uri, "http://machined/a.B/C?x=1");
    }
}
