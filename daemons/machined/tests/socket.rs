//! The socket file machined serves on: directory and socket modes, stale sockets, and paths
//! that must not be touched.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use basalt_api::machine::machine_service_client::MachineServiceClient;
use machined::{Config, Error, Server};
use support::{Machined, short_tempdir, with_roles, within_deadline};

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

fn config(socket: &std::path::Path) -> Config {
    Config::new(socket, Arc::new(basalt_sys::ContainerHost::default()))
}

#[tokio::test]
async fn socket_dir_is_0750_and_socket_is_0660() {
    within_deadline(async {
        let machined = Machined::start().await;
        assert_eq!(mode_of(machined.socket.parent().expect("dir")), 0o750);
        assert_eq!(mode_of(&machined.socket), 0o660);
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    within_deadline(async {
        let dir = short_tempdir();
        let socket = dir.path().join("machined.sock");
        drop(UnixListener::bind(&socket).expect("bind a socket nobody serves"));
        let bound = Server::bind(config(&socket))
            .await
            .expect("stale socket replaced");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        let channel = support::connect(&socket).await;
        basalt_api::machine::machine_service_client::MachineServiceClient::new(channel)
            .version(with_roles((), &["os:reader"]))
            .await
            .expect("the new server answers");
        tx.send(()).expect("shutdown");
        task.await.expect("no panic").expect("clean stop");
        assert!(!socket.exists(), "the socket is removed on shutdown");
    })
    .await;
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_refused_and_kept() {
    within_deadline(async {
        let dir = short_tempdir();
        let socket = dir.path().join("machined.sock");
        std::fs::write(&socket, b"not a socket").expect("write file");
        let err = Server::bind(config(&socket))
            .await
            .expect_err("must refuse");
        assert!(matches!(err, Error::PrepareSocket { .. }), "{err:?}");
        let chain = format!("{err}: {}", std::error::Error::source(&err).expect("cause"));
        assert!(
            chain.contains("exists and is a regular file, not a socket; refusing to remove it"),
            "{chain}"
        );
        assert_eq!(std::fs::read(&socket).expect("file kept"), b"not a socket");
    })
    .await;
}

#[tokio::test]
async fn a_second_server_on_a_live_socket_is_refused() {
    within_deadline(async {
        let machined = Machined::start().await;
        let err = Server::bind(config(&machined.socket))
            .await
            .expect_err("socket in use");
        assert!(matches!(err, Error::PrepareSocket { .. }), "{err:?}");
        machined.stop().await;
    })
    .await;
}

// === out of descriptors ===

/// Descriptors machined may use in the exhaustion test: a score above what it starts with.
const SCARCE_DESCRIPTORS: u32 = 32;

/// The real machined in its own process (so it can run out of descriptors alone), under
/// `ulimit -n`, with its warnings in `<dir>/machined.log`. Killed when dropped.
struct ScarceMachined {
    child: std::process::Child,
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
}

impl ScarceMachined {
    fn spawn(max_open_files: u32) -> Self {
        let dir = short_tempdir();
        let d = dir.path();
        let config = d.join("seed.yaml");
        std::fs::write(
            &config,
            // A worker's config; its CA certificate is only ever decoded, never used here.
            "version: v1alpha1\n\
             machine:\n  \
               type: worker\n  \
               hostname: scarce\n  \
               token: abcdef.0123456789abcdef\n  \
               ca: {crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJQekNCOHFBREFnRUNBaEVBCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K}\n\
             cluster: {name: dev, endpoints: [127.0.0.1]}\n",
        )
        .expect("write config");
        let log = std::fs::File::create(d.join("machined.log")).expect("create machined.log");
        // The shell sets the limit and then becomes machined (same pid).
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n "$1" || exit 97; shift; exec "$@""#)
            .arg("sh")
            .arg(max_open_files.to_string())
            .arg(env!("CARGO_BIN_EXE_machined"))
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(d)
            .arg("--no-apid")
            .env("BASALT_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn machined");
        let socket = d.join("run/machined.sock");
        Self { child, dir, socket }
    }

    /// What machined has logged so far (warnings and errors).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("machined.log")).expect("read machined.log")
    }

    /// CPU time machined has used so far, in clock ticks (user + system, /proc/PID/stat).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc/<machined>/stat");
        // Fields after the command name, which ends at the last ')': state is field 3, utime 14.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}

impl Drop for ScarceMachined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms for at most 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn out_of_descriptors_machined_backs_off_keeps_serving_and_recovers() {
    within_deadline(async {
        let machined = ScarceMachined::spawn(SCARCE_DESCRIPTORS);
        eventually("machined listens", || {
            std::os::unix::net::UnixStream::connect(&machined.socket).is_ok()
        })
        .await;
        let mut held = MachineServiceClient::new(support::connect(&machined.socket).await);
        held.version(with_roles((), &["os:reader"]))
            .await
            .expect("first call");

        // More connections than machined has descriptors for: the rest wait in the backlog,
        // and every accept machined tries fails with EMFILE.
        let waiting: Vec<_> = (0..2 * SCARCE_DESCRIPTORS)
            .map(|_| std::os::unix::net::UnixStream::connect(&machined.socket).expect("connect"))
            .collect();
        eventually("accept fails with EMFILE", || {
            machined.log().contains("Too many open files")
        })
        .await;

        // It backs off between failures instead of spinning on them: about ten a second, and
        // next to no CPU (a spinning loop takes a whole core: 100 ticks a second).
        let failures = || machined.log().matches("Unix socket accept failed").count();
        let (failed_before, cpu_before) = (failures(), machined.cpu_ticks());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let failed = failures() - failed_before;
        let cpu = machined.cpu_ticks() - cpu_before;
        assert!(failed <= 30, "{failed} failed accepts logged in one second");
        assert!(cpu < 50, "machined used {cpu} ticks of CPU in one second");

        // The connection it holds is served meanwhile; once descriptors are free, new
        // clients are too.
        held.version(with_roles((), &["os:reader"]))
            .await
            .expect("held connection served while out of descriptors");
        drop(waiting);
        let mut fresh = MachineServiceClient::new(support::connect(&machined.socket).await);
        fresh
            .version(with_roles((), &["os:reader"]))
            .await
            .expect("a new client is served");
    })
    .await;
}
