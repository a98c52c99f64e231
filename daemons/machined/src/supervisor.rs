//! Runs a child process (apid) and keeps it running: restart with exponential backoff, every
//! exit logged with its status, the child stopped when machined stops.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::config::Backoff;

/// How long a child gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// One supervised child process.
#[derive(Clone, Debug)]
pub(crate) struct Supervisor {
    /// A short name for logs (`apid`).
    pub(crate) name: &'static str,
    /// The executable.
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<OsString>,
    /// Restart pacing.
    pub(crate) backoff: Backoff,
}

impl Supervisor {
    /// Runs the child until `stop` becomes true, restarting it whenever it exits.
    ///
    /// The delay before a restart starts at `backoff.initial` and doubles after every exit up to
    /// `backoff.max`; a child that stayed up at least `backoff.reset_after` restarts after the
    /// initial delay again. A child that cannot even be spawned (missing binary) is retried on
    /// the same schedule.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut delay = self.backoff.initial;
        loop {
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            match self.spawn() {
                Ok(mut child) => {
                    tracing::info!(child = self.name, pid = child.id(), "Started child");
                    tokio::select! {
                        status = child.wait() => {
                            let uptime_s = started.elapsed().as_secs_f64();
                            match status {
                                Ok(status) => tracing::warn!(
                                    child = self.name, %status, uptime_s, "Child exited"
                                ),
                                Err(err) => tracing::error!(
                                    child = self.name,
                                    error = &err as &dyn std::error::Error,
                                    uptime_s,
                                    "Cannot wait for child"
                                ),
                            }
                        }
                        () = stopped(&mut stop) => {
                            self.stop_child(&mut child).await;
                            return;
                        }
                    }
                }
                Err(err) => tracing::error!(
                    child = self.name,
                    program = %self.program.display(),
                    error = &err as &dyn std::error::Error,
                    "Cannot start child"
                ),
            }
            if started.elapsed() >= self.backoff.reset_after {
                delay = self.backoff.initial;
            }
            tracing::info!(
                child = self.name,
                delay_ms = delay.as_millis() as u64,
                "Restarting child after a delay"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopped(&mut stop) => return,
            }
            delay = (delay * 2).min(self.backoff.max);
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            // If machined's task is dropped without a clean stop, the child dies with it.
            .kill_on_drop(true)
            .spawn()
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`].
    async fn stop_child(&self, child: &mut Child) {
        if let Some(pid) = child.id()
            && let Err(err) = basalt_sys::terminate(pid)
        {
            tracing::warn!(
                child = self.name,
                error = &err as &dyn std::error::Error,
                "Cannot send SIGTERM"
            );
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(Ok(status)) => tracing::info!(child = self.name, %status, "Child stopped"),
            Ok(Err(err)) => tracing::warn!(
                child = self.name,
                error = &err as &dyn std::error::Error,
                "Cannot wait for child"
            ),
            Err(_) => {
                tracing::warn!(child = self.name, "Child ignored SIGTERM; killing it");
                if let Err(err) = child.kill().await {
                    tracing::warn!(
                        child = self.name,
                        error = &err as &dyn std::error::Error,
                        "Cannot kill child"
                    );
                }
            }
        }
    }
}

/// Completes when `stop` turns true or its sender is gone (machined is going away either way).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The returned guard is dropped here, before the caller awaits anything else.
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn fast_backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            reset_after: Duration::from_secs(10),
        }
    }

    /// A script that appends a line to `log` each time it starts, then runs `body`.
    fn script(dir: &std::path::Path, body: &str) -> (PathBuf, PathBuf) {
        let log = dir.join("starts.log");
        let path = dir.join("child.sh");
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho start >> {}\n{body}\n", log.display()),
        )
        .expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (path, log)
    }

    fn starts(log: &std::path::Path) -> usize {
        std::fs::read_to_string(log).map_or(0, |text| text.lines().count())
    }

    #[tokio::test]
    async fn a_crashing_child_is_restarted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (program, log) = script(tmp.path(), "exit 3");
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            Supervisor {
                name: "test",
                program,
                args: Vec::new(),
                backoff: fast_backoff(),
            }
            .run(stop_rx),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while starts(&log) < 3 {
            assert!(Instant::now() < deadline, "child was not restarted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(true).expect("send stop");
        task.await.expect("supervisor ends");
    }

    #[tokio::test]
    async fn stop_terminates_a_running_child() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // `exec` so the SIGTERM reaches sleep itself.
        let (program, log) = script(tmp.path(), "exec sleep 30");
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            Supervisor {
                name: "test",
                program,
                args: Vec::new(),
                backoff: fast_backoff(),
            }
            .run(stop_rx),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while starts(&log) < 1 {
            assert!(Instant::now() < deadline, "child did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopping = Instant::now();
        stop_tx.send(true).expect("send stop");
        task.await.expect("supervisor ends");
        assert!(stopping.elapsed() < STOP_GRACE, "SIGTERM was not enough");
        assert_eq!(starts(&log), 1);
    }

    #[tokio::test]
    async fn a_missing_binary_is_retried_until_stopped() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            Supervisor {
                name: "test",
                program: PathBuf::from("/nonexistent/apid"),
                args: Vec::new(),
                backoff: fast_backoff(),
            }
            .run(stop_rx),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send(true).expect("send stop");
        task.await.expect("supervisor ends");
    }
}
