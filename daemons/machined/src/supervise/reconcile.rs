//! Live changes of `machine.services`: every time the active machine config changes (a live
//! apply, a rollback, a TRY revert, a staged config activated at boot), the supervisor brings
//! the configured services in line with it, without a reboot.
//!
//! The diff is between the previous and the new config's services, by name:
//! - **added**: registered (Initialized, published) and started; it waits for its
//!   `dependsOn` like any other service;
//! - **removed**: stopped (SIGTERM to its group, SIGKILL after the grace period), its runner
//!   ends with a last `Finished` event, and it leaves `ServiceList`/`Logs`;
//! - **changed** (command, args, env, restart, health, dependsOn): stopped, then started under
//!   the new spec by a successor that keeps its output and event history, so the change reads
//!   as a restart;
//! - **unchanged**: untouched, whatever else changed in the config (also the dependents of a
//!   changed service: they keep running while it restarts).
//!
//! Stops go dependents first, all removed and changed services of a level at once. The
//! built-in services (apid, trustd) are never touched here: their names are reserved, so no
//! `machine.services` entry can name them.

use std::collections::BTreeMap;
use std::sync::Arc;

use basalt_config::ServiceConfig;
use tokio::sync::{oneshot, watch};

use super::output::LogSink;
use super::runner::{self, Request, Unit};
use super::{ServiceManager, ServiceSpec, lock, stop_order, stopped};
use crate::Error;
use crate::config_store::ConfigStore;
use crate::events::EventPayload;

/// The last event of a service that left the machine config.
const REMOVED: &str = "Service removed from the machine config";

/// The last event of a service's runner before a successor with the changed spec takes over.
const REPLACED: &str = "Service stopped: its spec changed in the machine config";

/// What one reconcile did, by service id (sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reconciled {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
}

impl Reconciled {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl ServiceManager {
    /// Follows the active machine config until `stop` turns true or machined shuts down,
    /// reconciling the configured services on every change (see the module docs).
    pub(crate) async fn follow_config(self, store: ConfigStore, mut stop: watch::Receiver<bool>) {
        let mut active = store.subscribe();
        let mut closing = self.closing.subscribe();
        // What the services were started from; later configs are compared to the last one
        // reconciled, so services the config never mentioned are left alone.
        let mut previous = active.borrow_and_update().config.services().to_vec();
        loop {
            tokio::select! {
                changed = active.changed() => if changed.is_err() { return },
                () = stopped(&mut stop) => return,
                () = stopped(&mut closing) => return,
            }
            // Not under the store's change lock: ApplyConfiguration refuses to wait for it, so
            // holding it even briefly could refuse an operator's next apply. During a
            // container-mode reboot the staged config is published between stopping and
            // starting the services; what this adds then simply starts with the rest.
            let next = active.borrow_and_update().config.services().to_vec();
            match self.reconcile(&previous, &next).await {
                Ok(done) => {
                    if !done.is_empty() {
                        tracing::info!(
                            added = ?done.added,
                            removed = ?done.removed,
                            changed = ?done.changed,
                            "Services reconciled with the machine config"
                        );
                    }
                    previous = next;
                }
                // Nothing was changed (see `reconcile`): the next config is compared with the
                // same `previous`, so this change is tried again with it.
                Err(err) => tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "Cannot reconcile the services with the machine config; nothing was changed"
                ),
            }
        }
    }

    /// Brings the configured services from `previous` to `next` (see the module docs).
    /// Returns once removed and changed services are stopped and new runners are started
    /// (not once the new processes run). Nothing is started once machined shuts down. An
    /// error (a new service's log file cannot be made) comes before anything is stopped.
    pub(crate) async fn reconcile(
        &self,
        previous: &[ServiceConfig],
        next: &[ServiceConfig],
    ) -> Result<Reconciled, Error> {
        if self.is_closing() {
            return Ok(Reconciled::default());
        }
        self.let_ended_runners_go();
        let backoff = self.shared.registration.backoff;
        let specs = |services: &[ServiceConfig]| -> BTreeMap<String, ServiceSpec> {
            services
                .iter()
                .map(|service| {
                    let spec = ServiceSpec::from_config(service, backoff);
                    (spec.id.clone(), spec)
                })
                .collect()
        };
        let (old, new) = (specs(previous), specs(next));
        let current = self.shared.snapshot();
        let configured = |id: &str| !self.shared.builtin.contains(id);

        let mut plan = Reconciled::default();
        let mut retiring = BTreeMap::new();
        for id in old.keys().filter(|id| !new.contains_key(*id)) {
            if let Some(unit) = current.get(id).filter(|_| configured(id)) {
                retiring.insert(id.clone(), (Arc::clone(unit), REMOVED));
                plan.removed.push(id.clone());
            }
        }
        for (id, spec) in &new {
            if old.get(id) == Some(spec) || !configured(id) {
                continue;
            }
            match current.get(id) {
                Some(unit) if unit.spec == *spec => {}
                Some(unit) => {
                    retiring.insert(id.clone(), (Arc::clone(unit), REPLACED));
                    plan.changed.push(id.clone());
                }
                None => plan.added.push(id.clone()),
            }
        }
        if plan.is_empty() {
            return Ok(plan);
        }

        // The new services' log files first: failing here must not leave the changed ones
        // stopped with nothing to replace them.
        let mut added = Vec::new();
        for id in &plan.added {
            let Some(spec) = new.get(id) else { continue };
            let registration = &self.shared.registration;
            let sink = LogSink::new(id, registration.log_dir.as_deref(), registration.log_limits)
                .map_err(|source| Error::OpenServiceLog {
                service: id.clone(),
                source,
            })?;
            added.push((spec.clone(), sink));
        }

        // Dependents first; each level at once.
        let units: BTreeMap<String, Arc<Unit>> = retiring
            .iter()
            .map(|(id, (unit, _))| (id.clone(), Arc::clone(unit)))
            .collect();
        for level in stop_order(&units) {
            let mut acks = Vec::new();
            for id in level {
                if let Some((unit, reason)) = retiring.get(&id) {
                    let (ack, done) = oneshot::channel();
                    if unit.send(Request::Remove(ack, reason)) {
                        acks.push(done);
                    }
                }
            }
            for done in acks {
                // An error means the runner already ended (machined is shutting down).
                let _ = done.await;
            }
        }
        {
            let mut units = self.shared.write_units();
            for id in &plan.removed {
                units.remove(id);
            }
        }

        let mut successors = Vec::new();
        for id in &plan.changed {
            if let (Some((old_unit, _)), Some(spec)) = (retiring.get(id), new.get(id)) {
                successors.push(Unit::replacing(spec.clone(), old_unit));
            }
        }
        for (spec, sink) in added {
            let (unit, receiver) = Unit::new(spec, sink);
            self.shared
                .events
                .publish(EventPayload::ServiceState(unit.current_event()), None);
            successors.push((unit, receiver));
        }

        // Under the task lock, so shutdown either sees the new runners in its join set or
        // they never start.
        let mut tasks = lock(&self.tasks);
        if self.is_closing() {
            return Ok(plan);
        }
        for (unit, receiver) in successors {
            let unit = Arc::new(unit);
            self.shared
                .write_units()
                .insert(unit.spec.id.clone(), Arc::clone(&unit));
            tasks.spawn(runner::run(unit, Arc::clone(&self.shared), receiver));
        }
        drop(tasks);
        // Services waiting for a dependency that was just added look again.
        self.shared.topology.send_modify(|version| *version += 1);
        Ok(plan)
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow() || *self.shared.shutdown.borrow()
    }
}

impl ServiceManager {
    /// The runners of removed and replaced services have ended: their tasks are let go here, or
    /// the set would grow with every config change until shutdown.
    fn let_ended_runners_go(&self) {
        let mut tasks = lock(&self.tasks);
        while let Some(ended) = tasks.try_join_next() {
            if let Err(err) = ended {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "A service runner failed"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Backoff;
    use crate::events::EventBus;
    use crate::supervise::ServicesConfig;

    fn services(yaml: &str) -> Vec<ServiceConfig> {
        basalt_config::service::services_from_yaml(yaml).expect("valid services")
    }

    /// `sh -c 'exec sleep 30' <tag>`, so a different tag is a changed spec.
    fn sleeper(name: &str, tag: &str, depends_on: &str) -> String {
        format!(
            "- name: {name}\n  command: sh\n  args: ['-c', 'exec sleep 30', '{tag}']\n  \
             dependsOn: [{depends_on}]\n"
        )
    }

    fn manager(configured: &[ServiceConfig], events: EventBus) -> ServiceManager {
        let config = ServicesConfig {
            services: configured.to_vec(),
            stop_grace: Duration::from_secs(2),
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(80),
                reset_after: Duration::from_secs(10),
            },
            ..ServicesConfig::default()
        };
        // A built-in stand-in: a long-running apid that config changes must leave alone.
        let mut apid = ServiceSpec::apid("sleep".into(), "/dev/null".into(), config.backoff);
        apid.args = vec!["30".into()];
        ServiceManager::new(&config, vec![apid], events).expect("manager")
    }

    fn started_pids(manager: &ServiceManager, id: &str) -> Vec<String> {
        manager
            .list()
            .into_iter()
            .find(|s| s.id == id)
            .and_then(|s| s.events)
            .map(|e| {
                e.events
                    .into_iter()
                    .filter(|e| e.state == "Running")
                    .map(|e| e.msg)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn state_of(manager: &ServiceManager, id: &str) -> Option<String> {
        manager
            .list()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.state)
    }

    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A change that adds a service whose log file cannot be made changes nothing: the changed
    /// service keeps running (before 2026-12-08 it had been stopped already and was never
    /// started again), and the change goes through once the log can be made.
    #[tokio::test]
    async fn a_failing_addition_stops_nothing_and_the_runners_that_ended_are_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = services(&sleeper("change", "a", ""));
        let config = ServicesConfig {
            services: before.clone(),
            log_dir: Some(dir.path().to_owned()),
            stop_grace: Duration::from_secs(2),
            ..ServicesConfig::default()
        };
        let manager = ServiceManager::new(&config, Vec::new(), EventBus::new()).expect("manager");
        manager.launch();
        eventually("running", || {
            state_of(&manager, "change").as_deref() == Some("Running")
        })
        .await;
        let first = started_pids(&manager, "change");

        // A directory where the new service's log file would go.
        std::fs::create_dir(dir.path().join("add.log")).expect("mkdir");
        let after = services(&format!(
            "{}{}",
            sleeper("change", "b", ""),
            sleeper("add", "a", "")
        ));
        let err = manager
            .reconcile(&before, &after)
            .await
            .expect_err("the log cannot be made");
        assert!(matches!(err, Error::OpenServiceLog { .. }), "{err:?}");
        assert_eq!(state_of(&manager, "change").as_deref(), Some("Running"));
        assert_eq!(started_pids(&manager, "change"), first, "not restarted");
        assert_eq!(state_of(&manager, "add"), None);

        std::fs::remove_dir(dir.path().join("add.log")).expect("rmdir");
        manager.reconcile(&before, &after).await.expect("reconcile");
        eventually("both running", || {
            ["change", "add"]
                .iter()
                .all(|id| state_of(&manager, id).as_deref() == Some("Running"))
        })
        .await;
        // The replaced runner ends, and its task is let go at the next reconcile.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            manager.reconcile(&after, &after).await.expect("reconcile");
            if lock(&manager.tasks).len() == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "one runner task per service"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn added_changed_and_removed_services_follow_and_the_rest_is_untouched() {
        let before = services(&format!(
            "{}{}{}",
            sleeper("keep", "a", ""),
            sleeper("change", "a", ""),
            sleeper("drop", "a", "")
        ));
        let manager = manager(&before, EventBus::new());
        manager.launch();
        eventually("all running", || {
            ["apid", "keep", "change", "drop"]
                .iter()
                .all(|id| state_of(&manager, id).as_deref() == Some("Running"))
        })
        .await;

        let after = services(&format!(
            "{}{}{}",
            sleeper("keep", "a", ""),
            sleeper("change", "b", ""),
            sleeper("add", "a", "keep")
        ));
        let done = manager.reconcile(&before, &after).await.expect("reconcile");
        assert_eq!(
            done,
            Reconciled {
                added: vec!["add".to_owned()],
                removed: vec!["drop".to_owned()],
                changed: vec!["change".to_owned()],
            }
        );
        // Removed: gone at once (its process was stopped before reconcile returned).
        assert_eq!(state_of(&manager, "drop"), None);
        assert!(manager.logs("drop", None, false).is_err());
        eventually("add and change running", || {
            state_of(&manager, "add").as_deref() == Some("Running")
                && started_pids(&manager, "change").len() == 2
        })
        .await;
        // The changed one kept its history and runs a new process; the others ran once.
        let change = started_pids(&manager, "change");
        assert_ne!(change[0], change[1]);
        for id in ["apid", "keep", "add"] {
            assert_eq!(started_pids(&manager, id).len(), 1, "{id}");
        }

        // The same config again changes nothing.
        let done = manager.reconcile(&after, &after).await.expect("reconcile");
        assert_eq!(done, Reconciled::default());
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn removed_dependents_stop_before_their_dependencies_and_say_why() {
        let before = services(&format!(
            "{}{}",
            sleeper("db", "a", ""),
            sleeper("web", "a", "db")
        ));
        let events = EventBus::new();
        let manager = manager(&before, events.clone());
        manager.launch();
        eventually("web running", || {
            state_of(&manager, "web").as_deref() == Some("Running")
        })
        .await;
        manager.reconcile(&before, &[]).await.expect("reconcile");
        let removals: Vec<String> = events
            .snapshot()
            .into_iter()
            .filter_map(|event| match event.payload {
                EventPayload::ServiceState(state) if state.message == REMOVED => {
                    Some(state.service)
                }
                _ => None,
            })
            .collect();
        assert_eq!(removals, ["web", "db"]);
        assert_eq!(manager.log_ids(), ["apid"]);
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn nothing_is_started_once_machined_shuts_down() {
        let manager = manager(&[], EventBus::new());
        manager.launch();
        manager.shutdown().await;
        let added = services(&sleeper("late", "a", ""));
        let done = manager.reconcile(&[], &added).await.expect("reconcile");
        assert_eq!(done, Reconciled::default());
        assert_eq!(state_of(&manager, "late"), None);
    }
}
