//! One basalt node made of real processes: `machined`, which issues apid's certificate and runs
//! `apid` (and, on a control plane, `trustd`) as its supervised children, in a private
//! temporary directory. A worker ([`NodeBuilder::worker_of`]) shares a control plane's PKI and
//! gets apid's certificate from that control plane's trustd.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_api::basalt::v1::GetRequest;
use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::basalt::v1::diagnostics_service_client::DiagnosticsServiceClient;
use basalt_api::machine::ReadRequest;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_config::fs::{Overwrite, write_atomic};
use basalt_config::machine::{
    MACHINE_CONFIG_VERSION, RawCa, RawCluster, RawListener, RawMachine, RawMetrics,
};
use basalt_config::{Base64Pem, MachineConfig, MachineType, RawMachineConfig, generate_token};
use basalt_pki::CertificateAuthority;
use basalt_pki::KeyAlgorithm;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::binaries::Binary;
use crate::net::{self, MAX_MESSAGE_SIZE};
use crate::pki::{Cert, TestPki};

/// How long [`Node::start`] waits for apid to answer.
pub const READY_PATIENCE: Duration = Duration::from_secs(20);

/// How long [`Node::shutdown`] waits for machined (and then apid) to exit after SIGTERM.
pub const EXIT_PATIENCE: Duration = Duration::from_secs(15);

/// Interval of the bounded readiness and exit polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How many lines of machined's log go into failure messages.
const LOG_TAIL_LINES: usize = 60;

/// Options for [`Node`]; see [`Node::builder`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    allowed_uids: Vec<u32>,
    /// Extra machined flags (`--node-cert-ttl 20s`).
    machined_args: Vec<String>,
    require_version_ok: bool,
    ca_algorithm: KeyAlgorithm,
    join: Option<Join>,
    wait: bool,
    /// apid's listen address, when not 127.0.0.1 on a free port.
    apid_listen: Option<SocketAddr>,
    /// Set `machine.metrics` (apid and trustd on free loopback ports).
    metrics: bool,
}

/// What a worker takes from its control plane.
#[derive(Clone, Debug)]
struct Join {
    pki: Arc<TestPki>,
    trustd_addr: SocketAddr,
    token: String,
}

impl NodeBuilder {
    /// Runs machined with `--allow-uid UID`: only these peers may use its socket. Such a node
    /// is ready as soon as apid answers Version with any gRPC status (machined may refuse it).
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.allowed_uids.push(uid);
        self.require_version_ok = false;
        self
    }

    /// The key type of the node's CA, and so of apid's certificate and every client
    /// certificate (default Ed25519, as Talos). ECDSA P-256 is for clients whose TLS stack
    /// cannot do Ed25519, such as grpcio's BoringSSL.
    pub fn ca_algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.ca_algorithm = algorithm;
        self
    }

    /// Runs machined with `--node-cert-ttl TTL`: node certificates (and, on a control plane,
    /// what its trustd signs for workers) live `ttl` and are renewed at half-life.
    pub fn node_cert_ttl(mut self, ttl: Duration) -> Self {
        self.machined_args.push("--node-cert-ttl".to_owned());
        self.machined_args.push(format!("{}s", ttl.as_secs()));
        self
    }

    /// Makes the node a worker of `control_plane`: its config has the CA certificate without
    /// the key, the control plane's join token, and `cluster.endpoints` = the control plane's
    /// trustd. The node shares the control plane's [`TestPki`], so the same client
    /// certificates work on both.
    pub fn worker_of(mut self, control_plane: &Node) -> Self {
        self.join = Some(Join {
            pki: Arc::clone(&control_plane.pki),
            trustd_addr: control_plane.trustd_addr,
            token: control_plane.token.clone(),
        });
        self
    }

    /// A worker's join token instead of its control plane's (only with
    /// [`NodeBuilder::worker_of`]).
    pub fn token(mut self, token: &str) -> Self {
        if let Some(join) = &mut self.join {
            join.token = token.to_owned();
        }
        self
    }

    /// apid listens on `addr` instead of 127.0.0.1 on a free port: e.g. another loopback
    /// address with the control plane's port, so the node can be named by its bare IP (a
    /// target without a port means apid's own port, as Talos's 50000 everywhere).
    pub fn apid_listen(mut self, addr: SocketAddr) -> Self {
        self.apid_listen = Some(addr);
        self
    }

    /// Turns on `machine.metrics`: apid and trustd serve Prometheus metrics on free loopback
    /// ports ([`Node::metrics_addrs`]).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Returns from [`NodeBuilder::start`] as soon as machined is spawned, without waiting for
    /// apid (e.g. a worker that is expected never to get its certificate).
    pub fn no_wait(mut self) -> Self {
        self.wait = false;
        self
    }

    /// Creates the directory and PKI, starts machined and waits until apid answers.
    pub async fn start(self) -> Node {
        Node::launch(self).await
    }
}

/// A running node. Dropping it stops every process it started (SIGTERM, then SIGKILL).
pub struct Node {
    child: Option<Child>,
    pki: Arc<TestPki>,
    apid_addr: SocketAddr,
    trustd_addr: SocketAddr,
    token: String,
    socket: PathBuf,
    state_dir: PathBuf,
    log_path: PathBuf,
    /// `--allow-uid` values, kept for [`Node::restart`].
    allowed_uids: Vec<u32>,
    /// Extra machined flags, kept for [`Node::restart`].
    machined_args: Vec<String>,
    /// Whether readiness needs Version to succeed (see [`NodeBuilder::allow_uid`]).
    require_version_ok: bool,
    /// apid's and trustd's metrics addresses (see [`NodeBuilder::metrics`]).
    metrics: Option<(SocketAddr, SocketAddr)>,
    // Last, so the directory outlives everything that points into it.
    dir: TempDir,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("dir", &self.dir.path())
            .field("apid_addr", &self.apid_addr)
            .field("machined_pid", &self.machined_pid())
            .finish()
    }
}

impl Node {
    /// A node with the defaults: machined's own uid allow-list, ready once the admin
    /// certificate gets Version through apid.
    pub async fn start() -> Node {
        Node::builder().start().await
    }

    /// Options for a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            allowed_uids: Vec::new(),
            machined_args: Vec::new(),
            require_version_ok: true,
            ca_algorithm: KeyAlgorithm::Ed25519,
            join: None,
            wait: true,
            apid_listen: None,
            metrics: false,
        }
    }

    /// apid's and trustd's Prometheus endpoints, when built with [`NodeBuilder::metrics`].
    pub fn metrics_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.metrics
    }

    /// apid's listen address (loopback, a port chosen at start).
    pub fn apid_addr(&self) -> SocketAddr {
        self.apid_addr
    }

    /// trustd's listen address (loopback, a port chosen at start; only a control plane runs
    /// trustd).
    pub fn trustd_addr(&self) -> SocketAddr {
        self.trustd_addr
    }

    /// The node's join token (`machine.token`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// machined's unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// machined's state directory (`apid/` inside holds apid's files and audit log).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The node's CA and the test client certificates.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The temporary directory holding everything of this node.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A TLS client config presenting `cert` (or no certificate).
    pub fn tls(&self, cert: Option<Cert>) -> Arc<rustls::ClientConfig> {
        let identity = cert.map(|cert| self.pki.credentials(cert));
        net::tls_config(
            self.pki.ca_pem(),
            identity.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        )
    }

    /// A gRPC channel to apid over mTLS as `cert`. The connection is made at once; a refused
    /// certificate only shows on the first call (TLS 1.3 checks it after the client's
    /// handshake is done).
    pub async fn channel(&self, cert: Cert) -> Channel {
        net::connect(self.apid_addr, self.tls(Some(cert)))
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "connect to apid at {} as {cert:?}: {err:?}{}",
                    self.apid_addr,
                    self.log_tail()
                )
            })
    }

    /// A `machine.MachineService` client through apid as `cert`, with 32 MiB message limits.
    pub async fn client(&self, cert: Cert) -> MachineServiceClient<Channel> {
        MachineServiceClient::new(self.channel(cert).await)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// A `basalt.v1.DiagnosticsService` client through apid as `cert`, with 32 MiB limits.
    pub async fn diagnostics(&self, cert: Cert) -> DiagnosticsServiceClient<Channel> {
        DiagnosticsServiceClient::new(self.channel(cert).await)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The kernel's boot id, read through apid as admin: it changes when the node reboots
    /// (in container mode, when machined restarts its boot sequence).
    pub async fn boot_id(&self) -> String {
        let mut stream = self
            .client(Cert::Admin)
            .await
            .read(ReadRequest {
                path: "/proc/sys/kernel/random/boot_id".to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("read boot_id: {status:?}{}", self.log_tail()))
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.expect("boot_id stream") {
            bytes.extend(chunk.bytes);
        }
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    /// The active machine config, as an admin reads it back through apid
    /// (`basalt.v1.ConfigService/Get`, version 0).
    pub async fn active_config(&self) -> RawMachineConfig {
        let active = ConfigServiceClient::new(self.channel(Cert::Admin).await)
            .get(GetRequest { version: 0 })
            .await
            .unwrap_or_else(|status| panic!("ConfigService/Get: {status:?}{}", self.log_tail()))
            .into_inner()
            .messages
            .remove(0);
        let yaml = String::from_utf8(active.data).expect("the active config is UTF-8");
        MachineConfig::from_yaml(&yaml)
            .expect("the active config parses")
            .to_raw()
    }

    /// Everything machined (and apid, its child) wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|err| format!("<cannot read {}: {err}>", self.log_path.display()))
    }

    /// The end of [`Node::log`], formatted to be appended to an assertion message.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        let mut out = format!(
            "\n--- machined log, last {} of {} lines ({}) ---\n",
            lines.len() - start,
            lines.len(),
            self.log_path.display()
        );
        for line in &lines[start..] {
            let _ = writeln!(out, "{line}");
        }
        out.push_str("--- end of log ---");
        out
    }

    /// machined's pid while it runs.
    pub fn machined_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// apid's pid: machined's child process named `apid`, if there is one now.
    pub fn apid_pid(&self) -> Option<u32> {
        let machined = self.machined_pid()?;
        procs()
            .into_iter()
            .find(|p| p.ppid == machined && p.comm == "apid")
            .map(|p| p.pid)
    }

    /// Stops the node the way an operator would: SIGTERM to machined, then asserts that it
    /// exits successfully within [`EXIT_PATIENCE`] and that apid does not outlive it.
    pub async fn shutdown(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        basalt_sys::terminate(pid).expect("send SIGTERM to machined");
        let status = wait_for_exit(&mut child, EXIT_PATIENCE).await;
        let Some(status) = status else {
            kill_group(&mut child);
            panic!(
                "machined (pid {pid}) did not exit within {EXIT_PATIENCE:?} of SIGTERM{}",
                self.log_tail()
            );
        };
        let deadline = Instant::now() + EXIT_PATIENCE;
        let mut left = group_members(pid);
        while !left.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(POLL_INTERVAL).await;
            left = group_members(pid);
        }
        if !left.is_empty() {
            kill_group(&mut child);
        }
        assert!(
            left.is_empty(),
            "processes outlived machined: {left:?}{}",
            self.log_tail()
        );
        assert!(
            status.success(),
            "machined exited with {status} after SIGTERM{}",
            self.log_tail()
        );
    }

    /// SIGKILLs machined, as a crash would, then whatever is left of its process group (apid,
    /// trustd: their listening ports are free again once this returns). Configured services
    /// lead their own groups and are not reached; kill a node with none. The state directory
    /// stays for [`Node::restart`].
    pub fn kill_machined(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Starts machined again on the same config, state directory and socket (after
    /// [`Node::kill_machined`]), appending to the same log, and waits until apid answers.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart is for a node whose machined was killed"
        );
        let log = File::options()
            .append(true)
            .open(&self.log_path)
            .expect("open machined's log file");
        let config_path = self.dir.path().join("machine.yaml");
        self.child = Some(spawn_machined(
            &config_path,
            &self.state_dir,
            &self.socket,
            &self.allowed_uids,
            &self.machined_args,
            log,
        ));
        self.wait_ready(self.require_version_ok).await;
    }

    async fn launch(options: NodeBuilder) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("bs")
            .tempdir_in("/tmp")
            .expect("create a temporary directory in /tmp");
        let pki = match &options.join {
            Some(join) => Arc::clone(&join.pki),
            None => Arc::new(TestPki::generate(
                &dir.path().join("pki"),
                options.ca_algorithm,
            )),
        };
        let apid_addr = options
            .apid_listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())));
        let trustd_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let token = match &options.join {
            Some(join) => join.token.clone(),
            None => generate_token().expect("generate a token").into_string(),
        };
        let config_path = dir.path().join("machine.yaml");
        let spec = ConfigSpec {
            ca: pki.ca(),
            apid_addr,
            trustd_addr,
            token: &token,
            control_plane_trustd: options.join.as_ref().map(|join| join.trustd_addr),
            metrics: options.metrics.then(|| {
                let port = || SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
                (port(), port())
            }),
        };
        write_machine_config(&config_path, &spec);
        let metrics = spec.metrics;

        let state_dir = dir.path().join("state");
        let socket = dir.path().join("run").join("machined.sock");
        let log_path = dir.path().join("machined.log");
        let log = File::create(&log_path).expect("create machined's log file");
        let child = spawn_machined(
            &config_path,
            &state_dir,
            &socket,
            &options.allowed_uids,
            &options.machined_args,
            log,
        );

        let mut node = Node {
            child: Some(child),
            pki,
            apid_addr,
            trustd_addr,
            token,
            socket,
            state_dir,
            log_path,
            allowed_uids: options.allowed_uids.clone(),
            machined_args: options.machined_args.clone(),
            require_version_ok: options.require_version_ok,
            metrics,
            dir,
        };
        if options.wait {
            node.wait_ready(options.require_version_ok).await;
        }
        node
    }

    /// Polls Version through apid with the admin certificate until apid answers, machined
    /// exits, or [`READY_PATIENCE`] passes.
    async fn wait_ready(&mut self, require_ok: bool) {
        use tonic::Code;
        let deadline = Instant::now() + READY_PATIENCE;
        let tls = self.tls(Some(Cert::Admin));
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "machined exited with {status} before apid answered{}",
                    self.log_tail()
                );
            }
            let attempt = async {
                let channel = net::connect(self.apid_addr, tls.clone())
                    .await
                    .map_err(|err| format!("connect: {err:?}"))?;
                match MachineServiceClient::new(channel).version(()).await {
                    Ok(_) => Ok(()),
                    // apid or machined not up yet, or the connection broke: try again.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled
                        ) =>
                    {
                        Err(format!("{status:?}"))
                    }
                    // Any other status is an answer (machined may refuse it, see allow_uid).
                    Err(_) => Ok(()),
                }
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(())) => break,
                Ok(Err(err)) => last = err,
                Err(_) => last = "Version took longer than 2 s".to_owned(),
            }
            assert!(
                Instant::now() < deadline,
                "apid at {} did not answer Version within {READY_PATIENCE:?}; last attempt: \
                 {last}{}",
                self.apid_addr,
                self.log_tail()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        if require_ok {
            let reply = self.client(Cert::Admin).await.version(()).await;
            if let Err(status) = reply {
                panic!(
                    "apid answers, but Version as admin fails: {status:?}{}",
                    self.log_tail()
                );
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Best effort and bounded: a test that panicked must not leave processes behind.
        let _ = basalt_sys::terminate(child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !group_members(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_group(&mut child);
    }
}

/// Spawns machined on `config` and `state`, serving on `socket`, with apid and trustd from the
/// build, its output into `log`, in its own process group (so that cleanup can find apid even
/// if machined is killed).
fn spawn_machined(
    config: &Path,
    state: &Path,
    socket: &Path,
    allowed_uids: &[u32],
    machined_args: &[String],
    log: File,
) -> Child {
    let mut cmd = Command::new(Binary::Machined.path());
    cmd.arg("--config")
        .arg(config)
        .arg("--state")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .arg("--apid-bin")
        .arg(Binary::Apid.path())
        .arg("--trustd-bin")
        .arg(Binary::Trustd.path());
    for uid in allowed_uids {
        cmd.arg("--allow-uid").arg(uid.to_string());
    }
    cmd.args(machined_args);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file handle"))
        .stderr(log)
        .process_group(0);
    cmd.spawn()
        .unwrap_or_else(|err| panic!("spawn {cmd:?}: {err}"))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral loopback port")
}

/// What goes into a node's machine config.
struct ConfigSpec<'a> {
    ca: &'a CertificateAuthority,
    apid_addr: SocketAddr,
    trustd_addr: SocketAddr,
    token: &'a str,
    /// `Some`: a worker of the control plane whose trustd listens there.
    control_plane_trustd: Option<SocketAddr>,
    /// `machine.metrics`: apid's and trustd's Prometheus addresses.
    metrics: Option<(SocketAddr, SocketAddr)>,
}

/// A machine config for `spec.ca` with apid (and trustd) on the given loopback addresses: a
/// control plane with the CA key, or a worker without it whose `cluster.endpoints` is its
/// control plane's trustd. Validated with basalt-config before it is written.
fn write_machine_config(path: &Path, spec: &ConfigSpec<'_>) {
    let worker = spec.control_plane_trustd.is_some();
    let kind = if worker {
        MachineType::Worker
    } else {
        MachineType::ControlPlane
    };
    let endpoint = spec
        .control_plane_trustd
        .map_or_else(|| "127.0.0.1".to_owned(), |addr| addr.to_string());
    let raw = RawMachineConfig {
        version: Some(MACHINE_CONFIG_VERSION.to_owned()),
        machine: RawMachine {
            kind: Some(kind.as_str().to_owned()),
            token: Some(spec.token.to_owned()),
            ca: Some(RawCa {
                crt: Some(Base64Pem::from_pem(spec.ca.cert_pem())),
                key: (!worker).then(|| Base64Pem::from_pem(spec.ca.key_pem())),
            }),
            apid: Some(RawListener {
                listen: Some(spec.apid_addr.to_string()),
                ..RawListener::default()
            }),
            trustd: Some(RawListener {
                listen: Some(spec.trustd_addr.to_string()),
                ..RawListener::default()
            }),
            metrics: spec.metrics.map(|(apid, trustd)| RawMetrics {
                apid: Some(apid.to_string()),
                trustd: Some(trustd.to_string()),
            }),
            ..RawMachine::default()
        },
        cluster: RawCluster {
            name: Some("e2e".to_owned()),
            endpoints: vec![endpoint],
        },
    };
    let config = MachineConfig::try_from(raw).expect("the harness builds a valid machine config");
    let yaml = config.to_yaml().expect("render the machine config");
    write_atomic(path, yaml.as_bytes(), 0o600, Overwrite::Allow)
        .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

async fn wait_for_exit(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// SIGKILL to machined and to every remaining process of its group or child of it.
fn kill_group(child: &mut Child) {
    let pid = child.id();
    let _ = child.kill();
    let _ = child.wait();
    let members = group_members(pid);
    if !members.is_empty() {
        let mut cmd = Command::new("kill");
        cmd.arg("-KILL").arg("--");
        for member in &members {
            cmd.arg(member.pid.to_string());
        }
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// One line of `/proc/<pid>/stat`, the fields the harness needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Proc {
    pid: u32,
    ppid: u32,
    /// Process group id.
    pgrp: u32,
    /// Executable name (truncated to 15 bytes by the kernel).
    comm: String,
    /// State letter (`Z` for a zombie).
    state: char,
}

/// Living processes in machined's process group or whose parent is machined (zombies excluded).
fn group_members(machined: u32) -> Vec<Proc> {
    procs()
        .into_iter()
        .filter(|p| p.pid != machined && (p.pgrp == machined || p.ppid == machined))
        .filter(|p| p.state != 'Z')
        .collect()
}

/// Every process in /proc that could be read.
fn procs() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(&stat)
        })
        .collect()
}

fn parse_stat(stat: &str) -> Option<Proc> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let pid = stat[..open].trim().parse().ok()?;
    let comm = stat[open + 1..close].to_owned();
    let mut rest = stat[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgrp,
        comm,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let proc = parse_stat("42 (a (weird) name) S 7 42 42 0 -1").expect("parses");
        assert_eq!(proc.pid, 42);
        assert_eq!(proc.comm, "a (weird) name");
        assert_eq!(proc.state, 'S');
        assert_eq!((proc.ppid, proc.pgrp), (7, 42));
    }
}
