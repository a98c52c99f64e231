//! Forwarding to machined: the HTTP/2 request goes to machined's unix socket as it came, bytes
//! untouched, with apid's own `talos-role` and `basalt-caller`.
//!
//! Nothing here knows a method: unary, server-streaming, client-streaming and bidi calls all
//! work the same way, because the request and response bodies are streamed through (HTTP/2
//! flow control gives backpressure in both directions) and the response's headers, body and
//! trailers come back unchanged. Dropping the client's stream drops the upstream request and
//! response, which resets the upstream stream, so machined sees the cancellation.
//!
//! The connection to machined is a tonic `Channel` over a unix-socket connector, created lazily:
//! apid starts before machined's socket exists, and when machined restarts the next call simply
//! reconnects. A failed connect surfaces at once as `Unavailable`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use basalt_grpc::{LimitedBody, MAX_MESSAGE_SIZE};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

use crate::audit::AuditGuard;
use crate::body::{Enforce, ResponseBody};
use crate::error::Error;
use crate::peer::CallIdentity;

/// HTTP/2 stream window towards machined: Talos's `InitialWindowSize` (65535 × 32).
const STREAM_WINDOW: u32 = 65_535 * 32;
/// HTTP/2 connection window towards machined: Talos's `InitialConnWindowSize` (65535 × 16).
const CONNECTION_WINDOW: u32 = 65_535 * 16;
/// A unix-socket connect either succeeds or fails at once; this only guards a wedged kernel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstream: machined on its unix socket.
#[derive(Clone, Debug)]
pub(crate) struct Machined {
    channel: Channel,
    socket: PathBuf,
}

impl Machined {
    /// A lazily connected channel to `socket`; nothing is dialled until the first call.
    pub(crate) fn new(socket: &Path) -> Self {
        let path = Arc::new(socket.to_path_buf());
        // The authority is only a label; the connector ignores the URI.
        let channel = Endpoint::from_static("http://machined")
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = Arc::clone(&path);
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(&*path).await?)) }
            }));
        Self {
            channel,
            socket: socket.to_path_buf(),
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
        let upstream = Request::from_parts(parts, Body::new(body));

        let mut channel = self.channel.clone();
        let call_upstream = async move {
            channel.ready().await?;
            channel.call(upstream).await
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
            Ok(response) => ResponseBody::wrap(
                response,
                Some(audit),
                Enforce {
                    message_limit: true,
                    deadline,
                    request_too_large: Some(request_too_large),
                },
            ),
            Err(err) => {
                let err = match request_too_large.get() {
                    Some(too_large) => Error::RequestTooLarge(*too_large),
                    None => Error::MachinedUnreachable {
                        socket: self.socket.clone(),
                        source: Box::new(err),
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
}
