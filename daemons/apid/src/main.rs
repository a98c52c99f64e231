//! The `apid` binary: flags → telemetry → config → `Server::bind` → serve until a signal.
//!
//! Exit codes: 0 after a clean shutdown, 64 (EX_USAGE) for bad flags, an invalid config or
//! unusable credentials, 1 for any other failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use apid::{Error, Server};
use basalt_config::ApidConfig;
use basalt_daemon::{
    LogFormat, build_runtime, check_config_exit, exit, parse_flags, shutdown_signal,
    start_telemetry,
};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// basalt's API gateway: mutual TLS, roles from the certificate, authorization, audit, and a
/// transparent proxy to machined.
#[derive(Debug, Parser)]
#[command(name = "apid", version)]
struct Args {
    /// The apid config file (YAML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Validate the config and the TLS files it names, then exit (0 = ok, 64 = problems).
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
    let _log = match start_telemetry("apid", args.log_format, filter.as_deref()) {
        Ok(flush) => flush,
        Err(code) => return code,
    };
    basalt_pki::install_crypto_provider();

    let config = match ApidConfig::load(&args.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("apid: {:#}", anyhow::Error::from(err));
            return ExitCode::from(exit::USAGE);
        }
    };
    if args.check_config {
        return check_config_exit("apid", &args.config, apid::check_config(&config));
    }

    // One thread serves everything and the audit writer has its own: two OS threads, Talos's
    // cap for apid. A call is a chain of hand-offs between tasks (TLS connection, HTTP/2 stream,
    // machined connection); on a multi-threaded runtime a hand-off often wakes the other worker,
    // and in a VM a wake-up costs more than apid's own work. Measured with one call in flight
    // (docs/BENCHMARKS.md): ~2.5 context switches and ~100 µs of CPU per call against ~4.7 and
    // ~120 µs with two workers, and ~30 µs less latency; with 16 or 64 calls in flight the same
    // throughput for less CPU. What two workers would buy is TLS handshakes in parallel (~1300/s
    // instead of ~1000/s from four clients on two cores), and handshakes are rare.
    let runtime = match build_runtime(&mut tokio::runtime::Builder::new_current_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let usage = matches!(
                err.downcast_ref::<Error>(),
                Some(Error::LoadCredentials(_) | Error::OpenAudit { .. })
            );
            error!("{err:#}");
            eprintln!("apid: {err:#}");
            if usage {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(config: ApidConfig) -> anyhow::Result<()> {
    let shutdown = shutdown_signal().context("install the SIGTERM and SIGINT handlers")?;
    let mut hangup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;

    let bound = Server::bind(config).await?;
    info!(addr = %bound.local_addr(), "Listening");

    let reload = bound.reload_handle();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP: reloading TLS credentials");
            // Failures are logged by the reloader; the previous credentials stay in use.
            let _ = reload.reload().await;
        }
    });
    bound.serve(shutdown).await?;
    Ok(())
}
