//! Processes known only by a pid file, not owned as children: the daemons `basaltctl cluster`
//! starts detached and later stops from another invocation.
//!
//! Such a PID may have been reused by an unrelated process, so callers must check who it is
//! (e.g. its command line) before signalling; these helpers only do the syscalls.

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Error;

/// True when process `pid` exists and is not a zombie.
///
/// Existence is asked with `kill(pid, 0)` (EPERM still means "exists"); a zombie (state `Z` in
/// `/proc/<pid>/stat`) has exited and only waits for a parent that may never reap it, so it
/// counts as gone.
pub fn is_running(pid: u32) -> bool {
    let Some(raw) = positive(pid) else {
        return false;
    };
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(Errno::EPERM) => !is_zombie(pid),
        Err(_) => false,
    }
}

/// Sends SIGKILL to every process of process group `pgid` (a daemon started with
/// `process_group(0)` leads a group whose id is its pid; its children stay in it). A group
/// that no longer exists is not an error.
pub fn kill_process_group(pgid: u32) -> Result<(), Error> {
    let raw = positive(pgid).ok_or(Error::Signal {
        pid: pgid,
        source: Errno::EINVAL,
    })?;
    // A negative pid addresses the group (kill(2)); `positive` ruled out 0 and -1.
    match kill(Pid::from_raw(-raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal { pid: pgid, source }),
    }
}

/// `pid` as a positive `pid_t`; 0 and values that would wrap negative address groups or
/// everything and are refused.
fn positive(pid: u32) -> Option<i32> {
    i32::try_from(pid).ok().filter(|raw| *raw > 0)
}

/// Reads the state letter after the `(comm)` field of `/proc/<pid>/stat`.
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // comm may contain spaces and parentheses; the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Command;

    use super::*;

    #[test]
    fn a_live_child_is_running_and_a_reaped_one_is_not() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        assert!(is_running(child.id()));
        child.kill().expect("kill");
        // Not reaped yet: a zombie counts as gone.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!is_running(child.id()));
        child.wait().expect("wait");
        assert!(!is_running(child.id()));
    }

    #[test]
    fn kill_process_group_kills_the_leader() {
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn");
        kill_process_group(child.id()).expect("kill group");
        assert_eq!(child.wait().expect("wait").signal(), Some(9));
        // Gone now: not an error.
        kill_process_group(child.id()).expect("kill again");
    }

    #[test]
    fn pid_zero_is_never_signalled() {
        assert!(!is_running(0));
        assert!(kill_process_group(0).is_err());
        assert!(kill_process_group(u32::MAX).is_err());
    }
}
