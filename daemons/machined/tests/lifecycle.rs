//! The node's lifecycle over the real socket: Reboot, Shutdown and Reset in container mode, the
//! Events stream that follows them, the boot id, and GenerateClientConfiguration.
//!
//! The host is a `ContainerHost`: every test also checks that nothing was asked of it.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use basalt_api::machine;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_config::{
    BundleCerts, CertAndKey, ClientConfig, MachineConfig, MachineType, SecretsBundle,
};
use basalt_pki::{CaOptions, CertificateAuthority, Identity};
use machined::boot_id::{BOOT_ID_FILE, BOOT_ID_PATH};
use machined::{Config, EventBus, EventPayload, Server, ServicesConfig};
use prost::Message as _;
use support::{connect, short_tempdir, with_roles, within_deadline};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const ADMIN: &[&str] = &["os:admin"];
const OPERATOR: &[&str] = &["os:operator"];
const READER: &[&str] = &["os:reader"];

/// A machined with a state directory, a machine config file in it and one long-running
/// service, served in-process.
struct Node {
    _dir: TempDir,
    socket: PathBuf,
    state: PathBuf,
    host: Arc<basalt_sys::ContainerHost>,
    events: EventBus,
    boot_id: machined::boot_id::BootId,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), machined::Error>>,
}

/// Options of [`Node::start`].
struct Options {
    /// The service's shell script.
    script: String,
    /// SIGTERM → SIGKILL grace.
    stop_grace: Duration,
    machine: Option<MachineConfig>,
    /// How long a boot waits for the service to be ready.
    ready_patience: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            script: "echo started; exec sleep 30".to_owned(),
            stop_grace: Duration::from_secs(5),
            machine: None,
            ready_patience: Duration::from_secs(10),
        }
    }
}

impl Node {
    async fn start(options: Options) -> Node {
        let dir = short_tempdir();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let config_file = state.join("machine.yaml");
        std::fs::write(
            &config_file,
            "# the machine config machined was started from\n",
        )
        .expect("config file");
        let socket = state.join("run/machined.sock");
        let host = Arc::new(basalt_sys::ContainerHost::new(Some("node-1".to_owned())));
        let mut config = Config::new(&socket, Arc::clone(&host) as Arc<dyn basalt_sys::Host>);
        config.state_dir = Some(state.clone());
        config.machine_config_file = Some(config_file);
        config.machine = options.machine;
        config.boot_ready_patience = options.ready_patience;
        let services = format!(
            "- name: sleeper\n  command: sh\n  args: [-c, {:?}]\n",
            options.script
        );
        config.services = ServicesConfig {
            services: basalt_config::service::services_from_yaml(&services).expect("services"),
            log_dir: Some(state.join("logs")),
            stop_grace: options.stop_grace,
            ..ServicesConfig::default()
        };
        let bound = Server::bind(config).await.expect("bind");
        let events = bound.events();
        let boot_id = bound.boot_id();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        let node = Node {
            _dir: dir,
            socket,
            state,
            host,
            events,
            boot_id,
            shutdown: Some(tx),
            task,
        };
        node.wait_for_first_boot().await;
        node
    }

    async fn client(&self) -> MachineServiceClient<Channel> {
        MachineServiceClient::new(connect(&self.socket).await)
    }

    /// Waits until machined's own boot reported RUNNING (ready or not).
    async fn wait_for_first_boot(&self) {
        let mut client = self.client().await;
        let mut events = follow(&mut client, |r| r.tail_events = -1).await;
        loop {
            let event = next(&mut events).await;
            if describe(&event).starts_with("status RUNNING") {
                assert!(
                    event.actor_id.is_empty(),
                    "machined's own boot has no actor"
                );
                return;
            }
        }
    }

    /// Fires the shutdown signal and asserts that serving ended cleanly.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .expect("serve task did not panic")
            .expect("serve ended cleanly");
        assert!(self.host.actions().is_empty(), "the host was touched");
    }

    /// Waits for serving to end on its own (Shutdown, Reset without reboot); returns the
    /// temporary directory, for a look at what is left.
    async fn ended(self) -> TempDir {
        let Node {
            task, host, _dir, ..
        } = self;
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("machined stopped by itself")
            .expect("serve task did not panic")
            .expect("serve ended cleanly");
        assert!(host.actions().is_empty(), "the host was touched");
        _dir
    }
}

/// An Events stream as `roles` would open it; returns after the hello.
async fn follow_as(
    client: &mut MachineServiceClient<Channel>,
    roles: &[&str],
    adjust: impl FnOnce(&mut machine::EventsRequest),
) -> Streaming<machine::Event> {
    let mut request = machine::EventsRequest::default();
    adjust(&mut request);
    let actor = request.with_actor_id.clone();
    let mut stream = client
        .events(with_roles(request, roles))
        .await
        .expect("events")
        .into_inner();
    let hello = next(&mut stream).await;
    assert!(hello.data.is_none(), "the first event is the empty hello");
    assert_eq!(hello.id.len(), 20);
    assert_eq!(hello.actor_id, actor);
    stream
}

async fn follow(
    client: &mut MachineServiceClient<Channel>,
    adjust: impl FnOnce(&mut machine::EventsRequest),
) -> Streaming<machine::Event> {
    follow_as(client, OPERATOR, adjust).await
}

async fn next(stream: &mut Streaming<machine::Event>) -> machine::Event {
    stream
        .message()
        .await
        .expect("events stream")
        .expect("the stream went on")
}

/// A short text for an event: `sequence reboot START`, `status RUNNING ready`,
/// `task stopAllServices STOP`, `service sleeper Running`, …
fn describe(event: &machine::Event) -> String {
    let Some(any) = &event.data else {
        return "hello".to_owned();
    };
    let value = any.value.as_slice();
    match any.type_url.as_str() {
        "talos/runtime/machine.SequenceEvent" => {
            let e = machine::SequenceEvent::decode(value).expect("sequence");
            let error = e
                .error
                .as_ref()
                .map(|e| format!(" error: {}", e.message))
                .unwrap_or_default();
            format!(
                "sequence {} {}{error}",
                e.sequence,
                e.action().as_str_name()
            )
        }
        "talos/runtime/machine.MachineStatusEvent" => {
            let e = machine::MachineStatusEvent::decode(value).expect("status");
            let ready = if e.status.as_ref().is_some_and(|s| s.ready) {
                " ready"
            } else {
                ""
            };
            format!("status {}{ready}", e.stage().as_str_name())
        }
        "talos/runtime/machine.PhaseEvent" => {
            let e = machine::PhaseEvent::decode(value).expect("phase");
            format!("phase {} {}", e.phase, e.action().as_str_name())
        }
        "talos/runtime/machine.TaskEvent" => {
            let e = machine::TaskEvent::decode(value).expect("task");
            format!("task {} {}", e.task, e.action().as_str_name())
        }
        "talos/runtime/machine.ServiceStateEvent" => {
            let e = machine::ServiceStateEvent::decode(value).expect("service");
            let state = e.action().as_str_name();
            format!("service {} {state}", e.service)
        }
        other => format!("other {other}"),
    }
}

/// Reads events until one whose description is `last` and whose actor is `actor`; returns
/// every description read (service events included) with its actor.
async fn until(
    stream: &mut Streaming<machine::Event>,
    actor: &str,
    last: &str,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    loop {
        let event = next(stream).await;
        let text = describe(&event);
        let done = text == last && event.actor_id == actor;
        seen.push((text, event.actor_id));
        if done {
            return seen;
        }
    }
}

fn of_actor<'a>(seen: &'a [(String, String)], actor: &str) -> Vec<&'a str> {
    seen.iter()
        .filter(|(_, a)| a == actor)
        .map(|(text, _)| text.as_str())
        .collect()
}

async fn read_boot_id(client: &mut MachineServiceClient<Channel>) -> String {
    let mut stream = client
        .read(with_roles(
            machine::ReadRequest {
                path: BOOT_ID_PATH.to_owned(),
            },
            ADMIN,
        ))
        .await
        .expect("read boot id")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        bytes.extend(chunk.bytes);
    }
    String::from_utf8(bytes).expect("utf-8").trim().to_owned()
}

async fn service_state(client: &mut MachineServiceClient<Channel>) -> String {
    let list = client
        .service_list(with_roles((), READER))
        .await
        .expect("service list")
        .into_inner();
    list.messages[0]
        .services
        .iter()
        .find(|s| s.id == "sleeper")
        .map(|s| s.state.clone())
        .expect("sleeper")
}

async fn reboot(
    client: &mut MachineServiceClient<Channel>,
    roles: &[&str],
) -> Result<String, tonic::Status> {
    let reply = client
        .reboot(with_roles(
            machine::RebootRequest {
                mode: machine::reboot_request::Mode::Powercycle as i32,
            },
            roles,
        ))
        .await?
        .into_inner();
    Ok(reply.messages[0].actor_id.clone())
}

async fn reset(
    client: &mut MachineServiceClient<Channel>,
    roles: &[&str],
    reboot: bool,
) -> Result<String, tonic::Status> {
    let reply = client
        .reset(with_roles(
            machine::ResetRequest {
                graceful: true,
                reboot,
                ..machine::ResetRequest::default()
            },
            roles,
        ))
        .await?
        .into_inner();
    Ok(reply.messages[0].actor_id.clone())
}

/// What a reboot publishes under its actor id, in order.
const REBOOT_EVENTS: &[&str] = &[
    "sequence reboot START",
    "status REBOOTING",
    "phase stopEverything START",
    "task stopAllServices START",
    "task stopAllServices STOP",
    "phase stopEverything STOP",
    "sequence reboot STOP",
    "sequence boot START",
    "status BOOTING",
    "phase startEverything START",
    "task startAllServices START",
    "task startAllServices STOP",
    "phase startEverything STOP",
    "status RUNNING ready",
    "sequence boot STOP",
];

#[tokio::test]
async fn an_operator_reboot_restarts_the_services_and_renews_the_boot_id() {
    within_deadline(async {
        let node = Node::start(Options::default()).await;
        let mut client = node.client().await;
        let before = read_boot_id(&mut client).await;
        assert_eq!(before, node.boot_id.current().expect("boot id"));
        assert_eq!(before.len(), 36);
        let host_boot_id = std::fs::read_to_string(BOOT_ID_PATH).unwrap_or_default();
        assert_ne!(
            before,
            host_boot_id.trim(),
            "the node's boot id is not the host's"
        );

        // As talosctl does: subscribe, wait for the hello, then act.
        let mut events = follow(&mut client, |_| {}).await;
        let actor = reboot(&mut client, OPERATOR).await.expect("reboot");
        assert_eq!(actor.len(), 36, "a UUID: {actor}");
        let seen = until(&mut events, &actor, "sequence boot STOP").await;
        assert_eq!(of_actor(&seen, &actor), REBOOT_EVENTS);

        // The service was stopped during the sequence and started again before RUNNING.
        let texts: Vec<&str> = seen.iter().map(|(text, _)| text.as_str()).collect();
        let at = |wanted: &str| texts.iter().position(|t| *t == wanted);
        let stopped = at("service sleeper FINISHED").expect("stopped");
        let restarted = texts
            .iter()
            .rposition(|t| *t == "service sleeper RUNNING")
            .expect("running again");
        assert!(at("task stopAllServices START").expect("stop task") < stopped);
        assert!(stopped < at("task stopAllServices STOP").expect("stop done"));
        assert!(restarted < at("status RUNNING ready").expect("running"));
        assert_eq!(service_state(&mut client).await, "Running");

        let after = read_boot_id(&mut client).await;
        assert_ne!(before, after, "a reboot is a new boot");
        assert_eq!(after, node.boot_id.current().expect("boot id"));
        let file = std::fs::read_to_string(node.state.join(BOOT_ID_FILE)).expect("boot id file");
        assert_eq!(file.trim(), after);

        // A client that comes late follows the same sequence from the actor filter alone.
        let mut late = follow(&mut client, |r| {
            r.tail_events = -1;
            r.with_actor_id = actor.clone();
        })
        .await;
        let replay = until(&mut late, &actor, "sequence boot STOP").await;
        assert!(replay.iter().all(|(_, a)| *a == actor), "{replay:?}");
        assert_eq!(of_actor(&replay, &actor), REBOOT_EVENTS);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_reboot_with_a_crashing_service_ends_running_but_not_ready() {
    within_deadline(async {
        let node = Node::start(Options {
            script: "echo started; exit 3".to_owned(),
            ready_patience: Duration::from_millis(1500),
            ..Options::default()
        })
        .await;
        let mut client = node.client().await;
        let mut events = follow(&mut client, |_| {}).await;
        let actor = reboot(&mut client, OPERATOR).await.expect("reboot");
        let status = loop {
            let event = next(&mut events).await;
            if event.actor_id == actor && describe(&event).starts_with("status RUNNING") {
                let any = event.data.expect("data");
                break machine::MachineStatusEvent::decode(any.value.as_slice()).expect("status");
            }
        };
        let status = status.status.expect("status");
        assert!(!status.ready, "a crash-looping service is not ready");
        assert_eq!(status.unmet_conditions.len(), 1);
        assert_eq!(status.unmet_conditions[0].name, "service sleeper");
        until(&mut events, &actor, "sequence boot STOP").await;
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn readers_may_follow_events_but_not_reboot_shut_down_or_reset() {
    within_deadline(async {
        let node = Node::start(Options::default()).await;
        let mut client = node.client().await;
        let _events = follow_as(&mut client, READER, |_| {}).await;
        let err = reboot(&mut client, READER)
            .await
            .expect_err("reader reboot");
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = client
            .shutdown(with_roles(
                machine::ShutdownRequest { force: false },
                READER,
            ))
            .await
            .expect_err("reader shutdown");
        assert_eq!(err.code(), Code::PermissionDenied);
        // Reset wipes state: admin only, as in Talos.
        let err = reset(&mut client, OPERATOR, true)
            .await
            .expect_err("operator reset");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(service_state(&mut client).await, "Running");
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_second_request_while_a_reboot_runs_is_refused() {
    within_deadline(async {
        // A service that ignores SIGTERM keeps the stop phase busy for the grace period.
        let node = Node::start(Options {
            script: "trap '' TERM; echo started; while :; do sleep 0.1; done".to_owned(),
            stop_grace: Duration::from_millis(800),
            ..Options::default()
        })
        .await;
        let mut client = node.client().await;
        let mut events = follow(&mut client, |_| {}).await;
        let actor = reboot(&mut client, OPERATOR).await.expect("reboot");

        let err = reboot(&mut client, OPERATOR)
            .await
            .expect_err("second reboot");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(err.message(), "a reboot is already in progress");
        let err = client
            .shutdown(with_roles(
                machine::ShutdownRequest { force: true },
                OPERATOR,
            ))
            .await
            .expect_err("shutdown during reboot");
        assert_eq!(err.message(), "a reboot is already in progress");

        until(&mut events, &actor, "sequence boot STOP").await;
        // Once it is done, the next one is accepted.
        let second = reboot(&mut client, OPERATOR)
            .await
            .expect("reboot after reboot");
        until(&mut events, &second, "sequence boot STOP").await;
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_the_services_and_then_machined_itself() {
    within_deadline(async {
        let node = Node::start(Options::default()).await;
        let mut client = node.client().await;
        let mut events = follow(&mut client, |_| {}).await;
        let reply = client
            .shutdown(with_roles(
                machine::ShutdownRequest { force: true },
                OPERATOR,
            ))
            .await
            .expect("shutdown")
            .into_inner();
        let actor = reply.messages[0].actor_id.clone();

        // The follower gets everything up to the end, then a clean end of stream.
        let mut seen = Vec::new();
        while let Some(event) = events.message().await.expect("clean end") {
            seen.push((describe(&event), event.actor_id));
        }
        assert_eq!(
            of_actor(&seen, &actor),
            [
                "sequence shutdown START",
                "status SHUTTING_DOWN",
                "phase stopEverything START",
                "task stopAllServices START",
                "task stopAllServices STOP",
                "phase stopEverything STOP",
                "sequence shutdown STOP",
            ]
        );
        assert!(
            seen.iter()
                .any(|(text, _)| text == "service sleeper FINISHED")
        );
        node.ended().await;
    })
    .await;
}

/// Waits until `path` holds `expected` (service output reaches its log file asynchronously).
async fn eventually_reads(path: &Path, expected: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} holds {text:?}, not {expected:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Files a node accumulates in its state directory.
fn litter(state: &Path) {
    for (path, text) in [
        ("history/0001.yaml", "an older config"),
        ("data/written-by-a-service", "service data"),
        ("notes.txt", "scratch"),
    ] {
        let path = state.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

#[tokio::test]
async fn reset_with_reboot_wipes_the_state_but_keeps_what_the_node_needs() {
    within_deadline(async {
        let node = Node::start(Options::default()).await;
        let mut client = node.client().await;
        litter(&node.state);
        let before = read_boot_id(&mut client).await;
        let log = node.state.join("logs/sleeper.log");
        eventually_reads(&log, "started\n").await;

        let mut events = follow(&mut client, |_| {}).await;
        let actor = reset(&mut client, ADMIN, true).await.expect("reset");
        let seen = until(&mut events, &actor, "sequence boot STOP").await;
        let mut expected = REBOOT_EVENTS.to_vec();
        expected.splice(
            0..7,
            [
                "sequence reset START",
                "status RESETTING",
                "phase stopEverything START",
                "task stopAllServices START",
                "task stopAllServices STOP",
                "phase stopEverything STOP",
                "phase resetSystemDisk START",
                "task wipeState START",
                "task wipeState STOP",
                "phase resetSystemDisk STOP",
                "sequence reset STOP",
            ],
        );
        assert_eq!(of_actor(&seen, &actor), expected);

        for gone in ["history", "data", "notes.txt"] {
            assert!(!node.state.join(gone).exists(), "{gone} survived the reset");
        }
        assert!(
            node.state.join("machine.yaml").exists(),
            "the machine config is kept"
        );
        // The log was emptied in place; the restarted service wrote to it again.
        eventually_reads(&log, "started\n").await;
        let after = read_boot_id(&mut client).await;
        assert_ne!(before, after);
        let file = std::fs::read_to_string(node.state.join(BOOT_ID_FILE)).expect("new boot id");
        assert_eq!(file.trim(), after);
        // Still serving on the same socket.
        assert_eq!(service_state(&mut client).await, "Running");
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn reset_without_reboot_wipes_the_state_and_halts() {
    within_deadline(async {
        let node = Node::start(Options::default()).await;
        let mut client = node.client().await;
        litter(&node.state);
        let state = node.state.clone();
        let mut events = follow(&mut client, |_| {}).await;
        let actor = reset(&mut client, ADMIN, false).await.expect("reset");
        let seen = until(&mut events, &actor, "sequence reset STOP").await;
        assert!(of_actor(&seen, &actor).contains(&"task wipeState STOP"));
        let _dir = node.ended().await;

        let mut left: Vec<String> = std::fs::read_dir(&state)
            .expect("state dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        left.sort();
        assert_eq!(left, ["logs", "machine.yaml", "run"]);
        assert_eq!(
            std::fs::read(state.join("logs/sleeper.log")).expect("log"),
            b""
        );
    })
    .await;
}

#[tokio::test]
async fn reset_refuses_user_disks() {
    within_deadline(async {
        let node = Node::start(Options::default()).await;
        let mut client = node.client().await;
        let err = client
            .reset(with_roles(
                machine::ResetRequest {
                    user_disks_to_wipe: vec!["/dev/sdb".to_owned()],
                    ..machine::ResetRequest::default()
                },
                ADMIN,
            ))
            .await
            .expect_err("user disks");
        assert_eq!(err.code(), Code::InvalidArgument);
        node.stop().await;
    })
    .await;
}

fn task(name: &str) -> EventPayload {
    EventPayload::Task(machine::TaskEvent {
        task: name.to_owned(),
        action: machine::task_event::Action::Start as i32,
    })
}

/// The task names read from `stream` up to (not including) the marker task.
async fn tasks_until_marker(stream: &mut Streaming<machine::Event>) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let text = describe(&next(stream).await);
        if text == "task marker START" {
            return names;
        }
        if let Some(name) = text
            .strip_prefix("task ")
            .and_then(|t| t.strip_suffix(" START"))
        {
            names.push(name.to_owned());
        }
    }
}

#[tokio::test]
async fn events_backlog_follows_tail_events_tail_id_and_tail_seconds() {
    within_deadline(async {
        let node = Node::start(Options::default()).await;
        let mut client = node.client().await;
        let a = node.events.publish(task("a"), Some("x".to_owned()));
        node.events.publish(task("b"), None);
        node.events.publish(task("c"), Some("x".to_owned()));

        let mut last_two = follow(&mut client, |r| r.tail_events = 2).await;
        let mut after_a = follow(&mut client, |r| r.tail_id = a.id.clone()).await;
        let mut recent = follow(&mut client, |r| r.tail_seconds = 3600).await;
        let mut none = follow(&mut client, |_| {}).await;
        let mut actor_x = follow(&mut client, |r| {
            r.tail_events = -1;
            r.with_actor_id = "x".to_owned();
        })
        .await;
        node.events.publish(task("marker"), None);
        node.events.publish(task("marker"), Some("x".to_owned()));

        assert_eq!(tasks_until_marker(&mut last_two).await, ["b", "c"]);
        assert_eq!(tasks_until_marker(&mut after_a).await, ["b", "c"]);
        let recent = tasks_until_marker(&mut recent).await;
        assert_eq!(recent[recent.len() - 3..], ["a", "b", "c"]);
        assert!(tasks_until_marker(&mut none).await.is_empty());
        assert_eq!(tasks_until_marker(&mut actor_x).await, ["a", "c"]);

        for (events, id, seconds) in [(1, "", 5), (-1, "some-id", 0), (0, "some-id", 5)] {
            let err = client
                .events(with_roles(
                    machine::EventsRequest {
                        tail_events: events,
                        tail_id: id.to_owned(),
                        tail_seconds: seconds,
                        with_actor_id: String::new(),
                    },
                    READER,
                ))
                .await
                .expect_err("mutually exclusive");
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(
                err.message().contains("mutually exclusive"),
                "{}",
                err.message()
            );
        }
        node.stop().await;
    })
    .await;
}

// === GenerateClientConfiguration ===

fn machine_config(machine_type: MachineType) -> (MachineConfig, CertificateAuthority) {
    let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
    let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
    let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
    let machine =
        MachineConfig::generate(&bundle, "dev", "127.0.0.1", machine_type).expect("config");
    (machine, ca)
}

async fn generate(
    client: &mut MachineServiceClient<Channel>,
    roles: &[&str],
    as_roles: &[&str],
    ttl_seconds: i64,
) -> Result<machine::GenerateClientConfiguration, tonic::Status> {
    let reply = client
        .generate_client_configuration(with_roles(
            machine::GenerateClientConfigurationRequest {
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                crt_ttl: Some(prost_types::Duration {
                    seconds: ttl_seconds,
                    nanos: 0,
                }),
            },
            as_roles,
        ))
        .await?
        .into_inner();
    Ok(reply.messages.into_iter().next().expect("one message"))
}

/// Verifies `crt` as a client certificate against `ca` with rustls's webpki verifier behind
/// basalt's exactly-clientAuth check: what apid does at the handshake.
fn verify_client_cert(ca: &CertificateAuthority, crt: &[u8]) {
    use rustls::pki_types::UnixTime;
    use rustls::server::WebPkiClientVerifier;
    use rustls::server::danger::ClientCertVerifier as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.cert_der().to_vec().into())
        .expect("trust anchor");
    let webpki = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        basalt_pki::tls::crypto_provider(),
    )
    .build()
    .expect("verifier");
    let verifier = basalt_pki::tls::ClientAuthOnlyVerifier::new(webpki);
    let chain = basalt_pki::certificates_from_pem(crt).expect("PEM");
    verifier
        .verify_client_cert(&chain[0], &[], UnixTime::now())
        .expect("chains to the CA with EKU clientAuth only");
}

#[tokio::test]
async fn generate_client_configuration_issues_a_client_cert_and_a_talosconfig() {
    within_deadline(async {
        let (machine, ca) = machine_config(MachineType::ControlPlane);
        let node = Node::start(Options {
            machine: Some(machine),
            ..Options::default()
        })
        .await;
        let mut client = node.client().await;

        let reply = generate(
            &mut client,
            &["os:reader", "os:operator", "custom:role"],
            ADMIN,
            3600,
        )
        .await
        .expect("generate");
        assert_eq!(reply.ca, ca.cert_pem().as_bytes());
        let crt = String::from_utf8(reply.crt.clone()).expect("PEM");
        let identity = Identity::from_pem(&crt).expect("certificate");
        // Unknown roles are kept, as Talos's server does.
        assert_eq!(
            identity.roles.strings(),
            ["custom:role", "os:operator", "os:reader"]
        );
        assert!(identity.is_client_auth_only());
        assert!(!identity.is_ca);
        assert!(identity.dns_names.is_empty() && identity.ip_addresses.is_empty());
        let lifetime = identity.not_after - time::OffsetDateTime::now_utc();
        assert!(
            lifetime > time::Duration::minutes(55) && lifetime <= time::Duration::hours(1),
            "{lifetime}"
        );
        verify_client_cert(&ca, &reply.crt);

        let talosconfig =
            ClientConfig::from_yaml(std::str::from_utf8(&reply.talosconfig).expect("utf-8"))
                .expect("talosconfig parses");
        let (name, context) = talosconfig.current().expect("current context");
        assert_eq!(name, "dev", "several roles: the cluster name");
        assert!(context.endpoints.is_empty(), "the client fills them in");
        assert_eq!(context.ca.as_ref().expect("ca").as_bytes(), reply.ca);
        assert_eq!(context.crt.as_ref().expect("crt").as_bytes(), reply.crt);
        assert_eq!(context.key.as_ref().expect("key").as_bytes(), reply.key);

        let reader = generate(&mut client, &["os:reader"], ADMIN, 60)
            .await
            .expect("one role");
        let talosconfig =
            ClientConfig::from_yaml(std::str::from_utf8(&reader.talosconfig).expect("utf-8"))
                .expect("talosconfig parses");
        assert_eq!(talosconfig.context, "reader@dev");
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn generate_client_configuration_refuses_bad_requests_workers_and_non_admins() {
    within_deadline(async {
        let (machine, _ca) = machine_config(MachineType::ControlPlane);
        let node = Node::start(Options {
            machine: Some(machine),
            ..Options::default()
        })
        .await;
        let mut client = node.client().await;
        let err = generate(&mut client, &["os:admin"], ADMIN, 0)
            .await
            .expect_err("ttl 0");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "crt_ttl should be positive");
        let err = generate(&mut client, &["os:admin"], ADMIN, -60)
            .await
            .expect_err("ttl < 0");
        assert_eq!(err.code(), Code::InvalidArgument);
        // 100 years: refused; the maximum (87600h, talosctl's default) is issued.
        let err = generate(&mut client, &["os:reader"], ADMIN, 100 * 365 * 86_400)
            .await
            .expect_err("100-year ttl");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "crt_ttl of 876000h is longer than the maximum of 87600h"
        );
        generate(&mut client, &["os:reader"], ADMIN, 87_600 * 3600)
            .await
            .expect("the maximum ttl is issued");
        let err = generate(&mut client, &[" ", ""], ADMIN, 60)
            .await
            .expect_err("no roles");
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = generate(&mut client, &["os:reader", "os:impersonator"], ADMIN, 60)
            .await
            .expect_err("impersonator");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("os:impersonator"),
            "{}",
            err.message()
        );
        let err = generate(&mut client, &["os:admin"], OPERATOR, 60)
            .await
            .expect_err("operator");
        assert_eq!(err.code(), Code::PermissionDenied);
        node.stop().await;

        let (worker, _ca) = machine_config(MachineType::Worker);
        let node = Node::start(Options {
            machine: Some(worker),
            ..Options::default()
        })
        .await;
        let mut client = node.client().await;
        let err = generate(&mut client, &["os:admin"], ADMIN, 60)
            .await
            .expect_err("worker");
        assert_eq!(err.code(), Code::Unimplemented);
        assert_eq!(
            err.message(),
            "GenerateClientConfiguration is only available on control plane nodes"
        );
        node.stop().await;
    })
    .await;
}

#[test]
fn boot_ids_of_separate_starts_differ() {
    // Each machined start is a boot in container mode (see machined::boot_id).
    let dir = short_tempdir();
    let first = machined::boot_id::BootId::start(machined::Mode::Container, Some(dir.path()))
        .expect("first");
    let second = machined::boot_id::BootId::start(machined::Mode::Container, Some(dir.path()))
        .expect("second");
    assert_ne!(first.current().expect("id"), second.current().expect("id"));
}
