//! `basaltctl rotate-ca` against real nodes: the dry run and every refusal change nothing; a
//! real rotation keeps an old-CA client working until the old CA is dropped, then refuses it at
//! the handshake, while the rewritten client config works and the nodes' certificates verify
//! against the new CA with openssl.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use basalt_api::basalt::v1::HistoryRequest;
use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_config::ClientConfig;
use basalt_e2e::cli::{COMMAND_TIMEOUT, text};
use basalt_e2e::net::{self, probe_tls};
use basalt_e2e::{Binary, Cert, Node, Outcome, within_test_deadline};
use basalt_pki::{Identity, KeyAlgorithm};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// How long the old-CA client may still be let in after rotate-ca returned (apid picks up
/// the last config change asynchronously).
const REFUSAL_PATIENCE: Duration = Duration::from_secs(15);

const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_refusals_change_nothing() {
    within_test_deadline(async {
        let node = Node::start().await;
        let admin = client_config(&node, "admin.config", "os:admin", &[node.apid_addr()]).await;
        let before = std::fs::read(&admin).unwrap();
        let versions = history_len(&node).await;

        // The dry run prints the plan with both fingerprints and changes nothing.
        let out = node.basaltctl(&admin, &["rotate-ca", "--dry-run"]).await;
        assert!(out.status.success(), "rotate-ca --dry-run: {}", text(&out));
        let plan = String::from_utf8_lossy(&out.stdout);
        let old = Identity::from_pem(node.pki().ca_pem()).unwrap();
        assert!(plan.contains("dry run: nothing is changed"), "{plan}");
        assert!(
            plan.contains(&format!("old CA:  sha256:{}", old.fingerprint)),
            "{plan}"
        );
        assert!(plan.contains("new CA:  sha256:"), "{plan}");
        assert!(
            plan.contains(&format!("{}  controlplane", node.apid_addr())),
            "{plan}"
        );
        assert_eq!(
            std::fs::read(&admin).unwrap(),
            before,
            "client config changed"
        );
        assert_eq!(history_len(&node).await, versions, "a config was applied");

        // A reader is refused before anything is sent.
        let reader = client_config(&node, "reader.config", "os:reader", &[node.apid_addr()]).await;
        let out = node.basaltctl(&reader, &["rotate-ca"]).await;
        assert!(
            !out.status.success(),
            "a reader rotated the CA: {}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("needs an os:admin"), "{stderr}");
        assert!(stderr.contains("nothing was changed"), "{stderr}");

        // One unreachable node: refused before the reachable one is touched.
        let closed = closed_port();
        let both = format!("{},{closed}", node.apid_addr());
        let out = node.basaltctl(&admin, &["rotate-ca", "-e", &both]).await;
        assert!(
            !out.status.success(),
            "rotated with a node down: {}",
            text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot reach every node"), "{stderr}");
        assert!(stderr.contains(&closed.to_string()), "{stderr}");
        assert!(stderr.contains("nothing was changed"), "{stderr}");

        assert_eq!(
            std::fs::read(&admin).unwrap(),
            before,
            "client config changed"
        );
        assert_eq!(history_len(&node).await, versions, "a config was applied");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_clients_until_the_old_ca_is_dropped() {
    let new_ca = within_test_deadline(rotate_a_control_plane_and_a_worker(&[])).await;
    assert_eq!(
        KeyAlgorithm::of_certificate_pem(&new_ca).unwrap(),
        KeyAlgorithm::Ed25519,
        "the current CA's key type by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_can_change_the_key_type() {
    let new_ca = within_test_deadline(rotate_a_control_plane_and_a_worker(&[
        "--algorithm",
        "p256",
    ]))
    .await;
    assert_eq!(
        KeyAlgorithm::of_certificate_pem(&new_ca).unwrap(),
        KeyAlgorithm::EcdsaP256
    );
}

/// Rotates the CA of a control plane and its worker with `rotate-ca EXTRA_ARGS`, checking the
/// old-CA client before, during and after; returns the new CA (PEM).
async fn rotate_a_control_plane_and_a_worker(extra_args: &[&str]) -> String {
    let control_plane = Node::start().await;
    let worker = Node::builder().worker_of(&control_plane).start().await;
    let nodes = [control_plane.apid_addr(), worker.apid_addr()];
    let config = client_config(&control_plane, "admin.config", "os:admin", &nodes).await;
    let old_ca = control_plane.pki().ca_pem().to_owned();
    let old_admin = control_plane.pki().credentials(Cert::Admin).clone();

    // Before: the old-CA client is let in everywhere.
    for addr in nodes {
        let tls = net::tls_config(&old_ca, Some((&old_admin.cert_pem, &old_admin.key_pem)));
        assert_eq!(probe_tls(addr, tls).await, Outcome::Accepted, "{addr}");
    }

    // Run the rotation while an old-CA client keeps connecting. It trusts the CAs of the
    // client config rotate-ca maintains (old, then old + new), since after the switch the
    // nodes serve certificates from the new CA.
    let stage = Arc::new(AtomicU8::new(0));
    let mut child = tokio::process::Command::new(Binary::Basaltctl.path())
        .current_dir(control_plane.dir())
        .env_remove("BASALTCONFIG")
        .env("HOME", control_plane.dir())
        .kill_on_drop(true)
        .arg("--config")
        .arg(&config)
        .args(["rotate-ca", "--wait", "30s"])
        .args(extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let progress = {
        let stage = Arc::clone(&stage);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                // Progress lines start with `[N/5]`.
                let step = line
                    .strip_prefix('[')
                    .and_then(|rest| rest.chars().next())
                    .and_then(|c| c.to_digit(10));
                if let Some(step) = step {
                    stage.store(u8::try_from(step).unwrap(), Ordering::SeqCst);
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        })
    };
    let mut attempts: Vec<(u8, SocketAddr, Outcome)> = Vec::new();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "rotate-ca did not finish");
        let at = stage.load(Ordering::SeqCst);
        let trusted = context_ca(&config).unwrap_or_else(|| old_ca.clone());
        for addr in nodes {
            let tls = net::tls_config(&trusted, Some((&old_admin.cert_pem, &old_admin.key_pem)));
            attempts.push((at, addr, probe_tls(addr, tls).await));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        use tokio::io::AsyncReadExt as _;
        out.read_to_string(&mut stdout).await.unwrap();
    }
    let progress = progress.await.unwrap();
    assert!(
        status.success(),
        "rotate-ca failed ({status}):\n{progress}{}{}",
        control_plane.log_tail(),
        worker.log_tail()
    );
    assert!(stdout.contains("CA rotated"), "{stdout}");

    // During the window (until step 5 began) the old-CA client was never turned away.
    let window: Vec<_> = attempts.iter().filter(|(at, _, _)| *at < 5).collect();
    // Including after the switch, when the nodes already serve new-CA certificates.
    assert!(
        window.iter().any(|(at, _, _)| *at >= 3),
        "no attempt after issuing switched ({} in all):\n{progress}",
        attempts.len()
    );
    for (at, addr, outcome) in &window {
        assert_eq!(
            *outcome,
            Outcome::Accepted,
            "old-CA client refused by {addr} at step {at}:\n{progress}"
        );
    }

    // The client config now trusts only the new CA, with a certificate from it.
    let rotated = ClientConfig::load(&config).unwrap();
    let (_, context) = rotated.current().unwrap();
    let new_ca = context_ca(&config).unwrap();
    assert_eq!(
        basalt_pki::certificates_from_pem(new_ca.as_bytes())
            .unwrap()
            .len(),
        1
    );
    let new_ca_id = Identity::from_pem(&new_ca).unwrap();
    assert_ne!(
        new_ca_id.fingerprint,
        Identity::from_pem(&old_ca).unwrap().fingerprint
    );
    let crt = String::from_utf8(context.crt.as_ref().unwrap().as_bytes().to_vec()).unwrap();
    let key = String::from_utf8(context.key.as_ref().unwrap().as_bytes().to_vec()).unwrap();
    let new_client = Identity::from_pem(&crt).unwrap();
    assert_eq!(new_client.roles.strings(), ["os:admin"]);

    for (addr, node) in nodes.iter().zip([&control_plane, &worker]) {
        // After: the old-CA client is refused at the handshake (once apid reloaded).
        let old_client =
            || net::tls_config(&new_ca, Some((&old_admin.cert_pem, &old_admin.key_pem)));
        let patience = Instant::now() + REFUSAL_PATIENCE;
        let refusal = loop {
            match probe_tls(*addr, old_client()).await {
                Outcome::Refused(reason) => break reason,
                Outcome::Accepted => {
                    assert!(
                        Instant::now() < patience,
                        "{addr} still lets the old-CA client in{}",
                        node.log_tail()
                    );
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        };
        // A TLS alert, not a gRPC answer. Old and new CA share the subject `O=talos`, so
        // the server finds the new CA as issuer and the signature check fails:
        // `decrypt_error` rather than `unknown_ca`.
        assert!(refusal.contains("alert"), "{addr}: {refusal}");
        // The new client is let in, verifying the server against the new CA alone.
        let tls = net::tls_config(&new_ca, Some((&crt, &key)));
        assert_eq!(probe_tls(*addr, tls).await, Outcome::Accepted, "{addr}");

        // openssl agrees: the node's certificate chains to the new CA, not to the old one.
        let served = node.state_dir().join("apid").join("server.crt");
        let new_ca_file = node.dir().join("new-ca.pem");
        std::fs::write(&new_ca_file, &new_ca).unwrap();
        if let Some(verdict) = openssl_verify(&new_ca_file, &served) {
            assert!(verdict.0, "openssl verify with the new CA: {}", verdict.1);
            let old_verdict = openssl_verify(control_plane.pki().ca_path(), &served).unwrap();
            assert!(
                !old_verdict.0,
                "still verifies with the old CA: {}",
                old_verdict.1
            );
        }
    }

    // And the CLI works with the rewritten config: a real call on every node.
    let out = control_plane
        .basaltctl(&config, &["certs", "-o", "json"])
        .await;
    assert!(
        out.status.success(),
        "certs after the rotation: {}",
        text(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for reply in report["nodes"].as_array().unwrap() {
        let certs = reply["certificates"].as_array().unwrap();
        let cas: Vec<&serde_json::Value> = certs
            .iter()
            .filter(|c| c["role"].as_str().unwrap().starts_with("ca-"))
            .collect();
        assert_eq!(cas.len(), 1, "{reply:#}");
        assert_eq!(cas[0]["fingerprint"], new_ca_id.fingerprint.as_str());
        let server = certs.iter().find(|c| c["role"] == "apid-server").unwrap();
        assert_eq!(
            server["issuer_fingerprint"],
            new_ca_id.fingerprint.as_str(),
            "{reply:#}"
        );
    }
    worker.shutdown().await;
    control_plane.shutdown().await;
    new_ca
}

/// `openssl verify -CAfile ca cert`: (accepted, output); `None` without openssl.
fn openssl_verify(ca: &Path, cert: &Path) -> Option<(bool, String)> {
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .ok()?;
    Some((out.status.success(), text(&out)))
}

/// The current context's CA bundle, once the file exists and parses.
fn context_ca(config: &Path) -> Option<String> {
    let config = ClientConfig::load(config).ok()?;
    let (_, context) = config.current().ok()?;
    String::from_utf8(context.ca.as_ref()?.as_bytes().to_vec()).ok()
}

/// The number of machine-config versions the node keeps.
async fn history_len(node: &Node) -> usize {
    ConfigServiceClient::new(node.channel(Cert::Admin).await)
        .history(HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .messages
        .remove(0)
        .entries
        .len()
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A client config with `roles` and `endpoints`, valid for a year.
async fn client_config(node: &Node, name: &str, roles: &str, endpoints: &[SocketAddr]) -> PathBuf {
    node.gen_client_config(name, roles, "8760h", endpoints)
        .await
}
