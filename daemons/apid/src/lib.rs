//! apid: the only external entry point of a basalt node.
//!
//! # What apid owns
//!
//! apid terminates mutual TLS on TCP :50000, turns the verified client certificate into roles,
//! authorizes each call, writes one audit record per call and forwards the call, bytes
//! untouched, to machined on its unix socket. It answers only `grpc.health.v1.Health` and gRPC
//! reflection itself. machined applies the same rules table again (DESIGN §3).
//!
//! # How a call flows
//!
//! 1. TCP accept → TLS 1.3 handshake in its own task (`basalt_grpc::tls`): client certificate
//!    required, chained to an accepted CA, EKU exactly clientAuth; failures counted by reason.
//! 2. HTTP/2 (hyper) per connection; the leaf is read once into a `Peer` (CN, serial,
//!    fingerprint, roles from the Organization values).
//! 3. Per call ([`pipeline::handle`](crate::pipeline)): strip client-sent `talos-role`,
//!    `basalt-caller`, `proxyfrom` (roles honoured only from `os:impersonator`) → audit record
//!    opened → authorize with `basalt_authz` (health and reflection need no role) → local
//!    service, or forward to machined with `talos-role` (one value per role) and
//!    `basalt-caller` set by apid.
//!
//! `basalt-caller` carries `cn=<cn>;serial=<hex>;fp=<sha256 hex>;roles=<r1>,<r2>;addr=<ip:port>`
//! with every value percent-encoded outside `A-Z a-z 0-9 - . _ ~ : @ / +`.
//!
//! # What apid must not do
//!
//! No syscalls beyond sockets and files (no `nix`/`libc`), no decoding of forwarded payloads,
//! and no trust in any client-sent metadata except from an `os:impersonator` peer.

#![forbid(unsafe_code)]

mod audit;
mod body;
mod error;
mod forward;
mod local;
mod peer;
mod pipeline;
mod routing;
mod server;

pub use basalt_grpc::{HandshakeFailure, HandshakeStats, HandshakeStatsHandle, ReloadHandle};

pub use crate::error::{BoxError, Error};
pub use crate::server::{
    Bound, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE, SHUTDOWN_GRACE, Server, check_config,
};
