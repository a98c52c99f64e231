//! The one error type of basalt-sys.

use std::io;
use std::path::PathBuf;

/// A failed host operation. Messages say what was being done; the cause is the `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `statvfs(2)` failed on a path.
    #[error("statfs {path}")]
    Statfs {
        /// The path that was queried.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `gethostname(2)` failed or returned a name that is not UTF-8.
    #[error("read the hostname")]
    Hostname {
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The kernel returned a hostname that is not valid UTF-8.
    #[error("the hostname is not valid UTF-8")]
    HostnameNotUtf8,
    /// `uname(2)` failed.
    #[error("read uname")]
    Uname {
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `sysconf(3)` failed or does not know the variable.
    #[error("sysconf {name}")]
    Sysconf {
        /// The variable, e.g. `_SC_PAGESIZE`.
        name: &'static str,
        /// The errno, when the call failed (none when the variable is merely unsupported).
        #[source]
        source: Option<nix::Error>,
    },
    /// Sending a signal to a process failed.
    #[error("signal process {pid}")]
    Signal {
        /// The process.
        pid: u32,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Creating the socket directory failed.
    #[error("create socket directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The socket's parent path exists but is not a directory.
    #[error("socket directory {path} exists and is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Reading a path's metadata failed.
    #[error("inspect {path}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Something other than a socket sits at the socket path; it is never removed.
    #[error("{path} exists and is a {kind}, not a socket; refusing to remove it")]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there instead ("regular file", "directory", …).
        kind: &'static str,
    },
    /// A live server already accepts connections on the socket.
    #[error("{path} is in use: another server accepts connections on it")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// Removing a stale socket failed.
    #[error("remove stale socket {path}")]
    RemoveSocket {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Opening a file failed. The source keeps the `io::ErrorKind` (NotFound,
    /// PermissionDenied, …) for callers that answer differently per cause.
    #[error("open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Waiting for a file descriptor to become readable (`poll(2)`) failed.
    #[error("wait for a file to become readable")]
    Poll {
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Listing or reading a path's extended attributes failed.
    #[error("read extended attributes of {path}")]
    Xattr {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `reboot(2)` (restart or power-off) returned, which it only does on failure.
    #[error("{action} the machine")]
    Reboot {
        /// `reboot` or `power off`.
        action: &'static str,
        /// The errno (EPERM without CAP_SYS_BOOT).
        #[source]
        source: nix::Error,
    },
    /// `prctl(PR_SET_CHILD_SUBREAPER)` failed.
    #[error("become a child subreaper")]
    Subreaper {
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Listing this process's children (`/proc/self/task/*/children`) failed.
    #[error("list the children of this process")]
    ListChildren {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `waitpid(2)` on a child failed.
    #[error("reap process {pid}")]
    Reap {
        /// The child.
        pid: u32,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Changing a path's permission bits failed.
    #[error("set mode {mode:o} on {path}")]
    SetMode {
        /// The path.
        path: PathBuf,
        /// The mode that was being set.
        mode: u32,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}
