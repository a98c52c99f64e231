//! A service's captured output: stdout and stderr, interleaved line by line, kept in a bounded
//! in-memory ring (for `Logs` with `tail_lines`), appended to a size-rotated file
//! (`<logs>/<id>.log`, one old generation `<id>.log.1`), and fanned out to followers.
//!
//! Memory stays bounded whatever the service writes and however slowly clients read:
//! - output moves in *chunks* of whole lines (at most one read buffer, [`READ_BUFFER`]);
//!   a line longer than [`LogLimits::max_line`] is split into several lines;
//! - the ring holds at most [`LogLimits::ring_bytes`] (whole chunks are evicted, oldest first);
//! - followers read from a `broadcast` channel of [`FOLLOW_CAPACITY`] chunks: one that falls
//!   further behind skips ahead and is told how many chunks it missed, instead of making
//!   machined buffer for it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use basalt_api::common;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::{broadcast, mpsc, watch};

use crate::services::BoxStream;

/// Size of the buffer each output pipe is read into; also the largest chunk.
pub(crate) const READ_BUFFER: usize = 64 * 1024;

/// How many chunks a follower may fall behind before it skips ahead (at most
/// `FOLLOW_CAPACITY × READ_BUFFER` = 8 MiB held per service for slow followers).
pub(crate) const FOLLOW_CAPACITY: usize = 128;

/// How many chunks a `Logs` stream buffers between its reader and the transport.
const STREAM_BUFFER: usize = 4;

/// Bounds of one service's output capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes of recent output kept in memory for `tail_lines`.
    pub ring_bytes: usize,
    /// The log file is rotated when a write would take it past this size.
    pub rotate_at: u64,
    /// Longest line, newline included; longer lines are split.
    pub max_line: usize,
}

impl Default for LogLimits {
    /// 1 MiB in memory, files rotated at 10 MiB, lines split at 16 KiB.
    fn default() -> Self {
        LogLimits {
            ring_bytes: 1024 * 1024,
            rotate_at: 10 * 1024 * 1024,
            max_line: 16 * 1024,
        }
    }
}

/// One service's output: ring, file and followers.
#[derive(Debug)]
pub(crate) struct LogSink {
    id: String,
    limits: LogLimits,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    ring: VecDeque<Bytes>,
    ring_bytes: usize,
    followers: broadcast::Sender<Bytes>,
    file: Option<LogFile>,
}

impl LogSink {
    /// A sink for service `id`; with `dir`, output is also appended to `<dir>/<id>.log`.
    pub(crate) fn new(id: &str, dir: Option<&Path>, limits: LogLimits) -> std::io::Result<Self> {
        let file = match dir {
            Some(dir) => Some(LogFile::open(
                dir.join(format!("{id}.log")),
                limits.rotate_at,
            )?),
            None => None,
        };
        let (followers, _) = broadcast::channel(FOLLOW_CAPACITY);
        Ok(LogSink {
            id: id.to_owned(),
            limits,
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                ring_bytes: 0,
                followers,
                file,
            }),
        })
    }

    /// The log file's path, if output goes to one.
    #[cfg(test)]
    pub(crate) fn path(&self) -> Option<PathBuf> {
        self.lock().file.as_ref().map(|file| file.path.clone())
    }

    /// Records a chunk of whole lines (each ending in `\n`).
    pub(crate) fn push(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let mut inner = self.lock();
        while !inner.ring.is_empty() && inner.ring_bytes + chunk.len() > self.limits.ring_bytes {
            if let Some(old) = inner.ring.pop_front() {
                inner.ring_bytes -= old.len();
            }
        }
        inner.ring_bytes += chunk.len();
        inner.ring.push_back(chunk.clone());
        if let Some(file) = &mut inner.file
            && let Err(err) = file.write(&chunk)
        {
            tracing::warn!(
                service = %self.id,
                file = %file.path.display(),
                error = &err as &dyn std::error::Error,
                "Cannot write the service's log file; keeping its output in memory only"
            );
            inner.file = None;
        }
        // An error only means nobody follows right now.
        let _ = inner.followers.send(chunk);
    }

    /// The last `lines` lines (all kept lines with `None`), as chunks, oldest first.
    pub(crate) fn tail(&self, lines: Option<usize>) -> Vec<Bytes> {
        tail_chunks(&self.lock().ring, lines)
    }

    /// [`LogSink::tail`] plus a receiver of every later chunk, with nothing lost or repeated
    /// between the two.
    pub(crate) fn subscribe(
        &self,
        lines: Option<usize>,
    ) -> (Vec<Bytes>, broadcast::Receiver<Bytes>) {
        let inner = self.lock();
        (tail_chunks(&inner.ring, lines), inner.followers.subscribe())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the ring consistent, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The suffix of `ring` holding the last `lines` lines; the first chunk is cut at a line start.
fn tail_chunks(ring: &VecDeque<Bytes>, lines: Option<usize>) -> Vec<Bytes> {
    let Some(mut wanted) = lines else {
        return ring.iter().cloned().collect();
    };
    let mut out = Vec::new();
    for chunk in ring.iter().rev() {
        if wanted == 0 {
            break;
        }
        let count = chunk.iter().filter(|b| **b == b'\n').count();
        if count <= wanted {
            out.push(chunk.clone());
            wanted -= count;
        } else {
            // Keep the last `wanted` lines: skip `count - wanted` newlines from the start.
            let skip = count - wanted;
            let cut = chunk
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(skip - 1)
                .map_or(0, |(at, _)| at + 1);
            out.push(chunk.slice(cut..));
            wanted = 0;
        }
    }
    out.reverse();
    out
}

/// The log file with its rotation.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotate_at: u64,
}

impl LogFile {
    /// Opens (appending) or creates the file, mode 0640.
    fn open(path: PathBuf, rotate_at: u64) -> std::io::Result<Self> {
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            file,
            size,
            rotate_at,
        })
    }

    /// Appends `chunk`, first rotating (`<id>.log` → `<id>.log.1`, replacing the older one)
    /// if it would grow past the limit.
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + chunk.len() as u64 > self.rotate_at {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            self.file = open_append(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Reads one output pipe until EOF into `sink`, in chunks of whole lines; lines longer than
/// the limit are split, and a last line without a newline gets one.
pub(crate) async fn pump<R: AsyncRead + Unpin>(mut reader: R, sink: Arc<LogSink>) {
    let max_line = sink.limits.max_line.max(2);
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut splitter = LineSplitter::new(max_line);
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) => {
                tracing::debug!(
                    service = %sink.id,
                    error = &err as &dyn std::error::Error,
                    "Cannot read the service's output"
                );
                break;
            }
        };
        let chunk = splitter.feed(&buffer[..read]);
        if !chunk.is_empty() {
            sink.push(Bytes::from(chunk));
        }
    }
    let rest = splitter.finish();
    if !rest.is_empty() {
        sink.push(Bytes::from(rest));
    }
}

/// Turns arbitrary reads into chunks of whole lines of at most `max_line` bytes each.
#[derive(Debug)]
struct LineSplitter {
    max_line: usize,
    partial: Vec<u8>,
}

impl LineSplitter {
    fn new(max_line: usize) -> Self {
        LineSplitter {
            max_line,
            partial: Vec::new(),
        }
    }

    /// The complete lines `data` finishes (possibly none); the rest is kept for later.
    fn feed(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + self.partial.len());
        while !data.is_empty() {
            // Room for the line's content; the newline takes the last byte.
            let room = self.max_line - 1 - self.partial.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|b| *b == b'\n') {
                Some(at) => {
                    out.append(&mut self.partial);
                    out.extend_from_slice(&window[..=at]);
                    data = &data[at + 1..];
                }
                None if window.len() == room => {
                    out.append(&mut self.partial);
                    out.extend_from_slice(window);
                    out.push(b'\n');
                    data = &data[room..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                }
            }
        }
        out
    }

    /// The unfinished last line, newline added (empty if there is none).
    fn finish(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            rest.push(b'\n');
        }
        rest
    }
}

/// A `Logs` response: the selected tail, then (with `follow`) new output as it comes, until
/// the client goes away or machined shuts down (`closing` turns true).
pub(crate) fn stream(
    sink: &LogSink,
    tail: Option<usize>,
    follow: bool,
    mut closing: watch::Receiver<bool>,
) -> BoxStream<common::Data> {
    let (backlog, receiver) = if follow {
        let (backlog, receiver) = sink.subscribe(tail);
        (backlog, Some(receiver))
    } else {
        (sink.tail(tail), None)
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let id = sink.id.clone();
    tokio::spawn(async move {
        for chunk in backlog {
            if tx.send(Ok(data(&chunk))).await.is_err() {
                return;
            }
        }
        let Some(mut receiver) = receiver else {
            return;
        };
        loop {
            let next = tokio::select! {
                next = receiver.recv() => next,
                () = tx.closed() => return,
                () = crate::supervise::stopped(&mut closing) => return,
            };
            let message = match next {
                Ok(chunk) => data(&chunk),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(service = %id, skipped, "A log follower fell behind");
                    common::Data {
                        metadata: None,
                        bytes: format!(
                            "[machined: skipped {skipped} chunks of {id} output: this reader is \
                             slower than the service writes]\n"
                        )
                        .into_bytes(),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // Waiting here is the backpressure: while the client is slow, the broadcast
            // receiver falls behind (and later skips) instead of machined buffering.
            tokio::select! {
                sent = tx.send(Ok(message)) => if sent.is_err() { return },
                () = crate::supervise::stopped(&mut closing) => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn data(chunk: &Bytes) -> common::Data {
    common::Data {
        metadata: None,
        bytes: chunk.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[Bytes]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    fn sink(limits: LogLimits) -> LogSink {
        LogSink::new("test", None, limits).expect("sink")
    }

    #[test]
    fn splitter_emits_whole_lines_and_splits_long_ones() {
        let mut splitter = LineSplitter::new(8);
        assert_eq!(splitter.feed(b"ab"), b"");
        assert_eq!(splitter.feed(b"c\nde"), b"abc\n");
        // "de" + 5 more = 7 content bytes: the line is full and split.
        assert_eq!(splitter.feed(b"fghijkl\n"), b"defghij\nkl\n");
        assert_eq!(splitter.feed(b"0123456789abcdef"), b"0123456\n789abcd\n");
        assert_eq!(splitter.finish(), b"ef\n");
        assert_eq!(splitter.finish(), b"");
    }

    #[test]
    fn tail_counts_lines_across_chunks() {
        let sink = sink(LogLimits::default());
        sink.push(Bytes::from_static(b"one\ntwo\n"));
        sink.push(Bytes::from_static(b"three\n"));
        sink.push(Bytes::from_static(b"four\nfive\n"));
        assert_eq!(lines(&sink.tail(None)), "one\ntwo\nthree\nfour\nfive\n");
        assert_eq!(lines(&sink.tail(Some(0))), "");
        assert_eq!(lines(&sink.tail(Some(1))), "five\n");
        assert_eq!(lines(&sink.tail(Some(3))), "three\nfour\nfive\n");
        assert_eq!(lines(&sink.tail(Some(4))), "two\nthree\nfour\nfive\n");
        assert_eq!(
            lines(&sink.tail(Some(100))),
            "one\ntwo\nthree\nfour\nfive\n"
        );
    }

    #[test]
    fn the_ring_is_bounded_in_bytes() {
        let sink = sink(LogLimits {
            ring_bytes: 100,
            ..LogLimits::default()
        });
        for i in 0..1000 {
            sink.push(Bytes::from(format!("line {i:04}\n")));
        }
        let kept: usize = sink.tail(None).iter().map(Bytes::len).sum();
        assert!(kept <= 100, "{kept}");
        assert!(lines(&sink.tail(Some(1))).ends_with("line 0999\n"));
    }

    #[test]
    fn the_file_rotates_and_keeps_one_old_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = LogSink::new(
            "web",
            Some(dir.path()),
            LogLimits {
                rotate_at: 100,
                ..LogLimits::default()
            },
        )
        .expect("sink");
        for i in 0..50 {
            sink.push(Bytes::from(format!("line {i:04}\n")));
        }
        let current = std::fs::read_to_string(dir.path().join("web.log")).expect("log");
        let old = std::fs::read_to_string(dir.path().join("web.log.1")).expect("old log");
        assert!(current.len() <= 100 && old.len() <= 100);
        assert!(current.ends_with("line 0049\n"), "{current}");
        // The old generation ends right where the current one starts.
        let number = |line: &str| line[5..].parse::<u32>().expect("number");
        let first = current.lines().next().map(number).expect("a line");
        let last_old = old.lines().last().map(number).expect("a line");
        assert_eq!(last_old + 1, first);
        let entries = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(entries, 2, "only the log and one old generation");
        assert_eq!(sink.path(), Some(dir.path().join("web.log")));
    }

    #[tokio::test]
    async fn followers_get_the_tail_then_new_output_and_lag_with_a_notice() {
        let sink = Arc::new(sink(LogLimits::default()));
        sink.push(Bytes::from_static(b"old\n"));
        let (backlog, mut receiver) = sink.subscribe(Some(5));
        sink.push(Bytes::from_static(b"new\n"));
        assert_eq!(lines(&backlog), "old\n");
        assert_eq!(
            receiver.recv().await.expect("new"),
            Bytes::from_static(b"new\n")
        );

        for i in 0..FOLLOW_CAPACITY + 10 {
            sink.push(Bytes::from(format!("{i}\n")));
        }
        assert!(matches!(
            receiver.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }

    #[tokio::test]
    async fn pump_reads_until_eof() {
        let sink = Arc::new(sink(LogLimits::default()));
        let (mut writer, reader) = tokio::io::duplex(16);
        let task = tokio::spawn(pump(reader, Arc::clone(&sink)));
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"hello\nworld")
            .await
            .expect("write");
        drop(writer);
        task.await.expect("pump");
        assert_eq!(lines(&sink.tail(None)), "hello\nworld\n");
    }
}
