//! Commands for the services machined supervises: `services`, `service ID [status|start|stop|
//! restart]` and `logs ID [-f] [--tail N]`.
//!
//! They follow the node commands' pattern (`node_cmd`): one call per target node, a NODE column
//! (or one block per node), `-o table|json|yaml`, failed nodes reported on stderr and a
//! non-zero exit. `logs` streams raw output to stdout instead; with several nodes each line is
//! prefixed with its node, as talosctl does. `service ID stop|restart` on several nodes asks for
//! confirmation unless `--yes`, and start/stop/restart take `--batch N` (`crate::rollout`).

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use basalt_api::machine::{
    LogsRequest, ServiceInfo, ServiceList, ServiceRestart, ServiceRestartRequest, ServiceStart,
    ServiceStartRequest, ServiceStop, ServiceStopRequest,
};
use basalt_client::{Client, NodeResult};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::Code;

use crate::Globals;
use crate::connect::{TargetArgs, connect, connect_with_timeout, runtime};
use crate::node_cmd::{NodeArgs, or_dash, show};
use crate::output::{
    self, ErrorView, LinePrefixer, NodeReply, NodeTable, OutputFormat, Render, Replies, replies,
};
use crate::rollout::{self, RolloutArgs};
use crate::usage::UsageError;

#[derive(Debug, Subcommand)]
pub(crate) enum ServicesCommand {
    /// List the services on each node: state, health, last change and last event.
    Services(NodeArgs),
    /// Show one service (state, health, events), or start, stop or restart it.
    Service(ServiceArgs),
    /// Print a service's output (stdout and stderr); `-f` keeps following it.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// The service id, e.g. `apid` or a `machine.services` name.
    id: String,
    /// What to do.
    #[arg(value_enum, default_value_t = ServiceAction::Status)]
    action: ServiceAction,
    #[command(flatten)]
    rollout: RolloutArgs,
    #[command(flatten)]
    node: NodeArgs,
}

/// `service ID <action>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServiceAction {
    /// Show state, health and events.
    Status,
    /// Start it (nothing happens if it runs).
    Start,
    /// Stop it and wait until its process is gone.
    Stop,
    /// Stop it and start it again.
    Restart,
}

/// The actions of `service ID` that change something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceChange {
    Start,
    Stop,
    Restart,
}

impl ServiceChange {
    /// The verb of the confirmation question.
    fn verb(self) -> &'static str {
        match self {
            ServiceChange::Start => "start",
            ServiceChange::Stop => "stop",
            ServiceChange::Restart => "restart",
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The service id.
    id: String,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines (-1: everything the node kept).
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    tail: i32,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn run(cmd: ServicesCommand, globals: &Globals) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        ServicesCommand::Services(args) => {
            let results = rt.block_on(async {
                let client = connect(globals, &args.target).await?;
                anyhow::Ok(
                    client
                        .each_node((), |client, request| async move {
                            client.machine().service_list(request).await
                        })
                        .await,
                )
            })?;
            show(&args, replies(results, |r| r.messages, ServicesView::from))
        }
        ServicesCommand::Service(args) => rt.block_on(service(globals, args)),
        ServicesCommand::Logs(args) => rt.block_on(logs(globals, args)),
    }
}

async fn service(globals: &Globals, args: ServiceArgs) -> anyhow::Result<()> {
    let change = match args.action {
        ServiceAction::Status if args.rollout.batch.is_some() => {
            return Err(UsageError::msg(
                "--batch applies to start, stop and restart, not to status",
            ));
        }
        ServiceAction::Status => None,
        ServiceAction::Start => Some(ServiceChange::Start),
        ServiceAction::Stop => Some(ServiceChange::Stop),
        ServiceAction::Restart => Some(ServiceChange::Restart),
    };
    let id = args.id.clone();
    let Some(change) = change else {
        let client = connect(globals, &args.node.target).await?;
        let results = client
            .each_node((), |client, request| async move {
                client.machine().service_list(request).await
            })
            .await;
        let details = pick_service(
            replies(results, |r| r.messages, ServicesView::from),
            &args.id,
        );
        if args.node.output.format == OutputFormat::Table {
            print_details(&details, SystemTime::now())?;
        } else {
            output::print(args.node.output.format, &details)?;
        }
        return details.finish();
    };
    // Starting a service takes nothing down: no confirmation needed, batches still apply.
    if change != ServiceChange::Start {
        let verb = format!("{} service {id:?} on", change.verb());
        rollout::confirm_targets(globals, &args.node.target, &verb, &args.rollout)?;
    }
    let client = connect(globals, &args.node.target).await?;
    let (actions, rollout) = rollout::replies_in_batches(
        &client,
        &args.rollout,
        |_| false,
        |batch| {
            let id = id.clone();
            async move { act_on_service(&batch, change, id).await }
        },
    )
    .await;
    rollout::show(args.node.output.format, &actions, &rollout)
}

/// Starts, stops or restarts service `id` on the client's targets.
async fn act_on_service(client: &Client, change: ServiceChange, id: String) -> Replies<ActionView> {
    match change {
        ServiceChange::Start => {
            let results = client
                .each_node(ServiceStartRequest { id }, |client, request| async move {
                    client.machine().service_start(request).await
                })
                .await;
            replies(results, |r| r.messages, ActionView::from)
        }
        ServiceChange::Stop => {
            let results = client
                .each_node(ServiceStopRequest { id }, |client, request| async move {
                    client.machine().service_stop(request).await
                })
                .await;
            replies(results, |r| r.messages, ActionView::from)
        }
        ServiceChange::Restart => {
            let results = client
                .each_node(ServiceRestartRequest { id }, |client, request| async move {
                    client.machine().service_restart(request).await
                })
                .await;
            replies(results, |r| r.messages, ActionView::from)
        }
    }
}

/// Streams the service's output from every target node to stdout.
async fn logs(globals: &Globals, args: LogsArgs) -> anyhow::Result<()> {
    // A followed stream runs until the user stops it: no per-call deadline then.
    let client = if args.follow {
        connect_with_timeout(globals, &args.target, None).await?
    } else {
        connect(globals, &args.target).await?
    };
    let request = LogsRequest {
        namespace: "system".to_owned(),
        id: args.id.clone(),
        driver: 0,
        follow: args.follow,
        tail_lines: args.tail,
    };
    let results = client
        .each_node(request, |client, request| async move {
            client.machine().logs(request).await
        })
        .await;
    let prefix = results.len() > 1;
    let total = results.len();
    let mut failed = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for NodeResult { node, result } in results {
        match result {
            Ok(mut stream) => {
                readers.spawn(async move {
                    let mut prefixer = LinePrefixer::new(prefix.then(|| format!("{node}: ")));
                    loop {
                        match stream.message().await {
                            Ok(Some(data)) => {
                                let bytes = prefixer.apply(&data.bytes);
                                let mut out = std::io::stdout().lock();
                                if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                                    // stdout is gone (e.g. `| head`): stop quietly.
                                    return None;
                                }
                            }
                            Ok(None) => return None,
                            Err(status) => {
                                // Said at once: with -f the command may run for hours.
                                report(&node, &status);
                                return Some(node);
                            }
                        }
                    }
                });
            }
            Err(status) => {
                report(&node, &status);
                failed.push(node);
            }
        }
    }
    while let Some(done) = readers.join_next().await {
        match done {
            Ok(None) => {}
            Ok(Some(node)) => failed.push(node),
            Err(join) => failed.push(format!("(a reader task failed: {join})")),
        }
    }
    output::nodes_failed(total, &failed)
}

fn report(node: &str, status: &tonic::Status) {
    eprintln!(
        "{}",
        output::failure_line(node, &ErrorView::from_status(status))
    );
}

// === views ===

output::with_metadata!(ServiceList, ServiceStart, ServiceStop, ServiceRestart);

/// One node's services, as `services` prints them.
#[derive(Debug, Serialize)]
struct ServicesView {
    services: Vec<ServiceView>,
}

impl From<ServiceList> for ServicesView {
    fn from(message: ServiceList) -> Self {
        Self {
            services: message
                .services
                .into_iter()
                .map(ServiceView::from)
                .collect(),
        }
    }
}

impl NodeTable for ServicesView {
    fn headers() -> Vec<&'static str> {
        vec!["SERVICE", "STATE", "HEALTH", "LAST CHANGE", "EVENT"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let now = SystemTime::now();
        self.services
            .iter()
            .map(|service| {
                let last = service.events.last();
                vec![
                    service.id.clone(),
                    service.state.clone(),
                    service.health.short().to_owned(),
                    last.and_then(|e| e.time)
                        .map_or_else(|| "-".to_owned(), |t| format!("{} ago", age(t, now))),
                    or_dash(last.map_or("", |e| e.message.as_str())),
                ]
            })
            .collect()
    }
}

#[derive(Debug, Serialize)]
struct ServiceView {
    id: String,
    state: String,
    health: HealthView,
    /// Oldest first, as the node reports them.
    events: Vec<EventView>,
}

impl From<ServiceInfo> for ServiceView {
    fn from(info: ServiceInfo) -> Self {
        let health = info.health.unwrap_or_default();
        Self {
            id: info.id,
            state: info.state,
            health: HealthView {
                status: if health.unknown {
                    "unknown"
                } else if health.healthy {
                    "healthy"
                } else {
                    "unhealthy"
                },
                last_message: health.last_message,
                last_change: health
                    .last_change
                    .and_then(|ts| to_system_time(ts.seconds, ts.nanos)),
            },
            events: info
                .events
                .map(|events| events.events)
                .unwrap_or_default()
                .into_iter()
                .map(|event| EventView {
                    state: event.state,
                    message: event.msg,
                    time: event.ts.and_then(|ts| to_system_time(ts.seconds, ts.nanos)),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct HealthView {
    /// `unknown`, `healthy` or `unhealthy`.
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    last_message: String,
    #[serde(
        serialize_with = "rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    last_change: Option<SystemTime>,
}

impl HealthView {
    /// talosctl's HEALTH column: `?`, `OK` or `Fail`.
    fn short(&self) -> &'static str {
        match self.status {
            "healthy" => "OK",
            "unhealthy" => "Fail",
            _ => "?",
        }
    }
}

#[derive(Debug, Serialize)]
struct EventView {
    state: String,
    message: String,
    #[serde(
        serialize_with = "rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    time: Option<SystemTime>,
}

/// `service ID`: that service on each node (a node without it fails with NotFound).
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct ServiceDetails(Replies<ServiceView>);

impl ServiceDetails {
    fn finish(&self) -> anyhow::Result<()> {
        self.0.finish()
    }
}

impl Render for ServiceDetails {
    fn headers(&self) -> Vec<&'static str> {
        vec!["NODE", "ID", "STATE", "HEALTH"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.0
            .0
            .iter()
            .filter_map(|reply| reply.data.as_ref().map(|data| (&reply.node, data)))
            .map(|(node, s)| {
                vec![
                    node.clone(),
                    s.id.clone(),
                    s.state.clone(),
                    s.health.short().to_owned(),
                ]
            })
            .collect()
    }
}

/// Narrows each node's service list to `id`.
fn pick_service(list: Replies<ServicesView>, id: &str) -> ServiceDetails {
    let replies = list
        .0
        .into_iter()
        .map(|reply| match reply.data {
            None => NodeReply {
                node: reply.node,
                data: None,
                error: reply.error,
            },
            Some(view) => match view.services.into_iter().find(|s| s.id == id) {
                Some(service) => NodeReply {
                    node: reply.node,
                    data: Some(service),
                    error: None,
                },
                None => NodeReply {
                    node: reply.node,
                    data: None,
                    error: Some(ErrorView::new(
                        Code::NotFound,
                        format!("service {id:?} not defined"),
                    )),
                },
            },
        })
        .collect();
    ServiceDetails(Replies(replies))
}

/// talosctl's `service ID` block, one per node; events newest first.
fn print_details(details: &ServiceDetails, now: SystemTime) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(details_text(details, now).as_bytes())?;
    Ok(())
}

fn details_text(details: &ServiceDetails, now: SystemTime) -> String {
    let mut text = String::new();
    for reply in &details.0.0 {
        let Some(service) = &reply.data else {
            continue;
        };
        if !text.is_empty() {
            text.push('\n');
        }
        let health = match (&service.health.status, service.health.last_message.as_str()) {
            (&"unhealthy", message) if !message.is_empty() => format!("Fail: {message}"),
            _ => service.health.short().to_owned(),
        };
        for (label, value) in [
            ("NODE", reply.node.as_str()),
            ("ID", service.id.as_str()),
            ("STATE", service.state.as_str()),
            ("HEALTH", health.as_str()),
        ] {
            text.push_str(&format!("{label:<9}{value}\n"));
        }
        for (i, event) in service.events.iter().rev().enumerate() {
            let label = if i == 0 { "EVENTS" } else { "" };
            let when = event
                .time
                .map(|t| format!(" ({} ago)", age(t, now)))
                .unwrap_or_default();
            text.push_str(&format!(
                "{label:<9}[{}]: {}{when}\n",
                event.state, event.message
            ));
        }
    }
    text
}

/// One node's answer to start / stop / restart.
#[derive(Debug, Serialize)]
struct ActionView {
    response: String,
}

macro_rules! action_from {
    ($($message:ty),*) => {
        $(impl From<$message> for ActionView {
            fn from(message: $message) -> Self {
                Self { response: message.resp }
            }
        })*
    };
}
action_from!(ServiceStart, ServiceStop, ServiceRestart);

impl NodeTable for ActionView {
    fn headers() -> Vec<&'static str> {
        vec!["RESPONSE"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        vec![vec![self.response.clone()]]
    }
}

// === time helpers ===

/// A protobuf timestamp's seconds and nanos as a system time (`None` before the epoch).
fn to_system_time(seconds: i64, nanos: i32) -> Option<SystemTime> {
    let secs = u64::try_from(seconds).ok()?;
    let nanos = u32::try_from(nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Time since `then`, rounded down to seconds, in Go's duration style (`1h2m3s`), as talosctl
/// prints LAST CHANGE.
fn age(then: SystemTime, now: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// RFC 3339 in UTC, for json/yaml.
fn rfc3339(time: SystemTime) -> String {
    time::OffsetDateTime::from(time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn rfc3339_opt<S: serde::Serializer>(
    time: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&rfc3339(*time)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use basalt_api::machine::{ServiceEvent, ServiceEvents, ServiceHealth};
    use tonic::Status;

    use super::*;

    fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn info(id: &str, state: &str, healthy: Option<bool>) -> ServiceInfo {
        ServiceInfo {
            id: id.to_owned(),
            state: state.to_owned(),
            events: Some(ServiceEvents {
                events: vec![
                    ServiceEvent {
                        msg: "Service registered".to_owned(),
                        state: "Initialized".to_owned(),
                        ts: ts(1_000),
                    },
                    ServiceEvent {
                        msg: "Started process (PID 42)".to_owned(),
                        state: "Running".to_owned(),
                        ts: ts(1_060),
                    },
                ],
            }),
            health: Some(ServiceHealth {
                unknown: healthy.is_none(),
                healthy: healthy == Some(true),
                last_message: if healthy == Some(false) {
                    "connect refused".to_owned()
                } else {
                    String::new()
                },
                last_change: None,
            }),
        }
    }

    fn list(services: Vec<ServiceInfo>) -> ServiceList {
        ServiceList {
            metadata: None,
            services,
        }
    }

    #[test]
    fn age_reads_like_go_durations() {
        let then = SystemTime::UNIX_EPOCH;
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(age(then, at(5)), "5s");
        assert_eq!(age(then, at(125)), "2m5s");
        assert_eq!(age(then, at(3 * 3600 + 7)), "3h0m7s");
        assert_eq!(age(at(10), then), "0s", "a clock step back is not negative");
    }

    #[test]
    fn services_table_has_talos_columns_and_health_marks() {
        let view = ServicesView::from(list(vec![
            info("apid", "Running", Some(true)),
            info("web", "Running", Some(false)),
            info("job", "Finished", None),
        ]));
        assert_eq!(
            ServicesView::headers(),
            ["SERVICE", "STATE", "HEALTH", "LAST CHANGE", "EVENT"]
        );
        let rows = view.rows();
        assert_eq!(rows[0][..3], ["apid", "Running", "OK"]);
        assert_eq!(rows[1][2], "Fail");
        assert_eq!(rows[2][2], "?");
        assert!(rows[0][3].ends_with(" ago"), "{:?}", rows[0]);
        assert_eq!(rows[0][4], "Started process (PID 42)");
    }

    #[test]
    fn service_details_pick_the_service_and_fail_nodes_without_it() {
        let results = vec![
            NodeResult {
                node: "n1".to_owned(),
                result: Ok(basalt_api::machine::ServiceListResponse {
                    messages: vec![list(vec![info("web", "Running", Some(false))])],
                }),
            },
            NodeResult {
                node: "n2".to_owned(),
                result: Ok(basalt_api::machine::ServiceListResponse {
                    messages: vec![list(vec![])],
                }),
            },
            NodeResult {
                node: "n3".to_owned(),
                result: Err(Status::unavailable("down")),
            },
        ];
        let details = pick_service(replies(results, |r| r.messages, ServicesView::from), "web");
        assert!(details.finish().is_err());
        let errors: Vec<_> = details
            .0
            .0
            .iter()
            .map(|r| r.error.as_ref().map(|e| e.message.clone()))
            .collect();
        assert_eq!(
            errors,
            [
                None,
                Some("service \"web\" not defined".to_owned()),
                Some("down".to_owned())
            ]
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_100);
        let text = details_text(&details, now);
        assert_eq!(
            text,
            "NODE     n1\n\
             ID       web\n\
             STATE    Running\n\
             HEALTH   Fail: connect refused\n\
             EVENTS   [Running]: Started process (PID 42) (40s ago)\n         \
             [Initialized]: Service registered (1m40s ago)\n"
        );
        let json = serde_json::to_value(&details).expect("json");
        assert_eq!(json[0]["node"], "n1");
        assert_eq!(json[0]["events"][1]["time"], "1970-01-01T00:17:40Z");
        assert_eq!(json[1]["error"]["code"], "NotFound");
    }
}
