//! basalt-client: typed client library for basalt's gRPC API.
//!
//! # What this crate owns
//!
//! - **Where and as whom** ([`Target`], [`ApidEndpoint`], [`Credentials`]): endpoints as
//!   talosctl reads them (`host` or `host:port`, port 50000 by default, IPv6 in brackets), the
//!   nodes to address, and the CA bundle, client certificate and key, usually all taken from a
//!   client-config [`basalt_config::Context`].
//! - **Connecting** ([`Client::connect`]): TCP, then TLS 1.3 with ALPN `h2` through our own
//!   tokio-rustls connector built from [`basalt_pki::client_config`] (the one rustls client
//!   builder of the workspace), server name = the endpoint's host, then HTTP/2 via tonic with
//!   32 MiB message limits. The client certificate's validity is checked locally first, and
//!   failures are told apart ([`Error::Unreachable`], [`Error::ConnectTimeout`],
//!   [`Error::HandshakeRefused`], [`Error::ServerCertificate`],
//!   [`Error::ClientCertificateExpired`], …) because an expired certificate must not look like
//!   a dead node (user-asks §1b rows 12–13).
//! - **Node targeting** ([`Client::each_node`], [`NodeResult`]): as talosctl v1.14, one call per
//!   node with metadata `node: <node>`, or one call without routing metadata when no nodes are
//!   set; results come back per node, in order, with at most [`Client::concurrency`] calls in
//!   flight ([`bounded`]).
//!
//! # What it must not do
//!
//! No server code: it does not depend on `basalt-grpc` or any daemon, so the CLI links none.
//! It never sets `talos-role`, `basalt-caller` or `proxyfrom`; those are apid's to set when it
//! forwards. It does not read files or the environment: callers load the client config.
//!
//! # Example
//!
//! ```no_run
//! # async fn run(context: &basalt_config::Context) -> Result<(), basalt_client::Error> {
//! use basalt_client::{Client, ConnectOptions, Target};
//!
//! let target = Target::from_context(context)?.with_nodes(vec!["10.0.0.2".into()]);
//! let client = Client::connect(&target, &ConnectOptions::default()).await?;
//! for reply in client.version().await {
//!     match reply.result {
//!         Ok(version) => println!("{}: {:?}", reply.node, version.messages),
//!         Err(status) => eprintln!("{}: {:?} {}", reply.node, status.code(), status.message()),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connect;
mod credentials;
mod endpoint;
mod error;
mod limit;
mod nodes;

pub use crate::connect::{
    Client, ConnectOptions, DEFAULT_CONNECT_TIMEOUT, MAX_MESSAGE_SIZE, Target,
};
pub use crate::credentials::Credentials;
pub use crate::endpoint::{ApidEndpoint, parse_endpoints};
pub use crate::error::Error;
pub use crate::limit::{DEFAULT_CONCURRENCY, bounded};
pub use crate::nodes::{NodeResult, targeted_request};

/// The port an endpoint without one is dialed on (Talos's apid port).
pub const DEFAULT_PORT: u16 = basalt_config::APID_PORT;
