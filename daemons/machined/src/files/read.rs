//! `Read`: stream one regular file.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use basalt_api::common;

use super::Sink;
use super::policy::FilesPolicy;
use crate::Error;

/// Bytes per `common.Data` message (Talos sends 1 KiB; see the module docs of `files` for why
/// basalt sends more).
pub const READ_CHUNK_SIZE: usize = 64 * 1024;

/// A file that passed every check, ready to stream.
#[derive(Debug)]
pub(crate) struct OpenFile {
    file: File,
    path: PathBuf,
}

/// Resolves `requested` through the policy and opens it.
///
/// The checks, in order: the policy ([`FilesPolicy::resolve`]); `stat` says regular file
/// (Talos: "path must be a regular file"); the open is non-blocking (a path swapped for a FIFO
/// in between cannot hang the call); `fstat` of the open file says regular file again; and
/// what the descriptor refers to (`/proc/self/fd/N`) passes the policy again, which closes the
/// window between canonicalizing and opening.
pub(crate) fn open(policy: &FilesPolicy, requested: &str) -> Result<OpenFile, Error> {
    let path = policy.resolve(requested)?;
    let not_regular = || Error::NotRegularFile {
        path: requested.to_owned(),
    };
    let meta = std::fs::metadata(&path).map_err(|err| file_error(requested, &path, "stat", err))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let file = basalt_sys::open_nonblocking(&path).map_err(|err| match err {
        basalt_sys::Error::Open { source, .. } => file_error(requested, &path, "open", source),
        other => Error::File {
            op: "open",
            path: path.clone(),
            source: io::Error::other(other),
        },
    })?;
    let meta = file
        .metadata()
        .map_err(|err| file_error(requested, &path, "stat", err))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    policy.check_opened(requested, &file)?;
    Ok(OpenFile { file, path })
}

/// Sends the file in [`READ_CHUNK_SIZE`] chunks until EOF, a read error (which ends the
/// stream with Internal) or the client going away.
pub(crate) fn stream(open: OpenFile, sink: &Sink<common::Data>) {
    let OpenFile { mut file, path } = open;
    loop {
        let mut chunk = vec![0_u8; READ_CHUNK_SIZE];
        let n = match file.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                let err = Error::File {
                    op: "read",
                    path,
                    source,
                };
                sink.fail(err.into());
                return;
            }
        };
        chunk.truncate(n);
        if !sink.send(common::Data {
            metadata: None,
            bytes: chunk,
        }) {
            tracing::debug!(path = %path.display(), "Read stopped: the client went away");
            return;
        }
    }
}

/// Maps an error on a path the caller named: gone in the meantime → NotFound, no permission →
/// PermissionDenied, anything else → Internal.
pub(crate) fn file_error(requested: &str, path: &Path, op: &'static str, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::NotFound => Error::PathNotFound {
            path: requested.to_owned(),
        },
        io::ErrorKind::PermissionDenied => Error::PathDenied {
            path: requested.to_owned(),
            reason: format!("machined has no permission to {op} it"),
        },
        _ => Error::File {
            op,
            path: path.to_owned(),
            source: err,
        },
    }
}
