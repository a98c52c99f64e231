//! The node's lifecycle: Reboot, Shutdown and Reset as asynchronous *sequences*, the boot that
//! follows a reboot, and the `Events` RPC that lets a client follow them.
//!
//! # Sequences
//!
//! Each request is checked, gets a fresh `actor_id` (a UUID, returned at once) and runs in the
//! background. Every event it publishes carries that actor id, so a client can follow it with
//! `Events{with_actor_id}` alone. What is published, in order:
//!
//! | request | events |
//! | --- | --- |
//! | Reboot | `SequenceEvent{reboot, START}`, `MachineStatusEvent{REBOOTING}`, `PhaseEvent{stopEverything}` around `TaskEvent{stopAllServices}` START/STOP, `SequenceEvent{reboot, STOP}`, then the **boot** below |
//! | Shutdown | `SequenceEvent{shutdown, START}`, `MachineStatusEvent{SHUTTING_DOWN}`, `stopEverything`/`stopAllServices`, `SequenceEvent{shutdown, STOP}`, then machined stops (container) or powers off (metal) |
//! | Reset | `SequenceEvent{reset, START}`, `MachineStatusEvent{RESETTING}`, `stopEverything`/`stopAllServices`, `PhaseEvent{resetSystemDisk}` around `TaskEvent{wipeState}`, `SequenceEvent{reset, STOP}` (with `error` if the wipe failed), then the boot (`reboot: true`) or the halt |
//! | boot (container) | new boot id, `SequenceEvent{boot, START}`, `MachineStatusEvent{BOOTING}`, `PhaseEvent{startEverything}` around `TaskEvent{startAllServices}`, `MachineStatusEvent{RUNNING, ready}`, `SequenceEvent{boot, STOP}` |
//!
//! `RUNNING` has `status.ready = true` once every service is ready (healthy; without a health
//! check, Running for half a second; or a one-shot job that finished); if that takes longer
//! than [`BOOT_READY_PATIENCE`], `RUNNING` is published with
//! `ready = false` and the missing services as `unmet_conditions`. machined's own start is a
//! boot too (published without an actor id); a lifecycle request preempts it.
//!
//! Only one sequence runs at a time: another request meanwhile is FailedPrecondition ("a
//! reboot is already in progress"). Once machined shuts down, requests are Unavailable.
//!
//! # Container mode and metal mode
//!
//! Container mode (the default) never touches the host: a reboot stops every service through
//! the supervisor (apid included, as Talos does), renews the boot id ([`BootId`]) and starts
//! them again; a shutdown stops the services and then machined itself (the daemon exits 0);
//! reset wipes the state directory ([`StateLayout`]) in between. Reboot modes POWERCYCLE and
//! FORCE and Shutdown's `force` are accepted and behave as the default (there is nothing to
//! power-cycle, cordon or drain). Metal mode stops the services and then calls
//! [`Host::reboot`] or [`Host::poweroff`].
//!
//! # Reset
//!
//! Talos wipes the STATE and EPHEMERAL partitions. basalt wipes the contents of machined's
//! state directory except what the node needs to come back as itself ([`StateLayout`]):
//! the machine config it was started from (the "STATE" Talos keeps on the install media in
//! maintenance mode has no container-mode equivalent, and without it machined could not
//! start again), its own socket, apid's directory (credentials derived from the machine
//! config, reissued from it, and apid's config file, which apid needs to start again), and the
//! revocation list: the node keeps its CA, so it must keep refusing the certificates of that CA
//! an operator revoked (a reset that dropped the list would un-revoke them at the next start).
//! Service log files are emptied in place instead of deleted, because the supervisor keeps
//! them open. Everything else goes: config history, the boot id, files written by services.
//! `graceful` is accepted (there is no etcd to leave). `user_disks_to_wipe` is refused
//! (basalt manages no disks); `system_partitions_to_wipe` may name `STATE` or `EPHEMERAL`,
//! which both mean the state directory; `mode: USER_DISKS` wipes nothing.
//! The event bus is in memory and survives, so the client can follow the reset to the end.

mod events;
mod reset;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use basalt_api::{common, machine};
use basalt_sys::Host;
use tokio::sync::watch;

pub(crate) use self::reset::StateLayout;
use crate::Error;
use crate::boot_id::BootId;
use crate::config::Mode;
use crate::events::{EventBus, EventPayload};
use crate::services::BoxStream;
use crate::supervise::bulk::NotReady;
use crate::supervise::{ServiceManager, stopped};

/// How long a boot waits for every service to be ready before it reports `RUNNING` with
/// `ready = false`.
pub const BOOT_READY_PATIENCE: Duration = Duration::from_secs(60);

/// A hook run at every container-mode boot after a reboot, before the services start (for
/// example: make a staged config current). It runs on the blocking pool and is published as a
/// `TaskEvent` named after it; an error is logged and reported in the boot's `SequenceEvent`,
/// and the boot goes on.
pub(crate) type BootHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What a [`Lifecycle`] is built from.
#[derive(Debug)]
pub(crate) struct LifecycleParts {
    pub(crate) mode: Mode,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) services: ServiceManager,
    pub(crate) boot_id: BootId,
    /// The state directory and what survives a reset; `None` when machined keeps no state
    /// (then reset wipes nothing).
    pub(crate) state: Option<StateLayout>,
    /// See [`BOOT_READY_PATIENCE`].
    pub(crate) ready_patience: Duration,
}

/// The handle on the node's lifecycle; cheap to clone.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    host: Arc<dyn Host>,
    services: ServiceManager,
    events: EventBus,
    boot_id: BootId,
    state: Option<StateLayout>,
    ready_patience: Duration,
    slot: Mutex<Slot>,
    /// Turns true when a sequence wants machined to stop (container-mode shutdown or halt).
    halt: watch::Sender<bool>,
    /// Turns true when machined shuts down: `Events` streams end, requests are refused.
    closing: watch::Sender<bool>,
    boot_hooks: Mutex<Vec<(String, BootHook)>>,
}

/// What runs now.
#[derive(Debug)]
enum Slot {
    Idle,
    /// machined's own start: a lifecycle request cancels it through the sender.
    InitialBoot(watch::Sender<bool>),
    /// A requested sequence, not preemptible.
    Busy(Kind),
    /// machined is shutting down.
    Closed,
}

/// The requested sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Reboot,
    Reset,
    Shutdown,
}

impl Kind {
    /// The sequence name in events and messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Reboot => "reboot",
            Kind::Reset => "reset",
            Kind::Shutdown => "shutdown",
        }
    }
}

/// What a reset request asks for, checked before the sequence starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ResetPlan {
    wipe_state: bool,
    reboot: bool,
}

impl Lifecycle {
    pub(crate) fn new(parts: LifecycleParts) -> Self {
        let LifecycleParts {
            mode,
            host,
            services,
            boot_id,
            state,
            ready_patience,
        } = parts;
        let events = services.events().clone();
        Lifecycle {
            inner: Arc::new(Inner {
                mode,
                host,
                services,
                events,
                boot_id,
                state,
                ready_patience,
                slot: Mutex::new(Slot::Idle),
                halt: watch::channel(false).0,
                closing: watch::channel(false).0,
                boot_hooks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The node's boot id.
    pub(crate) fn boot_id(&self) -> &BootId {
        &self.inner.boot_id
    }

    /// Registers a hook for every boot after a container-mode reboot (see [`BootHook`]).
    pub(crate) fn on_boot(&self, name: impl Into<String>, hook: BootHook) {
        lock(&self.inner.boot_hooks).push((name.into(), hook));
    }

    /// Publishes machined's own boot (no actor id): `BOOTING`, then `RUNNING` once the services
    /// are ready. Call right after the services were launched. A lifecycle request cancels it.
    pub(crate) fn start_boot(&self) {
        let (cancel_tx, cancel) = watch::channel(false);
        {
            let mut slot = lock(&self.inner.slot);
            if !matches!(*slot, Slot::Idle) {
                return;
            }
            *slot = Slot::InitialBoot(cancel_tx);
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let error = inner.boot(None, Some(cancel)).await;
            if let Some(error) = error {
                tracing::warn!(%error, "Boot finished with an error");
            }
            let mut slot = lock(&inner.slot);
            if matches!(*slot, Slot::InitialBoot(_)) {
                *slot = Slot::Idle;
            }
        });
    }

    /// `Reboot`: starts the reboot sequence, returns its actor id.
    pub(crate) fn reboot(&self, mode: machine::reboot_request::Mode) -> Result<String, Error> {
        // The id first: a failure after `begin` would leave the slot taken for good.
        let actor = new_actor_id()?;
        self.inner.begin(Kind::Reboot)?;
        tracing::info!(actor_id = %actor, mode = mode.as_str_name(), "Reboot requested");
        let inner = Arc::clone(&self.inner);
        let id = actor.clone();
        tokio::spawn(async move { inner.reboot_sequence(id).await });
        Ok(actor)
    }

    /// `Shutdown`: starts the shutdown sequence, returns its actor id. `force` is accepted
    /// (there is no cordon or drain to skip).
    pub(crate) fn shutdown(&self, force: bool) -> Result<String, Error> {
        // The id first: a failure after `begin` would leave the slot taken for good.
        let actor = new_actor_id()?;
        self.inner.begin(Kind::Shutdown)?;
        tracing::info!(actor_id = %actor, force, "Shutdown requested");
        let inner = Arc::clone(&self.inner);
        let id = actor.clone();
        tokio::spawn(async move { inner.shutdown_sequence(id).await });
        Ok(actor)
    }

    /// `Reset`: checks the request, starts the reset sequence, returns its actor id.
    pub(crate) fn reset(&self, request: &machine::ResetRequest) -> Result<String, Error> {
        let plan = ResetPlan::check(request)?;
        // The id first: a failure after `begin` would leave the slot taken for good.
        let actor = new_actor_id()?;
        self.inner.begin(Kind::Reset)?;
        tracing::info!(
            actor_id = %actor,
            graceful = request.graceful,
            reboot = plan.reboot,
            wipe_state = plan.wipe_state,
            "Reset requested"
        );
        let inner = Arc::clone(&self.inner);
        let id = actor.clone();
        tokio::spawn(async move { inner.reset_sequence(id, plan).await });
        Ok(actor)
    }

    /// `Events`: the hello event, the requested backlog, then new events until the client
    /// leaves or machined shuts down.
    pub(crate) fn events(
        &self,
        request: machine::EventsRequest,
    ) -> Result<BoxStream<machine::Event>, Error> {
        events::stream(&self.inner.events, request, self.inner.closing.subscribe())
    }

    /// Completes when a sequence asks machined to stop (container-mode shutdown, or a reset
    /// without reboot). `Bound::serve` treats it like its shutdown signal.
    pub(crate) fn halted(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut halt = self.inner.halt.subscribe();
        async move { stopped(&mut halt).await }
    }

    /// machined is shutting down: `Events` streams end (after what they already received) and
    /// new requests are refused.
    pub(crate) fn begin_shutdown(&self) {
        let mut slot = lock(&self.inner.slot);
        if let Slot::InitialBoot(cancel) = &*slot {
            cancel.send_replace(true);
        }
        *slot = Slot::Closed;
        drop(slot);
        self.inner.closing.send_replace(true);
    }
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("mode", &self.inner.mode)
            .field("slot", &*lock(&self.inner.slot))
            .field("state", &self.inner.state)
            .finish_non_exhaustive()
    }
}

// === impl Inner ===

impl Inner {
    /// Takes the slot for `kind`, cancelling machined's own boot if it still runs.
    fn begin(&self, kind: Kind) -> Result<(), Error> {
        let mut slot = lock(&self.slot);
        match &*slot {
            Slot::Idle => {}
            Slot::InitialBoot(cancel) => {
                cancel.send_replace(true);
            }
            Slot::Busy(running) => {
                return Err(Error::SequenceInProgress {
                    sequence: running.as_str(),
                });
            }
            Slot::Closed => return Err(Error::ShuttingDown),
        }
        *slot = Slot::Busy(kind);
        Ok(())
    }

    /// Frees the slot after a sequence that left machined running.
    fn finish(&self) {
        let mut slot = lock(&self.slot);
        if matches!(*slot, Slot::Busy(_)) {
            *slot = Slot::Idle;
        }
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    fn publish(&self, payload: EventPayload, actor: Option<&str>) {
        self.events.publish(payload, actor.map(str::to_owned));
    }

    fn sequence(
        &self,
        name: &str,
        action: machine::sequence_event::Action,
        error: Option<String>,
        actor: Option<&str>,
    ) {
        self.publish(
            EventPayload::Sequence(machine::SequenceEvent {
                sequence: name.to_owned(),
                action: action as i32,
                error: error.map(|message| common::Error {
                    code: common::Code::Fatal as i32,
                    message,
                    details: Vec::new(),
                }),
            }),
            actor,
        );
    }

    fn stage(
        &self,
        stage: machine::machine_status_event::MachineStage,
        missing: &[NotReady],
        actor: Option<&str>,
    ) {
        use machine::machine_status_event::{MachineStatus, machine_status::UnmetCondition};
        let ready =
            stage == machine::machine_status_event::MachineStage::Running && missing.is_empty();
        self.publish(
            EventPayload::MachineStatus(machine::MachineStatusEvent {
                stage: stage as i32,
                status: Some(MachineStatus {
                    ready,
                    unmet_conditions: missing
                        .iter()
                        .map(|service| UnmetCondition {
                            name: format!("service {}", service.service),
                            reason: service.reason.clone(),
                        })
                        .collect(),
                }),
            }),
            actor,
        );
    }

    fn phase(&self, name: &str, action: machine::phase_event::Action, actor: Option<&str>) {
        self.publish(
            EventPayload::Phase(machine::PhaseEvent {
                phase: name.to_owned(),
                action: action as i32,
            }),
            actor,
        );
    }

    fn task(&self, name: &str, action: machine::task_event::Action, actor: Option<&str>) {
        self.publish(
            EventPayload::Task(machine::TaskEvent {
                task: name.to_owned(),
                action: action as i32,
            }),
            actor,
        );
    }

    /// Runs `work` as task `task` inside phase `phase`, publishing their START and STOP.
    async fn phase_task<T>(
        &self,
        phase: &str,
        task: &str,
        actor: Option<&str>,
        work: impl Future<Output = T>,
    ) -> T {
        use machine::{phase_event, task_event};
        self.phase(phase, phase_event::Action::Start, actor);
        self.task(task, task_event::Action::Start, actor);
        let out = work.await;
        self.task(task, task_event::Action::Stop, actor);
        self.phase(phase, phase_event::Action::Stop, actor);
        out
    }

    /// The first half of every sequence: START, the stage, and every service stopped.
    async fn stop_everything(&self, kind: Kind, actor: &str) {
        use machine::machine_status_event::MachineStage;
        self.sequence(
            kind.as_str(),
            machine::sequence_event::Action::Start,
            None,
            Some(actor),
        );
        let stage = match kind {
            Kind::Reboot => MachineStage::Rebooting,
            Kind::Reset => MachineStage::Resetting,
            Kind::Shutdown => MachineStage::ShuttingDown,
        };
        self.stage(stage, &[], Some(actor));
        self.phase_task(
            "stopEverything",
            "stopAllServices",
            Some(actor),
            self.services.stop_all(),
        )
        .await;
    }

    async fn reboot_sequence(self: Arc<Self>, actor: String) {
        self.stop_everything(Kind::Reboot, &actor).await;
        self.restart_or_halt(Kind::Reboot, &actor, None, true).await;
    }

    async fn shutdown_sequence(self: Arc<Self>, actor: String) {
        self.stop_everything(Kind::Shutdown, &actor).await;
        self.restart_or_halt(Kind::Shutdown, &actor, None, false)
            .await;
    }

    async fn reset_sequence(self: Arc<Self>, actor: String, plan: ResetPlan) {
        self.stop_everything(Kind::Reset, &actor).await;
        let mut error = None;
        if plan.wipe_state
            && let Some(layout) = self.state.clone()
        {
            let wiped = self
                .phase_task("resetSystemDisk", "wipeState", Some(&actor), async move {
                    tokio::task::spawn_blocking(move || layout.wipe())
                        .await
                        .map_err(|source| Error::BlockingTask { source })?
                })
                .await;
            match wiped {
                Ok(report) => tracing::info!(
                    removed = report.removed,
                    emptied = report.emptied,
                    kept = report.kept,
                    "Wiped the state directory"
                ),
                Err(err) => {
                    tracing::error!(
                        error = &err as &dyn std::error::Error,
                        "Reset could not wipe the state directory"
                    );
                    error = Some(format!(
                        "wipe the state directory: {}",
                        basalt_daemon::error_chain(&err)
                    ));
                }
            }
        }
        self.restart_or_halt(Kind::Reset, &actor, error, plan.reboot)
            .await;
    }

    /// The end of a sequence whose services are stopped: STOP, then a container-mode boot or
    /// halt, or the host's reboot or power-off in metal mode.
    async fn restart_or_halt(&self, kind: Kind, actor: &str, error: Option<String>, reboot: bool) {
        match self.mode {
            Mode::Container => {
                self.sequence(
                    kind.as_str(),
                    machine::sequence_event::Action::Stop,
                    error,
                    Some(actor),
                );
                if reboot {
                    if let Some(error) = self.boot(Some(actor), None).await {
                        tracing::warn!(actor_id = actor, %error, "Boot finished with an error");
                    }
                    self.finish();
                } else {
                    tracing::info!(
                        actor_id = actor,
                        sequence = kind.as_str(),
                        "Stopping machined"
                    );
                    self.halt.send_replace(true);
                }
            }
            Mode::Metal => {
                let host = Arc::clone(&self.host);
                let result = tokio::task::spawn_blocking(move || {
                    // The last lines before the machine goes away, written before it does.
                    basalt_daemon::flush_logs();
                    if reboot {
                        host.reboot()
                    } else {
                        host.poweroff()
                    }
                })
                .await;
                // reboot(2) does not return when it works; anything here is a failure.
                let failure = match result {
                    Ok(Ok(())) => "the host did not go down".to_owned(),
                    Ok(Err(err)) => {
                        let err = Error::Host { source: err };
                        tracing::error!(
                            error = &err as &dyn std::error::Error,
                            "Cannot {} the machine",
                            kind.as_str()
                        );
                        basalt_daemon::error_chain(&err)
                    }
                    Err(join) => format!("the {} task failed: {join}", kind.as_str()),
                };
                let error = match error {
                    Some(earlier) => format!("{earlier}; {failure}"),
                    None => failure,
                };
                self.sequence(
                    kind.as_str(),
                    machine::sequence_event::Action::Stop,
                    Some(error),
                    Some(actor),
                );
                // The services are stopped and the machine is still up: bring them back.
                self.services.start_all().await;
                self.finish();
            }
        }
    }

    /// A container-mode boot: new boot id (after a reboot), hooks, services started, wait
    /// until ready, RUNNING. machined's own start (`cancel` set) keeps the boot id it has and
    /// runs no hooks; the services were launched already. Returns the boot's error, if any.
    async fn boot(
        &self,
        actor: Option<&str>,
        cancel: Option<watch::Receiver<bool>>,
    ) -> Option<String> {
        use machine::machine_status_event::MachineStage;
        use machine::sequence_event::Action;
        let after_reboot = cancel.is_none();
        let mut errors = Vec::new();
        if after_reboot && let Err(err) = self.boot_id.renew() {
            tracing::error!(
                error = &err as &dyn std::error::Error,
                "Cannot store the new boot id"
            );
            errors.push(format!(
                "store the new boot id: {}",
                basalt_daemon::error_chain(&err)
            ));
        }
        self.sequence("boot", Action::Start, None, actor);
        self.stage(MachineStage::Booting, &self.services.not_ready(), actor);
        if after_reboot {
            let hooks = lock(&self.boot_hooks).clone();
            for (name, hook) in hooks {
                self.task(&name, machine::task_event::Action::Start, actor);
                let result = tokio::task::spawn_blocking(move || hook()).await;
                self.task(&name, machine::task_event::Action::Stop, actor);
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => errors.push(format!("{name}: {error}")),
                    Err(join) => errors.push(format!("{name}: {join}")),
                }
            }
            self.phase_task(
                "startEverything",
                "startAllServices",
                actor,
                self.services.start_all(),
            )
            .await;
        }

        let mut closing = self.closing.subscribe();
        // A boot after a reboot cannot be cancelled: its receiver's sender lives until the end
        // (a dropped sender would read as a cancellation).
        let (_not_cancellable, never) = watch::channel(false);
        let mut cancel = cancel.unwrap_or(never);
        let missing = tokio::select! {
            missing = self.services.wait_ready(self.ready_patience) => missing,
            () = stopped(&mut closing) => return Some("machined is shutting down".to_owned()),
            () = stopped(&mut cancel) => return None,
        };
        if self.is_closing() || *cancel.borrow() {
            return None;
        }
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|m| m.service.as_str()).collect();
            tracing::warn!(services = ?names, patience_s = self.ready_patience.as_secs(), "Services not ready after the boot's patience");
        }
        self.stage(MachineStage::Running, &missing, actor);
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        self.sequence("boot", Action::Stop, error.clone(), actor);
        tracing::info!(boot_id = %self.boot_id.current().unwrap_or_default(), ready = missing.is_empty(), "Node running");
        error
    }
}

impl ResetPlan {
    /// Checks a `ResetRequest` against what basalt can do (see the module docs).
    fn check(request: &machine::ResetRequest) -> Result<Self, Error> {
        use machine::reset_request::WipeMode;
        if !request.user_disks_to_wipe.is_empty() {
            return Err(Error::InvalidArgument {
                reason: "basalt manages no user disks: user_disks_to_wipe must be empty".to_owned(),
            });
        }
        for spec in &request.system_partitions_to_wipe {
            if !matches!(spec.label.as_str(), "STATE" | "EPHEMERAL") {
                return Err(Error::InvalidArgument {
                    reason: format!(
                        "unknown system partition {:?}: basalt knows STATE and EPHEMERAL (both \
                         mean machined's state directory)",
                        spec.label
                    ),
                });
            }
        }
        let mode = WipeMode::try_from(request.mode).map_err(|_| Error::InvalidArgument {
            reason: format!("unknown wipe mode {}", request.mode),
        })?;
        let wipe_state = mode != WipeMode::UserDisks
            && (request.system_partitions_to_wipe.is_empty()
                || request
                    .system_partitions_to_wipe
                    .iter()
                    .any(|spec| spec.wipe));
        Ok(ResetPlan {
            wipe_state,
            reboot: request.reboot,
        })
    }
}

/// A new actor id: a UUID v4, as Talos's.
fn new_actor_id() -> Result<String, Error> {
    crate::boot_id::uuid_v4().map_err(|source| Error::BootId {
        path: std::path::PathBuf::from("/dev/urandom"),
        source,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment or a clone.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(f: impl FnOnce(&mut machine::ResetRequest)) -> Result<ResetPlan, Error> {
        let mut request = machine::ResetRequest::default();
        f(&mut request);
        ResetPlan::check(&request)
    }

    #[test]
    fn reset_requests_map_onto_the_state_directory() {
        assert_eq!(
            reset(|_| {}).expect("default"),
            ResetPlan {
                wipe_state: true,
                reboot: false
            }
        );
        assert!(reset(|r| r.reboot = true).expect("reboot").reboot);
        let only_user = reset(|r| r.mode = machine::reset_request::WipeMode::UserDisks as i32)
            .expect("user disks mode");
        assert!(!only_user.wipe_state);
        let labelled = reset(|r| {
            r.system_partitions_to_wipe = vec![machine::ResetPartitionSpec {
                label: "EPHEMERAL".to_owned(),
                wipe: true,
            }];
        })
        .expect("ephemeral");
        assert!(labelled.wipe_state);
    }

    #[test]
    fn reset_refuses_what_basalt_cannot_do() {
        let err = reset(|r| r.user_disks_to_wipe = vec!["/dev/sdb".to_owned()]).expect_err("disks");
        assert!(matches!(err, Error::InvalidArgument { .. }));
        let err = reset(|r| {
            r.system_partitions_to_wipe = vec![machine::ResetPartitionSpec {
                label: "META".to_owned(),
                wipe: true,
            }];
        })
        .expect_err("meta");
        assert!(err.to_string().contains("META"), "{err}");
        assert!(reset(|r| r.mode = 7).is_err());
    }
}
