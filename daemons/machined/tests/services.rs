//! The service supervisor through machined's socket: ServiceList / Start / Stop / Restart,
//! Logs (tail and follow) and LogsContainers, with real child processes.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_api::machine::{
    self, LogsRequest, ServiceInfo, ServiceRestartRequest, ServiceStartRequest, ServiceStopRequest,
    machine_service_client::MachineServiceClient,
};
use basalt_config::{BundleCerts, CertAndKey, MachineConfig, MachineType, SecretsBundle};
use basalt_pki::{CaOptions, CertificateAuthority};
use machined::{ApidLaunch, Backoff, ServicesConfig};
use support::{Machined, with_roles, within_deadline};
use tonic::transport::Channel;

const ADMIN: &[&str] = &["os:admin"];

/// Fast restarts so crash loops show up within a test.
fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        reset_after: Duration::from_secs(10),
    }
}

/// Starts machined with `machine.services` given as YAML; logs go to `<tmp>/logs`.
async fn machined_with(services_yaml: &str) -> Machined {
    let services =
        basalt_config::service::services_from_yaml(services_yaml).expect("valid services");
    Machined::start_with(|config, dir| {
        config.services = ServicesConfig {
            services,
            log_dir: Some(dir.join("logs")),
            stop_grace: Duration::from_secs(2),
            backoff: fast_backoff(),
            ..ServicesConfig::default()
        };
    })
    .await
}

async fn list(client: &mut MachineServiceClient<Channel>) -> Vec<ServiceInfo> {
    client
        .service_list(with_roles((), ADMIN))
        .await
        .expect("ServiceList")
        .into_inner()
        .messages
        .remove(0)
        .services
}

async fn service(client: &mut MachineServiceClient<Channel>, id: &str) -> ServiceInfo {
    list(client)
        .await
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

/// `"<state>: <message>"` for each of the service's events, oldest first.
fn events(info: &ServiceInfo) -> Vec<String> {
    info.events
        .as_ref()
        .map(|e| {
            e.events
                .iter()
                .map(|e| format!("{}: {}", e.state, e.msg))
                .collect()
        })
        .unwrap_or_default()
}

/// The PID of the service's latest process, from its last `Started process (PID n)` event.
fn last_pid(info: &ServiceInfo) -> Option<u32> {
    events(info).iter().rev().find_map(|event| {
        event
            .strip_prefix("Running: Started process (PID ")?
            .strip_suffix(')')?
            .parse()
            .ok()
    })
}

/// Polls ServiceList every 20 ms (for at most 15 s) until `condition` holds for `id`.
async fn wait_for(
    client: &mut MachineServiceClient<Channel>,
    id: &str,
    what: &str,
    condition: impl Fn(&ServiceInfo) -> bool,
) -> ServiceInfo {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = service(client, id).await;
        if condition(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {what} never happened; events: {:#?}",
            events(&info)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn logs_request(id: &str, tail_lines: i32, follow: bool) -> tonic::Request<LogsRequest> {
    with_roles(
        LogsRequest {
            namespace: "system".to_owned(),
            id: id.to_owned(),
            driver: 0,
            follow,
            tail_lines,
        },
        ADMIN,
    )
}

/// Everything a non-follow Logs call returns, as text.
async fn read_logs(client: &mut MachineServiceClient<Channel>, id: &str, tail: i32) -> String {
    let mut stream = client
        .logs(logs_request(id, tail, false))
        .await
        .expect("Logs")
        .into_inner();
    let mut text = Vec::new();
    while let Some(data) = stream.message().await.expect("log chunk") {
        text.extend_from_slice(&data.bytes);
    }
    String::from_utf8(text).expect("utf-8 output")
}

/// True while /proc/<pid> exists and is not a zombie (a grandchild re-parented to a PID 1
/// that does not reap stays a zombie; it no longer runs).
fn alive(pid: u32) -> bool {
    basalt_sys::is_running(pid)
}

#[tokio::test]
async fn a_service_runs_and_its_output_can_be_tailed_and_followed() {
    within_deadline(async {
        let machined = machined_with(
            "- name: hello\n  command: sh\n  args: ['-c', 'echo hi; echo there >&2; exec sleep 30']\n",
        )
        .await;
        let mut client = machined.machine().await;

        let info = wait_for(&mut client, "hello", "Running", |s| s.state == "Running").await;
        let health = info.health.clone().expect("health");
        assert!(health.unknown, "no health check configured");
        let history = events(&info);
        assert_eq!(history[0], "Initialized: Service registered");
        assert!(history.iter().any(|e| e.starts_with("Preparing:")), "{history:#?}");

        // Tail: stdout and stderr, interleaved line by line.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = read_logs(&mut client, "hello", -1).await;
        while !text.contains("there\n") {
            assert!(Instant::now() < deadline, "output never arrived: {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            text = read_logs(&mut client, "hello", -1).await;
        }
        assert!(text.contains("hi\n"), "{text:?}");
        assert_eq!(read_logs(&mut client, "hello", 0).await, "");
        assert_eq!(read_logs(&mut client, "hello", 1).await.lines().count(), 1);

        // Follow: the kept lines, then new output (a restart prints "hi" again).
        let mut follow = client
            .logs(logs_request("hello", -1, true))
            .await
            .expect("Logs follow")
            .into_inner();
        let mut seen = String::new();
        while seen.matches("hi\n").count() < 1 {
            let data = follow.message().await.expect("chunk").expect("open stream");
            seen.push_str(&String::from_utf8_lossy(&data.bytes));
        }
        let restarted = client
            .service_restart(with_roles(
                ServiceRestartRequest {
                    id: "hello".to_owned(),
                },
                ADMIN,
            ))
            .await
            .expect("ServiceRestart")
            .into_inner();
        assert_eq!(restarted.messages[0].resp, "Service \"hello\" restarted");
        while seen.matches("hi\n").count() < 2 {
            let data = follow.message().await.expect("chunk").expect("open stream");
            seen.push_str(&String::from_utf8_lossy(&data.bytes));
        }

        // The same output is in the service's log file, and the source is listed.
        let file = std::fs::read_to_string(machined.dir.path().join("logs/hello.log"))
            .expect("log file");
        assert!(file.matches("hi\n").count() >= 2, "{file:?}");
        let sources = client
            .logs_containers(with_roles((), ADMIN))
            .await
            .expect("LogsContainers")
            .into_inner();
        assert_eq!(sources.messages[0].ids, ["hello"]);

        // Shutdown ends the follow stream instead of waiting for the drain timeout.
        let stopping = Instant::now();
        machined.stop().await;
        assert!(stopping.elapsed() < Duration::from_secs(8), "{:?}", stopping.elapsed());
        while let Ok(Some(_)) = follow.message().await {}
    })
    .await;
}

#[tokio::test]
async fn a_crashing_service_is_restarted_with_backoff_and_its_events_show_it() {
    within_deadline(async {
        let machined = machined_with(
            "- name: crash\n  command: sh\n  args: ['-c', 'echo crashing; exit 3']\n",
        )
        .await;
        let mut client = machined.machine().await;
        let info = wait_for(&mut client, "crash", "three failures", |s| {
            events(s)
                .iter()
                .filter(|e| *e == "Failed: Process exited with exit status: 3")
                .count()
                >= 3
        })
        .await;
        let history = events(&info);
        let first_failure = history
            .iter()
            .position(|e| e.starts_with("Failed:"))
            .expect("a failure");
        let after: Vec<&str> = history[first_failure..first_failure + 4]
            .iter()
            .map(|e| e.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            after,
            ["Failed", "Waiting", "Preparing", "Running"],
            "{history:#?}"
        );
        // Exponential backoff: 50 ms, then 100 ms, …
        let delays: Vec<&String> = history
            .iter()
            .filter(|e| e.starts_with("Waiting: Restarting in"))
            .collect();
        assert!(
            delays[0].contains(" 50ms ") && delays[1].contains(" 100ms "),
            "{delays:#?}"
        );
        assert!(
            read_logs(&mut client, "crash", -1)
                .await
                .matches("crashing\n")
                .count()
                >= 3
        );
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn stop_then_start_then_restart() {
    within_deadline(async {
        let machined = machined_with(
            "- name: sleeper\n  command: sh\n  args: ['-c', 'echo up; exec sleep 30']\n  \
             restart: on-failure\n",
        )
        .await;
        let mut client = machined.machine().await;
        let info = wait_for(&mut client, "sleeper", "Running", |s| s.state == "Running").await;
        let first = last_pid(&info).expect("pid");
        assert!(alive(first));

        let id = || "sleeper".to_owned();
        let stopped = client
            .service_stop(with_roles(ServiceStopRequest { id: id() }, ADMIN))
            .await
            .expect("ServiceStop")
            .into_inner();
        assert_eq!(stopped.messages[0].resp, "Service \"sleeper\" stopped");
        // Stop returns once the process is gone (and reaped).
        assert!(!Path::new(&format!("/proc/{first}")).exists());
        let info = service(&mut client, "sleeper").await;
        assert_eq!(info.state, "Finished");
        assert!(events(&info).iter().any(|e| e.starts_with("Stopping:")));
        // A second stop is a no-op with the same answer.
        let again = client
            .service_stop(with_roles(ServiceStopRequest { id: id() }, ADMIN))
            .await
            .expect("ServiceStop again")
            .into_inner();
        assert_eq!(again.messages[0].resp, "Service \"sleeper\" stopped");

        let started = client
            .service_start(with_roles(ServiceStartRequest { id: id() }, ADMIN))
            .await
            .expect("ServiceStart")
            .into_inner();
        assert_eq!(started.messages[0].resp, "Service \"sleeper\" started");
        let info = wait_for(&mut client, "sleeper", "a second process", |s| {
            s.state == "Running" && last_pid(s) != Some(first)
        })
        .await;
        let second = last_pid(&info).expect("pid");

        client
            .service_restart(with_roles(ServiceRestartRequest { id: id() }, ADMIN))
            .await
            .expect("ServiceRestart");
        assert!(!Path::new(&format!("/proc/{second}")).exists());
        wait_for(&mut client, "sleeper", "a third process", |s| {
            s.state == "Running" && last_pid(s).is_some_and(|pid| pid != second && pid != first)
        })
        .await;
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_services_and_logs_are_not_found_and_containers_are_refused() {
    within_deadline(async {
        let machined = machined_with("- {name: one, command: 'true', restart: never}\n").await;
        let mut client = machined.machine().await;

        let err = client
            .service_start(with_roles(
                ServiceStartRequest {
                    id: "nope".to_owned(),
                },
                ADMIN,
            ))
            .await
            .expect_err("unknown service");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "service \"nope\" not defined");

        let err = client
            .logs(logs_request("nope", -1, false))
            .await
            .expect_err("unknown log");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "log \"nope\" was not registered");

        let mut request = logs_request("one", -1, false);
        request.get_mut().namespace = "k8s.io".to_owned();
        let err = client.logs(request).await.expect_err("container logs");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with("container logs are not supported")
        );

        // An empty namespace means the node's own services.
        let mut request = logs_request("one", -1, false);
        request.get_mut().namespace = String::new();
        client
            .logs(request)
            .await
            .expect("empty namespace is system");

        // A reader may list services and read logs but not control them.
        let reader = &["os:reader"];
        client
            .service_list(with_roles((), reader))
            .await
            .expect("reader lists");
        let err = client
            .service_stop(with_roles(
                ServiceStopRequest {
                    id: "one".to_owned(),
                },
                reader,
            ))
            .await
            .expect_err("reader cannot stop");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        machined.stop().await;
    })
    .await;
}

/// A stand-in apid that writes its pid next to itself, then sleeps.
fn fake_apid(dir: &Path) -> PathBuf {
    let path = dir.join("fake-apid");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho $$ > {dir}/apid.pid.tmp && mv {dir}/apid.pid.tmp {dir}/apid.pid\n\
             echo apid says hello\nexec sleep 30\n",
            dir = dir.display()
        ),
    )
    .expect("write fake apid");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn control_plane_config() -> MachineConfig {
    let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
    let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
    let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
    MachineConfig::generate(&bundle, "dev", "127.0.0.1", MachineType::ControlPlane)
        .expect("machine config")
}

#[tokio::test]
async fn apid_is_a_supervised_service_that_refuses_stop_and_restart_via_the_api() {
    within_deadline(async {
        let machine = control_plane_config();
        let machined = Machined::start_with(|config, dir| {
            config.apid = Some(ApidLaunch {
                machine,
                state_dir: dir.join("state"),
                binary: fake_apid(dir),
                backoff: fast_backoff(),
            });
        })
        .await;
        let mut client = machined.machine().await;
        let info = wait_for(&mut client, "apid", "Running", |s| s.state == "Running").await;
        let pid = last_pid(&info).expect("pid");

        for (operation, err) in [
            (
                "stop",
                client
                    .service_stop(with_roles(
                        ServiceStopRequest {
                            id: "apid".to_owned(),
                        },
                        ADMIN,
                    ))
                    .await
                    .expect_err("stop refused"),
            ),
            (
                "restart",
                client
                    .service_restart(with_roles(
                        ServiceRestartRequest {
                            id: "apid".to_owned(),
                        },
                        ADMIN,
                    ))
                    .await
                    .expect_err("restart refused"),
            ),
        ] {
            assert_eq!(err.code(), tonic::Code::FailedPrecondition);
            assert_eq!(
                err.message(),
                format!("service \"apid\" doesn't support {operation} operation via API")
            );
        }
        // Start is allowed (and a no-op while it runs).
        let started = client
            .service_start(with_roles(
                ServiceStartRequest {
                    id: "apid".to_owned(),
                },
                ADMIN,
            ))
            .await
            .expect("start apid")
            .into_inner();
        assert_eq!(started.messages[0].resp, "Service \"apid\" started");
        assert_eq!(last_pid(&service(&mut client, "apid").await), Some(pid));
        assert!(alive(pid));
        // apid's output is captured like any service's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !read_logs(&mut client, "apid", -1)
            .await
            .contains("apid says hello")
        {
            assert!(Instant::now() < deadline, "apid's output never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        machined.stop().await;
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "apid was reaped"
        );
    })
    .await;
}

#[tokio::test]
async fn no_process_of_a_service_is_left_after_machined_shuts_down() {
    within_deadline(async {
        // The service leads a group: sh, a background sleep and a foreground sleep.
        let machined = machined_with(
            "- name: family\n  command: sh\n  \
             args: ['-c', 'sleep 30 & echo \"child $!\"; echo \"leader $$\"; sleep 30']\n",
        )
        .await;
        let mut client = machined.machine().await;
        wait_for(&mut client, "family", "Running", |s| s.state == "Running").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = read_logs(&mut client, "family", -1).await;
            if text.contains("leader ") {
                break text;
            }
            assert!(Instant::now() < deadline, "no pids printed: {text:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pid_of = |label: &str| -> u32 {
            text.lines()
                .find_map(|line| line.strip_prefix(label))
                .and_then(|pid| pid.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {label} in {text:?}"))
        };
        let leader = pid_of("leader ");
        let child = pid_of("child ");
        assert!(alive(leader) && alive(child));

        machined.stop().await;
        // machined's own child is reaped: not even a zombie is left.
        assert!(!Path::new(&format!("/proc/{leader}")).exists());
        // The grandchild got the group's SIGTERM (its reaping is its new parent's job).
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(child) {
            assert!(Instant::now() < deadline, "grandchild {child} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// `machine.ServiceStateEvent`s reach the node's event bus.
#[tokio::test]
async fn transitions_are_published_on_the_event_bus() {
    within_deadline(async {
        let dir = support::short_tempdir();
        let socket = dir.path().join("run/machined.sock");
        let host = std::sync::Arc::new(basalt_sys::ContainerHost::new(Some("node-1".to_owned())));
        let mut config = machined::Config::new(&socket, host);
        config.services.services = basalt_config::service::services_from_yaml(
            "- {name: one, command: 'true', restart: never}\n",
        )
        .expect("services");
        let bound = machined::Server::bind(config).await.expect("bind");
        let bus = bound.events();
        let (backlog, mut live) = bus.subscribe();
        let registered = backlog
            .iter()
            .filter(|event| matches!(&event.payload, machined::EventPayload::ServiceState(_)))
            .count();
        assert_eq!(registered, 1, "registration is published at bind");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        let mut actions = Vec::new();
        while !actions.contains(&machine::service_state_event::Action::Finished) {
            let event = live.recv().await.expect("event");
            // Other components (lifecycle sequences) publish on the same bus.
            if let machined::EventPayload::ServiceState(state) = &event.payload {
                assert_eq!(
                    event.payload.type_url(),
                    "talos/runtime/machine.ServiceStateEvent"
                );
                assert_eq!(event.id.len(), 20, "an xid");
                assert_eq!(state.service, "one");
                actions.push(state.action());
            }
        }
        assert_eq!(
            actions,
            [
                machine::service_state_event::Action::Preparing,
                machine::service_state_event::Action::Running,
                machine::service_state_event::Action::Finished,
            ]
        );
        let _ = tx.send(());
        task.await.expect("serve task").expect("serve");
    })
    .await;
}
