//! `basaltctl cluster create` / node commands / `cluster destroy` with the real binaries:
//! basaltctl starts machined detached, machined runs apid, and every call goes over mTLS.
//!
//! Unlike the other scenarios this one does not use the [`basalt_e2e::Node`] harness: the point
//! is that basaltctl itself sets the node up and tears it down. The binaries are found (and
//! built when missing) by [`basalt_e2e::Binary`]; `cluster create` finds machined next to
//! basaltctl, and machined finds apid next to itself.

// Test helpers unwrap and expect: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use basalt_api::machine::RebootRequest;
use basalt_client::{Client, ConnectOptions, Target};
use basalt_config::ClientConfig;
use basalt_e2e::Binary;

/// Upper bound for any single basaltctl invocation (create waits at most 30 s itself).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn cluster_create_serves_admin_and_reader_then_destroy_leaves_nothing() {
    let basaltctl_bin = binaries();
    let tmp = tempfile::Builder::new()
        .prefix("bs")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    let config = dir.join("config");
    let listen = free_loopback_addr();
    let _guard = KillOnDrop(state.clone());
    let ctl = |args: &[&str]| basaltctl(&basaltctl_bin, dir, &config, args);

    // create: secrets, configs, machined detached, Version answered, context merged.
    let out = ctl(&[
        "cluster",
        "create",
        "--name",
        "e2e",
        "--state",
        state.to_str().unwrap(),
        "--listen",
        &listen.to_string(),
        "--wait",
        "30s",
    ]);
    assert_success(&out, "cluster create");
    assert!(stdout(&out).contains("is up: apid v"), "{}", stdout(&out));
    let pid: u32 = std::fs::read_to_string(state.join("machined.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(basalt_sys::is_running(pid));
    let merged = ClientConfig::load(&config).unwrap();
    assert_eq!(merged.context, "e2e");
    assert_eq!(merged.contexts["e2e"].endpoints, [listen.to_string()]);
    assert!(merged.contexts["e2e"].nodes.is_empty());

    // Admin: version, as a table and as JSON with a semver tag.
    let out = ctl(&["--context", "e2e", "version"]);
    assert_success(&out, "version");
    let text = stdout(&out);
    assert!(text.starts_with("Client:  basaltctl v"), "{text}");
    assert!(
        text.contains("NODE") && text.contains(&listen.to_string()),
        "{text}"
    );

    let out = ctl(&["version", "-o", "json"]);
    assert_success(&out, "version -o json");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let node = &json["nodes"][0];
    assert_eq!(node["node"], listen.to_string());
    let tag = node["tag"].as_str().unwrap();
    semver::Version::parse(tag.trim_start_matches('v')).unwrap_or_else(|err| {
        panic!("tag {tag:?} is not semver: {err}");
    });
    assert!(json["client"]["tag"].as_str().unwrap().starts_with('v'));

    // A reader: memory works, one JSON object per node.
    let reader = dir.join("reader.config");
    let out = ctl(&[
        "gen",
        "client-config",
        "--with-secrets",
        state.join("secrets.yaml").to_str().unwrap(),
        "--roles",
        "os:reader",
        "-e",
        &listen.to_string(),
        "-o",
        reader.to_str().unwrap(),
    ]);
    assert_success(&out, "gen client-config");
    let out = basaltctl(&basaltctl_bin, dir, &reader, &["memory", "-o", "json"]);
    assert_success(&out, "reader memory");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let replies = json.as_array().unwrap();
    assert_eq!(replies.len(), 1, "{json}");
    assert_eq!(replies[0]["node"], listen.to_string());
    assert!(replies[0]["memtotal"].as_u64().unwrap() > 0, "{json}");
    assert!(replies[0].get("error").is_none(), "{json}");

    // ... and node targeting through the CLI: one row per -n node.
    let out = basaltctl(
        &basaltctl_bin,
        dir,
        &reader,
        &["hostname", "-n", "127.0.0.1"],
    );
    assert_success(&out, "reader hostname -n");
    assert!(
        stdout(&out)
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("127.0.0.1 ")
    );

    // ... but Reboot is refused with the explanation, through the client library.
    let status = reader_reboot(&reader);
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let message = status.message();
    assert!(
        message.contains("Reboot") && message.contains("os:reader"),
        "the denial should name the method and the held role: {message}"
    );

    // destroy: no process left, no state, no context.
    let out = ctl(&[
        "cluster",
        "destroy",
        "--name",
        "e2e",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_success(&out, "cluster destroy");
    assert!(!basalt_sys::is_running(pid));
    assert!(!state.exists());
    assert_eq!(processes_mentioning(&state), Vec::<u32>::new());
    let after = ClientConfig::load(&config).unwrap();
    assert!(!after.contexts.contains_key("e2e"));
}

#[test]
fn cluster_create_with_a_worker_shows_both_and_destroy_stops_both() {
    let basaltctl_bin = binaries();
    let tmp = tempfile::Builder::new()
        .prefix("bs")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    let state = dir.join("state");
    let config = dir.join("config");
    let listen = free_loopback_addr();
    let _guard = KillOnDrop(state.clone());
    let ctl = |args: &[&str]| basaltctl(&basaltctl_bin, dir, &config, args);
    let state_arg = state.to_str().unwrap();

    // create waits until the worker's own apid answers Version with the admin certificate,
    // which needs the certificate its machined got from the control plane's trustd.
    let out = ctl(&[
        "cluster",
        "create",
        "--name",
        "e2ew",
        "--state",
        state_arg,
        "--listen",
        &listen.to_string(),
        "--workers",
        "1",
    ]);
    assert_success(&out, "cluster create --workers 1");

    // The merged context points at the control plane only.
    let merged = ClientConfig::load(&config).unwrap();
    assert_eq!(merged.contexts["e2ew"].endpoints, [listen.to_string()]);

    let out = ctl(&[
        "cluster", "show", "--name", "e2ew", "--state", state_arg, "-o", "json",
    ]);
    assert_success(&out, "cluster show");
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let nodes = shown["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{shown}");
    assert_eq!(nodes[0]["role"], "controlplane");
    assert_eq!(nodes[0]["address"], listen.to_string());
    assert_eq!(nodes[1]["role"], "worker");
    for node in nodes {
        assert_eq!(node["state"], "running", "{shown}");
    }
    let worker_pid = u32::try_from(nodes[1]["pid"].as_u64().unwrap()).unwrap();
    let journal =
        std::fs::read_to_string(state.join("machined").join("trustd").join("issued.jsonl"))
            .unwrap();
    assert_eq!(journal.lines().count(), 1, "{journal}");

    let out = ctl(&["cluster", "destroy", "--name", "e2ew", "--state", state_arg]);
    assert_success(&out, "cluster destroy");
    assert!(!basalt_sys::is_running(worker_pid));
    assert!(!state.exists());
    assert_eq!(processes_mentioning(&state), Vec::<u32>::new());
}

/// Calls Reboot as the reader of `config` and returns the refusal.
fn reader_reboot(config: &Path) -> tonic::Status {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = ClientConfig::load(config).unwrap();
        let (_, context) = config.current().unwrap();
        let target = Target::from_context(context).unwrap();
        let options = ConnectOptions {
            request_timeout: Some(Duration::from_secs(10)),
            ..ConnectOptions::default()
        };
        let client = Client::connect(&target, &options).await.unwrap();
        let mut replies = client
            .each_node(RebootRequest::default(), |client, request| async move {
                client.machine().reboot(request).await
            })
            .await;
        assert_eq!(replies.len(), 1);
        replies
            .remove(0)
            .result
            .expect_err("a reader must not reboot")
    })
}

/// Makes sure all three binaries exist side by side; returns basaltctl's path.
fn binaries() -> PathBuf {
    let basaltctl = Binary::Basaltctl.path();
    for daemon in [Binary::Machined, Binary::Apid, Binary::Trustd] {
        assert_eq!(daemon.path().parent(), basaltctl.parent());
    }
    basaltctl
}

/// A loopback address no one listens on: 127.0.0.x (x from the pid, so parallel runs differ)
/// with a port the kernel just handed out.
fn free_loopback_addr() -> SocketAddr {
    let last = 2 + (std::process::id() % 250) as u8;
    let ip = Ipv4Addr::new(127, 0, 0, last);
    let listener = TcpListener::bind((ip, 0)).unwrap();
    listener.local_addr().unwrap()
}

/// Runs basaltctl with its own HOME and client config, bounded by [`COMMAND_TIMEOUT`].
fn basaltctl(bin: &Path, dir: &Path, config: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(bin)
        .current_dir(dir)
        .env_remove("BASALTCONFIG")
        .env("HOME", dir)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("basaltctl {args:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Live processes whose command line mentions `path` (machined and apid both do).
fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_str().unwrap().as_bytes();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) && basalt_sys::is_running(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// If the test fails half-way, the detached machined and its apid must not outlive it.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let workers = std::fs::read_dir(self.0.join("workers"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path());
        for dir in std::iter::once(self.0.clone()).chain(workers) {
            if let Ok(text) = std::fs::read_to_string(dir.join("machined.pid"))
                && let Ok(pid) = text.trim().parse::<u32>()
                && basalt_sys::is_running(pid)
            {
                let _ = basalt_sys::kill_process_group(pid);
            }
        }
    }
}
