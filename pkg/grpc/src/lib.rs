//! basalt-grpc: server-side plumbing shared by basalt's daemons.
//!
//! # What this crate owns
//!
//! - [`tls`]: the TLS accept loop. Every accepted TCP socket gets its own task that runs the
//!   rustls handshake under a timeout, so one slow or silent client never holds up another's
//!   handshake; finished streams come out of a channel. Failed handshakes are logged with the
//!   peer address and a [`HandshakeFailure`] reason, and counted ([`HandshakeStats`]).
//! - [`reload`]: keeps the current `rustls::ServerConfig` in a `tokio::sync::watch` and rebuilds
//!   it when the certificate, key or CA files change (polled) or when asked to
//!   ([`ReloadHandle`], wired to SIGHUP by the binaries). A failed rebuild keeps the old config.
//!   Each handshake uses the latest config, so open connections are never touched by a reload.
//! - [`frame`]: the gRPC length-prefixed framing seen as bytes stream past, to enforce the
//!   32 MiB message limit ([`MAX_MESSAGE_SIZE`]) on payloads that are never decoded.
//! - [`metrics`]: a bounded `GET /metrics` endpoint (plain HTTP/1.1) and a Prometheus text
//!   encoder; each daemon supplies what to render.
//! - [`unix`]: the unix stream of the link between apid and machined, used at both ends; it
//!   is registered with the reactor for reads only ([`ReadInterestUnixStream`]). machined's
//!   listener hands tonic such streams through [`UnixIncoming`], which backs off after a
//!   failed accept.
//! - [`internal`]: the one way to turn an unexpected error into a gRPC `Internal` status
//!   without leaking its text.
//!
//! # What it must not contain
//!
//! No client code (that is `basalt-client`) and no daemon-specific handlers. It knows nothing
//! of roles or of the machine API; certificates are built by `basalt-pki`.

#![forbid(unsafe_code)]

pub mod frame;
pub mod metrics;
pub mod reload;
pub mod tls;
pub mod unix;

pub use crate::frame::{
    FrameScanner, FrameTooLarge, LimitedBody, LimitedBodyError, MAX_MESSAGE_SIZE,
};
pub use crate::reload::{
    CredentialFiles, CredentialPem, FileStamp, ReloadError, ReloadHandle, ServerConfigReloader,
};
pub use crate::tls::{
    Admission, Admitted, HandshakeFailure, HandshakeStats, HandshakeStatsHandle, TlsAcceptLoop,
    TlsConnection,
};
pub use crate::unix::{ReadInterestUnixStream, UnixIncoming};

/// How long every accept loop here waits after a failed accept (EMFILE, most often) before it
/// tries again. The listener stays readable while connections wait in the backlog, so
/// retrying at once would spin on the same error.
pub(crate) const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Turns an error nobody expected into `Internal`: the whole chain goes to the log at error
/// level, the peer gets a generic message (STYLE §3: internals never leak to callers).
pub fn internal(err: &(dyn std::error::Error + 'static)) -> tonic::Status {
    tracing::error!(error = err, "Internal error");
    tonic::Status::internal("internal error; see the server log")
}
