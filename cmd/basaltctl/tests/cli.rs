//! basaltctl end to end: the real binary, real files, and openssl as the outside judge.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

fn basaltctl(dir: &Path, args: &[&str]) -> Output {
    basaltctl_with_env(dir, &[("HOME", dir.to_str().unwrap())], args)
}

/// [`basaltctl`] with `env` set (and nothing else from the test's own BASALTCONFIG).
fn basaltctl_with_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_basaltctl"));
    command.current_dir(dir).env_remove("BASALTCONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.args(args).output().expect("run basaltctl")
}

/// `gen config dev 127.0.0.1 -o out`: node configs and an admin client config in `out/`.
fn gen_cluster_config(dir: &Path) {
    ok(dir, &["gen", "config", "dev", "127.0.0.1", "-o", "out"]);
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = basaltctl(dir, args);
    assert!(
        out.status.success(),
        "basaltctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = basaltctl(dir, args);
    assert!(!out.status.success(), "basaltctl {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Decodes one base64 PEM field of the current context of a client config file.
fn context_pem(config: &Path, field: &str) -> String {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let current = yaml["context"].as_str().unwrap();
    let b64 = yaml["contexts"][current][field].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn secrets(dir: &Path) -> PathBuf {
    ok(dir, &["gen", "secrets", "-o", "secrets.yaml"]);
    dir.join("secrets.yaml")
}

#[test]
fn gen_secrets_writes_a_private_talos_layout_bundle_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = secrets(dir.path());
    assert_eq!(mode(&path), 0o600);
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["cluster", "secrets", "trustdinfo", "certs"] {
        assert!(!yaml[key].is_null(), "missing {key}");
    }
    for ca in ["os", "etcd", "k8s", "k8saggregator"] {
        assert!(
            yaml["certs"][ca]["crt"].is_string(),
            "missing certs.{ca}.crt"
        );
    }
    let before = std::fs::read(&path).unwrap();
    let err = fails(dir.path(), &["gen", "secrets", "-o", "secrets.yaml"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "refused write changed the file"
    );
    ok(
        dir.path(),
        &["gen", "secrets", "-o", "secrets.yaml", "--force"],
    );
    assert_ne!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn reader_client_config_passes_openssl_verify_with_only_client_auth() {
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path());
    ok(
        dir.path(),
        &[
            "gen",
            "client-config",
            "--with-secrets",
            "secrets.yaml",
            "--roles",
            "os:reader",
            "--cert-ttl",
            "24h",
            "-o",
            "reader.config",
        ],
    );
    let config = dir.path().join("reader.config");
    assert_eq!(mode(&config), 0o600);
    std::fs::write(dir.path().join("ca.pem"), context_pem(&config, "ca")).unwrap();
    std::fs::write(dir.path().join("crt.pem"), context_pem(&config, "crt")).unwrap();

    let verify = openssl(dir.path(), &["verify", "-CAfile", "ca.pem", "crt.pem"]);
    assert!(verify.contains("crt.pem: OK"), "{verify}");
    let text = openssl(
        dir.path(),
        &[
            "x509",
            "-in",
            "crt.pem",
            "-noout",
            "-subject",
            "-ext",
            "extendedKeyUsage",
        ],
    );
    assert!(text.contains("O = os:reader"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("Server Authentication"), "{text}");

    // The context is named as Talos names it and the certificate reads back through the CLI.
    let info = ok(
        dir.path(),
        &["--config", "reader.config", "config", "info", "-o", "json"],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["context"], "reader@basalt");
    assert_eq!(info["roles"], serde_json::json!(["os:reader"]));
    // A 24 h certificate is inside the 30-day warning window.
    assert!(
        info["warning"].as_str().unwrap().contains("expires in"),
        "{info}"
    );
}

#[test]
fn unknown_roles_are_refused_with_the_known_roles() {
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path());
    let err = fails(
        dir.path(),
        &[
            "gen",
            "client-config",
            "--with-secrets",
            "secrets.yaml",
            "--roles",
            "os:reader,os:root",
            "-o",
            "x.config",
        ],
    );
    assert!(err.contains("unknown role os:root"), "{err}");
    assert!(err.contains("os:operator"), "{err}");
    assert!(!dir.path().join("x.config").exists());
}

#[test]
fn gen_config_writes_node_configs_and_an_admin_context() {
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path());
    ok(
        dir.path(),
        &[
            "gen",
            "config",
            "dev",
            "127.0.0.1",
            "--with-secrets",
            "secrets.yaml",
            "-o",
            "out",
        ],
    );
    let out = dir.path().join("out");
    for file in ["controlplane.yaml", "worker.yaml", "basaltconfig"] {
        assert_eq!(mode(&out.join(file)), 0o600, "{file}");
    }
    let worker: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("worker.yaml")).unwrap()).unwrap();
    assert!(worker["machine"]["ca"]["crt"].is_string());
    assert!(
        worker["machine"]["ca"]["key"].is_null(),
        "worker must not get the CA key"
    );
    let cp: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("controlplane.yaml")).unwrap())
            .unwrap();
    assert!(cp["machine"]["ca"]["key"].is_string());

    let info = ok(
        dir.path(),
        &["--config", "out/basaltconfig", "config", "info"],
    );
    assert!(info.contains("os:admin"), "{info}");
    assert!(info.contains("127.0.0.1"), "{info}");
}

/// Without `--with-secrets`, into a directory that does not exist yet (secrets.yaml was
/// written before the directory was made, and the command failed); and a file in the way stops
/// the command before anything is written.
#[test]
fn gen_config_makes_its_secrets_and_writes_everything_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        dir.path(),
        &["gen", "config", "dev", "127.0.0.1", "-o", "new/dir"],
    );
    let out = dir.path().join("new/dir");
    for file in [
        "secrets.yaml",
        "controlplane.yaml",
        "worker.yaml",
        "basaltconfig",
    ] {
        assert_eq!(mode(&out.join(file)), 0o600, "{file}");
    }

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("worker.yaml"), "mine").unwrap();
    let err = fails(
        dir.path(),
        &["gen", "config", "dev", "127.0.0.1", "-o", "other"],
    );
    assert!(err.contains("worker.yaml exists; pass --force"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["worker.yaml"]);
    assert_eq!(
        std::fs::read_to_string(other.join("worker.yaml")).unwrap(),
        "mine"
    );
}

#[test]
fn merging_twice_renames_the_clash_and_switches_context() {
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path());
    for name in ["a.config", "b.config"] {
        ok(
            dir.path(),
            &[
                "gen",
                "client-config",
                "--with-secrets",
                "secrets.yaml",
                "--roles",
                "os:admin",
                "--context",
                "dev",
                "-o",
                name,
            ],
        );
    }
    // Into the default path (~/.basalt/config, HOME is the temp dir), which does not exist yet.
    ok(dir.path(), &["config", "merge", "a.config"]);
    let main = dir.path().join(".basalt/config");
    assert_eq!(mode(&main), 0o600);
    assert_eq!(mode(main.parent().unwrap()), 0o700);
    let out = basaltctl(dir.path(), &["config", "merge", "b.config"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"dev-1\""));

    let list = ok(dir.path(), &["config", "contexts", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["current"], "dev-1");
    assert_eq!(list["contexts"].as_array().unwrap().len(), 2);

    ok(dir.path(), &["config", "use-context", "dev"]);
    ok(dir.path(), &["config", "endpoints", "10.5.0.2", "10.5.0.3"]);
    ok(dir.path(), &["config", "nodes", "10.5.0.4"]);
    let table = ok(dir.path(), &["config", "contexts"]);
    let current: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        current,
        ["*", "dev", "10.5.0.2,10.5.0.3", "10.5.0.4"],
        "{table}"
    );
    let err = fails(dir.path(), &["config", "use-context", "nope"]);
    assert!(err.contains("no context \"nope\""), "{err}");
}

#[test]
fn broken_client_configs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(dir.path(), &["--config", "missing.yaml", "config", "info"]);
    assert!(err.contains("missing.yaml"), "{err}");

    std::fs::write(
        dir.path().join("bad.yaml"),
        "context: dev\ncontexts:\n  dev:\n    endpointz: [x]\n",
    )
    .unwrap();
    let err = fails(dir.path(), &["--config", "bad.yaml", "config", "info"]);
    assert!(err.contains("endpointz"), "{err}");

    std::fs::write(
        dir.path().join("trunc.yaml"),
        "context: dev\ncontexts: {dev: {crt: \"LS0t\"",
    )
    .unwrap();
    let err = fails(dir.path(), &["--config", "trunc.yaml", "config", "info"]);
    assert!(err.contains("trunc.yaml"), "{err}");
}

#[test]
fn a_bad_duration_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = basaltctl(
        dir.path(),
        &[
            "gen",
            "client-config",
            "--with-secrets",
            "s.yaml",
            "--roles",
            "os:reader",
            "--cert-ttl",
            "3y",
            "-o",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
}

/// Durations too long to add to the current time were accepted, and the commands panicked
/// after they had begun (rotate-ca after applying its first step, a rollout after rebooting
/// its first node). They are usage errors now, before anything is dialed.
#[test]
fn a_duration_beyond_100_years_is_a_usage_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["rotate-ca", "--wait", "18446744073709551615s"][..],
        &["rotate-token", "--keep-old-for", "3000000d"],
        &["reboot", "--yes", "--batch-timeout", "36501d"],
        &["reboot", "--timeout", "18446744073709551615s"],
        &["cluster", "create", "--wait", "18446744073709551615s"],
    ] {
        let out = basaltctl(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("at most 36500d (100 years)"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A bad endpoint or an empty node name is a usage error when it is given, and one saved in a
/// context would otherwise fail every later command.
#[test]
fn bad_endpoints_and_empty_nodes_are_usage_errors_and_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    gen_cluster_config(dir.path());
    let config = dir.path().join("out/basaltconfig");
    let before = std::fs::read(&config).unwrap();
    for (args, says) in [
        (&["version", "-e", "a b"][..], "invalid endpoint \"a b\""),
        (&["version", "-e", "h:99999"], "invalid endpoint"),
        (&["version", "-n", ","], "empty node name"),
        (&["version", "-n", "10.0.0.2,,10.0.0.3"], "empty node name"),
        (&["config", "endpoints", "bad host"], "invalid endpoint"),
        (&["config", "nodes", ""], "empty node name"),
    ] {
        let mut full = vec!["--config", "out/basaltconfig"];
        full.extend_from_slice(args);
        let out = basaltctl(dir.path(), &full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(
        std::fs::read(&config).unwrap(),
        before,
        "the config is unchanged"
    );
}

/// A bad input (the client config, a file named by a flag) exits 64, so a script can tell it
/// from a node or the network failing, which exits 1 (all of these exited 1 before
/// 2026-12-08).
#[test]
fn bad_local_input_exits_64_and_an_unreachable_node_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    gen_cluster_config(dir.path());
    std::fs::write(dir.path().join("bad.yaml"), "contexts: [").unwrap();
    let config = "out/basaltconfig";
    for args in [
        &["--config", "missing.yaml", "version"][..],
        &["--config", "bad.yaml", "version"],
        &["--config", "missing.yaml", "config", "info"],
        &["--config", "missing.yaml", "certs"],
        &["--config", config, "apply-config", "-f", "missing.yaml"],
        &[
            "--config",
            config,
            "cert",
            "revoke",
            "--cert",
            "missing.pem",
            "--reason",
            "x",
        ],
        &[
            "gen",
            "client-config",
            "--with-secrets",
            "missing.yaml",
            "--roles",
            "os:reader",
            "-o",
            "x",
        ],
    ] {
        let out = basaltctl(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    let out = basaltctl(
        dir.path(),
        &["--config", config, "version", "-e", "127.0.0.1:1"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `BASALTCONFIG=` (set but empty) means "not set", as it does for a shell: the default path is
/// used (it was a clap error about `--config`, which the user had not passed). An empty HOME
/// without a config is said to be missing.
#[test]
fn an_empty_basaltconfig_or_home_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    gen_cluster_config(dir.path());
    ok(dir.path(), &["config", "merge", "out/basaltconfig"]);
    let home = dir.path().to_str().unwrap();
    let out = basaltctl_with_env(
        dir.path(),
        &[("BASALTCONFIG", ""), ("HOME", home)],
        &["config", "info"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("os:admin"));

    let out = basaltctl_with_env(dir.path(), &[("HOME", "")], &["config", "info"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("HOME is not set; pass --config FILE"),
        "{stderr}"
    );
    // A BASALTCONFIG that is set needs no HOME.
    let out = basaltctl_with_env(
        dir.path(),
        &[("BASALTCONFIG", "out/basaltconfig"), ("HOME", "")],
        &["config", "info"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
