//! Forwarding to machined: the HTTP/2 request goes to machined's unix socket as it came, bytes
//! untouched, with apid's own `talos-role` and `basalt-caller`. The same streaming forwarder
//! ([`forward_streaming`]) and connection handling ([`ConnectionSlot`], [`handshake`]) carry
//! one-to-one calls to other nodes' apids (`crate::remote`).
//!
//! Nothing here knows a method: unary, server-streaming, client-streaming and bidi calls all
//! work the same way, because the request and response bodies are streamed through (HTTP/2
//! flow control gives backpressure in both directions) and the response's headers, body and
//! trailers come back unchanged. Dropping the client's stream drops the upstream request and
//! response, which resets the upstream stream, so machined sees the cancellation.
//!
//! The connection to machined is one HTTP/2 client connection (the `h2` crate, which hyper's
//! client is built on) over the unix socket, shared by every call. apid's latency budget is a
//! handful of thread wake-ups, so a call hands work to as few other tasks as possible:
//!
//! - the calling task opens the stream, pushes the request body the client has already sent
//!   and awaits machined's response headers itself. tonic's `Channel` would add a tower
//!   `Buffer` worker task, and hyper's client a dispatch task plus a task per call to await the
//!   response, and it would wait for stream capacity before the first DATA frame, so the
//!   request went out in two writes (HEADERS, then DATA) — each one a wake-up of machined;
//! - only a request body that is still streaming gets a task of its own ([`pump`]), which
//!   follows machined's flow control like hyper's does;
//! - the connection itself is driven by one task per connection.
//!
//! The connection is made lazily (apid starts before machined's socket exists) and again by
//! the first call after it closed (machined restarted); a failed connect surfaces at once as
//! `Unavailable`.

use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use basalt_grpc::{LimitedBody, MAX_MESSAGE_SIZE, ReadInterestUnixStream};
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, SendStream};
use http::uri::{Authority, Scheme};
use http::{HeaderName, Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
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
/// Largest response header block accepted from machined or another apid (the default limit
/// apid applies to its clients' requests).
const MAX_HEADER_LIST_SIZE: u32 = basalt_config::limits::DEFAULT_MAX_HEADER_BYTES;
/// A unix-socket connect either succeeds or fails at once; this only guards a wedged kernel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The `:authority` machined sees; only a label on a unix socket.
const AUTHORITY: &str = "machined";
/// At most this much of a request body is handed to the stream before it is open and has
/// flow-control capacity; the rest waits for machined's window (see [`push_ready`]).
const EAGER_LIMIT: usize = 64 * 1024;

/// The request body sent upstream: the client's body under the message limit.
type RequestBody = LimitedBody<Incoming>;

/// The upstream: machined on its unix socket.
#[derive(Debug)]
pub(crate) struct Machined {
    socket: PathBuf,
    slot: ConnectionSlot,
}

/// One HTTP/2 client connection (to machined, or to another node's apid).
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    sender: SendRequest<Bytes>,
    /// Set by the connection's task when it ends (machined closed the socket, or it broke).
    closed: Arc<AtomicBool>,
}

impl Machined {
    /// A lazily connected client for `socket`; nothing is dialled until the first call.
    pub(crate) fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            slot: ConnectionSlot::default(),
        }
    }

    /// machined's socket path.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
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
        let head = Request::from_parts(parts, ());
        forward_streaming(self.sender(), head, body, audit, "machined", |source| {
            Error::MachinedUnreachable {
                socket: self.socket.clone(),
                source,
            }
        })
        .await
    }

    /// The open connection's sender, connecting first if there is none or it closed.
    pub(crate) async fn sender(&self) -> Result<SendRequest<Bytes>, BoxError> {
        self.slot.sender(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Connection, BoxError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.socket))
            .await
            .map_err(|elapsed| Box::new(elapsed) as BoxError)??;
        // Registered for reads only: machined reading a request would otherwise wake apid.
        let stream = ReadInterestUnixStream::new(stream)?;
        let connection = handshake(stream, "machined").await?;
        debug!(machined.socket = %self.socket.display(), "Connected to machined");
        Ok(connection)
    }
}

/// Forwards one call whose request head is ready (`talos-role`, URI and the rest set) to the
/// upstream `sender` resolves to, streaming the body through; see the module docs.
/// `upstream` names it in messages; `unreachable` turns a failure to open the call into the
/// error the client gets.
pub(crate) async fn forward_streaming(
    sender: impl Future<Output = Result<SendRequest<Bytes>, BoxError>>,
    head: Request<()>,
    body: Incoming,
    audit: AuditGuard,
    upstream: &'static str,
    unreachable: impl FnOnce(BoxError) -> Error,
) -> Response<ResponseBody> {
    let timeout = grpc_timeout(head.headers());
    let deadline = timeout.map(|timeout| (Instant::now() + timeout, timeout));

    // The client's messages are checked as they stream upstream; an oversized one ends the
    // upstream request with an error and is reported here.
    let request_too_large = Arc::new(OnceLock::new());
    let body = LimitedBody::new(body, MAX_MESSAGE_SIZE).with_report(request_too_large.clone());

    // Dropping this future (deadline, or the client went away) drops the stream's handles,
    // which resets the upstream stream: the upstream sees the cancellation.
    let call_upstream = async {
        let sender = sender.await?;
        let mut sender = sender.ready().await?;
        let end_of_stream = body.is_end_stream();
        let (response, send) = sender.send_request(head, end_of_stream)?;
        let mut pumping = None;
        if !end_of_stream {
            let mut body = Some(body);
            let mut send = Some(send);
            // What the client has sent already goes out with the HEADERS frame.
            let pending = poll_fn(|cx| Poll::Ready(push_ready(&mut body, &mut send, cx))).await;
            if pending && let (Some(body), Some(send)) = (body, send) {
                let (abandoned_tx, abandoned) = oneshot::channel();
                tokio::spawn(pump(body, send, abandoned));
                pumping = Some(abandoned_tx);
            }
        }
        let response = response.await?;
        Ok::<_, BoxError>((response, pumping))
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
        Ok((response, pumping)) => ResponseBody::upstream(
            response,
            audit,
            Enforce {
                message_limit: true,
                deadline,
                request_too_large: Some(request_too_large),
                upstream,
            },
            pumping,
        ),
        Err(source) => {
            let err = match request_too_large.get() {
                Some(too_large) => Error::RequestTooLarge(*too_large),
                None => unreachable(source),
            };
            tracing::warn!(
                upstream,
                error = &err as &dyn std::error::Error,
                "Forwarding failed"
            );
            ResponseBody::error(err, Some(audit))
        }
    }
}

/// Opens one call whose whole request body is already here (fan-out sends the same body to
/// every node) and waits for the response headers.
pub(crate) async fn send_buffered(
    sender: SendRequest<Bytes>,
    head: Request<()>,
    body: Bytes,
) -> Result<Response<h2::RecvStream>, BoxError> {
    let mut sender = sender.ready().await?;
    let (response, mut send) = sender.send_request(head, false)?;
    // h2 queues what the window does not take yet; the body is bounded by the message limit.
    send.send_data(body, true)?;
    Ok(response.await?)
}

/// A lazily made HTTP/2 connection that is made again after it closed. Connecting is
/// serialized, so a burst of calls after the upstream came back opens one connection, not one
/// each; and the calls that waited for an attempt that failed get its error, so a burst to a
/// dead node waits for one connect timeout, not one each in turn.
#[derive(Debug, Default)]
pub(crate) struct ConnectionSlot {
    /// The open connection, if any. Held only to clone or replace it, never across an
    /// `.await`.
    current: Mutex<Option<Connection>>,
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts finished so far, and the error of the last one if it failed.
    /// Written only while `connecting` is held.
    attempts: Mutex<(u64, Option<SharedFailure>)>,
}

/// A failed connect, handed to every call that waited for that attempt.
#[derive(Clone, Debug)]
struct SharedFailure(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl ConnectionSlot {
    /// The open connection's sender, calling `connect` first if there is none or it closed.
    pub(crate) async fn sender<F, Fut>(&self, connect: F) -> Result<SendRequest<Bytes>, BoxError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connection, BoxError>>,
    {
        if let Some(sender) = self.open_sender() {
            return Ok(sender);
        }
        let seen = self
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        let _connecting = self.connecting.lock().await;
        // Another call may have connected while this one waited, or failed to.
        if let Some(sender) = self.open_sender() {
            return Ok(sender);
        }
        if let (finished, Some(failure)) =
            &*self.attempts.lock().unwrap_or_else(PoisonError::into_inner)
            && *finished != seen
        {
            return Err(Box::new(failure.clone()));
        }
        // Boxed: connecting is rare, and its future (unix or TLS connect plus the HTTP/2
        // handshake) is kilobytes. Inline, it made every call's future that large, and hyper
        // copies each call's future into the heap (docs/BENCHMARKS.md).
        let result = Box::pin(connect()).await;
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        attempts.0 += 1;
        match result {
            Ok(connection) => {
                attempts.1 = None;
                let sender = connection.sender.clone();
                *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(connection);
                Ok(sender)
            }
            Err(err) => {
                let failure = SharedFailure(Arc::from(err));
                attempts.1 = Some(failure.clone());
                Err(Box::new(failure))
            }
        }
    }

    /// Whether the slot holds a connection that is still open.
    pub(crate) fn is_open(&self) -> bool {
        self.open_sender().is_some()
    }

    fn open_sender(&self) -> Option<SendRequest<Bytes>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|connection| !connection.closed.load(Ordering::Acquire))
            .map(|connection| connection.sender.clone())
    }
}

/// Runs the HTTP/2 client handshake on `io` with Talos's windows and apid's header limit, and
/// spawns the task that drives the connection. `upstream` names it in logs.
pub(crate) async fn handshake<T>(io: T, upstream: &'static str) -> Result<Connection, BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_push(false)
        .handshake(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closed);
    // The task ends when the upstream closes the connection or it breaks; the flag then tells
    // the next call to reconnect.
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(
                upstream,
                error = &err as &dyn std::error::Error,
                "Upstream connection ended with an error"
            );
        }
        flag.store(true, Ordering::Release);
    });
    Ok(Connection { sender, closed })
}

/// Hands the request body frames that are already here to the upstream stream, without
/// waiting for it to open: h2 queues them behind the HEADERS frame, so a unary request leaves
/// in one write. Stops at the end of the body (taking `body` and `send`), at the first frame
/// that is not here yet, or after [`EAGER_LIMIT`] bytes; returns whether the body still has
/// more to send.
///
/// Taking frames from the client releases its flow-control window, so only a bounded amount
/// is taken here; from then on [`pump`] waits for machined's window before taking more.
fn push_ready(
    body: &mut Option<RequestBody>,
    send: &mut Option<SendStream<Bytes>>,
    cx: &mut Context<'_>,
) -> bool {
    let (Some(source), Some(sink)) = (body.as_mut(), send.as_mut()) else {
        return false;
    };
    let mut pushed = 0;
    while pushed < EAGER_LIMIT {
        match step(source, sink, cx) {
            Poll::Ready(Step::Sent(len)) => pushed += len,
            Poll::Ready(Step::Finished) => {
                *body = None;
                *send = None;
                return false;
            }
            Poll::Pending => break,
        }
    }
    true
}

/// What one [`step`] did.
enum Step {
    /// Passed on a DATA frame of this many bytes; more is to come.
    Sent(usize),
    /// The request is complete (or was reset); nothing more to do.
    Finished,
}

/// Moves the next frame of `source`, if it is here, to `sink`.
fn step(
    source: &mut RequestBody,
    sink: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Step> {
    let result = match ready!(Pin::new(&mut *source).poll_frame(cx)) {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => {
                let len = data.len();
                let end = source.is_end_stream();
                match sink.send_data(data, end) {
                    Ok(()) if end => Ok(Step::Finished),
                    Ok(()) => Ok(Step::Sent(len)),
                    Err(err) => Err(err),
                }
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => sink.send_trailers(trailers).map(|()| Step::Finished),
                // Neither data nor trailers: nothing HTTP/2 can carry.
                Err(_) => Ok(Step::Sent(0)),
            },
        },
        // The client's stream failed (it went away, or sent an oversized message): machined
        // sees the call cancelled.
        Some(Err(err)) => {
            debug!(
                error = &err as &dyn std::error::Error,
                "Request body failed"
            );
            sink.send_reset(Reason::CANCEL);
            Ok(Step::Finished)
        }
        None => sink.send_data(Bytes::new(), true).map(|()| Step::Finished),
    };
    Poll::Ready(result.unwrap_or_else(|err| {
        // The upstream stream is gone (reset by machined, or the connection broke); the
        // response side reports it.
        debug!(
            error = &err as &dyn std::error::Error,
            "Request body not forwarded"
        );
        Step::Finished
    }))
}

/// Forwards the rest of a streaming request body under machined's flow control, until the
/// body ends, either side fails, or the response is dropped (`abandoned` closes), which resets
/// the upstream stream.
async fn pump(
    mut source: RequestBody,
    mut sink: SendStream<Bytes>,
    mut abandoned: oneshot::Receiver<()>,
) {
    poll_fn(|cx| {
        loop {
            if Pin::new(&mut abandoned).poll(cx).is_ready() {
                sink.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            // Ask for room for the next frame before taking it from the client, so the
            // client is only allowed to send as fast as machined reads.
            sink.reserve_capacity(1);
            if sink.capacity() == 0 {
                match ready!(sink.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    // The stream was reset or closed: nothing more can be sent.
                    Some(Err(_)) | None => return Poll::Ready(()),
                }
            }
            // machined reset the stream (it answered early, or failed): stop reading the client.
            if sink.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Step::Finished = ready!(step(&mut source, &mut sink, cx)) {
                return Poll::Ready(());
            }
        }
    })
    .await;
}

/// `http://machined/<path>`: the scheme and authority an HTTP/2 request must carry, the path
/// (and query, if any) as the client sent it.
pub(crate) fn upstream_uri(uri: Uri) -> Uri {
    let mut parts = uri.into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(Authority::from_static(AUTHORITY));
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, which is all `from_parts` checks.
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://machined/"))
}

/// `grpc-timeout`, parsed once (a lookup by `&str` parses the name on every call).
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The caller's `grpc-timeout`, if it sent a valid one.
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(&GRPC_TIMEOUT)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
/// A malformed value is ignored (the header is still forwarded; machined decides).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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

    /// Calls that waited for an attempt that failed get its error instead of each dialing in
    /// turn; a call that comes after the failure tries again.
    #[tokio::test]
    async fn a_failed_connect_is_shared_with_the_calls_that_waited_for_it() {
        let slot = Arc::new(ConnectionSlot::default());
        let dials = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dial = |dials: Arc<std::sync::atomic::AtomicUsize>| async move {
            dials.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Connection, BoxError>("connection refused (test)".into())
        };
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (slot, dials) = (Arc::clone(&slot), Arc::clone(&dials));
            burst.spawn(async move { slot.sender(|| dial(dials)).await.map(drop) });
        }
        while let Some(result) = burst.join_next().await {
            let err = result.expect("task").expect_err("nothing to connect to");
            assert_eq!(err.to_string(), "connection refused (test)");
        }
        assert_eq!(dials.load(Ordering::SeqCst), 1, "one dial for the burst");

        let err = slot
            .sender(|| dial(Arc::clone(&dials)))
            .await
            .map(drop)
            .expect_err("still nothing");
        assert_eq!(err.to_string(), "connection refused (test)");
        assert_eq!(dials.load(Ordering::SeqCst), 2, "a later call dials again");
    }

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
