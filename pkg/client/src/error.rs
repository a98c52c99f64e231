//! Why a connection could not be made, told apart the way a user needs it: bad input, a local
//! certificate problem, an unreachable endpoint, or a TLS handshake the server refused.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Status;

use crate::connect::DialFailed;

/// Errors of the client library. Messages are lower-case and never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint was given, in the flags or in the context.
    #[error("no endpoints; set them in the client config context or pass --endpoints")]
    NoEndpoints,

    /// An endpoint is not `host` or `host:port`.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A node name cannot be sent as gRPC metadata (it must be visible ASCII).
    #[error("invalid node {node:?}: must be a host name or an IP address")]
    InvalidNode {
        /// The node as given.
        node: String,
    },

    /// The context lacks `ca`, `crt` or `key`.
    #[error(
        "the client config context has no {field}; generate one with basaltctl gen client-config"
    )]
    MissingCredential {
        /// `ca`, `crt` or `key`.
        field: &'static str,
    },

    /// The client certificate (`crt`) does not parse.
    #[error("read the client certificate")]
    ParseClientCertificate {
        /// What the parser said.
        #[source]
        source: basalt_pki::Error,
    },

    /// The client certificate's NotAfter has passed; checked locally before dialing.
    #[error(
        "client certificate expired at {}; generate a new one with basaltctl gen client-config",
        rfc3339(*.not_after)
    )]
    ClientCertificateExpired {
        /// When it expired.
        not_after: OffsetDateTime,
    },

    /// The client certificate's NotBefore lies in the future (or this machine's clock is
    /// behind).
    #[error(
        "client certificate is not valid before {}; check this machine's clock",
        rfc3339(*.not_before)
    )]
    ClientCertificateNotYetValid {
        /// When it becomes valid.
        not_before: OffsetDateTime,
    },

    /// The CA bundle, certificate or key could not be made into a TLS config.
    #[error("build the TLS client config from the context's ca, crt and key")]
    TlsConfig {
        /// What basalt-pki refused.
        #[source]
        source: basalt_pki::TlsError,
    },

    /// The TCP connection failed: nothing listens there, or the network is in the way.
    #[error("endpoint {endpoint} is unreachable")]
    Unreachable {
        /// The endpoint dialed.
        endpoint: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },

    /// TCP connect and TLS handshake together took longer than the connect timeout.
    #[error("endpoint {endpoint} did not answer within {}s", timeout.as_secs_f32())]
    ConnectTimeout {
        /// The endpoint dialed.
        endpoint: String,
        /// The limit that passed.
        timeout: Duration,
    },

    /// We refused the server: its certificate does not chain to the context's CA, has no SAN
    /// for the endpoint, or is expired.
    #[error(
        "the server certificate of {endpoint} is not trusted (is the context's CA this \
         cluster's, and does apid's certificate name {host}?)"
    )]
    ServerCertificate {
        /// The endpoint dialed.
        endpoint: String,
        /// The host the certificate must name.
        host: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },

    /// The server refused us during the handshake (an alert such as bad_certificate,
    /// certificate_expired or unknown_ca, or no common protocol version).
    #[error("the TLS handshake with {endpoint} was refused by the server: {}", alert_hint(.source))]
    HandshakeRefused {
        /// The endpoint dialed.
        endpoint: String,
        /// The alert received.
        #[source]
        source: rustls::Error,
    },

    /// The TLS handshake failed for another reason (the peer closed the connection, or does
    /// not speak TLS).
    #[error("TLS handshake with {endpoint} failed (is it apid?)")]
    Handshake {
        /// The endpoint dialed.
        endpoint: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The HTTP/2 connection could not be set up after TLS.
    #[error("connect to {endpoint}")]
    Transport {
        /// The endpoint dialed.
        endpoint: String,
        /// What tonic said.
        #[source]
        source: tonic::transport::Error,
    },
}

impl Error {
    /// Classifies a failed TLS handshake from tokio-rustls's `io::Error`.
    pub(crate) fn from_handshake(endpoint: String, host: String, err: io::Error) -> Self {
        match tls_cause(&err) {
            Some(
                source @ (rustls::Error::AlertReceived(_)
                | rustls::Error::PeerIncompatible(_)
                | rustls::Error::General(_)),
            ) => Error::HandshakeRefused { endpoint, source },
            Some(source @ rustls::Error::InvalidCertificate(_)) => Error::ServerCertificate {
                endpoint,
                host,
                source,
            },
            _ => Error::Handshake {
                endpoint,
                source: err,
            },
        }
    }
}

/// What a failed RPC's status says about the connection, when the failure was local.
///
/// In TLS 1.3 the server checks the client certificate *after* the client considers the
/// handshake done, so a refused certificate surfaces only at the first request, as an HTTP/2
/// error with the server's alert somewhere in the source chain; tonic's own message for it is
/// just "transport error". Statuses that came from the server (PermissionDenied with apid's
/// explanation, …) carry no source and are never touched.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Diagnosis {
    /// The status came from the server (or has nothing to add): keep it.
    Keep,
    /// A local failure with a known cause: report this text instead.
    Explained(String),
    /// A local transport failure whose cause the chain does not tell (e.g. the connection was
    /// closed before the alert was read).
    Unexplained,
}

/// Looks through a status's source chain for the cause of a local failure.
pub(crate) fn diagnose_status(status: &Status, endpoint: &str) -> Diagnosis {
    let mut cause: Option<&(dyn StdError + 'static)> = status.source();
    if cause.is_none() {
        return Diagnosis::Keep;
    }
    while let Some(err) = cause {
        if let Some(dial) = err.downcast_ref::<DialFailed>() {
            return Diagnosis::Explained(dial.0.clone());
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Diagnosis::Explained(tls_text(tls, endpoint));
        }
        if let Some(tls) = err.downcast_ref::<io::Error>().and_then(tls_cause) {
            return Diagnosis::Explained(tls_text(&tls, endpoint));
        }
        cause = err.source();
    }
    Diagnosis::Unexplained
}

/// The message and every source's message, joined by ": " (anyhow's `{:#}`).
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

fn tls_text(err: &rustls::Error, endpoint: &str) -> String {
    match err {
        rustls::Error::AlertReceived(_)
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::General(_) => format!(
            "the TLS handshake with {endpoint} was refused by the server: {}",
            alert_hint(err)
        ),
        other => format!("TLS with {endpoint} failed: {other}"),
    }
}

/// What a refusal most likely means, for the alerts apid sends.
fn alert_hint(err: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match err {
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            "the client certificate has expired (or the server's clock is ahead); generate a \
             new one with basaltctl gen client-config"
                .to_owned()
        }
        rustls::Error::AlertReceived(A::UnknownCA | A::DecryptError | A::BadCertificate) => {
            "the client certificate was not accepted (is it from this cluster's CA, with \
             extended key usage clientAuth only?)"
                .to_owned()
        }
        rustls::Error::AlertReceived(A::CertificateRevoked) => {
            "the client certificate has been revoked".to_owned()
        }
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "a client certificate is required".to_owned()
        }
        rustls::Error::AlertReceived(A::ProtocolVersion) | rustls::Error::PeerIncompatible(_) => {
            "no common TLS version or parameters (apid speaks TLS 1.3 only)".to_owned()
        }
        rustls::Error::AlertReceived(alert) => format!("alert {alert:?}"),
        rustls::Error::General(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The alerts [`alert_hint`] explains, by their rustls `Debug` names.
fn alert_by_name(name: &str) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    [
        A::BadCertificate,
        A::CertificateExpired,
        A::CertificateRequired,
        A::CertificateRevoked,
        A::DecryptError,
        A::ProtocolVersion,
        A::UnknownCA,
    ]
    .into_iter()
    .find(|alert| format!("{alert:?}") == name.trim())
}

/// The rustls error inside a tokio-rustls `io::Error`, if any. Depending on the path an alert
/// takes (handshake or a later read through hyper) it arrives as the typed error or only as its
/// text ("received fatal alert: DecryptError"); both are recognised.
fn tls_cause(err: &io::Error) -> Option<rustls::Error> {
    if let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Some(tls.clone());
    }
    let text = err.to_string();
    let alert = text.strip_prefix("received fatal alert: ")?;
    Some(alert_by_name(alert).map_or_else(
        || rustls::Error::General(format!("alert {alert}")),
        rustls::Error::AlertReceived,
    ))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tls_io(err: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn expired_message_names_the_time_and_the_fix() {
        let err = Error::ClientCertificateExpired {
            not_after: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(
            err.to_string(),
            "client certificate expired at 1970-01-01T00:00:00Z; generate a new one with \
             basaltctl gen client-config"
        );
    }

    #[test]
    fn handshake_errors_are_classified() {
        let refused = Error::from_handshake(
            "127.0.0.1:50000".into(),
            "127.0.0.1".into(),
            tls_io(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateExpired,
            )),
        );
        assert!(
            matches!(refused, Error::HandshakeRefused { .. }),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("expired"), "{refused}");

        let untrusted = Error::from_handshake(
            "127.0.0.1:50000".into(),
            "127.0.0.1".into(),
            tls_io(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        );
        assert!(
            matches!(untrusted, Error::ServerCertificate { .. }),
            "{untrusted:?}"
        );

        let other = Error::from_handshake(
            "127.0.0.1:50000".into(),
            "127.0.0.1".into(),
            io::Error::from(io::ErrorKind::UnexpectedEof),
        );
        assert!(matches!(other, Error::Handshake { .. }), "{other:?}");
    }

    fn explained(status: Status) -> String {
        match diagnose_status(&status, "127.0.0.1:50000") {
            Diagnosis::Explained(text) => text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_statuses_are_kept() {
        let denied = Status::permission_denied("needs os:admin; certificate has os:reader");
        assert_eq!(diagnose_status(&denied, "127.0.0.1:50000"), Diagnosis::Keep);
        let down = Status::unavailable("machined is down");
        assert_eq!(diagnose_status(&down, "127.0.0.1:50000"), Diagnosis::Keep);
    }

    #[test]
    fn a_refusal_alert_inside_a_status_is_explained() {
        let mut status = Status::unknown("transport error");
        status.set_source(Arc::new(tls_io(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        ))));
        let text = explained(status);
        assert!(
            text.contains("refused by the server") && text.contains("not accepted"),
            "{text}"
        );
    }

    #[test]
    fn a_refusal_alert_as_text_is_explained() {
        // What hyper hands back when the alert arrives on the first read after the handshake.
        let mut status = Status::unknown("transport error");
        status.set_source(Arc::new(io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: CertificateExpired",
        )));
        assert!(explained(status).contains("has expired"));
    }

    #[test]
    fn a_bare_transport_failure_is_unexplained() {
        let mut status = Status::cancelled("operation was canceled");
        status.set_source(Arc::new(io::Error::from(io::ErrorKind::BrokenPipe)));
        assert_eq!(
            diagnose_status(&status, "127.0.0.1:50000"),
            Diagnosis::Unexplained
        );
    }
}
