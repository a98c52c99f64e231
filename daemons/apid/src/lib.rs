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
//!    required, chained to an accepted CA, EKU exactly clientAuth, not on the deny list
//!    ([`revocation`]); failures counted by reason.
//! 2. HTTP/2 (hyper) per connection; the leaf is read once into a `Peer` (CN, serial,
//!    fingerprint, roles from the Organization values). The connection is registered under
//!    its source address (per-address limit) and certificate, so that a revocation closes it.
//! 3. Per call ([`pipeline::handle`](crate::pipeline)): strip client-sent `talos-role`,
//!    `basalt-caller`, `proxyfrom` (roles honoured only from `os:impersonator`) → audit record
//!    opened → per-certificate rate and in-flight limits ([`limits`]) → authorize with
//!    `basalt_authz` (health and reflection need no role) → local
//!    service, or forward with `talos-role` (one value per role) and `basalt-caller` set by
//!    apid: to machined, or — by the `node` / `nodes` metadata ([`routing`](crate::routing))
//!    — one-to-one to another node's apid with this node's `os:impersonator` certificate
//!    (`remote`) or one-to-many with per-node metadata ([`fanout`]). A call another apid
//!    forwarded (`proxyfrom` from an impersonator) is always served locally.
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
mod connections;
mod error;
#[doc(hidden)]
pub mod fanout;
mod forward;
pub mod limits;
mod local;
mod metrics;
mod peer;
mod pipeline;
mod remote;
pub mod revocation;
mod routing;
mod server;

pub use basalt_grpc::{HandshakeFailure, HandshakeStats, HandshakeStatsHandle, ReloadHandle};

pub use crate::error::{BoxError, Error};
pub use crate::server::LimitStatsHandle;
pub use crate::server::{
    Bound, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_FRAME_SIZE, SHUTDOWN_GRACE, Server,
    check_config,
};
