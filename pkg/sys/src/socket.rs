//! Preparing the filesystem for a unix-socket server: its directory, a stale socket left by a
//! previous run, and the socket's permission bits.
//!
//! The rules protect the host: an existing directory is never re-moded (the socket might be placed
//! in `/tmp` or `/run`, whose modes are not ours to change), and only a *socket* that nobody is
//! listening on is ever removed: a regular file, a directory or a live server's socket at the
//! path is refused with an error that says what is there.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::Error;

/// What [`prepare_socket_dir`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirState {
    /// The directory was created with the requested mode.
    Created,
    /// The directory already existed; its mode (permission bits only) was left as it is.
    Existing {
        /// The directory's current permission bits, e.g. `0o750`.
        mode: u32,
    },
}

impl DirState {
    /// Whether the directory lets "other" users in (any of the low three mode bits set): worth a
    /// warning, because then the socket's own mode is the only barrier.
    pub fn is_open_to_others(self) -> bool {
        match self {
            DirState::Created => false,
            DirState::Existing { mode } => mode & 0o007 != 0,
        }
    }
}

/// Makes sure `dir` exists as a directory. A missing directory (and missing parents) is created
/// and the leaf gets exactly `mode` (the umask does not apply); an existing one is left alone and
/// its mode reported.
pub fn prepare_socket_dir(dir: &Path, mode: u32) -> Result<DirState, Error> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            return Ok(DirState::Existing {
                mode: meta.permissions().mode() & 0o7777,
            });
        }
        Ok(_) => {
            return Err(Error::NotADirectory {
                path: dir.to_owned(),
            });
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Inspect {
                path: dir.to_owned(),
                source,
            });
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    // DirBuilder's mode is filtered by the umask; set it explicitly so the result is exact.
    set_mode(dir, mode)?;
    Ok(DirState::Created)
}

/// Clears `path` for a new listening socket.
///
/// Returns `Ok(false)` when nothing is there and `Ok(true)` when a stale socket (one nobody accepts
/// connections on) was removed. Anything else is refused and left in place:
/// [`Error::NotASocket`] for a file, directory, symlink, …, and [`Error::SocketInUse`] when a live
/// server still accepts connections on it.
pub fn remove_stale_socket(path: &Path) -> Result<bool, Error> {
    // symlink_metadata: a symlink at the path is reported as such, never followed.
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(Error::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    let file_type = meta.file_type();
    if !file_type.is_socket() {
        return Err(Error::NotASocket {
            path: path.to_owned(),
            kind: kind_of(&file_type),
        });
    }
    // A socket whose server still runs accepts the connection; a stale one refuses it.
    if UnixStream::connect(path).is_ok() {
        return Err(Error::SocketInUse {
            path: path.to_owned(),
        });
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        // Someone else removed it between our checks: the path is clear all the same.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(Error::RemoveSocket {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Sets the permission bits of `path` to exactly `mode` (e.g. `0o660` for a socket).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| Error::SetMode {
        path: path.to_owned(),
        mode,
        source,
    })
}

/// A human name for a file type, for error messages.
fn kind_of(file_type: &fs::FileType) -> &'static str {
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_fifo() {
        "named pipe"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn short_tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("bs")
            .tempdir_in("/tmp")
            .expect("temp dir")
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn a_missing_directory_is_created_with_the_exact_mode() {
        let tmp = short_tempdir();
        let dir = tmp.path().join("state/run");
        assert_eq!(
            prepare_socket_dir(&dir, 0o750).expect("prepare"),
            DirState::Created
        );
        assert_eq!(mode_of(&dir), 0o750);
    }

    #[test]
    fn an_existing_directory_keeps_its_mode() {
        let tmp = short_tempdir();
        set_mode(tmp.path(), 0o755).expect("chmod");
        let state = prepare_socket_dir(tmp.path(), 0o750).expect("prepare");
        assert_eq!(state, DirState::Existing { mode: 0o755 });
        assert!(state.is_open_to_others());
        assert_eq!(mode_of(tmp.path()), 0o755);
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let tmp = short_tempdir();
        let path = tmp.path().join("run");
        fs::write(&path, b"x").expect("write");
        let err = prepare_socket_dir(&path, 0o750).expect_err("a file is not a directory");
        assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn nothing_at_the_path_is_fine() {
        let tmp = short_tempdir();
        assert!(!remove_stale_socket(&tmp.path().join("s.sock")).expect("clear"));
    }

    #[test]
    fn a_stale_socket_is_removed() {
        let tmp = short_tempdir();
        let path = tmp.path().join("s.sock");
        drop(UnixListener::bind(&path).expect("bind"));
        assert!(path.exists(), "closing a listener leaves the socket file");
        assert!(remove_stale_socket(&path).expect("remove"));
        assert!(!path.exists());
    }

    #[test]
    fn a_live_socket_is_refused() {
        let tmp = short_tempdir();
        let path = tmp.path().join("s.sock");
        let _listener = UnixListener::bind(&path).expect("bind");
        let err = remove_stale_socket(&path).expect_err("live socket");
        assert!(matches!(err, Error::SocketInUse { .. }), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn a_regular_file_is_refused_and_kept() {
        let tmp = short_tempdir();
        let path = tmp.path().join("s.sock");
        fs::write(&path, b"precious").expect("write");
        let err = remove_stale_socket(&path).expect_err("regular file");
        assert_eq!(
            err.to_string(),
            format!(
                "{} exists and is a regular file, not a socket; refusing to remove it",
                path.display()
            )
        );
        assert_eq!(fs::read(&path).expect("read"), b"precious");
    }

    #[test]
    fn a_symlink_to_a_socket_is_refused() {
        let tmp = short_tempdir();
        let target = tmp.path().join("real.sock");
        let _listener = UnixListener::bind(&target).expect("bind");
        let link = tmp.path().join("s.sock");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = remove_stale_socket(&link).expect_err("symlink");
        assert!(
            matches!(
                err,
                Error::NotASocket {
                    kind: "symbolic link",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn set_mode_sets_exact_bits() {
        let tmp = short_tempdir();
        let path = tmp.path().join("f");
        fs::write(&path, b"").expect("write");
        set_mode(&path, 0o660).expect("chmod");
        assert_eq!(mode_of(&path), 0o660);
    }
}
