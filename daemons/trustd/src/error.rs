//! trustd's error type and its one mapping to gRPC statuses.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use basalt_daemon::error_chain;
use basalt_grpc::ReloadError;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::RETRY_AFTER_METADATA;

/// Everything that can go wrong in trustd: at startup (binding, credentials, the CA, the
/// journal) and per call (admission, the CSR, signing, the journal).
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

    /// trustd's own TLS credentials could not be read or do not form a usable config.
    #[error("load TLS credentials")]
    LoadCredentials(#[source] ReloadError),

    /// A file of the issuing CA or the accepted CA bundle could not be read.
    #[error("read {}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The issuing CA's certificate and key do not make a CA (not PEM, not a CA, key mismatch).
    #[error("load the issuing CA from {}", .path.display())]
    LoadCa {
        /// The CA certificate file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: basalt_pki::Error,
    },

    /// The accepted CA bundle holds something other than CA certificates.
    #[error("load the accepted CA bundle {}", .path.display())]
    LoadAcceptedCas {
        /// The bundle file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: basalt_pki::Error,
    },

    /// A certificate in the accepted CA bundle is not a CA.
    #[error("certificate {index} of the accepted CA bundle {} is not a CA", .path.display())]
    AcceptedCaNotACa {
        /// The bundle file.
        path: PathBuf,
        /// Zero-based position in the bundle.
        index: usize,
    },

    /// The config file could not be re-read for a reload of tokens and CAs.
    #[error("re-read the config {}", .path.display())]
    ReloadConfig {
        /// The config file.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: Box<basalt_config::Error>,
    },

    /// The reload task is gone (trustd is shutting down).
    #[error("the reloader has stopped")]
    ReloaderStopped,

    /// The issuance journal could not be opened for appending.
    #[error("open the issuance journal {}", .path.display())]
    OpenJournal {
        /// The journal file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The gRPC server failed while serving.
    #[error("serve gRPC")]
    Serve(#[source] tonic::transport::Error),

    /// A method trustd does not serve.
    #[error(
        "unknown method {path}: trustd serves only {}",
        crate::CERTIFICATE_METHOD
    )]
    UnknownMethod {
        /// The request path.
        path: String,
    },

    /// A streaming method of basalt's API was called on trustd.
    #[error("streaming APIs are not supported")]
    StreamingNotSupported,

    /// The connection has no peer address (cannot happen over TCP; Talos answers the same).
    #[error("peer not found")]
    NoPeerAddress,

    /// No `token` metadata.
    #[error("missing token")]
    MissingToken,

    /// The token is not accepted (unknown, or expired). The caller is not told which.
    #[error("invalid token")]
    InvalidToken,

    /// The request reached the handler without passing admission (defence in depth: the layer
    /// is always installed).
    #[error("request was not authenticated")]
    NotAdmitted,

    /// The peer sent too many bad tokens in a row and is refused for a while.
    #[error("too many failed attempts from {peer}; retry after {}s", secs(*.retry_after))]
    LockedOut {
        /// The peer (IPv4 address or IPv6 /64).
        peer: String,
        /// Until the lockout ends.
        retry_after: Duration,
    },

    /// The peer used up its request budget.
    #[error(
        "rate limit of {per_minute} requests per minute exceeded for {peer}; retry after {}s",
        secs(*.retry_after)
    )]
    RateLimited {
        /// The peer (IPv4 address or IPv6 /64).
        peer: String,
        /// The configured limit.
        per_minute: u32,
        /// Until one request is available again.
        retry_after: Duration,
    },

    /// The CSR is larger than the policy allows; refused before parsing.
    #[error("CSR is {size} bytes, more than the limit of {max}")]
    CsrTooLarge {
        /// Size of the PEM input.
        size: usize,
        /// The policy's limit.
        max: usize,
    },

    /// The CSR's self-signature does not verify.
    #[error("CSR signature does not verify")]
    CsrSignature,

    /// The CSR is not a PEM PKCS#10 request that parses.
    #[error("failed to parse CSR")]
    ParseCsr(#[source] basalt_pki::Error),

    /// The CSR parsed but the signing policy refuses it (key type, SANs, CN).
    #[error("CSR refused by the signing policy")]
    PolicyRefused(#[source] basalt_pki::Error),

    /// Signing failed for a reason that is not the caller's fault.
    #[error("sign the certificate")]
    Sign(#[source] basalt_pki::Error),

    /// The certificate just issued could not be read back (a bug).
    #[error("read back the issued certificate")]
    ReadIssued(#[source] basalt_pki::Error),

    /// The journal record could not be written and synced, so the certificate is withheld.
    #[error("record the issuance in the journal")]
    Journal(#[source] JournalError),
}

/// Why a journal record could not be made durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The record could not be encoded as JSON (a bug).
    #[error("encode the journal record")]
    Encode(#[source] serde_json::Error),

    /// The write or the fsync failed; the partial line, if any, was cut off again.
    #[error("append to {}", .path.display())]
    Write {
        /// The journal file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The journal writer has stopped (shutdown, or it panicked).
    #[error("the journal writer has stopped")]
    Stopped,
}

impl Error {
    /// Sorts an error from [`basalt_pki::SigningPolicy::parse_csr`] into the caller's faults.
    pub(crate) fn from_parse(err: basalt_pki::Error) -> Self {
        match err {
            basalt_pki::Error::CsrTooLarge { size, max } => Error::CsrTooLarge { size, max },
            basalt_pki::Error::CsrSignature(_) => Error::CsrSignature,
            // Everything else parse_csr returns is about the input (PEM, DER, names, keys):
            // basalt_pki::Error is non-exhaustive, so this sorting is the one place with a
            // catch-all; the status mapping below stays exhaustive over our own variants.
            other => Error::ParseCsr(other),
        }
    }

    /// Sorts an error from [`basalt_pki::CertificateAuthority::sign_csr`]: policy refusals are
    /// the caller's fault, anything else is ours.
    pub(crate) fn from_sign(err: basalt_pki::Error) -> Self {
        match err {
            basalt_pki::Error::CsrTooLarge { size, max } => Error::CsrTooLarge { size, max },
            err @ (basalt_pki::Error::KeyTypeMismatch { .. }
            | basalt_pki::Error::TooManySans { .. }
            | basalt_pki::Error::InvalidSan { .. }
            | basalt_pki::Error::InvalidCommonName { .. }
            | basalt_pki::Error::UnsupportedKeyAlgorithm { .. }) => Error::PolicyRefused(err),
            other => Error::Sign(other),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            // Not served: Talos's wording for streaming calls.
            Error::UnknownMethod { .. } | Error::StreamingNotSupported => {
                Status::unimplemented(err.to_string())
            }
            // Authentication: Talos's messages ("missing token", "invalid token"); an expired
            // token reads as invalid so a caller learns nothing about the accepted set.
            Error::MissingToken | Error::InvalidToken | Error::NotAdmitted => {
                Status::unauthenticated(err.to_string())
            }
            // Talos answers PermissionDenied "peer not found" when gRPC has no peer info.
            Error::NoPeerAddress => Status::permission_denied(err.to_string()),
            // Overload: the caller's own address and how long to wait, also as metadata.
            Error::LockedOut { retry_after, .. } | Error::RateLimited { retry_after, .. } => {
                let mut metadata = MetadataMap::new();
                metadata.insert(RETRY_AFTER_METADATA, MetadataValue::from(secs(retry_after)));
                Status::with_metadata(tonic::Code::ResourceExhausted, err.to_string(), metadata)
            }
            // The caller's CSR: say what was wrong with it (its own data, nothing of ours).
            Error::CsrTooLarge { .. } | Error::CsrSignature => {
                Status::invalid_argument(err.to_string())
            }
            Error::ParseCsr(ref source) => {
                Status::invalid_argument(format!("failed to parse CSR: {}", error_chain(source)))
            }
            Error::PolicyRefused(ref source) => Status::invalid_argument(error_chain(source)),
            // Our fault: the chain goes to the log, the caller gets a generic message.
            err @ (Error::Sign(_)
            | Error::ReadIssued(_)
            | Error::Journal(_)
            | Error::BindListener { .. }
            | Error::BindMetrics { .. }
            | Error::LoadCredentials(_)
            | Error::ReadFile { .. }
            | Error::LoadCa { .. }
            | Error::LoadAcceptedCas { .. }
            | Error::AcceptedCaNotACa { .. }
            | Error::ReloadConfig { .. }
            | Error::ReloaderStopped
            | Error::OpenJournal { .. }
            | Error::Serve(_)) => basalt_grpc::internal(&err),
        }
    }
}

/// Whole seconds to wait, rounded up (never 0: "retry after 0s" would invite a busy loop).
pub(crate) fn secs(d: Duration) -> u64 {
    let whole = d.as_secs();
    if d.subsec_nanos() > 0 || whole == 0 {
        whole + 1
    } else {
        whole
    }
}

#[cfg(test)]
mod tests {
    use basalt_pki::KeyAlgorithm;
    use tonic::Code;

    use super::*;

    #[test]
    fn authentication_failures_use_talos_messages() {
        for (err, message) in [
            (Error::MissingToken, "missing token"),
            (Error::InvalidToken, "invalid token"),
        ] {
            let status = Status::from(err);
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(status.message(), message);
        }
        assert_eq!(
            Status::from(Error::NotAdmitted).code(),
            Code::Unauthenticated
        );
        let status = Status::from(Error::NoPeerAddress);
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "peer not found");
    }

    #[test]
    fn limits_say_who_and_when_and_carry_retry_metadata() {
        let status = Status::from(Error::LockedOut {
            peer: "127.0.0.1".to_owned(),
            retry_after: Duration::from_millis(59_200),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "too many failed attempts from 127.0.0.1; retry after 60s"
        );
        assert_eq!(status.metadata().get(RETRY_AFTER_METADATA).unwrap(), "60");
        let status = Status::from(Error::RateLimited {
            peer: "10.0.0.1".to_owned(),
            per_minute: 3,
            retry_after: Duration::from_millis(10),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "rate limit of 3 requests per minute exceeded for 10.0.0.1; retry after 1s"
        );
    }

    #[test]
    fn csr_problems_are_invalid_argument_with_the_reason() {
        let status = Status::from(Error::from_parse(basalt_pki::Error::CsrTooLarge {
            size: 20_000,
            max: 16_384,
        }));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "CSR is 20000 bytes, more than the limit of 16384"
        );
        let status = Status::from(Error::from_parse(basalt_pki::Error::MissingPemBlock {
            what: "CSR",
            label: "CERTIFICATE REQUEST",
        }));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "failed to parse CSR: CSR PEM contains no CERTIFICATE REQUEST block"
        );
        let status = Status::from(Error::from_sign(basalt_pki::Error::KeyTypeMismatch {
            csr: KeyAlgorithm::EcdsaP256,
            ca: KeyAlgorithm::Ed25519,
        }));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "CSR key type ecdsa-p256 does not match the CA key type ed25519"
        );
        assert_eq!(
            Status::from(Error::CsrSignature).message(),
            "CSR signature does not verify"
        );
    }

    #[test]
    fn our_faults_are_internal_without_details() {
        let status = Status::from(Error::from_sign(basalt_pki::Error::Random));
        assert_eq!(status.code(), Code::Internal);
        let status = Status::from(Error::Journal(JournalError::Write {
            path: "/secret/journal".into(),
            source: io::Error::from(io::ErrorKind::StorageFull),
        }));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/secret"));
    }

    #[test]
    fn unserved_methods_are_unimplemented() {
        let status = Status::from(Error::UnknownMethod {
            path: "/machine.MachineService/Version".to_owned(),
        });
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "unknown method /machine.MachineService/Version: trustd serves only \
             /securityapi.SecurityService/Certificate"
        );
        let status = Status::from(Error::StreamingNotSupported);
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "streaming APIs are not supported");
    }

    #[test]
    fn retry_seconds_round_up() {
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(60)), 60);
        assert_eq!(secs(Duration::from_millis(60_001)), 61);
    }
}
