//! machined: basalt's machine daemon. It serves the Talos machine API on a unix socket, answers
//! with real data from /proc and the host, and runs apid (and, on control planes, trustd) as
//! supervised children.
//!
//! # What it owns
//!
//! - The unix-socket gRPC server (`machine.MachineService` and basalt's
//!   `basalt.v1.DiagnosticsService`), with tonic's message limits raised to 32 MiB.
//! - The authorization chain on that socket (defence in depth behind apid; Talos's machined is
//!   the authority too).
//! - The system-information handlers: Version, Hostname, Memory, LoadAvg, CPUInfo, SystemStat,
//!   Processes, Mounts, DiskStats, NetworkDeviceStats. Every other method of the machine proto
//!   answers `Unimplemented` with "basalt does not implement `<method>` yet".
//! - The file and kernel-log handlers: Read, List, DiskUsage, Copy behind one path policy
//!   ([`FilesPolicy`]: absolute paths, allowed roots, a deny list, no escape through `..` or
//!   symlinks), and Dmesg from `/dev/kmsg` (FailedPrecondition where it cannot be read).
//! - The lifecycle: Reboot, Shutdown and Reset as asynchronous sequences published on the
//!   event bus, the `Events` RPC that follows them, and the node's [boot id](boot_id)
//!   (container mode: a reboot restarts the services and renews it, shutdown ends machined,
//!   reset wipes the state directory; the host is never touched).
//! - GenerateClientConfiguration on control-plane nodes (a client certificate from
//!   `machine.ca` wrapped in a talosconfig).
//! - On control-plane nodes: apid's server certificate (issued from `machine.ca`, 24 h,
//!   renewed every 12 h), apid's config file, and apid itself as a supervised child
//!   ([`apid`]); trustd's certificate, CA files and config, and trustd as a built-in service
//!   ([`trustd`](mod@trustd)).
//! - On workers: apid's server certificate from the control planes' trustd (key + CSR, join
//!   token, round-robin with backoff, renewed at half-life); apid starts once it has one
//!   ([`bootstrap`]).
//! - The service supervisor ([`supervise`]): apid, trustd and `machine.services` run as supervised
//!   children with Talos's states, dependencies, health checks, restart policies with backoff,
//!   SIGTERM-then-SIGKILL stops and captured output (bounded ring + rotated file); served as
//!   ServiceList, ServiceStart/Stop/Restart, Logs and LogsContainers.
//! - The node's event bus ([`EventBus`]): every service transition and lifecycle step is
//!   published once, kept in a bounded ring and fanned out to `Events` followers.
//!
//! # What it must not do
//!
//! No syscalls of its own (`nix`/`libc`/`unsafe` live in `basalt-sys`; this crate forbids
//! `unsafe`): host side effects go through [`basalt_sys::Host`], and in container mode (the
//! default unless machined is PID 1) the host is never touched. It does not depend on any
//! other daemon; apid is reached only as a child process and through its config file. It never
//! reads the process environment: `main.rs` does.
//!
//! # How a request flows
//!
//! 1. tonic accepts a connection on the socket and records the peer's credentials
//!    (SO_PEERCRED) as `UdsConnectInfo` in every request's extensions.
//! 2. The layer stack (outermost first; written once in `layers::Stack`):
//!    request log → panic catcher → **peer check** (the peer's uid must be in
//!    [`AllowedUids`]; otherwise PermissionDenied "peer uid N is not allowed to call machined")
//!    → **roles** from the `talos-role` metadata only (one value per role, or comma-separated;
//!    absent means no roles) → **authorize** with `basalt_authz::authorize` on the full method
//!    path (PermissionDenied naming the method, the roles it needs and the roles held) →
//!    **not implemented** (Unimplemented for every method basalt does not serve yet).
//! 3. The handler reads /proc (blocking scans run on tokio's blocking pool) and replies with
//!    Talos's envelope: exactly one element in `messages`, its `metadata` unset.
//! 4. Failures map onto statuses in one place ([`Error`]'s `From` impl): internal details go to
//!    the log, the caller gets a generic `Internal`.
//!
//! # Use
//!
//! ```no_run
//! # async fn run() -> Result<(), machined::Error> {
//! use std::sync::Arc;
//! let host = Arc::new(basalt_sys::ContainerHost::new(None));
//! let bound = machined::Server::bind(machined::Config::new("/tmp/bs/run/machined.sock", host))
//!     .await?;
//! bound.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod apid;
pub mod boot_id;
pub mod bootstrap;
mod clientconfig;
mod config;
pub mod config_store;
mod dmesg;
mod error;
pub mod events;
mod files;
mod layers;
mod lifecycle;
mod pki_reconcile;
mod procfs;
pub mod revocation;
mod server;
mod services;
pub mod supervise;
pub mod trustd;

pub use crate::config::{
    AllowedUids, ApidLaunch, Backoff, Config, DRAIN_TIMEOUT, MAX_MESSAGE_SIZE, Mode,
    SOCKET_DIR_MODE, SOCKET_MODE, TrustdLaunch,
};
pub use crate::config_store::{ConfigStore, ConfigStoreOptions};
pub use crate::error::Error;
pub use crate::events::{Event, EventBus, EventPayload};
pub use crate::files::{
    DEFAULT_MAX_WALK_ENTRIES, DenyRule, FilesPolicy, FilesPolicyError, MACHINE_CONFIG_REASON,
    READ_CHUNK_SIZE, STATE_DIR_REASON, STREAM_BUFFER, default_deny_rules,
};
pub use crate::lifecycle::BOOT_READY_PATIENCE;
pub use crate::server::{Bound, Server};
pub use crate::supervise::{STOP_GRACE, ServicesConfig, reap_orphans};

/// Limits of `basalt.v1.DiagnosticsService/Generate`.
pub mod diagnostics {
    pub use crate::services::{GENERATE_MAX_COUNT, GENERATE_MAX_SIZE};
}
