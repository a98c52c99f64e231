//! `CatchPanic`: a panic while handling a call becomes an `Internal` response.
//!
//! Without it, a panic in the handler kills the HTTP/2 stream's task and the caller sees a
//! reset stream with no status. trustd's code does not panic on input (no `unwrap` outside
//! tests); this is defence in depth, and it logs the panic inside the call's span.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracing::error;

/// Builds [`CatchPanic`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct CatchPanic<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResBody> Service<http::Request<B>> for CatchPanic<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(call) => Box::pin(async move {
                match (CatchUnwind {
                    inner: Box::pin(call),
                })
                .await
                {
                    Ok(result) => result,
                    Err(panic) => Ok(panicked(&*panic)),
                }
            }),
            Err(panic) => {
                let response = panicked(&*panic);
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

/// Logs the panic and builds the `Internal` response.
fn panicked<B: Default>(panic: &(dyn Any + Send)) -> http::Response<B> {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>");
    error!(panic = message, "Handler panicked");
    tonic::Status::internal("internal error; see the server log").into_http()
}

/// Polls `inner`, turning a panic during a poll into `Err(payload)`.
struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::Code;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_internal() {
        let service =
            CatchPanicLayer.layer(tower::service_fn(|request: http::Request<()>| async move {
                if request.uri().path() == "/boom" {
                    panic!("handler bug");
                }
                Ok::<_, Infallible>(http::Response::new(()))
            }));
        let request = http::Request::builder().uri("/boom").body(()).unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::Internal);
        let request = http::Request::builder().uri("/fine").body(()).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none());
    }
}
