//! One task per service: waits for dependencies, spawns the process in its own process group,
//! captures its output, checks its health, restarts it with backoff, and obeys start / stop /
//! restart commands. Every transition is recorded in the service's [`Status`] and published
//! on the event bus.
//!
//! ```text
//!            ┌──────────── Start/Restart ─────────────┐
//!            ▼                                        │
//!   ┌─► WaitDeps ──deps up──► Run ──exit──► after_exit ─┼─ policy says no ──► Idle
//!   │   (Waiting)          (Preparing,      (Finished/   │
//!   │                       Running)         Failed)     └─ restart ──► Backoff (Waiting)
//!   └──────────────── delay elapsed / Start ◄────────────────────────────┘
//! ```
//! Stop in any phase ends in Idle (Stopping → Finished when a process ran).

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use basalt_api::machine;
use basalt_config::RestartPolicy;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::children::{self, OwnedChild};
use super::health;
use super::output::{self, LogSink};
use super::spec::ServiceSpec;
use super::state::{Health, State, Status};
use super::{Shared, stopped};
use crate::config::Backoff;
use crate::events::EventPayload;

/// How long output readers may keep draining a pipe after the process exited (a grandchild
/// that escaped the process group may hold it open forever).
const DRAIN_OUTPUT: Duration = Duration::from_secs(1);

/// A request to a runner; the sender is answered when the request has been carried out
/// (for Stop and Remove: the process is gone).
#[derive(Debug)]
pub(crate) enum Request {
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<()>),
    /// Stop, then end the runner with a last Finished event saying why: the service left the
    /// machine config, or its spec changed and a successor takes over.
    Remove(oneshot::Sender<()>, &'static str),
}

/// One supervised service: its spec, status, output and command queue.
#[derive(Debug)]
pub(crate) struct Unit {
    pub(crate) spec: ServiceSpec,
    pub(crate) output: Arc<LogSink>,
    status: Mutex<Status>,
    commands: mpsc::UnboundedSender<Request>,
}

impl Unit {
    /// A unit and the receiving end of its command queue (handed to [`run`] at launch).
    pub(crate) fn new(
        spec: ServiceSpec,
        output: LogSink,
    ) -> (Self, mpsc::UnboundedReceiver<Request>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let status = Status::new(spec.health.is_some());
        (
            Unit {
                spec,
                output: Arc::new(output),
                status: Mutex::new(status),
                commands,
            },
            receiver,
        )
    }

    /// The successor of `old` under a changed spec: same output (ring, file, followers) and
    /// history of events, so a spec change reads as a restart rather than a new service.
    pub(crate) fn replacing(
        spec: ServiceSpec,
        old: &Unit,
    ) -> (Self, mpsc::UnboundedReceiver<Request>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let mut status = old.status();
        status.has_health_check = spec.health.is_some();
        status.health = Health::default();
        (
            Unit {
                spec,
                output: Arc::clone(&old.output),
                status: Mutex::new(status),
                commands,
            },
            receiver,
        )
    }

    /// A copy of the current status.
    pub(crate) fn status(&self) -> Status {
        self.lock().clone()
    }

    /// Whether dependents may start.
    pub(crate) fn is_up(&self) -> bool {
        self.lock().is_up()
    }

    /// Queues a command; false when the runner is gone (machined is shutting down).
    pub(crate) fn send(&self, command: Request) -> bool {
        self.commands.send(command).is_ok()
    }

    /// The event that announces the current state (used once, at registration).
    pub(crate) fn current_event(&self) -> machine::ServiceStateEvent {
        let status = self.lock();
        machine::ServiceStateEvent {
            service: self.spec.id.clone(),
            action: status.state.action() as i32,
            message: status
                .events
                .back()
                .map(|event| event.message.clone())
                .unwrap_or_default(),
            health: Some(status.health.to_proto()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        // Every update is a handful of assignments, so a poisoned lock is still consistent.
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enters `state`: records it, publishes a ServiceStateEvent, logs it and wakes services
    /// waiting on this one.
    fn transition(&self, shared: &Shared, state: State, message: String) {
        let event = {
            let mut status = self.lock();
            status.record(state, message.clone());
            machine::ServiceStateEvent {
                service: self.spec.id.clone(),
                action: state.action() as i32,
                message: message.clone(),
                health: Some(status.health.to_proto()),
            }
        };
        match state {
            State::Failed => {
                tracing::warn!(service = %self.spec.id, state = %state, %message, "Service state");
            }
            _ => tracing::info!(service = %self.spec.id, state = %state, %message, "Service state"),
        }
        shared
            .events
            .publish(EventPayload::ServiceState(event), None);
        shared.topology.send_modify(|version| *version += 1);
    }

    /// Records a health check result; a change of healthy/unhealthy is published like a
    /// transition (Talos does the same), an unchanged result only updates the message.
    fn set_health(&self, shared: &Shared, result: Result<(), String>) {
        let healthy = result.is_ok();
        let event = {
            let mut status = self.lock();
            let message = result.err().unwrap_or_default();
            let changed = status.health.healthy != Some(healthy);
            status.health.last_message = message.clone();
            if !changed {
                return;
            }
            status.health.healthy = Some(healthy);
            status.health.last_change = Some(std::time::SystemTime::now());
            machine::ServiceStateEvent {
                service: self.spec.id.clone(),
                action: status.state.action() as i32,
                message: if healthy {
                    "Health check successful".to_owned()
                } else {
                    format!("Health check failed: {message}")
                },
                health: Some(status.health.to_proto()),
            }
        };
        tracing::info!(service = %self.spec.id, healthy, "Service health changed");
        shared
            .events
            .publish(EventPayload::ServiceState(event), None);
        shared.topology.send_modify(|version| *version += 1);
    }

    /// Forgets the health of a process that is gone.
    fn reset_health(&self) {
        self.lock().health = Health::default();
    }
}

/// Exponential restart delay: `initial`, doubling after each quick exit up to `max`; a
/// process that stayed up at least `reset_after` starts over at `initial`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BackoffState {
    config: Backoff,
    next: Duration,
}

impl BackoffState {
    pub(crate) fn new(config: Backoff) -> Self {
        BackoffState {
            config,
            next: config.initial,
        }
    }

    /// The delay before restarting a process that ran for `uptime`.
    pub(crate) fn after_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.config.reset_after {
            self.next = self.config.initial;
        }
        let delay = self.next;
        self.next = (delay * 2).min(self.config.max).max(self.config.initial);
        delay
    }

    /// Starts over (an operator's Start or Restart).
    pub(crate) fn reset(&mut self) {
        self.next = self.config.initial;
    }
}

/// Where a runner is.
#[derive(Debug)]
enum Phase {
    /// Not running and not going to until told to start.
    Idle,
    /// Waiting for dependencies, then starting.
    WaitDeps,
    /// Starting a process and supervising it.
    Run,
    /// Waiting out the restart delay.
    Backoff(Duration),
    /// machined is shutting down: the task ends.
    Exit,
}

/// A runner's loop, from registration to machined's shutdown.
pub(crate) async fn run(
    unit: Arc<Unit>,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Request>,
) {
    let mut runner = Runner {
        shutdown: shared.shutdown.subscribe(),
        backoff: BackoffState::new(unit.spec.backoff),
        unit,
        shared,
    };
    let mut phase = Phase::WaitDeps;
    loop {
        phase = match phase {
            Phase::Idle => runner.idle(&mut commands).await,
            Phase::WaitDeps => runner.wait_deps(&mut commands).await,
            Phase::Run => runner.run_once(&mut commands).await,
            Phase::Backoff(delay) => runner.backoff_wait(delay, &mut commands).await,
            Phase::Exit => return,
        };
    }
}

struct Runner {
    unit: Arc<Unit>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    backoff: BackoffState,
}

/// A running process and what watches it.
struct Running {
    /// Registered with the orphan reaper, which leaves it to this runner.
    child: OwnedChild,
    pid: u32,
    started: Instant,
    pumps: Vec<JoinHandle<()>>,
    health: Option<JoinHandle<()>>,
}

impl Runner {
    fn transition(&self, state: State, message: impl Into<String>) {
        self.unit.transition(&self.shared, state, message.into());
    }

    async fn idle(&mut self, commands: &mut mpsc::UnboundedReceiver<Request>) -> Phase {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Request::Start(ack) | Request::Restart(ack)) => {
                        self.backoff.reset();
                        let _ = ack.send(());
                        return Phase::WaitDeps;
                    }
                    // Already stopped: nothing to do.
                    Some(Request::Stop(ack)) => { let _ = ack.send(()); }
                    Some(Request::Remove(ack, reason)) => return self.removed(ack, reason),
                    None => return Phase::Exit,
                },
                () = stopped(&mut self.shutdown) => return Phase::Exit,
            }
        }
    }

    /// The end of a removed service's runner (its process, if any, is already gone).
    fn removed(&self, ack: oneshot::Sender<()>, reason: &'static str) -> Phase {
        self.transition(State::Finished, reason);
        let _ = ack.send(());
        Phase::Exit
    }

    async fn wait_deps(&mut self, commands: &mut mpsc::UnboundedReceiver<Request>) -> Phase {
        // Subscribed before the first look, so no change between look and wait is missed.
        let mut topology = self.shared.topology.subscribe();
        let mut announced = String::new();
        loop {
            let missing: Vec<&str> = self
                .unit
                .spec
                .depends_on
                .iter()
                .filter(|dep| !self.shared.unit(dep).is_some_and(|unit| unit.is_up()))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                return Phase::Run;
            }
            let message = waiting_message(&missing);
            if message != announced {
                self.transition(State::Waiting, message.clone());
                announced = message;
            }
            tokio::select! {
                changed = topology.changed() => if changed.is_err() { return Phase::Exit },
                command = commands.recv() => match command {
                    // Already on its way up.
                    Some(Request::Start(ack) | Request::Restart(ack)) => { let _ = ack.send(()); }
                    Some(Request::Stop(ack)) => {
                        self.transition(State::Finished, "Stopped before it started");
                        let _ = ack.send(());
                        return Phase::Idle;
                    }
                    Some(Request::Remove(ack, reason)) => return self.removed(ack, reason),
                    None => return Phase::Exit,
                },
                () = stopped(&mut self.shutdown) => return Phase::Exit,
            }
        }
    }

    async fn run_once(&mut self, commands: &mut mpsc::UnboundedReceiver<Request>) -> Phase {
        self.transition(State::Preparing, "Starting the process");
        let mut running = match self.spawn() {
            Ok(running) => running,
            Err(err) => {
                self.transition(
                    State::Failed,
                    format!(
                        "Failed to start {}: {err}",
                        self.unit.spec.program.display()
                    ),
                );
                return self.after_exit(false, Duration::ZERO);
            }
        };
        self.transition(
            State::Running,
            format!("Started process (PID {})", running.pid),
        );
        if let Some(check) = self.unit.spec.health.clone() {
            let unit = Arc::clone(&self.unit);
            let shared = Arc::clone(&self.shared);
            running.health = Some(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(unit.spec.health_interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first tick is immediate; give the process one interval to come up.
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let result = health::check(&unit.spec, &check).await;
                    unit.set_health(&shared, result);
                }
            }));
        }

        loop {
            tokio::select! {
                status = running.child.wait() => {
                    let uptime = running.started.elapsed();
                    self.cleanup(&mut running).await;
                    let (state, message, success) = describe_exit(status);
                    self.transition(state, message);
                    return self.after_exit(success, uptime);
                }
                command = commands.recv() => match command {
                    // Already running.
                    Some(Request::Start(ack)) => { let _ = ack.send(()); }
                    Some(Request::Stop(ack)) => {
                        self.stop(&mut running).await;
                        self.transition(State::Finished, "Service stopped");
                        let _ = ack.send(());
                        return Phase::Idle;
                    }
                    Some(Request::Restart(ack)) => {
                        self.stop(&mut running).await;
                        self.transition(State::Finished, "Service stopped for a restart");
                        self.backoff.reset();
                        let _ = ack.send(());
                        return Phase::WaitDeps;
                    }
                    Some(Request::Remove(ack, reason)) => {
                        self.stop(&mut running).await;
                        return self.removed(ack, reason);
                    }
                    None => {
                        self.stop(&mut running).await;
                        return Phase::Exit;
                    }
                },
                () = stopped(&mut self.shutdown) => {
                    self.stop(&mut running).await;
                    self.transition(State::Finished, "Service stopped");
                    return Phase::Exit;
                }
            }
        }
    }

    async fn backoff_wait(
        &mut self,
        delay: Duration,
        commands: &mut mpsc::UnboundedReceiver<Request>,
    ) -> Phase {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        tokio::select! {
            () = &mut sleep => Phase::WaitDeps,
            command = commands.recv() => match command {
                // Start now rather than after the delay.
                Some(Request::Start(ack) | Request::Restart(ack)) => {
                    self.backoff.reset();
                    let _ = ack.send(());
                    Phase::WaitDeps
                }
                Some(Request::Stop(ack)) => {
                    self.transition(State::Finished, "Restart cancelled: service stopped");
                    let _ = ack.send(());
                    Phase::Idle
                }
                Some(Request::Remove(ack, reason)) => self.removed(ack, reason),
                None => Phase::Exit,
            },
            () = stopped(&mut self.shutdown) => Phase::Exit,
        }
    }

    /// What follows an exit: the restart delay, or Idle when the policy says no restart.
    fn after_exit(&mut self, success: bool, uptime: Duration) -> Phase {
        let restart = match self.unit.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if !restart {
            return Phase::Idle;
        }
        let delay = self.backoff.after_exit(uptime);
        self.transition(
            State::Waiting,
            format!(
                "Restarting in {} (restart policy {})",
                format_delay(delay),
                self.unit.spec.restart
            ),
        );
        Phase::Backoff(delay)
    }

    /// Spawns the process as the leader of a new process group, with its output captured.
    fn spawn(&self) -> std::io::Result<Running> {
        let spec = &self.unit.spec;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // If the runner is dropped without a clean stop, the process dies with it.
            .kill_on_drop(true);
        if spec.own_process_group {
            // Its own group, so stop signals reach everything it started.
            command.process_group(0);
        }
        spec.apply_env(&mut command);
        let mut child = children::spawn(&mut command)?;
        let pid = child.pid();
        let mut pumps = Vec::with_capacity(2);
        if let Some(stdout) = child.stdout.take() {
            pumps.push(tokio::spawn(output::pump(
                stdout,
                Arc::clone(&self.unit.output),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.push(tokio::spawn(output::pump(
                stderr,
                Arc::clone(&self.unit.output),
            )));
        }
        Ok(Running {
            child,
            pid,
            started: Instant::now(),
            pumps,
            health: None,
        })
    }

    /// SIGTERM to the process group (or the process); SIGKILL after the grace period; then
    /// reaped.
    async fn stop(&self, running: &mut Running) {
        let group = self.unit.spec.own_process_group;
        self.transition(
            State::Stopping,
            if group {
                format!("Sending SIGTERM to process group {}", running.pid)
            } else {
                format!("Sending SIGTERM to process {}", running.pid)
            },
        );
        let terminated = if group {
            basalt_sys::terminate_process_group(running.pid)
        } else {
            basalt_sys::terminate(running.pid)
        };
        if let Err(err) = terminated {
            tracing::warn!(
                service = %self.unit.spec.id,
                error = &err as &dyn std::error::Error,
                "Cannot send SIGTERM"
            );
        }
        let grace = self.shared.stop_grace;
        match tokio::time::timeout(grace, running.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    service = %self.unit.spec.id,
                    grace_ms = grace.as_millis() as u64,
                    "Service ignored SIGTERM; killing it"
                );
                let killed: Result<(), Box<dyn std::error::Error + Send + Sync>> = if group {
                    basalt_sys::kill_process_group(running.pid).map_err(Into::into)
                } else {
                    running.child.start_kill().map_err(Into::into)
                };
                if let Err(err) = killed {
                    tracing::warn!(
                        service = %self.unit.spec.id,
                        error = &*err as &(dyn std::error::Error + 'static),
                        "Cannot send SIGKILL"
                    );
                }
                if let Err(err) = running.child.wait().await {
                    tracing::warn!(
                        service = %self.unit.spec.id,
                        error = &err as &dyn std::error::Error,
                        "Cannot reap the process"
                    );
                }
            }
        }
        self.cleanup(running).await;
    }

    /// After the leader exited: kill what is left of its group, stop the health checks and
    /// let the output readers drain the pipes.
    async fn cleanup(&self, running: &mut Running) {
        // The group id stays reserved while any member lives, so this reaches only leftovers
        // of this service (or nothing: ESRCH is not an error).
        if self.unit.spec.own_process_group
            && let Err(err) = basalt_sys::kill_process_group(running.pid)
        {
            tracing::debug!(
                service = %self.unit.spec.id,
                error = &err as &dyn std::error::Error,
                "Cannot kill the rest of the process group"
            );
        }
        if let Some(health) = running.health.take() {
            health.abort();
        }
        self.unit.reset_health();
        let deadline = tokio::time::Instant::now() + DRAIN_OUTPUT;
        for pump in running.pumps.drain(..) {
            let abort = pump.abort_handle();
            if tokio::time::timeout_at(deadline, pump).await.is_err() {
                tracing::warn!(
                    service = %self.unit.spec.id,
                    "Output pipe still open after the process exited; no longer reading it"
                );
                abort.abort();
            }
        }
    }
}

/// State, message and success for an exit status.
fn describe_exit(status: std::io::Result<ExitStatus>) -> (State, String, bool) {
    match status {
        Ok(status) if status.success() => (
            State::Finished,
            "Service finished successfully".to_owned(),
            true,
        ),
        Ok(status) => (
            State::Failed,
            format!("Process exited with {status}"),
            false,
        ),
        Err(err) => (
            State::Failed,
            format!("Cannot wait for the process: {err}"),
            false,
        ),
    }
}

/// `Waiting for service "db" to be up` / `Waiting for services "a", "b" to be up`.
fn waiting_message(missing: &[&str]) -> String {
    let names: Vec<String> = missing.iter().map(|name| format!("{name:?}")).collect();
    let noun = if missing.len() == 1 {
        "service"
    } else {
        "services"
    };
    format!("Waiting for {noun} {} to be up", names.join(", "))
}

/// `500ms`, `2s`, `1.5s`.
fn format_delay(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{}ms", delay.as_millis())
    } else {
        format!("{}s", delay.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(700),
            reset_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() {
        let mut state = BackoffState::new(backoff());
        let quick = Duration::from_millis(10);
        let delays: Vec<u128> = (0..5)
            .map(|_| state.after_exit(quick).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(
            state.after_exit(Duration::from_secs(10)),
            Duration::from_millis(100)
        );
        assert_eq!(state.after_exit(quick), Duration::from_millis(200));
        state.reset();
        assert_eq!(state.after_exit(quick), Duration::from_millis(100));
    }

    #[test]
    fn exits_map_to_finished_or_failed() {
        let (state, message, success) = describe_exit(Ok(ExitStatus::from_raw(0)));
        assert_eq!((state, success), (State::Finished, true));
        assert_eq!(message, "Service finished successfully");
        let (state, message, success) = describe_exit(Ok(ExitStatus::from_raw(3 << 8)));
        assert_eq!((state, success), (State::Failed, false));
        assert_eq!(message, "Process exited with exit status: 3");
        let (state, message, _) = describe_exit(Ok(ExitStatus::from_raw(9)));
        assert_eq!(state, State::Failed);
        assert!(message.contains("signal: 9"), "{message}");
    }

    #[test]
    fn messages_read_well() {
        assert_eq!(
            waiting_message(&["db"]),
            "Waiting for service \"db\" to be up"
        );
        assert_eq!(
            waiting_message(&["a", "b"]),
            "Waiting for services \"a\", \"b\" to be up"
        );
        assert_eq!(format_delay(Duration::from_millis(500)), "500ms");
        assert_eq!(format_delay(Duration::from_millis(1500)), "1.5s");
    }
}
