//! Secrets at rest: `gen secrets --encrypt-to` writes an age file, and the commands that read
//! a bundle take `--identity`; without it, or with the wrong one, they say what is wrong.

use std::path::Path;
use std::process::{Command, Output};

use age::secrecy::ExposeSecret;
use age::x25519::Identity;

fn basaltctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basaltctl"))
        .current_dir(dir)
        .env_remove("BASALTCONFIG")
        .env("HOME", dir)
        .args(args)
        .output()
        .expect("run basaltctl")
}

fn ok(dir: &Path, args: &[&str]) {
    let out = basaltctl(dir, args);
    assert!(
        out.status.success(),
        "basaltctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = basaltctl(dir, args);
    assert!(!out.status.success(), "basaltctl {args:?} should fail");
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

/// Writes an `age-keygen`-style identity file and returns the recipient.
fn identity_file(path: &Path) -> String {
    let identity = Identity::generate();
    let recipient = identity.to_public().to_string();
    std::fs::write(
        path,
        format!(
            "# public key: {recipient}\n{}\n",
            identity.to_string().expose_secret()
        ),
    )
    .expect("write identity");
    recipient
}

#[test]
fn an_encrypted_bundle_needs_the_right_identity_everywhere_it_is_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let recipient = identity_file(&dir.join("key.txt"));
    identity_file(&dir.join("other.txt"));

    ok(
        dir,
        &[
            "gen",
            "secrets",
            "--encrypt-to",
            &recipient,
            "-o",
            "secrets.age",
        ],
    );
    let written = std::fs::read_to_string(dir.join("secrets.age")).expect("read");
    assert!(
        written.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{written}"
    );
    assert!(!written.contains("trustdinfo"), "plaintext on disk");

    // gen client-config and gen config, without an identity: told what to do.
    let client_args = [
        "gen",
        "client-config",
        "--with-secrets",
        "secrets.age",
        "--roles",
        "os:reader",
        "-o",
        "reader.config",
    ];
    let err = fails(dir, &client_args);
    assert!(
        err.contains("age-encrypted") && err.contains("--identity"),
        "{err}"
    );
    let config_args = [
        "gen",
        "config",
        "dev",
        "127.0.0.1",
        "--with-secrets",
        "secrets.age",
        "-o",
        "out",
    ];
    let err = fails(dir, &config_args);
    assert!(err.contains("--identity"), "{err}");

    // With the wrong identity: a decrypt error, nothing written.
    let err = fails(
        dir,
        &[&client_args[..], &["--identity", "other.txt"]].concat(),
    );
    assert!(err.contains("decrypt secrets bundle"), "{err}");
    assert!(!dir.join("reader.config").exists());

    // With the right one, both commands work.
    ok(
        dir,
        &[&client_args[..], &["--identity", "key.txt"]].concat(),
    );
    assert!(dir.join("reader.config").exists());
    ok(
        dir,
        &[&config_args[..], &["--identity", "key.txt"]].concat(),
    );
    assert!(dir.join("out/controlplane.yaml").exists());

    // rotate-ca reads the bundle before it changes any node: without the identity it stops
    // there (it had no --identity before 2026-12-08 and could not read such a bundle at all).
    let rotate = [
        "--config",
        "out/basaltconfig",
        "rotate-ca",
        "--with-secrets",
        "secrets.age",
        "-e",
        "127.0.0.1:1",
    ];
    let err = fails(dir, &rotate);
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(err.contains("--identity"), "{err}");

    // A bad recipient is refused before anything is generated.
    let err = fails(
        dir,
        &["gen", "secrets", "--encrypt-to", "age1bad", "-o", "x.age"],
    );
    assert!(err.contains("age1bad"), "{err}");
    assert!(!dir.join("x.age").exists());
}

#[test]
fn a_plain_bundle_is_read_as_before() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    identity_file(&dir.join("key.txt"));
    ok(dir, &["gen", "secrets", "-o", "secrets.yaml"]);
    let args = [
        "gen",
        "client-config",
        "--with-secrets",
        "secrets.yaml",
        "--roles",
        "os:reader",
        "-o",
        "a.config",
    ];
    ok(dir, &args);
    // An identity given for a plain bundle is simply not needed.
    ok(
        dir,
        &[&args[..], &["--identity", "key.txt", "--force"]].concat(),
    );
}
