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
    }
}
