//! The guards of destructive verbs on several nodes, with the real binary and no node: the
//! confirmation (on a terminal, made with util-linux `script`), the refusal without one, and
//! flag combinations refused before anything is dialed. The endpoint is a closed loopback
//! port, so getting past the guard shows as a connection error (exit 1), a refusal as exit 64.

// Test helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The exit code of a refused invocation (EX_USAGE).
const EXIT_USAGE: i32 = 64;

/// A closed port on loopback: connecting fails at once.
const DEAD_ENDPOINT: &str = "127.0.0.1:1";

/// A valid admin client config (made by `gen`), in `dir`.
fn admin_config(dir: &Path) -> PathBuf {
    for args in [
        &["gen", "secrets", "-o", "secrets.yaml"][..],
        &[
            "gen",
            "config",
            "dev",
            DEAD_ENDPOINT,
            "--with-secrets",
            "secrets.yaml",
            "-o",
            "out",
        ],
    ] {
        let out = run(dir, args, None);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    dir.join("out").join("basaltconfig")
}

/// Runs basaltctl in `dir`; `stdin` is written to its stdin (which is never a terminal).
fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_basaltctl"))
        .current_dir(dir)
        .env_remove("BASALTCONFIG")
        .env("HOME", dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command that refuses at once may exit before it reads: then nobody takes the input.
    match input.write_all(stdin.unwrap_or_default().as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs basaltctl on a pseudo-terminal (`script`), typing `answer`; returns the exit code and
/// everything the terminal showed.
fn run_on_terminal(dir: &Path, config: &Path, args: &str, answer: &str) -> (Option<i32>, String) {
    let command = format!(
        "{} --config {} {args}",
        env!("CARGO_BIN_EXE_basaltctl"),
        config.display()
    );
    let mut child = Command::new("script")
        .current_dir(dir)
        .env("HOME", dir)
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs (it provides the terminal)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(answer.as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn several_nodes_without_yes_and_without_a_terminal_are_refused_before_dialing() {
    let dir = tempfile::tempdir().unwrap();
    let config = admin_config(dir.path());
    let config = config.to_str().unwrap();
    for verb in [
        &["reboot"][..],
        &["shutdown"],
        &["reset", "--reboot"],
        &["service", "web", "stop"],
        &["service", "web", "restart"],
        &["config-rollback", "3"],
        &["apply-config", "-f", "out/worker.yaml"],
    ] {
        let mut args = vec!["--config", config];
        args.extend_from_slice(verb);
        args.extend(["-n", "10.0.0.1,10.0.0.2"]);
        // Even a "y" on stdin does not count: it is not a person at a terminal.
        let out = run(dir.path(), &args, Some("y\n"));
        assert_eq!(
            out.status.code(),
            Some(EXIT_USAGE),
            "{args:?}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains("targets 2 nodes (10.0.0.1, 10.0.0.2)")
                && err.contains("pass --yes")
                && err.contains("nothing was done"),
            "{args:?}: {err}"
        );

        // With --yes the guard lets it through: the dead endpoint fails it (exit 1).
        args.push("--yes");
        let out = run(dir.path(), &args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("connect to apid"), "{}", stderr(&out));
    }

    // One node, a non-destructive verb, or a dry run: no confirmation needed.
    for args in [
        &["reboot", "-n", "10.0.0.1"][..],
        &["service", "web", "start", "-n", "10.0.0.1,10.0.0.2"],
        &[
            "apply-config",
            "-f",
            "out/worker.yaml",
            "--dry-run",
            "-n",
            "10.0.0.1,10.0.0.2",
        ],
    ] {
        let mut full = vec!["--config", config];
        full.extend_from_slice(args);
        let out = run(dir.path(), &full, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("connect to apid"), "{}", stderr(&out));
    }
}

#[test]
fn on_a_terminal_only_yes_goes_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let config = admin_config(dir.path());
    let args = "reboot -n 10.0.0.1,10.0.0.2,10.0.0.3";

    for answer in ["n\n", "\n", "whatever\n", ""] {
        let (code, screen) = run_on_terminal(dir.path(), &config, args, answer);
        assert_eq!(code, Some(EXIT_USAGE), "{answer:?}: {screen}");
        assert!(
            screen.contains("reboot 3 nodes: 10.0.0.1, 10.0.0.2, 10.0.0.3? [y/N]"),
            "{screen}"
        );
        assert!(
            screen.contains("reboot not confirmed; nothing was done"),
            "{screen}"
        );
    }
    let (code, screen) = run_on_terminal(dir.path(), &config, args, "y\n");
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains("connect to apid"), "{screen}");
}

#[test]
fn flags_that_cannot_work_together_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = admin_config(dir.path());
    let config = config.to_str().unwrap();
    let nodes = ["-n", "10.0.0.1,10.0.0.2", "--yes"];

    let mut args = vec!["--config", config, "reboot", "--batch", "1", "--wait=false"];
    args.extend(nodes);
    let out = run(dir.path(), &args, None);
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("--wait=false"), "{}", stderr(&out));

    let mut args = vec!["--config", config, "service", "web", "--batch", "1"];
    args.extend(nodes);
    let out = run(dir.path(), &args, None);
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("not to status"), "{}", stderr(&out));

    // A try timeout without try mode (it was silently ignored before 2026-12-08).
    let args = [
        "--config",
        config,
        "apply-config",
        "-f",
        "missing.yaml",
        "--mode",
        "auto",
        "--timeout",
        "5m",
    ];
    let out = run(dir.path(), &args, None);
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--timeout is the trial of --mode try"),
        "{}",
        stderr(&out)
    );

    // clap's own usage errors (exit 2): a batch or a parallelism of zero.
    for bad in [["--batch", "0"], ["--parallel", "0"]] {
        let mut args = vec!["--config", config, "reboot"];
        args.extend(bad);
        args.extend(nodes);
        let out = run(dir.path(), &args, None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
    }
}
