//! The file methods of `machine.MachineService`: Read, List, DiskUsage and Copy, behind one
//! path policy ([`FilesPolicy`]).
//!
//! # How a call runs
//!
//! 1. The request's path goes through [`FilesPolicy::resolve`] on the blocking pool: absolute,
//!    not denied, canonicalized, under an allowed root. A refusal is the call's status (nothing
//!    is streamed).
//! 2. A producer on the blocking pool (file reads, directory walks and gzip are blocking work)
//!    sends messages into a channel of [`STREAM_BUFFER`] messages; the gRPC response stream
//!    reads from it. Memory per call is bounded by that buffer, whatever the size of the file
//!    or tree.
//! 3. When the client goes away, tonic drops the response stream, the producer's next send
//!    fails and it stops at once; a walk stops between two entries, a read between two chunks.
//!
//! # Talos behaviours kept
//!
//! Read refuses anything but a regular file; List emits the root as `.` (a file root under its
//! own name), walks in lexical order without following symlinks, reports `link` for symlinks,
//! `mode` as Go `os.FileMode` bits and per-entry errors in `error`; DiskUsage sums a
//! directory's children (its own size included) and emits it after them, filtered by `all`,
//! `threshold` and `recursion_depth`, with `/proc/kcore` counted as 0; Copy streams a tar.gz of
//! the tree below the root (a file root as one entry), symlinks stored as symlinks, and ends
//! with a `metadata.error` message listing what it skipped.
//!
//! # Differences from Talos
//!
//! - Every path passes the policy; denied directories met while walking are reported with an
//!   error (List, DiskUsage) or skipped (Copy) and never entered.
//! - Walks stop after [`FilesPolicy::max_walk_entries`] entries with ResourceExhausted.
//! - Read streams [`READ_CHUNK_SIZE`] chunks instead of Talos's 1 KiB: every message costs a
//!   gRPC frame, an HTTP/2 frame and a pass through apid's proxy, so 1 KiB chunks spend more
//!   time on framing than on data; Talos clients accept any chunk size.
//! - DiskUsage checks every path before measuring any and fails the call on the first bad one
//!   (Talos streams an error entry per bad path); an empty `paths` is InvalidArgument.

mod copy;
mod list;
mod mode;
mod policy;
mod read;
mod usage;
mod walk;

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use basalt_api::common;
use basalt_api::machine;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub use self::policy::{
    DEFAULT_MAX_WALK_ENTRIES, DenyRule, FilesPolicy, FilesPolicyError, MACHINE_CONFIG_REASON,
    STATE_DIR_REASON, default_deny_rules,
};
pub use self::read::READ_CHUNK_SIZE;
use crate::Error;
use crate::services::BoxStream;

/// Messages buffered between a producer and the gRPC stream. With [`READ_CHUNK_SIZE`] and
/// Copy's chunks that is at most 512 KiB per call; a slow client stalls the producer instead
/// of growing a queue.
pub const STREAM_BUFFER: usize = 8;

/// The file methods, sharing one policy.
#[derive(Clone, Debug)]
pub(crate) struct Files {
    policy: Arc<FilesPolicy>,
}

impl Files {
    pub(crate) fn new(policy: FilesPolicy) -> Self {
        Files {
            policy: Arc::new(policy),
        }
    }

    /// `Read`: the file's bytes in [`READ_CHUNK_SIZE`] chunks.
    pub(crate) async fn read(
        &self,
        request: machine::ReadRequest,
    ) -> Result<BoxStream<common::Data>, Error> {
        let policy = Arc::clone(&self.policy);
        let file = blocking(move || read::open(&policy, &request.path)).await?;
        Ok(produce(move |sink| read::stream(file, sink)))
    }

    /// `List`: one `FileInfo` per entry.
    pub(crate) async fn list(
        &self,
        request: machine::ListRequest,
    ) -> Result<BoxStream<machine::FileInfo>, Error> {
        let policy = Arc::clone(&self.policy);
        let root = {
            let policy = Arc::clone(&policy);
            let path = request.root.clone();
            blocking(move || policy.resolve(&path)).await?
        };
        Ok(produce(move |sink| {
            list::stream(&policy, &root, &request, sink);
        }))
    }

    /// `DiskUsage`: sizes of the requested paths and what is below them.
    pub(crate) async fn disk_usage(
        &self,
        mut request: machine::DiskUsageRequest,
    ) -> Result<BoxStream<machine::DiskUsageInfo>, Error> {
        let policy = Arc::clone(&self.policy);
        let roots = {
            let policy = Arc::clone(&policy);
            let paths = std::mem::take(&mut request.paths);
            blocking(move || usage::resolve_all(&policy, &paths)).await?
        };
        Ok(produce(move |sink| {
            usage::stream(&policy, &roots, &request, sink);
        }))
    }

    /// `Copy`: a tar.gz of the root, in chunks.
    pub(crate) async fn copy(
        &self,
        request: machine::CopyRequest,
    ) -> Result<BoxStream<common::Data>, Error> {
        let policy = Arc::clone(&self.policy);
        let root = {
            let policy = Arc::clone(&policy);
            blocking(move || policy.resolve(&request.root_path)).await?
        };
        Ok(produce(move |sink| {
            copy::stream(&policy, &root, sink);
        }))
    }
}

/// The sending half of a producer: a bounded channel into the response stream.
#[derive(Debug)]
pub(crate) struct Sink<T>(mpsc::Sender<Result<T, Status>>);

impl<T> Sink<T> {
    /// Sends one message, waiting while the buffer is full. `false` once the client has gone
    /// away: the producer must stop.
    pub(crate) fn send(&self, message: T) -> bool {
        self.0.blocking_send(Ok(message)).is_ok()
    }

    /// Whether the client has gone away (for producers that wait between messages).
    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Ends the stream with `status` (after what was already sent).
    pub(crate) fn fail(&self, status: Status) {
        // The client may be gone already; then nobody is left to tell.
        let _ = self.0.blocking_send(Err(status));
    }
}

/// Runs `work` on the blocking pool and returns the stream of what it sends. A panic in `work`
/// ends the stream with Internal rather than a silent (and truncated) success.
pub(crate) fn produce<T, F>(work: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(&Sink<T>) + Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::task::spawn_blocking(move || {
        let sink = Sink(tx);
        if std::panic::catch_unwind(AssertUnwindSafe(|| work(&sink))).is_err() {
            tracing::error!("A file stream producer panicked");
            sink.fail(Status::internal("internal error in machined; see its log"));
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Runs blocking filesystem work (canonicalize, stat, open) off the async workers.
async fn blocking<T, F>(work: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::BlockingTask { source })?
}

/// An I/O error as Go prints it in Talos's per-entry `error` strings: `permission denied`
/// rather than `Permission denied (os error 13)`.
pub(crate) fn io_text(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" (os error ") {
        Some(cut) if text.ends_with(')') => &text[..cut],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    #[test]
    fn io_errors_read_like_go() {
        let err = io::Error::from_raw_os_error(13);
        assert_eq!(io_text(&err), "permission denied");
        let err = io::Error::other("Custom thing");
        assert_eq!(io_text(&err), "custom thing");
    }

    #[tokio::test]
    async fn a_producer_stops_when_the_client_goes_away() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let stream = produce(move |sink: &Sink<u64>| {
            let mut sent = 0_u64;
            while sink.send(sent) {
                sent += 1;
            }
            let _ = done_tx.send(sent);
        });
        let mut stream = stream;
        assert_eq!(stream.next().await.expect("first").expect("ok"), 0);
        drop(stream);
        let sent = tokio::task::spawn_blocking(move || {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("producer stopped")
        })
        .await
        .expect("join");
        // At most the buffer plus the one taken plus the one in flight.
        assert!(sent <= STREAM_BUFFER as u64 + 2, "{sent}");
    }

    #[tokio::test]
    async fn a_panicking_producer_ends_the_stream_with_internal() {
        #[allow(clippy::panic)]
        let mut stream = produce(|_: &Sink<u8>| panic!("boom"));
        let status = stream.next().await.expect("an item").expect_err("an error");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(stream.next().await.is_none());
    }
}
