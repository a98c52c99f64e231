//! Signals to processes basalt started itself (supervised children).

use crate::Error;

/// Asks process `pid` to stop by sending it SIGTERM.
///
/// Meant for children this process spawned and still owns (their PID cannot have been reused
/// while they are unreaped). A process that already exited is not an error.
pub fn terminate(pid: u32) -> Result<(), Error> {
    let raw = i32::try_from(pid).map_err(|_| Error::Signal {
        pid,
        source: nix::Error::EINVAL,
    })?;
    // PID 0 or a negative value would signal a whole process group; refuse them.
    if raw <= 0 {
        return Err(Error::Signal {
            pid,
            source: nix::Error::EINVAL,
        });
    }
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGTERM,
    ) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal { pid, source }),
    }
}

/// Asks every process of process group `pgid` to stop by sending the group SIGTERM.
///
/// Meant for supervised children spawned as leaders of their own group (`process_group(0)`,
/// so the group id is the leader's pid): the signal also reaches whatever the leader started
/// (`sh -c 'a | b'`). A group that no longer exists is not an error.
pub fn terminate_process_group(pgid: u32) -> Result<(), Error> {
    let raw = i32::try_from(pgid)
        .ok()
        .filter(|raw| *raw > 1)
        .ok_or(Error::Signal {
            pid: pgid,
            source: nix::Error::EINVAL,
        })?;
    // A negative pid addresses the group (kill(2)); 0, 1 and -1 were ruled out above.
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-raw),
        nix::sys::signal::Signal::SIGTERM,
    ) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal { pid: pgid, source }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Command;

    use super::*;

    #[test]
    fn a_child_stops_on_terminate() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        terminate(child.id()).expect("terminate");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(15));
    }

    #[test]
    fn pid_zero_is_refused() {
        assert!(terminate(0).is_err());
        assert!(terminate_process_group(0).is_err());
        assert!(terminate_process_group(1).is_err());
    }

    #[test]
    fn a_group_stops_on_terminate_process_group() {
        use std::os::unix::process::CommandExt as _;
        let mut child = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        terminate_process_group(child.id()).expect("terminate group");
        assert_eq!(child.wait().expect("wait").signal(), Some(15));
        // Gone now: not an error.
        terminate_process_group(child.id()).expect("terminate again");
    }
}
