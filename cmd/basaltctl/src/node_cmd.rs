//! Commands that read from nodes: `version`, `hostname`, `memory`, `processes`, `mounts`,
//! `loadavg`, `stats`.
//!
//! Each makes one call per target node through [`basalt_client`] (talosctl v1.14 style) and
//! prints one block per node: table rows with a NODE column, or in json/yaml one object per
//! node holding its data or its error. A node that failed is also reported on stderr with its
//! gRPC code and message (a PermissionDenied carries apid's explanation), and the command then
//! exits non-zero.

use basalt_api::machine::{
    CpuStat, Hostname, LoadAvg, Memory, Mounts, Process, SystemStat, Version,
};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::Globals;
use crate::connect::{TargetArgs, connect, runtime};
use crate::output::{self, OutputArgs, OutputFormat, Render};
// The per-node result shape lives in `output`; re-exported here for the command modules that
// import it from this one.
pub(crate) use crate::output::{NodeTable, Replies, WithMetadata, replies};

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Show the client's version and each node's version, platform and mode.
    Version(VersionArgs),
    /// Show each node's hostname.
    Hostname(NodeArgs),
    /// Show memory usage in MB (from /proc/meminfo).
    Memory(NodeArgs),
    /// List processes, busiest (most CPU time) first.
    Processes(NodeArgs),
    /// List mounted filesystems with their sizes.
    Mounts(NodeArgs),
    /// Show the load averages.
    Loadavg(NodeArgs),
    /// Show CPU time, context switches and process counts (from /proc/stat).
    Stats(StatsArgs),
}

/// Flags shared by the node commands.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct VersionArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Print the client version only, without contacting any node.
    #[arg(long)]
    client: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// One row per CPU instead of the summary.
    #[arg(long)]
    per_cpu: bool,
}

pub(crate) fn run(cmd: NodeCommand, globals: &Globals) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        NodeCommand::Version(args) => {
            let client = ClientVersion::current();
            if args.client {
                return print_client_version(args.node.output.format, client);
            }
            let results = rt.block_on(async {
                anyhow::Ok(connect(globals, &args.node.target).await?.version().await)
            })?;
            let nodes = replies(results, |r| r.messages, VersionView::from);
            if args.node.output.format == OutputFormat::Table {
                println!("{}", client.line());
            }
            let report = VersionReport {
                client,
                nodes: Some(nodes),
            };
            output::print(args.node.output.format, &report)?;
            report.nodes.as_ref().map_or(Ok(()), Replies::finish)
        }
        NodeCommand::Hostname(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(connect(globals, &args.target).await?.hostname().await)
            })?;
            show(&args, replies(results, |r| r.messages, HostnameView::from))
        }
        NodeCommand::Memory(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(connect(globals, &args.target).await?.memory().await)
            })?;
            show(&args, replies(results, |r| r.messages, MemoryView::from))
        }
        NodeCommand::Processes(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(connect(globals, &args.target).await?.processes().await)
            })?;
            show(&args, replies(results, |r| r.messages, ProcessesView::from))
        }
        NodeCommand::Mounts(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(connect(globals, &args.target).await?.mounts().await)
            })?;
            show(&args, replies(results, |r| r.messages, MountsView::from))
        }
        NodeCommand::Loadavg(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(connect(globals, &args.target).await?.load_avg().await)
            })?;
            show(&args, replies(results, |r| r.messages, LoadAvgView::from))
        }
        NodeCommand::Stats(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(
                    connect(globals, &args.node.target)
                        .await?
                        .system_stat()
                        .await,
                )
            })?;
            if args.per_cpu {
                show(
                    &args.node,
                    replies(results, |r| r.messages, PerCpuView::from),
                )
            } else {
                show(
                    &args.node,
                    replies(results, |r| r.messages, StatsView::from),
                )
            }
        }
    }
}

output::with_metadata!(
    Version, Hostname, Memory, Process, Mounts, LoadAvg, SystemStat
);

/// Prints the replies, then reports failed nodes.
pub(crate) fn show<V: NodeTable + Serialize>(
    args: &NodeArgs,
    replies: Replies<V>,
) -> anyhow::Result<()> {
    output::print(args.output.format, &replies)?;
    replies.finish()
}

// === version ===

/// basaltctl's own version, as `version` prints it before the nodes'.
#[derive(Debug, Serialize)]
struct ClientVersion {
    tag: String,
    os: &'static str,
    arch: &'static str,
}

impl ClientVersion {
    /// The line `version` prints in table mode.
    fn line(&self) -> String {
        format!(
            "Client:  basaltctl {} ({}/{})",
            self.tag, self.os, self.arch
        )
    }

    fn current() -> Self {
        Self {
            tag: format!("v{}", env!("CARGO_PKG_VERSION")),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        }
    }
}

fn print_client_version(format: OutputFormat, client: ClientVersion) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => {
            println!("{}", client.line());
            Ok(())
        }
        OutputFormat::Json | OutputFormat::Yaml => output::print(
            format,
            &VersionReport {
                client,
                nodes: None,
            },
        ),
    }
}

/// `version` in json/yaml: `{client: {...}, nodes: [...]}` (no `nodes` with `--client`).
#[derive(Debug, Serialize)]
struct VersionReport {
    client: ClientVersion,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<Replies<VersionView>>,
}

impl Render for VersionReport {
    fn headers(&self) -> Vec<&'static str> {
        Replies::<VersionView>::table_headers()
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.nodes.as_ref().map(Render::rows).unwrap_or_default()
    }
}

#[derive(Debug, Serialize)]
struct VersionView {
    tag: String,
    sha: String,
    built: String,
    os: String,
    arch: String,
    platform: String,
    mode: String,
    rbac: bool,
}

impl From<Version> for VersionView {
    fn from(message: Version) -> Self {
        let version = message.version.unwrap_or_default();
        let platform = message.platform.unwrap_or_default();
        Self {
            tag: version.tag,
            sha: version.sha,
            built: version.built,
            os: version.os,
            arch: version.arch,
            platform: platform.name,
            mode: platform.mode,
            rbac: message.features.is_some_and(|features| features.rbac),
        }
    }
}

impl NodeTable for VersionView {
    fn headers() -> Vec<&'static str> {
        vec!["TAG", "SHA", "OS/ARCH", "PLATFORM", "MODE", "RBAC"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![
            self.tag.clone(),
            or_dash(&self.sha),
            format!("{}/{}", self.os, self.arch),
            or_dash(&self.platform),
            or_dash(&self.mode),
            self.rbac.to_string(),
        ]]
    }
}

// === hostname ===

#[derive(Debug, Serialize)]
struct HostnameView {
    hostname: String,
}

impl From<Hostname> for HostnameView {
    fn from(message: Hostname) -> Self {
        Self {
            hostname: message.hostname,
        }
    }
}

impl NodeTable for HostnameView {
    fn headers() -> Vec<&'static str> {
        vec!["HOSTNAME"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![self.hostname.clone()]]
    }
}

// === memory ===

/// /proc/meminfo values in kB, as the kernel and the API report them.
#[derive(Debug, Serialize)]
struct MemoryView {
    memtotal: u64,
    memfree: u64,
    memavailable: u64,
    buffers: u64,
    cached: u64,
    shmem: u64,
    swaptotal: u64,
    swapfree: u64,
}

impl From<Memory> for MemoryView {
    fn from(message: Memory) -> Self {
        let m = message.meminfo.unwrap_or_default();
        Self {
            memtotal: m.memtotal,
            memfree: m.memfree,
            memavailable: m.memavailable,
            buffers: m.buffers,
            cached: m.cached,
            shmem: m.shmem,
            swaptotal: m.swaptotal,
            swapfree: m.swapfree,
        }
    }
}

impl NodeTable for MemoryView {
    fn headers() -> Vec<&'static str> {
        vec![
            "TOTAL",
            "USED",
            "FREE",
            "SHARED",
            "BUFFERS",
            "CACHE",
            "AVAILABLE",
        ]
    }

    /// MB = kB / 1024, and USED = total − free − buffers − cache, as talosctl prints them.
    fn rows(&self) -> Vec<Vec<String>> {
        let used = self
            .memtotal
            .saturating_sub(self.memfree)
            .saturating_sub(self.buffers)
            .saturating_sub(self.cached);
        let mb = |kb: u64| (kb / 1024).to_string();
        vec![vec![
            mb(self.memtotal),
            mb(used),
            mb(self.memfree),
            mb(self.shmem),
            mb(self.buffers),
            mb(self.cached),
            mb(self.memavailable),
        ]]
    }
}

// === processes ===

#[derive(Debug, Serialize)]
struct ProcessesView {
    processes: Vec<ProcessView>,
}

/// One process; memory in bytes, CPU time in seconds.
#[derive(Debug, Serialize)]
struct ProcessView {
    pid: i32,
    ppid: i32,
    state: String,
    threads: i32,
    cpu_time: f64,
    virtual_memory: u64,
    resident_memory: u64,
    command: String,
    args: String,
}

impl From<Process> for ProcessesView {
    fn from(message: Process) -> Self {
        let mut processes: Vec<ProcessView> = message
            .processes
            .into_iter()
            .map(|p| ProcessView {
                pid: p.pid,
                ppid: p.ppid,
                state: p.state,
                threads: p.threads,
                cpu_time: p.cpu_time,
                virtual_memory: p.virtual_memory,
                resident_memory: p.resident_memory,
                command: p.command,
                args: p.args,
            })
            .collect();
        // Busiest first; ties by pid so the order is stable.
        processes.sort_by(|a, b| b.cpu_time.total_cmp(&a.cpu_time).then(a.pid.cmp(&b.pid)));
        Self { processes }
    }
}

impl NodeTable for ProcessesView {
    fn headers() -> Vec<&'static str> {
        vec![
            "PID", "STATE", "THREADS", "CPU-TIME", "VIRTMEM", "RESMEM", "COMMAND",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.processes
            .iter()
            .map(|p| {
                let command = if p.args.trim().is_empty() {
                    p.command.clone()
                } else {
                    p.args.trim().to_owned()
                };
                vec![
                    p.pid.to_string(),
                    p.state.clone(),
                    p.threads.to_string(),
                    format!("{:.2}", p.cpu_time),
                    human_bytes(p.virtual_memory),
                    human_bytes(p.resident_memory),
                    truncate(&command, 80),
                ]
            })
            .collect()
    }
}

// === mounts ===

#[derive(Debug, Serialize)]
struct MountsView {
    mounts: Vec<MountView>,
}

/// One filesystem; sizes in bytes.
#[derive(Debug, Serialize)]
struct MountView {
    filesystem: String,
    size: u64,
    available: u64,
    mounted_on: String,
}

impl From<Mounts> for MountsView {
    fn from(message: Mounts) -> Self {
        Self {
            mounts: message
                .stats
                .into_iter()
                .map(|m| MountView {
                    filesystem: m.filesystem,
                    size: m.size,
                    available: m.available,
                    mounted_on: m.mounted_on,
                })
                .collect(),
        }
    }
}

impl NodeTable for MountsView {
    fn headers() -> Vec<&'static str> {
        vec![
            "FILESYSTEM",
            "SIZE",
            "USED",
            "AVAILABLE",
            "USE%",
            "MOUNTED ON",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.mounts
            .iter()
            .map(|m| {
                let used = m.size.saturating_sub(m.available);
                let percent = if m.size == 0 {
                    "-".to_owned()
                } else {
                    // Display only; u64 → f64 loses nothing a percentage shows.
                    #[allow(clippy::cast_precision_loss)]
                    let ratio = used as f64 / m.size as f64;
                    format!("{:.0}%", ratio * 100.0)
                };
                vec![
                    m.filesystem.clone(),
                    human_bytes(m.size),
                    human_bytes(used),
                    human_bytes(m.available),
                    percent,
                    m.mounted_on.clone(),
                ]
            })
            .collect()
    }
}

// === loadavg ===

#[derive(Debug, Serialize)]
struct LoadAvgView {
    load1: f64,
    load5: f64,
    load15: f64,
}

impl From<LoadAvg> for LoadAvgView {
    fn from(message: LoadAvg) -> Self {
        Self {
            load1: message.load1,
            load5: message.load5,
            load15: message.load15,
        }
    }
}

impl NodeTable for LoadAvgView {
    fn headers() -> Vec<&'static str> {
        vec!["LOAD 1M", "LOAD 5M", "LOAD 15M"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![
            format!("{:.2}", self.load1),
            format!("{:.2}", self.load5),
            format!("{:.2}", self.load15),
        ]]
    }
}

// === stats ===

/// The /proc/stat summary; CPU times in seconds since boot, summed over all CPUs.
#[derive(Debug, Serialize)]
struct StatsView {
    boot_time: u64,
    cpus: usize,
    cpu_user: f64,
    cpu_nice: f64,
    cpu_system: f64,
    cpu_idle: f64,
    cpu_iowait: f64,
    cpu_steal: f64,
    context_switches: u64,
    processes_created: u64,
    processes_running: u64,
    processes_blocked: u64,
}

impl From<SystemStat> for StatsView {
    fn from(message: SystemStat) -> Self {
        let total = message.cpu_total.unwrap_or_default();
        Self {
            boot_time: message.boot_time,
            cpus: message.cpu.len(),
            cpu_user: total.user,
            cpu_nice: total.nice,
            cpu_system: total.system,
            cpu_idle: total.idle,
            cpu_iowait: total.iowait,
            cpu_steal: total.steal,
            context_switches: message.context_switches,
            processes_created: message.process_created,
            processes_running: message.process_running,
            processes_blocked: message.process_blocked,
        }
    }
}

impl NodeTable for StatsView {
    fn headers() -> Vec<&'static str> {
        vec![
            "CPUS",
            "USER",
            "SYSTEM",
            "IDLE",
            "IOWAIT",
            "CTX-SWITCHES",
            "FORKS",
            "RUNNING",
            "BLOCKED",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![
            self.cpus.to_string(),
            seconds(self.cpu_user + self.cpu_nice),
            seconds(self.cpu_system),
            seconds(self.cpu_idle),
            seconds(self.cpu_iowait),
            self.context_switches.to_string(),
            self.processes_created.to_string(),
            self.processes_running.to_string(),
            self.processes_blocked.to_string(),
        ]]
    }
}

/// `stats --per-cpu`: one row per CPU, times in seconds.
#[derive(Debug, Serialize)]
struct PerCpuView {
    cpus: Vec<CpuView>,
}

#[derive(Debug, Serialize)]
struct CpuView {
    cpu: usize,
    user: f64,
    nice: f64,
    system: f64,
    idle: f64,
    iowait: f64,
    irq: f64,
    soft_irq: f64,
    steal: f64,
}

impl CpuView {
    fn new(cpu: usize, stat: &CpuStat) -> Self {
        Self {
            cpu,
            user: stat.user,
            nice: stat.nice,
            system: stat.system,
            idle: stat.idle,
            iowait: stat.iowait,
            irq: stat.irq,
            soft_irq: stat.soft_irq,
            steal: stat.steal,
        }
    }
}

impl From<SystemStat> for PerCpuView {
    fn from(message: SystemStat) -> Self {
        Self {
            cpus: message
                .cpu
                .iter()
                .enumerate()
                .map(|(i, stat)| CpuView::new(i, stat))
                .collect(),
        }
    }
}

impl NodeTable for PerCpuView {
    fn headers() -> Vec<&'static str> {
        vec![
            "CPU", "USER", "NICE", "SYSTEM", "IDLE", "IOWAIT", "IRQ", "SOFTIRQ", "STEAL",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.cpus
            .iter()
            .map(|c| {
                vec![
                    c.cpu.to_string(),
                    seconds(c.user),
                    seconds(c.nice),
                    seconds(c.system),
                    seconds(c.idle),
                    seconds(c.iowait),
                    seconds(c.irq),
                    seconds(c.soft_irq),
                    seconds(c.steal),
                ]
            })
            .collect()
    }
}

// === formatting helpers ===

/// Seconds with two decimals and a unit, e.g. `1234.56s`.
fn seconds(value: f64) -> String {
    format!("{value:.2}s")
}

/// Binary units with one decimal: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Display only: f64 keeps every digit shown here.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(crate) fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// At most `max` characters, with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use basalt_api::common::Metadata;
    use basalt_api::machine::{MemInfo, MountStat, ProcessInfo};
    use basalt_client::NodeResult;
    use tonic::Status;

    use super::*;

    fn ok<T>(node: &str, value: T) -> NodeResult<T> {
        NodeResult {
            node: node.to_owned(),
            result: Ok(value),
        }
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn memory_is_printed_in_mb_like_talosctl() {
        let memory = Memory {
            metadata: None,
            meminfo: Some(MemInfo {
                memtotal: 8 * 1024 * 1024,
                memfree: 2 * 1024 * 1024,
                buffers: 1024 * 1024,
                cached: 1024 * 1024,
                memavailable: 5 * 1024 * 1024,
                ..MemInfo::default()
            }),
        };
        let replies = replies(vec![ok("n1", vec![memory])], |r| r, MemoryView::from);
        assert_eq!(
            replies.rows(),
            [["n1", "8192", "4096", "2048", "0", "1024", "1024", "5120"]]
        );
        assert!(replies.finish().is_ok());
    }

    #[test]
    fn failures_become_error_objects_and_fail_the_command() {
        let results = vec![
            ok(
                "n1",
                vec![Hostname {
                    metadata: None,
                    hostname: "node-1".into(),
                }],
            ),
            NodeResult {
                node: "n2".into(),
                result: Err(Status::permission_denied(
                    "needs os:admin; certificate has os:reader",
                )),
            },
        ];
        let replies = replies(results, |r| r, HostnameView::from);
        assert_eq!(replies.rows(), [["n1", "node-1"]]);
        let json = serde_json::to_value(&replies).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"node": "n1", "hostname": "node-1"},
                {"node": "n2", "error": {
                    "code": "PermissionDenied",
                    "message": "needs os:admin; certificate has os:reader"
                }}
            ])
        );
        let err = replies.finish().unwrap_err();
        assert_eq!(err.to_string(), "1 of 2 nodes failed: n2");
    }

    #[test]
    fn an_error_in_message_metadata_is_a_failure() {
        let message = Hostname {
            metadata: Some(Metadata {
                hostname: "n1".into(),
                error: "node unreachable".into(),
                status: None,
            }),
            hostname: String::new(),
        };
        let replies = replies(vec![ok("n1", vec![message])], |r| r, HostnameView::from);
        assert!(replies.rows().is_empty());
        assert!(replies.finish().is_err());
    }

    #[test]
    fn processes_are_sorted_by_cpu_time() {
        let process = |pid, cpu_time| ProcessInfo {
            pid,
            cpu_time,
            command: format!("p{pid}"),
            ..ProcessInfo::default()
        };
        let view = ProcessesView::from(Process {
            metadata: None,
            processes: vec![process(1, 0.5), process(2, 9.0), process(3, 2.0)],
        });
        let pids: Vec<i32> = view.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [2, 3, 1]);
    }

    #[test]
    fn mounts_show_used_and_percent() {
        let view = MountsView::from(Mounts {
            metadata: None,
            stats: vec![MountStat {
                filesystem: "/dev/sda1".into(),
                size: 4 * 1024 * 1024 * 1024,
                available: 1024 * 1024 * 1024,
                mounted_on: "/".into(),
            }],
        });
        assert_eq!(
            view.rows(),
            [["/dev/sda1", "4.0 GiB", "3.0 GiB", "1.0 GiB", "75%", "/"]]
        );
    }
}
