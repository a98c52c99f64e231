//! Readers for the /proc files behind machined's system-information handlers.
//!
//! Each file gets a pure parser over its text (unit-tested on fixture text captured from real
//! machines) and a reader on [`ProcFs`] that loads the real file and calls the parser. Parsers
//! return the generated `machine` messages directly, with field meanings as in
//! talos-facts.md §6.3: memory in kB as the kernel prints it, CPU times in seconds, sizes in
//! bytes.

mod cpuinfo;
mod diskstats;
mod loadavg;
mod meminfo;
mod mounts;
mod netdev;
mod process;
mod stat;

use std::io;
use std::path::{Path, PathBuf};

pub(crate) use self::mounts::MountEntry;

use basalt_api::machine;

use crate::Error;

/// The /proc tree to read (the real `/proc` in production).
#[derive(Clone, Debug)]
pub(crate) struct ProcFs {
    root: PathBuf,
}

impl ProcFs {
    /// Reads from the given procfs mount point.
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        ProcFs { root: root.into() }
    }

    /// /proc/meminfo.
    pub(crate) fn meminfo(&self) -> Result<machine::MemInfo, Error> {
        let path = self.root.join("meminfo");
        let text = read(&path)?;
        meminfo::parse(&text).map_err(|reason| Error::ParseProc { path, reason })
    }

    /// /proc/loadavg.
    pub(crate) fn loadavg(&self) -> Result<(f64, f64, f64), Error> {
        let path = self.root.join("loadavg");
        let text = read(&path)?;
        loadavg::parse(&text).map_err(|reason| Error::ParseProc { path, reason })
    }

    /// /proc/cpuinfo: one entry per logical CPU.
    pub(crate) fn cpuinfo(&self) -> Result<Vec<machine::CpuInfo>, Error> {
        let path = self.root.join("cpuinfo");
        let text = read(&path)?;
        cpuinfo::parse(&text).map_err(|reason| Error::ParseProc { path, reason })
    }

    /// /proc/stat, with CPU times converted from `clock_ticks` per second to seconds.
    pub(crate) fn stat(&self, clock_ticks: u64) -> Result<machine::SystemStat, Error> {
        let path = self.root.join("stat");
        let text = read(&path)?;
        stat::parse(&text, clock_ticks).map_err(|reason| Error::ParseProc { path, reason })
    }

    /// /proc/mounts: one entry per mount, in mount order.
    pub(crate) fn mounts(&self) -> Result<Vec<MountEntry>, Error> {
        let path = self.root.join("mounts");
        let text = read(&path)?;
        Ok(mounts::parse(&text))
    }

    /// /proc/diskstats: every block device, and their sum.
    pub(crate) fn diskstats(&self) -> Result<machine::DiskStats, Error> {
        let path = self.root.join("diskstats");
        let text = read(&path)?;
        diskstats::parse(&text).map_err(|reason| Error::ParseProc { path, reason })
    }

    /// /proc/net/dev: every network interface, and their sum.
    pub(crate) fn netdev(&self) -> Result<machine::NetworkDeviceStats, Error> {
        let path = self.root.join("net/dev");
        let text = read(&path)?;
        netdev::parse(&text).map_err(|reason| Error::ParseProc { path, reason })
    }

    /// Every user-space process (kernel threads, which have no executable, are skipped).
    pub(crate) fn processes(
        &self,
        units: ProcessUnits,
    ) -> Result<Vec<machine::ProcessInfo>, Error> {
        process::scan(&self.root, units)
    }
}

/// The host constants that turn /proc numbers into seconds and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessUnits {
    /// Clock ticks per second (`_SC_CLK_TCK`).
    pub(crate) clock_ticks: u64,
    /// Bytes per memory page (`_SC_PAGESIZE`).
    pub(crate) page_size: u64,
}

/// Reads a whole /proc file as text.
fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::ReadProc {
        path: path.to_owned(),
        source,
    })
}

/// Parses one unsigned decimal field, naming it in the error.
fn number(field: &str, what: &str) -> Result<u64, String> {
    field
        .parse()
        .map_err(|_| format!("{what}: {field:?} is not an unsigned number"))
}

/// Whether an I/O error means "this process went away" (or was never ours to see), which a
/// /proc scan treats as "skip it", not as a failure.
fn is_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || err.raw_os_error() == Some(3) // ESRCH: the process exited while being read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc() -> ProcFs {
        ProcFs::new("/proc")
    }

    #[test]
    fn the_real_proc_parses_with_plausible_values() {
        let proc = proc();
        assert!(proc.meminfo().expect("meminfo").memtotal > 0);
        let (load1, _, _) = proc.loadavg().expect("loadavg");
        assert!(load1 >= 0.0);
        assert!(!proc.cpuinfo().expect("cpuinfo").is_empty());
        let ticks = basalt_sys::clock_ticks().expect("ticks");
        let stat = proc.stat(ticks).expect("stat");
        assert!(
            stat.cpu_total
                .is_some_and(|t| t.user + t.system + t.idle > 0.0)
        );
        assert!(stat.boot_time > 0);
        assert!(!proc.mounts().expect("mounts").is_empty());
        proc.diskstats().expect("diskstats");
        let net = proc.netdev().expect("netdev");
        assert!(net.devices.iter().any(|d| d.name == "lo"), "{net:?}");
    }

    #[test]
    fn the_real_process_list_contains_this_test_process() {
        let units = ProcessUnits {
            clock_ticks: basalt_sys::clock_ticks().expect("ticks"),
            page_size: basalt_sys::page_size().expect("page size"),
        };
        let processes = proc().processes(units).expect("processes");
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let this = processes
            .iter()
            .find(|p| p.pid == me)
            .expect("this process is listed");
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(this.executable, exe.to_string_lossy());
        assert!(this.resident_memory > 0);
        assert!(this.threads >= 1);
        assert!(this.args.starts_with(&*exe.to_string_lossy()) || !this.args.is_empty());
    }
}
