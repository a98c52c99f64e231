//! A worker joins through trustd: the control plane's machined runs trustd as a built-in
//! service; the worker's machined gets apid's server certificate from it (CSR + join token)
//! and only then starts apid. That certificate is refused as a client certificate. A worker
//! with a wrong token never gets a certificate and says why in its log.

use std::path::Path;
use std::time::{Duration, Instant};

use basalt_api::machine::{EventsRequest, TaskEvent};
use basalt_e2e::{Cert, Node};
use basalt_pki::Identity;
use prost::Message as _;

/// How long the wrong-token worker is watched for its first refusal.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(20);

const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn journal_lines(control_plane: &Node) -> Vec<String> {
    let path = control_plane
        .state_dir()
        .join("trustd")
        .join("issued.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joins_through_trustd_and_a_wrong_token_does_not() {
    let control_plane = Node::start().await;

    // trustd is a built-in service of the control plane.
    let services = control_plane
        .client(Cert::Admin)
        .await
        .service_list(())
        .await
        .expect("ServiceList")
        .into_inner();
    let ids: Vec<String> = services
        .messages
        .iter()
        .flat_map(|m| m.services.iter().map(|s| s.id.clone()))
        .collect();
    assert!(
        ids.contains(&"trustd".to_owned()),
        "{ids:?}{}",
        control_plane.log_tail()
    );

    // Node::start waits until the worker's apid answers Version over mTLS with the admin
    // certificate, verified against the cluster CA: the trustd-issued certificate chains to it.
    let worker = Node::builder().worker_of(&control_plane).start().await;
    let version = worker
        .client(Cert::Admin)
        .await
        .version(())
        .await
        .expect("Version through the worker's apid")
        .into_inner();
    assert!(!version.messages.is_empty());

    // The issuance was published on the worker's event bus.
    let mut events = worker
        .client(Cert::Admin)
        .await
        .events(EventsRequest {
            tail_events: -1,
            ..EventsRequest::default()
        })
        .await
        .expect("Events through the worker's apid")
        .into_inner();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.message().await.expect("event stream") {
            let Some(data) = event.data else { continue };
            if data.type_url.ends_with("machine.TaskEvent")
                && let Ok(task) = TaskEvent::decode(data.value.as_slice())
                && task.task == "issueApidCertificateFromTrustd"
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no issuance event{}", worker.log_tail());
    drop(events);

    let cert_pem = read(&worker.state_dir().join("apid").join("server.crt"));
    let cert = Identity::from_pem(&cert_pem).expect("parse the worker's apid certificate");
    assert!(
        cert.ext_key_usage.server_auth
            && !cert.ext_key_usage.client_auth
            && !cert.ext_key_usage.other,
        "{:?}",
        cert.ext_key_usage
    );
    assert!(cert.organizations.is_empty(), "{:?}", cert.organizations);
    assert!(!cert.is_ca);
    let ca = Identity::from_pem(control_plane.pki().ca_pem()).expect("parse the CA");
    assert_eq!(cert.issuer, ca.subject);
    assert!(
        cert.ip_addresses.contains(&worker.apid_addr().ip()),
        "{:?}",
        cert.ip_addresses
    );

    // `openssl verify` accepts it against the CA, where openssl is installed.
    let cert_path = worker.state_dir().join("apid").join("server.crt");
    match std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(control_plane.pki().ca_path())
        .arg(&cert_path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => eprintln!("skipping openssl verify: {err}"),
    }

    // The trustd-issued leaf (serverAuth only, no O) and its key are refused as a client
    // certificate by the control plane's apid, which then still serves the admin.
    let key_pem = read(&worker.state_dir().join("apid").join("server.key"));
    let as_client = basalt_e2e::net::tls_config(
        control_plane.pki().ca_pem(),
        Some((cert_pem.as_str(), key_pem.as_str())),
    );
    let refused = match basalt_e2e::net::connect(control_plane.apid_addr(), as_client).await {
        // TLS 1.3: the client's certificate is checked after the client finished, so the
        // refusal shows on the first call.
        Ok(channel) => {
            basalt_api::machine::machine_service_client::MachineServiceClient::new(channel)
                .version(())
                .await
                .is_err()
        }
        Err(_) => true,
    };
    assert!(
        refused,
        "a trustd leaf was accepted as a client certificate"
    );
    control_plane
        .client(Cert::Admin)
        .await
        .version(())
        .await
        .expect("the control plane serves the admin after the refusal");

    let lines = journal_lines(&control_plane);
    let for_worker: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(&format!("\"serial\":\"{}\"", cert.serial)))
        .collect();
    assert_eq!(for_worker.len(), 1, "journal: {lines:?}");
    assert_eq!(lines.len(), 1, "journal: {lines:?}");

    // A worker with a wrong token: trustd refuses it, machined logs why and keeps apid down.
    let wrong = Node::builder()
        .worker_of(&control_plane)
        .token("wrong0.0123456789abcdef")
        .no_wait()
        .start()
        .await;
    let deadline = Instant::now() + REFUSAL_PATIENCE;
    loop {
        let log = wrong.log();
        if log.contains("Cannot obtain apid's server certificate from trustd") {
            assert!(
                log.contains("Unauthenticated") || log.contains("invalid token"),
                "the refusal does not say why:{}",
                wrong.log_tail()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal logged within {REFUSAL_PATIENCE:?}{}",
            wrong.log_tail()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert!(
        !wrong.state_dir().join("apid").join("server.crt").exists(),
        "a worker with a wrong token got a certificate"
    );
    assert!(
        wrong.apid_pid().is_none(),
        "apid runs without a certificate"
    );
    assert_eq!(journal_lines(&control_plane).len(), 1);

    wrong.shutdown().await;
    worker.shutdown().await;
    control_plane.shutdown().await;
}
