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
        // A check that times out is dropped, and with it killed.
        .kill_on_drop(true);
    spec.apply_env(&mut command);
    let mut child =
        super::children::spawn(&mut command).map_err(|err| format!("run {program}: {err}"))?;
    let status = child
        .wait()
        .await
        .map_err(|err| format!("run {program}: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("health check {program} exited with {status}"))
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
