//! The `trustd` binary: flags → telemetry → config → `Server::bind` → serve until a signal.
//!
//! Exit codes: 0 after a clean shutdown, 64 (EX_USAGE) for bad flags, an invalid config or
//! unusable credentials, CA or journal, 1 for any other failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use basalt_config::TrustdConfig;
use basalt_daemon::{
    LogFormat, build_runtime, check_config_exit, exit, parse_flags, shutdown_signal,
    start_telemetry,
};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};
use trustd::{Error, Server};

/// basalt's node certificate signer: join-token authentication, per-peer limits, CSR signing
/// under a fixed policy, and an issuance journal.
#[derive(Debug, Parser)]
#[command(name = "trustd", version)]
struct Args {
    /// The trustd config file (YAML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Validate the config and the files it names, then exit (0 = ok, 64 = problems).
    #[arg(long)]
    check_config: bool,

    /// Log output format. The filter comes from BASALT_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, env = "BASALT_LOG_FORMAT")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let args: Args = match parse_flags() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let filter = std::env::var("BASALT_LOG").ok();
    // Held to the end of main: lines logged just before the exit are written.
    let _log = match start_telemetry("trustd", args.log_format, filter.as_deref()) {
        Ok(flush) => flush,
        Err(code) => return code,
    };
    basalt_pki::install_crypto_provider();

    let config = match TrustdConfig::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("trustd: {:#}", anyhow::Error::from(err));
            return ExitCode::from(exit::USAGE);
        }
    };
    if args.check_config {
        return check_config_exit("trustd", &args.config, trustd::check_config(&config));
    }

    // Talos runs trustd with GOMAXPROCS 2: signing is short CPU work, two threads are plenty.
    let runtime = match build_runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2))
    {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run(config, args.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let usage = matches!(
                err.downcast_ref::<Error>(),
                Some(
                    Error::LoadCredentials(_)
                        | Error::ReadFile { .. }
                        | Error::LoadCa { .. }
                        | Error::LoadAcceptedCas { .. }
                        | Error::AcceptedCaNotACa { .. }
                        | Error::OpenJournal { .. }
                )
            );
            error!("{err:#}");
            eprintln!("trustd: {err:#}");
            if usage {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(config: TrustdConfig, config_path: PathBuf) -> anyhow::Result<()> {
    let shutdown = shutdown_signal().context("install the SIGTERM and SIGINT handlers")?;
    let mut hangup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;

    // Token and CA changes in the config file (machined rewrites it on rotation) are reloaded.
    let bound = Server::bind(config).await?.watch_config_file(config_path);
    info!(addr = %bound.local_addr(), "Listening");

    let reload = bound.reload_handle();
    let trust = bound.trust_reloads();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP: reloading TLS credentials, tokens and CAs");
            // Failures are logged by the reloaders; the previous material stays in use.
            let _ = reload.reload().await;
            let _ = trust.reload().await;
        }
    });
    bound.serve(shutdown).await?;
    Ok(())
}
