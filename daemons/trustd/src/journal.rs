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
//! them durable with one `fdatasync` and then answers each caller (group commit: under load the
//! cost of a sync is shared, and with one caller it is one sync per certificate). If the write
//! or the sync fails, the file is cut back to its previous length, so a failed record never
//! leaves a torn line that later lines would be appended to, and each waiting caller gets the
//! error: its certificate is not returned.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
pub(crate) fn sans(leaf: &basalt_pki::Identity) -> Vec<String> {
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
        let task = tokio::task::spawn_blocking(move || write_loop(file, rx));
        (Self { path, tx }, task)
    }

    /// Appends `record` and returns once it is on disk.
    pub(crate) async fn append(&self, record: &JournalRecord) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(record).map_err(JournalError::Encode)?;
        line.push(b'\n');
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

fn write_loop(mut file: File, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
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
                journal.append(&record(&format!("{i:x}"))).await
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
        journal.append(&record("ff")).await.unwrap();
        drop(journal);
        task.await.unwrap();
        assert_eq!(read(&path).len(), 21);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_leaves_no_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issued.jsonl");
        std::fs::write(&path, "{\"serial\":\"1\"}\n").unwrap();
        // A read-only handle makes every write fail.
        let file = File::open(&path).unwrap();
        let (journal, task) = Journal::start(path.clone(), file);
        let err = journal.append(&record("2")).await.unwrap_err();
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
