//! A foreign client: Python grpcio, with stubs generated from our `proto/` by grpcio-tools,
//! calls Version through apid with a client certificate made by the real `basaltctl`.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (`.ci/run` and `make deps` install them with
//! `python3 -m pip install grpcio grpcio-tools`). Without python3 the test is skipped loudly;
//! with python3 but without the packages it fails and says what to install.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use basalt_e2e::{Binary, Cert, Node, within_test_deadline};
use basalt_pki::KeyAlgorithm;

/// How long one helper process (protoc, basaltctl, the client) may run.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_gets_version_through_apid() {
    within_test_deadline(async {
        if !python_present().await {
            eprintln!(
                "\n========================================================================\n\
                 SKIPPED python_grpcio_client_gets_version_through_apid: python3 not found.\n\
                 Install python3 and `python3 -m pip install grpcio grpcio-tools`.\n\
                 ========================================================================\n"
            );
            return;
        }
        let modules = run(
            "python3",
            &["-c", "import grpc, grpc_tools.protoc"],
            "check for grpcio",
        )
        .await;
        assert!(
            modules.status.success(),
            "python3 lacks grpcio or grpcio-tools; run `python3 -m pip install grpcio \
             grpcio-tools` (what .ci/run does):\n{}",
            text(&modules)
        );

        // grpcio's BoringSSL offers no Ed25519 signature scheme (grpc/grpc#24252): against an
        // Ed25519 apid the handshake fails with NoSignatureSchemesInCommon. ECDSA P-256 is
        // basalt's documented alternative (`basaltctl gen secrets --ca-algorithm ecdsa-p256`).
        let node = Node::builder()
            .ca_algorithm(KeyAlgorithm::EcdsaP256)
            .start()
            .await;
        let work = node.dir().join("python");
        let stubs = work.join("stubs");
        std::fs::create_dir_all(&stubs).unwrap();

        // Stubs from our proto/ tree, as any foreign client would make them.
        let proto_dir = workspace_root().join("proto");
        let mut protoc_args = vec![
            "-m".to_owned(),
            "grpc_tools.protoc".to_owned(),
            format!("-I{}", proto_dir.display()),
            format!("--python_out={}", stubs.display()),
            format!("--grpc_python_out={}", stubs.display()),
        ];
        protoc_args.extend(
            proto_files(&proto_dir)
                .iter()
                .map(|p| p.display().to_string()),
        );
        let protoc_args: Vec<&str> = protoc_args.iter().map(String::as_str).collect();
        let protoc = run("python3", &protoc_args, "generate Python stubs").await;
        assert!(
            protoc.status.success(),
            "grpc_tools.protoc failed:\n{}",
            text(&protoc)
        );

        // A reader client config made by the real CLI from the node's secrets bundle.
        let config = work.join("reader.config");
        let basaltctl = Binary::Basaltctl.path();
        let secrets = node.pki().secrets_path().display().to_string();
        let config_arg = config.display().to_string();
        let endpoint = node.apid_addr().to_string();
        let generated = run(
            basaltctl.to_str().unwrap(),
            &[
                "gen",
                "client-config",
                "--with-secrets",
                &secrets,
                "--roles",
                "os:reader",
                "--endpoints",
                &endpoint,
                "-o",
                &config_arg,
            ],
            "basaltctl gen client-config",
        )
        .await;
        assert!(
            generated.status.success(),
            "basaltctl gen client-config failed:\n{}",
            text(&generated)
        );

        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/version_client.py");
        let stubs_arg = stubs.display().to_string();
        let client = run(
            "python3",
            &[
                script.to_str().unwrap(),
                "--stubs",
                &stubs_arg,
                "--config",
                &config_arg,
                "--endpoint",
                &endpoint,
            ],
            "the Python client",
        )
        .await;
        let output = text(&client);
        assert!(
            client.status.success(),
            "the Python client failed:\n{output}{}",
            node.log_tail()
        );

        // It printed the same tag a Rust client sees.
        let expected = node
            .client(Cert::Admin)
            .await
            .version(())
            .await
            .unwrap()
            .into_inner()
            .messages[0]
            .version
            .as_ref()
            .unwrap()
            .tag
            .clone();
        assert!(
            output.contains(&format!("tag={expected}")),
            "the Python client should print tag={expected}:\n{output}"
        );
        node.shutdown().await;
    })
    .await;
}

async fn python_present() -> bool {
    match tokio::process::Command::new("python3")
        .arg("--version")
        .output()
        .await
    {
        Ok(output) => output.status.success(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        Err(err) => panic!("run python3 --version: {err}"),
    }
}

/// Runs `program args…` with a timeout; panics if it cannot be started or hangs.
async fn run(program: &str, args: &[&str], what: &str) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    match tokio::time::timeout(STEP_TIMEOUT, cmd.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => panic!("{what}: run {program}: {err}"),
        Err(_) => panic!("{what}: {program} {args:?} took longer than {STEP_TIMEOUT:?}"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// Every `.proto` file under `dir`, sorted.
fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The fan-out wire format through a foreign decoder: Python grpcio stubs from `proto/` call
/// Version with `nodes` naming a control plane and its two workers and decode one reply with
/// three `messages`, each with `metadata.hostname` set to the node as named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_decodes_a_fan_out_reply() {
    within_test_deadline(async {
        if !python_present().await {
            eprintln!(
                "\nSKIPPED python_grpcio_client_decodes_a_fan_out_reply: python3 not found.\n"
            );
            return;
        }
        // ECDSA P-256: grpcio's BoringSSL cannot do Ed25519 (see the test above).
        let cp = Node::builder()
            .ca_algorithm(KeyAlgorithm::EcdsaP256)
            .start()
            .await;
        let w1 = Node::builder().worker_of(&cp).start().await;
        let w2 = Node::builder().worker_of(&cp).start().await;
        let work = cp.dir().join("python-fanout");
        let (stubs, config) = python_client_setup(&cp, &work).await;
        let nodes: Vec<String> = [&cp, &w1, &w2]
            .iter()
            .map(|node| node.apid_addr().to_string())
            .collect();

        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/version_client.py");
        let endpoint = cp.apid_addr().to_string();
        let joined = nodes.join(",");
        let client = run(
            "python3",
            &[
                script.to_str().unwrap(),
                "--stubs",
                stubs.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--endpoint",
                &endpoint,
                "--nodes",
                &joined,
            ],
            "the Python client",
        )
        .await;
        let output = text(&client);
        assert!(
            client.status.success(),
            "the Python client failed:\n{output}{}",
            cp.log_tail()
        );
        let stdout = String::from_utf8_lossy(&client.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "one line per reply element:\n{output}");
        for (line, node) in lines.iter().zip(&nodes) {
            assert!(
                line.starts_with(&format!("node={node} tag=v")) && line.ends_with("error= code=0"),
                "{line} (expected node {node}, a tag and no error)\n{output}"
            );
        }
        w2.shutdown().await;
        w1.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

/// Python stubs from `proto/` and a reader client config from `basaltctl`, under `work`.
async fn python_client_setup(node: &Node, work: &Path) -> (PathBuf, PathBuf) {
    let stubs = work.join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let proto_dir = workspace_root().join("proto");
    let mut protoc_args = vec![
        "-m".to_owned(),
        "grpc_tools.protoc".to_owned(),
        format!("-I{}", proto_dir.display()),
        format!("--python_out={}", stubs.display()),
        format!("--grpc_python_out={}", stubs.display()),
    ];
    protoc_args.extend(
        proto_files(&proto_dir)
            .iter()
            .map(|p| p.display().to_string()),
    );
    let protoc_args: Vec<&str> = protoc_args.iter().map(String::as_str).collect();
    let protoc = run("python3", &protoc_args, "generate Python stubs").await;
    assert!(
        protoc.status.success(),
        "grpc_tools.protoc failed (python3 -m pip install grpcio grpcio-tools):\n{}",
        text(&protoc)
    );
    let config = work.join("reader.config");
    let secrets = node.pki().secrets_path().display().to_string();
    let endpoint = node.apid_addr().to_string();
    let generated = run(
        Binary::Basaltctl.path().to_str().unwrap(),
        &[
            "gen",
            "client-config",
            "--with-secrets",
            &secrets,
            "--roles",
            "os:reader",
            "--endpoints",
            &endpoint,
            "-o",
            config.to_str().unwrap(),
        ],
        "basaltctl gen client-config",
    )
    .await;
    assert!(
        generated.status.success(),
        "basaltctl gen client-config failed:\n{}",
        text(&generated)
    );
    (stubs, config)
}
