//! kill -9 during ApplyConfiguration never leaves a torn machine config: the real `machined`
//! binary applies a large config and is SIGKILLed at random points; afterwards `current.yaml`
//! is byte for byte the old or the new config, every history entry parses, and the next start
//! recovers to a consistent store.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use basalt_api::basalt::v1::HistoryRequest;
use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::machine::ApplyConfigurationRequest;
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_config::MachineConfig;
use hyper_util::rt::TokioIo;
use machined::MAX_MESSAGE_SIZE;
use support::{short_tempdir, with_roles};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

const MACHINED: &str = env!("CARGO_BIN_EXE_machined");

/// How many kills (after one calibration apply that is not interrupted).
const ITERATIONS: usize = 32;

/// The whole test must finish within this.
const BUDGET: Duration = Duration::from_secs(240);

/// The CA certificate of the configs, made for this test run (ApplyConfiguration parses it).
static CA_CRT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let ca = basalt_pki::CertificateAuthority::generate(&basalt_pki::CaOptions::talos_os())
        .expect("a CA");
    basalt_config::Base64Pem::from_pem(ca.cert_pem().to_owned()).to_base64()
});

/// A ~300 KiB machine config (about 30 times a generous real one): a valid worker config padded with comment lines (the store keeps
/// the YAML byte for byte, comments included, so every byte goes through the write path).
fn big_config(hostname: &str, seed: u64) -> String {
    let crt = &*CA_CRT;
    let mut text = format!(
        "version: v1alpha1
machine:
  type: worker
  hostname: {hostname}
  token: abcdef.0123456789abcdef
  ca:
    crt: {crt}
cluster:
  name: dev
  endpoints: [127.0.0.1]
"
    );
    for line in 0..5_000u64 {
        text.push_str(&format!(
            "# padding {seed:016x} {line:08} abcdefghijklmnopqrstuvwxyz0123\n"
        ));
    }
    text
}

/// xorshift64*: enough randomness for kill points without a dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }
}

fn spawn_machined(state: &Path, seed: &Path) -> Child {
    Command::new(MACHINED)
        .arg("--config")
        .arg(seed)
        .arg("--state")
        .arg(state)
        .arg("--no-apid")
        .env("BASALT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn machined")
}

/// Connects to the socket once machined serves it (bounded).
async fn connect_when_up(socket: &Path, child: &mut Child) -> Channel {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll machined") {
            panic!("machined exited early: {status}");
        }
        if UnixStream::connect(socket).await.is_ok() {
            let path = socket.to_owned();
            return Endpoint::try_from("http://[::]:50051")
                .expect("endpoint")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .expect("connect");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "machined did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn apply_request(yaml: &str) -> tonic::Request<ApplyConfigurationRequest> {
    with_roles(
        ApplyConfigurationRequest {
            data: yaml.as_bytes().to_vec(),
            mode: Mode::NoReboot as i32,
            ..Default::default()
        },
        &["os:admin"],
    )
}

/// Every history entry is complete YAML holding a valid config.
fn assert_history_intact(state: &Path) {
    let history = state.join("config/history");
    for entry in std::fs::read_dir(&history).expect("history dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            // A temp file of an interrupted write: never renamed into place, removed at start.
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read entry");
        let value: serde_yaml::Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|err| panic!("torn history entry {name}: {err}"));
        let config = value["config"].as_str().expect("config in entry");
        MachineConfig::from_yaml(config).unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}

#[test]
fn kill_9_during_apply_never_leaves_a_torn_config() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = short_tempdir();
    let state = dir.path();
    let socket = state.join("run/machined.sock");
    let seed_path = state.join("seed.yaml");
    let current = state.join("config/current.yaml");
    std::fs::write(&seed_path, big_config("seed", 0)).expect("write seed");

    let mut rng = Rng::new();
    let started = Instant::now();
    // Calibrate: one full apply tells how long the window is.
    let mut apply_time = Duration::from_millis(200);
    let (mut saw_old, mut saw_new) = (0, 0);
    let mut iteration = 0;
    while iteration <= ITERATIONS {
        assert!(
            started.elapsed() < BUDGET,
            "only {iteration} of {ITERATIONS} iterations in {BUDGET:?}"
        );
        let mut child = spawn_machined(state, &seed_path);
        let channel = runtime.block_on(connect_when_up(&socket, &mut child));
        let old = std::fs::read(&current).expect("current.yaml exists once machined is up");
        let new = big_config(&format!("n{iteration}"), iteration as u64 + 1);

        let mut client = MachineServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        if iteration == 0 {
            // Calibration run: no kill.
            let begin = Instant::now();
            runtime
                .block_on(client.apply_configuration(apply_request(&new)))
                .expect("calibration apply");
            apply_time = begin.elapsed().max(Duration::from_millis(5));
            child.kill().expect("stop machined");
        } else {
            let delay = Duration::from_micros(rng.below(apply_time.as_micros() as u64 * 3 / 2));
            runtime.block_on(async {
                let call = client.apply_configuration(apply_request(&new));
                tokio::pin!(call);
                tokio::select! {
                    _ = &mut call => {}
                    () = tokio::time::sleep(delay) => {}
                }
            });
            child.kill().expect("SIGKILL machined");
        }
        child.wait().expect("reap machined");

        let after = std::fs::read(&current).expect("current.yaml still exists");
        if after == old {
            saw_old += 1;
        } else if after == new.as_bytes() {
            saw_new += 1;
        } else {
            panic!(
                "iteration {iteration}: current.yaml is neither the old nor the new config \
                 ({} bytes)",
                after.len()
            );
        }
        let text = String::from_utf8(after).expect("utf-8");
        MachineConfig::from_yaml(&text).expect("current.yaml parses");
        assert_history_intact(state);
        iteration += 1;
    }
    eprintln!(
        "{iteration} iterations in {:?} (apply ≈ {apply_time:?}): {saw_old} kept the old \
         config, {saw_new} the new one",
        started.elapsed()
    );

    // A last start recovers to a consistent store: exactly one active entry, matching
    // current.yaml, and no temp files left behind.
    let mut child = spawn_machined(state, &seed_path);
    let channel = runtime.block_on(connect_when_up(&socket, &mut child));
    let history = runtime
        .block_on(
            ConfigServiceClient::new(channel)
                .history(with_roles(HistoryRequest { limit: 0 }, &["os:reader"])),
        )
        .expect("history")
        .into_inner()
        .messages
        .remove(0)
        .entries;
    child.kill().expect("stop machined");
    child.wait().expect("reap machined");
    let active: Vec<_> = history.iter().filter(|entry| entry.active).collect();
    assert_eq!(active.len(), 1, "{history:?}");
    let current_text = std::fs::read(&current).expect("current");
    let sha = ring_sha256_hex(&current_text);
    assert_eq!(active[0].sha256, sha);
    for dir in [state.join("config"), state.join("config/history")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".tmp."),
                "temp file left in {}: {name}",
                dir.display()
            );
        }
    }
}

fn ring_sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::new(), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}
