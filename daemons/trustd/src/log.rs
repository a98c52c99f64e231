//! `RequestLog`: one span and one completion event per call.
//!
//! The span carries `grpc.method`, `peer.addr` (from the connection) and a `request_id`;
//! everything logged while the call runs (admission refusals, the issued certificate, an
//! internal error's chain) is inside it. It is a **debug** span: at the default `info` level it
//! costs nothing, where an enabled one cost about 16 µs of CPU per certificate with the JSON
//! log format (its fields are serialized at creation and again into every event;
//! docs/BENCHMARKS.md). Events logged inside the call name the peer themselves.
//!
//! The completion event adds `grpc.code` and `duration_ms`: at debug level for `OK` (the
//! handler already logged the issued certificate at info), at info for anything else, with the
//! span's fields repeated so a refusal is complete without the span.
//!
//! No metadata is ever logged, so the `token` cannot reach a log through this layer.
//!
//! The code is read from the response headers: every refusal and every handler error is a
//! trailers-only response with `grpc-status` in the headers. A response without it carries the
//! handler's one message and is `OK` unless encoding that message fails, which for this service
//! (two byte fields) cannot happen.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument as _, debug, debug_span, info};

use crate::admission::peer_addr;

/// Builds [`RequestLog`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RequestLogLayer;

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct RequestLog<S> {
    inner: S,
}

/// Process-wide call counter; ids only need to tell concurrent calls apart in the log.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResBody> Service<http::Request<B>> for RequestLog<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let request_id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
        let peer = peer_addr(&request);
        let peer = move || peer.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let method = request.uri().path().to_owned();
        let span = debug_span!(
            "rpc",
            grpc.method = %method,
            peer.addr = %peer(),
            request_id,
        );
        let started = Instant::now();
        let call = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let result = call.await;
                if let Ok(response) = &result {
                    let code = grpc_code(response);
                    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                    if code == Code::Ok {
                        debug!(grpc.code = ?code, duration_ms, "Call completed");
                    } else {
                        info!(
                            grpc.method = %method,
                            peer.addr = %peer(),
                            request_id,
                            grpc.code = ?code,
                            duration_ms,
                            "Call completed"
                        );
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// The status of a response whose code is in its headers; `Ok` otherwise (see module docs).
fn grpc_code<B>(response: &http::Response<B>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_comes_from_trailers_only_headers() {
        let refused: http::Response<()> = tonic::Status::unauthenticated("x").into_http();
        assert_eq!(grpc_code(&refused), Code::Unauthenticated);
        assert_eq!(grpc_code(&http::Response::new(())), Code::Ok);
    }
}
