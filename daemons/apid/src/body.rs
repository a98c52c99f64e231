//! The response body apid sends: the upstream (or local) body passed through unchanged, plus
//! what a byte-level proxy must still enforce and observe.
//!
//! - the 32 MiB message limit on machined's responses (checked on the 5-byte prefixes as the
//!   bytes stream past);
//! - the call's deadline, enforced locally as well as forwarded;
//! - a broken upstream stream, or a request message refused mid-call, turned into proper gRPC
//!   trailers instead of a reset stream;
//! - the audit record's status code, read from the headers (trailers-only responses) or the
//!   final trailer; the record is written when this body is dropped.
//!
//! When apid itself ends the stream early it drops the upstream body, which resets the
//! upstream HTTP/2 stream: machined sees the cancellation.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use basalt_grpc::{FrameScanner, FrameTooLarge, MAX_MESSAGE_SIZE};
use bytes::Bytes;
use h2::RecvStream;
use http::{HeaderMap, HeaderName, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::audit::AuditGuard;
use crate::error::Error;

/// Limits that apply to a forwarded call's response.
#[derive(Debug, Default)]
pub(crate) struct Enforce {
    /// Check response message sizes against [`MAX_MESSAGE_SIZE`].
    pub(crate) message_limit: bool,
    /// The call's deadline and the timeout it came from.
    pub(crate) deadline: Option<(Instant, Duration)>,
    /// Set by the request body when the client sent an oversized message.
    pub(crate) request_too_large: Option<Arc<OnceLock<FrameTooLarge>>>,
    /// Names the upstream in the message of a broken stream (`machined`, `apid`).
    pub(crate) upstream: &'static str,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    inner: Inner,
    scanner: Option<FrameScanner>,
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    request_too_large: Option<Arc<OnceLock<FrameTooLarge>>>,
    upstream: &'static str,
    /// Keeps the request body flowing to machined; see [`ResponseBody::upstream`].
    pumping: Option<oneshot::Sender<()>>,
    audit: Option<AuditGuard>,
    state: State,
}

/// Where the body comes from. Not boxed: a forwarded call is apid's hot path.
#[derive(Debug)]
enum Inner {
    /// The upstream's (machined's or another apid's) response body; `data_done` once its
    /// DATA frames are all read.
    Upstream { recv: RecvStream, data_done: bool },
    /// A local service's response, or an error built by apid.
    Local(Body),
    /// Nothing (more) to pass through.
    Empty,
}

impl Inner {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Upstream { recv, .. } => recv.is_end_stream(),
            Inner::Local(body) => body.is_end_stream(),
            Inner::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Upstream { .. } => SizeHint::default(),
            Inner::Local(body) => body.size_hint(),
            Inner::Empty => SizeHint::with_exact(0),
        }
    }

    /// The next frame; an upstream failure becomes the message for the `Unavailable` apid
    /// sends instead.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, String>>> {
        match self {
            Inner::Upstream { recv, data_done } => {
                if !*data_done {
                    match ready!(recv.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // Reading it frees room in machined's window for more.
                            let _ = recv.flow_control().release_capacity(data.len());
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(err)) => {
                            return Poll::Ready(Some(Err(basalt_daemon::error_chain(&err))));
                        }
                        None => *data_done = true,
                    }
                }
                match ready!(recv.poll_trailers(cx)) {
                    Ok(Some(trailers)) => {
                        *self = Inner::Empty;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    Ok(None) => Poll::Ready(None),
                    Err(err) => Poll::Ready(Some(Err(basalt_daemon::error_chain(&err)))),
                }
            }
            Inner::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|status| status.message().to_owned()),
            Inner::Empty => Poll::Ready(None),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Passing the inner body through.
    Streaming,
    /// apid ends the call: these trailers are sent next, then the body ends.
    Trailers(HeaderMap),
    /// Nothing more to send.
    Done,
}

impl ResponseBody {
    /// Wraps a local service's response (or one apid built), reading a trailers-only status
    /// from its headers for the audit record.
    pub(crate) fn wrap(
        response: Response<Body>,
        audit: Option<AuditGuard>,
        enforce: Enforce,
    ) -> Response<ResponseBody> {
        let (parts, body) = response.into_parts();
        Self::build(parts, Inner::Local(body), audit, enforce)
    }

    /// Wraps the upstream's response to a forwarded call. `pumping` is held while the request
    /// body is still being forwarded: dropping it stops that (see `forward::pump`).
    pub(crate) fn upstream(
        response: Response<RecvStream>,
        audit: AuditGuard,
        enforce: Enforce,
        pumping: Option<oneshot::Sender<()>>,
    ) -> Response<ResponseBody> {
        let (parts, recv) = response.into_parts();
        let inner = Inner::Upstream {
            recv,
            data_done: false,
        };
        let mut response = Self::build(parts, inner, Some(audit), enforce);
        response.body_mut().pumping = pumping;
        response
    }

    fn build(
        parts: http::response::Parts,
        inner: Inner,
        audit: Option<AuditGuard>,
        enforce: Enforce,
    ) -> Response<ResponseBody> {
        let mut audit = audit;
        if let (Some(audit), Some(code)) = (audit.as_mut(), code_in(&parts.headers)) {
            audit.set_code(code);
        }
        let body = ResponseBody {
            inner,
            scanner: enforce
                .message_limit
                .then(|| FrameScanner::new(MAX_MESSAGE_SIZE)),
            deadline: enforce
                .deadline
                .map(|(at, timeout)| (Box::pin(tokio::time::sleep_until(at)), timeout)),
            request_too_large: enforce.request_too_large,
            upstream: enforce.upstream,
            pumping: None,
            audit,
            state: State::Streaming,
        };
        Response::from_parts(parts, body)
    }

    /// A trailers-only error response for `err`.
    pub(crate) fn error(err: Error, audit: Option<AuditGuard>) -> Response<ResponseBody> {
        Self::wrap(Status::from(err).into_http(), audit, Enforce::default())
    }

    /// Ends the call with `status` as trailers, dropping (and so cancelling) the upstream body.
    fn end_with(&mut self, status: Status) {
        if let Some(audit) = self.audit.as_mut() {
            audit.set_code(status.code());
        }
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a message that cannot be a header value gets here; keep the code.
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        self.inner = Inner::Empty;
        self.pumping = None;
        self.deadline = None;
        self.state = State::Trailers(trailers);
    }

    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(audit) = self.audit.as_mut() {
            audit.finish();
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Trailers(trailers) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                State::Streaming => this.state = State::Streaming,
            }

            if let Some((sleep, timeout)) = this.deadline.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                let timeout = *timeout;
                this.end_with(Error::DeadlineExceeded { timeout }.into());
                continue;
            }

            match this.inner.poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(upstream))) => {
                    // The client's oversized message made apid reset the upstream stream; say
                    // so rather than passing on the resulting reset.
                    let status = match this.request_too_large.as_ref().and_then(|r| r.get()) {
                        Some(too_large) => Error::RequestTooLarge(*too_large).into(),
                        None => Status::unavailable(format!(
                            "{} stream broke: {upstream}",
                            this.upstream
                        )),
                    };
                    this.end_with(status);
                    continue;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(data), Some(scanner)) = (frame.data_ref(), this.scanner.as_mut())
                        && let Err(too_large) = scanner.scan(data)
                    {
                        // Pass on the complete messages in front of the oversized one.
                        let before = data.slice(..too_large.offset);
                        this.end_with(Error::ResponseTooLarge(too_large).into());
                        if !before.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(before))));
                        }
                        continue;
                    }
                    if let Some(trailers) = frame.trailers_ref()
                        && let (Some(audit), Some(code)) = (this.audit.as_mut(), code_in(trailers))
                    {
                        audit.set_code(code);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Done => true,
            State::Trailers(_) => false,
            State::Streaming => self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Streaming => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

/// `grpc-status`, parsed once (a lookup by `&str` parses the name on every call).
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-status` in a header map, if any.
fn code_in(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(&GRPC_STATUS)?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}
