//! Certificate revocation end to end, with real processes: machined keeps the deny list, apid
//! refuses a revoked certificate at the TLS handshake and closes its open connections at once,
//! and every other client keeps being served.

use std::path::PathBuf;
use std::time::Duration;

use basalt_api::basalt::v1::revocation_service_client::RevocationServiceClient;
use basalt_api::basalt::v1::{ListRevokedRequest, RevokeRequest, RevokedCertificate};
use basalt_api::machine::EventsRequest;
use basalt_e2e::cli::text;
use basalt_e2e::{Cert, Node, Outcome, net, within_test_deadline};
use tonic::Code;
use tonic::transport::Channel;

/// How long a revoked client's open stream may take to end before the test fails. The promise
/// is one second; the bound is generous for a loaded machine.
const STREAM_END_PATIENCE: Duration = Duration::from_secs(5);

async fn revocations(node: &Node, cert: Cert) -> RevocationServiceClient<Channel> {
    RevocationServiceClient::new(node.channel(cert).await)
}

fn identity(node: &Node, cert: Cert) -> basalt_pki::Identity {
    basalt_pki::Identity::from_pem(&node.pki().credentials(cert).cert_pem).expect("identity")
}

async fn list(node: &Node, cert: Cert) -> Vec<RevokedCertificate> {
    let reply = revocations(node, cert)
        .await
        .list_revoked(ListRevokedRequest {})
        .await
        .unwrap_or_else(|status| panic!("ListRevoked as {cert:?}: {status:?}{}", node.log_tail()))
        .into_inner();
    assert_eq!(reply.messages.len(), 1, "{reply:?}");
    reply.messages[0].entries.clone()
}

fn revoke_serial(serial: &str, reason: &str) -> RevokeRequest {
    RevokeRequest {
        serial: serial.to_owned(),
        fingerprint: String::new(),
        reason: reason.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operator_is_cut_off_at_once_and_everyone_else_is_not() {
    within_test_deadline(async {
        let mut node = Node::start().await;
        let addr = node.apid_addr();
        let operator = identity(&node, Cert::Operator);

        // The operator is served, and holds a stream that never ends by itself.
        let mut operator_client = node.client(Cert::Operator).await;
        operator_client
            .version(())
            .await
            .expect("the operator is served before revocation");
        let mut events = operator_client
            .events(EventsRequest::default())
            .await
            .unwrap_or_else(|status| panic!("Events as operator: {status:?}{}", node.log_tail()))
            .into_inner();
        let stream_ended = tokio::spawn(async move {
            loop {
                match events.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return "ended".to_owned(),
                    Err(status) => return format!("{:?}: {}", status.code(), status.message()),
                }
            }
        });
        let mut admin_client = node.client(Cert::Admin).await;

        // A reader may list but not revoke.
        let denied = revocations(&node, Cert::Reader)
            .await
            .revoke(revoke_serial(&operator.serial, "reader tries"))
            .await
            .expect_err("a reader revokes");
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(list(&node, Cert::Reader).await.is_empty());

        // Bad input is refused with a reason, and nothing is listed.
        let mut admin_revocations = revocations(&node, Cert::Admin).await;
        let bad = admin_revocations
            .revoke(revoke_serial("not-hex", "typo"))
            .await
            .expect_err("bad serial");
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
        assert!(bad.message().contains("hexadecimal"), "{bad:?}");
        let short = admin_revocations
            .revoke(RevokeRequest {
                fingerprint: "abcd".to_owned(),
                reason: "short".to_owned(),
                ..RevokeRequest::default()
            })
            .await
            .expect_err("short fingerprint");
        assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
        let ca = basalt_pki::Identity::from_pem(node.pki().ca_pem()).expect("ca identity");
        let ca_refused = admin_revocations
            .revoke(revoke_serial(&ca.serial, "not a client"))
            .await
            .expect_err("the CA");
        assert_eq!(
            ca_refused.code(),
            Code::FailedPrecondition,
            "{ca_refused:?}"
        );
        assert!(list(&node, Cert::Admin).await.is_empty());

        // The admin revokes the operator by serial.
        let reply = admin_revocations
            .revoke(revoke_serial(&operator.serial, "laptop lost"))
            .await
            .unwrap_or_else(|status| panic!("Revoke: {status:?}{}", node.log_tail()))
            .into_inner();
        let revoked = &reply.messages[0];
        assert!(!revoked.already_revoked);
        assert_eq!(
            revoked.entry.as_ref().map(|e| e.serial.as_str()),
            Some(operator.serial.as_str())
        );

        // The open stream is closed without the client doing anything.
        let ended = tokio::time::timeout(STREAM_END_PATIENCE, stream_ended)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the revoked operator's Events stream is still open after \
                     {STREAM_END_PATIENCE:?}{}",
                    node.log_tail()
                )
            })
            .expect("reader task");
        assert!(!ended.is_empty());

        // A new connection with the certificate is refused at the handshake.
        let refusal = net::probe_tls(addr, node.tls(Some(Cert::Operator)))
            .await
            .refusal("the revoked operator certificate");
        assert!(refusal.contains("CertificateRevoked"), "{refusal}");

        // Everyone else is unaffected, on their open connection and on new ones.
        admin_client
            .version(())
            .await
            .expect("the admin's open connection is served");
        assert_eq!(
            net::probe_tls(addr, node.tls(Some(Cert::Admin))).await,
            Outcome::Accepted
        );
        node.client(Cert::Reader)
            .await
            .version(())
            .await
            .expect("a reader is served");

        // The list names the certificate, the reason and who revoked it.
        let entries = list(&node, Cert::Reader).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].serial, operator.serial);
        assert_eq!(entries[0].reason, "laptop lost");
        let caller = entries[0].caller.as_ref().expect("caller");
        assert!(caller.roles.iter().any(|r| r == "os:admin"), "{caller:?}");
        assert!(entries[0].time.is_some());

        // Revoking again changes nothing.
        let again = admin_revocations
            .revoke(revoke_serial(&operator.serial, "again"))
            .await
            .expect("revoke again")
            .into_inner();
        assert!(again.messages[0].already_revoked);

        // The list survives a crash of machined, and apid enforces it after the restart.
        drop((admin_client, admin_revocations, operator_client));
        node.kill_machined();
        node.restart().await;
        let entries = list(&node, Cert::Admin).await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].serial, operator.serial);
        let refusal = net::probe_tls(node.apid_addr(), node.tls(Some(Cert::Operator)))
            .await
            .refusal("the revoked operator certificate after a restart");
        assert!(refusal.contains("CertificateRevoked"), "{refusal}");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_revokes_by_certificate_file_and_lists_the_entries() {
    within_test_deadline(async {
        let node = Node::start().await;
        let config = admin_config(&node).await;
        let reader = node.pki().credentials(Cert::Reader);
        let reader_cert = reader.cert_path.display().to_string();

        let out = node
            .basaltctl(
                &config,
                &["cert", "revoke", "--cert", &reader_cert, "--reason", "left"],
            )
            .await;
        assert!(out.status.success(), "cert revoke: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("revoked"),
            "{}",
            text(&out)
        );

        let out = node
            .basaltctl(&config, &["cert", "revoked", "-o", "json"])
            .await;
        assert!(out.status.success(), "cert revoked: {}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let fingerprint = identity(&node, Cert::Reader).fingerprint;
        let listed = &json[0]["revoked"][0];
        assert_eq!(listed["fingerprint"], fingerprint.as_str(), "{json}");
        assert_eq!(listed["reason"], "left", "{json}");

        // apid picks the list up within its poll interval (100 ms), not at once.
        let refusal = refused_soon(&node, Cert::Reader).await;
        assert!(refusal.contains("CertificateRevoked"), "{refusal}");

        // A CA certificate is refused before anything is sent.
        let ca = node.pki().ca_path().display().to_string();
        let out = node
            .basaltctl(
                &config,
                &["cert", "revoke", "--cert", &ca, "--reason", "oops"],
            )
            .await;
        assert!(!out.status.success(), "revoking the CA: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("CA certificate"),
            "{}",
            text(&out)
        );
        node.shutdown().await;
    })
    .await;
}

/// The refusal of a new connection as `cert`, waiting (bounded) for apid to load a list that
/// was just changed.
async fn refused_soon(node: &Node, cert: Cert) -> String {
    net::refused_within(node.apid_addr(), node.tls(Some(cert)), STREAM_END_PATIENCE)
        .await
        .refusal(&format!(
            "{cert:?} {STREAM_END_PATIENCE:?} after its revocation{}",
            node.log_tail()
        ))
}

/// An admin client config for the node, made by the real CLI.
async fn admin_config(node: &Node) -> PathBuf {
    node.gen_client_config("admin.config", "os:admin", "24h", &[node.apid_addr()])
        .await
}

/// A reset keeps the node's CA and credentials, so it must keep the list of certificates of
/// that CA it refuses too: neither the reset nor the next start of machined brings a revoked
/// certificate back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_keeps_the_revocation_list() {
    within_test_deadline(async {
        let mut node = Node::start().await;
        let config = admin_config(&node).await;
        let reader = identity(&node, Cert::Reader);
        revocations(&node, Cert::Admin)
            .await
            .revoke(revoke_serial(&reader.serial, "left"))
            .await
            .unwrap_or_else(|status| panic!("Revoke: {status:?}{}", node.log_tail()));
        refused_soon(&node, Cert::Reader).await;

        let out = node
            .basaltctl(&config, &["reset", "--reboot", "--timeout", "40s"])
            .await;
        assert!(out.status.success(), "reset --reboot: {}", text(&out));
        let listed = |entries: Vec<RevokedCertificate>| {
            entries.iter().map(|e| e.serial.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            listed(list(&node, Cert::Admin).await),
            vec![reader.serial.clone()],
            "after the reset"
        );
        let refusal = refused_soon(&node, Cert::Reader).await;
        assert!(
            refusal.contains("CertificateRevoked"),
            "after the reset: {refusal}"
        );

        // machined's next start reads the list from disk again.
        node.kill_machined();
        node.restart().await;
        assert_eq!(
            listed(list(&node, Cert::Admin).await),
            vec![reader.serial.clone()],
            "after the restart"
        );
        let refusal = refused_soon(&node, Cert::Reader).await;
        assert!(
            refusal.contains("CertificateRevoked"),
            "after the restart: {refusal}"
        );
        node.shutdown().await;
    })
    .await;
}
