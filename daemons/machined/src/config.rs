//! machined's runtime configuration, built by `main.rs` from flags and the machine config, or
//! directly by tests.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::MachineConfig;
use basalt_sys::Host;

use crate::config_store::ConfigStore;
use crate::files::FilesPolicy;
use crate::supervise::ServicesConfig;

/// Mode of the socket's directory: owner rwx, group r-x (so a group member can reach the
/// socket), nothing for others.
pub const SOCKET_DIR_MODE: u32 = 0o750;

/// Mode of the socket: owner and group may connect, others may not.
pub const SOCKET_MODE: u32 = 0o660;

/// gRPC message size limit in both directions, raised from tonic's 4 MiB to Talos's 32 MiB
/// (talos-facts.md §1.7).
pub const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// How long in-flight calls may run after shutdown is requested before they are cut (Talos's
/// graceful-stop limit).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything [`Server::bind`](crate::Server::bind) needs.
#[derive(Clone)]
pub struct Config {
    /// The unix socket to serve on. Its directory is created with [`SOCKET_DIR_MODE`] if
    /// missing; the socket gets [`SOCKET_MODE`]; a stale socket is replaced.
    pub socket: PathBuf,
    /// The peers (by uid, from SO_PEERCRED) allowed to call machined.
    pub allowed_uids: AllowedUids,
    /// Whether machined runs as a container-mode process or as the machine's PID 1.
    pub mode: Mode,
    /// The host every side effect goes through.
    pub host: Arc<dyn Host>,
    /// When set, machined issues apid's credentials, writes its config and runs it as a
    /// supervised child. `None` runs machined alone (tests, `--no-apid`).
    pub apid: Option<ApidLaunch>,
    /// How to start trustd, on control-plane nodes (those whose `machine.ca` has a key). Used
    /// only together with [`Config::apid`], whose machine config and state directory it
    /// shares; ignored on workers.
    pub trustd: Option<TrustdLaunch>,
    /// The configured services (`machine.services`), where their logs go, and how they are
    /// stopped and restarted. apid, when set above, is supervised alongside them.
    pub services: ServicesConfig,
    /// Which paths Read, List, DiskUsage and Copy may touch. Default: root `/` with
    /// [`default_deny_rules`](crate::default_deny_rules). `Server::bind` always adds
    /// `state_dir` and `machine_config_file` to it.
    pub files: FilesPolicy,
    /// machined's state directory (`--state`). The container-mode boot id is kept in
    /// `<state>/boot_id`, and Reset wipes the directory except the machine config file, the
    /// socket, apid's files and (emptied in place) the service logs. `None`: nothing is
    /// stored, and Reset wipes nothing.
    pub state_dir: Option<PathBuf>,
    /// The machine config machined runs with: GenerateClientConfiguration signs with its CA
    /// (control-plane nodes). `None` behaves like a worker.
    pub machine: Option<MachineConfig>,
    /// The file the machine config was read from; it survives Reset.
    pub machine_config_file: Option<PathBuf>,
    /// How long a boot waits for every service to be ready before it reports RUNNING with
    /// `ready = false` (default [`BOOT_READY_PATIENCE`](crate::BOOT_READY_PATIENCE)).
    pub boot_ready_patience: Duration,
    /// The machine-config store (`<state>/config/`: active config, history, staged and TRY
    /// state) behind ApplyConfiguration and `basalt.v1.ConfigService`. `None` answers them
    /// FailedPrecondition. `main` opens it before bind, so that apid and the services start
    /// with the stored config.
    pub config_store: Option<ConfigStore>,
}

impl Config {
    /// A config with the defaults: uid allow-list [`AllowedUids::default_for_this_process`],
    /// container mode, no apid, no configured services, no state directory, no machine config.
    pub fn new(socket: impl Into<PathBuf>, host: Arc<dyn Host>) -> Self {
        Config {
            socket: socket.into(),
            allowed_uids: AllowedUids::default_for_this_process(),
            mode: Mode::Container,
            host,
            apid: None,
            trustd: None,
            services: ServicesConfig::default(),
            files: FilesPolicy::default(),
            state_dir: None,
            machine: None,
            machine_config_file: None,
            boot_ready_patience: crate::lifecycle::BOOT_READY_PATIENCE,
            config_store: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("socket", &self.socket)
            .field("allowed_uids", &self.allowed_uids)
            .field("mode", &self.mode)
            .field("host", &self.host)
            .field("apid", &self.apid)
            .field("trustd", &self.trustd)
            .field("services", &self.services)
            .field("files", &self.files)
            .field("state_dir", &self.state_dir)
            .field("machine", &self.machine)
            .field("machine_config_file", &self.machine_config_file)
            .field("boot_ready_patience", &self.boot_ready_patience)
            .field("config_store", &self.config_store)
            .finish()
    }
}

/// The uids allowed to connect to machined's socket.
///
/// Talos's machined identifies its peers by PID (`runtime.ServicePID`); basalt, running as an
/// ordinary process in container mode, uses the uid instead: apid is machined's child and runs
/// under the same uid, and root may always manage the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedUids(BTreeSet<u32>);

impl AllowedUids {
    /// Exactly these uids (may be empty: then every peer is refused).
    pub fn new(uids: impl IntoIterator<Item = u32>) -> Self {
        AllowedUids(uids.into_iter().collect())
    }

    /// Root (0) and the uid machined runs as (which its child apid shares).
    pub fn default_for_this_process() -> Self {
        AllowedUids::new([0, basalt_sys::current_uid()])
    }

    /// Whether `uid` may call machined.
    pub fn contains(&self, uid: u32) -> bool {
        self.0.contains(&uid)
    }

    /// The uids, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}

/// Where machined runs (DESIGN.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An ordinary process on someone else's machine: the host is never touched. The default
    /// unless machined is PID 1.
    Container,
    /// PID 1 of a basalt image: machined owns the machine.
    Metal,
}

impl Mode {
    /// The mode for a process with this PID: [`Mode::Metal`] only for PID 1.
    pub fn for_pid(pid: u32) -> Self {
        if pid == 1 {
            Mode::Metal
        } else {
            Mode::Container
        }
    }

    /// `container` or `metal`, as reported in `Version.platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Container => "container",
            Mode::Metal => "metal",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How machined starts trustd (control-plane nodes): its files go to `<state>/trustd/`
/// ([`crate::trustd`]).
#[derive(Clone, Debug)]
pub struct TrustdLaunch {
    /// The trustd executable.
    pub binary: PathBuf,
    /// Restart pacing for the child.
    pub backoff: Backoff,
}

/// How machined starts apid: on control-plane nodes with a certificate it issues, on workers
/// once trustd issued one ([`crate::bootstrap`]).
#[derive(Clone, Debug)]
pub struct ApidLaunch {
    /// The machine config: CA, accepted CAs, cert SANs, hostname, apid listen address.
    pub machine: MachineConfig,
    /// machined's state directory; apid's files go to `<state>/apid/`.
    pub state_dir: PathBuf,
    /// The apid executable.
    pub binary: PathBuf,
    /// Restart pacing for the child.
    pub backoff: Backoff,
}

/// Exponential restart backoff for a supervised child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// The delay doubles after each quick exit, up to this cap.
    pub max: Duration,
    /// A child that stayed up this long is considered healthy: the delay starts over.
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// 0.5 s, doubling to at most 30 s, reset after 10 s of uptime.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_allow_list_is_root_and_this_uid() {
        let allowed = AllowedUids::default_for_this_process();
        assert!(allowed.contains(0));
        assert!(allowed.contains(basalt_sys::current_uid()));
    }

    #[test]
    fn only_pid_1_is_metal() {
        assert_eq!(Mode::for_pid(1), Mode::Metal);
        assert_eq!(Mode::for_pid(4242), Mode::Container);
    }
}
