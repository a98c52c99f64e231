//! The real `basaltctl` run against a [`Node`] (or any endpoint with the same PKI): client
//! configs made by `gen client-config` from a secrets bundle, and commands with a bounded run
//! time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::{Binary, Node, TestPki};

/// The most one command may take; rotations and rollouts wait for nodes to come back.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(50);

impl Node {
    /// A client config at `<node dir>/<name>` with `roles` (comma-separated), `ttl` (Go
    /// duration) and `endpoints`, made by `basaltctl gen client-config`.
    pub async fn gen_client_config(
        &self,
        name: &str,
        roles: &str,
        ttl: &str,
        endpoints: &[SocketAddr],
    ) -> PathBuf {
        gen_client_config(self.dir(), self.pki(), name, roles, ttl, endpoints).await
    }

    /// Runs `basaltctl --config CONFIG ARGS…` in the node's directory (also its HOME), failing
    /// the test after [`COMMAND_TIMEOUT`].
    pub async fn basaltctl(&self, config: &Path, args: &[&str]) -> Output {
        basaltctl(self.dir(), config, args).await
    }
}

/// A client config at `<dir>/<name>` from `pki`'s secrets bundle; see
/// [`Node::gen_client_config`].
pub async fn gen_client_config(
    dir: &Path,
    pki: &TestPki,
    name: &str,
    roles: &str,
    ttl: &str,
    endpoints: &[SocketAddr],
) -> PathBuf {
    let path = dir.join(name);
    let secrets = pki.secrets_path().display().to_string();
    let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let out = tokio::process::Command::new(Binary::Basaltctl.path())
        .current_dir(dir)
        .env_remove("BASALTCONFIG")
        .args(["gen", "client-config", "--with-secrets", &secrets])
        .args(["--roles", roles, "--cert-ttl", ttl])
        .args(["--endpoints", &endpoints.join(",")])
        .arg("-o")
        .arg(&path)
        .output()
        .await
        .unwrap_or_else(|err| panic!("run basaltctl gen client-config: {err}"));
    assert!(out.status.success(), "gen client-config: {}", text(&out));
    path
}

/// Runs `basaltctl --config CONFIG ARGS…` in `dir` (also its HOME); see [`Node::basaltctl`].
pub async fn basaltctl(dir: &Path, config: &Path, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(Binary::Basaltctl.path());
    command
        .current_dir(dir)
        .env_remove("BASALTCONFIG")
        .env("HOME", dir)
        .kill_on_drop(true)
        .arg("--config")
        .arg(config)
        .args(args);
    tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("basaltctl {args:?} took longer than {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|err| panic!("run basaltctl {args:?}: {err}"))
}

/// A command's exit code, stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
