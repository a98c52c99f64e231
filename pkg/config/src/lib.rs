//! basalt's configuration documents: their YAML schemas, validation, and safe file I/O.
//!
//! # What this crate owns
//!
//! - [`machine`]: a node's machine config (`version: v1alpha1`, `machine`, `cluster`), parsed
//!   into [`RawMachineConfig`] (serde, unknown keys rejected) and validated into
//!   [`MachineConfig`], with every problem reported at once in one [`Error::Invalid`].
//! - [`service`]: `machine.services`, the processes machined supervises (validated names,
//!   restart policies, dependencies without cycles, health checks).
//! - [`secrets`]: the cluster secrets bundle, drop-in compatible with Talos's `secrets.yaml`;
//!   [`secrets_age`]: the same bundle age-encrypted at rest (x25519 recipients).
//! - [`client`]: the CLI's client config in Talos's talosconfig layout, with talosctl's merge
//!   rule.
//! - [`apid`] and [`trustd`]: the daemons' own config files, written by machined.
//! - [`fs`]: atomic file writes (temp file, fsync, rename, fsync dir) and private directories.
//! - [`Base64Pem`], the base64-of-PEM encoding Talos uses for every `crt`/`key`/`ca` value, and
//!   [`Token`], the `[0-9a-z]{6}.[0-9a-z]{16}` join token.
//! - Documented defaults as `pub const`s ([`DEFAULT_APID_LISTEN`], [`APID_PORT`], …).
//!
//! # What it must not do
//!
//! It never binds sockets or dials, never parses certificates (PEM is carried as text and only
//! its `-----BEGIN ...-----` labels are looked at; `basalt-pki` does the crypto and the CLI
//! composes the two), and never reads the process environment (callers pass paths such as the
//! home directory in). It has no internal dependencies, so every daemon and the CLI can use it.
//!
//! Types that hold keys or tokens implement `Debug` by hand and redact them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apid;
pub mod client;
mod error;
pub mod fs;
mod host;
pub mod limits;
pub mod machine;
mod pem;
pub mod secrets;
pub mod secrets_age;
pub mod service;
mod token;
pub mod trustd;
mod yaml;

pub use apid::{ApidConfig, ApidTls, AuditSink, ForwardingCredentials, RawApidConfig};
pub use client::{ClientConfig, Context, Rename};
pub use error::{Document, Error, Problem};
pub use host::{Endpoint, Host};
pub use limits::{ApidLimits, RawApidLimits};
pub use machine::{
    APID_PORT, DEFAULT_APID_LISTEN, DEFAULT_TRUSTD_LISTEN, MachineConfig, MachineType,
    RawMachineConfig, TRUSTD_PORT,
};
pub use pem::Base64Pem;
pub use secrets::{BundleCerts, CertAndKey, KeyOnly, SecretsBundle};
pub use service::{HealthCheck, RawService, RestartPolicy, ServiceConfig};
pub use token::{TOKEN_FORMAT, Token, generate_token, is_token};
pub use trustd::{AcceptedToken, RateLimit, RawTrustdConfig, TrustdConfig, TrustdPolicy};

/// Fake PEM texts for unit tests: right labels, meaningless bodies (this crate never parses
/// them).
#[cfg(test)]
mod test_support {
    pub(crate) const CA_CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBPzCB8qADAgECAhEA\n-----END CERTIFICATE-----\n";
    pub(crate) const OTHER_CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBYDCCAQWgAwIBAgIQ\n-----END CERTIFICATE-----\n";
    pub(crate) const CA_KEY: &str = "-----BEGIN ED25519 PRIVATE KEY-----\n\
         MC4CAQAwBQYDK2VwBCIEIOESOGA6\n-----END ED25519 PRIVATE KEY-----\n";
}
