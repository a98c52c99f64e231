//! The issuance journal: one JSON line per issued certificate, durable before the certificate
//! leaves trustd.
//!
//! ```json
//! {"time":"2025-01-01T00:00:00Z","serial":"5e1f…","cn":"worker-1","sans":["10.5.0.4","worker-1"],
//!  "peer":"10.5.0.4:40312","not_after":"2025-01-02T00:00:00Z","token":"3f2a9c1b"}
//! ```
//!
//! `token` is the [`token_fingerprint`](crate::token_fingerprint) of the token the caller used,
//! never the token.
//!
//! One writer thread owns the file (opened `O_APPEND`, mode 0600). Callers hand it their line
//! and wait; the writer takes every line that is queued, writes them with one `write`, makes
//! them durable with one `fdatasync` and then answers each caller (group commit). If the write
//! or the sync fails, the file is cut back to its previous length, so a failed record never
//! leaves a torn line that later lines would be appended to, and each waiting caller gets the
//! error: its certificate is not returned.
//!
//! A caller announces itself ([`Journal::expect`]) before it signs. While announced callers
//! remain, the writer holds a batch open for up to [`GATHER_WINDOW`] so that their lines share
//! its sync (PostgreSQL's `commit_delay`, with its `commit_siblings` taken as "anyone signing").
//! Each `fdatasync` costs tens of µs of CPU on a VM (a virtio notification, a VM exit). With
//! 16 callers keeping both cores of the benchmark machine signing, a sync took 2.6–2.9 lines
//! without the window and about 5 with it (docs/BENCHMARKS.md). A lone caller is never held:
//! when its line arrives nobody else is signing.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::JournalError;

/// Records queued for the writer at most; callers beyond this wait for room.
const QUEUE_DEPTH: usize = 1024;

/// Most records written with one sync.
const MAX_BATCH: usize = 256;

/// Longest a batch is held open for announced callers. About two signatures on one core: long
/// enough to gather the lines the other workers are signing, short next to a call's round trip
/// under load (milliseconds), and never paid by a lone caller.
const GATHER_WINDOW: Duration = Duration::from_micros(200);

/// One issued certificate, as written to the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// When it was issued (RFC 3339, UTC).
    pub time: String,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// The subject common name, if any.
    pub cn: Option<String>,
    /// The DNS names and IP addresses it is valid for, DNS names first.
    pub sans: Vec<String>,
    /// The caller's address (`ip:port`) as seen by the TCP accept.
    pub peer: String,
    /// End of validity (RFC 3339, UTC).
    pub not_after: String,
    /// Fingerprint of the join token the caller presented.
    pub token: String,
}

impl JournalRecord {
    /// A record for `leaf`, issued now to `peer`, who presented the token with `token`'s
    /// fingerprint.
    pub(crate) fn new(
        leaf: &basalt_pki::Identity,
        peer: std::net::SocketAddr,
        token: &str,
    ) -> Self {
        Self {
            time: rfc3339(OffsetDateTime::now_utc()),
            serial: leaf.serial.clone(),
            cn: leaf.common_name.clone(),
            sans: sans(leaf),
            peer: peer.to_string(),
            not_after: rfc3339(leaf.not_after),
            token: token.to_owned(),
        }
    }
}

/// The SANs of `leaf` as strings, DNS names first.
fn sans(leaf: &basalt_pki::Identity) -> Vec<String> {
    leaf.dns_names
        .iter()
        .cloned()
        .chain(leaf.ip_addresses.iter().map(ToString::to_string))
        .collect()
}

/// RFC 3339 text, or the `time` crate's default form for dates RFC 3339 cannot express.
pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// A handle to the journal writer; cheap to share behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    tx: mpsc::Sender<Pending>,
    /// Callers between [`Journal::expect`] and their [`Journal::append`] (or giving up).
    expected: Arc<AtomicUsize>,
}

/// A caller that will probably append a record soon; see the module docs. Dropping it (the
/// call failed before signing, say) withdraws the announcement.
#[derive(Debug)]
pub(crate) struct Expected(Arc<AtomicUsize>);

impl Drop for Expected {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Pending {
    line: Vec<u8>,
    done: oneshot::Sender<io::Result<()>>,
}

impl Journal {
    /// Opens (creating, mode 0600) the journal for appending. When the file is new, its
    /// directory is synced so the file itself survives a crash.
    pub(crate) fn open_file(path: &Path) -> io::Result<File> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        if !existed && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(file)
    }

    /// Checks, without creating anything, that [`Journal::open_file`] would succeed: an
    /// existing journal must open for appending, a missing one needs an existing directory.
    pub(crate) fn check_writable(path: &Path) -> io::Result<()> {
        match OpenOptions::new().append(true).open(path) {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                match path.parent().map(std::fs::metadata) {
                    Some(Ok(meta)) if meta.is_dir() => Ok(()),
                    Some(Err(err)) => Err(err),
                    _ => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the journal's directory does not exist",
                    )),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Starts the writer on a blocking thread. It ends once every [`Journal`] handle is gone.
    pub(crate) fn start(path: PathBuf, file: File) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let expected = Arc::new(AtomicUsize::new(0));
        let writer_expected = Arc::clone(&expected);
        let task = tokio::task::spawn_blocking(move || write_loop(file, rx, &writer_expected));
        (Self { path, tx, expected }, task)
    }

    /// Announces a caller that is about to sign and then [`append`](Journal::append).
    pub(crate) fn expect(&self) -> Expected {
        self.expected.fetch_add(1, Ordering::AcqRel);
        Expected(Arc::clone(&self.expected))
    }

    /// Appends `record` (ending the caller's announcement) and returns once it is on disk.
    pub(crate) async fn append(
        &self,
        expected: Expected,
        record: &JournalRecord,
    ) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(record).map_err(JournalError::Encode)?;
        line.push(b'\n');
        // Withdrawn before the line is queued: the writer then never waits for a line that is
        // already in its queue.
        drop(expected);
        let (done, result) = oneshot::channel();
        self.tx
            .send(Pending { line, done })
            .await
            .map_err(|_| JournalError::Stopped)?;
        result
            .await
            .map_err(|_| JournalError::Stopped)?
            .map_err(|source| JournalError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

fn write_loop(mut file: File, mut rx: mpsc::Receiver<Pending>, expected: &AtomicUsize) {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        gather(&mut rx, &mut batch, expected, &waker);
        buf.clear();
        for pending in &batch {
            buf.extend_from_slice(&pending.line);
        }
        let result = write_batch(&mut file, &buf);
        for pending in batch.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(()),
                // io::Error is not Clone; each caller gets the kind and the text.
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            };
            // A caller that gave up (its call was cancelled) no longer listens.
            let _ = pending.done.send(answer);
        }
    }
}

/// Adds every queued record to `batch`, then, while announced callers remain, waits up to
/// [`GATHER_WINDOW`] for theirs.
fn gather(
    rx: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    expected: &AtomicUsize,
    waker: &Waker,
) {
    let mut cx = Context::from_waker(waker);
    let deadline = Instant::now() + GATHER_WINDOW;
    while batch.len() < MAX_BATCH {
        match rx.poll_recv(&mut cx) {
            Poll::Ready(Some(next)) => batch.push(next),
            // Every handle is gone: write what there is; the loop then ends.
            Poll::Ready(None) => return,
            Poll::Pending => {
                let now = Instant::now();
                if expected.load(Ordering::Acquire) == 0 || now >= deadline {
                    return;
                }
                // Woken by the next send (the waker registered above) or the deadline; a
                // spurious wake-up just polls again.
                thread::park_timeout(deadline - now);
            }
        }
    }
}

/// Wakes the writer thread parked in [`gather`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Writes `buf` and syncs it; on failure cuts the file back to where it was.
fn write_batch(file: &mut File, buf: &[u8]) -> io::Result<()> {
    let before = file.metadata()?.len();
    let result = file.write_all(buf).and_then(|()| file.sync_data());
    if result.is_err() {
        // Best effort: if even this fails, the error below is what the caller needs to know.
        let _ = file.set_len(before);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record(serial: &str) -> JournalRecord {
        JournalRecord {
            time: "2025-01-01T00:00:00Z".to_owned(),
            serial: serial.to_owned(),
            cn: Some("worker-1".to_owned()),
            sans: vec!["worker-1".to_owned(), "10.5.0.4".to_owned()],
            peer: "10.5.0.4:40312".to_owned(),
            not_after: "2025-01-02T00:00:00Z".to_owned(),
            token: "3f2a9c1b".to_owned(),
        }
    }

    fn read(path: &Path) -> Vec<JournalRecord> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn records_are_appended_one_per_line_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issued.jsonl");
        Journal::check_writable(&path).unwrap();
        let file = Journal::open_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (journal, task) = Journal::start(path.clone(), file);
        let journal = std::sync::Arc::new(journal);
        let mut calls = Vec::new();
        for i in 0..20 {
            let journal = journal.clone();
            calls.push(tokio::spawn(async move {
                journal
                    .append(journal.expect(), &record(&format!("{i:x}")))
                    .await
            }));
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        drop(journal);
        task.await.unwrap();
        let records = read(&path);
        assert_eq!(records.len(), 20);
        let mut serials: Vec<_> = records.iter().map(|r| r.serial.clone()).collect();
        serials.sort();
        serials.dedup();
        assert_eq!(serials.len(), 20);
        assert_eq!(records[0].token, "3f2a9c1b");

        // Reopening appends after what is there.
        let (journal, task) = Journal::start(path.clone(), Journal::open_file(&path).unwrap());
        journal
            .append(journal.expect(), &record("ff"))
            .await
            .unwrap();
        drop(journal);
        task.await.unwrap();
        assert_eq!(read(&path).len(), 21);
    }

    #[tokio::test]
    async fn an_announced_caller_that_never_appends_holds_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issued.jsonl");
        let (journal, task) = Journal::start(path.clone(), Journal::open_file(&path).unwrap());
        // A caller that announced itself and then failed before signing, never withdrawing
        // (still in scope): the writer holds a batch open at most GATHER_WINDOW for it.
        let stuck = journal.expect();
        for i in 0..3 {
            tokio::time::timeout(
                Duration::from_secs(10),
                journal.append(journal.expect(), &record(&format!("{i:x}"))),
            )
            .await
            .expect("appended despite the stuck announcement")
            .unwrap();
        }
        drop(stuck);
        assert_eq!(journal.expected.load(Ordering::Acquire), 0);
        drop(journal);
        task.await.unwrap();
        assert_eq!(read(&path).len(), 3);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_leaves_no_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issued.jsonl");
        std::fs::write(&path, "{\"serial\":\"1\"}\n").unwrap();
        // A read-only handle makes every write fail.
        let file = File::open(&path).unwrap();
        let (journal, task) = Journal::start(path.clone(), file);
        let err = journal
            .append(journal.expect(), &record("2"))
            .await
            .unwrap_err();
        assert!(matches!(err, JournalError::Write { .. }), "{err:?}");
        drop(journal);
        task.await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"serial\":\"1\"}\n"
        );
    }

    #[test]
    fn check_writable_needs_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Journal::check_writable(&dir.path().join("missing/issued.jsonl")).is_err());
        assert!(Journal::check_writable(&dir.path().join("issued.jsonl")).is_ok());
        // Nothing was created.
        assert!(!dir.path().join("issued.jsonl").exists());
    }
}
