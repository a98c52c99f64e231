//! basalt-loadgen: a bounded load generator for apid and machined, for `hack/bench.sh`.
//!
//! It sends one unary gRPC method (by full path, default `/machine.MachineService/Version`) with
//! a raw request body (default empty, a valid `google.protobuf.Empty`) and never decodes the
//! reply: a bytes codec on `tonic::client::Grpc` keeps the client's cost out of the figures.
//!
//! Targets: any mTLS gRPC server (`--apid ADDR` with `--client-config` or `--ca/--cert/--key`:
//! apid, or nginx in front of machined), machined's unix socket in plain HTTP/2 (`--unix PATH`,
//! usually with `--metadata talos-role=os:admin`, which machined trusts from an allowed uid), or
//! a plaintext HTTP/2 (h2c) server on TCP (`--h2c ADDR`). Connections are persistent
//! (`--connections`, shared round-robin by the `--concurrency` workers) or made anew for every
//! request (`--new-connection`: TCP + TLS 1.3 handshake + HTTP/2 preface + the call).
//!
//! `--server-pid PID[,PID…]` measures the server side too: CPU time (utime + stime from
//! `/proc/PID/stat`, all threads, and on-CPU nanoseconds summed over `/proc/PID/task/*/schedstat`)
//! of those processes over the measured phase, per request, plus their VmRSS at its end and their
//! VmHWM (peak RSS). On a shared machine CPU per request is the steadier figure. `--hold N` opens
//! N more connections to the same target (each makes one call, then stays idle and open) before
//! measuring, to see how the server scales with connections held open.
//!
//! Every run is bounded: a request count (`--requests`, at most 10 000 000) or a duration
//! (`--duration`, at most 600 s), plus a per-request timeout. Output: one JSON object on stdout
//! with req/s, latency percentiles in microseconds, and errors by gRPC code.
//!
//! Only ever point it at loopback addresses on this machine.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::{Buf as _, BufMut as _, Bytes};
use clap::Parser;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Serialize;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

const MAX_CONCURRENCY: usize = 1024;
/// Most idle connections `--hold` opens (each is a socket in this process and the server).
const MAX_HOLD: usize = 10_000;
/// Connections `--hold` sets up at once.
const HOLD_SETUP_PARALLELISM: usize = 16;
const MAX_REQUESTS: u64 = 10_000_000;
const MAX_DURATION: Duration = Duration::from_secs(600);
/// gRPC message limit, as Talos (32 MiB).
const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;
/// Error messages kept as samples in the report.
const ERROR_SAMPLES: usize = 3;

/// Unary gRPC load against apid (mTLS) or machined (unix socket).
#[derive(Debug, Parser)]
#[command(name = "basalt-loadgen", version)]
struct Cli {
    /// An mTLS gRPC server's address, e.g. apid's 127.0.0.1:50000.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with_all = ["unix", "h2c"],
        required_unless_present_any = ["unix", "h2c"]
    )]
    apid: Option<SocketAddr>,

    /// machined's unix socket (plain HTTP/2).
    #[arg(long, value_name = "PATH", conflicts_with = "h2c")]
    unix: Option<PathBuf>,

    /// A plaintext HTTP/2 (h2c) gRPC server on TCP.
    #[arg(long, value_name = "ADDR")]
    h2c: Option<SocketAddr>,

    /// Server processes whose CPU time and memory to report (comma-separated pids).
    #[arg(long, value_name = "PID[,PID...]", value_delimiter = ',')]
    server_pid: Vec<u32>,

    /// Idle connections to hold open (one call each) while measuring on the others.
    #[arg(long, value_name = "N", default_value_t = 0)]
    hold: usize,

    /// Client config (talosconfig layout) whose current context gives ca, crt and key.
    #[arg(long, value_name = "FILE")]
    client_config: Option<PathBuf>,

    /// CA bundle (PEM) to verify apid with, instead of --client-config.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,

    /// Client certificate (PEM), with --ca.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,

    /// Client key (PEM), with --ca.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,

    /// Full gRPC method path.
    #[arg(long, default_value = "/machine.MachineService/Version")]
    method: String,

    /// Request body: protobuf bytes in hex (default: empty).
    #[arg(long, value_name = "HEX", default_value = "")]
    body_hex: String,

    /// Request metadata KEY=VALUE; repeatable.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,

    /// Concurrent workers.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,

    /// Persistent connections shared by the workers (ignored with --new-connection).
    #[arg(long, default_value_t = 1)]
    connections: usize,

    /// Open a new connection (full handshake) for every request.
    #[arg(long)]
    new_connection: bool,

    /// Measured requests (ignored with --duration).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,

    /// Run for this many seconds instead of a request count.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// Unmeasured requests sent first (connection set-up, allocator and cache warm-up).
    #[arg(long, default_value_t = 200)]
    warmup: u64,

    /// Per-request timeout in seconds; a request that takes longer counts as an error.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,

    /// Free text copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

/// Where the requests go.
#[derive(Clone)]
enum Target {
    Apid {
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    },
    Unix {
        path: PathBuf,
    },
    H2c {
        addr: SocketAddr,
    },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Apid { addr, .. } => format!("apid mTLS {addr}"),
            Target::Unix { path } => format!("machined unix {}", path.display()),
            Target::H2c { addr } => format!("h2c {addr}"),
        }
    }

    /// One HTTP/2 connection (for apid: TCP, TLS 1.3 with the client certificate, ALPN h2).
    async fn connect(&self) -> anyhow::Result<Channel> {
        let endpoint = Endpoint::from_static("http://loadgen.invalid")
            .connect_timeout(Duration::from_secs(10));
        let channel = match self.clone() {
            Target::Apid { addr, tls } => {
                endpoint
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
            }
            Target::Unix { path } => {
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { UnixStream::connect(path).await.map(TokioIo::new) }
                    }))
                    .await
            }
            Target::H2c { addr } => {
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| async move {
                        let tcp = TcpStream::connect(addr).await?;
                        tcp.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(TokioIo::new(tcp))
                    }))
                    .await
            }
        };
        channel.with_context(|| format!("connect to {}", self.describe()))
    }
}

/// What every worker needs to send one request.
struct Call {
    path: PathAndQuery,
    body: Bytes,
    metadata: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    timeout: Duration,
}

impl Call {
    async fn send(&self, channel: Channel) -> Result<(), Status> {
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let mut request = tonic::Request::new(self.body.clone());
        for (key, value) in &self.metadata {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        let call = async {
            grpc.ready()
                .await
                .map_err(|err| Status::unavailable(format!("channel not ready: {err}")))?;
            grpc.unary::<Bytes, Bytes, _>(request, self.path.clone(), RawCodec)
                .await
                .map(drop)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded("loadgen timeout")),
        }
    }
}

/// When a phase stops.
#[derive(Clone, Copy, Debug)]
enum Bound {
    Requests(u64),
    Until(Instant),
}

/// One worker's results.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    label: String,
    target: String,
    method: String,
    mode: &'static str,
    concurrency: usize,
    connections: usize,
    requests: u64,
    ok: u64,
    errors: u64,
    error_codes: BTreeMap<String, u64>,
    error_samples: Vec<String>,
    duration_s: f64,
    rps: f64,
    latency_us: Latency,
    /// Connections held open (idle) during the measured phase, and how many of them answered.
    held_connections: usize,
    held_ok: usize,
    /// The `--server-pid` processes over the measured phase; absent without `--server-pid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<ServerUsage>,
    /// This load generator's own CPU time per request over the measured phase.
    client_cpu_us_per_request: f64,
}

/// CPU and memory of the server processes over the measured phase.
#[derive(Serialize)]
struct ServerUsage {
    pids: Vec<u32>,
    /// (utime + stime) / requests, from `/proc/PID/stat` (clock ticks, usually 10 ms).
    cpu_us_per_request: f64,
    /// On-CPU time / requests, from `/proc/PID/task/*/schedstat` (nanoseconds; threads that
    /// exited during the run are missing).
    oncpu_us_per_request: f64,
    /// Sum of VmRSS at the end of the measured phase (held connections still open).
    rss_kib: u64,
    /// Sum of VmHWM (each process's peak RSS since it started).
    hwm_kib: u64,
    /// The same, for each process.
    per_pid: Vec<PidUsage>,
}

/// One `--server-pid` process over the measured phase.
#[derive(Serialize)]
struct PidUsage {
    pid: u32,
    cpu_us_per_request: f64,
    oncpu_us_per_request: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

#[derive(Serialize)]
struct Latency {
    min: u64,
    mean: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    basalt_pki::install_crypto_provider();
    // One thread, as in apid: the load generator shares the machine with the servers it
    // measures, and on a multi-threaded runtime every call hands off between worker threads
    // (tonic's buffer task, hyper's connection task, the calling worker), each hand-off a
    // wake-up. Measured against the same apid and nginx (docs/BENCHMARKS.md): about half the
    // client CPU per call (c=16: 28 → 12 µs), which leaves that CPU to the servers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let report = runtime.block_on(run(cli))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<Report> {
    ensure!(
        (1..=MAX_CONCURRENCY).contains(&cli.concurrency),
        "--concurrency must be 1..={MAX_CONCURRENCY}"
    );
    ensure!(
        (1..=cli.concurrency).contains(&cli.connections),
        "--connections must be 1..=concurrency"
    );
    ensure!(
        (1..=MAX_REQUESTS).contains(&cli.requests),
        "--requests must be 1..={MAX_REQUESTS}"
    );
    ensure!(
        cli.warmup <= MAX_REQUESTS,
        "--warmup must be at most {MAX_REQUESTS}"
    );
    ensure!(
        cli.timeout > 0.0 && cli.timeout <= 60.0,
        "--timeout must be in (0, 60] seconds"
    );
    let duration = match cli.duration {
        Some(secs) => {
            ensure!(
                secs > 0.0 && secs <= MAX_DURATION.as_secs_f64(),
                "--duration must be in (0, {}] seconds",
                MAX_DURATION.as_secs()
            );
            Some(Duration::from_secs_f64(secs))
        }
        None => None,
    };

    let target = target(&cli)?;
    let call = Arc::new(Call {
        path: PathAndQuery::try_from(cli.method.as_str())
            .with_context(|| format!("--method {:?} is not a path", cli.method))?,
        body: Bytes::from(hex(&cli.body_hex)?),
        metadata: metadata(&cli.metadata)?,
        timeout: Duration::from_secs_f64(cli.timeout),
    });

    ensure!(cli.hold <= MAX_HOLD, "--hold must be at most {MAX_HOLD}");
    // A wrong --server-pid fails now, not after the load has been sent.
    for &pid in &cli.server_pid {
        ProcUsage::read(pid).with_context(|| format!("--server-pid {pid}"))?;
    }
    let (held, held_ok) = hold(&target, &call, cli.hold).await;

    let mut channels = Vec::new();
    if !cli.new_connection {
        for _ in 0..cli.connections {
            channels.push(target.connect().await?);
        }
    }
    let channels = Arc::new(channels);

    if cli.warmup > 0 {
        phase(
            &target,
            &call,
            &channels,
            cli.concurrency,
            Bound::Requests(cli.warmup),
        )
        .await;
    }
    let server_before = cli
        .server_pid
        .iter()
        .map(|&pid| ProcUsage::read(pid))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client_before = ProcUsage::read_self()?;
    let started = Instant::now();
    let bound = match duration {
        Some(d) => Bound::Until(started + d),
        None => Bound::Requests(cli.requests),
    };
    let tallies = phase(&target, &call, &channels, cli.concurrency, bound).await;
    let elapsed = started.elapsed().as_secs_f64();
    let client_after = ProcUsage::read_self()?;
    let server_after = cli
        .server_pid
        .iter()
        .map(|&pid| ProcUsage::read(pid))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The held connections stay open until the server's memory has been read.
    drop(held);

    let mut latencies = Vec::new();
    let mut error_codes = BTreeMap::new();
    let mut samples = Vec::new();
    for tally in tallies {
        latencies.extend(tally.latencies_us);
        for (code, n) in tally.errors {
            *error_codes.entry(code).or_insert(0) += n;
        }
        samples.extend(tally.samples);
    }
    samples.truncate(ERROR_SAMPLES);
    let errors: u64 = error_codes.values().sum();
    let ok = latencies.len() as u64;
    latencies.sort_unstable();
    let requests = ok + errors;
    let per_request = |us: f64| {
        if requests == 0 {
            0.0
        } else {
            us / requests as f64
        }
    };
    let server = (!cli.server_pid.is_empty()).then(|| {
        let delta = |f: fn(&ProcUsage) -> f64| {
            server_after.iter().map(f).sum::<f64>() - server_before.iter().map(f).sum::<f64>()
        };
        ServerUsage {
            pids: cli.server_pid.clone(),
            cpu_us_per_request: per_request(delta(|u| u.cpu_us)),
            oncpu_us_per_request: per_request(delta(|u| u.oncpu_us)),
            rss_kib: server_after.iter().map(|u| u.rss_kib).sum(),
            hwm_kib: server_after.iter().map(|u| u.hwm_kib).sum(),
            per_pid: cli
                .server_pid
                .iter()
                .zip(server_before.iter().zip(&server_after))
                .map(|(&pid, (before, after))| PidUsage {
                    pid,
                    cpu_us_per_request: per_request(after.cpu_us - before.cpu_us),
                    oncpu_us_per_request: per_request(after.oncpu_us - before.oncpu_us),
                    rss_kib: after.rss_kib,
                    hwm_kib: after.hwm_kib,
                })
                .collect(),
        }
    });
    Ok(Report {
        label: cli.label,
        target: target.describe(),
        method: cli.method,
        mode: if cli.new_connection {
            "new-connection"
        } else {
            "persistent"
        },
        concurrency: cli.concurrency,
        connections: if cli.new_connection {
            0
        } else {
            cli.connections
        },
        requests,
        ok,
        errors,
        error_codes,
        error_samples: samples,
        duration_s: elapsed,
        rps: requests as f64 / elapsed,
        latency_us: Latency {
            min: latencies.first().copied().unwrap_or(0),
            mean: latencies.iter().sum::<u64>().checked_div(ok).unwrap_or(0),
            p50: percentile(&latencies, 0.50),
            p90: percentile(&latencies, 0.90),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or(0),
        },
        held_connections: cli.hold,
        held_ok,
        server,
        client_cpu_us_per_request: per_request(client_after.cpu_us - client_before.cpu_us),
    })
}

/// Opens `n` connections to `target`, makes one call on each (so the server has set up
/// everything a connection needs), and returns them to be kept open, with the number of
/// connections whose call succeeded.
async fn hold(target: &Target, call: &Arc<Call>, n: usize) -> (Vec<Channel>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut ok = 0;
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < n || !pending.is_empty() {
        while started < n && pending.len() < HOLD_SETUP_PARALLELISM {
            let (target, call) = (target.clone(), Arc::clone(call));
            pending.spawn(async move {
                let channel = target.connect().await.ok()?;
                let answered = call.send(channel.clone()).await.is_ok();
                Some((channel, answered))
            });
            started += 1;
        }
        if let Some(Ok(Some((channel, answered)))) = pending.join_next().await {
            ok += usize::from(answered);
            held.push(channel);
        }
    }
    (held, ok)
}

/// CPU time and memory of one process, from `/proc`.
struct ProcUsage {
    /// utime + stime, in microseconds (clock-tick resolution).
    cpu_us: f64,
    /// On-CPU time of its current threads, in microseconds.
    oncpu_us: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

impl ProcUsage {
    fn read(pid: u32) -> anyhow::Result<Self> {
        Self::read_dir(&Path::new("/proc").join(pid.to_string()))
    }

    fn read_self() -> anyhow::Result<Self> {
        Self::read_dir(Path::new("/proc/self"))
    }

    fn read_dir(dir: &Path) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(dir.join("stat"))
            .with_context(|| format!("read {}/stat", dir.display()))?;
        let ticks =
            stat_cpu_ticks(&stat).with_context(|| format!("parse {}/stat", dir.display()))?;
        let status = std::fs::read_to_string(dir.join("status"))
            .with_context(|| format!("read {}/status", dir.display()))?;
        let mut oncpu_ns = 0u64;
        if let Ok(tasks) = std::fs::read_dir(dir.join("task")) {
            for task in tasks.flatten() {
                // A thread may exit between listing and reading: it then counts as 0.
                if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                    oncpu_ns += text
                        .split_whitespace()
                        .next()
                        .and_then(|ns| ns.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        Ok(Self {
            cpu_us: ticks as f64 * 1e6 / clock_ticks_per_second() as f64,
            oncpu_us: oncpu_ns as f64 / 1e3,
            rss_kib: status_kib(&status, "VmRSS:"),
            hwm_kib: status_kib(&status, "VmHWM:"),
        })
    }
}

/// utime + stime (all threads, including exited ones) from the text of `/proc/PID/stat`.
fn stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name (field 2) may contain spaces and parentheses; fields after its last ')'
    // start with field 3 (state), so utime (14) and stime (15) are at indexes 11 and 12.
    let (_, rest) = stat
        .rsplit_once(')')
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("too few fields")?
            .parse()
            .context("utime or stime is not a number")
    };
    Ok(field(11)? + field(12)?)
}

/// A `Vm…:` line of `/proc/PID/status` in KiB, 0 if missing (e.g. a zombie).
fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// `getconf CLK_TCK`; 100 (the value on every Linux this runs on) if that fails.
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// Runs `concurrency` workers until `bound`; latencies are of successful calls only.
async fn phase(
    target: &Target,
    call: &Arc<Call>,
    channels: &Arc<Vec<Channel>>,
    concurrency: usize,
    bound: Bound,
) -> Vec<Tally> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (target, call, channels, issued) = (
            target.clone(),
            Arc::clone(call),
            Arc::clone(channels),
            Arc::clone(&issued),
        );
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                match bound {
                    Bound::Requests(n) => {
                        if issued.fetch_add(1, Ordering::Relaxed) >= n {
                            break;
                        }
                    }
                    Bound::Until(deadline) => {
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                }
                let start = Instant::now();
                let result = if channels.is_empty() {
                    match target.connect().await {
                        Ok(channel) => call.send(channel).await,
                        Err(err) => Err(Status::unavailable(format!("{err:#}"))),
                    }
                } else {
                    call.send(channels[worker % channels.len()].clone()).await
                };
                match result {
                    Ok(()) => tally
                        .latencies_us
                        .push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    Err(status) => {
                        *tally.errors.entry(code_name(status.code())).or_insert(0) += 1;
                        if tally.samples.len() < ERROR_SAMPLES {
                            tally.samples.push(format!(
                                "{:?}: {}",
                                status.code(),
                                status.message()
                            ));
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

fn target(cli: &Cli) -> anyhow::Result<Target> {
    if let Some(path) = &cli.unix {
        return Ok(Target::Unix { path: path.clone() });
    }
    if let Some(addr) = cli.h2c {
        return Ok(Target::H2c { addr });
    }
    let Some(addr) = cli.apid else {
        bail!("give --apid ADDR, --unix PATH or --h2c ADDR");
    };
    let (ca, cert, key) = match (&cli.client_config, &cli.ca, &cli.cert, &cli.key) {
        (Some(path), None, None, None) => {
            let config = basalt_config::ClientConfig::load(path)
                .with_context(|| format!("read {}", path.display()))?;
            let (name, context) = config.current()?;
            let field = |value: &Option<basalt_config::Base64Pem>, what: &str| {
                value
                    .as_ref()
                    .map(|pem| pem.as_bytes().to_vec())
                    .with_context(|| format!("context {name:?} has no {what}"))
            };
            (
                field(&context.ca, "ca")?,
                field(&context.crt, "crt")?,
                field(&context.key, "key")?,
            )
        }
        (None, Some(ca), Some(cert), Some(key)) => (read(ca)?, read(cert)?, read(key)?),
        _ => bail!("for --apid give either --client-config or all of --ca, --cert and --key"),
    };
    let tls = basalt_pki::tls::client_config(&ca, Some((&cert, &key)))
        .context("build the client TLS config")?;
    Ok(Target::Apid {
        addr,
        tls: Arc::new(tls),
    })
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn metadata(
    pairs: &[String],
) -> anyhow::Result<
    Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .with_context(|| format!("--metadata {pair:?} is not KEY=VALUE"))?;
            Ok((
                MetadataKey::from_bytes(key.as_bytes())
                    .with_context(|| format!("bad metadata key {key:?}"))?,
                value
                    .parse()
                    .with_context(|| format!("bad metadata value {value:?}"))?,
            ))
        })
        .collect()
}

fn hex(text: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(
        text.len().is_multiple_of(2),
        "--body-hex needs an even number of digits"
    );
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .with_context(|| format!("--body-hex: {:?} is not hex", &text[i..i + 2]))
        })
        .collect()
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

// === impl RawCodec ===

/// Sends and receives message bodies as opaque bytes (gRPC framing is tonic's).
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
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
        assert_eq!(percentile(&values, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn stat_cpu_ticks_sum_utime_and_stime() {
        // A command name with a space and a ')' must not shift the fields.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 1000";
        assert_eq!(stat_cpu_ticks(stat).ok(), Some(12));
        assert!(stat_cpu_ticks("42 (x) S 1").is_err());
        assert!(stat_cpu_ticks("no parenthesis").is_err());
    }

    #[test]
    fn status_lines_give_kib_or_zero() {
        let status = "Name:\tapid\nVmHWM:\t    9344 kB\nVmRSS:\t    8600 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), 8600);
        assert_eq!(status_kib(status, "VmHWM:"), 9344);
        assert_eq!(status_kib("Name:\tzombie\n", "VmRSS:"), 0);
    }

    #[test]
    fn own_usage_is_readable() {
        let usage = ProcUsage::read_self().expect("read /proc/self");
        assert!(usage.rss_kib > 0);
        assert!(usage.hwm_kib >= usage.rss_kib);
    }

    #[test]
    fn targets_are_exclusive_and_one_is_required() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("basalt-loadgen").chain(args.iter().copied()))
        };
        assert!(parse(&["--h2c", "127.0.0.1:1"]).is_ok());
        assert!(parse(&["--unix", "/run/x.sock"]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--apid", "127.0.0.1:1", "--h2c", "127.0.0.1:2"]).is_err());
        assert!(parse(&["--unix", "/run/x.sock", "--h2c", "127.0.0.1:2"]).is_err());
        assert!(parse(&["--h2c", "127.0.0.1:1", "--server-pid", "1,x"]).is_err());
        let cli = parse(&["--h2c", "127.0.0.1:1", "--server-pid", "7,8"]).expect("pids");
        assert_eq!(cli.server_pid, vec![7, 8]);
    }

    #[tokio::test]
    async fn bad_runs_are_refused_before_any_connection() {
        let run_with = |extra: &[&str]| {
            let args = ["basalt-loadgen", "--h2c", "127.0.0.1:9"]
                .into_iter()
                .chain(extra.iter().copied());
            run(Cli::try_parse_from(args).expect("parse"))
        };
        let hold = run_with(&["--hold", "10001"]).await;
        assert!(format!("{:#}", hold.err().expect("too many")).contains("--hold"));
        let pid = run_with(&["--server-pid", "4294967295", "--requests", "1"]).await;
        assert!(format!("{:#}", pid.err().expect("no such pid")).contains("--server-pid"));
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(ProcUsage::read(u32::MAX).is_err());
    }

    #[test]
    fn hex_bodies_decode() {
        assert_eq!(hex("").ok(), Some(vec![]));
        assert_eq!(hex("0a01ff").ok(), Some(vec![0x0a, 0x01, 0xff]));
        assert!(hex("abc").is_err());
        assert!(hex("zz").is_err());
    }
}
