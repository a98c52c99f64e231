//! A service's observable status: its state (Talos's names), the last [`MAX_EVENTS`]
//! transitions and its health, as `ServiceList` reports them.

use std::collections::VecDeque;
use std::fmt;
use std::time::SystemTime;

use basalt_api::machine::{self, service_state_event::Action};

/// How many state events each service keeps (Talos: 64).
pub const MAX_EVENTS: usize = 64;

/// A service's lifecycle state. The strings are Talos's
/// (`internal/app/machined/pkg/system/events/events.go`), so talosctl and scripts written for it
/// read them unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Registered, never started yet.
    Initialized,
    /// About to start a process (dependencies are up).
    Preparing,
    /// Waiting: for dependencies to come up, or for the restart delay after an exit.
    Waiting,
    /// A process is running.
    Running,
    /// The process was asked to stop (SIGTERM sent) and has not exited yet.
    Stopping,
    /// The process exited with status 0, or was stopped on request.
    Finished,
    /// The process exited with a non-zero status or a signal, or could not be started.
    Failed,
    /// Not started because it is not needed (kept for Talos's vocabulary; basalt's configured
    /// services are always needed, so nothing enters this state today).
    Skipped,
}

impl State {
    /// Talos's string for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialized => "Initialized",
            State::Preparing => "Preparing",
            State::Waiting => "Waiting",
            State::Running => "Running",
            State::Stopping => "Stopping",
            State::Finished => "Finished",
            State::Failed => "Failed",
            State::Skipped => "Skipped",
        }
    }

    /// The `ServiceStateEvent.action` for the state.
    pub fn action(self) -> Action {
        match self {
            State::Initialized => Action::Initialized,
            State::Preparing => Action::Preparing,
            State::Waiting => Action::Waiting,
            State::Running => Action::Running,
            State::Stopping => Action::Stopping,
            State::Finished => Action::Finished,
            State::Failed => Action::Failed,
            State::Skipped => Action::Skipped,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StateEvent {
    /// What happened, e.g. `Process exited with exit status: 3`.
    pub(crate) message: String,
    /// The state entered.
    pub(crate) state: State,
    /// When.
    pub(crate) time: SystemTime,
}

/// A service's health as last checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Health {
    /// `None` until a check has run (and again after each start): Talos's `unknown`.
    pub(crate) healthy: Option<bool>,
    /// The last check's message (empty when healthy, the failure otherwise).
    pub(crate) last_message: String,
    /// When `healthy` last changed.
    pub(crate) last_change: Option<SystemTime>,
}

impl Health {
    /// The wire form.
    pub(crate) fn to_proto(&self) -> machine::ServiceHealth {
        machine::ServiceHealth {
            unknown: self.healthy.is_none(),
            healthy: self.healthy == Some(true),
            last_message: self.last_message.clone(),
            last_change: self.last_change.map(timestamp),
        }
    }
}

/// Everything `ServiceList` shows about one service; kept behind a mutex, updated only by the
/// service's runner (and its health checker).
#[derive(Clone, Debug)]
pub(crate) struct Status {
    /// The current state.
    pub(crate) state: State,
    /// The last [`MAX_EVENTS`] transitions, oldest first.
    pub(crate) events: VecDeque<StateEvent>,
    /// Health; `Health::default()` for services without a check.
    pub(crate) health: Health,
    /// Whether the service has a health check at all (without one, Running means up).
    pub(crate) has_health_check: bool,
}

impl Status {
    /// A service that was just registered: Initialized, one event.
    pub(crate) fn new(has_health_check: bool) -> Self {
        let mut status = Status {
            state: State::Initialized,
            events: VecDeque::with_capacity(MAX_EVENTS),
            health: Health::default(),
            has_health_check,
        };
        status.record(State::Initialized, "Service registered".to_owned());
        status
    }

    /// Enters `state` and records the event, dropping the oldest beyond [`MAX_EVENTS`].
    pub(crate) fn record(&mut self, state: State, message: String) -> StateEvent {
        self.state = state;
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        let event = StateEvent {
            message,
            state,
            time: SystemTime::now(),
        };
        self.events.push_back(event.clone());
        event
    }

    /// Whether dependents may start: Running, and healthy when a check is configured (Talos
    /// waits for "up", which is health when the service reports it).
    pub(crate) fn is_up(&self) -> bool {
        self.state == State::Running
            && (!self.has_health_check || self.health.healthy == Some(true))
    }

    /// The wire form for `ServiceList`.
    pub(crate) fn to_proto(&self, id: &str) -> machine::ServiceInfo {
        machine::ServiceInfo {
            id: id.to_owned(),
            state: self.state.as_str().to_owned(),
            events: Some(machine::ServiceEvents {
                events: self
                    .events
                    .iter()
                    .map(|event| machine::ServiceEvent {
                        msg: event.message.clone(),
                        state: event.state.as_str().to_owned(),
                        ts: Some(timestamp(event.time)),
                    })
                    .collect(),
            }),
            health: Some(self.health.to_proto()),
        }
    }
}

/// A protobuf timestamp for a system time (times before the epoch clamp to it).
pub(crate) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        // Always below 10^9, so it fits.
        nanos: since.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_use_talos_strings_and_actions() {
        let all = [
            (State::Initialized, "Initialized", Action::Initialized),
            (State::Preparing, "Preparing", Action::Preparing),
            (State::Waiting, "Waiting", Action::Waiting),
            (State::Running, "Running", Action::Running),
            (State::Stopping, "Stopping", Action::Stopping),
            (State::Finished, "Finished", Action::Finished),
            (State::Failed, "Failed", Action::Failed),
            (State::Skipped, "Skipped", Action::Skipped),
        ];
        for (state, text, action) in all {
            assert_eq!(state.as_str(), text);
            assert_eq!(state.action(), action);
        }
    }

    #[test]
    fn only_the_last_64_events_are_kept() {
        let mut status = Status::new(false);
        for i in 0..100 {
            status.record(State::Running, format!("event {i}"));
        }
        assert_eq!(status.events.len(), MAX_EVENTS);
        assert_eq!(status.events[0].message, "event 36");
        assert_eq!(status.events[63].message, "event 99");
        let info = status.to_proto("web");
        assert_eq!(info.events.expect("events").events.len(), MAX_EVENTS);
    }

    #[test]
    fn up_means_running_and_healthy_when_checked() {
        let mut status = Status::new(false);
        assert!(!status.is_up());
        status.record(State::Running, "started".to_owned());
        assert!(status.is_up());

        let mut checked = Status::new(true);
        checked.record(State::Running, "started".to_owned());
        assert!(!checked.is_up(), "health unknown yet");
        checked.health.healthy = Some(true);
        assert!(checked.is_up());
        checked.health.healthy = Some(false);
        assert!(!checked.is_up());
    }

    #[test]
    fn health_maps_to_the_wire() {
        let unknown = Health::default().to_proto();
        assert!(unknown.unknown && !unknown.healthy);
        let healthy = Health {
            healthy: Some(true),
            last_message: String::new(),
            last_change: Some(SystemTime::UNIX_EPOCH),
        }
        .to_proto();
        assert!(!healthy.unknown && healthy.healthy);
        assert_eq!(healthy.last_change.expect("ts").seconds, 0);
    }
}
