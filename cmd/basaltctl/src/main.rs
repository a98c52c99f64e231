//! basaltctl: the command-line client of basalt.
//!
//! It owns argument parsing, output formatting and local file handling. Certificates are made
//! through `basalt-pki` and every file layout comes from `basalt-config`; the CLI links no server
//! crate.

mod config_cmd;
mod duration;
mod gen_cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for bad flags or a bad input file (BSD EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "basaltctl",
    version,
    about = "Manage basalt nodes through their gRPC API"
)]
struct Cli {
    /// Client config file (talosconfig layout).
    #[arg(long, global = true, env = "BASALTCONFIG", value_name = "FILE")]
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
}

/// What every command gets besides its own flags.
#[derive(Debug)]
struct Globals {
    config_path: PathBuf,
    context: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let globals = match client_config_path(cli.config) {
        Ok(config_path) => Globals {
            config_path,
            context: cli.context,
        },
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match cli.command {
        Command::Gen(cmd) => gen_cmd::run(cmd, &globals),
        Command::Config(cmd) => config_cmd::run(cmd, &globals),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--config`, else `$BASALTCONFIG` (clap reads it), else `~/.basalt/config`.
fn client_config_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("HOME is not set; pass --config FILE"))?;
    Ok(basalt_config::client::default_path(&home))
}
