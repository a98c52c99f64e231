//! `Copy`: a tar.gz of a directory tree (or of one file), produced incrementally.
//!
//! The walk feeds a `tar::Builder` over a `GzEncoder` over a writer that cuts the compressed
//! bytes into [`COPY_CHUNK_SIZE`] messages and hands them to the bounded stream channel, so
//! memory stays bounded whatever the size of the tree. As Talos's archiver: entries are named
//! relative to the root, the root directory itself is not an entry (a file root is one entry
//! named after the file), symlinks are stored as symlinks (never followed), and what could not
//! be archived is listed in a final message's `metadata.error`.

use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::path::Path;

use basalt_api::common;
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{Builder, Header, HeaderMode};

use super::policy::FilesPolicy;
use super::walk::{Entry, Outcome, Visit, WalkOptions, walk};
use super::{Sink, io_text};
use crate::Error;

/// Compressed bytes per `common.Data` message.
pub(crate) const COPY_CHUNK_SIZE: usize = 64 * 1024;

/// How many skipped entries the final message names; the rest are counted.
const SKIPPED_NAMED: usize = 20;

/// A file that reports size 0 (most of /proc) is read into memory to learn its real size, up to
/// this many bytes. Talos stops at 4 KiB and archives larger ones as empty; 1 MiB covers
/// nearly all of /proc while keeping memory bounded.
const UNSIZED_LIMIT: u64 = 1024 * 1024;

/// Archives the resolved `root` into the stream.
pub(crate) fn stream(policy: &FilesPolicy, root: &Path, sink: &Sink<common::Data>) {
    let root_is_dir = std::fs::metadata(root).is_ok_and(|m| m.is_dir());
    let mut tar = Builder::new(GzEncoder::new(
        ChunkWriter::new(sink),
        Compression::default(),
    ));
    let mut skipped = Skipped::default();
    let mut write_error = None;
    let options = WalkOptions {
        max_depth: None,
        limit: policy.max_walk_entries(),
    };
    let outcome = walk(root, policy, options, |visit| {
        let entry = match visit {
            Visit::Entry(entry) => entry,
            Visit::ReadDirFailed(entry, err) => {
                skipped.note(&entry.path, &format!("open: {}", io_text(&err)));
                return ControlFlow::Continue(());
            }
            Visit::Leave(_) => return ControlFlow::Continue(()),
        };
        if entry.depth == 0 && root_is_dir {
            return ControlFlow::Continue(());
        }
        match append(&mut tar, entry, policy) {
            Ok(None) => ControlFlow::Continue(()),
            Ok(Some(reason)) => {
                skipped.note(&entry.path, &reason);
                ControlFlow::Continue(())
            }
            Err(err) => {
                write_error = Some(err);
                ControlFlow::Break(())
            }
        }
    });

    let written = match write_error {
        Some(err) => Err(err),
        None => finish(tar),
    };
    if let Err(err) = written {
        if err.kind() == io::ErrorKind::BrokenPipe {
            tracing::debug!(root = %root.display(), "Copy stopped: the client went away");
        } else {
            sink.fail(
                Error::File {
                    op: "archive",
                    path: root.to_owned(),
                    source: err,
                }
                .into(),
            );
        }
        return;
    }
    // The archive is complete and valid; now say what it lacks.
    if outcome == Outcome::Limit {
        sink.fail(
            Error::WalkLimit {
                path: root.display().to_string(),
                limit: options.limit,
            }
            .into(),
        );
        return;
    }
    if let Some(error) = skipped.text() {
        sink.send(common::Data {
            metadata: Some(common::Metadata {
                error,
                ..common::Metadata::default()
            }),
            bytes: Vec::new(),
        });
    }
}

/// Ends the tar stream, then the gzip stream, then sends the last partial chunk.
fn finish(tar: Builder<GzEncoder<ChunkWriter<'_>>>) -> io::Result<()> {
    tar.into_inner()?.finish()?.finish()
}

/// Appends one entry. `Ok(Some(reason))`: skipped, nothing written; `Err`: the archive's
/// writer failed (client gone, or compression failed) and the archive cannot continue.
fn append<W: Write>(
    tar: &mut Builder<W>,
    entry: &Entry,
    policy: &FilesPolicy,
) -> io::Result<Option<String>> {
    if let Some(rule) = &entry.denied {
        return Ok(Some(format!("denied: {}", rule.reason())));
    }
    let meta = match &entry.metadata {
        Ok(meta) => meta,
        Err(err) => return Ok(Some(format!("lstat: {}", io_text(err)))),
    };
    let kind = meta.file_type();
    let mut header = Header::new_gnu();
    if kind.is_dir() {
        header.set_metadata_in_mode(meta, HeaderMode::Complete);
        header.set_size(0);
        tar.append_data(&mut header, &entry.relative, io::empty())?;
    } else if kind.is_symlink() {
        let target = match &entry.link {
            Some(Ok(target)) => target,
            Some(Err(err)) => return Ok(Some(format!("readlink: {}", io_text(err)))),
            None => return Ok(Some("readlink: not a symlink any more".to_owned())),
        };
        header.set_metadata_in_mode(meta, HeaderMode::Complete);
        header.set_size(0);
        tar.append_link(&mut header, &entry.relative, target)?;
    } else if kind.is_file() {
        return append_file(tar, entry, &mut header, policy);
    } else {
        return Ok(Some("not a regular file, directory or symlink".to_owned()));
    }
    Ok(None)
}

fn append_file<W: Write>(
    tar: &mut Builder<W>,
    entry: &Entry,
    header: &mut Header,
    policy: &FilesPolicy,
) -> io::Result<Option<String>> {
    // Non-blocking: a regular file that was swapped for a FIFO since the lstat cannot hang us.
    let mut file = match basalt_sys::open_nonblocking(&entry.path) {
        Ok(file) => file,
        Err(basalt_sys::Error::Open { source, .. }) => {
            return Ok(Some(format!("open: {}", io_text(&source))));
        }
        Err(err) => return Ok(Some(format!("open: {err}"))),
    };
    // The open follows symlinks in the path's directories: one swapped in since the walk
    // listed them could lead anywhere. What the descriptor refers to passes the policy, as
    // Read checks it, or the file is left out.
    if let Err(refused) = policy.check_opened(&entry.path.to_string_lossy(), &file) {
        return Ok(Some(format!("not archived: {refused}")));
    }
    let meta: Metadata = match file.metadata() {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Ok(Some("not a regular file any more".to_owned())),
        Err(err) => return Ok(Some(format!("stat: {}", io_text(&err)))),
    };
    header.set_metadata_in_mode(&meta, HeaderMode::Complete);
    if meta.len() == 0 {
        // /proc and /sys report 0 for files that do have content.
        let mut data = Vec::new();
        if let Err(err) = (&mut file).take(UNSIZED_LIMIT + 1).read_to_end(&mut data) {
            return Ok(Some(format!("read: {}", io_text(&err))));
        }
        if data.len() as u64 > UNSIZED_LIMIT {
            return Ok(Some(format!(
                "reports size 0 but holds more than {UNSIZED_LIMIT} bytes"
            )));
        }
        header.set_size(data.len() as u64);
        tar.append_data(header, &entry.relative, data.as_slice())?;
        return Ok(None);
    }
    header.set_size(meta.len());
    let mut exact = ExactSize {
        inner: file,
        remaining: meta.len(),
        problem: None,
    };
    tar.append_data(header, &entry.relative, &mut exact)?;
    Ok(exact
        .problem
        .map(|problem| format!("{problem}; archived with its size at the start, zero-padded")))
}

/// Yields exactly `remaining` bytes from `inner`: a file that grows is cut, one that shrinks or
/// fails to read is padded with zeros (the tar header already promised the size). Read errors
/// are recorded, never returned, so that only writer failures abort the archive.
struct ExactSize<R> {
    inner: R,
    remaining: u64,
    problem: Option<String>,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = if self.problem.is_some() {
            0
        } else {
            loop {
                match self.inner.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        self.problem = Some(format!("read: {}", io_text(&err)));
                        break 0;
                    }
                }
            }
        };
        let n = if n == 0 {
            // Shrunk or failed: pad.
            if self.problem.is_none() {
                self.problem = Some("shrank while being archived".to_owned());
            }
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Cuts the gzip output into messages and sends them. A failed send (the client went away)
/// surfaces as `BrokenPipe` to the tar and gzip writers, which then stop.
struct ChunkWriter<'a> {
    sink: &'a Sink<common::Data>,
    chunk: Vec<u8>,
}

impl<'a> ChunkWriter<'a> {
    fn new(sink: &'a Sink<common::Data>) -> Self {
        ChunkWriter {
            sink,
            chunk: Vec::with_capacity(COPY_CHUNK_SIZE),
        }
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::replace(&mut self.chunk, Vec::with_capacity(COPY_CHUNK_SIZE));
        if self.sink.send(common::Data {
            metadata: None,
            bytes,
        }) {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    /// Sends what is left.
    fn finish(mut self) -> io::Result<()> {
        self.send_chunk()
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = COPY_CHUNK_SIZE - self.chunk.len();
        let n = room.min(data.len());
        self.chunk.extend_from_slice(&data[..n]);
        if self.chunk.len() >= COPY_CHUNK_SIZE {
            self.send_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks go out when full or at the end; gzip's flushes need not cut messages.
        Ok(())
    }
}

/// What could not be archived, for the final `metadata.error`.
#[derive(Debug, Default)]
struct Skipped {
    named: Vec<String>,
    total: usize,
}

impl Skipped {
    fn note(&mut self, path: &Path, reason: &str) {
        self.total += 1;
        if self.named.len() < SKIPPED_NAMED {
            self.named.push(format!(
                "skipping {:?}: {reason}",
                path.display().to_string()
            ));
        }
        tracing::debug!(path = %path.display(), reason, "Copy skipped an entry");
    }

    /// `skipping "/a": …; skipping "/b": …; and 3 more`, or `None` when nothing was skipped.
    fn text(&self) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let mut text = self.named.join("; ");
        let more = self.total - self.named.len();
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory swapped for a symlink after the walk listed it (here: the entry is made as
    /// the walk made it, then the swap): the file it leads to is checked again and left out.
    #[test]
    fn a_file_reached_through_a_symlink_swapped_in_after_the_listing_is_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path()).expect("canonical");
        let (allowed, state) = (base.join("allowed"), base.join("allowed/state"));
        std::fs::create_dir_all(allowed.join("logs")).expect("mkdir");
        std::fs::create_dir_all(&state).expect("mkdir");
        std::fs::write(allowed.join("logs/app.log"), "log line").expect("write");
        std::fs::write(state.join("app.log"), "secret key").expect("write");
        let policy = FilesPolicy::new(
            [allowed.clone()],
            [super::super::policy::DenyRule::new(state.clone(), "test state").expect("rule")],
        )
        .expect("policy");
        let listed = Entry::new(
            allowed.join("logs/app.log"),
            "logs/app.log".into(),
            1,
            &policy,
        );
        let mut tar = Builder::new(Vec::new());
        assert_eq!(append(&mut tar, &listed, &policy).expect("append"), None);

        std::fs::remove_dir_all(allowed.join("logs")).expect("rm");
        std::os::unix::fs::symlink(&state, allowed.join("logs")).expect("swap");
        let mut tar = Builder::new(Vec::new());
        let reason = append(&mut tar, &listed, &policy)
            .expect("append")
            .expect("left out");
        assert!(reason.starts_with("not archived:"), "{reason}");
        assert!(reason.contains("test state"), "{reason}");
        let bytes = tar.into_inner().expect("tar");
        assert!(
            !bytes.windows(10).any(|w| w == b"secret key"),
            "nothing of the denied file is archived"
        );
    }

    #[test]
    fn exact_size_cuts_growth_and_pads_shrinkage() {
        let mut grown = ExactSize {
            inner: &b"abcdef"[..],
            remaining: 4,
            problem: None,
        };
        let mut out = Vec::new();
        grown.read_to_end(&mut out).expect("read");
        assert_eq!(out, b"abcd");
        assert!(grown.problem.is_none());

        let mut shrunk = ExactSize {
            inner: &b"ab"[..],
            remaining: 5,
            problem: None,
        };
        let mut out = Vec::new();
        shrunk.read_to_end(&mut out).expect("read");
        assert_eq!(out, b"ab\0\0\0");
        assert_eq!(
            shrunk.problem.as_deref(),
            Some("shrank while being archived")
        );
    }

    #[test]
    fn skipped_entries_are_named_then_counted() {
        let mut skipped = Skipped::default();
        assert_eq!(skipped.text(), None);
        for i in 0..SKIPPED_NAMED + 3 {
            skipped.note(Path::new(&format!("/x/{i}")), "permission denied");
        }
        let text = skipped.text().expect("text");
        assert!(
            text.starts_with("skipping \"/x/0\": permission denied; "),
            "{text}"
        );
        assert!(text.ends_with("; and 3 more"), "{text}");
    }
}
