//! Live PKI changes on real nodes, without restarts:
//!
//! - switching `machine.ca` on a control plane with ApplyConfiguration NO_REBOOT (the old CA
//!   kept in `acceptedCAs`): apid's server and impersonator certificates and trustd's signing
//!   CA follow within seconds, an old-CA client keeps working; dropping the old CA then refuses
//!   it at the handshake (the contract `basaltctl rotate-ca` relies on);
//! - `basaltctl rotate-token`: a worker joins with the new token, one with the old token still
//!   joins until its expiry, and a retired token is refused once its short expiry passed;
//! - renewal at half-life with a short `--node-cert-ttl`: the served certificate's serial
//!   changes on a control plane and on a worker (issued by trustd), and a call on a channel
//!   opened before the renewal still works.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_api::machine::ApplyConfigurationRequest;
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_api::securityapi::CertificateRequest;
use basalt_api::securityapi::security_service_client::SecurityServiceClient;
use basalt_authz::{Role, RoleSet};
use basalt_config::machine::{RawCa, RawCertificate};
use basalt_config::{Base64Pem, MachineConfig};
use basalt_e2e::cli::text;
use basalt_e2e::net::{self, probe_tls};
use basalt_e2e::{Cert, Node, Outcome, within_test_deadline};
use basalt_pki::{
    CaOptions, CertificateAuthority, ClientCertRequest, Identity, KeyAlgorithm, SubjectAltName,
};

/// How long a live change may take to show (apid and trustd poll their files every second).
const PATIENCE: Duration = Duration::from_secs(15);

const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Some`, or fails naming `what` after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The node's active config, as machined was started with it.
fn boot_config(node: &Node) -> MachineConfig {
    MachineConfig::load(&node.dir().join("machine.yaml")).unwrap()
}

/// Applies `config` live through apid with a client configured by `tls`.
async fn apply(node: &Node, tls: Arc<rustls::ClientConfig>, config: &MachineConfig) {
    let channel = net::connect(node.apid_addr(), tls).await.unwrap();
    let mut client = MachineServiceClient::new(channel);
    let reply = client
        .apply_configuration(ApplyConfigurationRequest {
            data: config.to_yaml().unwrap().into_bytes(),
            mode: Mode::NoReboot as i32,
            dry_run: false,
            try_mode_timeout: None,
        })
        .await
        .unwrap_or_else(|status| panic!("apply: {status:?}\n{}", node.log_tail()));
    assert_eq!(
        reply.into_inner().messages[0].mode,
        Mode::NoReboot as i32,
        "applied live"
    );
}

fn pem(base64: &Base64Pem) -> String {
    base64.as_str().unwrap().to_owned()
}

fn der(pem: &str) -> Vec<u8> {
    basalt_pki::certificates_from_pem(pem.as_bytes()).unwrap()[0].to_vec()
}

/// The leaf certificate apid (or trustd) presents on a new connection, when a client that
/// trusts `ca_pem` accepts it.
async fn served_cert(addr: SocketAddr, ca_pem: &str) -> Option<Identity> {
    let stream = net::tls_connect(addr, net::tls_config(ca_pem, None))
        .await
        .ok()?;
    let (_, session) = stream.get_ref();
    let leaf = session.peer_certificates()?.first()?.clone();
    Identity::from_der(&leaf).ok()
}

/// Version through apid on `channel`.
async fn version_ok(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    MachineServiceClient::new(channel)
        .version(())
        .await
        .map(|_| ())
}

/// One `Certificate` call to trustd over TLS trusting `ca_pem`, with `token`.
async fn trustd_sign(
    addr: SocketAddr,
    ca_pem: &str,
    token: &str,
) -> Result<(String, String), tonic::Status> {
    let channel = net::connect(addr, net::tls_config(ca_pem, None))
        .await
        .expect("trustd accepts TLS");
    let (csr, _key) = basalt_pki::build_csr(
        "joiner",
        &[SubjectAltName::Ip([127, 0, 0, 1].into())],
        KeyAlgorithm::Ed25519,
    )
    .unwrap();
    let mut request = tonic::Request::new(CertificateRequest {
        csr: csr.into_bytes(),
    });
    request
        .metadata_mut()
        .insert("token", token.parse().unwrap());
    let response = SecurityServiceClient::new(channel)
        .certificate(request)
        .await?
        .into_inner();
    Ok((
        String::from_utf8(response.crt).unwrap(),
        String::from_utf8(response.ca).unwrap(),
    ))
}

#[tokio::test]
async fn ca_switch_applies_live_and_the_old_ca_is_refused_once_dropped() {
    within_test_deadline(async {
        let node = Node::start().await;
        let old = boot_config(&node);
        let old_ca_pem = pem(old.ca_crt());
        let new_ca = CertificateAuthority::generate(&CaOptions::talos_os()).unwrap();
        let both = format!("{}{}", new_ca.cert_pem(), old_ca_pem);
        let old_admin = node.pki().credentials(Cert::Admin);
        let old_admin = (old_admin.cert_pem.as_str(), old_admin.key_pem.as_str());
        let new_admin = new_ca
            .issue_client(&ClientCertRequest {
                common_name: Some("new-admin".to_owned()),
                roles: RoleSet::from_iter([Role::Admin]),
                ttl: Duration::from_secs(3600),
            })
            .unwrap();
        let new_admin = (new_admin.cert_pem.as_str(), new_admin.key_pem.as_str());

        // Switch issuing to the new CA, keep the old one accepted.
        let mut raw = old.to_raw();
        raw.machine.ca = Some(RawCa {
            crt: Some(Base64Pem::from_pem(new_ca.cert_pem())),
            key: Some(Base64Pem::from_pem(new_ca.key_pem())),
        });
        raw.machine.accepted_cas = vec![RawCertificate {
            crt: Some(old.ca_crt().clone()),
        }];
        let switched = MachineConfig::try_from(raw.clone()).unwrap();
        let old_tls = net::tls_config(&both, Some(old_admin));
        let new_tls = net::tls_config(&both, Some(new_admin));
        apply(&node, Arc::clone(&old_tls), &switched).await;

        let addr = node.apid_addr();
        let served = eventually("apid serves a certificate of the new CA", || async {
            served_cert(addr, new_ca.cert_pem()).await
        })
        .await;
        assert!(served.ext_key_usage.server_auth);
        let impersonator =
            std::fs::read_to_string(node.state_dir().join("apid/client.crt")).unwrap();
        assert!(basalt_pki::is_issued_by(&der(&impersonator), new_ca.cert_der()).unwrap());
        // apid's accepted bundle is machine.ca + acceptedCAs.
        let bundle = std::fs::read(node.state_dir().join("apid/ca.pem")).unwrap();
        let bundle = basalt_pki::certificates_from_pem(&bundle).unwrap();
        assert_eq!(bundle.len(), 2);
        assert_eq!(&bundle[0][..], new_ca.cert_der());

        // Both the old-CA and the new-CA client work on new connections.
        version_ok(net::connect(addr, Arc::clone(&old_tls)).await.unwrap())
            .await
            .expect("old-CA client during the window");
        version_ok(net::connect(addr, Arc::clone(&new_tls)).await.unwrap())
            .await
            .expect("new-CA client");

        // trustd signs with the new CA and returns the new bundle (new CA first).
        let (crt, ca) = eventually("trustd signs with the new CA", || async {
            let (crt, ca) = trustd_sign(node.trustd_addr(), &both, node.token())
                .await
                .ok()?;
            basalt_pki::is_issued_by(&der(&crt), new_ca.cert_der())
                .unwrap()
                .then_some((crt, ca))
        })
        .await;
        assert!(!crt.is_empty());
        assert_eq!(der(&ca), new_ca.cert_der());

        // Drop the old CA: the old-CA client is refused at the handshake, the new one is not.
        raw.machine.accepted_cas.clear();
        apply(
            &node,
            Arc::clone(&new_tls),
            &MachineConfig::try_from(raw).unwrap(),
        )
        .await;
        eventually("the old-CA client is refused", || async {
            matches!(
                probe_tls(addr, Arc::clone(&old_tls)).await,
                Outcome::Refused(_)
            )
            .then_some(())
        })
        .await;
        assert_eq!(
            probe_tls(addr, Arc::clone(&new_tls)).await,
            Outcome::Accepted
        );
        let bundle = std::fs::read(node.state_dir().join("apid/ca.pem")).unwrap();
        assert_eq!(basalt_pki::certificates_from_pem(&bundle).unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_worker_requests_a_new_certificate_when_its_ca_changes() {
    within_test_deadline(async {
        let control_plane = Node::start().await;
        let worker = Node::builder().worker_of(&control_plane).start().await;
        let old = boot_config(&control_plane);
        let new_ca = CertificateAuthority::generate(&CaOptions::talos_os()).unwrap();
        let both = format!("{}{}", new_ca.cert_pem(), pem(old.ca_crt()));
        let admin = control_plane.pki().credentials(Cert::Admin);
        let admin_tls = net::tls_config(&both, Some((&admin.cert_pem, &admin.key_pem)));
        let accepted_old = vec![RawCertificate {
            crt: Some(old.ca_crt().clone()),
        }];

        // rotate-ca's order: the worker accepts the new CA first (nothing to re-request) ...
        let mut raw = boot_config(&worker).to_raw();
        raw.machine.accepted_cas = vec![RawCertificate {
            crt: Some(Base64Pem::from_pem(new_ca.cert_pem())),
        }];
        apply(
            &worker,
            Arc::clone(&admin_tls),
            &MachineConfig::try_from(raw).unwrap(),
        )
        .await;

        // ... the control plane signs with the new CA ...
        let mut raw = old.to_raw();
        raw.machine.ca = Some(RawCa {
            crt: Some(Base64Pem::from_pem(new_ca.cert_pem())),
            key: Some(Base64Pem::from_pem(new_ca.key_pem())),
        });
        raw.machine.accepted_cas = accepted_old.clone();
        apply(
            &control_plane,
            Arc::clone(&admin_tls),
            &MachineConfig::try_from(raw).unwrap(),
        )
        .await;
        eventually("the control plane serves a new-CA certificate", || async {
            served_cert(control_plane.apid_addr(), new_ca.cert_pem()).await
        })
        .await;

        // ... then the worker learns the new CA (certificate only) and asks trustd again.
        let mut raw = boot_config(&worker).to_raw();
        raw.machine.ca = Some(RawCa {
            crt: Some(Base64Pem::from_pem(new_ca.cert_pem())),
            key: None,
        });
        raw.machine.accepted_cas = accepted_old;
        apply(
            &worker,
            Arc::clone(&admin_tls),
            &MachineConfig::try_from(raw).unwrap(),
        )
        .await;
        let served = eventually("the worker serves a new-CA certificate", || async {
            served_cert(worker.apid_addr(), new_ca.cert_pem()).await
        })
        .await;
        assert!(served.ext_key_usage.server_auth && served.organizations.is_empty());
        let bundle = std::fs::read(worker.state_dir().join("apid/ca.pem")).unwrap();
        assert_eq!(basalt_pki::certificates_from_pem(&bundle).unwrap().len(), 2);
        // The old-CA admin still works on the worker during the window.
        version_ok(net::connect(worker.apid_addr(), admin_tls).await.unwrap())
            .await
            .expect("old-CA client on the worker");
    })
    .await;
}

#[tokio::test]
async fn rotated_token_lets_new_workers_join_and_the_old_one_expires() {
    within_test_deadline(async {
        let control_plane = Node::start().await;
        let old_token = control_plane.token().to_owned();
        let config = client_config(&control_plane, "admin.yaml").await;

        // A dry run changes nothing and prints no token.
        let trustd_yaml = control_plane.state_dir().join("trustd/trustd.yaml");
        let before = std::fs::read(&trustd_yaml).unwrap();
        let out = control_plane
            .basaltctl(&config, &["rotate-token", "--dry-run"])
            .await;
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        assert_eq!(std::fs::read(&trustd_yaml).unwrap(), before);

        let out = control_plane
            .basaltctl(&config, &["rotate-token", "--keep-old-for", "1h"])
            .await;
        assert!(out.status.success(), "{}", text(&out));
        let new_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(basalt_config::is_token(&new_token), "{new_token:?}");
        assert_ne!(new_token, old_token);

        // trustd picks the new token up within a poll or two; then workers join with either.
        let trustd = control_plane.trustd_addr();
        let ca = control_plane.pki().ca_pem().to_owned();
        accepted_soon(trustd, &ca, &new_token).await;
        let with_new = Node::builder()
            .worker_of(&control_plane)
            .token(&new_token)
            .start()
            .await;
        let with_old = Node::builder()
            .worker_of(&control_plane)
            .token(&old_token)
            .start()
            .await;
        version_ok(with_new.channel(Cert::Admin).await)
            .await
            .expect("worker joined with the new token");
        version_ok(with_old.channel(Cert::Admin).await)
            .await
            .expect("worker joined with the old token");

        // Rotate again, keeping the second token only briefly: refused once that passed.
        let out = control_plane
            .basaltctl(&config, &["rotate-token", "--keep-old-for", "2s"])
            .await;
        assert!(out.status.success(), "{}", text(&out));
        let third = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        accepted_soon(trustd, &ca, &third).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let refused = trustd_sign(trustd, &ca, &new_token).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        // The first token's hour is not over yet.
        trustd_sign(trustd, &ca, &old_token)
            .await
            .expect("the first token is still within its expiry");

        // Rotating with 0s (a leaked token) refuses the previous token at once.
        let out = control_plane
            .basaltctl(&config, &["rotate-token", "--keep-old-for", "0s"])
            .await;
        assert!(out.status.success(), "{}", text(&out));
        let fourth = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        accepted_soon(trustd, &ca, &fourth).await;
        let refused = trustd_sign(trustd, &ca, &third).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    })
    .await;
}

#[tokio::test]
async fn short_lived_certificates_renew_without_dropping_connections() {
    within_test_deadline(async {
        let ttl = Duration::from_secs(8);
        let control_plane = Node::builder().node_cert_ttl(ttl).start().await;
        let worker = Node::builder()
            .worker_of(&control_plane)
            .node_cert_ttl(ttl)
            .start()
            .await;
        for node in [&control_plane, &worker] {
            let ca = node.pki().ca_pem().to_owned();
            let first = served_cert(node.apid_addr(), &ca).await.unwrap();
            // not_before is backdated for clock skew; what is left is the short lifetime.
            let left = first.not_after - time::OffsetDateTime::now_utc();
            assert!(left <= time::Duration::seconds(60), "short-lived: {left}");
            let channel = node.channel(Cert::Admin).await;
            version_ok(channel.clone()).await.expect("before renewal");
            let renewed = eventually("apid serves a renewed certificate", || async {
                served_cert(node.apid_addr(), &ca)
                    .await
                    .filter(|cert| cert.serial != first.serial)
            })
            .await;
            assert!(renewed.not_after > first.not_after);
            // The channel opened before the renewal still works (same connection).
            version_ok(channel)
                .await
                .expect("the open channel survives the renewal");
        }
    })
    .await;
}

#[tokio::test]
async fn rotate_token_refusals_change_nothing() {
    within_test_deadline(async {
        let node = Node::start().await;
        let trustd_yaml = node.state_dir().join("trustd/trustd.yaml");
        let before = std::fs::read(&trustd_yaml).unwrap();

        // Reading the config (it holds the token) is admin-only.
        let reader = client_config_with_roles(&node, "reader.yaml", "os:reader").await;
        let out = node.basaltctl(&reader, &["rotate-token"]).await;
        assert!(!out.status.success(), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ConfigService/Get"), "{}", text(&out));

        let admin = client_config(&node, "admin.yaml").await;
        let out = node
            .basaltctl(&admin, &["rotate-token", "--keep-old-for", "soon"])
            .await;
        assert!(!out.status.success(), "{}", text(&out));
        assert!(out.stdout.is_empty(), "{}", text(&out));

        assert_eq!(std::fs::read(&trustd_yaml).unwrap(), before);
        version_ok(node.channel(Cert::Admin).await)
            .await
            .expect("the node keeps serving");
    })
    .await;
}

#[tokio::test]
async fn a_ca_key_that_does_not_match_is_refused_and_nothing_changes() {
    within_test_deadline(async {
        let node = Node::start().await;
        let old = boot_config(&node);
        let ca = node.pki().ca_pem().to_owned();
        let before = served_cert(node.apid_addr(), &ca).await.unwrap();
        let trustd_key = std::fs::read(node.state_dir().join("trustd/ca.key")).unwrap();

        // machine.ca = a new certificate with another CA's key: nothing could be issued from it.
        let cert_of = CertificateAuthority::generate(&CaOptions::talos_os()).unwrap();
        let key_of = CertificateAuthority::generate(&CaOptions::talos_os()).unwrap();
        let mut raw = old.to_raw();
        raw.machine.ca = Some(RawCa {
            crt: Some(Base64Pem::from_pem(cert_of.cert_pem())),
            key: Some(Base64Pem::from_pem(key_of.key_pem())),
        });
        let bad = MachineConfig::try_from(raw).unwrap();
        let mut client = MachineServiceClient::new(node.channel(Cert::Admin).await);
        let status = client
            .apply_configuration(ApplyConfigurationRequest {
                data: bad.to_yaml().unwrap().into_bytes(),
                mode: Mode::NoReboot as i32,
                dry_run: false,
                try_mode_timeout: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("machine.ca"), "{status:?}");

        // Nothing moved: same certificate, same trustd CA key, and the node keeps serving.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = served_cert(node.apid_addr(), &ca).await.unwrap();
        assert_eq!(after.serial, before.serial);
        assert_eq!(
            std::fs::read(node.state_dir().join("trustd/ca.key")).unwrap(),
            trustd_key
        );
        version_ok(node.channel(Cert::Admin).await)
            .await
            .expect("the node keeps serving");
    })
    .await;
}

/// Waits until trustd accepts `token`. Each refusal counts toward trustd's lockout of this
/// address (5 in a row), so this asks once a second, a few times: trustd polls its config
/// every second.
async fn accepted_soon(trustd: SocketAddr, ca: &str, token: &str) {
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        if trustd_sign(trustd, ca, token).await.is_ok() {
            return;
        }
    }
    panic!("trustd never accepted the rotated token");
}

/// A client config with `roles` for the node, 24 h.
async fn client_config_with_roles(node: &Node, name: &str, roles: &str) -> PathBuf {
    node.gen_client_config(name, roles, "24h", &[node.apid_addr()])
        .await
}

/// An `os:admin` client config for the node, 24 h.
async fn client_config(node: &Node, name: &str) -> PathBuf {
    client_config_with_roles(node, name, "os:admin").await
}
