//! Adopting and reaping orphans: what a process must do when it is PID 1 or a child subreaper,
//! so that processes its children left behind do not linger as zombies.
//!
//! The primitives are deliberately per-pid: a process whose runtime waits for its own children
//! (tokio's `Child::wait`) must never reap those behind the runtime's back, so the caller
//! decides which pids are orphans ([`child_pids`] lists candidates, [`peek_exited_child`] says
//! whether any child has exited at all) and [`reap`] collects exactly one of them.

use std::path::Path;

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::Error;

/// How a reaped process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaped {
    /// It called `exit` with this status.
    Exited(i32),
    /// A signal (this number) ended it.
    Signaled(i32),
}

/// Makes this process a child subreaper (`prctl(PR_SET_CHILD_SUBREAPER)`): orphans among its
/// descendants are re-parented to it instead of to PID 1, and it must reap them.
pub fn set_child_subreaper() -> Result<(), Error> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|source| Error::Subreaper { source })
}

/// Whether this process is a child subreaper.
pub fn is_child_subreaper() -> Result<bool, Error> {
    nix::sys::prctl::get_child_subreaper().map_err(|source| Error::Subreaper { source })
}

/// The pid of one child that has exited and is not reaped yet, without reaping it
/// (`waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`); `None` when no child has exited (or there
/// are no children at all).
pub fn peek_exited_child() -> Result<Option<u32>, Error> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match nix::sys::wait::waitid(Id::All, flags) {
        Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => Ok(None),
        Ok(status) => Ok(status
            .pid()
            .and_then(|pid| u32::try_from(pid.as_raw()).ok())),
        Err(source) => Err(Error::Reap { pid: 0, source }),
    }
}

/// Every child of this process, zombies included: the union of
/// `/proc/self/task/<tid>/children` over its threads (a child is listed under the thread that
/// forked it; an adopted orphan under one of them). Sorted, without duplicates.
pub fn child_pids() -> Result<Vec<u32>, Error> {
    child_pids_in(Path::new("/proc/self/task"))
}

fn child_pids_in(tasks: &Path) -> Result<Vec<u32>, Error> {
    let list = |source| Error::ListChildren { source };
    let mut pids = Vec::new();
    for task in std::fs::read_dir(tasks).map_err(list)? {
        let task = task.map_err(list)?;
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(text) => pids.extend(
                text.split_ascii_whitespace()
                    .filter_map(|pid| pid.parse::<u32>().ok()),
            ),
            // The thread ended between the listing and the read.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(list(source)),
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Reaps child `pid` if it has exited (`waitpid(pid, WNOHANG)`); `None` when it still runs or
/// is not (or no longer) a child of this process.
///
/// Only for children nobody else waits for: reaping a child that the runtime spawned would take
/// its exit status away from it.
pub fn reap(pid: u32) -> Result<Option<Reaped>, Error> {
    let raw = i32::try_from(pid)
        .ok()
        .filter(|raw| *raw > 0)
        .ok_or(Error::Reap {
            pid,
            source: nix::Error::EINVAL,
        })?;
    match nix::sys::wait::waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Ok(Some(Reaped::Exited(code))),
        Ok(WaitStatus::Signaled(_, signal, _)) => Ok(Some(Reaped::Signaled(signal as i32))),
        Ok(_) | Err(nix::Error::ECHILD) => Ok(None),
        Err(source) => Err(Error::Reap { pid, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn an_exited_child_is_listed_and_reaped_once() {
        let child = Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // Dropping a std Child neither waits nor kills: the zombie stays for us to reap.
        drop(child);
        assert!(child_pids().expect("children").contains(&pid));
        let deadline = Instant::now() + Duration::from_secs(10);
        let reaped = loop {
            if let Some(reaped) = reap(pid).expect("reap") {
                break reaped;
            }
            assert!(Instant::now() < deadline, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(reaped, Reaped::Exited(7));
        // Gone: neither listed nor reapable again.
        assert!(!child_pids().expect("children").contains(&pid));
        assert_eq!(reap(pid).expect("reap again"), None);
    }

    #[test]
    fn a_running_child_is_not_reaped_and_pid_zero_is_refused() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        assert_eq!(reap(child.id()).expect("reap"), None);
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(reap(0).is_err());
    }

    #[test]
    fn peeking_leaves_the_exited_child_to_be_reaped() {
        let child = Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        drop(child);
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|r| r.starts_with(" Z")))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !zombie() {
            assert!(Instant::now() < deadline, "sh did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Some exited child is seen (ours, or another test's), and nothing is consumed.
        assert!(peek_exited_child().expect("peek").is_some());
        assert!(peek_exited_child().expect("peek again").is_some());
        assert_eq!(reap(pid).expect("reap"), Some(Reaped::Exited(3)));
    }

    #[test]
    fn subreaper_can_be_set() {
        // Harmless for a test process: its orphans come to it instead of to init.
        set_child_subreaper().expect("subreaper");
        assert!(is_child_subreaper().expect("query"));
    }
}
