//! The [`Host`] trait: every side effect basalt has on the machine goes through it, so the
//! daemons stay testable unprivileged and container mode can never touch the host.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use nix::sys::reboot::RebootMode;

use crate::Error;

/// The machine basalt manages. machined holds an `Arc<dyn Host>` and performs every host side
/// effect through it.
///
/// Kept deliberately small: it grows with the handlers that need it (lifecycle, mounts, …), never
/// ahead of them.
pub trait Host: Send + Sync + fmt::Debug {
    /// The node's hostname as the API reports it.
    fn hostname(&self) -> Result<String, Error>;

    /// Follows a new active machine config: `machine.hostname` when it sets one, else the
    /// kernel's. (The kernel's own hostname is not changed.)
    fn set_configured_hostname(&self, hostname: Option<String>);

    /// Reboots the node. In container mode this only records the request.
    fn reboot(&self) -> Result<(), Error>;

    /// Powers the node off. In container mode this only records the request.
    fn poweroff(&self) -> Result<(), Error>;
}

/// A side effect that was asked of a [`ContainerHost`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// [`Host::poweroff`] was called.
    Poweroff,
    /// [`Host::reboot`] was called.
    Reboot,
}

/// The container-mode host: basalt runs as an ordinary process on someone else's machine, so
/// nothing here changes the machine. Requests are recorded in-process (machined acts on them by
/// restarting its own services); the hostname is the configured one, else the kernel's.
#[derive(Debug, Default)]
pub struct ContainerHost {
    hostname: ConfiguredHostname,
    actions: Mutex<Vec<HostAction>>,
}

/// `machine.hostname` of the active config, if it sets one; else the kernel's is reported.
#[derive(Debug, Default)]
struct ConfiguredHostname(Mutex<Option<String>>);

impl ConfiguredHostname {
    fn new(hostname: Option<String>) -> Self {
        Self(Mutex::new(hostname))
    }

    fn get(&self) -> Result<String, Error> {
        // Only ever replaced whole: a panic elsewhere cannot leave it inconsistent.
        match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(name) => Ok(name.clone()),
            None => crate::hostname(),
        }
    }

    fn set(&self, hostname: Option<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = hostname;
    }
}

impl ContainerHost {
    /// A container host that reports `hostname` when given (the machine config's
    /// `machine.hostname`), else the kernel's hostname.
    pub fn new(hostname: Option<String>) -> Self {
        ContainerHost {
            hostname: ConfiguredHostname::new(hostname),
            actions: Mutex::new(Vec::new()),
        }
    }

    /// Every action asked of this host so far, oldest first.
    pub fn actions(&self) -> Vec<HostAction> {
        self.lock().clone()
    }

    fn record(&self, action: HostAction) {
        self.lock().push(action);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HostAction>> {
        // The vector is only ever pushed to; a panic elsewhere cannot leave it inconsistent.
        self.actions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Host for ContainerHost {
    fn hostname(&self) -> Result<String, Error> {
        self.hostname.get()
    }

    fn set_configured_hostname(&self, hostname: Option<String>) {
        self.hostname.set(hostname);
    }

    fn reboot(&self) -> Result<(), Error> {
        self.record(HostAction::Reboot);
        Ok(())
    }

    fn poweroff(&self) -> Result<(), Error> {
        self.record(HostAction::Poweroff);
        Ok(())
    }
}

/// The real machine, for machined running as PID 1 of a basalt image (metal mode): reboot and
/// power-off are `sync(2)` followed by `reboot(2)`. Never constructed in tests or in container
/// mode; the calls need `CAP_SYS_BOOT`.
#[derive(Debug, Default)]
pub struct RealHost {
    hostname: ConfiguredHostname,
}

impl RealHost {
    /// The real machine, reporting `hostname` when given (the machine config's
    /// `machine.hostname`), else the kernel's hostname.
    pub fn new(hostname: Option<String>) -> Self {
        RealHost {
            hostname: ConfiguredHostname::new(hostname),
        }
    }
}

impl Host for RealHost {
    fn hostname(&self) -> Result<String, Error> {
        self.hostname.get()
    }

    fn set_configured_hostname(&self, hostname: Option<String>) {
        self.hostname.set(hostname);
    }

    fn reboot(&self) -> Result<(), Error> {
        restart_or_halt(RebootMode::RB_AUTOBOOT, "reboot")
    }

    fn poweroff(&self) -> Result<(), Error> {
        restart_or_halt(RebootMode::RB_POWER_OFF, "power off")
    }
}

/// Flushes filesystem buffers, then asks the kernel to restart or power off. Returns only on
/// failure (`reboot(2)` does not return when it succeeds).
fn restart_or_halt(mode: RebootMode, action: &'static str) -> Result<(), Error> {
    // Data written by services must reach the disks before the machine goes away.
    nix::unistd::sync();
    match nix::sys::reboot::reboot(mode) {
        Ok(never) => match never {},
        Err(source) => Err(Error::Reboot { action, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_hostname_wins_over_the_kernel() {
        let host = ContainerHost::new(Some("node-1".to_owned()));
        assert_eq!(host.hostname().expect("hostname"), "node-1");
    }

    #[test]
    fn without_a_configured_hostname_the_kernel_name_is_reported() {
        let host = ContainerHost::new(None);
        assert_eq!(
            host.hostname().expect("hostname"),
            crate::hostname().expect("kernel")
        );
    }

    #[test]
    fn reboot_and_poweroff_are_only_recorded() {
        let host = ContainerHost::default();
        host.reboot().expect("reboot");
        host.poweroff().expect("poweroff");
        assert_eq!(host.actions(), [HostAction::Reboot, HostAction::Poweroff]);
    }
}
