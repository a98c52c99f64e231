//! One-to-many calls (`nodes` metadata): the same request to every target at once, the
//! replies merged with per-node `common.Metadata` (talos-facts.md §1.6).
//!
//! - **Unary**: each node's reply message gets `metadata.hostname` = the target as named,
//!   spliced at the byte level ([`splice`]); the replies are concatenated into one message,
//!   which decodes as one reply whose `messages` hold every node's elements, in the order the
//!   targets were named. A node that fails (unreachable, a non-OK status, a timeout, a reply
//!   that cannot be spliced) contributes one element holding only metadata with `error` and
//!   `status`; the call itself returns OK. The replies together may hold one message's limit
//!   (`ReplyBudget`): a node whose reply does not fit fails with ResourceExhausted.
//! - **Server streams** (Talos's list of streaming methods): every node's messages are passed
//!   on as they arrive, interleaved, each with `metadata.hostname` appended; a node that fails
//!   contributes one message with metadata `error` and `status`; the call ends (OK) when
//!   every node's stream has ended.
//!
//! Targets that name this node go straight to machined; the others go to their apid through
//! [`RemoteApids`](crate::remote::RemoteApids). Each node gets the call's `grpc-timeout`, less
//! a tenth kept for sending the merged reply (or
//! [`DEFAULT_NODE_TIMEOUT`] when there is none; for streams that bounds only opening the
//! stream), and at most [`CONCURRENCY`] nodes are being called (or, for streams, opened) at
//! once, so one slow or dead node delays nobody beyond its timeout. The request body is read
//! whole first (it is sent to every node), bounded by the message limit; replies are never
//! compressed, because `grpc-accept-encoding` is not passed on.
//!
//! Fan-out is deprecated upstream (talosctl ≥ 1.14 sends `node` once per node) and kept in
//! this module so it can be removed without touching the one-to-one path.

pub mod splice;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use basalt_grpc::MAX_MESSAGE_SIZE;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::debug;

use crate::audit::AuditGuard;
use crate::body::{Enforce, GRPC_STATUS, ResponseBody};
use crate::error::{BoxError, Error};
use crate::forward::{grpc_timeout, send_buffered, upstream_uri};
use crate::peer::CallIdentity;
use crate::pipeline::Shared;
use crate::routing::FanoutTarget;

/// Most nodes called (or streams opened) at once per fan-out call.
pub(crate) const CONCURRENCY: usize = 16;

/// Per-node timeout when the call carries no `grpc-timeout` (for streams: until the node's
/// response headers arrive).
pub(crate) const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages buffered between the node streams and the client.
const STREAM_BUFFER: usize = 32;

/// Server-streaming methods, as Talos's apid lists them (plus any method ending in `Stream`).
const STREAMING: &[&str] = &[
    "/machine.MachineService/Copy",
    "/machine.MachineService/DiskUsage",
    "/machine.MachineService/Dmesg",
    "/machine.MachineService/EtcdSnapshot",
    "/machine.MachineService/Events",
    "/machine.MachineService/ImageList",
    "/machine.MachineService/Kubeconfig",
    "/machine.MachineService/List",
    "/machine.MachineService/DebugContainer",
    "/machine.MachineService/Logs",
    "/machine.MachineService/PacketCapture",
    "/machine.MachineService/Read",
    "/machine.LifecycleService/Install",
    "/machine.LifecycleService/Upgrade",
    "/os.OSService/Dmesg",
    "/cluster.ClusterService/HealthCheck",
];

/// Whether `method` is server-streaming for fan-out purposes (Talos's detector).
pub(crate) fn is_streaming(method: &str) -> bool {
    STREAMING.contains(&method) || method.ends_with("Stream")
}

/// Serves one `nodes` call; see the module docs.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    call: &Arc<CallIdentity>,
    targets: Vec<FanoutTarget>,
    audit: AuditGuard,
) -> Response<ResponseBody> {
    let (mut parts, body) = request.into_parts();
    let timeout = grpc_timeout(&parts.headers);
    let deadline = timeout.map(|timeout| (Instant::now() + timeout, timeout));
    // A tenth of the caller's timeout is kept for merging and sending the reply, so the
    // caller gets the nodes that answered rather than its own deadline error.
    let node_timeout = timeout.map_or(DEFAULT_NODE_TIMEOUT, |timeout| timeout - timeout / 10);
    let streaming = is_streaming(parts.uri.path());
    // Replies are spliced, so they must come uncompressed.
    parts.headers.remove("grpc-accept-encoding");

    let body = match tokio::time::timeout(node_timeout, collect(body)).await {
        Ok(Ok(body)) => body,
        Ok(Err(err)) => return ResponseBody::error(err, Some(audit)),
        Err(_) => {
            let err = Error::DeadlineExceeded {
                timeout: node_timeout,
            };
            return ResponseBody::error(err, Some(audit));
        }
    };

    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let replies = Arc::new(ReplyBudget::default());
    let (tx, rx) = mpsc::channel(if streaming { STREAM_BUFFER } else { 1 });
    let mut tasks = Vec::with_capacity(targets.len());
    for target in targets {
        let node = Node {
            shared: Arc::clone(shared),
            head: match node_head(shared, &parts, call, &target) {
                Ok(head) => Some(head),
                Err(err) => {
                    // Cannot happen for a parsed target; the node reports it.
                    debug!(
                        error = &err as &dyn std::error::Error,
                        "No request for a node"
                    );
                    None
                }
            },
            body: body.clone(),
            metadata: splice::metadata(&target.target.name, None),
            target,
            limit: Arc::clone(&limit),
            replies: Arc::clone(&replies),
        };
        tasks.push(if streaming {
            let tx = tx.clone();
            let deadline = deadline.map(|(at, _)| at);
            tokio::spawn(async move {
                node.stream(tx, node_timeout, deadline).await;
                Vec::new()
            })
        } else {
            tokio::spawn(async move { node.unary(node_timeout).await })
        });
    }
    // Dropped with this future (the client went away): the node calls are aborted.
    let mut tasks = AbortOnDrop(tasks);

    if streaming {
        drop(tx);
        // The tasks run on their own; the body ends when the last one has dropped its sender.
        tasks.detach();
    } else {
        let mut merged = Vec::new();
        for task in &mut tasks.0 {
            match task.await {
                Ok(reply) => merged.extend_from_slice(&reply),
                // A node task cannot panic on any input; if it did, the node is left out.
                Err(err) => debug!(error = &err as &dyn std::error::Error, "Node task failed"),
            }
        }
        if merged.len() > MAX_MESSAGE_SIZE {
            let too_large = basalt_grpc::FrameTooLarge {
                size: merged.len() as u64,
                limit: MAX_MESSAGE_SIZE,
                offset: 0,
            };
            return ResponseBody::error(Error::ResponseTooLarge(too_large), Some(audit));
        }
        // The channel has room for this one message and nothing else is sent on it.
        let _ = tx.try_send(grpc_frame(&merged));
        drop(tx);
    }

    let mut response = Response::new(tonic::body::Body::new(MergedBody {
        rx,
        trailers_sent: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    ResponseBody::wrap(
        response,
        Some(audit),
        Enforce {
            // A unary reply is complete already (every node was bounded by the timeout); a
            // stream runs under the call's deadline.
            deadline: deadline.filter(|_| streaming),
            ..Enforce::default()
        },
    )
}

/// One target of a fan-out call and what it needs to be called.
struct Node {
    shared: Arc<Shared>,
    target: FanoutTarget,
    /// The request head for this node (`None` if it could not be built).
    head: Option<Request<()>>,
    body: Bytes,
    /// The encoded `common.Metadata { hostname }` spliced into its messages.
    metadata: Vec<u8>,
    limit: Arc<Semaphore>,
    /// Bytes the unary replies of all nodes may hold together.
    replies: Arc<ReplyBudget>,
}

/// What the unary replies of one fan-out may hold together: the merged reply is one message,
/// so more than [`MAX_MESSAGE_SIZE`] can never be sent. Nodes take from it as their bytes
/// arrive; a node whose reply does not fit fails (and gives back what it took), so a fan-out
/// holds about one message's worth, not one per node.
#[derive(Debug)]
struct ReplyBudget(AtomicUsize);

impl Default for ReplyBudget {
    fn default() -> Self {
        Self(AtomicUsize::new(MAX_MESSAGE_SIZE))
    }
}

impl ReplyBudget {
    /// Takes `bytes`, or nothing and `false` when fewer are left.
    fn take(&self, bytes: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// Why a node has no (more) reply.
#[derive(Debug)]
struct NodeError {
    code: Code,
    message: String,
}

impl NodeError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn metadata(&self, hostname: &str) -> Vec<u8> {
        splice::metadata(
            hostname,
            Some(splice::NodeFailure {
                code: self.code as i32,
                message: &self.message,
            }),
        )
    }
}

impl From<Status> for NodeError {
    fn from(status: Status) -> Self {
        Self::new(status.code(), status.message())
    }
}

impl Node {
    /// Calls the node and returns its spliced reply, or its error element.
    async fn unary(self, timeout: Duration) -> Vec<u8> {
        let name = self.target.target.name.clone();
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.call_unary()).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::new(
                Code::DeadlineExceeded,
                format!("{name} did not answer within {timeout:?}"),
            )),
        };
        // Failures too: a node that times out is the latency an operator looks for.
        self.shared
            .audit
            .metrics()
            .record_fanout_node(&name, self.target.local, started.elapsed());
        match result.and_then(|message| {
            splice::splice_unary(&message, &self.metadata).map_err(|err| {
                NodeError::new(
                    Code::Internal,
                    format!("the reply of {name} has no per-node envelope: {err}"),
                )
            })
        }) {
            Ok(spliced) => spliced,
            Err(err) => {
                debug!(target = %name, code = ?err.code, error = %err.message, "Node failed");
                splice::error_reply(&err.metadata(&name))
            }
        }
    }

    async fn call_unary(&self) -> Result<Bytes, NodeError> {
        let response = {
            let _permit = self.limit.acquire().await;
            self.open().await?
        };
        let mut recv = response.into_body();
        let mut frames = Deframer::default();
        let mut taken = 0;
        while let Some(data) = recv.data().await {
            let data = data.map_err(|err| self.broken(&err))?;
            let _ = recv.flow_control().release_capacity(data.len());
            // The replies are merged into one message; what cannot fit is refused before it
            // piles up.
            if !self.replies.take(data.len()) {
                self.replies.give_back(taken);
                return Err(NodeError::new(
                    Code::ResourceExhausted,
                    format!(
                        "the replies of the nodes together exceed the limit of \
                         {MAX_MESSAGE_SIZE} bytes for one message"
                    ),
                ));
            }
            taken += data.len();
            frames.push(&data);
        }
        let trailers = recv.trailers().await.map_err(|err| self.broken(&err))?;
        check_status(trailers.as_ref())?;
        let message = frames.next()?.ok_or_else(|| {
            NodeError::new(
                Code::Internal,
                "the node answered OK without a reply message",
            )
        })?;
        if frames.next()?.is_some() || !frames.is_empty() {
            return Err(NodeError::new(
                Code::Internal,
                "the node sent more than one reply message to a unary call",
            ));
        }
        Ok(message)
    }

    /// Streams the node's messages into `tx`, then its error, if any.
    async fn stream(
        self,
        tx: mpsc::Sender<Bytes>,
        open_timeout: Duration,
        deadline: Option<Instant>,
    ) {
        let name = self.target.target.name.clone();
        let streaming = self.pass_stream(&tx, open_timeout);
        let result = match deadline {
            Some(at) => tokio::time::timeout_at(at, streaming)
                .await
                .unwrap_or_else(|_| {
                    Err(NodeError::new(Code::DeadlineExceeded, "deadline exceeded"))
                }),
            None => streaming.await,
        };
        if let Err(err) = result {
            debug!(target = %name, code = ?err.code, error = %err.message, "Node stream failed");
            let message = splice::error_message(&err.metadata(&name));
            let _ = tx.send(grpc_frame(&message)).await;
        }
    }

    async fn pass_stream(
        &self,
        tx: &mpsc::Sender<Bytes>,
        open_timeout: Duration,
    ) -> Result<(), NodeError> {
        let response = {
            let _permit = self.limit.acquire().await;
            tokio::time::timeout(open_timeout, self.open())
                .await
                .map_err(|_| {
                    NodeError::new(
                        Code::DeadlineExceeded,
                        format!(
                            "{} did not answer within {open_timeout:?}",
                            self.target.target.name
                        ),
                    )
                })??
        };
        let mut recv = response.into_body();
        let mut frames = Deframer::default();
        loop {
            let data = tokio::select! {
                // The client went away: stop reading (dropping `recv` resets the stream).
                () = tx.closed() => return Ok(()),
                data = recv.data() => data,
            };
            let Some(data) = data else { break };
            let data = data.map_err(|err| self.broken(&err))?;
            let _ = recv.flow_control().release_capacity(data.len());
            frames.push(&data);
            while let Some(message) = frames.next()? {
                let spliced = splice::splice_stream(&message, &self.metadata);
                if tx.send(grpc_frame(&spliced)).await.is_err() {
                    return Ok(());
                }
            }
        }
        let trailers = recv.trailers().await.map_err(|err| self.broken(&err))?;
        check_status(trailers.as_ref())
    }

    /// Opens the call and checks the response headers (a trailers-only error ends here).
    async fn open(&self) -> Result<Response<RecvStream>, NodeError> {
        let head = self.head.as_ref().ok_or_else(|| {
            NodeError::new(
                Code::Internal,
                "the request for this node could not be built",
            )
        })?;
        let head = clone_head(head);
        let response = match self.target.local {
            true => {
                let sender = self.shared.machined.sender().await.map_err(|source| {
                    let err = Error::MachinedUnreachable {
                        socket: self.shared.machined.socket().to_owned(),
                        source,
                    };
                    NodeError::from(Status::from(err))
                })?;
                send_buffered(sender, head, self.body.clone())
                    .await
                    .map_err(|err| {
                        NodeError::new(Code::Unavailable, basalt_daemon::error_chain(err.as_ref()))
                    })
            }
            false => {
                let remote = self.remote()?;
                let result = match remote.sender(&self.target.target).await {
                    Ok(sender) => send_buffered(sender, head, self.body.clone()).await,
                    Err(err) => Err(err),
                };
                result.map_err(|source| {
                    NodeError::from(Status::from(
                        remote.unreachable(&self.target.target, source),
                    ))
                })
            }
        }?;
        if response.status() != http::StatusCode::OK {
            return Err(NodeError::new(
                Code::Unknown,
                format!("the node answered HTTP {}", response.status()),
            ));
        }
        if response.headers().contains_key(&GRPC_STATUS) {
            check_status(Some(response.headers()))?;
        }
        Ok(response)
    }

    fn remote(&self) -> Result<&crate::remote::RemoteApids, NodeError> {
        self.shared
            .remote
            .as_deref()
            .ok_or_else(|| NodeError::new(Code::PermissionDenied, "no request forwarding"))
    }

    fn broken(&self, err: &h2::Error) -> NodeError {
        NodeError::new(
            Code::Unavailable,
            format!(
                "the stream from {} broke: {}",
                self.target.target.name,
                basalt_daemon::error_chain(err)
            ),
        )
    }
}

/// The request head for one node: to machined for this node, else to the target's apid.
fn node_head(
    shared: &Shared,
    parts: &http::request::Parts,
    call: &CallIdentity,
    target: &FanoutTarget,
) -> Result<Request<()>, Error> {
    let parts = clone_parts(parts);
    if target.local {
        let mut head = Request::from_parts(parts, ());
        call.apply(head.headers_mut());
        *head.uri_mut() = upstream_uri(head.uri().clone());
        return Ok(head);
    }
    match shared.remote.as_deref() {
        Some(remote) => remote.head(parts, call, &target.target),
        None => Err(Error::Route(crate::routing::RouteError::NoForwarding {
            target: target.target.name.clone(),
        })),
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

fn clone_head(head: &Request<()>) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = head.method().clone();
    *request.uri_mut() = head.uri().clone();
    *request.version_mut() = head.version();
    *request.headers_mut() = head.headers().clone();
    request
}

/// OK, or the node's status as its error. No status at all is Unknown (as gRPC clients).
fn check_status(headers: Option<&HeaderMap>) -> Result<(), NodeError> {
    match headers.and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => Ok(()),
        Some(status) => Err(status.into()),
        None => Err(NodeError::new(
            Code::Unknown,
            "the node sent no gRPC status",
        )),
    }
}

/// Reads the whole request body (it is sent to every node): at most [`MAX_MESSAGE_SIZE`] plus
/// one gRPC prefix in total.
async fn collect(mut body: Incoming) -> Result<Bytes, Error> {
    let mut out = BytesMut::new();
    let limit = MAX_MESSAGE_SIZE + 5;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|err| Error::RequestBody(Box::new(err)))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(Error::RequestTooLarge(basalt_grpc::FrameTooLarge {
                    size: (out.len() + data.len()) as u64,
                    limit: MAX_MESSAGE_SIZE,
                    offset: 0,
                }));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Splits gRPC length-prefixed messages out of a byte stream.
#[derive(Debug, Default)]
struct Deframer {
    buffer: BytesMut,
}

impl Deframer {
    /// Appends received bytes; [`Deframer::next`] refuses an oversized message from its
    /// prefix, so a caller that drains after each push holds at most one message.
    fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    fn peek_len(&self) -> Option<usize> {
        let prefix = self.buffer.get(..5)?;
        Some(u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize)
    }

    /// The next complete message, if there is one.
    fn next(&mut self) -> Result<Option<Bytes>, NodeError> {
        let Some(len) = self.peek_len() else {
            return Ok(None);
        };
        if self.buffer[0] != 0 {
            return Err(NodeError::new(
                Code::Internal,
                "the node sent a compressed message, which cannot carry per-node metadata",
            ));
        }
        if len > MAX_MESSAGE_SIZE {
            return Err(NodeError::new(
                Code::ResourceExhausted,
                format!(
                    "reply message of {len} bytes exceeds the limit of {MAX_MESSAGE_SIZE} bytes"
                ),
            ));
        }
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }

    fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }
}

/// `message` with its gRPC prefix (uncompressed).
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    // Bounded by the message limit well below u32::MAX.
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(message);
    out.freeze()
}

/// The merged response: messages from the channel, then `grpc-status: 0` once every sender
/// is gone.
#[derive(Debug)]
struct MergedBody {
    rx: mpsc::Receiver<Bytes>,
    trailers_sent: bool,
}

impl HttpBody for MergedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.trailers_sent {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(None) => {
                self.trailers_sent = true;
                let mut trailers = HeaderMap::new();
                trailers.insert(&GRPC_STATUS, HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_sent
    }
}

/// Node tasks that are aborted when the call is dropped (the client went away).
struct AbortOnDrop(Vec<JoinHandle<Vec<u8>>>);

impl AbortOnDrop {
    fn detach(mut self) {
        self.0.clear();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talos_streaming_methods_are_detected() {
        assert!(is_streaming("/machine.MachineService/Logs"));
        assert!(is_streaming("/machine.MachineService/Events"));
        assert!(is_streaming("/x.Y/WatchStream"));
        assert!(!is_streaming("/machine.MachineService/Version"));
    }

    #[test]
    fn deframer_splits_messages_across_chunks() {
        let mut frames = Deframer::default();
        let mut wire = grpc_frame(b"abc").to_vec();
        wire.extend_from_slice(&grpc_frame(b""));
        wire.extend_from_slice(&grpc_frame(b"xy"));
        let (first, rest) = wire.split_at(4);
        frames.push(first);
        assert!(frames.next().unwrap().is_none());
        frames.push(rest);
        assert_eq!(frames.next().unwrap().unwrap(), &b"abc"[..]);
        assert_eq!(frames.next().unwrap().unwrap(), &b""[..]);
        assert_eq!(frames.next().unwrap().unwrap(), &b"xy"[..]);
        assert!(frames.next().unwrap().is_none() && frames.is_empty());
    }

    #[test]
    fn deframer_refuses_compressed_and_oversized() {
        let mut frames = Deframer::default();
        frames.push(&[1, 0, 0, 0, 1, 9]);
        assert_eq!(frames.next().unwrap_err().code, Code::Internal);
        let mut frames = Deframer::default();
        frames.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(frames.next().unwrap_err().code, Code::ResourceExhausted);
    }
}
