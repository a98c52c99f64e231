//! basaltctl: the command-line client of basalt.
//!
//! It owns argument parsing, output formatting and local file handling. Certificates are made
//! through `basalt-pki`, every file layout comes from `basalt-config`, and nodes are reached
//! through `basalt-client`; the CLI links no server crate. `cluster create` runs the daemons as
//! separate processes (found next to this executable), never in-process.

mod cert_cmd;
mod certs_cmd;
mod cluster_cmd;
mod config_apply_cmd;
mod config_cmd;
mod config_new;
mod connect;
mod duration;
mod files_cmd;
mod gen_cmd;
mod lifecycle_cmd;
mod node_cmd;
mod output;
mod rollout;
mod rotate_ca;
mod rotate_token;
mod services_cmd;
mod usage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a bad local input or flags that cannot work together (BSD EX_USAGE); see
/// `usage`.
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "basaltctl",
    version,
    about = "Manage basalt nodes through their gRPC API"
)]
struct Cli {
    /// Client config file (talosconfig layout) [default: $BASALTCONFIG, else
    /// ~/.basalt/config].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Context to use instead of the client config's current one.
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate secrets, node configs and client configs locally.
    #[command(subcommand)]
    Gen(gen_cmd::GenCommand),
    /// Inspect and edit the client config.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Run a one-node cluster on this machine.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    #[command(flatten)]
    Node(node_cmd::NodeCommand),
    #[command(flatten)]
    Files(files_cmd::FilesCommand),
    #[command(flatten)]
    Services(services_cmd::ServicesCommand),
    #[command(flatten)]
    Lifecycle(lifecycle_cmd::LifecycleCommand),
    #[command(flatten)]
    ConfigApply(config_apply_cmd::ConfigApplyCommand),
    /// Revoke client certificates and list the revoked ones.
    #[command(subcommand)]
    Cert(cert_cmd::CertCommand),
    /// Show the client's and the nodes' certificates with their expiry; warns within 30 days.
    Certs(certs_cmd::CertsArgs),
    /// Replace the OS CA on every node without downtime (accept, switch issuing, drop the old).
    ///
    /// The nodes are the context's (or -n) nodes, reached through its endpoints; without nodes,
    /// every endpoint is one node. Needs an os:admin client certificate.
    RotateCa(rotate_ca::RotateCaArgs),
    /// Replace the trustd join token without a restart; the old one stays accepted for
    /// --keep-old-for (default 24h). Prints the new token.
    ///
    /// Applies to the context's (or -n) nodes with mode NO_REBOOT; needs an os:admin client
    /// certificate (the config holds the token).
    RotateToken(rotate_token::RotateTokenArgs),
}

/// What every command gets besides its own flags.
#[derive(Debug)]
struct Globals {
    config_path: PathBuf,
    /// Whether `config_path` is the default one (so hints can leave out `--config`).
    config_is_default: bool,
    context: Option<String>,
    /// `$HOME`, read once here (nothing else reads the environment; empty counts as unset).
    home: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Set but empty is unset, as a shell's `VAR=` means.
    let env = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    let home = env("HOME").map(PathBuf::from);
    let config = cli
        .config
        .or_else(|| env("BASALTCONFIG").map(PathBuf::from));
    let config_is_default = config.is_none();
    let globals = match client_config_path(config, home.as_deref()) {
        Ok(config_path) => Globals {
            config_path,
            config_is_default,
            context: cli.context,
            home,
        },
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match cli.command {
        Command::Gen(cmd) => gen_cmd::run(cmd, &globals),
        Command::Config(cmd) => config_cmd::run(cmd, &globals),
        Command::Cluster(cmd) => cluster_cmd::run(cmd, &globals),
        Command::Node(cmd) => node_cmd::run(cmd, &globals),
        Command::Files(cmd) => files_cmd::run(cmd, &globals),
        Command::Services(cmd) => services_cmd::run(cmd, &globals),
        Command::Lifecycle(cmd) => lifecycle_cmd::run(cmd, &globals),
        Command::ConfigApply(cmd) => config_apply_cmd::run(cmd, &globals),
        Command::Cert(cmd) => cert_cmd::run(cmd, &globals),
        Command::Certs(args) => certs_cmd::run(args, &globals),
        Command::RotateCa(args) => rotate_ca::run(args, &globals),
        Command::RotateToken(args) => rotate_token::run(args, &globals),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // Refused because of how it was called (a bad input file, several nodes without
            // --yes).
            if usage::is_usage_error(&err) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `--config`, else `$BASALTCONFIG`, else `~/.basalt/config`.
fn client_config_path(flag: Option<PathBuf>, home: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path);
    }
    let home = home.ok_or_else(|| anyhow::anyhow!("HOME is not set; pass --config FILE"))?;
    Ok(basalt_config::client::default_path(home))
}
