//! The service supervisor: every process machined runs — the configured `machine.services` and
//! the built-in apid — is supervised the same way, one runner task per service
//! ([`runner`]).
//!
//! - **States** are Talos's (Initialized, Preparing, Waiting, Running, Stopping, Finished,
//!   Failed, Skipped); each service keeps its last 64 transitions, and every transition is
//!   published as a `machine.ServiceStateEvent` on the [`EventBus`].
//! - **Dependencies**: a service starts once every service in its `dependsOn` is up (Running,
//!   and healthy when it has a health check). Shutdown stops dependents first.
//! - **Processes** get stdin from /dev/null and stdout/stderr captured ([`output`]).
//!   Configured services lead their own process group: stop is SIGTERM to the group, SIGKILL
//!   after [`ServicesConfig::stop_grace`], and what is left of a group after its leader exits
//!   is killed. apid, a single process, stays in machined's group and is signalled by pid (see
//!   [`ServiceSpec::own_process_group`]). Every child is reaped by its runner (tokio's
//!   `Child::wait`).
//! - **Restarts** follow the service's policy (always / on-failure / never) with exponential
//!   backoff ([`crate::Backoff`]).
//! - **API control**: start / stop / restart are no-ops when the service is already in the
//!   wanted state; apid refuses stop and restart because it carries the API.
//!
//! - **Live config changes**: [`reconcile`] adds, removes and restarts configured services
//!   when `machine.services` changes in the active machine config.
//! - **Orphans**: machined is a child subreaper; what services leave behind is re-parented to
//!   it and reaped by [`children`], which never takes a supervised child from its runner.
//!
//! Limitations: health checks run while the process runs, the first one after one interval.

pub(crate) mod api;
pub(crate) mod bulk;
mod children;
mod health;
pub(crate) mod output;
mod reconcile;
mod runner;
mod spec;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use basalt_api::{common, machine};
use basalt_config::ServiceConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

pub use self::children::reap_orphans;
pub use self::output::LogLimits;
use self::output::LogSink;
use self::runner::{Request, Unit};
pub use self::spec::{ApiControl, DEFAULT_PATH, Environment, ServiceSpec};
pub use self::state::{MAX_EVENTS, State};
use crate::Error;
use crate::config::Backoff;
use crate::events::{EventBus, EventPayload};
use crate::services::BoxStream;

/// How long a service gets to exit after SIGTERM before its process group is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How machined supervises services; part of [`Config`](crate::Config).
#[derive(Clone, Debug, PartialEq)]
pub struct ServicesConfig {
    /// The configured services (`machine.services`), already validated.
    pub services: Vec<ServiceConfig>,
    /// Where each service's output file goes (`<dir>/<id>.log`); `None` keeps output in
    /// memory only. Created (0750) at bind time if missing.
    pub log_dir: Option<PathBuf>,
    /// SIGTERM → SIGKILL grace period.
    pub stop_grace: Duration,
    /// Restart pacing of configured services (apid uses [`ApidLaunch::backoff`](crate::ApidLaunch)).
    pub backoff: Backoff,
    /// Bounds of output capture.
    pub log_limits: LogLimits,
}

impl Default for ServicesConfig {
    /// No configured services, output in memory only, [`STOP_GRACE`], default backoff and
    /// limits.
    fn default() -> Self {
        ServicesConfig {
            services: Vec::new(),
            log_dir: None,
            stop_grace: STOP_GRACE,
            backoff: Backoff::default(),
            log_limits: LogLimits::default(),
        }
    }
}

/// What runners share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Every service by id; changed only by [`ServiceManager::reconcile`] (live config
    /// changes), so readers take a snapshot or look one id up and never hold the lock.
    units: RwLock<BTreeMap<String, Arc<Unit>>>,
    /// Where transitions are published.
    events: EventBus,
    /// Bumped on every transition and health change: runners waiting for dependencies
    /// re-check when it moves.
    topology: watch::Sender<u64>,
    /// True once runners must end (after their services were stopped).
    shutdown: watch::Sender<bool>,
    /// SIGTERM → SIGKILL grace period.
    stop_grace: Duration,
    /// How services added later (live config changes) are registered.
    registration: Registration,
    /// Ids of the built-in services (apid, trustd), which config changes never touch.
    builtin: BTreeSet<String>,
}

impl Shared {
    /// The service `id`, if registered.
    fn unit(&self, id: &str) -> Option<Arc<Unit>> {
        self.read_units().get(id).cloned()
    }

    /// Every registered service, as of now.
    fn snapshot(&self) -> BTreeMap<String, Arc<Unit>> {
        self.read_units().clone()
    }

    fn read_units(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Unit>>> {
        // Writers insert or remove one entry at a time: a poisoned map is still consistent.
        self.units
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_units(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Unit>>> {
        self.units
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What registering a configured service needs besides its spec (from [`ServicesConfig`]).
#[derive(Clone, Debug)]
struct Registration {
    log_dir: Option<PathBuf>,
    log_limits: LogLimits,
    backoff: Backoff,
}

/// Services registered but not launched yet, with the receiving ends of their command queues.
type Pending = Vec<(Arc<Unit>, mpsc::UnboundedReceiver<Request>)>;

/// The handle on all supervised services; cheap to clone.
#[derive(Clone)]
pub(crate) struct ServiceManager {
    shared: Arc<Shared>,
    /// True once machined shuts down: `Logs` follow streams end.
    closing: watch::Sender<bool>,
    /// Command receivers waiting for [`ServiceManager::launch`].
    pending: Arc<Mutex<Pending>>,
    /// The runner tasks.
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl ServiceManager {
    /// Registers every service (state Initialized, published on `events`) and opens their
    /// log files; nothing runs until [`ServiceManager::launch`].
    pub(crate) fn new(
        config: &ServicesConfig,
        builtin: Vec<ServiceSpec>,
        events: EventBus,
    ) -> Result<Self, Error> {
        if let Some(dir) = &config.log_dir {
            create_log_dir(dir)?;
        }
        let builtin_ids = builtin.iter().map(|spec| spec.id.clone()).collect();
        let specs = builtin.into_iter().chain(
            config
                .services
                .iter()
                .map(|service| ServiceSpec::from_config(service, config.backoff)),
        );
        let mut units = BTreeMap::new();
        let mut pending = Vec::new();
        for spec in specs {
            let sink = LogSink::new(&spec.id, config.log_dir.as_deref(), config.log_limits)
                .map_err(|source| Error::OpenServiceLog {
                    service: spec.id.clone(),
                    source,
                })?;
            let id = spec.id.clone();
            let (unit, receiver) = Unit::new(spec, sink);
            let unit = Arc::new(unit);
            events.publish(EventPayload::ServiceState(unit.current_event()), None);
            pending.push((Arc::clone(&unit), receiver));
            units.insert(id, unit);
        }
        let (topology, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(false);
        let (closing, _) = watch::channel(false);
        Ok(ServiceManager {
            shared: Arc::new(Shared {
                units: RwLock::new(units),
                events,
                topology,
                shutdown,
                stop_grace: config.stop_grace,
                registration: Registration {
                    log_dir: config.log_dir.clone(),
                    log_limits: config.log_limits,
                    backoff: config.backoff,
                },
                builtin: builtin_ids,
            }),
            closing,
            pending: Arc::new(Mutex::new(pending)),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        })
    }

    /// The bus service transitions are published on.
    pub(crate) fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// Starts one runner per service (each starts its service once its dependencies are
    /// up). Later calls do nothing.
    pub(crate) fn launch(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        let mut tasks = lock(&self.tasks);
        for (unit, receiver) in pending {
            tasks.spawn(runner::run(unit, Arc::clone(&self.shared), receiver));
        }
    }

    /// Like [`ServiceManager::launch`], but leaves the services in `held` registered and not
    /// started until [`ServiceManager::launch_service`] (a worker's apid waits for its
    /// certificate from trustd). Whole-node stop/start and API control skip held services.
    pub(crate) fn launch_except(&self, held: &[&str]) {
        let mut pending = lock(&self.pending);
        let all = std::mem::take(&mut *pending);
        let mut tasks = lock(&self.tasks);
        for (unit, receiver) in all {
            if held.contains(&unit.spec.id.as_str()) {
                pending.push((unit, receiver));
            } else {
                tasks.spawn(runner::run(unit, Arc::clone(&self.shared), receiver));
            }
        }
    }

    /// Starts the runner of one held service (see [`ServiceManager::launch_except`]); does
    /// nothing if it already runs or machined is shutting down.
    pub(crate) fn launch_service(&self, id: &str) {
        if *self.shared.shutdown.borrow() || *self.closing.borrow() {
            return;
        }
        let mut pending = lock(&self.pending);
        if let Some(index) = pending.iter().position(|(unit, _)| unit.spec.id == id) {
            let (unit, receiver) = pending.swap_remove(index);
            lock(&self.tasks).spawn(runner::run(unit, Arc::clone(&self.shared), receiver));
        }
    }

    /// Whether `id` is registered but its runner was not started: nothing would answer its
    /// requests.
    pub(crate) fn is_held(&self, id: &str) -> bool {
        lock(&self.pending)
            .iter()
            .any(|(unit, _)| unit.spec.id == id)
    }

    /// Every service, sorted by id, as `ServiceList` reports it.
    pub(crate) fn list(&self) -> Vec<machine::ServiceInfo> {
        self.shared
            .snapshot()
            .iter()
            .map(|(id, unit)| unit.status().to_proto(id))
            .collect()
    }

    /// `ServiceStart`: `Service "x" started` (also when it already runs).
    pub(crate) async fn start(&self, id: &str) -> Result<String, Error> {
        self.control(id, Operation::Start).await
    }

    /// `ServiceStop`: waits until the process is gone; `Service "x" stopped`.
    pub(crate) async fn stop(&self, id: &str) -> Result<String, Error> {
        self.control(id, Operation::Stop).await
    }

    /// `ServiceRestart`: stops the process (if any) and starts it again; `Service "x"
    /// restarted`. Restarting a stopped service starts it.
    pub(crate) async fn restart(&self, id: &str) -> Result<String, Error> {
        self.control(id, Operation::Restart).await
    }

    async fn control(&self, id: &str, operation: Operation) -> Result<String, Error> {
        let unit = self.unit(id)?;
        let allowed = match operation {
            Operation::Start => unit.spec.api.start,
            Operation::Stop => unit.spec.api.stop,
            Operation::Restart => unit.spec.api.restart,
        };
        if !allowed {
            return Err(Error::ServiceControlRefused {
                service: id.to_owned(),
                operation: operation.as_str(),
            });
        }
        // Allowed, but not yet: nothing would answer the request.
        if self.is_held(id) {
            return Err(Error::ServiceHeld {
                service: id.to_owned(),
                operation: operation.as_str(),
            });
        }
        tracing::info!(
            service = id,
            operation = operation.as_str(),
            "Service control requested"
        );
        let (ack, done) = oneshot::channel();
        let request = match operation {
            Operation::Start => Request::Start(ack),
            Operation::Stop => Request::Stop(ack),
            Operation::Restart => Request::Restart(ack),
        };
        if !unit.send(request) || done.await.is_err() {
            return Err(Error::ShuttingDown);
        }
        Ok(format!("Service {id:?} {}", operation.past_tense()))
    }

    /// `Logs`: the last `tail` lines (all kept lines with `None`), then, with `follow`, new
    /// output until the client leaves or machined shuts down.
    pub(crate) fn logs(
        &self,
        id: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<BoxStream<common::Data>, Error> {
        let unit = self
            .shared
            .unit(id)
            .ok_or_else(|| Error::UnknownLog { id: id.to_owned() })?;
        Ok(output::stream(
            &unit.output,
            tail,
            follow,
            self.closing.subscribe(),
        ))
    }

    /// `LogsContainers`: the ids of the log sources (one per service), sorted.
    pub(crate) fn log_ids(&self) -> Vec<String> {
        self.shared.read_units().keys().cloned().collect()
    }

    /// Ends every `Logs` follow stream, so that draining in-flight calls does not wait for
    /// clients that would follow forever.
    pub(crate) fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Stops every service, dependents before their dependencies (each level at once), then
    /// ends the runners and waits for them.
    pub(crate) async fn shutdown(&self) {
        self.begin_shutdown();
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
        self.shared.shutdown.send_replace(true);
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        while let Some(result) = tasks.join_next().await {
            if let Err(err) = result {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "A service runner failed"
                );
            }
        }
    }

    fn unit(&self, id: &str) -> Result<Arc<Unit>, Error> {
        self.shared.unit(id).ok_or_else(|| Error::UnknownService {
            service: id.to_owned(),
        })
    }
}

impl fmt::Debug for ServiceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceManager")
            .field(
                "services",
                &self.shared.read_units().keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
enum Operation {
    Start,
    Stop,
    Restart,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Restart => "restart",
        }
    }

    fn past_tense(self) -> &'static str {
        match self {
            Operation::Start => "started",
            Operation::Stop => "stopped",
            Operation::Restart => "restarted",
        }
    }
}

/// Service ids grouped for shutdown: first those nothing depends on, last the deepest
/// dependencies. Ids within a level are sorted.
fn stop_order(units: &BTreeMap<String, Arc<Unit>>) -> Vec<Vec<String>> {
    // depth(s) = 0 without dependencies, else 1 + the deepest dependency. Validation ruled
    // out cycles; the visiting guard keeps a bad spec from recursing forever anyway.
    fn depth(
        id: &str,
        units: &BTreeMap<String, Arc<Unit>>,
        memo: &mut HashMap<String, usize>,
        visiting: &mut Vec<String>,
    ) -> usize {
        if let Some(depth) = memo.get(id) {
            return *depth;
        }
        if visiting.iter().any(|v| v == id) {
            return 0;
        }
        visiting.push(id.to_owned());
        let deps = units
            .get(id)
            .map(|unit| unit.spec.depends_on.clone())
            .unwrap_or_default();
        let depth_here = deps
            .iter()
            .map(|dep| depth(dep, units, memo, visiting) + 1)
            .max()
            .unwrap_or(0);
        visiting.pop();
        memo.insert(id.to_owned(), depth_here);
        depth_here
    }
    let mut memo = HashMap::new();
    let mut levels: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for id in units.keys() {
        let d = depth(id, units, &mut memo, &mut Vec::new());
        levels.entry(d).or_default().push(id.clone());
    }
    levels.into_values().rev().collect()
}

fn create_log_dir(dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| Error::CreateLogDir {
            path: dir.to_owned(),
            source,
        })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Completes when `stop` turns true or its sender is gone (machined is going away either way).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The returned guard is dropped here, before the caller awaits anything else.
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, deps: &[&str]) -> ServiceSpec {
        let mut spec =
            ServiceSpec::apid("/bin/true".into(), "/dev/null".into(), Backoff::default());
        spec.id = id.to_owned();
        spec.depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
        spec
    }

    #[test]
    fn dependents_stop_before_their_dependencies() {
        let manager = ServiceManager::new(
            &ServicesConfig::default(),
            vec![
                spec("db", &[]),
                spec("web", &["db", "cache"]),
                spec("cache", &["db"]),
                spec("apid", &[]),
            ],
            EventBus::new(),
        )
        .expect("manager");
        assert_eq!(
            stop_order(&manager.shared.snapshot()),
            [vec!["web"], vec!["cache"], vec!["apid", "db"]]
        );
    }

    #[test]
    fn registration_is_published_and_listed_sorted() {
        let events = EventBus::new();
        let manager = ServiceManager::new(
            &ServicesConfig::default(),
            vec![spec("web", &[]), spec("apid", &[])],
            events.clone(),
        )
        .expect("manager");
        let ids: Vec<String> = manager.list().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["apid", "web"]);
        assert_eq!(manager.list()[0].state, "Initialized");
        assert_eq!(events.snapshot().len(), 2);
        assert_eq!(manager.log_ids(), ["apid", "web"]);
    }

    fn sh(id: &str, script: &str) -> ServiceSpec {
        let mut spec = spec(id, &[]);
        spec.program = "sh".into();
        spec.args = vec!["-c".into(), script.into()];
        spec.env = Environment::Exactly(BTreeMap::new());
        spec.api = ApiControl::FULL;
        spec.own_process_group = true;
        spec.backoff = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(80),
            reset_after: Duration::from_secs(10),
        };
        spec
    }

    fn state_of(manager: &ServiceManager, id: &str) -> String {
        manager
            .list()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.state)
            .unwrap_or_default()
    }

    fn messages(manager: &ServiceManager, id: &str) -> Vec<String> {
        manager
            .list()
            .into_iter()
            .find(|s| s.id == id)
            .and_then(|s| s.events)
            .map(|e| {
                e.events
                    .into_iter()
                    .map(|e| format!("{}: {}", e.state, e.msg))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `condition` every 10 ms for at most 10 s.
    async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn manager(specs: Vec<ServiceSpec>) -> ServiceManager {
        let config = ServicesConfig {
            stop_grace: Duration::from_secs(2),
            ..ServicesConfig::default()
        };
        ServiceManager::new(&config, specs, EventBus::new()).expect("manager")
    }

    #[tokio::test]
    async fn a_crashing_service_is_restarted_with_backoff() {
        let manager = manager(vec![sh("crash", "exit 3")]);
        manager.launch();
        eventually("three failures", || {
            messages(&manager, "crash")
                .iter()
                .filter(|m| m.starts_with("Failed: Process exited with exit status: 3"))
                .count()
                >= 3
        })
        .await;
        let events = messages(&manager, "crash");
        let waits: Vec<&String> = events
            .iter()
            .filter(|m| m.starts_with("Waiting: Restarting in"))
            .collect();
        assert!(
            waits[0].contains("20ms") && waits[1].contains("40ms"),
            "{events:#?}"
        );
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn never_and_on_failure_policies_do_not_restart_as_they_say() {
        let mut once = sh("once", "exit 0");
        once.restart = basalt_config::RestartPolicy::OnFailure;
        let mut broken = sh("broken", "exit 1");
        broken.restart = basalt_config::RestartPolicy::Never;
        let manager = manager(vec![once, broken]);
        manager.launch();
        eventually("both ended", || {
            state_of(&manager, "once") == "Finished" && state_of(&manager, "broken") == "Failed"
        })
        .await;
        // Give a wrongly scheduled restart the time to show up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for id in ["once", "broken"] {
            let starts = messages(&manager, id)
                .iter()
                .filter(|m| m.starts_with("Running:"))
                .count();
            assert_eq!(starts, 1, "{id}: {:#?}", messages(&manager, id));
        }
        // An operator can start it again.
        assert_eq!(
            manager.start("broken").await.expect("start"),
            "Service \"broken\" started"
        );
        eventually("second run", || {
            messages(&manager, "broken")
                .iter()
                .filter(|m| m.starts_with("Running:"))
                .count()
                == 2
        })
        .await;
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn stop_start_and_restart_are_idempotent_where_talos_says_so() {
        let manager = manager(vec![sh("sleeper", "echo up; exec sleep 30")]);
        manager.launch();
        eventually("running", || state_of(&manager, "sleeper") == "Running").await;
        assert_eq!(
            manager.start("sleeper").await.expect("start"),
            "Service \"sleeper\" started"
        );
        assert_eq!(
            manager.stop("sleeper").await.expect("stop"),
            "Service \"sleeper\" stopped"
        );
        assert_eq!(state_of(&manager, "sleeper"), "Finished");
        let events = messages(&manager, "sleeper");
        assert!(
            events.iter().any(|m| m.starts_with("Stopping:")),
            "{events:#?}"
        );
        // Stopping a stopped service is a no-op that still succeeds.
        manager.stop("sleeper").await.expect("stop again");
        assert_eq!(messages(&manager, "sleeper").len(), events.len());
        // Restart of a stopped service starts it.
        assert_eq!(
            manager.restart("sleeper").await.expect("restart"),
            "Service \"sleeper\" restarted"
        );
        eventually("running again", || {
            state_of(&manager, "sleeper") == "Running"
        })
        .await;
        manager.restart("sleeper").await.expect("restart running");
        eventually("running a third time", || {
            messages(&manager, "sleeper")
                .iter()
                .filter(|m| m.starts_with("Running:"))
                .count()
                == 3
        })
        .await;
        manager.shutdown().await;
        assert_eq!(state_of(&manager, "sleeper"), "Finished");
    }

    #[tokio::test]
    async fn a_service_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let config = ServicesConfig {
            stop_grace: Duration::from_millis(200),
            ..ServicesConfig::default()
        };
        let manager = ServiceManager::new(
            &config,
            vec![sh(
                "stubborn",
                "trap '' TERM; echo ready; while :; do sleep 1; done",
            )],
            EventBus::new(),
        )
        .expect("manager");
        manager.launch();
        let sink = Arc::clone(&manager.shared.snapshot()["stubborn"].output);
        eventually("ready", || !sink.tail(None).is_empty()).await;
        let started = tokio::time::Instant::now();
        manager.stop("stubborn").await.expect("stop");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(state_of(&manager, "stubborn"), "Finished");
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn dependents_wait_until_their_dependencies_are_up() {
        let mut db = sh("db", "exec sleep 30");
        db.health = Some(basalt_config::HealthCheck::Exec(vec!["true".to_owned()]));
        db.health_interval = Duration::from_millis(100);
        let mut web = sh("web", "exec sleep 30");
        web.depends_on = vec!["db".to_owned()];
        let events = EventBus::new();
        let manager =
            ServiceManager::new(&ServicesConfig::default(), vec![db, web], events.clone())
                .expect("manager");
        manager.launch();
        eventually("web runs", || state_of(&manager, "web") == "Running").await;
        let web_events = messages(&manager, "web");
        assert!(
            web_events
                .iter()
                .any(|m| m == "Waiting: Waiting for service \"db\" to be up"),
            "{web_events:#?}"
        );
        let db_info = manager
            .list()
            .into_iter()
            .find(|s| s.id == "db")
            .expect("db");
        assert!(db_info.health.expect("health").healthy);
        // Every transition went to the bus.
        let published = events
            .snapshot()
            .into_iter()
            .filter(|e| matches!(&e.payload, EventPayload::ServiceState(s) if s.service == "web"))
            .count();
        assert_eq!(published, web_events.len());
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn a_held_service_starts_only_when_launched_and_never_blocks_stops() {
        let manager = manager(vec![
            sh("apid", "exec sleep 30"),
            sh("web", "exec sleep 30"),
        ]);
        manager.launch_except(&["apid"]);
        eventually("web running", || state_of(&manager, "web") == "Running").await;
        assert_eq!(state_of(&manager, "apid"), "Initialized");
        assert!(manager.is_held("apid"));
        let held = manager.start("apid").await.expect_err("held");
        assert!(matches!(held, Error::ServiceHeld { .. }), "{held:?}");
        assert_eq!(
            held.to_string(),
            "service \"apid\" cannot start yet: it waits for the node's certificate from trustd \
             and starts by itself once the node has it"
        );
        // Whole-node stop and start skip it instead of waiting for a runner that is not there.
        tokio::time::timeout(Duration::from_secs(10), async {
            manager.stop_all().await;
            manager.start_all().await;
        })
        .await
        .expect("stop_all/start_all with a held service");
        manager.launch_service("apid");
        assert!(!manager.is_held("apid"));
        eventually("apid running", || state_of(&manager, "apid") == "Running").await;
        tokio::time::timeout(Duration::from_secs(10), manager.shutdown())
            .await
            .expect("shutdown");
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_held_service() {
        let manager = manager(vec![sh("apid", "exec sleep 30")]);
        manager.launch_except(&["apid"]);
        tokio::time::timeout(Duration::from_secs(10), manager.shutdown())
            .await
            .expect("shutdown");
        // Launching after shutdown does nothing.
        manager.launch_service("apid");
        assert!(manager.is_held("apid"));
    }

    #[tokio::test]
    async fn unknown_services_and_refused_operations_are_errors() {
        let manager = ServiceManager::new(
            &ServicesConfig::default(),
            vec![spec("apid", &[])],
            EventBus::new(),
        )
        .expect("manager");
        assert!(matches!(
            manager.start("nope").await,
            Err(Error::UnknownService { .. })
        ));
        assert!(matches!(
            manager.stop("apid").await,
            Err(Error::ServiceControlRefused {
                operation: "stop",
                ..
            })
        ));
        assert!(matches!(
            manager.restart("apid").await,
            Err(Error::ServiceControlRefused {
                operation: "restart",
                ..
            })
        ));
        assert!(matches!(
            manager.logs("nope", None, false),
            Err(Error::UnknownLog { .. })
        ));
    }
}
