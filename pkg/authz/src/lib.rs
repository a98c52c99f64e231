//! Roles and authorization for basalt's management API, following Talos's RBAC byte for byte.
//!
//! This crate owns:
//! - [`Role`] and [`RoleSet`]: the Talos role strings (`os:admin`, `os:operator`, …) parsed with
//!   Talos's rules (trim, skip empty values, keep unknown roles for forward compatibility);
//! - the method → roles table ([`rule`]), copied row by row from Talos's machined `rules` map
//!   (plus a separate section for basalt's own `basalt.v1` RPCs), with the admin-only fallback
//!   for methods without a rule ([`required_roles`]);
//! - the decision ([`authorize`]) and its explanation ([`Denial`]);
//! - the metadata key names roles and routing travel in ([`metadata`]).
//!
//! apid (pre-check) and machined (the authority) both call [`authorize`] on the same static
//! table, so they can never disagree. Methods served with token authentication by trustd are
//! listed in [`TOKEN_AUTHENTICATED`] and never go through the table.
//!
//! Where the roles come from (certificate Organization values, or `talos-role` from a trusted
//! peer) is the caller's business: this crate does no I/O, knows nothing of tonic or X.509, and
//! allocates only when it builds a [`RoleSet`] or a [`Denial`].

mod role;
mod rules;

pub use role::{Role, RoleSet};
pub use rules::{Decision, Denial, TOKEN_AUTHENTICATED, authorize, required_roles, rule};

/// gRPC metadata keys, byte for byte as Talos uses them (talos-facts.md section 6.5), plus
/// basalt's own `basalt-caller`.
pub mod metadata {
    /// Multi-valued role strings, one value per role. Set by apid for machined and for remote
    /// apids; trusted only from an `os:impersonator` peer or from an allowed unix-socket peer, and
    /// stripped from every other caller's request.
    pub const ROLE: &str = "talos-role";
    /// A single target node: the call is forwarded one-to-one to that node's apid.
    pub const NODE: &str = "node";
    /// Several target nodes (talosctl ≤ 1.13): one-to-many fan-out with merged replies.
    pub const NODES: &str = "nodes";
    /// Set by apid on forwarded calls (the original `:authority`); forces local routing at the
    /// receiver and so guards against forwarding loops.
    pub const PROXY_FROM: &str = "proxyfrom";
    /// The join token a node presents to trustd. A secret: never log its value.
    pub const TOKEN: &str = "token";
    /// basalt only: the original caller's identity on forwarded calls, for audit attribution.
    pub const CALLER: &str = "basalt-caller";
}
