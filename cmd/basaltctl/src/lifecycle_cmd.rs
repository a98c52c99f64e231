//! `reboot`, `shutdown`, `reset` and `events`.
//!
//! The three actions wait for completion by default, as talosctl's do (talos-facts.md §1.9),
//! one tracker per target node, with progress on stderr:
//!
//! 1. read the node's boot id (`Read /proc/sys/kernel/random/boot_id`; PermissionDenied, e.g.
//!    for an operator, skips the boot-id check);
//! 2. open `Events` and wait for its hello, so nothing the action publishes can be missed;
//! 3. call the action and take its `actor_id`;
//! 4. follow that actor's events: `stopAllServices`, `wipeState`, booting, …, until
//!    - reboot, and reset with `--reboot`: `MachineStatusEvent{RUNNING, ready}`, then the boot
//!      id must have changed;
//!    - shutdown, and reset without `--reboot`: the sequence's STOP, or the node going away
//!      once it stopped its services (apid is one of them);
//! 5. connection losses (Unavailable, Cancelled, a broken stream) are retried while the node
//!    restarts: the stream is reopened after the last event seen (`tail_id`), for this actor.
//!
//! Everything is bounded by `--timeout` (default 5m), counted per node. `--wait=false` only
//! calls the action and prints each node's actor id.
//!
//! On several nodes the actions ask for confirmation unless `--yes`, run at most `--parallel`
//! trackers at once, and with `--batch N` roll out N nodes at a time (`crate::rollout`): a
//! reboot batch is done when each of its nodes is running with a new boot id and answers
//! Version again.
//!
//! `events` streams the nodes' events until interrupted (`-o json` gives one JSON object per
//! line), and reconnects the same way when a node restarts.

use std::collections::HashSet;
use std::time::Duration;

use basalt_api::machine::{
    self, Event, EventsRequest, machine_status_event::MachineStage, sequence_event, task_event,
};
use basalt_client::{Client, targeted_request};
use clap::{ArgAction, Args, Subcommand, ValueEnum};
use prost::Message as _;
use serde_json::json;
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

use crate::Globals;
use crate::connect::{TargetArgs, connect_with_timeout, runtime};
use crate::output::{self, OutputArgs, OutputFormat};
use crate::rollout::{self, RolloutArgs};
use crate::usage::UsageError;

/// Where Linux (and basalt in container mode) publishes the boot id.
pub(crate) const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Pause between reconnection attempts while a node restarts.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Deadline of the action call itself (with `--wait=false`).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub(crate) enum LifecycleCommand {
    /// Reboot the nodes (container mode: restart every service under a new boot id).
    Reboot(RebootArgs),
    /// Shut the nodes down (container mode: stop every service, then machined).
    Shutdown(ShutdownArgs),
    /// Wipe the nodes' state, then halt them or, with --reboot, reboot them.
    Reset(ResetArgs),
    /// Stream the nodes' events: sequences, tasks, service states, machine status.
    Events(EventsArgs),
}

/// `--wait` and `--timeout`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WaitArgs {
    /// Wait until the action is complete, with progress on stderr; `--wait=false` returns as
    /// soon as the nodes accepted it.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    wait: bool,
    /// How long to wait for completion (e.g. 90s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::duration::parse)]
    timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct RebootArgs {
    /// How to reboot (container mode treats them all alike).
    #[arg(long, value_enum, default_value_t = RebootMode::Default)]
    mode: RebootMode,
    #[command(flatten)]
    rollout: RolloutArgs,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    target: TargetArgs,
}

/// `reboot --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RebootMode {
    /// An ordinary reboot.
    Default,
    /// A full power cycle (skips kexec on Talos).
    Powercycle,
    /// Skip graceful steps.
    Force,
}

#[derive(Debug, Args)]
pub(crate) struct ShutdownArgs {
    /// Skip graceful steps (cordon and drain on Talos; nothing to skip on basalt).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    rollout: RolloutArgs,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ResetArgs {
    /// Leave gracefully first (etcd on Talos; accepted and ignored by basalt).
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    graceful: bool,
    /// Reboot after the wipe instead of halting.
    #[arg(long)]
    reboot: bool,
    #[command(flatten)]
    rollout: RolloutArgs,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Start with the last N events the node kept (-1: all of them).
    #[arg(long, value_name = "N", allow_negative_numbers = true, conflicts_with_all = ["since", "since_id"])]
    tail: Option<i32>,
    /// Start with the events of the last DURATION (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, conflicts_with = "since_id")]
    since: Option<Duration>,
    /// Start after the event with this id.
    #[arg(long, value_name = "ID")]
    since_id: Option<String>,
    /// Only the events of this actor (e.g. a reboot's actor id).
    #[arg(long, value_name = "ID")]
    actor_id: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn run(cmd: LifecycleCommand, globals: &Globals) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        LifecycleCommand::Reboot(args) => {
            let mode = match args.mode {
                RebootMode::Default => machine::reboot_request::Mode::Default,
                RebootMode::Powercycle => machine::reboot_request::Mode::Powercycle,
                RebootMode::Force => machine::reboot_request::Mode::Force,
            };
            rt.block_on(act(
                globals,
                &args.target,
                &args.wait,
                &args.rollout,
                Action::Reboot(mode),
            ))
        }
        LifecycleCommand::Shutdown(args) => rt.block_on(act(
            globals,
            &args.target,
            &args.wait,
            &args.rollout,
            Action::Shutdown { force: args.force },
        )),
        LifecycleCommand::Reset(args) => rt.block_on(act(
            globals,
            &args.target,
            &args.wait,
            &args.rollout,
            Action::Reset {
                graceful: args.graceful,
                reboot: args.reboot,
            },
        )),
        LifecycleCommand::Events(args) => rt.block_on(events(globals, args)),
    }
}

// === actions ===

/// One of the three lifecycle requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Reboot(machine::reboot_request::Mode),
    Shutdown { force: bool },
    Reset { graceful: bool, reboot: bool },
}

impl Action {
    /// The sequence name the node publishes.
    fn name(self) -> &'static str {
        match self {
            Action::Reboot(_) => "reboot",
            Action::Shutdown { .. } => "shutdown",
            Action::Reset { .. } => "reset",
        }
    }

    /// Whether the node comes back (a new boot) after the action.
    fn comes_back(self) -> bool {
        match self {
            Action::Reboot(_) => true,
            Action::Shutdown { .. } => false,
            Action::Reset { reboot, .. } => reboot,
        }
    }

    /// Calls the action on one node; returns its actor id.
    async fn call(self, client: &Client, node: Option<&str>) -> Result<String, Status> {
        let mut machine = client.machine();
        let actor = match self {
            Action::Reboot(mode) => {
                let request = request(node, machine::RebootRequest { mode: mode as i32 })?;
                machine
                    .reboot(request)
                    .await?
                    .into_inner()
                    .messages
                    .into_iter()
                    .next()
                    .map(|m| m.actor_id)
            }
            Action::Shutdown { force } => {
                let request = request(node, machine::ShutdownRequest { force })?;
                machine
                    .shutdown(request)
                    .await?
                    .into_inner()
                    .messages
                    .into_iter()
                    .next()
                    .map(|m| m.actor_id)
            }
            Action::Reset { graceful, reboot } => {
                let request = request(
                    node,
                    machine::ResetRequest {
                        graceful,
                        reboot,
                        ..machine::ResetRequest::default()
                    },
                )?;
                machine
                    .reset(request)
                    .await?
                    .into_inner()
                    .messages
                    .into_iter()
                    .next()
                    .map(|m| m.actor_id)
            }
        };
        actor.ok_or_else(|| Status::unknown("the node sent an empty reply"))
    }
}

/// A request for one node (`node` metadata when one is named).
fn request<M>(node: Option<&str>, message: M) -> Result<tonic::Request<M>, Status> {
    targeted_request(node, message).map_err(|err| Status::invalid_argument(err.to_string()))
}

/// Runs `action` on every target node, waiting for each unless `--wait=false`; several nodes
/// need confirmation, and `--batch` rolls the action out batch by batch (`crate::rollout`).
async fn act(
    globals: &Globals,
    target: &TargetArgs,
    wait: &WaitArgs,
    rollout_args: &RolloutArgs,
    action: Action,
) -> anyhow::Result<()> {
    if rollout_args.batch.is_some() && !wait.wait {
        return Err(UsageError::msg(
            "--batch waits for each batch to come back and cannot be combined with --wait=false",
        ));
    }
    rollout::confirm_targets(globals, target, action.name(), rollout_args)?;
    // No per-call deadline: the event streams last as long as the action; `--timeout` bounds
    // each node's wait instead.
    let client = connect_with_timeout(globals, target, None).await?;
    let (rows, outcome) = rollout::run(
        &client,
        rollout_args.batch,
        rollout_args.batch_timeout,
        action.comes_back(),
        |batch| act_on_batch(batch, wait.clone(), action),
    )
    .await;
    let rows: Vec<Vec<String>> = rows.into_iter().flatten().collect();
    if !wait.wait && !rows.is_empty() {
        print!("{}", output::table(&["NODE", "ACTOR ID"], &rows));
    }
    let total = outcome.done.len() + outcome.failed.len() + outcome.untouched.len();
    rollout::finish(&outcome, total)
}

/// `action` on the client's targets, at most `--parallel` at once; per node its `NODE, ACTOR
/// ID` row or why it failed.
async fn act_on_batch(
    batch: Client,
    wait: WaitArgs,
    action: Action,
) -> Vec<rollout::Acted<Option<Vec<String>>>> {
    let targets = batch.targets();
    let names: Vec<String> = targets.iter().map(|(name, _)| name.clone()).collect();
    let calls = targets
        .into_iter()
        .map(|(name, node)| {
            let client = batch.clone();
            let wait = wait.clone();
            async move {
                if wait.wait {
                    // Counted from the node's start: with --parallel below the batch size, a
                    // node may wait for a slot.
                    let tracker = Tracker {
                        client,
                        node,
                        name,
                        deadline: Instant::now() + wait.timeout,
                    };
                    tracker.run(action).await
                } else {
                    match tokio::time::timeout(CALL_TIMEOUT, action.call(&client, node.as_deref()))
                        .await
                    {
                        Ok(Ok(actor)) => Ok(actor),
                        Ok(Err(status)) => Err(status_text(&status)),
                        Err(_) => Err(format!("no answer within {}s", CALL_TIMEOUT.as_secs())),
                    }
                }
            }
        })
        .collect();
    let outcomes = basalt_client::bounded(batch.concurrency(), calls).await;
    names
        .into_iter()
        .zip(outcomes)
        .map(|(name, outcome)| {
            let (output, failure) = match outcome {
                Ok(Ok(actor)) => (Some(vec![name.clone(), actor]), None),
                Ok(Err(why)) => (None, Some(why)),
                Err(join) => (None, Some(format!("the tracking task failed: {join}"))),
            };
            // The tracker already followed a reboot to its new boot id.
            rollout::Acted {
                node: name,
                output,
                failure,
                reboots: false,
            }
        })
        .collect()
}

/// Follows one node through one action.
struct Tracker {
    client: Client,
    node: Option<String>,
    /// How the node is named in progress lines.
    name: String,
    deadline: Instant,
}

impl Tracker {
    fn say(&self, message: &str) {
        eprintln!("node {}: {message}", self.name);
    }

    /// Steps 1–5 of the module docs; returns the actor id.
    async fn run(&self, action: Action) -> Result<String, String> {
        let before = self.boot_id(false).await?;
        if before.is_none() && action.comes_back() {
            self.say("cannot read the boot id (Read needs os:admin): skipping the boot id check");
        }
        let mut stream = self
            .subscribe(None, None)
            .await
            .map_err(|status| format!("cannot follow events: {}", status_text(&status)))?;
        let actor = self
            .within(action.call(&self.client, self.node.as_deref()))
            .await?
            .map_err(|status| status_text(&status))?;
        self.say(&format!("{} requested (actor id {actor})", action.name()));

        let mut progress = Progress::new(action);
        let mut seen = HashSet::new();
        let mut last_id: Option<String> = None;
        loop {
            let received = self.within(stream.message()).await?;
            match received {
                Ok(Some(event)) => {
                    last_id = Some(event.id.clone());
                    if event.actor_id != actor || !seen.insert(event.id.clone()) {
                        continue;
                    }
                    match progress.observe(&event) {
                        Step::Continue => {}
                        Step::Say(text) => self.say(&text),
                        Step::Done => break,
                        Step::Failed(text) => return Err(text),
                    }
                }
                Ok(None) | Err(_) if progress.down_is_done() => {
                    self.say("node is down");
                    return Ok(actor);
                }
                Ok(None) => stream = self.resubscribe(last_id.as_deref(), &actor).await?,
                Err(status) if retryable(&status) => {
                    stream = self.resubscribe(last_id.as_deref(), &actor).await?;
                }
                Err(status) => {
                    return Err(format!("events stream failed: {}", status_text(&status)));
                }
            }
        }

        if action.comes_back() {
            let after = self.boot_id(true).await?;
            match (before, after) {
                (Some(before), Some(after)) if before == after => {
                    return Err(format!("the boot id did not change ({after})"));
                }
                (Some(_), Some(_)) => self.say("boot id changed"),
                _ => {}
            }
            self.say("running");
        } else {
            self.say(&format!("{} complete", action.name()));
        }
        Ok(actor)
    }

    /// Runs `work` until the deadline.
    async fn within<T>(&self, work: impl Future<Output = T>) -> Result<T, String> {
        tokio::time::timeout_at(self.deadline, work)
            .await
            .map_err(|_| {
                "timed out; the action may still complete: check with `basaltctl events --actor-id`"
                    .to_owned()
            })
    }

    /// The node's boot id; `None` when the caller may not read it. With `retry`, connection
    /// failures are retried until the deadline (the node is restarting).
    async fn boot_id(&self, retry: bool) -> Result<Option<String>, String> {
        loop {
            let attempt = async {
                let request = request(
                    self.node.as_deref(),
                    machine::ReadRequest {
                        path: BOOT_ID_PATH.to_owned(),
                    },
                )?;
                let mut stream = self.client.machine().read(request).await?.into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    bytes.extend(chunk.bytes);
                    if bytes.len() > 1024 {
                        return Err(Status::out_of_range("the boot id file is too long"));
                    }
                }
                Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
            };
            match self.within(attempt).await? {
                Ok(id) => return Ok(Some(id)),
                Err(status) if status.code() == Code::PermissionDenied => return Ok(None),
                Err(status) if retry && retryable(&status) => {
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
                Err(status) => {
                    return Err(format!("cannot read the boot id: {}", status_text(&status)));
                }
            }
        }
    }

    /// Opens `Events` (after `tail_id`, for `actor`) and waits for its hello.
    async fn subscribe(
        &self,
        tail_id: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Streaming<Event>, Status> {
        let message = EventsRequest {
            // Without an id to continue after, replay everything this actor did: events already
            // handled are recognised by id.
            tail_events: if tail_id.is_none() && actor.is_some() {
                -1
            } else {
                0
            },
            tail_id: tail_id.unwrap_or_default().to_owned(),
            tail_seconds: 0,
            with_actor_id: actor.unwrap_or_default().to_owned(),
        };
        let work = async {
            let mut stream = self
                .client
                .machine()
                .events(request(self.node.as_deref(), message)?)
                .await?
                .into_inner();
            match stream.message().await? {
                Some(_hello) => Ok(stream),
                None => Err(Status::unavailable(
                    "the events stream ended before its first event",
                )),
            }
        };
        tokio::time::timeout_at(self.deadline, work)
            .await
            .map_err(|_| Status::deadline_exceeded("timed out opening the events stream"))?
    }

    /// Reopens the stream after a connection loss, retrying until the deadline.
    async fn resubscribe(
        &self,
        last_id: Option<&str>,
        actor: &str,
    ) -> Result<Streaming<Event>, String> {
        self.say("waiting for the node to come back…");
        loop {
            match self.subscribe(last_id, Some(actor)).await {
                Ok(stream) => return Ok(stream),
                Err(status) if retryable(&status) => {
                    if Instant::now() >= self.deadline {
                        return Err(format!(
                            "timed out waiting for the node: {}",
                            status_text(&status)
                        ));
                    }
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
                Err(status) => {
                    return Err(format!("cannot follow events: {}", status_text(&status)));
                }
            }
        }
    }
}

/// Connection-level failures worth retrying while a node restarts (talosctl retries
/// Unavailable, Canceled and EOF; a stream cut mid-way surfaces as Unknown).
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted
    )
}

fn status_text(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// What an event means for a tracker.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Say(String),
    Done,
    Failed(String),
}

/// The tracker's view of one action's events.
#[derive(Debug)]
struct Progress {
    action: Action,
    /// `stopAllServices` started: from now on, the node going away is expected.
    stopping: bool,
}

impl Progress {
    fn new(action: Action) -> Self {
        Progress {
            action,
            stopping: false,
        }
    }

    /// Whether losing the node now means the action is complete (shutdown, reset without
    /// reboot, once the services are being stopped: apid goes with them).
    fn down_is_done(&self) -> bool {
        self.stopping && !self.action.comes_back()
    }

    fn observe(&mut self, event: &Event) -> Step {
        match Payload::decode(event) {
            Payload::Sequence(sequence) => {
                let stopped = sequence.action() == sequence_event::Action::Stop;
                if let Some(error) = sequence.error.filter(|e| !e.message.is_empty()) {
                    return Step::Failed(format!(
                        "{} failed: {}",
                        sequence.sequence, error.message
                    ));
                }
                if stopped && sequence.sequence == self.action.name() && !self.action.comes_back() {
                    return Step::Done;
                }
                Step::Continue
            }
            Payload::Task(task) => {
                let start = task.action() == task_event::Action::Start;
                match (task.task.as_str(), start) {
                    ("stopAllServices", true) => {
                        self.stopping = true;
                        Step::Say("stopping services…".to_owned())
                    }
                    ("stopAllServices", false) => Step::Say("services stopped".to_owned()),
                    ("wipeState", true) => Step::Say("wiping the state directory…".to_owned()),
                    ("wipeState", false) => Step::Say("state directory wiped".to_owned()),
                    ("startAllServices", true) => Step::Say("starting services…".to_owned()),
                    _ => Step::Continue,
                }
            }
            Payload::MachineStatus(status) => match status.stage() {
                MachineStage::Booting => Step::Say("booting".to_owned()),
                MachineStage::Running if self.action.comes_back() => {
                    let status = status.status.unwrap_or_default();
                    if status.ready {
                        Step::Done
                    } else {
                        let unmet: Vec<String> = status
                            .unmet_conditions
                            .iter()
                            .map(|c| format!("{} ({})", c.name, c.reason))
                            .collect();
                        Step::Failed(format!("running but not ready: {}", unmet.join(", ")))
                    }
                }
                _ => Step::Continue,
            },
            _ => Step::Continue,
        }
    }
}

// === events ===

/// A decoded `Event.data`.
#[derive(Debug)]
enum Payload {
    Hello,
    Address(machine::AddressEvent),
    ConfigLoadError(machine::ConfigLoadErrorEvent),
    ConfigValidationError(machine::ConfigValidationErrorEvent),
    MachineStatus(machine::MachineStatusEvent),
    Phase(machine::PhaseEvent),
    Restart(machine::RestartEvent),
    Sequence(machine::SequenceEvent),
    ServiceState(machine::ServiceStateEvent),
    Task(machine::TaskEvent),
    /// A type this client does not know (Talos clients skip them too), or one that does not
    /// decode.
    Other(String),
}

impl Payload {
    fn decode(event: &Event) -> Payload {
        let Some(any) = &event.data else {
            return Payload::Hello;
        };
        if any.type_url.is_empty() {
            return Payload::Hello;
        }
        let value = any.value.as_slice();
        let name = any
            .type_url
            .strip_prefix("talos/runtime/")
            .unwrap_or(&any.type_url);
        let decoded = match name {
            "machine.AddressEvent" => machine::AddressEvent::decode(value).map(Payload::Address),
            "machine.ConfigLoadErrorEvent" => {
                machine::ConfigLoadErrorEvent::decode(value).map(Payload::ConfigLoadError)
            }
            "machine.ConfigValidationErrorEvent" => {
                machine::ConfigValidationErrorEvent::decode(value)
                    .map(Payload::ConfigValidationError)
            }
            "machine.MachineStatusEvent" => {
                machine::MachineStatusEvent::decode(value).map(Payload::MachineStatus)
            }
            "machine.PhaseEvent" => machine::PhaseEvent::decode(value).map(Payload::Phase),
            "machine.RestartEvent" => machine::RestartEvent::decode(value).map(Payload::Restart),
            "machine.SequenceEvent" => machine::SequenceEvent::decode(value).map(Payload::Sequence),
            "machine.ServiceStateEvent" => {
                machine::ServiceStateEvent::decode(value).map(Payload::ServiceState)
            }
            "machine.TaskEvent" => machine::TaskEvent::decode(value).map(Payload::Task),
            _ => return Payload::Other(any.type_url.clone()),
        };
        decoded.unwrap_or_else(|_| Payload::Other(any.type_url.clone()))
    }

    /// A short kind for the EVENT column.
    fn kind(&self) -> &str {
        match self {
            Payload::Hello => "hello",
            Payload::Address(_) => "address",
            Payload::ConfigLoadError(_) => "config-load-error",
            Payload::ConfigValidationError(_) => "config-invalid",
            Payload::MachineStatus(_) => "machine-status",
            Payload::Phase(_) => "phase",
            Payload::Restart(_) => "restart",
            Payload::Sequence(_) => "sequence",
            Payload::ServiceState(_) => "service",
            Payload::Task(_) => "task",
            Payload::Other(_) => "other",
        }
    }

    /// One line saying what happened.
    fn message(&self) -> String {
        match self {
            Payload::Hello => String::new(),
            Payload::Address(e) => format!("{} {}", e.hostname, e.addresses.join(",")),
            Payload::ConfigLoadError(e) => e.error.clone(),
            Payload::ConfigValidationError(e) => e.error.clone(),
            Payload::MachineStatus(e) => {
                let status = e.status.clone().unwrap_or_default();
                let mut text = format!(
                    "{}{}",
                    e.stage().as_str_name(),
                    if status.ready { " ready" } else { "" }
                );
                if !status.unmet_conditions.is_empty() {
                    let unmet: Vec<String> = status
                        .unmet_conditions
                        .iter()
                        .map(|c| format!("{}: {}", c.name, c.reason))
                        .collect();
                    text.push_str(&format!(" (unmet: {})", unmet.join("; ")));
                }
                text
            }
            Payload::Phase(e) => format!("{} {}", e.phase, e.action().as_str_name()),
            Payload::Restart(e) => format!("restart command {}", e.cmd),
            Payload::Sequence(e) => {
                let mut text = format!("{} {}", e.sequence, e.action().as_str_name());
                if let Some(error) = e.error.as_ref().filter(|e| !e.message.is_empty()) {
                    text.push_str(&format!(": error: {}", error.message));
                }
                text
            }
            Payload::ServiceState(e) => {
                let state = e.action().as_str_name();
                if e.message.is_empty() {
                    format!("{}: {state}", e.service)
                } else {
                    format!("{}: {state}: {}", e.service, e.message)
                }
            }
            Payload::Task(e) => format!("{} {}", e.task, e.action().as_str_name()),
            Payload::Other(type_url) => type_url.clone(),
        }
    }

    /// The payload's fields for `-o json|yaml`.
    fn to_json(&self) -> serde_json::Value {
        match self {
            Payload::Hello => json!({}),
            Payload::Address(e) => json!({"hostname": e.hostname, "addresses": e.addresses}),
            Payload::ConfigLoadError(e) => json!({"error": e.error}),
            Payload::ConfigValidationError(e) => json!({"error": e.error}),
            Payload::MachineStatus(e) => {
                let status = e.status.clone().unwrap_or_default();
                json!({
                    "stage": e.stage().as_str_name(),
                    "ready": status.ready,
                    "unmet_conditions": status.unmet_conditions.iter()
                        .map(|c| json!({"name": c.name, "reason": c.reason}))
                        .collect::<Vec<_>>(),
                })
            }
            Payload::Phase(e) => json!({"phase": e.phase, "action": e.action().as_str_name()}),
            Payload::Restart(e) => json!({"cmd": e.cmd}),
            Payload::Sequence(e) => json!({
                "sequence": e.sequence,
                "action": e.action().as_str_name(),
                "error": e.error.as_ref().map(|error| error.message.clone()),
            }),
            Payload::ServiceState(e) => json!({
                "service": e.service,
                "action": e.action().as_str_name(),
                "message": e.message,
                "healthy": e.health.as_ref().map(|h| h.healthy),
            }),
            Payload::Task(e) => json!({"task": e.task, "action": e.action().as_str_name()}),
            Payload::Other(_) => json!({}),
        }
    }
}

/// One event as printed by `events`.
fn render(format: OutputFormat, node: &str, width: usize, event: &Event) -> String {
    let payload = Payload::decode(event);
    match format {
        OutputFormat::Table => {
            let actor = if event.actor_id.is_empty() {
                "-"
            } else {
                &event.actor_id
            };
            format!(
                "{node:<width$}   {:<20}   {:<14}   {actor:<36}   {}\n",
                event.id,
                payload.kind(),
                payload.message()
            )
        }
        OutputFormat::Json | OutputFormat::Yaml => {
            let value = json!({
                "node": node,
                "id": event.id,
                "actor_id": event.actor_id,
                "type": event.data.as_ref().map(|any| any.type_url.clone()).unwrap_or_default(),
                "event": payload.to_json(),
            });
            if format == OutputFormat::Json {
                format!("{value}\n")
            } else {
                format!("---\n{}", serde_yaml::to_string(&value).unwrap_or_default())
            }
        }
    }
}

async fn events(globals: &Globals, args: EventsArgs) -> anyhow::Result<()> {
    let client = connect_with_timeout(globals, &args.target, None).await?;
    let targets = client.targets();
    let width = targets
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let request = EventsRequest {
        tail_events: args.tail.unwrap_or(0),
        tail_id: args.since_id.clone().unwrap_or_default(),
        tail_seconds: match args.since {
            Some(since) => i32::try_from(since.as_secs()).unwrap_or(i32::MAX),
            None => 0,
        },
        with_actor_id: args.actor_id.clone().unwrap_or_default(),
    };
    let format = args.output.format;
    if format == OutputFormat::Table {
        println!(
            "{:<width$}   {:<20}   {:<14}   {:<36}   MESSAGE",
            "NODE", "ID", "EVENT", "ACTOR"
        );
    }
    // One follower per node, all at once: every stream stays open for as long as the user
    // watches, so a concurrency limit would starve the nodes past it.
    let mut tasks = tokio::task::JoinSet::new();
    for (name, node) in targets {
        let client = client.clone();
        let request = request.clone();
        tasks.spawn(async move {
            let result =
                follow_events(&client, node.as_deref(), &name, request, format, width).await;
            (name, result)
        });
    }
    let mut failed = Vec::new();
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined?;
        total += 1;
        if let Err(message) = result {
            // Said at once: the other nodes may keep streaming for hours.
            eprintln!("{}", output::failure_line(&name, &message));
            failed.push(name);
        }
    }
    output::nodes_failed(total, &failed)
}

/// Prints one node's events until its stream ends; reconnects (after the last event seen)
/// when the connection is lost while the node restarts.
async fn follow_events(
    client: &Client,
    node: Option<&str>,
    name: &str,
    mut message: EventsRequest,
    format: OutputFormat,
    width: usize,
) -> Result<(), String> {
    use std::io::Write as _;
    let mut waiting = false;
    loop {
        let opened = async {
            let stream = client
                .machine()
                .events(request(node, message.clone())?)
                .await?;
            Ok::<_, Status>(stream.into_inner())
        }
        .await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(status) if waiting && retryable(&status) => {
                tokio::time::sleep(RETRY_INTERVAL).await;
                continue;
            }
            Err(status) => return Err(status_text(&status)),
        };
        if waiting {
            // Every reopen follows a loss: say so once per reconnection.
            eprintln!("node {name}: reconnected");
        }
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    if event.data.is_none() {
                        // The hello.
                        continue;
                    }
                    let text = render(format, name, width, &event);
                    let mut out = std::io::stdout().lock();
                    if out
                        .write_all(text.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        // stdout is gone (e.g. `| head`): stop quietly.
                        return Ok(());
                    }
                    // Continue after it when the stream must be reopened.
                    message.tail_events = 0;
                    message.tail_seconds = 0;
                    message.tail_id = event.id;
                }
                Ok(None) => {
                    eprintln!("node {name}: the event stream ended (machined stopped)");
                    return Ok(());
                }
                Err(status) if retryable(&status) => {
                    eprintln!(
                        "node {name}: connection lost ({}); reconnecting…",
                        status.message()
                    );
                    // Paced like a failed open: a stream that breaks again right after each
                    // reopen must not turn this into a busy loop.
                    tokio::time::sleep(RETRY_INTERVAL).await;
                    waiting = true;
                    break;
                }
                Err(status) => return Err(status_text(&status)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use basalt_api::common;

    use super::*;

    fn event(actor: &str, type_url: &str, value: Vec<u8>) -> Event {
        Event {
            metadata: None,
            data: Some(prost_types::Any {
                type_url: type_url.to_owned(),
                value,
            }),
            id: "cv1s2s8b0p6c73c3k1eg".to_owned(),
            actor_id: actor.to_owned(),
        }
    }

    fn task(name: &str, action: task_event::Action) -> Event {
        event(
            "a",
            "talos/runtime/machine.TaskEvent",
            machine::TaskEvent {
                task: name.to_owned(),
                action: action as i32,
            }
            .encode_to_vec(),
        )
    }

    fn sequence(name: &str, action: sequence_event::Action, error: Option<&str>) -> Event {
        event(
            "a",
            "talos/runtime/machine.SequenceEvent",
            machine::SequenceEvent {
                sequence: name.to_owned(),
                action: action as i32,
                error: error.map(|message| common::Error {
                    code: 0,
                    message: message.to_owned(),
                    details: Vec::new(),
                }),
            }
            .encode_to_vec(),
        )
    }

    fn status(stage: MachineStage, ready: bool) -> Event {
        use machine::machine_status_event::MachineStatus;
        use machine::machine_status_event::machine_status::UnmetCondition;
        event(
            "a",
            "talos/runtime/machine.MachineStatusEvent",
            machine::MachineStatusEvent {
                stage: stage as i32,
                status: Some(MachineStatus {
                    ready,
                    unmet_conditions: if ready {
                        Vec::new()
                    } else {
                        vec![UnmetCondition {
                            name: "service web".to_owned(),
                            reason: "Failed".to_owned(),
                        }]
                    },
                }),
            }
            .encode_to_vec(),
        )
    }

    #[test]
    fn a_reboot_is_done_when_the_node_runs_ready_again() {
        let mut progress = Progress::new(Action::Reboot(machine::reboot_request::Mode::Default));
        assert_eq!(
            progress.observe(&task("stopAllServices", task_event::Action::Start)),
            Step::Say("stopping services…".to_owned())
        );
        assert!(!progress.down_is_done(), "a rebooting node comes back");
        assert_eq!(
            progress.observe(&sequence("reboot", sequence_event::Action::Stop, None)),
            Step::Continue
        );
        assert_eq!(
            progress.observe(&status(MachineStage::Booting, false)),
            Step::Say("booting".to_owned())
        );
        assert_eq!(
            progress.observe(&status(MachineStage::Running, true)),
            Step::Done
        );
        let mut progress = Progress::new(Action::Reboot(machine::reboot_request::Mode::Default));
        assert_eq!(
            progress.observe(&status(MachineStage::Running, false)),
            Step::Failed("running but not ready: service web (Failed)".to_owned())
        );
    }

    #[test]
    fn a_shutdown_is_done_at_its_stop_or_when_the_node_goes_away_after_stopping_services() {
        let mut progress = Progress::new(Action::Shutdown { force: false });
        assert!(!progress.down_is_done());
        progress.observe(&task("stopAllServices", task_event::Action::Start));
        assert!(progress.down_is_done());
        assert_eq!(
            progress.observe(&sequence("shutdown", sequence_event::Action::Stop, None)),
            Step::Done
        );
        let mut reset = Progress::new(Action::Reset {
            graceful: true,
            reboot: false,
        });
        assert_eq!(
            reset.observe(&sequence(
                "reset",
                sequence_event::Action::Stop,
                Some("disk full")
            )),
            Step::Failed("reset failed: disk full".to_owned())
        );
    }

    #[test]
    fn events_render_as_lines_or_json() {
        let hello = Event {
            metadata: None,
            data: None,
            id: "x".to_owned(),
            actor_id: String::new(),
        };
        assert!(matches!(Payload::decode(&hello), Payload::Hello));
        let line = render(
            OutputFormat::Table,
            "n1",
            4,
            &task("stopAllServices", task_event::Action::Stop),
        );
        assert!(
            line.starts_with("n1     cv1s2s8b0p6c73c3k1eg   task "),
            "{line:?}"
        );
        assert!(
            line.trim_end().ends_with("stopAllServices STOP"),
            "{line:?}"
        );

        let json: serde_json::Value = serde_json::from_str(&render(
            OutputFormat::Json,
            "n1",
            4,
            &status(MachineStage::Running, true),
        ))
        .expect("json");
        assert_eq!(json["type"], "talos/runtime/machine.MachineStatusEvent");
        assert_eq!(json["event"]["stage"], "RUNNING");
        assert_eq!(json["event"]["ready"], true);
        assert_eq!(json["actor_id"], "a");

        let unknown = event("", "talos/runtime/machine.FutureEvent", vec![1, 2]);
        assert_eq!(Payload::decode(&unknown).kind(), "other");
    }

    #[test]
    fn connection_losses_are_retried_and_refusals_are_not() {
        assert!(retryable(&Status::unavailable("restarting")));
        assert!(retryable(&Status::unknown("h2 protocol error")));
        assert!(!retryable(&Status::permission_denied("no")));
        assert!(!retryable(&Status::failed_precondition(
            "a reboot is already in progress"
        )));
    }
}
