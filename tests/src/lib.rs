//! basalt-e2e: the end-to-end harness. Scenarios under `tests/` run the real `machined` and
//! `apid` binaries and talk to them over real TLS, real TCP and real unix sockets.
//!
//! # What a scenario gets
//!
//! [`Node::start`] does, in order (STYLE §5.2, adapted to processes):
//! 1. a temporary directory with a short path (`/tmp/bsXXXXXX`) so unix socket paths stay under
//!    the kernel's 107-byte limit;
//! 2. PKI generated at test time ([`TestPki`]): the OS CA with basalt-pki, and one client
//!    certificate per [`Cert`] — admin, operator, reader, no Organization, another CA, expired,
//!    not yet valid, serverAuth + clientAuth — plus a secrets bundle for `basaltctl`;
//! 3. a control-plane machine config built as `basalt_config::RawMachineConfig`, validated, with
//!    `machine.apid.listen` on a free loopback port;
//! 4. the real `machined` process (`--config`, `--state`, `--socket`, `--apid-bin`), in its own
//!    process group, stdout and stderr into `machined.log` in the temporary directory; machined
//!    issues apid's server certificate and starts `apid` as its supervised child;
//! 5. a bounded poll (at most [`node::READY_PATIENCE`]) until apid answers Version over mTLS
//!    with the admin certificate; machined exiting early fails at once with its log.
//!
//! Accessors: [`Node::client`] / [`Node::diagnostics`] (tonic clients over mTLS as a [`Cert`]),
//! [`Node::tls`] for raw probes ([`net`]), [`Node::log`] / [`Node::log_tail`] for assertion
//! messages. [`Node::shutdown`] sends SIGTERM and asserts a clean exit of machined and apid;
//! dropping a [`Node`] (e.g. when a test panics) stops every process it started.
//!
//! Binaries are found next to the test executable ([`binaries`]); wrap every test body in
//! [`within_test_deadline`].
//!
//! # What it must not do
//!
//! No sleeps for readiness (only bounded polls), no fixed ports, no network beyond loopback,
//! no root, no committed keys.

#![forbid(unsafe_code)]

pub mod binaries;
pub mod cli;
pub mod metrics;
pub mod net;
pub mod node;
pub mod pki;

use std::future::Future;
use std::time::Duration;

pub use crate::binaries::Binary;
pub use crate::net::Outcome;
pub use crate::node::{Node, NodeBuilder};
pub use crate::pki::{Cert, Credentials, TestPki};

/// The most a single end-to-end test may take, startup and shutdown included.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `test`, failing it if it takes longer than [`TEST_DEADLINE`]. A [`Node`] inside is
/// dropped on timeout, which stops its processes.
pub async fn within_test_deadline<F: Future>(test: F) -> F::Output {
    match tokio::time::timeout(TEST_DEADLINE, test).await {
        Ok(output) => output,
        Err(_) => panic!("the test did not finish within {TEST_DEADLINE:?}"),
    }
}
