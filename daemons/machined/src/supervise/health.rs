//! Health checks: run a command (exit status 0 = healthy) or open a TCP connection.

use std::process::Stdio;
use std::time::Duration;

use basalt_config::HealthCheck;
use tokio::process::Command;

use super::spec::ServiceSpec;

/// The longest a single check may take; a check never outlives its interval either.
pub(crate) const MAX_CHECK_TIME: Duration = Duration::from_secs(5);

/// Runs one check of `spec`'s health. `Ok(())` is healthy; the error is the message shown as
/// `last_message`.
pub(crate) async fn check(spec: &ServiceSpec, health: &HealthCheck) -> Result<(), String> {
    let limit = spec.health_interval.min(MAX_CHECK_TIME);
    let run = async {
        match health {
            HealthCheck::Exec(argv) => exec(spec, argv).await,
            HealthCheck::Tcp(addr) => tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map(drop)
                .map_err(|err| format!("connect to {addr}: {err}")),
        }
    };
    match tokio::time::timeout(limit, run).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "health check timed out after {}ms",
            limit.as_millis()
        )),
    }
}

async fn exec(spec: &ServiceSpec, argv: &[String]) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("health check has no command".to_owned());
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // A check that times out is dropped, and with it killed: all of it, since a shell
        // pipeline's other processes are its children (its own group holds them).
        .process_group(0)
        .kill_on_drop(true);
    spec.apply_env(&mut command);
    let mut child =
        super::children::spawn(&mut command).map_err(|err| format!("run {program}: {err}"))?;
    // Dropped before `child`: the group is killed while its leader is not yet reaped, so its
    // id cannot have been reused.
    let mut group = KillGroupOnDrop(child.id());
    let status = child
        .wait()
        .await
        .map_err(|err| format!("run {program}: {err}"))?;
    // Reaped: from here on the id may name another group.
    group.0 = None;
    if status.success() {
        Ok(())
    } else {
        Err(format!("health check {program} exited with {status}"))
    }
}

/// Kills a check's whole process group when the check is abandoned (timed out, or its service
/// stopped) before it ended.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0
            && let Err(err) = basalt_sys::kill_process_group(pgid)
        {
            tracing::debug!(
                pgid,
                error = &err as &dyn std::error::Error,
                "Cannot kill an abandoned health check"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backoff;

    fn with_check(health: HealthCheck) -> (ServiceSpec, HealthCheck) {
        let mut spec =
            ServiceSpec::apid("/bin/true".into(), "/dev/null".into(), Backoff::default());
        spec.health = Some(health.clone());
        spec.health_interval = Duration::from_secs(2);
        (spec, health)
    }

    #[tokio::test]
    async fn exec_checks_use_the_exit_status() {
        let (spec, ok) = with_check(HealthCheck::Exec(vec!["true".to_owned()]));
        assert_eq!(check(&spec, &ok).await, Ok(()));
        let (spec, bad) = with_check(HealthCheck::Exec(vec![
            "sh".into(),
            "-c".into(),
            "exit 4".into(),
        ]));
        let message = check(&spec, &bad).await.expect_err("unhealthy");
        assert!(message.contains("exit status: 4"), "{message}");
        let (spec, missing) = with_check(HealthCheck::Exec(vec!["/nonexistent/check".into()]));
        assert!(check(&spec, &missing).await.is_err());
    }

    /// A check that times out is killed with everything it started (a pipeline's `sleep`
    /// outlived it before 2026-12-08, one stray process per interval).
    #[tokio::test]
    async fn a_timed_out_check_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let (mut spec, check_cmd) =
            with_check(HealthCheck::Exec(vec!["sh".into(), "-c".into(), script]));
        spec.health_interval = Duration::from_millis(500);
        let message = check(&spec, &check_cmd).await.expect_err("timed out");
        assert!(message.contains("timed out"), "{message}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("the check wrote its child's pid")
            .trim()
            .parse()
            .expect("pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie until init reaps it.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the check's child {pid} still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn tcp_checks_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (spec, open) = with_check(HealthCheck::Tcp(addr));
        assert_eq!(check(&spec, &open).await, Ok(()));
        // A bound socket that does not listen holds the port and refuses connections.
        let closed = tokio::net::TcpSocket::new_v4().expect("socket");
        closed
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = closed.local_addr().expect("addr").to_string();
        let (spec, refused) = with_check(HealthCheck::Tcp(addr));
        let message = check(&spec, &refused).await.expect_err("refused");
        assert!(message.starts_with("connect to 127.0.0.1:"), "{message}");
        drop(listener);
    }
}
