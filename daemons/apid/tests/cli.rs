//! Smoke tests of the `apid` binary: flags, `--check-config`, exit codes, and a real run that
//! serves a call and stops cleanly on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use support::{Backend, Pki, machine_client, version};

const APID: &str = env!("CARGO_BIN_EXE_apid");

/// Writes the credentials and a config into `dir`; returns the config path.
fn write_config(dir: &Path, pki: &Pki, listen: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("server.crt"), &pki.server.cert).expect("write cert");
    std::fs::write(dir.join("server.key"), &pki.server.key).expect("write key");
    std::fs::write(dir.join("ca.pem"), pki.ca_pem()).expect("write ca");
    let config = dir.join("apid.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {listen}\n\
             tls: {{cert: {d}/server.crt, key: {d}/server.key, ca: {d}/ca.pem}}\n\
             machinedSocket: {d}/machined.sock\n\
             audit: {{path: {d}/audit.log}}\n",
            d = dir.display()
        ),
    )
    .expect("write config");
    config
}

/// Reads log lines (on a blocking thread) until one contains `needle`; returns the rest.
async fn wait_for_line<R: BufRead + Send + 'static>(
    mut lines: std::io::Lines<R>,
    needle: &'static str,
) -> std::io::Lines<R> {
    tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            if line.expect("read apid stderr").contains(needle) {
                return lines;
            }
        }
        panic!("apid's log ended without {needle:?}");
    })
    .await
    .expect("log reader")
}

fn signal(child: &std::process::Child, which: &str) {
    let status = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which}");
}

#[test]
fn check_config_accepts_a_valid_config() {
    let dir = support::short_tempdir();
    let pki = Pki::new();
    let config = write_config(dir.path(), &pki, "127.0.0.1:0");
    let out = Command::new(APID)
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_with_problems_exits_64_and_lists_them() {
    let dir = support::short_tempdir();
    let config = dir.path().join("apid.yaml");
    std::fs::write(&config, "listen: nowhere\ntls: {cert: rel.crt}\n").unwrap();
    let out = Command::new(APID)
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen:",
        "tls.cert:",
        "tls.key:",
        "tls.ca:",
        "machinedSocket:",
    ] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn check_config_opens_the_tls_files() {
    let dir = support::short_tempdir();
    let pki = Pki::new();
    let config = write_config(dir.path(), &pki, "127.0.0.1:0");
    std::fs::write(dir.path().join("server.key"), "garbage").unwrap();
    let out = Command::new(APID)
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("load TLS credentials"), "{stderr}");
}

#[test]
fn bad_flags_and_missing_files_exit_64() {
    let out = Command::new(APID).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(APID)
        .args(["--config", "/nonexistent/apid.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no apid config at"));
    let out = Command::new(APID).arg("--help").output().unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn the_binary_serves_reloads_on_sighup_and_stops_cleanly_on_sigterm() {
    let dir = support::short_tempdir();
    let pki = Pki::new();
    // Learn a free port, then let apid bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(dir.path(), &pki, &format!("127.0.0.1:{port}"));
    let backend = Backend::start(&dir.path().join("machined.sock")).await;

    let mut child = Command::new(APID)
        .arg("--config")
        .arg(&config)
        .arg("--log-format")
        .arg("json")
        .env("BASALT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Readiness: apid logs "Listening" after binding.
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let lines = wait_for_line(lines, "Listening").await;

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = machine_client(support::channel(
        addr,
        pki.ca_pem(),
        Some(&pki.client(&["os:admin"])),
    ));
    version(&mut client)
        .await
        .expect("version through the binary");

    // SIGHUP reloads the credentials and apid keeps serving.
    signal(&child, "-HUP");
    let _lines = wait_for_line(lines, "reload requested").await;
    version(&mut client).await.expect("version after SIGHUP");

    signal(&child, "-TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    backend.stop().await;

    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert_eq!(audit.lines().count(), 2, "{audit}");
}
