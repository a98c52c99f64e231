//! Machine-config commands on nodes: `apply-config` (Talos's ApplyConfiguration, with its
//! modes and dry run), and basalt's `config-history`, `config-rollback VERSION` and
//! `config-confirm` (`basalt.v1.ConfigService`).
//!
//! Like the other node commands they make one call per target node and print one block per
//! node (NODE column, `-o json|yaml` for scripts); failed nodes are listed on stderr and the
//! command exits non-zero. `apply-config` (except `--dry-run`) and `config-rollback` on several
//! nodes ask for confirmation unless `--yes` and take `--batch N` (`crate::rollout`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::basalt::v1::{
    ConfigHistory, ConfigVersion, Confirm, ConfirmRequest, HistoryRequest, Rollback,
    RollbackRequest,
};
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_api::machine::{ApplyConfiguration, ApplyConfigurationRequest};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use crate::Globals;
use crate::connect::{connect, runtime};
use crate::duration;
use crate::node_cmd::{NodeArgs, or_dash, show};
use crate::output::{self, NodeTable, OutputFormat, replies};
use crate::rollout::{self, RolloutArgs};
use crate::usage::{OrUsage as _, UsageError};
use basalt_client::Client;

/// The largest reply the config service sends back (a config with its history fits easily).
const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigApplyCommand {
    /// Apply a machine config to nodes; the mode decides whether it takes effect now, after a
    /// reboot, or on trial.
    ApplyConfig(ApplyArgs),
    /// Show the machine-config versions each node keeps, newest first.
    ConfigHistory(HistoryArgs),
    /// Apply a stored machine-config version again (recorded as a new version).
    ConfigRollback(RollbackArgs),
    /// Keep a config applied with `--mode try` instead of letting it revert.
    ConfigConfirm(NodeArgs),
}

/// How long a `--mode try` config stays before it is reverted, unless `--timeout` says.
const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The machine config to apply (YAML).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// auto: without a reboot when possible, else with one; no-reboot: refuse changes that need
    /// a reboot; reboot: deprecated (use auto); staged: at the next reboot; try: now, reverted
    /// after --timeout unless confirmed.
    #[arg(short = 'm', long, value_enum, default_value_t = ApplyMode::Auto)]
    mode: ApplyMode,
    /// With --mode try: revert after this long unless confirmed (e.g. 90s, 5m) [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    timeout: Option<Duration>,
    /// Show what would change (mode and a diff) without applying.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    rollout: RolloutArgs,
    #[command(flatten)]
    node: NodeArgs,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ApplyMode {
    Auto,
    NoReboot,
    Reboot,
    Staged,
    Try,
}

impl ApplyMode {
    fn to_proto(self) -> Mode {
        match self {
            ApplyMode::Auto => Mode::Auto,
            ApplyMode::NoReboot => Mode::NoReboot,
            ApplyMode::Reboot => Mode::Reboot,
            ApplyMode::Staged => Mode::Staged,
            ApplyMode::Try => Mode::Try,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Show at most this many versions per node (0: all).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// The version to apply again (see `config-history`).
    version: u64,
    #[command(flatten)]
    rollout: RolloutArgs,
    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) fn run(cmd: ConfigApplyCommand, globals: &Globals) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        ConfigApplyCommand::ApplyConfig(args) => {
            if args.timeout.is_some() && args.mode != ApplyMode::Try {
                return Err(UsageError::msg(
                    "--timeout is the trial of --mode try, and means nothing with another mode",
                ));
            }
            let data = std::fs::read(&args.file)
                .with_context(|| format!("read {}", args.file.display()))
                .or_usage()?;
            let requested = args.mode.to_proto();
            let request = ApplyConfigurationRequest {
                data,
                mode: requested as i32,
                dry_run: args.dry_run,
                try_mode_timeout: (args.mode == ApplyMode::Try)
                    .then(|| prost_duration(args.timeout.unwrap_or(DEFAULT_TRY_TIMEOUT))),
            };
            let view = move |message| ApplyView::new(requested, message);
            let apply = |client: Client, request: ApplyConfigurationRequest| async move {
                client
                    .each_node(request, |client, request| async move {
                        client.machine().apply_configuration(request).await
                    })
                    .await
            };
            if !args.dry_run {
                rollout::confirm_targets(
                    globals,
                    &args.node.target,
                    "apply-config to",
                    &args.rollout,
                )?;
            }
            rt.block_on(async {
                let client = connect(globals, &args.node.target).await?;
                if !args.dry_run {
                    let (replies, rollout) = rollout::replies_in_batches(
                        &client,
                        &args.rollout,
                        |view: &ApplyView| view.reboots,
                        |batch| {
                            let request = request.clone();
                            async move { replies(apply(batch, request).await, |r| r.messages, view) }
                        },
                    )
                    .await;
                    return rollout::show(args.node.output.format, &replies, &rollout);
                }
                let replies = replies(apply(client, request).await, |r| r.messages, view);
                if args.node.output.format == OutputFormat::Table {
                    // The diff does not fit a table: one block per node.
                    for reply in &replies.0 {
                        if let Some(view) = &reply.data {
                            println!("{}: {}\n{}", reply.node, view.mode, view.details);
                        }
                    }
                    return replies.finish();
                }
                show(&args.node, replies)
            })
        }
        ConfigApplyCommand::ConfigHistory(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(
                    connect(globals, &args.node.target)
                        .await?
                        .each_node(
                            HistoryRequest { limit: args.limit },
                            |client, request| async move {
                                configs(client.channel()).history(request).await
                            },
                        )
                        .await,
                )
            })?;
            show(
                &args.node,
                replies(results, |r| r.messages, HistoryView::from),
            )
        }
        ConfigApplyCommand::ConfigRollback(args) => {
            let request = RollbackRequest {
                version: args.version,
            };
            rollout::confirm_targets(
                globals,
                &args.node.target,
                "config-rollback on",
                &args.rollout,
            )?;
            rt.block_on(async {
                let client = connect(globals, &args.node.target).await?;
                let (replies, rollout) = rollout::replies_in_batches(
                    &client,
                    &args.rollout,
                    |_| false,
                    |batch| async move {
                        let results = batch
                            .each_node(request, |client, request| async move {
                                configs(client.channel()).rollback(request).await
                            })
                            .await;
                        replies(results, |r| r.messages, RollbackView::from)
                    },
                )
                .await;
                rollout::show(args.node.output.format, &replies, &rollout)
            })
        }
        ConfigApplyCommand::ConfigConfirm(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(
                    connect(globals, &args.target)
                        .await?
                        .each_node(ConfirmRequest {}, |client, request| async move {
                            configs(client.channel()).confirm(request).await
                        })
                        .await,
                )
            })?;
            show(&args, replies(results, |r| r.messages, ConfirmView::from))
        }
    }
}

fn configs(channel: Channel) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

fn prost_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Below one billion: always fits.
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

output::with_metadata!(ApplyConfiguration, ConfigHistory, Rollback, Confirm);

// === apply-config ===

/// One node's apply result: the mode chosen (`AUTO(NO_REBOOT)` when AUTO chose NO_REBOOT, as
/// Talos reports it) and what happened.
#[derive(Debug, Serialize)]
struct ApplyView {
    mode: String,
    details: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// The node reboots to apply it (mode REBOOT, AUTO included): `--batch` waits for that.
    #[serde(skip)]
    reboots: bool,
}

impl ApplyView {
    fn new(requested: Mode, message: ApplyConfiguration) -> Self {
        let chosen = Mode::try_from(message.mode).map_or_else(
            |_| format!("UNKNOWN({})", message.mode),
            |mode| mode.as_str_name().to_owned(),
        );
        let mode = if requested == Mode::Auto {
            format!("AUTO({chosen})")
        } else {
            chosen
        };
        ApplyView {
            mode,
            details: message.mode_details,
            warnings: message.warnings,
            reboots: message.mode == Mode::Reboot as i32,
        }
    }
}

impl NodeTable for ApplyView {
    fn headers() -> Vec<&'static str> {
        vec!["MODE", "DETAILS"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![self.mode.clone(), or_dash(&self.details)]]
    }
}

// === config-history ===

#[derive(Debug, Serialize)]
struct HistoryView {
    versions: Vec<VersionView>,
}

/// One stored version, as `-o json|yaml` prints it.
#[derive(Debug, Serialize)]
struct VersionView {
    version: u64,
    time: String,
    mode: String,
    caller: CallerView,
    sha256: String,
    active: bool,
    staged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    try_deadline: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    note: String,
}

#[derive(Debug, Default, Serialize)]
struct CallerView {
    #[serde(skip_serializing_if = "String::is_empty")]
    common_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    serial: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    fingerprint: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    address: String,
}

impl CallerView {
    /// `alice (os:admin) from 10.0.0.7:40112`, leaving out what is unknown.
    fn short(&self) -> String {
        let mut text = if self.common_name.is_empty() {
            String::new()
        } else {
            self.common_name.clone()
        };
        if !self.roles.is_empty() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&format!("({})", self.roles.join(",")));
        }
        if !self.address.is_empty() {
            if !text.is_empty() {
                text.push_str(" from ");
            }
            text.push_str(&self.address);
        }
        or_dash(&text)
    }
}

impl From<ConfigHistory> for HistoryView {
    fn from(message: ConfigHistory) -> Self {
        HistoryView {
            versions: message.entries.into_iter().map(VersionView::from).collect(),
        }
    }
}

impl From<ConfigVersion> for VersionView {
    fn from(entry: ConfigVersion) -> Self {
        let caller = entry.caller.unwrap_or_default();
        VersionView {
            version: entry.version,
            time: entry.time.map(timestamp).unwrap_or_default(),
            mode: entry.mode,
            caller: CallerView {
                common_name: caller.common_name,
                serial: caller.serial,
                fingerprint: caller.fingerprint,
                roles: caller.roles,
                address: caller.address,
            },
            sha256: entry.sha256,
            active: entry.active,
            staged: entry.staged,
            try_deadline: entry.try_deadline.map(timestamp),
            note: entry.note,
        }
    }
}

impl NodeTable for HistoryView {
    fn headers() -> Vec<&'static str> {
        vec![
            "VERSION", "TIME", "MODE", "CALLER", "SHA256", "STATE", "NOTE",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.versions
            .iter()
            .map(|v| {
                let state = match (&v.try_deadline, v.active, v.staged) {
                    (Some(deadline), _, _) => format!("on trial until {deadline}"),
                    (None, true, _) => "active".to_owned(),
                    (None, false, true) => "staged".to_owned(),
                    (None, false, false) => "-".to_owned(),
                };
                vec![
                    v.version.to_string(),
                    or_dash(&v.time),
                    v.mode.clone(),
                    v.caller.short(),
                    v.sha256.chars().take(12).collect(),
                    state,
                    or_dash(&v.note),
                ]
            })
            .collect()
    }
}

/// RFC 3339 in UTC, to the second.
fn timestamp(ts: prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts.seconds)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.seconds.to_string())
}

// === config-rollback ===

#[derive(Debug, Serialize)]
struct RollbackView {
    version: u64,
    mode: String,
    details: String,
}

impl From<Rollback> for RollbackView {
    fn from(message: Rollback) -> Self {
        RollbackView {
            version: message.version,
            mode: message.mode,
            details: message.mode_details,
        }
    }
}

impl NodeTable for RollbackView {
    fn headers() -> Vec<&'static str> {
        vec!["NEW VERSION", "MODE", "DETAILS"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![
            self.version.to_string(),
            self.mode.clone(),
            or_dash(&self.details),
        ]]
    }
}

// === config-confirm ===

#[derive(Debug, Serialize)]
struct ConfirmView {
    confirmed_version: u64,
}

impl From<Confirm> for ConfirmView {
    fn from(message: Confirm) -> Self {
        ConfirmView {
            confirmed_version: message.version,
        }
    }
}

impl NodeTable for ConfirmView {
    fn headers() -> Vec<&'static str> {
        vec!["CONFIRMED VERSION"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![self.confirmed_version.to_string()]]
    }
}

#[cfg(test)]
mod tests {
    use basalt_api::basalt::v1::ConfigCaller;

    use super::*;

    #[test]
    fn auto_is_shown_with_the_mode_it_chose() {
        let message = ApplyConfiguration {
            metadata: None,
            warnings: Vec::new(),
            mode: Mode::NoReboot as i32,
            mode_details: "Applied configuration without a reboot".into(),
        };
        let view = ApplyView::new(Mode::Auto, message.clone());
        assert_eq!(view.mode, "AUTO(NO_REBOOT)");
        assert_eq!(ApplyView::new(Mode::NoReboot, message).mode, "NO_REBOOT");
    }

    #[test]
    fn history_rows_show_state_and_caller() {
        let view = HistoryView::from(ConfigHistory {
            metadata: None,
            entries: vec![ConfigVersion {
                version: 2,
                time: Some(prost_types::Timestamp {
                    seconds: 1_790_000_000,
                    nanos: 0,
                }),
                mode: "AUTO(NO_REBOOT)".into(),
                caller: Some(ConfigCaller {
                    common_name: "alice".into(),
                    roles: vec!["os:admin".into()],
                    address: "10.0.0.7:40112".into(),
                    ..ConfigCaller::default()
                }),
                sha256: "ab".repeat(32),
                active: true,
                ..ConfigVersion::default()
            }],
        });
        assert_eq!(
            view.rows(),
            [[
                "2",
                "2026-09-21T14:13:20Z",
                "AUTO(NO_REBOOT)",
                "alice (os:admin) from 10.0.0.7:40112",
                "abababababab",
                "active",
                "-"
            ]]
        );
    }
}
