//! basaltctl against several nodes with the real binaries: per-node results and failures
//! (`-n a,b`), the confirmation that guards destructive verbs on several nodes, and `--batch`
//! rollouts that act on one batch at a time and stop at the first failing batch.
//!
//! One node answers under two names (`127.0.0.1` and `localhost` are both in apid's server
//! certificate, so apid serves `node: <either>` locally); a name that is not the node's stands
//! for a node that fails (apid refuses it, or cannot reach it once it forwards).

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use basalt_config::{Base64Pem, ClientConfig, Context};
use basalt_e2e::{Cert, Node, net, within_test_deadline};

/// Not this node's name: `.invalid` never resolves (RFC 2606).
const OTHER_NODE: &str = "other-node.invalid";

/// The exit code of a refused invocation (EX_USAGE).
const EXIT_USAGE: i32 = 64;

/// An admin client config pointing at the node's apid; returns its path.
fn admin_config(node: &Node) -> PathBuf {
    let path = node.dir().join("admin.yaml");
    let credentials = node.pki().credentials(Cert::Admin);
    let context = Context {
        endpoints: vec![node.apid_addr().to_string()],
        ca: Some(Base64Pem::from_pem(node.pki().ca_pem())),
        crt: Some(Base64Pem::from_pem(credentials.cert_pem.clone())),
        key: Some(Base64Pem::from_pem(credentials.key_pem.clone())),
        ..Context::default()
    };
    ClientConfig::with_context("e2e", context)
        .save(&path)
        .unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn explain(out: &Output, node: &Node) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        node.log_tail()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_node_is_listed_and_the_others_results_are_still_printed() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = admin_config(&node);
        let targets = format!("127.0.0.1,{OTHER_NODE}");

        // Table: the good node's row, the failure on stderr as `NODE: error`, exit 1.
        let out = node.basaltctl(&config, &["hostname", "-n", &targets]).await;
        assert_eq!(out.status.code(), Some(1), "{}", explain(&out, &node));
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("NODE"), "{stdout}");
        assert!(
            stdout.lines().any(|l| l.starts_with("127.0.0.1 ")),
            "{stdout}"
        );
        assert!(!stdout.contains(OTHER_NODE), "{stdout}");
        let stderr = text(&out.stderr);
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{OTHER_NODE}: "))),
            "{stderr}"
        );
        assert!(stderr.contains("1 of 2 nodes failed"), "{stderr}");

        // JSON: one object per node, the result or `error: {code, message}`; --parallel 1
        // gives the same answer one node at a time.
        for parallel in ["10", "1"] {
            let out = node
                .basaltctl(
                    &config,
                    &[
                        "hostname",
                        "-n",
                        &targets,
                        "-o",
                        "json",
                        "--parallel",
                        parallel,
                    ],
                )
                .await;
            assert_eq!(out.status.code(), Some(1), "{}", explain(&out, &node));
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let replies = json.as_array().unwrap();
            assert_eq!(replies.len(), 2, "{json}");
            assert_eq!(replies[0]["node"], "127.0.0.1");
            assert!(replies[0]["hostname"].is_string(), "{json}");
            assert!(replies[0].get("error").is_none(), "{json}");
            assert_eq!(replies[1]["node"], OTHER_NODE);
            assert!(replies[1]["error"]["code"].is_string(), "{json}");
            assert!(replies[1]["error"]["message"].is_string(), "{json}");
        }

        // read on several nodes: each node's file, every line prefixed by its node.
        let out = node
            .basaltctl(
                &config,
                &[
                    "read",
                    "/proc/sys/kernel/random/boot_id",
                    "-n",
                    "127.0.0.1,localhost",
                ],
            )
            .await;
        assert!(out.status.success(), "{}", explain(&out, &node));
        let id = node.boot_id().await;
        assert_eq!(
            text(&out.stdout),
            format!("127.0.0.1: {id}\nlocalhost: {id}\n")
        );
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_verbs_on_several_nodes_without_yes_and_without_a_terminal_are_refused() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = admin_config(&node);
        let before = node.boot_id().await;
        let apid_before = node.apid_pid();

        for args in [
            &["reboot", "-n", "127.0.0.1,localhost"][..],
            &["shutdown", "-n", "127.0.0.1,localhost"],
            &["reset", "-n", "127.0.0.1,localhost"],
            &["service", "apid", "restart", "-n", "127.0.0.1,localhost"],
            &["config-rollback", "1", "-n", "127.0.0.1,localhost"],
        ] {
            let out = node.basaltctl(&config, args).await;
            assert_eq!(
                out.status.code(),
                Some(EXIT_USAGE),
                "{args:?}: {}",
                explain(&out, &node)
            );
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains("--yes") && stderr.contains("nothing was done"),
                "{args:?}: {stderr}"
            );
        }
        assert_eq!(node.boot_id().await, before, "nothing was rebooted");
        assert_eq!(node.apid_pid(), apid_before, "apid was not restarted");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_reboot_reboots_one_batch_after_the_other() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = admin_config(&node);
        let before = node.boot_id().await;

        // The same node under two names: two batches, two reboots one after the other.
        let out = node
            .basaltctl(
                &config,
                &[
                    "reboot",
                    "-n",
                    "127.0.0.1,localhost",
                    "--batch",
                    "1",
                    "--yes",
                    "--timeout",
                    "20s",
                ],
            )
            .await;
        assert!(out.status.success(), "{}", explain(&out, &node));
        let stderr = text(&out.stderr);
        let first = stderr.find("batch 1/2: 127.0.0.1").expect(&stderr);
        let second = stderr.find("batch 2/2: localhost").expect(&stderr);
        assert!(first < second, "{stderr}");
        // Each tracker saw its own reboot change the boot id, the first before batch 2 began.
        assert_eq!(stderr.matches("boot id changed").count(), 2, "{stderr}");
        let first_done = stderr
            .find("node 127.0.0.1: boot id changed")
            .expect(&stderr);
        assert!(first_done < second, "{stderr}");
        assert_ne!(node.boot_id().await, before);
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_stops_the_rollout_and_reports_what_was_not_touched() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = admin_config(&node);

        // The first batch fails (no such service): the second is never acted on.
        let out = node.basaltctl(
            &config,
            &[
                "service",
                "no-such-service",
                "restart",
                "-n",
                &format!("127.0.0.1,{OTHER_NODE},localhost"),
                "--batch",
                "1",
                "--yes",
                "-o",
                "json",
            ],
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "{}", explain(&out, &node));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "rollout stopped: done: none; failed: 127.0.0.1; not touched: {OTHER_NODE}, localhost"
            )),
            "{stderr}"
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let replies = json.as_array().unwrap();
        assert_eq!(replies.len(), 3, "{json}");
        assert_eq!(replies[0]["node"], "127.0.0.1");
        assert!(replies[0]["error"]["code"].is_string(), "{json}");
        assert_eq!(replies[1]["error"]["code"], "Aborted", "{json}");
        assert_eq!(replies[2]["node"], "localhost");
        assert_eq!(replies[2]["error"]["code"], "Aborted", "{json}");

        // A batch that succeeds goes on to the next one: a start of a running service.
        let out = node.basaltctl(
            &config,
            &[
                "service",
                "apid",
                "start",
                "-n",
                "127.0.0.1,localhost",
                "--batch",
                "1",
            ],
        )
        .await;
        assert!(out.status.success(), "{}", explain(&out, &node));
        let stdout = text(&out.stdout);
        assert!(
            stdout.lines().any(|l| l.starts_with("127.0.0.1 "))
                && stdout.lines().any(|l| l.starts_with("localhost ")),
            "{stdout}"
        );
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_control_plane_the_cli_reaches_each_worker_and_rolls_a_reboot_over_them() {
    within_test_deadline(async {
        let cp = Node::start().await;
        let w1 = Node::builder().worker_of(&cp).start().await;
        let w2 = Node::builder().worker_of(&cp).start().await;
        let config = admin_config(&cp);
        let name = |node: &Node| node.apid_addr().to_string();
        let (cp_name, w1_name, w2_name) = (name(&cp), name(&w1), name(&w2));

        // One object per node, each answered by that node (routed by the control plane).
        let all = format!("{cp_name},{w1_name},{w2_name}");
        let out = cp
            .basaltctl(&config, &["version", "-n", &all, "-o", "json"])
            .await;
        assert!(out.status.success(), "{}", explain(&out, &cp));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let nodes: Vec<&str> = json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                assert!(n["tag"].is_string() && n.get("error").is_none(), "{json}");
                n["node"].as_str().unwrap()
            })
            .collect();
        assert_eq!(nodes, [&cp_name, &w1_name, &w2_name]);

        // The workers, one batch each; the control plane is left alone.
        let before = (cp.boot_id().await, w1.boot_id().await, w2.boot_id().await);
        let workers = format!("{w1_name},{w2_name}");
        let out = cp
            .basaltctl(
                &config,
                &[
                    "reboot",
                    "-n",
                    &workers,
                    "--batch",
                    "1",
                    "--yes",
                    "--timeout",
                    "20s",
                ],
            )
            .await;
        assert!(out.status.success(), "{}", explain(&out, &cp));
        let stderr = text(&out.stderr);
        let first_done = stderr
            .find(&format!("node {w1_name}: boot id changed"))
            .expect(&stderr);
        let second = stderr
            .find(&format!("batch 2/2: {w2_name}"))
            .expect(&stderr);
        assert!(first_done < second, "{stderr}");
        assert_eq!(
            cp.boot_id().await,
            before.0,
            "the control plane was not rebooted"
        );
        assert_ne!(w1.boot_id().await, before.1);
        assert_ne!(w2.boot_id().await, before.2);

        // `cert revoke -n` revokes on every node named; each lists it and refuses the reader.
        let reader = cp.pki().credentials(Cert::Reader);
        let reader_cert = reader.cert_path.display().to_string();
        let fingerprint = basalt_pki::Identity::from_pem(&reader.cert_pem)
            .unwrap()
            .fingerprint;
        let revoke = [
            "cert",
            "revoke",
            "--cert",
            &reader_cert,
            "--reason",
            "left",
            "-n",
            &all,
        ];
        let out = cp.basaltctl(&config, &revoke).await;
        assert!(out.status.success(), "{}", explain(&out, &cp));
        let out = cp
            .basaltctl(&config, &["cert", "revoked", "-n", &all, "-o", "json"])
            .await;
        assert!(out.status.success(), "{}", explain(&out, &cp));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let listed: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n["revoked"].as_array().is_some_and(|entries| {
                    entries
                        .iter()
                        .any(|e| e["fingerprint"] == fingerprint.as_str())
                })
            })
            .map(|n| n["node"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [&cp_name, &w1_name, &w2_name], "{json}");
        let reason = net::refused_within(
            w1.apid_addr(),
            w1.tls(Some(Cert::Reader)),
            Duration::from_secs(5),
        )
        .await
        .refusal("the worker, 5 s after the revocation, with the revoked reader");
        assert!(reason.contains("CertificateRevoked"), "{reason}");

        // A stopped worker: the other's result is printed, the stopped one listed, exit 1.
        w2.shutdown().await;
        let out = cp.basaltctl(&config, &["hostname", "-n", &workers]).await;
        assert_eq!(out.status.code(), Some(1), "{}", explain(&out, &cp));
        let stdout = text(&out.stdout);
        assert!(stdout.contains(&w1_name), "{stdout}");
        assert!(!stdout.contains(&w2_name), "{stdout}");
        let stderr = text(&out.stderr);
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{w2_name}: "))),
            "{stderr}"
        );
        w1.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_apply_config_applies_batch_after_batch_and_prints_one_object_per_node() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = admin_config(&node);
        let mut raw = node.active_config().await;
        raw.machine.hostname = Some("batched".to_owned());
        let file = node.dir().join("changed.yaml");
        std::fs::write(&file, raw.to_yaml().unwrap()).unwrap();

        let out = node
            .basaltctl(
                &config,
                &[
                    "apply-config",
                    "-f",
                    file.to_str().unwrap(),
                    "-n",
                    "127.0.0.1,localhost",
                    "--batch",
                    "1",
                    "--yes",
                    "-o",
                    "json",
                ],
            )
            .await;
        assert!(out.status.success(), "{}", explain(&out, &node));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("batch 1/2: 127.0.0.1") && stderr.contains("batch 2/2: localhost"),
            "{stderr}"
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let replies = json.as_array().unwrap();
        assert_eq!(replies.len(), 2, "{json}");
        for (reply, name) in replies.iter().zip(["127.0.0.1", "localhost"]) {
            assert_eq!(reply["node"], name);
            assert_eq!(reply["mode"], "AUTO(NO_REBOOT)", "{json}");
        }
        node.shutdown().await;
    })
    .await;
}
