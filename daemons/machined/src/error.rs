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
    /// A blocking task (a /proc scan, a certificate re-issue) panicked or was cancelled.
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
    /// The revocation list could not be opened (or apid's copy not written) at bind.
    #[error("open the revocation list")]
    Revocation {
        /// What failed.
        #[source]
        source: crate::revocation::RevocationError,
    },
    /// trustd's credentials or config could not be produced.
    #[error("prepare trustd's credentials and config")]
    Trustd {
        /// What failed.
        #[source]
        source: crate::trustd::Error,
    },
    /// A path named in a request does not exist.
    #[error("{path}: no such file or directory")]
    PathNotFound {
        /// The path as the caller wrote it.
        path: String,
    },
    /// The files policy (or the file's own permissions) refuses a path.
    #[error("access to {path} is denied: {reason}")]
    PathDenied {
        /// The path as the caller wrote it.
        path: String,
        /// Which rule or root refused it, and what it resolves to when that differs.
        reason: String,
    },
    /// `Read` was asked for something other than a regular file.
    #[error("path must be a regular file: {path}")]
    NotRegularFile {
        /// The path as the caller wrote it.
        path: String,
    },
    /// A List, DiskUsage or Copy walk reached its entry limit.
    #[error("stopped after {limit} entries under {path}: ask for a smaller tree or a lower depth")]
    WalkLimit {
        /// The walk's root.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// The kernel log cannot be read on this host (unprivileged, or no /dev/kmsg).
    #[error("cannot read the kernel log: {reason}")]
    KernelLog {
        /// Why, e.g. "/dev/kmsg: permission denied".
        reason: String,
    },
    /// A service control or query named a service that is not defined.
    ///
    /// Talos answers `service "x" not defined` with code Unknown (a plain Go error); basalt
    /// keeps the text and uses NotFound, which clients can act on.
    #[error("service {service:?} not defined")]
    UnknownService {
        /// The id the caller asked for.
        service: String,
    },
    /// The service refuses this operation over the API (apid cannot be stopped or restarted
    /// through the API it serves). Talos's text; basalt's code is FailedPrecondition.
    #[error("service {service:?} doesn't support {operation} operation via API")]
    ServiceControlRefused {
        /// The service.
        service: String,
        /// `start`, `stop` or `restart`.
        operation: &'static str,
    },
    /// The service is held until the node is ready for it (a worker's apid waits for its
    /// certificate from trustd); it starts by itself then, and nothing controls it before.
    #[error(
        "service {service:?} cannot {operation} yet: it waits for the node's certificate from \
         trustd and starts by itself once the node has it"
    )]
    ServiceHeld {
        /// The service.
        service: String,
        /// `start`, `stop` or `restart`.
        operation: &'static str,
    },
    /// `Logs` named a log source that does not exist (Talos's text; NotFound here).
    #[error("log {id:?} was not registered")]
    UnknownLog {
        /// The id the caller asked for.
        id: String,
    },
    /// machined is shutting down and no longer controls services.
    #[error("machined is shutting down")]
    ShuttingDown,
    /// The services' log directory could not be created.
    #[error("create the service log directory {path}")]
    CreateLogDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A service's log file could not be opened.
    #[error("open the log file of service {service}")]
    OpenServiceLog {
        /// The service.
        service: String,
        /// The I/O error (naming no path: see the log directory).
        #[source]
        source: io::Error,
    },
    /// A file operation failed for a reason the caller cannot fix.
    #[error("{op} {path}")]
    File {
        /// What was being done: "open", "read", "archive", …
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The boot id could not be generated, read or stored.
    #[error("boot id {path}")]
    BootId {
        /// The file involved (`/dev/urandom`, `<state>/boot_id`, the kernel's boot id).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A lifecycle request (reboot, shutdown, reset) arrived while another sequence runs.
    #[error("a {sequence} is already in progress")]
    SequenceInProgress {
        /// The running sequence: `reboot`, `shutdown` or `reset`.
        sequence: &'static str,
    },
    /// The method needs the CA key, which only control-plane nodes hold.
    #[error("{method} is only available on control plane nodes")]
    ControlPlaneOnly {
        /// The method name, e.g. `GenerateClientConfiguration`.
        method: &'static str,
    },
    /// `machine.ca` could not be read as PEM text.
    #[error("read the CA from the machine config")]
    ReadMachineCa {
        /// What was wrong.
        #[source]
        source: basalt_config::Error,
    },
    /// Loading the CA or issuing a client certificate failed.
    #[error("issue a client certificate")]
    IssueClientCert {
        /// What basalt-pki refused or failed to do.
        #[source]
        source: basalt_pki::Error,
    },
    /// A client config could not be rendered.
    #[error("render a client config")]
    RenderClientConfig {
        /// The YAML error.
        #[source]
        source: basalt_config::Error,
    },
    /// Reset could not wipe (part of) the state directory.
    #[error("{op} {path} while wiping the state directory")]
    WipeState {
        /// What was being done: "list", "remove", "empty", …
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An ApplyConfiguration, rollback or confirmation arrived while another one runs
    /// (Talos's text).
    #[error("another apply configuration is already in progress")]
    ApplyInProgress,
    /// The apply mode cannot apply this change (it needs a reboot), or there is nothing to
    /// confirm; the text says which and what to do instead.
    #[error("{reason}")]
    ApplyRefused {
        /// Why, naming the config keys concerned.
        reason: String,
    },
    /// A request option basalt does not support (ApplyConfiguration mode REBOOT, as Talos
    /// outside maintenance mode).
    #[error("{reason}")]
    Unsupported {
        /// What is unsupported and what to use instead.
        reason: String,
    },
    /// A handler check beyond the rules table: the method is admin-only here (Talos's
    /// ApplyConfiguration outside maintenance mode).
    #[error("{reason}")]
    AdminOnly {
        /// What was refused, the roles held, and why.
        reason: String,
    },
    /// A config history version that is not stored (never existed, or pruned).
    #[error("no stored machine config version {version}")]
    ConfigVersionNotFound {
        /// The version asked for.
        version: u64,
    },
    /// machined was started without a config store (no state directory).
    #[error("machined runs without a machine config store; configuration apply is unavailable")]
    NoConfigStore,
    /// The config store's files could not be read or written.
    #[error("machine config store")]
    ConfigStore {
        /// What failed (names the file).
        #[source]
        source: crate::config_store::Error,
    },
}

impl From<Error> for Status {
    /// The one place where machined decides what a failure looks like on the wire. No wildcard
    /// arm: a new variant must be placed in a group here.
    fn from(err: Error) -> Self {
        match err {
            // The caller's fault: say what was wrong.
            Error::InvalidArgument { reason } => Status::invalid_argument(reason),
            // File API: the message names the caller's own path and, when refused, the rule.
            err @ Error::PathNotFound { .. } => Status::not_found(err.to_string()),
            err @ Error::PathDenied { .. } => Status::permission_denied(err.to_string()),
            err @ Error::NotRegularFile { .. } => Status::invalid_argument(err.to_string()),
            err @ Error::WalkLimit { .. } => Status::resource_exhausted(err.to_string()),
            // This host cannot serve the call at all (e.g. Dmesg without /dev/kmsg access).
            err @ Error::KernelLog { .. } => Status::failed_precondition(err.to_string()),
            // Services and logs: Talos's texts, with codes clients can act on.
            err @ (Error::UnknownService { .. } | Error::UnknownLog { .. }) => {
                Status::not_found(err.to_string())
            }
            err @ (Error::ServiceControlRefused { .. } | Error::ServiceHeld { .. }) => {
                Status::failed_precondition(err.to_string())
            }
            err @ Error::ShuttingDown => Status::unavailable(err.to_string()),
            // Lifecycle: one sequence at a time (Talos answers the same way).
            err @ Error::SequenceInProgress { .. } => Status::failed_precondition(err.to_string()),
            // Worker nodes have no CA key: the method does not exist there.
            err @ Error::ControlPlaneOnly { .. } => Status::unimplemented(err.to_string()),
            // Config apply: Talos's code for a concurrent apply; a mode that cannot apply the
            // change names the keys; REBOOT mode is deprecated (Unimplemented, as Talos).
            err @ (Error::ApplyInProgress | Error::ApplyRefused { .. } | Error::NoConfigStore) => {
                Status::failed_precondition(err.to_string())
            }
            err @ Error::Unsupported { .. } => Status::unimplemented(err.to_string()),
            err @ Error::AdminOnly { .. } => Status::permission_denied(err.to_string()),
            err @ Error::ConfigVersionNotFound { .. } => Status::not_found(err.to_string()),
            // A full disk is the operator's to fix; the path stays in the log.
            Error::ConfigStore { ref source } if is_out_of_space(source) => {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "Config store is out of space"
                );
                Status::resource_exhausted(
                    "no space left in machined's state directory: the configuration change was \
                     not stored; free some space and apply it again",
                )
            }
            // Our fault: the chain goes to the log, the caller gets a generic message.
            err @ (Error::PrepareSocket { .. }
            | Error::BindSocket { .. }
            | Error::Host { .. }
            | Error::Serve { .. }
            | Error::ReadProc { .. }
            | Error::ParseProc { .. }
            | Error::BlockingTask { .. }
            | Error::Apid { .. }
            | Error::Revocation { .. }
            | Error::Trustd { .. }
            | Error::CreateLogDir { .. }
            | Error::OpenServiceLog { .. }
            | Error::File { .. }
            | Error::BootId { .. }
            | Error::ReadMachineCa { .. }
            | Error::IssueClientCert { .. }
            | Error::RenderClientConfig { .. }
            | Error::WipeState { .. }
            | Error::ConfigStore { .. }) => internal(&err),
        }
    }
}

/// Logs `err` with its whole chain at error level and returns a generic `Internal` status: file
/// paths and OS errors stay in machined's log.
/// Whether the filesystem ran out of space (or quota) somewhere under `err`: something the
/// operator can fix, unlike the other failures of a write.
pub(crate) fn is_out_of_space(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        cause = err.source();
    }
    false
}

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
    fn service_errors_use_talos_texts_with_useful_codes() {
        let status = Status::from(Error::UnknownService {
            service: "x".to_owned(),
        });
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "service \"x\" not defined");
        let status = Status::from(Error::ServiceControlRefused {
            service: "apid".to_owned(),
            operation: "stop",
        });
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "service \"apid\" doesn't support stop operation via API"
        );
        let status = Status::from(Error::UnknownLog { id: "x".to_owned() });
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "log \"x\" was not registered");
    }

    #[test]
    fn file_api_refusals_keep_their_code_and_name_the_path() {
        let cases = [
            (
                Error::PathNotFound {
                    path: "/x".to_owned(),
                },
                tonic::Code::NotFound,
                "/x: no such file or directory",
            ),
            (
                Error::PathDenied {
                    path: "/proc/kcore".to_owned(),
                    reason: "under /proc/kcore: kernel memory".to_owned(),
                },
                tonic::Code::PermissionDenied,
                "access to /proc/kcore is denied: under /proc/kcore: kernel memory",
            ),
            (
                Error::NotRegularFile {
                    path: "/etc".to_owned(),
                },
                tonic::Code::InvalidArgument,
                "path must be a regular file: /etc",
            ),
            (
                Error::KernelLog {
                    reason: "/dev/kmsg: permission denied".to_owned(),
                },
                tonic::Code::FailedPrecondition,
                "cannot read the kernel log: /dev/kmsg: permission denied",
            ),
        ];
        for (err, code, message) in cases {
            let status = Status::from(err);
            assert_eq!((status.code(), status.message()), (code, message));
        }
        let status = Status::from(Error::WalkLimit {
            path: "/".to_owned(),
            limit: 10,
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let status = Status::from(Error::File {
            op: "read",
            path: PathBuf::from("/secret/file"),
            source: io::Error::from(io::ErrorKind::Other),
        });
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            !status.message().contains("/secret"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn lifecycle_and_client_config_errors_use_their_codes() {
        let status = Status::from(Error::SequenceInProgress { sequence: "reboot" });
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "a reboot is already in progress");
        let status = Status::from(Error::ControlPlaneOnly {
            method: "GenerateClientConfiguration",
        });
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            status.message(),
            "GenerateClientConfiguration is only available on control plane nodes"
        );
        let status = Status::from(Error::BootId {
            path: PathBuf::from("/var/lib/basalt/boot_id"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("/var"), "{}", status.message());
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
