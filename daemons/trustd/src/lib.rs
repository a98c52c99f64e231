//! trustd: signs node certificates for callers that hold the cluster's join token.
//!
//! # What trustd owns
//!
//! trustd runs on control-plane nodes, listens on TCP :50001 and serves one RPC,
//! `/securityapi.SecurityService/Certificate` (Talos's wire contract): a node without a
//! certificate sends a PEM CSR and the join token in the `token` metadata key, and gets back a
//! server certificate issued by the OS CA plus the accepted CA bundle. It keeps an issuance
//! journal: one JSON line per certificate, fsynced before the certificate is returned, so
//! nothing is ever issued without a record.
//!
//! # How a call flows
//!
//! 1. TCP accept → TLS 1.3 handshake in its own task under the handshake timeout
//!    (`basalt_grpc::tls`). **Server-side TLS only**: callers have no certificate yet. ALPN `h2`,
//!    no session resumption. The server certificate is reloaded when its files change.
//! 2. HTTP/2 + gRPC by tonic (`serve_with_incoming_shutdown` over the accepted TLS streams; the
//!    peer address comes from the TCP accept, never from anything the caller says). Message
//!    limit: the CSR cap plus a small margin, not Talos's 32 MiB.
//! 3. Layers, outermost first (`server::stack`): `RequestLog` (one span and one completion
//!    event per call; metadata is never logged, so the token cannot leak) → `CatchPanic` (a
//!    panic becomes `Internal`) → `Admission`: unknown methods are refused (`Unimplemented`), then
//!    the per-peer lockout and rate limit are checked, then the token: SHA-256 of the presented
//!    value compared in constant time with the SHA-256 of every accepted, unexpired token.
//! 4. The handler: CSR size cap → parse and verify the CSR (`basalt_pki::SigningPolicy`) → sign
//!    from policy (serverAuth only, no Organization, not a CA, TTL from config, random serial;
//!    the CSR's key type must match the CA's) → journal line, fsynced → response.
//!
//! # What trustd must not do
//!
//! No X.509 code of its own (everything goes through `basalt_pki`), no syscalls beyond sockets
//! and files, no dependency on another daemon, and never a token in a log line, an error
//! message or a `Debug` output.
//!
//! # Limitations
//!
//! The issuing CA, the accepted CA bundle and the token list are read at start: CA or token
//! rotation needs a restart of trustd (machined supervises it). The per-peer limiter lives in
//! memory and starts empty after a restart.

#![forbid(unsafe_code)]

mod admission;
mod error;
mod journal;
mod limiter;
mod log;
mod metrics;
mod panic;
mod server;
mod service;
mod tokens;
mod trust;

pub use basalt_grpc::{HandshakeFailure, HandshakeStats, HandshakeStatsHandle, ReloadHandle};

pub use crate::error::{Error, JournalError};
pub use crate::journal::JournalRecord;
pub use crate::limiter::MAX_TRACKED_PEERS;
pub use crate::server::{
    Bound, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS, MESSAGE_SIZE_MARGIN,
    REQUEST_TIMEOUT, SHUTDOWN_GRACE, Server, check_config,
};
pub use crate::tokens::token_fingerprint;
pub use crate::trust::TrustReloads;

/// The one RPC trustd serves (Talos's path).
pub const CERTIFICATE_METHOD: &str = "/securityapi.SecurityService/Certificate";

/// Response metadata on `ResourceExhausted` refusals: whole seconds until the peer may try
/// again (basalt's own key; Talos has no rate limit).
pub const RETRY_AFTER_METADATA: &str = "basalt-retry-after";
