//! machined's error type and its single mapping onto gRPC statuses.

use std::io;
use std::path::PathBuf;

use tonic::Status;

/// Everything that can go wrong in machined, at bind time, while serving, or inside a handler.
///
/// Variants are named after the failed operation and carry non-secret context; messages are
/// lower-case and never repeat their `source` (reporters print the chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket directory could not be prepared, or the socket path holds something that must
    /// not be removed (a regular file, a live server's socket, …).
    #[error("prepare the socket {path}")]
    PrepareSocket {
        /// The socket path.
        path: PathBuf,
        /// What basalt-sys refused or failed to do.
        #[source]
        source: basalt_sys::Error,
    },
    /// Binding the unix socket failed.
    #[error("bind unix socket {path}")]
    BindSocket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A host query needed at startup or by a handler failed (uname, sysconf, hostname, …).
    #[error("query the host")]
    Host {
        /// The failed query.
        #[source]
        source: basalt_sys::Error,
    },
    /// The gRPC server failed.
    #[error("serve gRPC on the unix socket")]
    Serve {
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// Reading a /proc file failed.
    #[error("read {path}")]
    ReadProc {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A /proc file did not have the expected shape.
    #[error("parse {path}: {reason}")]
    ParseProc {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A blocking task (a /proc scan) panicked or was cancelled.
    #[error("run a blocking task")]
    BlockingTask {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A request argument is out of range; the text is safe to show the caller.
    #[error("{reason}")]
    InvalidArgument {
        /// What was wrong with the request.
        reason: String,
    },
    /// apid's node credentials or config could not be produced.
    #[error("prepare apid's credentials and config")]
    Apid {
        /// What failed.
        #[source]
        source: crate::apid::Error,
    },
}

impl From<Error> for Status {
    /// The one place where machined decides what a failure looks like on the wire. No wildcard
    /// arm: a new variant must be placed in a group here.
    fn from(err: Error) -> Self {
        match err {
            // The caller's fault: say what was wrong.
            Error::InvalidArgument { reason } => Status::invalid_argument(reason),
            // Our fault: the chain goes to the log, the caller gets a generic message.
            err @ (Error::PrepareSocket { .. }
            | Error::BindSocket { .. }
            | Error::Host { .. }
            | Error::Serve { .. }
            | Error::ReadProc { .. }
            | Error::ParseProc { .. }
            | Error::BlockingTask { .. }
            | Error::Apid { .. }) => internal(&err),
        }
    }
}

/// Logs `err` with its whole chain at error level and returns a generic `Internal` status: file
/// paths and OS errors stay in machined's log.
pub(crate) fn internal(err: &(dyn std::error::Error + 'static)) -> Status {
    tracing::error!(error = err, "Request failed");
    Status::internal("internal error in machined; see its log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_keeps_its_reason() {
        let status = Status::from(Error::InvalidArgument {
            reason: "count must be at most 100000".to_owned(),
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "count must be at most 100000");
    }

    #[test]
    fn internal_failures_hide_paths_and_causes() {
        let status = Status::from(Error::ReadProc {
            path: PathBuf::from("/proc/meminfo"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("/proc"), "{}", status.message());
    }
}
