//! Whole-node service control for the lifecycle sequences (reboot, shutdown, reset): stop
//! every service, start every service, and wait until they are all up.
//!
//! Unlike the API's `ServiceStop`/`ServiceStart`, these ignore [`ApiControl`](super::ApiControl):
//! a reboot stops apid too (as Talos does), and the runners stay alive, so the services can be
//! started again without re-registering them.

use std::time::{Duration, SystemTime};

use basalt_config::RestartPolicy;
use tokio::sync::oneshot;

use super::runner::Request;
use super::{ServiceManager, State, stop_order};

/// How long a service without a health check must have been Running to count as ready: a
/// process that crashes right after it started is not ready, even though it ran for a moment.
pub(crate) const READY_SETTLE: Duration = Duration::from_millis(500);

/// A service that is not ready, and why (for `MachineStatusEvent.status.unmet_conditions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NotReady {
    /// The service id.
    pub(crate) service: String,
    /// Its state and, for a service with a failing health check, that it is unhealthy.
    pub(crate) reason: String,
}

impl ServiceManager {
    /// Stops every service, dependents before their dependencies (each level at once), and
    /// returns once every process is gone. The runners stay, idle, ready for
    /// [`ServiceManager::start_all`].
    pub(crate) async fn stop_all(&self) {
        let units = self.shared.snapshot();
        for level in stop_order(&units) {
            let mut acks = Vec::new();
            for id in level {
                if self.is_held(&id) {
                    continue;
                }
                if let Some(unit) = units.get(&id) {
                    let (ack, done) = oneshot::channel();
                    if unit.send(Request::Stop(ack)) {
                        acks.push(done);
                    }
                }
            }
            for done in acks {
                // An error means the runner already ended: nothing left to stop.
                let _ = done.await;
            }
        }
    }

    /// Asks every service to start (each still waits for its dependencies); returns once every
    /// runner has accepted. Use [`ServiceManager::wait_ready`] to learn when they are up.
    pub(crate) async fn start_all(&self) {
        let mut acks = Vec::new();
        for (id, unit) in &self.shared.snapshot() {
            if self.is_held(id) {
                continue;
            }
            let (ack, done) = oneshot::channel();
            if unit.send(Request::Start(ack)) {
                acks.push(done);
            }
        }
        for done in acks {
            let _ = done.await;
        }
    }

    /// The services that are not ready. Ready means: Running and healthy, for a service with
    /// a health check; Running for at least [`READY_SETTLE`], for one without; or Finished, for
    /// a service that is not restarted after a clean exit (a one-shot job that completed).
    pub(crate) fn not_ready(&self) -> Vec<NotReady> {
        self.readiness(SystemTime::now()).0
    }

    /// [`ServiceManager::not_ready`] at `now`, plus how long until the soonest service that is
    /// only settling may count as ready.
    fn readiness(&self, now: SystemTime) -> (Vec<NotReady>, Option<Duration>) {
        let mut missing = Vec::new();
        let mut soonest: Option<Duration> = None;
        for (id, unit) in &self.shared.snapshot() {
            let status = unit.status();
            let reason = match status.state {
                State::Running if status.has_health_check => {
                    if unit.is_up() {
                        continue;
                    }
                    "Running, not healthy yet".to_owned()
                }
                State::Running => {
                    // The last recorded transition is the one into Running.
                    let since = status.events.back().map_or(now, |event| event.time);
                    let running_for = now.duration_since(since).unwrap_or_default();
                    if running_for >= READY_SETTLE {
                        continue;
                    }
                    let left = READY_SETTLE - running_for;
                    soonest = Some(soonest.map_or(left, |soonest| soonest.min(left)));
                    "Running, just started".to_owned()
                }
                State::Finished if unit.spec.restart != RestartPolicy::Always => continue,
                state => state.as_str().to_owned(),
            };
            missing.push(NotReady {
                service: id.clone(),
                reason,
            });
        }
        (missing, soonest)
    }

    /// Waits until every service is ready ([`ServiceManager::not_ready`] is empty) or
    /// `patience` has passed; returns what is still not ready.
    pub(crate) async fn wait_ready(&self, patience: Duration) -> Vec<NotReady> {
        // Subscribed before the first look, so no transition between look and wait is missed.
        let mut topology = self.shared.topology.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let (missing, settling) = self.readiness(SystemTime::now());
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return missing;
            }
            // Wake up on the next transition, when a settling service may be ready, or at
            // the deadline, whichever comes first.
            let wake = settling
                .map_or(deadline, |left| tokio::time::Instant::now() + left)
                .min(deadline);
            tokio::select! {
                changed = topology.changed() => {
                    if changed.is_err() {
                        // The manager is gone.
                        return self.not_ready();
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{ApiControl, Environment, ServiceSpec, ServicesConfig};
    use super::*;
    use crate::config::Backoff;
    use crate::events::EventBus;

    fn sh(id: &str, script: &str, restart: RestartPolicy) -> ServiceSpec {
        let mut spec =
            ServiceSpec::apid("/bin/true".into(), "/dev/null".into(), Backoff::default());
        spec.id = id.to_owned();
        spec.program = "sh".into();
        spec.args = vec!["-c".into(), script.into()];
        spec.env = Environment::Exactly(BTreeMap::new());
        spec.api = ApiControl::START_ONLY;
        spec.restart = restart;
        spec
    }

    #[tokio::test]
    async fn stop_all_and_start_all_ignore_api_control_and_keep_the_runners() {
        let config = ServicesConfig {
            stop_grace: Duration::from_secs(2),
            ..ServicesConfig::default()
        };
        let manager = ServiceManager::new(
            &config,
            vec![
                sh("apid", "exec sleep 30", RestartPolicy::Always),
                sh("job", "exit 0", RestartPolicy::Never),
            ],
            EventBus::new(),
        )
        .expect("manager");
        manager.launch();
        assert!(
            manager.wait_ready(Duration::from_secs(10)).await.is_empty(),
            "{:?}",
            manager.not_ready()
        );

        manager.stop_all().await;
        let states: Vec<String> = manager.list().into_iter().map(|s| s.state).collect();
        assert_eq!(states, ["Finished", "Finished"]);
        assert_eq!(
            manager.not_ready().len(),
            1,
            "only the long-running one is missing"
        );

        manager.start_all().await;
        assert!(manager.wait_ready(Duration::from_secs(10)).await.is_empty());
        assert_eq!(manager.list()[0].state, "Running");
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn wait_ready_gives_up_after_its_patience_and_names_the_laggards() {
        let manager = ServiceManager::new(
            &ServicesConfig::default(),
            vec![sh("broken", "exit 1", RestartPolicy::Never)],
            EventBus::new(),
        )
        .expect("manager");
        manager.launch();
        let missing = manager.wait_ready(Duration::from_millis(300)).await;
        assert_eq!(missing.len(), 1, "{:?}", manager.list());
        assert_eq!(missing[0].service, "broken");
        manager.shutdown().await;
    }
}
