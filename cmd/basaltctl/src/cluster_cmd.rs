//! `basaltctl cluster create|show|destroy`: a local cluster on this machine, for trying basalt.
//!
//! `create` generates secrets, a control-plane machine config and an admin client config into
//! a state directory, starts `machined` detached (its own process group, output to
//! `machined.log`, pid in `machined.pid`; machined in turn runs apid and trustd), waits until
//! `Version` answers through apid with the admin certificate, and merges a context named after
//! the cluster into the client config (its endpoints: the control plane only). With
//! `--workers N` it then starts N workers, each with its own state directory and apid on its
//! own loopback address (127.0.0.11, .12, … port 50000); a worker's machined gets apid's
//! certificate from the control plane's trustd, and `create` waits until each worker's apid
//! answers `Version` directly. `show` lists the nodes; `destroy` stops them all and undoes
//! everything.
//!
//! State directory layout (default `~/.basalt/clusters/<name>`):
//!
//! | path | what |
//! | --- | --- |
//! | `secrets.yaml` | the cluster's CAs and join token (0600) |
//! | `controlplane.yaml` | machined's machine config (0600) |
//! | `basaltconfig` | the admin client config, also merged into the user's (0600) |
//! | `machined.pid` / `machined.log` | the detached machined |
//! | `machined/` | machined's own state (apid's certificate and config, its socket) |
//! | `workers/worker-<i>/` | worker i: `worker.yaml`, `machined.pid`, `machined.log`, `machined/` |

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use basalt_authz::{Role, RoleSet};
use basalt_client::{Client, ConnectOptions, Target, parse_endpoints};
use basalt_config::fs::{Overwrite, ensure_private_dir, write_atomic};
use basalt_config::machine::RawListener;
use basalt_config::{
    ClientConfig, MachineConfig, MachineType, RawMachineConfig, SecretsBundle, TRUSTD_PORT,
};
use basalt_pki::KeyAlgorithm;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::gen_cmd::{client_config, default_context_name, new_bundle, write_private};
use crate::output::{self, OutputArgs, Render};
use crate::{Globals, duration};

/// Where apid listens unless `--listen` says otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:50000";
/// Lifetime of the admin certificate in the cluster's context (Talos's default: one year).
const ADMIN_CERT_TTL: Duration = Duration::from_secs(8760 * 3600);
/// How long machined gets to stop after SIGTERM before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// Lines of machined.log shown when the cluster does not come up.
const LOG_TAIL_LINES: usize = 40;

const SECRETS_FILE: &str = "secrets.yaml";
const MACHINE_CONFIG_FILE: &str = "controlplane.yaml";
const CLIENT_CONFIG_FILE: &str = "basaltconfig";
const PID_FILE: &str = "machined.pid";
const LOG_FILE: &str = "machined.log";
const MACHINED_STATE_DIR: &str = "machined";
const WORKERS_DIR: &str = "workers";
const WORKER_CONFIG_FILE: &str = "worker.yaml";
/// apid's port on every worker (each worker has its own loopback address).
const WORKER_APID_PORT: u16 = 50000;
/// Worker i (from 0) listens on 127.0.0.(FIRST_WORKER_OCTET + i).
const FIRST_WORKER_OCTET: u8 = 11;
/// Most workers `--workers` accepts (127.0.0.11 … 127.0.0.110).
const MAX_WORKERS: u8 = 100;

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Start a local cluster (one control plane, `--workers N` workers) and add a context for it.
    Create(CreateArgs),
    /// List a local cluster's nodes: name, role, address and whether machined runs.
    Show(ShowArgs),
    /// Stop a local cluster, remove its state and its context.
    Destroy(DestroyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Cluster name: the context name and the default state directory's name.
    #[arg(long, default_value = "dev")]
    name: String,
    /// State directory [default: ~/.basalt/clusters/<name>].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Address apid listens on. If a loopback address's port is taken, another 127.0.0.x
    /// address (or a free port) is used instead, and said so.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The machined executable [default: machined next to basaltctl].
    #[arg(long, value_name = "PATH")]
    machined_bin: Option<PathBuf>,
    /// How long to wait for each node to answer (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    wait: Duration,
    /// Worker nodes to start besides the control plane; worker i listens on 127.0.0.(10+i)
    /// port 50000 and joins through the control plane's trustd.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_WORKERS)))]
    workers: u8,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// Cluster name.
    #[arg(long, default_value = "dev")]
    name: String,
    /// State directory [default: ~/.basalt/clusters/<name>].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DestroyArgs {
    /// Cluster name.
    #[arg(long, default_value = "dev")]
    name: String,
    /// State directory [default: ~/.basalt/clusters/<name>].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

pub(crate) fn run(cmd: ClusterCommand, globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Create(args) => create(&args, globals),
        ClusterCommand::Show(args) => show(&args, globals),
        ClusterCommand::Destroy(args) => destroy(&args, globals),
    }
}

// === create ===

fn create(args: &CreateArgs, globals: &Globals) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let state = state_dir(args.state.as_deref(), &args.name, globals)?;
    prepare_state_dir(&state, &args.name)?;
    let machined = machined_bin(args.machined_bin.as_deref())?;

    let listen = choose_listen(args.listen)?;
    let bundle = new_bundle(KeyAlgorithm::Ed25519)?;
    let machine = machine_config(&bundle, &args.name, listen)?;
    let admin = RoleSet::from([Role::Admin]);
    let client = client_config(
        &bundle,
        &admin,
        ADMIN_CERT_TTL,
        &args.name,
        &default_context_name(&admin, &args.name),
        vec![listen.to_string()],
    )?;

    ensure_private_dir(&state)?;
    write_private(
        &state.join(SECRETS_FILE),
        bundle.to_yaml()?.as_bytes(),
        true,
    )?;
    write_private(
        &state.join(MACHINE_CONFIG_FILE),
        machine.to_yaml()?.as_bytes(),
        true,
    )?;
    write_private(
        &state.join(CLIENT_CONFIG_FILE),
        client.to_yaml()?.as_bytes(),
        true,
    )?;

    let mut child = start_machined(&machined, &state, MACHINE_CONFIG_FILE)?;
    let pid = child.id();
    eprintln!(
        "started machined (pid {pid}), waiting up to {}s for apid on {listen}",
        args.wait.as_secs()
    );

    let (_, context) = client.current()?;
    let target = Target::from_context(context).context("the generated client config")?;
    let ready = crate::connect::runtime()?.block_on(wait_ready(&mut child, &target, args.wait));
    let tag = match ready {
        Ok(tag) => tag,
        Err(err) => {
            print_log_tail(&state.join(LOG_FILE));
            if let Err(stop_err) = stop(pid) {
                eprintln!("warning: {stop_err:#}");
            }
            // Reap our child so it does not linger as a zombie until basaltctl exits.
            let _ = child.wait();
            let _ = std::fs::remove_file(state.join(PID_FILE));
            return Err(err.context(format!(
                "cluster {:?} did not come up; its state is kept in {} (remove it with \
                 basaltctl cluster destroy{})",
                args.name,
                state.display(),
                name_flags(&args.name, args.state.as_deref())
            )));
        }
    };

    let workers = match start_workers(args, &machined, &state, &bundle, &machine, &target) {
        Ok(workers) => workers,
        Err(err) => {
            if let Err(stop_err) = stop(pid) {
                eprintln!("warning: {stop_err:#}");
            }
            let _ = child.wait();
            let _ = std::fs::remove_file(state.join(PID_FILE));
            return Err(err.context(format!(
                "cluster {:?} did not come up; its state is kept in {} (remove it with \
                 basaltctl cluster destroy{})",
                args.name,
                state.display(),
                name_flags(&args.name, args.state.as_deref())
            )));
        }
    };

    let replaced = merge_context(globals, &args.name, client)?;
    print_next_steps(
        args,
        globals,
        &state,
        (listen, pid),
        &tag,
        replaced,
        &workers,
    );
    Ok(())
}

/// Starts `args.workers` workers one after the other, each waited for until its apid answers
/// Version (directly at its address, with the admin certificate). On a failure every worker
/// started so far is stopped again. Returns (name, apid address, machined pid) per worker.
fn start_workers(
    args: &CreateArgs,
    machined: &Path,
    state: &Path,
    bundle: &SecretsBundle,
    control_plane: &MachineConfig,
    admin: &Target,
) -> anyhow::Result<Vec<(String, SocketAddr, u32)>> {
    let mut started: Vec<(String, SocketAddr, u32)> = Vec::new();
    let result = (|| {
        for index in 0..args.workers {
            let name = format!("worker-{}", u32::from(index) + 1);
            let dir = state.join(WORKERS_DIR).join(&name);
            ensure_private_dir(&dir)?;
            let requested = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, FIRST_WORKER_OCTET + index)),
                WORKER_APID_PORT,
            );
            let listen = choose_listen(requested)?;
            let machine = worker_config(bundle, &args.name, control_plane, listen)?;
            write_private(
                &dir.join(WORKER_CONFIG_FILE),
                machine.to_yaml()?.as_bytes(),
                true,
            )?;
            let mut child = start_machined(machined, &dir, WORKER_CONFIG_FILE)?;
            let pid = child.id();
            started.push((name.clone(), listen, pid));
            eprintln!(
                "started {name} (machined pid {pid}), waiting up to {}s for its apid on {listen}",
                args.wait.as_secs()
            );
            let endpoints =
                parse_endpoints(&[listen.to_string()]).context("the worker's apid address")?;
            let target = admin
                .clone()
                .with_endpoints(endpoints)
                .context("a target for the worker")?;
            let ready =
                crate::connect::runtime()?.block_on(wait_ready(&mut child, &target, args.wait));
            if let Err(err) = ready {
                print_log_tail(&dir.join(LOG_FILE));
                return Err(err.context(format!("{name} did not come up")));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(started),
        Err(err) => {
            for (name, _, pid) in &started {
                if let Err(stop_err) = stop(*pid) {
                    eprintln!("warning: stop {name}: {stop_err:#}");
                }
                let _ = std::fs::remove_file(state.join(WORKERS_DIR).join(name).join(PID_FILE));
            }
            Err(err)
        }
    }
}

/// A worker's machine config: same secrets (the CA without its key, the join token), apid on
/// `listen`, and `cluster.endpoints` = the control plane's trustd.
fn worker_config(
    bundle: &SecretsBundle,
    name: &str,
    control_plane: &MachineConfig,
    listen: SocketAddr,
) -> anyhow::Result<MachineConfig> {
    let trustd = control_plane.trustd_listen();
    let mut raw =
        RawMachineConfig::generate(bundle, name, &trustd.to_string(), MachineType::Worker);
    raw.machine.apid = Some(RawListener {
        listen: Some(listen.to_string()),
        ..RawListener::default()
    });
    MachineConfig::try_from(raw).context("build the worker machine config")
}

/// The cluster name becomes a directory name and a context name: keep it to `[a-z0-9-]`
/// (the machine config's validation checks the rest, e.g. the length).
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !valid {
        bail!("invalid cluster name {name:?}: use lower-case letters, digits and '-'");
    }
    Ok(())
}

/// `--state`, else `~/.basalt/clusters/<name>`; always absolute, because machined's command
/// line is later matched against it.
fn state_dir(flag: Option<&Path>, name: &str, globals: &Globals) -> anyhow::Result<PathBuf> {
    let dir = match flag {
        Some(dir) => dir.to_owned(),
        None => globals
            .home
            .as_ref()
            .context("HOME is not set; pass --state DIR")?
            .join(".basalt")
            .join("clusters")
            .join(name),
    };
    std::path::absolute(&dir).with_context(|| format!("resolve {}", dir.display()))
}

/// Refuses a directory whose machined still runs or that is not a cluster state directory;
/// clears a stale one.
fn prepare_state_dir(state: &Path, name: &str) -> anyhow::Result<()> {
    if !state.exists() {
        return Ok(());
    }
    if let Some(pid) = read_pid(state)?
        && basalt_sys::is_running(pid)
        && is_our_machined(pid, state)
    {
        bail!(
            "cluster {name:?} is already running (machined pid {pid}, state {}); destroy it \
             first with basaltctl cluster destroy",
            state.display()
        );
    }
    for dir in worker_dirs(state) {
        if let Some(pid) = read_pid(&dir)?
            && basalt_sys::is_running(pid)
            && is_our_machined(pid, &dir)
        {
            bail!(
                "a worker of cluster {name:?} is still running (machined pid {pid}, state {}); \
                 destroy the cluster first with basaltctl cluster destroy",
                dir.display()
            );
        }
    }
    if !looks_like_state_dir(state)? {
        bail!(
            "{} exists and is not a basalt cluster state directory; choose another --state",
            state.display()
        );
    }
    std::fs::remove_dir_all(state)
        .with_context(|| format!("remove the stale state directory {}", state.display()))?;
    eprintln!("removed stale state directory {}", state.display());
    Ok(())
}

/// Empty, or holding what `create` writes.
fn looks_like_state_dir(state: &Path) -> anyhow::Result<bool> {
    let mut entries =
        std::fs::read_dir(state).with_context(|| format!("read {}", state.display()))?;
    if entries.next().is_none() {
        return Ok(true);
    }
    Ok(state.join(MACHINE_CONFIG_FILE).is_file() || state.join(PID_FILE).is_file())
}

/// `--machined-bin`, else `machined` next to this executable.
fn machined_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("find basaltctl's own path")?
            .with_file_name("machined"),
    };
    if !path.is_file() {
        bail!(
            "machined not found at {}; build it (cargo build -p machined -p apid) or pass \
             --machined-bin",
            path.display()
        );
    }
    Ok(path)
}

/// `requested` if it is free; for a loopback address whose port is taken, the first free
/// 127.0.0.x with the same port, else a free port on the requested address.
fn choose_listen(requested: SocketAddr) -> anyhow::Result<SocketAddr> {
    if is_free(requested) {
        return Ok(requested);
    }
    if !requested.ip().is_loopback() {
        bail!("{requested} is in use; pass --listen with a free address");
    }
    let port = requested.port();
    let other_loopback = (1..=254u8)
        .map(|last| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port))
        .filter(|addr| *addr != requested)
        .find(|addr| is_free(*addr));
    let chosen = match other_loopback {
        Some(addr) => addr,
        None => TcpListener::bind(SocketAddr::new(requested.ip(), 0))
            .and_then(|listener| listener.local_addr())
            .with_context(|| format!("find a free port on {}", requested.ip()))?,
    };
    eprintln!("{requested} is in use; apid will listen on {chosen}");
    Ok(chosen)
}

/// Whether a listener could bind `addr` right now (it is closed again at once).
fn is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// The control-plane machine config: apid on `listen`, which is also the cluster endpoint
/// (machined puts the listen address and the endpoints into apid's certificate SANs); trustd
/// on the same address, so nothing listens on every interface (port 50001, or a free one when
/// that is taken; the workers' configs point at whichever it is).
fn machine_config(
    bundle: &SecretsBundle,
    name: &str,
    listen: SocketAddr,
) -> anyhow::Result<MachineConfig> {
    let mut raw =
        RawMachineConfig::generate(bundle, name, &listen.to_string(), MachineType::ControlPlane);
    let trustd_port = if listen.port() == TRUSTD_PORT {
        TRUSTD_PORT + 1
    } else {
        TRUSTD_PORT
    };
    let mut trustd = SocketAddr::new(listen.ip(), trustd_port);
    // Another cluster's trustd may hold the port on this address: workers must reach ours.
    if !is_free(trustd)
        && let Ok(free) = TcpListener::bind(SocketAddr::new(listen.ip(), 0))
            .and_then(|listener| listener.local_addr())
        && free != listen
    {
        trustd = free;
    }
    raw.machine.apid = Some(RawListener {
        listen: Some(listen.to_string()),
        ..RawListener::default()
    });
    raw.machine.trustd = Some(RawListener {
        listen: Some(trustd.to_string()),
        ..RawListener::default()
    });
    MachineConfig::try_from(raw).context("build the machine config")
}

/// Starts machined detached: its own process group (so a terminal's Ctrl-C does not reach it
/// and `destroy` can stop it together with apid), output appended to machined.log.
fn start_machined(machined: &Path, state: &Path, config_file: &str) -> anyhow::Result<Child> {
    let log_path = state.join(LOG_FILE);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let child = Command::new(machined)
        .arg("--config")
        .arg(state.join(config_file))
        .arg("--state")
        .arg(state.join(MACHINED_STATE_DIR))
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicate the log file handle")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", machined.display()))?;
    write_atomic(
        &state.join(PID_FILE),
        format!("{}\n", child.id()).as_bytes(),
        0o644,
        Overwrite::Allow,
    )
    .context("write machined.pid")?;
    Ok(child)
}

/// Polls `Version` through apid until it answers, machined exits, or `wait` passes. Returns
/// the node's version tag.
async fn wait_ready(child: &mut Child, target: &Target, wait: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + wait;
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Some(Duration::from_secs(5)),
    };
    loop {
        if let Some(status) = child.try_wait().context("check on machined")? {
            bail!("machined exited early ({status})");
        }
        let err = match probe(target, &options).await {
            Ok(tag) => return Ok(tag),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            bail!(
                "apid did not answer Version within {}s; last error: {err:#}",
                wait.as_secs()
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

async fn probe(target: &Target, options: &ConnectOptions) -> anyhow::Result<String> {
    let client = Client::connect(target, options).await?;
    let reply = client
        .version()
        .await
        .into_iter()
        .next()
        .context("no reply")?;
    let response = reply
        .result
        .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?;
    let tag = response
        .messages
        .into_iter()
        .next()
        .and_then(|message| message.version)
        .map(|version| version.tag)
        .unwrap_or_default();
    Ok(tag)
}

fn print_log_tail(path: &Path) {
    let Ok(file) = File::open(path) else {
        eprintln!("(no {} to show)", path.display());
        return;
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    eprintln!("--- last lines of {} ---", path.display());
    for line in &lines[start..] {
        eprintln!("{line}");
    }
    eprintln!("---");
}

/// Adds the cluster's context to the user's client config and makes it current. A context of
/// the same name is replaced: it belonged to an earlier cluster of that name, whose CA is gone.
/// Returns whether one was replaced.
fn merge_context(globals: &Globals, name: &str, incoming: ClientConfig) -> anyhow::Result<bool> {
    let path = &globals.config_path;
    let mut config = ClientConfig::load_or_default(path)
        .with_context(|| format!("load client config {}", path.display()))?;
    let replaced = config.contexts.remove(name).is_some();
    config.merge(incoming);
    config
        .save(path)
        .with_context(|| format!("save client config {}", path.display()))?;
    Ok(replaced)
}

fn print_next_steps(
    args: &CreateArgs,
    globals: &Globals,
    state: &Path,
    (listen, pid): (SocketAddr, u32),
    tag: &str,
    replaced: bool,
    workers: &[(String, SocketAddr, u32)],
) {
    let config_flag = if globals.config_is_default {
        String::new()
    } else {
        format!(" --config {}", globals.config_path.display())
    };
    let ctl = format!("basaltctl{config_flag} --context {}", args.name);
    println!("cluster {:?} is up: apid {tag} on {listen}", args.name);
    println!(
        "  machined pid {pid}, log {}",
        state.join(LOG_FILE).display()
    );
    for (name, addr, pid) in workers {
        println!("  {name}: apid on {addr}, machined pid {pid} (certificate from trustd)");
    }
    println!(
        "  context {:?} {} in {} and made current",
        args.name,
        if replaced { "replaced" } else { "added" },
        globals.config_path.display()
    );
    println!();
    println!("Try:");
    for command in ["version", "memory", "processes", "mounts", "stats"] {
        println!("  {ctl} {command}");
    }
    println!(
        "  basaltctl gen client-config --with-secrets {} --roles os:reader -e {listen} -o reader.config",
        state.join(SECRETS_FILE).display()
    );
    println!();
    println!(
        "Destroy it with: basaltctl{config_flag} cluster destroy{}",
        name_flags(&args.name, args.state.as_deref())
    );
}

/// `--name`/`--state` as they must be repeated to `destroy`.
fn name_flags(name: &str, state: Option<&Path>) -> String {
    let mut flags = format!(" --name {name}");
    if let Some(state) = state {
        flags.push_str(&format!(" --state {}", state.display()));
    }
    flags
}

// === destroy ===

fn destroy(args: &DestroyArgs, globals: &Globals) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let state = state_dir(args.state.as_deref(), &args.name, globals)?;
    let mut endpoint = None;
    let existed = state.exists();
    if existed {
        for dir in worker_dirs(&state) {
            stop_node(&dir, "worker")?;
        }
        if let Some(pid) = read_pid(&state)? {
            if !basalt_sys::is_running(pid) {
                eprintln!("machined (pid {pid}) is not running");
            } else if is_our_machined(pid, &state) {
                stop(pid)?;
                eprintln!("stopped machined (pid {pid})");
            } else {
                eprintln!(
                    "warning: pid {pid} in {} is not this cluster's machined; leaving it alone",
                    state.join(PID_FILE).display()
                );
            }
        }
        endpoint = MachineConfig::load(&state.join(MACHINE_CONFIG_FILE))
            .ok()
            .map(|machine| machine.apid_listen().to_string());
        if !looks_like_state_dir(&state)? {
            bail!(
                "{} is not a basalt cluster state directory; not removing it",
                state.display()
            );
        }
        std::fs::remove_dir_all(&state).with_context(|| format!("remove {}", state.display()))?;
        eprintln!("removed {}", state.display());
    }

    let removed_context = remove_context(globals, &args.name, endpoint.as_deref())?;
    if !existed && !removed_context {
        bail!(
            "no cluster {:?}: {} does not exist",
            args.name,
            state.display()
        );
    }
    Ok(())
}

/// Removes context `name` when it points at `endpoint` (the destroyed cluster's apid), so a
/// user's unrelated context that happens to share the name survives. Returns whether it did.
fn remove_context(globals: &Globals, name: &str, endpoint: Option<&str>) -> anyhow::Result<bool> {
    let path = &globals.config_path;
    let mut config = ClientConfig::load_or_default(path)
        .with_context(|| format!("load client config {}", path.display()))?;
    let Some(context) = config.contexts.get(name) else {
        return Ok(false);
    };
    let ours = endpoint.is_some_and(|endpoint| context.endpoints == [endpoint]);
    if !ours {
        eprintln!(
            "context {name:?} in {} does not point at this cluster; left in place",
            path.display()
        );
        return Ok(false);
    }
    config.contexts.remove(name);
    if config.context == name {
        config.context = String::new();
    }
    config
        .save(path)
        .with_context(|| format!("save client config {}", path.display()))?;
    eprintln!("removed context {name:?} from {}", path.display());
    Ok(true)
}

/// Stops the machined of the node in `dir` if it runs (and is really that node's).
fn stop_node(dir: &Path, role: &str) -> anyhow::Result<()> {
    if let Some(pid) = read_pid(dir)?
        && basalt_sys::is_running(pid)
        && is_our_machined(pid, dir)
    {
        stop(pid)?;
        eprintln!("stopped {role} machined (pid {pid}) of {}", dir.display());
    }
    Ok(())
}

/// The workers' directories (`workers/worker-<i>`), in order.
fn worker_dirs(state: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state.join(WORKERS_DIR)) else {
        return Vec::new();
    };
    let mut dirs: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let index = name.to_str()?.strip_prefix("worker-")?.parse().ok()?;
            Some((index, entry.path()))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().map(|(_, dir)| dir).collect()
}

// === show ===

/// One node of a local cluster, as `cluster show` prints it.
#[derive(Debug, Serialize)]
struct NodeRow {
    name: String,
    role: &'static str,
    address: String,
    state: &'static str,
    pid: Option<u32>,
}

#[derive(Debug, Serialize)]
struct NodeRows {
    cluster: String,
    nodes: Vec<NodeRow>,
}

impl Render for NodeRows {
    fn headers(&self) -> Vec<&'static str> {
        vec!["NAME", "ROLE", "ADDRESS", "STATE", "PID"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .map(|node| {
                vec![
                    node.name.clone(),
                    node.role.to_owned(),
                    node.address.clone(),
                    node.state.to_owned(),
                    node.pid.map(|pid| pid.to_string()).unwrap_or_default(),
                ]
            })
            .collect()
    }
}

fn node_row(dir: &Path, name: String, role: &'static str, config_file: &str) -> NodeRow {
    let address = MachineConfig::load(&dir.join(config_file))
        .map(|machine| machine.apid_listen().to_string())
        .unwrap_or_default();
    let pid = read_pid(dir).ok().flatten();
    let running = pid.is_some_and(|pid| basalt_sys::is_running(pid) && is_our_machined(pid, dir));
    NodeRow {
        name,
        role,
        address,
        state: if running { "running" } else { "stopped" },
        pid: pid.filter(|_| running),
    }
}

fn show(args: &ShowArgs, globals: &Globals) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let state = state_dir(args.state.as_deref(), &args.name, globals)?;
    if !state.join(MACHINE_CONFIG_FILE).is_file() {
        bail!(
            "no cluster {:?}: {} holds no {MACHINE_CONFIG_FILE}",
            args.name,
            state.display()
        );
    }
    let mut nodes = vec![node_row(
        &state,
        "controlplane-1".to_owned(),
        "controlplane",
        MACHINE_CONFIG_FILE,
    )];
    for dir in worker_dirs(&state) {
        let name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        nodes.push(node_row(&dir, name, "worker", WORKER_CONFIG_FILE));
    }
    output::print(
        args.output.format,
        &NodeRows {
            cluster: args.name.clone(),
            nodes,
        },
    )
}

// === the detached machined ===

fn read_pid(state: &Path) -> anyhow::Result<Option<u32>> {
    let path = state.join(PID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{} does not hold a pid", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("read {}", path.display())),
    }
}

/// Whether `pid` is the machined started for `state` (its `--state` argument), not a process
/// that reused the PID after machined exited.
fn is_our_machined(pid: u32, state: &Path) -> bool {
    let expected = state.join(MACHINED_STATE_DIR);
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline
        .split(|byte| *byte == 0)
        .any(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)) == expected)
}

/// SIGTERM to machined (it stops apid itself), then after [`STOP_GRACE`] SIGKILL to its whole
/// process group, which also takes an apid left behind by a machined that died.
fn stop(pid: u32) -> anyhow::Result<()> {
    basalt_sys::terminate(pid).with_context(|| format!("stop machined (pid {pid})"))?;
    let deadline = Instant::now() + STOP_GRACE;
    while basalt_sys::is_running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    basalt_sys::kill_process_group(pid)
        .with_context(|| format!("kill machined's process group {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while basalt_sys::is_running(pid) {
        if Instant::now() >= deadline {
            bail!("machined (pid {pid}) is still running after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_path_safe() {
        for good in ["dev", "a", "test-1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "Dev", "-x", "a/b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_taken_loopback_port_moves_to_another_loopback_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let chosen = choose_listen(addr).unwrap();
        assert_ne!(chosen, addr);
        assert!(chosen.ip().is_loopback());
        assert!(is_free(chosen));
    }

    #[test]
    fn machine_config_listens_where_asked() {
        let bundle = new_bundle(KeyAlgorithm::Ed25519).unwrap();
        let listen: SocketAddr = "127.0.0.7:50000".parse().unwrap();
        let machine = machine_config(&bundle, "dev", listen).unwrap();
        assert_eq!(machine.apid_listen(), listen);
        assert_eq!(machine.trustd_listen(), "127.0.0.7:50001".parse().unwrap());
        assert_eq!(machine.machine_type(), MachineType::ControlPlane);
        assert_eq!(machine.endpoints()[0].to_string(), "127.0.0.7:50000");
    }

    #[test]
    fn only_empty_or_cluster_directories_count_as_state() {
        let dir = tempfile::tempdir().unwrap();
        assert!(looks_like_state_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        assert!(!looks_like_state_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join(PID_FILE), "1\n").unwrap();
        assert!(looks_like_state_dir(dir.path()).unwrap());
    }
}
