//! Smoke tests of the `trustd` binary: `--check-config`, exit codes, and a real run that signs
//! a CSR and stops cleanly on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use basalt_api::securityapi::security_service_client::SecurityServiceClient;
use basalt_pki::KeyAlgorithm;
use support::{Pki, TOKEN, certificate, worker_csr};

const TRUSTD: &str = env!("CARGO_BIN_EXE_trustd");

/// Writes the credentials and a config into `dir`; returns the config path.
fn write_config(dir: &Path, pki: &Pki) -> PathBuf {
    std::fs::write(dir.join("server.crt"), &pki.server_cert).expect("write");
    std::fs::write(dir.join("server.key"), &pki.server_key).expect("write");
    std::fs::write(dir.join("ca.crt"), pki.ca_pem()).expect("write");
    std::fs::write(dir.join("ca.key"), pki.ca.key_pem()).expect("write");
    let config = dir.join("trustd.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\n\
             tls: {{cert: {d}/server.crt, key: {d}/server.key}}\n\
             ca: {{cert: {d}/ca.crt, key: {d}/ca.key}}\n\
             tokens: [{{token: {TOKEN}}}]\n\
             journal: {d}/issued.jsonl\n",
            d = dir.display()
        ),
    )
    .expect("write config");
    config
}

fn check_config(config: &Path) -> std::process::Output {
    Command::new(TRUSTD)
        .arg("--config")
        .arg(config)
        .arg("--check-config")
        .output()
        .expect("run trustd")
}

#[test]
fn check_config_accepts_a_valid_config_and_creates_nothing() {
    let dir = support::short_tempdir();
    let config = write_config(dir.path(), &Pki::new());
    let out = check_config(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("issued.jsonl").exists());
}

#[test]
fn check_config_with_problems_exits_64_and_lists_them() {
    let dir = support::short_tempdir();
    let config = dir.path().join("trustd.yaml");
    std::fs::write(
        &config,
        "listen: nowhere\ntls: {cert: relative.crt}\ntokens: [{token: secret-typo}]\n",
    )
    .expect("write");
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen",
        "tls.cert",
        "tls.key",
        "ca",
        "tokens[0].token",
        "journal",
    ] {
        assert!(stderr.contains(&format!("  - {key}: ")), "{key}: {stderr}");
    }
    assert!(!stderr.contains("secret-typo"), "{stderr}");
}

#[test]
fn check_config_with_unusable_files_exits_64() {
    let dir = support::short_tempdir();
    let pki = Pki::new();
    let config = write_config(dir.path(), &pki);
    // A CA key that does not belong to the CA certificate.
    let other = Pki::new();
    std::fs::write(dir.path().join("ca.key"), other.ca.key_pem()).expect("write");
    let out = check_config(&config);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("load the issuing CA"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn missing_config_and_bad_flags_exit_64() {
    let out = Command::new(TRUSTD)
        .args(["--config", "/nonexistent/trustd.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(TRUSTD).arg("--bogus").output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(TRUSTD)
        .args(["--config", "/nonexistent/trustd.yaml"])
        .env("BASALT_LOG", "info,=[")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("trustd: BASALT_LOG=\"info,=[\" is not a valid log filter"),
        "{stderr}"
    );
    let out = Command::new(TRUSTD).arg("--version").output().expect("run");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn binary_signs_a_csr_and_stops_cleanly_on_sigterm() {
    support::within_deadline(async {
        let dir = support::short_tempdir();
        let pki = Pki::new();
        let config = write_config(dir.path(), &pki);
        let mut child = Command::new(TRUSTD)
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("BASALT_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trustd");
        let stderr = child.stderr.take().expect("stderr");
        // The "Listening" line carries the bound address; read it on a blocking thread.
        let (addr, lines) = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref() {
                let line = line.expect("read trustd stderr");
                assert!(!line.contains(TOKEN), "token in log: {line}");
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["fields"]["message"] == "Listening" {
                    let addr = event["fields"]["addr"]
                        .as_str()
                        .expect("addr field")
                        .parse::<SocketAddr>()
                        .expect("socket address");
                    return (addr, lines);
                }
            }
            panic!("trustd exited without listening");
        })
        .await
        .expect("log reader");

        let mut client = SecurityServiceClient::new(support::channel(
            addr,
            pki.ca_pem(),
            IpAddr::from([127, 0, 0, 1]),
        ));
        let csr = worker_csr("worker-1", &["worker-1"], KeyAlgorithm::Ed25519);
        certificate(&mut client, csr, Some(TOKEN))
            .await
            .expect("certificate from the binary");
        drop(client);

        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let rest = tokio::task::spawn_blocking(move || {
            lines
                .map(|line| line.expect("read"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .await
        .expect("log reader");
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("wait")
            .expect("exit status");
        assert!(exit.success(), "{exit:?}\n{rest}");
        assert!(rest.contains("Certificate issued"), "{rest}");
        assert!(rest.contains("Stopped"), "{rest}");
        assert!(!rest.contains(TOKEN), "{rest}");
        let journal = support::read_journal(&dir.path().join("issued.jsonl"));
        assert_eq!(journal.len(), 1);
    })
    .await;
}
