//! Node routing across real nodes: one control plane and two workers that joined through
//! trustd, all on loopback with their own apid ports, so each is named `127.0.0.1:<port>`.
//!
//! - `nodes` (one-to-many): Version returns one message per node with `metadata.hostname` =
//!   the node as named; a server stream (Logs) interleaves every node's messages with
//!   metadata; a stopped node becomes one element with `metadata.error` while the call is OK.
//! - `node` (one-to-one) from the control plane to a worker: the worker's audit record names
//!   the original client's CN and serial and the forwarding node; a reader stays a reader
//!   across the hop, and client-sent `talos-role` / `proxyfrom` / `basalt-caller` change
//!   nothing.
//! - A worker has no forwarding certificate: "no request forwarding".

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use basalt_api::machine::{LogsRequest, RebootRequest};
use basalt_e2e::metrics::{scrape_until, value};
use basalt_e2e::{Cert, Node, within_test_deadline};
use basalt_pki::Identity;
use tonic::{Code, Request};

/// How long an audit record may take to reach the file (the writer batches every few ms).
const AUDIT_PATIENCE: Duration = Duration::from_secs(10);

fn name(node: &Node) -> String {
    node.apid_addr().to_string()
}

fn with_nodes<T>(message: T, nodes: &[String]) -> Request<T> {
    let mut request = Request::new(message);
    for node in nodes {
        request
            .metadata_mut()
            .append("nodes", node.parse().unwrap());
    }
    request
}

fn with_node<T>(message: T, node: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("node", node.parse().unwrap());
    request
}

fn apid_logs() -> LogsRequest {
    LogsRequest {
        namespace: "system".to_owned(),
        id: "apid".to_owned(),
        driver: 0,
        follow: false,
        tail_lines: 3,
    }
}

/// The audit records of `node` so far, parsed.
fn audit_records(node: &Node) -> Vec<serde_json::Value> {
    let path = node.state_dir().join("apid").join("audit.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Waits (bounded) for an audit record of `node` that satisfies `matches`.
async fn audit_record(
    node: &Node,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + AUDIT_PATIENCE;
    loop {
        if let Some(record) = audit_records(node).into_iter().find(&matches) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record {what} within {AUDIT_PATIENCE:?}: {:#?}",
            audit_records(node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn identity(node: &Node, cert: Cert) -> Identity {
    Identity::from_pem(&node.pki().credentials(cert).cert_pem).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_routes_and_fans_out_to_its_workers() {
    within_test_deadline(async {
        let cp = Node::builder().metrics().start().await;
        let w1 = Node::builder().worker_of(&cp).start().await;
        let w2 = Node::builder().worker_of(&cp).start().await;
        let all = [name(&cp), name(&w1), name(&w2)];
        let mut admin = cp.client(Cert::Admin).await;

        // One-to-many unary: one element per node, in the order named, each with its hostname.
        let reply = admin
            .version(with_nodes((), &all))
            .await
            .unwrap_or_else(|status| panic!("Version via nodes: {status:?}{}", cp.log_tail()))
            .into_inner();
        let hosts: Vec<&str> = reply
            .messages
            .iter()
            .map(|m| m.metadata.as_ref().expect("metadata").hostname.as_str())
            .collect();
        assert_eq!(hosts, all, "{reply:?}");
        assert!(
            reply
                .messages
                .iter()
                .all(|m| m.version.as_ref().is_some_and(|v| !v.tag.is_empty())
                    && m.metadata.as_ref().unwrap().error.is_empty())
        );
        let record = audit_record(&cp, "naming the fan-out targets", |r| {
            r["targets"].as_array().is_some_and(|t| t.len() == 3)
        })
        .await;
        assert_eq!(record["method"], "/machine.MachineService/Version");

        // One-to-many server stream: every node's messages arrive, each with metadata.
        let mut stream = admin
            .logs(with_nodes(apid_logs(), &all))
            .await
            .unwrap_or_else(|status| panic!("Logs via nodes: {status:?}{}", cp.log_tail()))
            .into_inner();
        let mut seen = BTreeSet::new();
        while let Some(data) = stream.message().await.unwrap() {
            let metadata = data.metadata.expect("every streamed message has metadata");
            assert!(metadata.error.is_empty(), "{metadata:?}");
            assert!(!data.bytes.is_empty());
            seen.insert(metadata.hostname);
        }
        assert_eq!(seen, all.iter().cloned().collect::<BTreeSet<_>>());

        // One-to-one to a worker: the reply is the worker's, without metadata; the worker's
        // audit record names the original client and the forwarding node.
        let reply = admin
            .version(with_node((), &name(&w1)))
            .await
            .unwrap_or_else(|status| panic!("Version via node: {status:?}{}", cp.log_tail()))
            .into_inner();
        assert_eq!(reply.messages.len(), 1);
        assert!(reply.messages[0].metadata.is_none());
        let admin_id = identity(&cp, Cert::Admin);
        let record = audit_record(&w1, "for the forwarded Version", |r| {
            r["method"] == "/machine.MachineService/Version" && r["impersonated"] == true
        })
        .await;
        let caller = record["caller"].as_str().unwrap();
        assert!(
            caller.contains(&format!("cn={}", admin_id.common_name.as_deref().unwrap()))
                && caller.contains(&format!("serial={}", admin_id.serial)),
            "{record}"
        );
        assert_eq!(record["via"], name(&cp).as_str(), "{record}");
        assert_eq!(record["roles"], serde_json::json!(["os:admin"]), "{record}");
        assert!(
            record["cn"].as_str().unwrap().starts_with("apid@"),
            "the peer is the control plane's apid: {record}"
        );
        assert_eq!(record["cert_roles"], serde_json::json!(["os:impersonator"]));

        // The control plane's metrics. The fan-out Version is timed under `fanout`, and each
        // node's part under its name (`local` for the control plane itself); the call to w1
        // under w1's name too. The Logs stream is not timed. Each named node is counted.
        let (metrics, _) = cp.metrics_addrs().expect("metrics addresses");
        let count = |target: &str| {
            format!("basalt_apid_call_duration_seconds_count{{target=\"{target}\"}}")
        };
        let body = scrape_until(metrics, &count(&name(&w1)), 2.0).await;
        assert_eq!(value(&body, &count(&name(&w1))), Some(2.0), "{body}");
        assert_eq!(value(&body, &count(&name(&w2))), Some(1.0), "{body}");
        assert_eq!(value(&body, &count("fanout")), Some(1.0), "{body}");
        assert_eq!(value(&body, &count(&name(&cp))), None, "{body}");
        let forwarded = format!("basalt_apid_forwarded_total{{target=\"{}\"}}", name(&w1));
        // The fan-out Version and Logs, and the one-to-one Version.
        assert_eq!(value(&body, &forwarded), Some(3.0), "{body}");

        // A reader stays a reader across the hop: Reboot of a worker through the control
        // plane is denied, also when the reader forges talos-role, proxyfrom and
        // basalt-caller.
        let mut reader = cp.client(Cert::Reader).await;
        let mut forged = with_node(RebootRequest::default(), &name(&w1));
        let metadata = forged.metadata_mut();
        metadata.insert("talos-role", "os:admin".parse().unwrap());
        metadata.insert("proxyfrom", "10.9.9.9".parse().unwrap());
        metadata.insert("basalt-caller", "cn=root;serial=1".parse().unwrap());
        for request in [with_node(RebootRequest::default(), &name(&w1)), forged] {
            let status = reader
                .reboot(request)
                .await
                .expect_err("a reader cannot reboot");
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        }
        // The forged proxyfrom did not make the control plane serve it as forwarded, and the
        // worker serves the reader as a reader with the reader's own identity.
        let mut request = with_node((), &name(&w1));
        let metadata = request.metadata_mut();
        metadata.insert("talos-role", "os:admin".parse().unwrap());
        metadata.insert("proxyfrom", "10.9.9.9".parse().unwrap());
        metadata.insert("basalt-caller", "cn=root;serial=1".parse().unwrap());
        reader
            .version(request)
            .await
            .expect("a reader may read Version");
        let reader_id = identity(&cp, Cert::Reader);
        let record = audit_record(&w1, "for the reader's forwarded Version", |r| {
            r["caller"]
                .as_str()
                .is_some_and(|c| c.contains(&format!("serial={}", reader_id.serial)))
        })
        .await;
        assert_eq!(
            record["roles"],
            serde_json::json!(["os:reader"]),
            "{record}"
        );
        assert_eq!(record["via"], name(&cp).as_str(), "{record}");
        assert!(
            !audit_records(&w1)
                .iter()
                .any(|r| r["method"] == "/machine.MachineService/Reboot"),
            "no Reboot reached the worker"
        );
        // Reboot forwarded by an admin is authorized again on the worker with admin's roles;
        // not exercised here (it would reboot the worker's machined).

        // A worker does not forward (Talos: "no request forwarding").
        let status = w1
            .client(Cert::Admin)
            .await
            .version(with_node((), &name(&w2)))
            .await
            .expect_err("a worker has no forwarding certificate");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().starts_with("no request forwarding"),
            "{status:?}"
        );

        // The target's server certificate must name the target: w1's does not name
        // "localhost", so the control plane refuses to talk to it under that name.
        let status = admin
            .version(with_node(
                (),
                &format!("localhost:{}", w1.apid_addr().port()),
            ))
            .await
            .expect_err("a server certificate that does not name the target");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status
                .message()
                .to_lowercase()
                .contains("not valid for name"),
            "{status:?}"
        );

        // Fan-out is only for Talos's services with the per-node envelope.
        let status = cp
            .diagnostics(Cert::Admin)
            .await
            .echo(with_nodes(Default::default(), &all))
            .await
            .expect_err("nodes on a basalt service");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        // A stopped worker: two results and one error element, and the call is OK.
        let stopped = name(&w2);
        w2.shutdown().await;
        let reply = admin
            .version(with_nodes((), &all))
            .await
            .unwrap_or_else(|status| panic!("Version via nodes: {status:?}{}", cp.log_tail()))
            .into_inner();
        assert_eq!(reply.messages.len(), 3, "{reply:?}");
        let failed: Vec<_> = reply
            .messages
            .iter()
            .filter(|m| !m.metadata.as_ref().unwrap().error.is_empty())
            .collect();
        assert_eq!(failed.len(), 1, "{reply:?}");
        let metadata = failed[0].metadata.as_ref().unwrap();
        assert_eq!(metadata.hostname, stopped);
        assert_eq!(
            metadata.status.as_ref().unwrap().code,
            Code::Unavailable as i32
        );
        assert!(failed[0].version.is_none());

        // One-to-one to the stopped node: Unavailable, naming it.
        let status = admin
            .version(with_node((), &stopped))
            .await
            .expect_err("the node is down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(&stopped), "{status:?}");

        // The same for a stream: the dead node contributes one error message.
        let mut stream = admin
            .logs(with_nodes(apid_logs(), &all))
            .await
            .unwrap()
            .into_inner();
        let mut errors = Vec::new();
        while let Some(data) = stream.message().await.unwrap() {
            let metadata = data.metadata.unwrap();
            if !metadata.error.is_empty() {
                errors.push(metadata.hostname);
            }
        }
        assert_eq!(errors, [stopped]);

        // A node that accepts TCP but never answers: with the call's timeout, the others'
        // results come back and the silent node is one DeadlineExceeded element.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_name = silent.local_addr().unwrap().to_string();
        let mut request = with_nodes((), &[name(&cp), name(&w1), silent_name.clone()]);
        request.set_timeout(Duration::from_secs(3));
        let reply = admin
            .version(request)
            .await
            .unwrap_or_else(|status| panic!("Version via nodes: {status:?}{}", cp.log_tail()))
            .into_inner();
        let outcome: Vec<(String, i32)> = reply
            .messages
            .iter()
            .map(|m| {
                let metadata = m.metadata.as_ref().unwrap();
                let code = metadata.status.as_ref().map_or(0, |s| s.code);
                (metadata.hostname.clone(), code)
            })
            .collect();
        assert_eq!(
            outcome,
            [
                (name(&cp), 0),
                (name(&w1), 0),
                (silent_name, Code::DeadlineExceeded as i32)
            ]
        );
        drop(silent);

        // A worker that restarts (its apid is a new process): the pooled connection to the old
        // one died with it, and the next call connects again.
        let mut w1 = w1;
        w1.kill_machined();
        w1.restart().await;
        admin
            .version(with_node((), &name(&w1)))
            .await
            .unwrap_or_else(|status| {
                panic!("Version after the restart: {status:?}{}", cp.log_tail())
            });

        w1.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}

/// Talos clients name nodes by bare host: the control plane dials them on its own apid port.
/// The worker listens on another loopback address with the control plane's port, as real
/// nodes all listen on 50000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_hosts_are_dialled_on_apids_own_port() {
    within_test_deadline(async {
        let cp = Node::start().await;
        // An address in 127.0.0.0/8 that `cluster create` does not use (it takes .11–.110).
        let octet = 200 + (std::process::id() % 50) as u8;
        let worker_ip = std::net::Ipv4Addr::new(127, 0, 0, octet);
        let worker = Node::builder()
            .worker_of(&cp)
            .apid_listen((worker_ip, cp.apid_addr().port()).into())
            .start()
            .await;
        let mut admin = cp.client(Cert::Admin).await;

        let reply = admin
            .version(with_nodes(
                (),
                &["127.0.0.1".to_owned(), worker_ip.to_string()],
            ))
            .await
            .unwrap_or_else(|status| panic!("Version via nodes: {status:?}{}", cp.log_tail()))
            .into_inner();
        let hosts: Vec<(&str, &str)> = reply
            .messages
            .iter()
            .map(|m| {
                let metadata = m.metadata.as_ref().unwrap();
                (metadata.hostname.as_str(), metadata.error.as_str())
            })
            .collect();
        assert_eq!(
            hosts,
            [("127.0.0.1", ""), (worker_ip.to_string().as_str(), "")]
        );

        admin
            .version(with_node((), &worker_ip.to_string()))
            .await
            .unwrap_or_else(|status| panic!("Version via node: {status:?}{}", cp.log_tail()));
        audit_record(&worker, "for the forwarded Version", |r| {
            r["impersonated"] == true && r["method"] == "/machine.MachineService/Version"
        })
        .await;

        worker.shutdown().await;
        cp.shutdown().await;
    })
    .await;
}
