//! Read-only system queries: filesystem sizes, hostname, kernel identity, process credentials and
//! the constants needed to turn /proc numbers into bytes and seconds.

use std::path::Path;

use nix::unistd::SysconfVar;

use crate::Error;

/// Size and free space of a mounted filesystem, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    /// Total size: blocks × fragment size (Talos: `Blocks * Bsize`).
    pub size: u64,
    /// Space available to unprivileged users: available blocks × fragment size
    /// (Talos: `Bavail * Bsize`).
    pub available: u64,
}

/// `statvfs(2)` on `path`: the size and available space of the filesystem holding it.
// The statvfs field types are u64 on 64-bit Linux but narrower on some 32-bit targets.
#[allow(clippy::useless_conversion)]
pub fn statfs(path: &Path) -> Result<FsStats, Error> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(|source| Error::Statfs {
        path: path.to_owned(),
        source,
    })?;
    // statvfs counts f_blocks and f_bavail in units of f_frsize (the fragment size).
    let unit = u64::from(stats.fragment_size());
    Ok(FsStats {
        size: u64::from(stats.blocks()).saturating_mul(unit),
        available: u64::from(stats.blocks_available()).saturating_mul(unit),
    })
}

/// The kernel's hostname (`gethostname(2)`), as UTF-8.
pub fn hostname() -> Result<String, Error> {
    nix::unistd::gethostname()
        .map_err(|source| Error::Hostname { source })?
        .into_string()
        .map_err(|_| Error::HostnameNotUtf8)
}

/// What `uname(2)` reports about the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uname {
    /// The operating system name, e.g. `Linux`.
    pub sysname: String,
    /// The kernel release, e.g. `6.8.0-45-generic`.
    pub release: String,
    /// The hardware architecture, e.g. `x86_64` or `aarch64`.
    pub machine: String,
}

/// `uname(2)`: kernel name, release and machine architecture (lossily converted to UTF-8).
pub fn uname() -> Result<Uname, Error> {
    let uts = nix::sys::utsname::uname().map_err(|source| Error::Uname { source })?;
    Ok(Uname {
        sysname: uts.sysname().to_string_lossy().into_owned(),
        release: uts.release().to_string_lossy().into_owned(),
        machine: uts.machine().to_string_lossy().into_owned(),
    })
}

/// The real user id of this process (`getuid(2)`, which cannot fail).
pub fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// The memory page size in bytes (`sysconf(_SC_PAGESIZE)`), used to turn /proc RSS pages into
/// bytes.
pub fn page_size() -> Result<u64, Error> {
    sysconf(SysconfVar::PAGE_SIZE, "_SC_PAGESIZE")
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, "USER_HZ"), the unit of CPU times in
/// `/proc/stat` and `/proc/<pid>/stat`.
pub fn clock_ticks() -> Result<u64, Error> {
    sysconf(SysconfVar::CLK_TCK, "_SC_CLK_TCK")
}

/// A positive `sysconf(3)` value, or an error naming the variable.
fn sysconf(var: SysconfVar, name: &'static str) -> Result<u64, Error> {
    match nix::unistd::sysconf(var) {
        Ok(Some(value)) if value > 0 => {
            u64::try_from(value).map_err(|_| Error::Sysconf { name, source: None })
        }
        Ok(_) => Err(Error::Sysconf { name, source: None }),
        Err(source) => Err(Error::Sysconf {
            name,
            source: Some(source),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statfs_of_the_root_filesystem_reports_a_size() {
        let stats = statfs(Path::new("/")).expect("statfs /");
        assert!(stats.size > 0);
        assert!(stats.available <= stats.size);
    }

    #[test]
    fn statfs_of_a_missing_path_names_the_path() {
        let err = statfs(Path::new("/definitely/not/here")).expect_err("missing path");
        assert_eq!(err.to_string(), "statfs /definitely/not/here");
    }

    #[test]
    fn hostname_matches_the_kernel() {
        let name = hostname().expect("hostname");
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("proc hostname");
        assert_eq!(name, kernel.trim_end());
    }

    #[test]
    fn uname_reports_linux_and_an_architecture() {
        let uts = uname().expect("uname");
        assert_eq!(uts.sysname, "Linux");
        assert!(!uts.machine.is_empty());
    }

    #[test]
    fn page_size_and_clock_ticks_are_sane() {
        let page = page_size().expect("page size");
        assert!(page >= 4096 && page.is_power_of_two(), "{page}");
        let ticks = clock_ticks().expect("clock ticks");
        assert!((1..=10_000).contains(&ticks), "{ticks}");
    }

    #[test]
    fn current_uid_owns_a_file_this_process_creates() {
        use std::os::unix::fs::MetadataExt as _;
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let meta = file.as_file().metadata().expect("metadata");
        assert_eq!(meta.uid(), current_uid());
    }
}
