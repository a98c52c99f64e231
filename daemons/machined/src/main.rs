//! The `machined` binary: flags → telemetry → config → `Server::bind` → serve until SIGTERM or
//! SIGINT. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use basalt_config::MachineConfig;
use basalt_daemon::{
    LogFormat, build_runtime, exit, parse_flags, shutdown_signal, start_telemetry,
};
use clap::Parser;
use machined::{
    AllowedUids, ApidLaunch, Backoff, Config, ConfigStore, ConfigStoreOptions, DenyRule,
    FilesPolicy, Mode, Server, TrustdLaunch, default_deny_rules,
};

/// The longest unix socket path the kernel accepts (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// basalt's machine daemon: the machine API on a unix socket; runs apid (and trustd on
/// control-plane nodes; a worker gets apid's certificate from trustd).
#[derive(Debug, Parser)]
#[command(name = "machined", version)]
struct Cli {
    /// The machine config (YAML, `version: v1alpha1`).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// machined's state directory (apid's credentials go to `<state>/apid/`, service output to
    /// `<state>/logs/`).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,

    /// The unix socket to serve on [default: <state>/run/machined.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// The apid executable [default: `apid` next to this executable].
    #[arg(long, value_name = "PATH")]
    apid_bin: Option<PathBuf>,

    /// The trustd executable, run on control-plane nodes [default: `trustd` next to this
    /// executable].
    #[arg(long, value_name = "PATH")]
    trustd_bin: Option<PathBuf>,

    /// Do not run trustd on a control-plane node.
    #[arg(long)]
    no_trustd: bool,

    /// Do not run apid (and so no trustd either: machined alone, e.g. for tests).
    #[arg(long)]
    no_apid: bool,

    /// A uid allowed to call machined's socket; repeat for several. Replaces the default
    /// (root and machined's own uid).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,

    /// A directory the file API (Read, List, DiskUsage, Copy) may reach; repeat for several.
    /// Replaces the default, `/`.
    #[arg(long = "files-root", value_name = "DIR")]
    files_root: Vec<PathBuf>,

    /// A path the file API refuses, with everything below it; repeat for several. Added to the
    /// built-in deny list (/dev, /proc/kcore, /proc/kmsg, other processes' memory and
    /// environment) and to the state directory and machine config file, which are always denied.
    #[arg(long = "files-deny", value_name = "PATH")]
    files_deny: Vec<PathBuf>,

    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "BASALT_LOG_FORMAT")]
    log_format: LogFormat,

    /// Load and validate the config, report every problem, and exit (0 if valid, 64 if not).
    #[arg(long)]
    check_config: bool,

    /// Lifetime of the node certificates machined issues or has trustd issue (apid's server
    /// and impersonator certificates, trustd's, workers'), e.g. `20s`; renewed at half-life.
    /// For tests: the default is 24h, as Talos.
    #[arg(long, value_name = "DURATION", value_parser = parse_cert_ttl, hide = true)]
    node_cert_ttl: Option<std::time::Duration>,
}

fn parse_cert_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = basalt_config::apid::parse_duration(text)?;
    if ttl < machined::apid::MIN_NODE_CERT_TTL {
        return Err(format!(
            "must be at least {}s",
            machined::apid::MIN_NODE_CERT_TTL.as_secs()
        ));
    }
    Ok(ttl)
}

fn main() -> ExitCode {
    let cli: Cli = match parse_flags() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let filter = std::env::var("BASALT_LOG").ok();
    // Held to the end of main: lines logged just before the exit are written.
    let _log = match start_telemetry("machined", cli.log_format, filter.as_deref()) {
        Ok(flush) => flush,
        Err(code) => return code,
    };

    let setup = match Setup::load(&cli) {
        Ok(setup) => setup,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "Invalid configuration");
            return ExitCode::from(exit::USAGE);
        }
    };
    if cli.check_config {
        tracing::info!(config = %cli.config.display(), "Configuration is valid");
        return ExitCode::SUCCESS;
    }
    if let Some(ttl) = cli.node_cert_ttl {
        machined::apid::set_node_cert_ttl(ttl);
        tracing::warn!(
            ttl_s = ttl.as_secs(),
            "Node certificates use a shortened lifetime"
        );
    }

    // One worker. machined's async work is API calls and supervision, and all of it waits on
    // I/O; whatever blocks or computes runs on the blocking pool. With a worker per core, a call
    // hops between workers, and every hop is a wake-up. On 2 cores (docs/BENCHMARKS.md), one
    // worker cut machined's CPU per call at 16 in flight from 27–30 to 16–20 µs. Throughput at
    // 16 in flight rose 36–50% direct and 1–35% through apid, and nothing measurable changed at
    // 1 in flight. A current-thread runtime did worse: it halved direct throughput at 16 in
    // flight.
    let runtime = match build_runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(1))
    {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run(setup.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "machined failed");
            ExitCode::FAILURE
        }
    }
}

/// Binds, then serves until SIGTERM or SIGINT.
async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal().context("install the SIGTERM and SIGINT handlers")?;
    // Orphans our services leave behind come to machined (PID 1 or a subreaper): reap them.
    machined::reap_orphans();
    let bound = Server::bind(config).await.context("start machined")?;
    bound.serve(shutdown).await.context("serve")
}

/// The validated result of flags + machine config.
struct Setup {
    config: Config,
}

impl Setup {
    /// Loads the machine config and checks everything `Server::bind` would otherwise trip over
    /// late: the socket path length and, when apid is to run, the CA in `machine.ca`.
    fn load(cli: &Cli) -> anyhow::Result<Self> {
        let mut machine = MachineConfig::load(&cli.config)?;
        let state = absolute(&cli.state)?;
        // The machine config store (<state>/config/) is seeded from --config once; from then on
        // its copy wins, and changes go through ApplyConfiguration. --check-config only
        // validates --config and touches no state.
        let config_store = if cli.check_config {
            None
        } else {
            let config_file = absolute(&cli.config)?;
            let seed = std::fs::read_to_string(&config_file)
                .with_context(|| format!("read {}", config_file.display()))?;
            let store = ConfigStore::open(
                &ConfigStoreOptions::new(&state),
                &seed,
                &format!("seeded from --config {}", config_file.display()),
            )
            .context("open the machine config store")?;
            let current = store.current();
            if current.config != machine {
                tracing::info!(
                    version = current.version,
                    "The machine config in the state directory differs from --config and wins; \
                     change it with `basaltctl apply-config`"
                );
            }
            machine = current.config.clone();
            Some(store)
        };
        let socket = match &cli.socket {
            Some(socket) => absolute(socket)?,
            None => state.join("run").join("machined.sock"),
        };
        let len = socket.as_os_str().len();
        anyhow::ensure!(
            len <= MAX_SOCKET_PATH,
            "socket path {} is {len} bytes long; unix socket paths are limited to \
             {MAX_SOCKET_PATH}",
            socket.display()
        );

        let mode = Mode::for_pid(std::process::id());
        let hostname = machine.hostname().map(str::to_owned);
        // Only PID 1 may reboot the machine; an ordinary process never touches the host.
        let host: Arc<dyn basalt_sys::Host> = match mode {
            Mode::Metal => Arc::new(basalt_sys::RealHost::new(hostname)),
            Mode::Container => Arc::new(basalt_sys::ContainerHost::new(hostname)),
        };
        let mut config = Config::new(socket, host);
        config.mode = mode;
        // The boot id lives in the state dir; Reset wipes it but keeps the config file.
        config.state_dir = Some(state.clone());
        config.machine = Some(machine.clone());
        config.machine_config_file = Some(absolute(&cli.config)?);
        config.config_store = config_store;
        if !cli.allow_uid.is_empty() {
            config.allowed_uids = AllowedUids::new(cli.allow_uid.iter().copied());
        }
        config.files = files_policy(cli)?;
        // `machine.services`, with their output in <state>/logs/<service>.log.
        config.services.services = machine.services().to_vec();
        config.services.log_dir = Some(state.join("logs"));
        if cli.no_apid {
            tracing::info!("apid disabled by --no-apid");
        } else {
            if machine.ca_key().is_some() {
                check_ca(&machine)?;
                if cli.no_trustd {
                    tracing::info!("trustd disabled by --no-trustd");
                } else {
                    config.trustd = Some(TrustdLaunch {
                        binary: match &cli.trustd_bin {
                            Some(path) => absolute(path)?,
                            None => sibling_bin("trustd")?,
                        },
                        backoff: Backoff::default(),
                    });
                }
            } else {
                basalt_pki::KeyAlgorithm::of_certificate_pem(
                    machine.ca_crt().as_str().context("machine.ca.crt")?,
                )
                .context("machine.ca.crt does not hold a usable CA certificate")?;
            }
            config.apid = Some(ApidLaunch {
                binary: match &cli.apid_bin {
                    Some(path) => absolute(path)?,
                    None => sibling_bin("apid")?,
                },
                machine,
                state_dir: state,
                backoff: Backoff::default(),
            });
        }
        Ok(Setup { config })
    }
}

/// The file API's policy: `--files-root` (default `/`), the built-in deny rules and
/// `--files-deny`. (`Server::bind` adds the state directory and the machine config file.)
fn files_policy(cli: &Cli) -> anyhow::Result<FilesPolicy> {
    let roots = if cli.files_root.is_empty() {
        vec![PathBuf::from("/")]
    } else {
        cli.files_root
            .iter()
            .map(|root| absolute(root))
            .collect::<anyhow::Result<_>>()?
    };
    let mut deny = default_deny_rules();
    for path in &cli.files_deny {
        deny.push(DenyRule::new(absolute(path)?, "denied by --files-deny")?);
    }
    Ok(FilesPolicy::new(roots, deny)?)
}

/// `machine.ca` must hold a CA certificate and its key that basalt-pki accepts.
fn check_ca(machine: &MachineConfig) -> anyhow::Result<()> {
    let crt = machine.ca_crt().as_str().context("machine.ca.crt")?;
    let key = machine
        .ca_key()
        .context("machine.ca.key is missing")?
        .as_str()
        .context("machine.ca.key")?;
    basalt_pki::CertificateAuthority::from_pem(crt, key)
        .context("machine.ca does not hold a usable CA certificate and key")?;
    Ok(())
}

/// `name` (`apid`, `trustd`) in the directory of this executable.
fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find machined's own executable")?;
    let dir = exe
        .parent()
        .context("machined's executable has no parent directory")?;
    Ok(dir.join(name))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolve {}", path.display()))
}
