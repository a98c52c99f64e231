//! apid's error type and its one mapping to gRPC statuses.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use basalt_authz::Denial;
use basalt_daemon::error_chain;
use basalt_grpc::{FrameTooLarge, ReloadError};
use tonic::Status;

/// Boxed error from the transport below us (tonic/hyper), kept with its chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in apid: at startup (binding, credentials, audit sink) and per
/// call (denials, machined unreachable, limits).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listen address could not be bound.
    #[error("bind {addr}")]
    BindListener {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The metrics address could not be bound.
    #[error("bind the metrics endpoint {addr}")]
    BindMetrics {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The TLS credentials could not be read or do not form a usable config.
    #[error("load TLS credentials")]
    LoadCredentials(#[source] ReloadError),

    /// The audit file could not be opened for appending.
    #[error("open audit log {}", .path.display())]
    OpenAudit {
        /// The configured file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// apid's own server certificate could not be read for its SAN list.
    #[error("read the server certificate {}", .path.display())]
    ReadServerCertificate {
        /// The configured certificate file.
        path: PathBuf,
        /// Why it could not be read or parsed.
        #[source]
        source: BoxError,
    },

    /// The audit writer thread could not be started.
    #[error("start the audit writer thread")]
    StartAuditWriter(#[source] io::Error),

    /// The reflection service could not be built from the compiled-in descriptor sets (a bug).
    #[error("build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),

    /// The connection has no verified client certificate (cannot happen with the apid TLS
    /// config, which requires one; kept as defence in depth).
    #[error("no client certificate")]
    NoPeerCertificate,

    /// The verified client certificate could not be read.
    #[error("read client certificate")]
    ReadPeerCertificate {
        /// Why it could not be parsed.
        #[source]
        source: basalt_pki::Error,
    },

    /// The caller's roles do not allow the method. The message names the method, the roles it
    /// needs and the roles held.
    #[error("{0}")]
    PermissionDenied(Denial),

    /// The `node`/`nodes` metadata names another node (PermissionDenied, as a Talos worker), or
    /// `node` has several values (InvalidArgument).
    #[error(transparent)]
    Route(#[from] crate::routing::RouteError),

    /// machined's socket could not be reached, or the connection to it broke.
    #[error("machined is not reachable at {}", .socket.display())]
    MachinedUnreachable {
        /// machined's socket path.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: BoxError,
    },

    /// Another node's apid could not be reached, or refused the connection (TLS).
    #[error("node {target:?} is not reachable at {addr}")]
    NodeUnreachable {
        /// The node as the client named it.
        target: String,
        /// The address dialled.
        addr: String,
        /// The transport error.
        #[source]
        source: BoxError,
    },

    /// The client's request body failed before it was complete (fan-out reads it whole).
    #[error("the request body failed")]
    RequestBody(#[source] BoxError),

    /// A request message exceeded the gRPC message limit.
    #[error("request message is too large")]
    RequestTooLarge(#[source] FrameTooLarge),

    /// A response message from machined exceeded the gRPC message limit.
    #[error("response message is too large")]
    ResponseTooLarge(#[source] FrameTooLarge),

    /// The deny list could not be loaded at startup (fail closed).
    #[error("load the revocation list")]
    LoadRevocation(#[source] crate::revocation::RevocationError),

    /// A call forwarded by another apid names an original caller whose certificate is revoked
    /// on this node.
    #[error("the original caller's certificate is revoked on this node")]
    CallerRevoked,

    /// A per-client limit refused the call (ResourceExhausted; the message names the limit and
    /// when to retry).
    #[error(transparent)]
    LimitExceeded(#[from] crate::limits::LimitExceeded),

    /// The call's deadline (`grpc-timeout`) passed in apid.
    #[error("deadline of {timeout:?} exceeded")]
    DeadlineExceeded {
        /// The timeout the client asked for.
        timeout: Duration,
    },
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            // Authentication: the handshake should already have refused these.
            Error::NoPeerCertificate | Error::ReadPeerCertificate { .. } => {
                Status::unauthenticated(err.to_string())
            }
            // A forwarded call whose original caller is revoked here: as if it had connected.
            Error::CallerRevoked => Status::unauthenticated(err.to_string()),
            // Authorization: the explanation is safe and useful to the caller (it only repeats
            // the method, the rule and the roles of the caller's own certificate).
            Error::PermissionDenied(denial) => Status::permission_denied(denial.to_string()),
            Error::Route(
                err @ (crate::routing::RouteError::MultiValuedNode
                | crate::routing::RouteError::InvalidTarget { .. }
                | crate::routing::RouteError::TooManyTargets { .. }
                | crate::routing::RouteError::OneToManyUnsupported { .. }),
            ) => Status::invalid_argument(err.to_string()),
            Error::Route(err @ crate::routing::RouteError::NoForwarding { .. }) => {
                Status::permission_denied(err.to_string())
            }
            // Dependency down: say where apid looked and why it failed, so an operator can tell
            // "machined stopped" from "wrong socket path"; no secrets are involved.
            Error::MachinedUnreachable { ref source, .. }
            | Error::NodeUnreachable { ref source, .. } => {
                Status::unavailable(format!("{err}: {}", error_chain(source.as_ref())))
            }
            Error::RequestBody(ref source) => {
                Status::cancelled(format!("{err}: {}", error_chain(source.as_ref())))
            }
            // Overload / limits.
            Error::RequestTooLarge(too_large) => Status::resource_exhausted(format!(
                "request message of {} bytes exceeds the limit of {} bytes",
                too_large.size, too_large.limit
            )),
            Error::ResponseTooLarge(too_large) => Status::resource_exhausted(format!(
                "response message of {} bytes exceeds the limit of {} bytes",
                too_large.size, too_large.limit
            )),
            Error::DeadlineExceeded { .. } => Status::deadline_exceeded(err.to_string()),
            // The caller can act on it: slow down, or wait for a call to finish.
            Error::LimitExceeded(_) => Status::resource_exhausted(err.to_string()),
            // Startup errors never reach a caller; if one did, it is our fault.
            err @ (Error::BindListener { .. }
            | Error::BindMetrics { .. }
            | Error::LoadRevocation(_)
            | Error::LoadCredentials(_)
            | Error::OpenAudit { .. }
            | Error::StartAuditWriter(_)
            | Error::ReadServerCertificate { .. }
            | Error::Reflection(_)) => basalt_grpc::internal(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use basalt_authz::{Decision, Role, RoleSet, authorize};
    use tonic::Code;

    use super::*;

    #[test]
    fn each_group_maps_to_its_code() {
        let Decision::Deny(denial) = authorize(
            "/machine.MachineService/Reboot",
            &RoleSet::from([Role::Reader]),
        ) else {
            panic!("reader may not reboot");
        };
        let status = Status::from(Error::PermissionDenied(denial));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "/machine.MachineService/Reboot needs one of os:admin, os:operator; \
             the certificate holds os:reader"
        );

        let status = Status::from(Error::MachinedUnreachable {
            socket: "/run/m.sock".into(),
            source: Box::new(io::Error::from(io::ErrorKind::NotFound)),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .starts_with("machined is not reachable at /run/m.sock: "),
            "{}",
            status.message()
        );

        let too_large = FrameTooLarge {
            size: 40 << 20,
            limit: 32 << 20,
            offset: 0,
        };
        assert_eq!(
            Status::from(Error::RequestTooLarge(too_large)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            Status::from(Error::ResponseTooLarge(too_large)).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            Status::from(Error::DeadlineExceeded {
                timeout: Duration::from_secs(1)
            })
            .code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            Status::from(Error::NoPeerCertificate).code(),
            Code::Unauthenticated
        );
        let status = Status::from(Error::OpenAudit {
            path: "/secret/path".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/secret/path"));
    }
}
