//! basalt-signbench: how many certificates trustd signs per second.
//!
//! It runs a real trustd (a release binary, `--trustd`) as a child process on 127.0.0.1 with a
//! PKI and config generated in a temporary directory, pre-generates every CSR it will send
//! (Ed25519, as workers make them) so the client's key generation is not measured, and then
//! for each concurrency level (`--concurrency 1,16`) sends a bounded number of Certificate
//! calls with the join token: first `--warmup` unmeasured calls, then `--requests` measured
//! ones. Each worker has its own persistent TLS connection (as if each were a node); with
//! `--new-connection` every call also pays a fresh TCP + TLS 1.3 handshake, which is what a
//! real node does (it calls once per renewal).
//!
//! Reported per phase: calls per second, latency p50/p90/p99 (successful calls), errors by
//! gRPC code, and CPU time per certificate of trustd (utime + stime from `/proc/<pid>/stat`
//! before and after the measured calls) and of this client. Client and server share the
//! machine's cores, so the figures are a floor on what trustd alone could do.
//!
//! trustd runs with its production settings except the per-peer rate limit, which is raised to
//! its maximum (every call comes from 127.0.0.1). The journal is fsynced for every batch of
//! certificates, as in production, in the temporary directory (`--dir` to choose its
//! filesystem).
//!
//! `--server cfssl` runs the same phases against the peer signer instead: `cfssl serve` (its
//! binary from `--cfssl`) with the same kind of CA, over TLS, driven through its HTTP API (see
//! [`cfssl`]). cfssl cannot sign with Ed25519, so compare with `--ca-algorithm ecdsa-p256
//! --csr-algorithm ecdsa-p256` on both. Each phase also reports the server's VmRSS at its end and
//! its VmHWM (peak RSS).
//!
//! Only ever runs against the server it starts, on loopback.

#![forbid(unsafe_code)]

mod cfssl;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use anyhow::{Context as _, bail, ensure};
use basalt_api::securityapi::CertificateRequest;
use basalt_api::securityapi::security_service_client::SecurityServiceClient;
use basalt_pki::{
    CaOptions, CertificateAuthority, KeyAlgorithm, ServerCertRequest, SubjectAltName, build_csr,
};
use clap::{Parser, ValueEnum};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

/// The join token of the benchmark cluster (generated fresh each run would be no different).
const TOKEN: &str = "bench0.0123456789abcdef";
const MAX_REQUESTS: usize = 100_000;
const MAX_CONCURRENCY: usize = 256;
/// Error messages kept as samples in the report.
const ERROR_SAMPLES: usize = 3;
/// Per-call timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Certificates signed per second by a real trustd (or cfssl) process.
#[derive(Debug, Parser)]
#[command(name = "basalt-signbench", version)]
struct Cli {
    /// Which signer to run.
    #[arg(long, value_enum, default_value_t = ServerKind::Trustd)]
    server: ServerKind,

    /// The trustd binary to run (build it with `cargo build --release -p trustd`).
    #[arg(long, default_value = "target/release/trustd")]
    trustd: PathBuf,

    /// The cfssl binary to run with `--server cfssl`.
    #[arg(long, default_value = "cfssl")]
    cfssl: PathBuf,

    /// Key type of the CA (and so of the signatures and the server's TLS key).
    #[arg(long, value_enum, default_value_t = Algorithm::Ed25519)]
    ca_algorithm: Algorithm,

    /// Key type of the CSRs sent.
    #[arg(long, value_enum, default_value_t = Algorithm::Ed25519)]
    csr_algorithm: Algorithm,

    /// Also write the JSON report to this file (stdout gets the table and the JSON).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Concurrency levels, one phase each.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,

    /// Measured calls per phase.
    #[arg(long, default_value_t = 2000)]
    requests: usize,

    /// Unmeasured calls sent first in each phase.
    #[arg(long, default_value_t = 200)]
    warmup: usize,

    /// Also run every phase with a new TCP + TLS connection per call.
    #[arg(long)]
    new_connection: bool,

    /// Directory for the PKI, config and journal (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The signer under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum ServerKind {
    Trustd,
    Cfssl,
}

/// Key types on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Algorithm {
    Ed25519,
    EcdsaP256,
}

impl Algorithm {
    fn key(self) -> KeyAlgorithm {
        match self {
            Algorithm::Ed25519 => KeyAlgorithm::Ed25519,
            Algorithm::EcdsaP256 => KeyAlgorithm::EcdsaP256,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    server: ServerKind,
    binary: String,
    ca_algorithm: &'static str,
    csr_algorithm: &'static str,
    /// VmRSS of the server before the first call.
    server_idle_rss_kib: u64,
    cores: usize,
    clock_ticks_per_s: u64,
    journal_fs: String,
    phases: Vec<Phase>,
    journal_lines: usize,
}

#[derive(Debug, Serialize)]
struct Phase {
    mode: &'static str,
    concurrency: usize,
    requests: usize,
    ok: usize,
    errors: BTreeMap<String, usize>,
    error_samples: Vec<String>,
    duration_s: f64,
    certs_per_s: f64,
    latency_us: Latency,
    /// CPU time of the server (trustd or cfssl) per certificate; the name is kept from when
    /// only trustd was measured.
    trustd_cpu_us_per_cert: f64,
    client_cpu_us_per_cert: f64,
    /// VmRSS of the server at the end of the phase, and its VmHWM (peak since it started).
    server_rss_kib: u64,
    server_hwm_kib: u64,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(
        (1..=MAX_REQUESTS).contains(&cli.requests),
        "--requests must be 1..={MAX_REQUESTS}"
    );
    ensure!(
        cli.warmup <= MAX_REQUESTS,
        "--warmup must be at most {MAX_REQUESTS}"
    );
    ensure!(
        !cli.concurrency.is_empty()
            && cli
                .concurrency
                .iter()
                .all(|c| (1..=MAX_CONCURRENCY).contains(c)),
        "--concurrency values must be 1..={MAX_CONCURRENCY}"
    );
    basalt_pki::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let report = runtime.block_on(run(&cli))?;
    print_table(&report);
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &cli.json {
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

async fn run(cli: &Cli) -> anyhow::Result<Report> {
    let temp;
    let dir = match &cli.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("signbench")
                .tempdir()
                .context("create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let ca = write_cluster(&dir, cli.ca_algorithm.key())?;
    let (binary, result, idle_rss) = match cli.server {
        ServerKind::Trustd => {
            let mut trustd = Trustd::start(&cli.trustd, &dir)?;
            let server = Server {
                kind: ServerKind::Trustd,
                pid: trustd.pid,
                addr: trustd.addr,
            };
            let idle_rss = memory_kib(server.pid).0;
            let result = phases(cli, &server, &ca).await;
            trustd.stop()?;
            (&cli.trustd, result, idle_rss)
        }
        ServerKind::Cfssl => {
            let mut cfssl = cfssl::Cfssl::start(&cli.cfssl, &dir)?;
            let server = Server {
                kind: ServerKind::Cfssl,
                pid: cfssl.pid,
                addr: cfssl.addr,
            };
            let idle_rss = memory_kib(server.pid).0;
            let result = phases(cli, &server, &ca).await;
            cfssl.stop()?;
            (&cli.cfssl, result, idle_rss)
        }
    };
    let phases = result?;
    // cfssl keeps no journal.
    let journal_lines = std::fs::read_to_string(dir.join("issued.jsonl"))
        .map(|text| text.lines().count())
        .unwrap_or(0);
    Ok(Report {
        server: cli.server,
        binary: binary.display().to_string(),
        ca_algorithm: cli.ca_algorithm.key().as_str(),
        csr_algorithm: cli.csr_algorithm.key().as_str(),
        server_idle_rss_kib: idle_rss,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        clock_ticks_per_s: clock_ticks(),
        journal_fs: filesystem_type(&dir),
        phases,
        journal_lines,
    })
}

/// The signer the phases talk to.
struct Server {
    kind: ServerKind,
    pid: u32,
    addr: SocketAddr,
}

async fn phases(cli: &Cli, server: &Server, ca_pem: &str) -> anyhow::Result<Vec<Phase>> {
    let mut tls =
        basalt_pki::client_config(ca_pem.as_bytes(), None).context("client TLS config")?;
    if server.kind == ServerKind::Cfssl {
        // cfssl's API is HTTP/1.1 (Go would pick h2 if offered).
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    let tls = Arc::new(tls);
    let modes: &[bool] = if cli.new_connection {
        &[false, true]
    } else {
        &[false]
    };
    let mut phases = Vec::new();
    for &new_connection in modes {
        for &concurrency in &cli.concurrency {
            let target = Target {
                kind: server.kind,
                addr: server.addr,
                tls: tls.clone(),
            };
            let phase = phase(&target, server.pid, concurrency, cli, new_connection).await?;
            eprintln!(
                "{:?} {} c={}: {:.0} certs/s, p50 {} µs, p99 {} µs, server {:.0} µs CPU/cert",
                server.kind,
                phase.mode,
                phase.concurrency,
                phase.certs_per_s,
                phase.latency_us.p50,
                phase.latency_us.p99,
                phase.trustd_cpu_us_per_cert
            );
            phases.push(phase);
        }
    }
    Ok(phases)
}

/// Where the calls go.
#[derive(Clone)]
struct Target {
    kind: ServerKind,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

/// One connection to the signer: gRPC to trustd, HTTP/1.1 to cfssl (one call at a time, so
/// each worker has its own).
#[derive(Clone)]
enum Client {
    Grpc(SecurityServiceClient<Channel>),
    Http(Arc<Mutex<cfssl::HttpConn<tokio_rustls::client::TlsStream<TcpStream>>>>),
}

impl Client {
    async fn sign(&self, csr: &[u8]) -> Result<(), tonic::Status> {
        match self {
            Client::Grpc(client) => call(client.clone(), csr).await,
            Client::Http(conn) => {
                let mut conn = conn.lock().await;
                match tokio::time::timeout(CALL_TIMEOUT, conn.sign(csr)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(tonic::Status::unknown(format!("cfssl: {err:#}"))),
                    Err(_) => Err(tonic::Status::deadline_exceeded("cfssl: no answer in time")),
                }
            }
        }
    }
}

impl Target {
    /// One TCP + TLS 1.3 connection (HTTP/2 for trustd, HTTP/1.1 for cfssl).
    async fn connect(&self) -> anyhow::Result<Client> {
        if self.kind == ServerKind::Cfssl {
            let tcp = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect to cfssl at {}", self.addr))?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(self.tls.clone())
                .connect(ServerName::from(self.addr.ip()), tcp)
                .await
                .context("TLS handshake with cfssl")?;
            return Ok(Client::Http(Arc::new(Mutex::new(cfssl::HttpConn::new(
                stream,
            )))));
        }
        self.connect_grpc().await.map(Client::Grpc)
    }

    async fn connect_grpc(&self) -> anyhow::Result<SecurityServiceClient<Channel>> {
        let (addr, tls) = (self.addr, self.tls.clone());
        let channel = Endpoint::from_static("http://signbench.invalid")
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let tls = tls.clone();
                async move {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let stream = TlsConnector::from(tls)
                        .connect(ServerName::from(addr.ip()), tcp)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("connect to trustd at {addr}"))?;
        Ok(SecurityServiceClient::new(channel))
    }
}

/// One worker's results.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, usize>,
    samples: Vec<String>,
}

async fn phase(
    target: &Target,
    pid: u32,
    concurrency: usize,
    cli: &Cli,
    new_connection: bool,
) -> anyhow::Result<Phase> {
    // Every CSR is made before anything is measured.
    let warmup = Arc::new(csrs(cli.warmup, cli.csr_algorithm.key())?);
    let measured = Arc::new(csrs(cli.requests, cli.csr_algorithm.key())?);

    let mut clients = Vec::with_capacity(concurrency);
    if !new_connection {
        for _ in 0..concurrency {
            clients.push(target.connect().await?);
        }
    }
    if !warmup.is_empty() {
        send_all(target, &clients, concurrency, &warmup).await;
    }

    let trustd_before = cpu_ticks(&format!("/proc/{pid}/stat"))?;
    let client_before = cpu_ticks("/proc/self/stat")?;
    let started = Instant::now();
    let tallies = send_all(target, &clients, concurrency, &measured).await;
    let elapsed = started.elapsed();
    let trustd_ticks = cpu_ticks(&format!("/proc/{pid}/stat"))? - trustd_before;
    let client_ticks = cpu_ticks("/proc/self/stat")? - client_before;
    let (server_rss_kib, server_hwm_kib) = memory_kib(pid);

    let mut latencies = Vec::new();
    let mut errors = BTreeMap::new();
    let mut samples = Vec::new();
    for tally in tallies {
        latencies.extend(tally.latencies_us);
        for (code, n) in tally.errors {
            *errors.entry(code).or_insert(0) += n;
        }
        samples.extend(tally.samples);
    }
    samples.truncate(ERROR_SAMPLES);
    latencies.sort_unstable();
    let ok = latencies.len();
    let per_cert = |ticks: u64| {
        if ok == 0 {
            0.0
        } else {
            ticks as f64 * 1e6 / clock_ticks() as f64 / ok as f64
        }
    };
    Ok(Phase {
        mode: if new_connection {
            "new-connection"
        } else {
            "persistent"
        },
        concurrency,
        requests: measured.len(),
        ok,
        errors,
        error_samples: samples,
        duration_s: elapsed.as_secs_f64(),
        certs_per_s: ok as f64 / elapsed.as_secs_f64(),
        latency_us: Latency {
            p50: percentile(&latencies, 0.50),
            p90: percentile(&latencies, 0.90),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or(0),
        },
        trustd_cpu_us_per_cert: per_cert(trustd_ticks),
        client_cpu_us_per_cert: per_cert(client_ticks),
        server_rss_kib,
        server_hwm_kib,
    })
}

/// Sends every CSR once with `concurrency` workers; worker `i` uses connection `i`, or a new
/// connection per call when `clients` is empty.
async fn send_all(
    target: &Target,
    clients: &[Client],
    concurrency: usize,
    csrs: &Arc<Vec<Vec<u8>>>,
) -> Vec<Tally> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let client = clients.get(worker).cloned();
        let (target, csrs, next) = (target.clone(), Arc::clone(csrs), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(csr) = csrs.get(i) else { break };
                let started = Instant::now();
                let result = match &client {
                    Some(client) => client.sign(csr).await,
                    None => match target.connect().await {
                        Ok(client) => client.sign(csr).await,
                        Err(err) => Err(tonic::Status::unavailable(format!("{err:#}"))),
                    },
                };
                match result {
                    Ok(()) => tally
                        .latencies_us
                        .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    Err(status) => {
                        *tally
                            .errors
                            .entry(format!("{:?}", status.code()))
                            .or_insert(0) += 1;
                        if tally.samples.len() < ERROR_SAMPLES {
                            tally.samples.push(status.message().to_owned());
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut tallies = Vec::with_capacity(concurrency);
    for worker in workers {
        match worker.await {
            Ok(tally) => tallies.push(tally),
            Err(err) => {
                let mut tally = Tally::default();
                tally.errors.insert("worker-panicked".to_owned(), 1);
                tally.samples.push(err.to_string());
                tallies.push(tally);
            }
        }
    }
    tallies
}

async fn call(mut client: SecurityServiceClient<Channel>, csr: &[u8]) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(CertificateRequest { csr: csr.to_vec() });
    request
        .metadata_mut()
        .insert("token", MetadataValue::from_static(TOKEN));
    request.set_timeout(CALL_TIMEOUT);
    let response = client.certificate(request).await?.into_inner();
    if response.crt.is_empty() || response.ca.is_empty() {
        return Err(tonic::Status::internal(
            "empty certificate or CA in the response",
        ));
    }
    Ok(())
}

/// `n` worker-style CSRs (CN + one DNS and one IP SAN), each with its own key.
fn csrs(n: usize, algorithm: KeyAlgorithm) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            let name = format!("worker-{i}");
            let sans = [
                SubjectAltName::Dns(name.clone()),
                SubjectAltName::Ip([10, 5, (i >> 8) as u8, i as u8].into()),
            ];
            let (pem, _key) = build_csr(&name, &sans, algorithm)?;
            Ok(pem.into_bytes())
        })
        .collect()
}

/// Writes the CA, trustd's server certificate and the config into `dir`; returns the CA PEM.
fn write_cluster(dir: &Path, algorithm: KeyAlgorithm) -> anyhow::Result<String> {
    let ca = CertificateAuthority::generate(&CaOptions {
        algorithm,
        ..CaOptions::talos_os()
    })?;
    let server = ca.issue_server(&ServerCertRequest {
        common_name: Some("signbench-trustd".to_owned()),
        sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
        ttl: Duration::from_secs(24 * 3600),
    })?;
    let write = |name: &str, contents: &str| {
        std::fs::write(dir.join(name), contents).with_context(|| format!("write {name}"))
    };
    write("ca.crt", ca.cert_pem())?;
    write("ca.key", &ca.key_pem())?;
    write("server.crt", &server.cert_pem)?;
    write("server.key", &server.key_pem)?;
    write(
        "trustd.yaml",
        &format!(
            "listen: 127.0.0.1:0\n\
             tls: {{cert: {d}/server.crt, key: {d}/server.key}}\n\
             ca: {{cert: {d}/ca.crt, key: {d}/ca.key}}\n\
             tokens: [{{token: {TOKEN}}}]\n\
             journal: {d}/issued.jsonl\n\
             rateLimit: {{perPeerPerMinute: 1000000}}\n",
            d = dir.display()
        ),
    )?;
    Ok(ca.cert_pem().to_owned())
}

/// The trustd child process.
struct Trustd {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

impl Trustd {
    /// Starts trustd and waits for its "Listening" log line (JSON), which carries the address.
    fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(dir.join("trustd.yaml"))
            .args(["--log-format", "json"])
            .env("BASALT_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("trustd stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.context("read trustd's log")?;
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["fields"]["message"] == "Listening" {
                addr = event["fields"]["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            bail!("trustd exited without listening; run it by hand to see why");
        };
        // Keep draining trustd's log (one line per certificate) so it never blocks on a full
        // pipe; the lines are not needed.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, pid, addr })
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("run kill")?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid);
        let exit = self.child.wait().context("wait for trustd")?;
        ensure!(exit.success(), "trustd exited with {exit}");
        Ok(())
    }
}

/// utime + stime of a process, in clock ticks, from its `/proc/<pid>/stat`.
fn cpu_ticks(stat_path: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(stat_path).with_context(|| format!("read {stat_path}"))?;
    // The command name (field 2) may contain spaces; fields after its closing ')' start with
    // field 3 (state), so utime (14) and stime (15) are at indexes 11 and 12.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short stat")?
            .parse()
            .context("stat field is not a number")
    };
    Ok(field(11)? + field(12)?)
}

/// VmRSS and VmHWM of a process in KiB (0 if it is gone).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// `getconf CLK_TCK`, 100 if that fails (the value on every Linux this runs on).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

fn filesystem_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |t| t.trim().to_owned())
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn print_table(report: &Report) {
    println!(
        "| mode | concurrency | certs/s | p50 ms | p99 ms | server CPU µs/cert | client CPU µs/cert | errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for p in &report.phases {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {} |",
            p.mode,
            p.concurrency,
            p.certs_per_s,
            p.latency_us.p50 as f64 / 1000.0,
            p.latency_us.p99 as f64 / 1000.0,
            p.trustd_cpu_us_per_cert,
            p.client_cpu_us_per_cert,
            p.requests - p.ok,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), 50);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn own_cpu_ticks_are_readable() {
        assert!(cpu_ticks("/proc/self/stat").is_ok());
    }

    #[test]
    fn own_memory_is_readable() {
        let (rss, hwm) = memory_kib(std::process::id());
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn p256_csrs_are_made() {
        let csrs = csrs(2, KeyAlgorithm::EcdsaP256).expect("csrs");
        assert_eq!(csrs.len(), 2);
        assert!(csrs[0].starts_with(b"-----BEGIN CERTIFICATE REQUEST-----"));
    }
}
