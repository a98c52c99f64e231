//! `machined --node-cert-ttl`: a lifetime too short to renew, or not a duration, is a usage
//! error (exit 64) that says what is wrong, before anything is started.

use std::process::Command;

const MACHINED: &str = env!("CARGO_BIN_EXE_machined");

fn run_with_ttl(ttl: &str) -> (Option<i32>, String) {
    let dir = tempfile::Builder::new()
        .prefix("bs")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let output = Command::new(MACHINED)
        .arg("--config")
        .arg(dir.path().join("machine.yaml"))
        .arg("--state")
        .arg(dir.path())
        .arg("--node-cert-ttl")
        .arg(ttl)
        .output()
        .expect("run machined");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_lifetime_below_the_minimum_exits_64() {
    let (code, stderr) = run_with_ttl("1s");
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(stderr.contains("at least 4s"), "stderr: {stderr}");
}

#[test]
fn a_lifetime_that_is_not_a_duration_exits_64() {
    let (code, stderr) = run_with_ttl("soon");
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(stderr.contains("--node-cert-ttl"), "stderr: {stderr}");
}
