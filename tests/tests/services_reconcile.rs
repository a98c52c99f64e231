//! `machine.services` follows live config changes, through apid with the real binaries: an
//! applied service is started without a reboot, a changed one restarts under its new spec, a
//! removed one is stopped and forgotten, and a TRY apply that is not confirmed takes its
//! service away again. Orphans a service leaves behind are reaped by machined.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use basalt_api::machine::apply_configuration_request::Mode;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_api::machine::{ApplyConfigurationRequest, LogsRequest, ServiceInfo};
use basalt_config::{RawMachineConfig, RawService};
use basalt_e2e::{Cert, Node, within_test_deadline};
use tonic::Code;

/// Bound of every poll below; the conditions normally hold within a second.
const PATIENCE: Duration = Duration::from_secs(20);

/// Applies `raw` as admin; returns the mode machined chose.
async fn apply(node: &Node, raw: &RawMachineConfig, mode: Mode, try_timeout: Option<i64>) -> i32 {
    let reply = node
        .client(Cert::Admin)
        .await
        .apply_configuration(ApplyConfigurationRequest {
            data: raw.to_yaml().unwrap().into_bytes(),
            mode: mode as i32,
            try_mode_timeout: try_timeout
                .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("apply: {status:?}{}", node.log_tail()))
        .into_inner()
        .messages
        .remove(0);
    reply.mode
}

/// A service running `sh -c SCRIPT`, restarted always.
fn sh_service(name: &str, script: &str) -> RawService {
    RawService {
        name: Some(name.to_owned()),
        command: Some("sh".to_owned()),
        args: vec!["-c".to_owned(), script.to_owned()],
        restart: Some("always".to_owned()),
        ..RawService::default()
    }
}

async fn service(node: &Node, id: &str) -> Option<ServiceInfo> {
    let list = node
        .client(Cert::Reader)
        .await
        .service_list(())
        .await
        .unwrap_or_else(|status| panic!("ServiceList: {status:?}{}", node.log_tail()))
        .into_inner();
    list.messages[0]
        .services
        .iter()
        .find(|s| s.id == id)
        .cloned()
}

fn messages(info: &ServiceInfo) -> Vec<String> {
    info.events
        .as_ref()
        .map(|events| {
            events
                .events
                .iter()
                .map(|e| format!("{}: {}", e.state, e.msg))
                .collect()
        })
        .unwrap_or_default()
}

/// The pid of the service's current process, from its last `Started process (PID n)` event.
fn current_pid(info: &ServiceInfo) -> Option<u32> {
    messages(info).iter().rev().find_map(|m| {
        m.strip_prefix("Running: Started process (PID ")?
            .strip_suffix(')')?
            .parse()
            .ok()
    })
}

/// Polls `ServiceList` until `check` holds for service `id` (`None`: not listed).
async fn wait_for_service(
    node: &Node,
    id: &str,
    what: &str,
    check: impl Fn(Option<&ServiceInfo>) -> bool,
) -> Option<ServiceInfo> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = service(node, id).await;
        if check(info.as_ref()) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {what} did not happen within {PATIENCE:?}; last: {info:#?}{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running(info: Option<&ServiceInfo>) -> bool {
    info.is_some_and(|info| info.state == "Running" && current_pid(info).is_some())
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

async fn wait_dead(node: &Node, pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still runs{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn logs(node: &Node, id: &str) -> Result<String, tonic::Status> {
    let mut stream = node
        .client(Cert::Reader)
        .await
        .logs(LogsRequest {
            namespace: "system".to_owned(),
            id: id.to_owned(),
            driver: 0,
            follow: false,
            tail_lines: -1,
        })
        .await?
        .into_inner();
    let mut text = Vec::new();
    while let Some(data) = stream.message().await? {
        text.extend_from_slice(&data.bytes);
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_added_restarted_and_removed_as_the_config_changes() {
    within_test_deadline(async {
        let node = Node::start().await;
        let apid_before = service(&node, "apid").await.and_then(|s| current_pid(&s));
        let mut raw = node.active_config().await;

        // Added by an AUTO apply, which needs no reboot for services.
        raw.machine.services = vec![sh_service("ticker", "echo started $0; exec sleep 1000")];
        raw.machine.services[0].args.push("v1".to_owned());
        assert_eq!(
            apply(&node, &raw, Mode::Auto, None).await,
            Mode::NoReboot as i32
        );
        let first = wait_for_service(&node, "ticker", "Running", running).await;
        let first_pid = current_pid(first.as_ref().unwrap()).unwrap();
        assert!(alive(first_pid));

        // Changed args: stopped, then started again under the new spec, with its history.
        raw.machine.services[0].args[2] = "v2".to_owned();
        assert_eq!(
            apply(&node, &raw, Mode::NoReboot, None).await,
            Mode::NoReboot as i32
        );
        let second = wait_for_service(&node, "ticker", "a restart", |info| {
            running(info) && info.and_then(current_pid) != Some(first_pid)
        })
        .await
        .unwrap();
        wait_dead(&node, first_pid).await;
        let events = messages(&second);
        assert!(
            events
                .iter()
                .any(|m| m == "Finished: Service stopped: its spec changed in the machine config"),
            "{events:#?}"
        );
        assert!(
            events
                .iter()
                .any(|m| m.starts_with("Stopping: Sending SIGTERM")),
            "{events:#?}"
        );
        let text = logs(&node, "ticker").await.unwrap();
        assert!(
            text.contains("started v1") && text.contains("started v2"),
            "{text}"
        );

        // Removed: stopped and forgotten.
        let second_pid = current_pid(&second).unwrap();
        raw.machine.services.clear();
        apply(&node, &raw, Mode::NoReboot, None).await;
        wait_for_service(&node, "ticker", "removal", |info| info.is_none()).await;
        wait_dead(&node, second_pid).await;
        let status = logs(&node, "ticker").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");

        // The built-in apid was never touched.
        let apid_after = service(&node, "apid").await.and_then(|s| current_pid(&s));
        assert_eq!(apid_before, apid_after);
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_apply_that_is_not_confirmed_takes_its_service_away_again() {
    within_test_deadline(async {
        let node = Node::start().await;
        let mut raw = node.active_config().await;
        raw.machine.services = vec![sh_service("trial", "exec sleep 1000")];
        assert_eq!(
            apply(&node, &raw, Mode::Try, Some(2)).await,
            Mode::Try as i32
        );
        let info = wait_for_service(&node, "trial", "Running", running).await;
        let pid = current_pid(info.as_ref().unwrap()).unwrap();

        // Not confirmed: the revert removes it.
        wait_for_service(&node, "trial", "removal by the revert", |info| {
            info.is_none()
        })
        .await;
        wait_dead(&node, pid).await;
        node.shutdown().await;
    })
    .await;
}

/// `(pid, state)` of every child of `parent` (all its threads).
fn children_of(parent: u32) -> Vec<(u32, char)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_ascii_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.get(stat.rfind(')')? + 2..)?.chars().next()?;
            Some((pid, state))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_a_service_leaves_behind_are_adopted_and_reaped() {
    within_test_deadline(async {
        let node = Node::start().await;
        let machined = node.machined_pid().unwrap();
        let mut raw = node.active_config().await;
        // The subshell exits at once, so its `sleep 1` is orphaned: machined, a subreaper,
        // adopts it, and must reap it when it exits a second later.
        raw.machine.services = vec![sh_service(
            "forker",
            "(sleep 1 &); echo forked; exec sleep 1000",
        )];
        apply(&node, &raw, Mode::NoReboot, None).await;
        let info = wait_for_service(&node, "forker", "Running", running).await;
        let service_pid = current_pid(info.as_ref().unwrap()).unwrap();

        // The orphan shows up as machined's child besides the service itself...
        let deadline = Instant::now() + PATIENCE;
        let orphan = loop {
            let children = children_of(machined);
            if let Some((pid, _)) = children.iter().find(|(pid, _)| {
                *pid != service_pid
                    && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|cmdline| cmdline == "sleep\x001\x00")
            }) {
                break *pid;
            }
            assert!(
                Instant::now() < deadline,
                "no adopted orphan among machined's children {children:?}{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        // ...and once it has exited, no zombie is left under machined.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let children = children_of(machined);
            let lingering = children
                .iter()
                .any(|(pid, state)| *pid == orphan || *state == 'Z');
            if !lingering {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "orphan {orphan} or a zombie is still a child of machined: {children:?}{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The supervised service itself is still machined's to wait for: stopping it reports
        // its exit like always.
        let mut admin = node.client(Cert::Admin).await;
        admin
            .service_stop(basalt_api::machine::ServiceStopRequest {
                id: "forker".to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("stop: {status:?}{}", node.log_tail()));
        let info = service(&node, "forker").await.unwrap();
        assert_eq!(info.state, "Finished", "{:#?}", messages(&info));
        assert!(!alive(service_pid));
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_service_starts_with_the_next_reboot() {
    within_test_deadline(async {
        let node = Node::start().await;
        let mut raw = node.active_config().await;
        raw.machine.services = vec![sh_service("staged", "exec sleep 1000")];
        assert_eq!(
            apply(&node, &raw, Mode::Staged, None).await,
            Mode::Staged as i32
        );
        assert!(service(&node, "staged").await.is_none());

        node.client(Cert::Admin)
            .await
            .reboot(basalt_api::machine::RebootRequest { mode: 0 })
            .await
            .unwrap_or_else(|status| panic!("Reboot: {status:?}{}", node.log_tail()));
        // apid restarts with the reboot: poll until it answers and lists the service.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let listed = async {
                // The harness's client panics while apid is down; connect by hand.
                let channel =
                    basalt_e2e::net::connect(node.apid_addr(), node.tls(Some(Cert::Reader)))
                        .await
                        .ok()?;
                let list = MachineServiceClient::new(channel)
                    .service_list(())
                    .await
                    .ok()?
                    .into_inner();
                list.messages[0]
                    .services
                    .iter()
                    .find(|s| s.id == "staged")
                    .cloned()
            }
            .await;
            if running(listed.as_ref()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the staged service is not running after the reboot: {listed:#?}{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        node.shutdown().await;
    })
    .await;
}
