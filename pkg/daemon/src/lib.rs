//! Process scaffolding shared by the three daemons: flag parsing, the log format flag, telemetry
//! initialisation and the batched stderr it writes to, `--check-config`'s answer, the runtime, the shutdown signals, exit codes, and
//! the one way an error and its sources become a line of text.
//!
//! It holds no gRPC and no config schemas, and it never reads the process environment itself:
//! `main` reads `BASALT_LOG` and passes it in (STYLE §4).

use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

use tracing_subscriber::EnvFilter;

mod batch;
mod stderr;

pub use batch::{Batch, drain_in_batches};
pub use stderr::{LogFlush, flush as flush_logs};

/// Exit codes of the daemons.
pub mod exit {
    /// Bad flags, a bad config or unusable credentials (BSD `EX_USAGE`).
    pub const USAGE: u8 = 64;
}

/// The filter used when `BASALT_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// `--log-format`: how log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colours only when stderr is a terminal, so a supervisor capturing
    /// the output (machined's log files) gets no escape codes.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `BASALT_LOG` is not a valid filter.
    #[error("BASALT_LOG={directives:?} is not a valid log filter")]
    Filter {
        /// The rejected directives.
        directives: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("install the log subscriber: {0}")]
    Install(String),
    /// The thread that writes log lines could not be started.
    #[error("start the log writer thread: {0}")]
    Writer(#[source] std::io::Error),
}

/// Parses the command line into `T`. On `--help` or `--version` clap's text goes to stdout and
/// the error is the exit code 0; on a usage error clap's message goes to stderr and the error is
/// [`exit::USAGE`].
pub fn parse_flags<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|err| {
        let _ = err.print();
        if err.use_stderr() {
            ExitCode::from(exit::USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// [`init_telemetry`] for `daemon`'s `main`, which holds the returned [`LogFlush`] until it
/// returns. On failure there is no subscriber yet, so the reason goes to stderr as
/// `<daemon>: <error>` and the error is [`exit::USAGE`].
pub fn start_telemetry(
    daemon: &str,
    format: LogFormat,
    filter: Option<&str>,
) -> Result<LogFlush, ExitCode> {
    init_telemetry(format, filter)
        .map(|()| LogFlush::new())
        .map_err(|err| {
            eprintln!("{daemon}: {}", error_chain(&err));
            ExitCode::from(exit::USAGE)
        })
}

/// `--check-config`'s answer for `daemon`: `<daemon>: <path> is valid` and 0, or
/// `<daemon>: <problems>` and [`exit::USAGE`], on stderr (an operator runs it by hand).
pub fn check_config_exit<E>(daemon: &str, path: &Path, result: Result<(), E>) -> ExitCode
where
    E: std::error::Error + 'static,
{
    match result {
        Ok(()) => {
            eprintln!("{daemon}: {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{daemon}: {}", error_chain(&err));
            ExitCode::from(exit::USAGE)
        }
    }
}

/// Builds `main`'s runtime from `builder` (which says the kind and the threads), with every
/// driver enabled. On failure the reason is logged and the error is [`ExitCode::FAILURE`].
pub fn build_runtime(
    builder: &mut tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        tracing::error!(
            error = &err as &dyn std::error::Error,
            "Cannot start the runtime"
        );
        ExitCode::FAILURE
    })
}

/// Resolves at the first SIGTERM or SIGINT and logs which. The handlers are installed by this
/// call, so a signal that arrives while the daemon starts up still ends it once it serves. Must
/// be called inside the runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "Received signal"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "Received signal"),
        }
    })
}

/// `a: b: c` for an error and its sources (anyhow's `{:#}`), for log lines, statuses and events.
/// A source whose text the message already holds is skipped: hyper and tonic often repeat the
/// inner message in the outer one.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Installs the global tracing subscriber writing to stderr through one batching thread
/// (`stderr.rs`), filtered by `filter` (the value of `BASALT_LOG`, read by `main`) or
/// [`DEFAULT_LOG_FILTER`]. Lines logged just before an exit need [`flush_logs`] (or a
/// [`LogFlush`] dropped) to be written.
pub fn init_telemetry(format: LogFormat, filter: Option<&str>) -> Result<(), TelemetryError> {
    let filter = match filter {
        Some(directives) => {
            EnvFilter::try_new(directives).map_err(|source| TelemetryError::Filter {
                directives: directives.to_owned(),
                source,
            })?
        }
        None => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(stderr::BatchedStderr::start().map_err(TelemetryError::Writer)?);
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|err| TelemetryError::Install(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_with_its_text() {
        let err = init_telemetry(LogFormat::Plain, Some("info,=[")).unwrap_err();
        assert!(err.to_string().contains("info,=["), "{err}");
    }

    #[test]
    fn the_chain_joins_sources_and_skips_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Leaf(&'static str);
        #[derive(Debug, thiserror::Error)]
        #[error("{text}")]
        struct Wrap {
            text: &'static str,
            #[source]
            source: Leaf,
        }
        let err = Wrap {
            text: "read config",
            source: Leaf("no such file"),
        };
        assert_eq!(error_chain(&err), "read config: no such file");
        let repeated = Wrap {
            text: "connect: refused",
            source: Leaf("refused"),
        };
        assert_eq!(error_chain(&repeated), "connect: refused");
    }
}
