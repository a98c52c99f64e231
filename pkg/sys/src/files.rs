//! File access std does not offer: opening without blocking (character devices such as
//! `/dev/kmsg`, and files that might turn out to be FIFOs), waiting until such a file has
//! data, and reading extended attributes.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::Error;

/// One extended attribute of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    /// The attribute's full name, e.g. `user.comment` or `security.selinux`.
    pub name: String,
    /// Its raw value.
    pub value: Vec<u8>,
}

/// Opens `path` read-only with `O_NONBLOCK` (and std's `O_CLOEXEC`).
///
/// For regular files the flag changes nothing. It matters for two callers: `/dev/kmsg`, whose
/// reads then end with `EAGAIN` at the end of the kernel log instead of waiting for the next
/// record, and paths a caller asked to read that might have been swapped for a FIFO (whose
/// blocking open would wait for a writer forever).
pub fn open_nonblocking(path: &Path) -> Result<File, Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
}

/// Waits at most `timeout` for `file` to become readable (`poll(2)` for `POLLIN`). `true`: a
/// read will not block (it may also report an error or end of file); `false`: the timeout
/// passed, or a signal interrupted the wait. Callers that must notice cancellation poll in a
/// loop with a short timeout.
pub fn wait_readable(file: &impl AsFd, timeout: Duration) -> Result<bool, Error> {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut fds, timeout) {
        Ok(0) | Err(nix::Error::EINTR) => Ok(false),
        Ok(_) => Ok(true),
        Err(source) => Err(Error::Poll { source }),
    }
}

/// The extended attributes of `path` itself (`llistxattr(2)` + `lgetxattr(2)`: a symlink's own
/// attributes, never its target's), in the order the filesystem lists them.
///
/// A filesystem without xattr support yields an empty list. An attribute that disappears
/// between listing and reading is left out. Names that are not UTF-8 are converted lossily.
pub fn xattrs(path: &Path) -> Result<Vec<Xattr>, Error> {
    let fail = |source: rustix::io::Errno| Error::Xattr {
        path: path.to_owned(),
        source: io::Error::from(source),
    };
    let names = match list_names(path) {
        Ok(names) => names,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(errno) => return Err(fail(errno)),
    };
    let mut attrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|name| !name.is_empty()) {
        match value(path, name) {
            Ok(value) => attrs.push(Xattr {
                name: String::from_utf8_lossy(name).into_owned(),
                value,
            }),
            Err(rustix::io::Errno::NODATA) => {}
            Err(errno) => return Err(fail(errno)),
        }
    }
    Ok(attrs)
}

/// How many times a size query and the read that follows it are retried when the attribute
/// grows in between (`ERANGE`).
const XATTR_ATTEMPTS: usize = 3;

/// The NUL-separated attribute names of `path`.
fn list_names(path: &Path) -> Result<Vec<u8>, rustix::io::Errno> {
    let mut last = rustix::io::Errno::RANGE;
    for _ in 0..XATTR_ATTEMPTS {
        let size = rustix::fs::llistxattr_query(path)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0_u8; size];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(errno) => last = errno,
        }
        if last != rustix::io::Errno::RANGE {
            break;
        }
    }
    Err(last)
}

/// The value of attribute `name` of `path`.
fn value(path: &Path, name: &[u8]) -> Result<Vec<u8>, rustix::io::Errno> {
    // Names come from the kernel, NUL-separated, so they hold no NUL themselves.
    let name = std::ffi::CString::new(name).map_err(|_| rustix::io::Errno::INVAL)?;
    let mut last = rustix::io::Errno::RANGE;
    for _ in 0..XATTR_ATTEMPTS {
        let size = rustix::fs::lgetxattr_query(path, name.as_c_str())?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0_u8; size];
        match rustix::fs::lgetxattr(path, name.as_c_str(), &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(errno) => last = errno,
        }
        if last != rustix::io::Errno::RANGE {
            break;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn a_regular_file_opens_and_reads_normally() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").expect("write");
        let mut text = String::new();
        open_nonblocking(&path)
            .expect("open")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "hello");
    }

    #[test]
    fn a_missing_file_keeps_the_io_error_kind() {
        let err = open_nonblocking(Path::new("/definitely/not/here")).expect_err("missing");
        let Error::Open { source, .. } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert_eq!(err.to_string(), "open /definitely/not/here");
    }

    #[test]
    fn a_user_xattr_is_read_back_where_the_filesystem_supports_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").expect("write");
        match rustix::fs::setxattr(
            &path,
            "user.basalt",
            b"value",
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => {
                let attrs = xattrs(&path).expect("xattrs");
                assert!(
                    attrs.contains(&Xattr {
                        name: "user.basalt".to_owned(),
                        value: b"value".to_vec(),
                    }),
                    "{attrs:?}"
                );
            }
            // tmpfs without user xattrs, or an overlay that refuses them: nothing to check
            // beyond the call not failing.
            Err(_) => {
                xattrs(&path).expect("xattrs");
            }
        }
    }

    #[test]
    fn wait_readable_reports_data_and_times_out_without() {
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        assert!(!wait_readable(&reader, Duration::from_millis(10)).expect("poll"));
        std::io::Write::write_all(&mut writer, b"x").expect("write");
        assert!(wait_readable(&reader, Duration::from_secs(5)).expect("poll"));
    }

    #[test]
    fn xattrs_of_a_missing_path_fail_with_the_path() {
        let err = xattrs(Path::new("/definitely/not/here")).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "read extended attributes of /definitely/not/here"
        );
    }
}
