//! The lifecycle through apid with the real binaries: `basaltctl reboot` follows a
//! container-mode reboot to the end although apid itself restarts under it, `basaltctl
//! shutdown` ends the node, `basaltctl events` streams, and `basaltctl config new` mints a
//! working client config through GenerateClientConfiguration.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use basalt_config::{Base64Pem, ClientConfig, Context};
use basalt_e2e::{Binary, Cert, Node, within_test_deadline};

/// Upper bound for one basaltctl invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(45);

/// A client config for `cert` pointing at the node's apid.
fn client_config(node: &Node, cert: Cert, path: &Path) {
    let credentials = node.pki().credentials(cert);
    let context = Context {
        endpoints: vec![node.apid_addr().to_string()],
        ca: Some(Base64Pem::from_pem(node.pki().ca_pem())),
        crt: Some(Base64Pem::from_pem(credentials.cert_pem.clone())),
        key: Some(Base64Pem::from_pem(credentials.key_pem.clone())),
        ..Context::default()
    };
    ClientConfig::with_context("e2e", context)
        .save(path)
        .unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(out: &Output, what: &str, node: &Node) {
    assert!(
        out.status.success(),
        "{what} failed ({})\nstdout:\n{}\nstderr:\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        node.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basaltctl_reboot_follows_the_node_through_an_apid_restart() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = node.dir().join("admin.yaml");
        client_config(&node, Cert::Admin, &config);
        let before = node.boot_id().await;
        let apid_before = node.apid_pid().expect("apid runs");

        let out = node
            .basaltctl(&config, &["reboot", "--timeout", "40s"])
            .await;
        assert_success(&out, "basaltctl reboot", &node);
        let stderr = text(&out.stderr);
        for line in [
            "reboot requested (actor id ",
            "stopping services…",
            "waiting for the node to come back…",
            "boot id changed",
            "running",
        ] {
            assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
        }

        let after = node.boot_id().await;
        assert_ne!(before, after);
        assert_ne!(node.apid_pid(), Some(apid_before), "apid was restarted");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reboot_without_wait_returns_the_actor_id_and_events_show_it() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = node.dir().join("operator.yaml");
        client_config(&node, Cert::Operator, &config);

        let out = node.basaltctl(&config, &["reboot", "--wait=false"]).await;
        assert_success(&out, "basaltctl reboot --wait=false", &node);
        let stdout = text(&out.stdout);
        let actor = stdout
            .lines()
            .nth(1)
            .and_then(|row| row.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no actor id in {stdout:?}"))
            .to_owned();
        assert_eq!(actor.len(), 36, "{stdout}");

        // `events` follows forever: read its JSON lines until the reboot's RUNNING shows up.
        // Started while apid may be down for the reboot, it then fails to connect: try again.
        let bin = Binary::Basaltctl.path();
        let dir = node.dir().to_owned();
        let config_path = config.clone();
        let wanted = actor.clone();
        let seen: Vec<serde_json::Value> = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            loop {
                let mut child = Command::new(&bin)
                    .current_dir(&dir)
                    .env("HOME", &dir)
                    .arg("--config")
                    .arg(&config_path)
                    .args([
                        "events",
                        "--tail",
                        "-1",
                        "--actor-id",
                        &wanted,
                        "-o",
                        "json",
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let stdout = child.stdout.take().unwrap();
                let mut seen = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
                    let done = event["event"]["stage"] == "RUNNING";
                    seen.push(event);
                    if done {
                        break;
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
                if !seen.is_empty() || Instant::now() >= deadline {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await
        .unwrap();
        assert!(
            seen.iter().all(|e| e["actor_id"] == actor.as_str()),
            "{seen:?}"
        );
        assert_eq!(seen[0]["event"]["sequence"], "reboot");
        assert_eq!(seen[0]["event"]["action"], "START");
        assert!(
            seen.iter()
                .any(|e| e["event"]["task"] == "stopAllServices" && e["event"]["action"] == "STOP"),
            "{seen:?}"
        );
        assert_eq!(seen.last().unwrap()["event"]["ready"], true);
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basaltctl_shutdown_stops_machined_and_apid() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = node.dir().join("admin.yaml");
        client_config(&node, Cert::Admin, &config);
        let out = node
            .basaltctl(&config, &["shutdown", "--timeout", "30s"])
            .await;
        assert_success(&out, "basaltctl shutdown", &node);
        let stderr = text(&out.stderr);
        assert!(stderr.contains("stopping services…"), "{stderr}");
        // machined exits 0 by itself; the harness's SIGTERM then meets a finished process.
        let deadline = Instant::now() + Duration::from_secs(20);
        while node.apid_pid().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(node.apid_pid().is_none(), "apid outlived the shutdown");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basaltctl_reset_with_reboot_wipes_the_state_and_the_node_comes_back() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = node.dir().join("admin.yaml");
        client_config(&node, Cert::Admin, &config);
        let junk = node.state_dir().join("junk/left-by-a-service");
        std::fs::create_dir_all(junk.parent().unwrap()).unwrap();
        std::fs::write(&junk, "data").unwrap();
        let before = node.boot_id().await;

        let out = node
            .basaltctl(&config, &["reset", "--reboot", "--timeout", "40s"])
            .await;
        assert_success(&out, "basaltctl reset --reboot", &node);
        let stderr = text(&out.stderr);
        for line in ["wiping the state directory…", "boot id changed", "running"] {
            assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
        }
        assert!(!junk.exists(), "the state directory was not wiped");
        assert!(
            node.state_dir().join("apid").is_dir(),
            "apid's files are kept"
        );
        assert_ne!(node.boot_id().await, before);
        let out = node.basaltctl(&config, &["hostname"]).await;
        assert_success(&out, "hostname after the reset", &node);
        node.shutdown().await;
    })
    .await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basaltctl_config_new_mints_a_working_reader_config() {
    within_test_deadline(async {
        let node = Node::start().await;
        let admin = node.dir().join("admin.yaml");
        client_config(&node, Cert::Admin, &admin);
        let reader: PathBuf = node.dir().join("out/reader.yaml");
        let reader_arg = reader.to_str().unwrap();

        let out = node
            .basaltctl(
                &admin,
                &[
                    "config",
                    "new",
                    reader_arg,
                    "--roles",
                    "os:reader",
                    "--cert-ttl",
                    "1h",
                ],
            )
            .await;
        assert_success(&out, "basaltctl config new", &node);
        assert_eq!(mode(&reader), 0o600);
        let config = ClientConfig::load(&reader).unwrap();
        let (name, context) = config.current().unwrap();
        assert_eq!(name, "reader@e2e");
        assert_eq!(context.endpoints, [node.apid_addr().to_string()]);

        // It works, with exactly the reader's rights.
        let out = node.basaltctl(&reader, &["hostname"]).await;
        assert_success(&out, "hostname as the new reader", &node);
        let out = node.basaltctl(&reader, &["reboot", "--wait=false"]).await;
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("PermissionDenied"),
            "{}",
            text(&out.stderr)
        );

        // No silent overwrite; unknown roles are refused before anything is sent.
        let out = node.basaltctl(&admin, &["config", "new", reader_arg]).await;
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("--force"),
            "{}",
            text(&out.stderr)
        );
        let out = node
            .basaltctl(&admin, &["config", "new", reader_arg, "--force"])
            .await;
        assert_success(&out, "config new --force", &node);
        assert_eq!(ClientConfig::load(&reader).unwrap().context, "admin@e2e");
        let out = node
            .basaltctl(&admin, &["config", "new", "x.yaml", "--roles", "os:root"])
            .await;
        assert!(
            text(&out.stderr).contains("unknown roles: os:root"),
            "{}",
            text(&out.stderr)
        );
        node.shutdown().await;
    })
    .await;
}
