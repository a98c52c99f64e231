//! machined's tower layers: who may call, with which roles, and what is logged.
//!
//! [`Stack::layer`] is the one place where the order is written. Every rejection is a gRPC
//! `Status` turned into an HTTP response (`Status::into_http`), never an error value: tonic
//! would report any other error as `Unknown` with its raw text.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use basalt_authz::{Decision, RoleSet};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tonic::body::Body;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::config::AllowedUids;
use crate::services::SERVED;

/// The roles of the caller, read from `talos-role` by [`Roles`] and stored in the request's
/// extensions for [`Authorize`] (and any handler that needs them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CallerRoles(pub(crate) RoleSet);

/// machined's complete request pipeline, as one tower layer.
#[derive(Clone, Debug)]
pub(crate) struct Stack {
    allowed_uids: Arc<AllowedUids>,
}

impl Stack {
    pub(crate) fn new(allowed_uids: AllowedUids) -> Self {
        Stack {
            allowed_uids: Arc::new(allowed_uids),
        }
    }
}

/// The service [`Stack`] builds around the router.
pub(crate) type Stacked<S> = RequestLog<
    CatchPanic<
        Guard<
            PeerCheck,
            Guard<Roles, Guard<Authorize, Guard<NotImplemented, Guard<RequestLimit, S>>>>,
        >,
    >,
>;

impl<S> Layer<S> for Stack {
    type Service = Stacked<S>;

    /// Order: outermost first; each layer sees only requests the ones above it let through.
    fn layer(&self, router: S) -> Self::Service {
        // 1. Times every call and records the status actually sent, rejections included.
        RequestLog::new(
            // 2. A panicking handler answers Internal instead of silently dropping the stream.
            CatchPanic::new(
                // 3. Only allowed unix peers (SO_PEERCRED uid) may talk to machined at all.
                Guard::new(
                    PeerCheck {
                        allowed: Arc::clone(&self.allowed_uids),
                    },
                    // 4. Roles come from `talos-role` only, trusted because step 3 passed.
                    Guard::new(
                        Roles,
                        // 5. The shared rules table decides; methods without a rule: admin only.
                        Guard::new(
                            Authorize,
                            // 6. Methods basalt does not serve yet answer Unimplemented before
                            //    their request is decoded.
                            Guard::new(
                                NotImplemented,
                                // 7. A request larger than its method takes is refused as it
                                //    arrives, before tonic buffers and decodes it.
                                Guard::new(RequestLimit, router),
                            ),
                        ),
                    ),
                ),
            ),
        )
    }
}

// === checks ===

/// A request-level decision: let the request through (possibly annotating its extensions) or
/// answer with a `Status`.
pub(crate) trait Check: Clone + Send + Sync + 'static {
    /// `Err(status)` rejects the request with that status.
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status>;
}

/// Step 3: the peer's uid (SO_PEERCRED, via tonic's `UdsConnectInfo`) must be allowed.
#[derive(Clone, Debug)]
pub(crate) struct PeerCheck {
    allowed: Arc<AllowedUids>,
}

impl Check for PeerCheck {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        match peer_uid(request) {
            Some(uid) if self.allowed.contains(uid) => Ok(()),
            Some(uid) => Err(Status::permission_denied(format!(
                "peer uid {uid} is not allowed to call machined"
            ))),
            None => Err(Status::permission_denied(
                "peer credentials are unavailable; machined only serves local unix peers",
            )),
        }
    }
}

/// Step 4: the caller's roles from the `talos-role` metadata (Talos's `MetadataOnly` injector).
///
/// One header value per role is Talos's form; a comma-separated list in one value is accepted
/// too. Values that are not visible ASCII are ignored. No header means no roles, so the next
/// step denies everything.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Roles;

impl Check for Roles {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let roles = roles_from_metadata(request.headers());
        request.extensions_mut().insert(CallerRoles(roles));
        Ok(())
    }
}

/// Step 5: `basalt_authz::authorize` on the full method path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Authorize;

impl Check for Authorize {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let empty = CallerRoles::default();
        let roles = request.extensions().get::<CallerRoles>().unwrap_or(&empty);
        match basalt_authz::authorize(request.uri().path(), &roles.0) {
            Decision::Allow => Ok(()),
            Decision::Deny(denial) => Err(Status::permission_denied(denial.to_string())),
        }
    }
}

/// Step 6: every method outside [`SERVED`] answers Unimplemented, naming the method.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotImplemented;

impl Check for NotImplemented {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let path = request.uri().path();
        if SERVED.contains(&path) {
            return Ok(());
        }
        Err(Status::unimplemented(not_implemented_message(path)))
    }
}

/// Step 7: each request message is held to its method's limit ([`request_limit`]) as it
/// arrives. tonic's own limit is per service, and 32 MiB must stay possible for a machine
/// config; but prost decodes a 32 MiB `DiskUsageRequest` of one-byte paths into some 11
/// million `String`s (about 600 MB), so every method that takes no bulk data gets far less.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestLimit;

/// The most bytes one request message of `path` may hold.
pub(crate) fn request_limit(path: &str) -> usize {
    match path {
        // A machine config, and the diagnostics that move payloads on purpose.
        "/machine.MachineService/ApplyConfiguration"
        | "/basalt.v1.DiagnosticsService/Echo"
        | "/basalt.v1.DiagnosticsService/Collect" => crate::MAX_MESSAGE_SIZE,
        // Paths, ids, options: DiskUsage's 256 paths of 4 KiB (PATH_MAX) fit.
        _ => SMALL_REQUEST_LIMIT,
    }
}

/// The request limit of every method that takes no bulk data.
pub(crate) const SMALL_REQUEST_LIMIT: usize = 2 * 1024 * 1024;

impl Check for RequestLimit {
    fn check(&self, request: &mut Request<Body>) -> Result<(), Status> {
        let limit = request_limit(request.uri().path());
        if limit < crate::MAX_MESSAGE_SIZE {
            let body = std::mem::take(request.body_mut());
            *request.body_mut() = Body::new(LimitedRequest {
                inner: basalt_grpc::LimitedBody::new(body, limit),
            });
        }
        Ok(())
    }
}

/// A request body held to its method's limit; the refusal is a `Status`, which tonic answers
/// as it is.
struct LimitedRequest {
    inner: basalt_grpc::LimitedBody<Body>,
}

impl http_body::Body for LimitedRequest {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|err| match err {
                basalt_grpc::LimitedBodyError::Inner(status) => status,
                basalt_grpc::LimitedBodyError::TooLarge(too_large) => {
                    Status::resource_exhausted(format!(
                        "request message of {} bytes exceeds this method's limit of {} bytes",
                        too_large.size, too_large.limit
                    ))
                }
            })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The text of the Unimplemented answer for `path`.
pub(crate) fn not_implemented_message(path: &str) -> String {
    if basalt_api::METHODS.iter().any(|m| m.path == path) {
        format!("basalt does not implement {path} yet")
    } else {
        format!("machined does not serve {path}")
    }
}

/// The roles in `talos-role`: every value, each split at commas, parsed with Talos's rules.
pub(crate) fn roles_from_metadata(headers: &HeaderMap) -> RoleSet {
    RoleSet::parse(
        headers
            .get_all(basalt_authz::metadata::ROLE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(',')),
    )
}

/// The peer's uid, when the connection is a unix socket whose credentials the kernel reported.
fn peer_uid<B>(request: &Request<B>) -> Option<u32> {
    request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid())
}

// === impl Guard ===

/// Runs a [`Check`] before the inner service; a rejection never reaches it.
#[derive(Clone, Debug)]
pub(crate) struct Guard<C, S> {
    check: C,
    inner: S,
}

impl<C, S> Guard<C, S> {
    fn new(check: C, inner: S) -> Self {
        Guard { check, inner }
    }
}

impl<C, S> Service<Request<Body>> for Guard<C, S>
where
    C: Check,
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.check.check(&mut request) {
            Ok(()) => GuardFuture::Passed {
                future: self.inner.call(request),
            },
            Err(status) => GuardFuture::Rejected {
                response: Some(status.into_http()),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Guard`]: the inner service's, or an immediate rejection.
    #[project = GuardProjection]
    pub(crate) enum GuardFuture<F> {
        /// The check passed; the inner service answers.
        Passed { #[pin] future: F },
        /// The check failed; this response answers (taken once).
        Rejected { response: Option<Response<Body>> },
    }
}

impl<F, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProjection::Passed { future } => future.poll(cx),
            GuardProjection::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Polled again after completion: a caller bug; answer rather than panic.
                None => Poll::Ready(Ok(Status::internal("response already taken").into_http())),
            },
        }
    }
}

// === impl CatchPanic ===

/// Turns a panic while producing the response into an `Internal` status (Talos's recovery
/// interceptor). Panics inside a response stream are not caught: they end that stream.
#[derive(Clone, Debug)]
pub(crate) struct CatchPanic<S> {
    inner: S,
}

impl<S> CatchPanic<S> {
    fn new(inner: S) -> Self {
        CatchPanic { inner }
    }
}

impl<S> Service<Request<Body>> for CatchPanic<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        CatchPanicFuture {
            future: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`CatchPanic`].
    pub(crate) struct CatchPanicFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F, E> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut future = self.project().future;
        // AssertUnwindSafe: after a panic the future is never polled again, so no broken
        // invariant inside it can be observed.
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("non-string panic payload");
                tracing::error!(panic = message, "Handler panicked");
                Poll::Ready(Ok(Status::internal(
                    "internal error in machined; see its log",
                )
                .into_http()))
            }
        }
    }
}

// === impl RequestLog ===

/// One span per call and one completion event with method, peer uid, gRPC code and duration.
///
/// The code is read from the response headers (trailers-only answers, e.g. every rejection) or
/// from the trailers at the end of the body, so streaming calls are timed to their last message.
/// Level: debug for OK, warn for PermissionDenied/Unauthenticated, info for other codes.
#[derive(Clone, Debug)]
pub(crate) struct RequestLog<S> {
    inner: S,
}

impl<S> RequestLog<S> {
    fn new(inner: S) -> Self {
        RequestLog { inner }
    }
}

impl<S> Service<Request<Body>> for RequestLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = RequestLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let call = CallRecord {
            method: request.uri().path().to_owned(),
            peer_uid: peer_uid(&request),
            start: Instant::now(),
        };
        let span = tracing::debug_span!(
            "rpc",
            grpc.method = %call.method,
            peer.uid = call.peer_uid,
        );
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        RequestLogFuture {
            future,
            span,
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestLog`].
    pub(crate) struct RequestLogFuture<F> {
        #[pin]
        future: F,
        span: tracing::Span,
        call: Option<CallRecord>,
    }
}

impl<F, E> Future for RequestLogFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.future.poll(cx));
        let Some(call) = this.call.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(match result {
            Ok(response) => {
                let code = Status::from_header_map(response.headers()).map(|s| s.code());
                let span = this.span.clone();
                Ok(response.map(|body| {
                    Body::new(LoggedBody {
                        inner: body,
                        call: Some(call),
                        code,
                        span,
                    })
                }))
            }
            Err(err) => {
                call.finish(None);
                Err(err)
            }
        })
    }
}

/// What [`RequestLog`] knows about a call until it completes.
#[derive(Debug)]
pub(crate) struct CallRecord {
    method: String,
    peer_uid: Option<u32>,
    start: Instant,
}

impl CallRecord {
    /// Emits the completion event; `None` means no status was ever seen (the caller went away
    /// or the connection broke).
    fn finish(self, code: Option<Code>) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let method = self.method.as_str();
        let uid = self.peer_uid;
        match code {
            Some(Code::Ok) => tracing::debug!(
                grpc.method = method, peer.uid = uid, grpc.code = ?Code::Ok, duration_ms,
                "Call completed"
            ),
            Some(code @ (Code::PermissionDenied | Code::Unauthenticated)) => tracing::warn!(
                grpc.method = method, peer.uid = uid, grpc.code = ?code, duration_ms,
                "Call refused"
            ),
            Some(code) => tracing::info!(
                grpc.method = method, peer.uid = uid, grpc.code = ?code, duration_ms,
                "Call failed"
            ),
            None => tracing::info!(
                grpc.method = method,
                peer.uid = uid,
                duration_ms,
                "Call ended without a status"
            ),
        }
    }
}

/// A response body that reports the call's completion when it ends (or is dropped).
struct LoggedBody {
    inner: Body,
    /// `Some` until the completion event is emitted.
    call: Option<CallRecord>,
    /// The status code seen so far (headers or trailers).
    code: Option<Code>,
    span: tracing::Span,
}

impl LoggedBody {
    fn finish(&mut self) {
        if let Some(call) = self.call.take() {
            let _entered = self.span.enter();
            call.finish(self.code);
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // LoggedBody is Unpin: tonic's Body is (it boxes its inner body).
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(status) = Status::from_header_map(trailers) {
                        this.code = Some(status.code());
                    }
                    this.finish();
                }
            }
            Some(Err(status)) => {
                this.code = Some(status.code());
                this.finish();
            }
            None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use basalt_authz::Role;
    use http::HeaderValue;

    use super::*;

    fn request(path: &str) -> Request<Body> {
        Request::builder()
            .uri(format!("http://machined{path}"))
            .body(Body::empty())
            .expect("request")
    }

    fn with_roles(path: &str, values: &[&str]) -> Request<Body> {
        let mut req = request(path);
        for value in values {
            req.headers_mut().append(
                basalt_authz::metadata::ROLE,
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        req
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let mut service = CatchPanic::new(tower::service_fn(|_: Request<Body>| async {
            if true {
                panic!("boom");
            }
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }));
        let response = service.call(request("/x")).await.expect("infallible");
        let status = Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("boom"),
            "the panic text stays in the log"
        );
    }

    #[tokio::test]
    async fn a_rejected_request_never_reaches_the_inner_service() {
        let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::clone(&called);
        let mut service = Guard::new(
            Authorize,
            tower::service_fn(move |_: Request<Body>| {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) }
            }),
        );
        let response = service
            .call(request("/machine.MachineService/Reboot"))
            .await
            .expect("infallible");
        let status = Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn one_header_value_per_role_is_read() {
        let req = with_roles("/x", &["os:reader", "os:operator"]);
        assert_eq!(
            roles_from_metadata(req.headers()),
            RoleSet::from([Role::Reader, Role::Operator])
        );
    }

    #[test]
    fn comma_separated_roles_are_read_too() {
        let req = with_roles("/x", &["os:reader, os:admin"]);
        assert_eq!(
            roles_from_metadata(req.headers()),
            RoleSet::from([Role::Reader, Role::Admin])
        );
    }

    #[test]
    fn no_header_means_no_roles() {
        assert!(roles_from_metadata(request("/x").headers()).is_empty());
    }

    #[test]
    fn a_request_without_peer_credentials_is_refused() {
        let check = PeerCheck {
            allowed: Arc::new(AllowedUids::new([0])),
        };
        let status = check.check(&mut request("/x")).expect_err("no creds");
        assert_eq!(status.code(), Code::PermissionDenied);
    }

    #[test]
    fn authorize_without_roles_denies_and_explains() {
        let status = Authorize
            .check(&mut request("/machine.MachineService/Version"))
            .expect_err("no roles");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("holds no roles"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn roles_then_authorize_lets_a_reader_read() {
        let mut req = with_roles("/machine.MachineService/Version", &["os:reader"]);
        Roles.check(&mut req).expect("roles never reject");
        Authorize.check(&mut req).expect("reader may call Version");
    }

    #[test]
    fn unknown_paths_and_unimplemented_methods_have_distinct_messages() {
        assert_eq!(
            not_implemented_message("/machine.MachineService/Upgrade"),
            "basalt does not implement /machine.MachineService/Upgrade yet"
        );
        assert_eq!(
            not_implemented_message("/foo.Bar/Baz"),
            "machined does not serve /foo.Bar/Baz"
        );
        let status = NotImplemented
            .check(&mut request("/machine.MachineService/Upgrade"))
            .expect_err("not served");
        assert_eq!(status.code(), Code::Unimplemented);
        NotImplemented
            .check(&mut request("/machine.MachineService/Version"))
            .expect("served");
    }
}
