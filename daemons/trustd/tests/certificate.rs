//! The happy path and the signing policy seen through the wire: what a worker gets back, what
//! the journal records, and what a greedy CSR does *not* get.

mod support;

use std::time::Duration;

use basalt_pki::{Identity, KeyAlgorithm};
use support::{Pki, TOKEN, Trustd, certificate, openssl, within_deadline, worker_csr};

/// Reads the leaf and checks what every trustd certificate must be.
fn assert_plain_server_leaf(crt: &[u8]) -> Identity {
    let leaf = Identity::from_pem(std::str::from_utf8(crt).expect("utf-8")).expect("leaf");
    assert!(!leaf.is_ca, "issued a CA");
    assert!(leaf.organizations.is_empty(), "{:?}", leaf.organizations);
    assert!(leaf.roles.strings().is_empty());
    assert!(leaf.ext_key_usage.present && leaf.ext_key_usage.server_auth);
    assert!(!leaf.ext_key_usage.client_auth && !leaf.ext_key_usage.other);
    assert!(!leaf.is_client_auth_only());
    leaf
}

#[tokio::test]
async fn valid_token_and_ed25519_csr_get_a_server_leaf_that_verifies_and_is_journaled() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let csr = worker_csr(
            "talos-default-worker-1",
            &["talos-default-worker-1", "10.5.0.4"],
            KeyAlgorithm::Ed25519,
        );
        let response = certificate(&mut trustd.client(), csr, Some(TOKEN))
            .await
            .expect("certificate")
            .into_inner();

        // The bundle is the CA (no accepted CAs configured).
        assert_eq!(response.ca, pki.ca_pem().as_bytes());
        let leaf = assert_plain_server_leaf(&response.crt);
        assert_eq!(leaf.common_name.as_deref(), Some("talos-default-worker-1"));
        assert_eq!(leaf.dns_names, ["talos-default-worker-1"]);
        assert_eq!(leaf.ip_addresses, [std::net::IpAddr::from([10, 5, 0, 4])]);
        let lifetime = leaf.not_after - leaf.not_before;
        assert!(
            (lifetime - time::Duration::DAY).abs() <= time::Duration::seconds(2),
            "{lifetime}"
        );
        let now = time::OffsetDateTime::now_utc();
        assert!((leaf.not_before - now).abs() <= time::Duration::seconds(10));

        // openssl agrees: it chains to the CA and is good for a TLS server.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), &response.ca).expect("write");
        std::fs::write(dir.path().join("leaf.pem"), &response.crt).expect("write");
        let out = openssl(
            dir.path(),
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslserver",
                "leaf.pem",
            ],
        );
        assert!(out.contains("leaf.pem: OK"), "{out}");

        // One journal line, written before the answer.
        let journal = trustd.journal();
        assert_eq!(journal.len(), 1, "{journal:?}");
        let record = &journal[0];
        assert_eq!(record.serial, leaf.serial);
        assert_eq!(record.cn.as_deref(), Some("talos-default-worker-1"));
        assert_eq!(record.sans, ["talos-default-worker-1", "10.5.0.4"]);
        assert!(record.peer.starts_with("127.0.0.1:"), "{}", record.peer);
        assert_eq!(record.token, trustd::token_fingerprint(TOKEN));
        let not_after = time::OffsetDateTime::parse(
            &record.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .expect("rfc3339");
        assert_eq!(not_after, leaf.not_after);
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn openssl_csr_asking_for_admin_ca_and_client_auth_gets_a_plain_server_leaf() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let dir = tempfile::tempdir().expect("tempdir");
        openssl(
            dir.path(),
            &["genpkey", "-algorithm", "ed25519", "-out", "key.pem"],
        );
        openssl(
            dir.path(),
            &[
                "req",
                "-new",
                "-key",
                "key.pem",
                "-subj",
                "/O=os:admin/CN=talos-default-worker-1",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-addext",
                "extendedKeyUsage=clientAuth,serverAuth,codeSigning",
                "-addext",
                "subjectAltName=DNS:talos-default-worker-1,IP:10.5.0.4,URI:spiffe://x/admin",
                "-out",
                "csr.pem",
            ],
        );
        let csr = std::fs::read(dir.path().join("csr.pem")).expect("csr");
        let response = certificate(&mut trustd.client(), csr, Some(TOKEN))
            .await
            .expect("certificate")
            .into_inner();
        let leaf = assert_plain_server_leaf(&response.crt);
        assert_eq!(leaf.common_name.as_deref(), Some("talos-default-worker-1"));
        assert_eq!(leaf.dns_names, ["talos-default-worker-1"]);
        assert_eq!(leaf.ip_addresses, [std::net::IpAddr::from([10, 5, 0, 4])]);

        // openssl sees no CA, no Organization, serverAuth only.
        std::fs::write(dir.path().join("leaf.pem"), &response.crt).expect("write");
        let text = openssl(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-text"]);
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(!text.contains("os:admin"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(!text.contains("TLS Web Client Authentication"), "{text}");
        assert!(!text.contains("Certificate Sign"), "{text}");
        assert!(!text.contains("spiffe"), "{text}");
        // And it is useless as a client certificate.
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).expect("write");
        let refused = std::process::Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslclient",
                "leaf.pem",
            ])
            .current_dir(dir.path())
            .output()
            .expect("openssl");
        assert!(!refused.status.success());
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn p256_ca_signs_p256_csrs_from_openssl() {
    within_deadline(async {
        let pki = Pki::with_algorithm(KeyAlgorithm::EcdsaP256);
        let trustd = Trustd::start(&pki).await;
        let dir = tempfile::tempdir().expect("tempdir");
        openssl(
            dir.path(),
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-subj",
                "/CN=worker-2",
                "-addext",
                "subjectAltName=DNS:worker-2",
                "-out",
                "csr.pem",
            ],
        );
        let csr = std::fs::read(dir.path().join("csr.pem")).expect("csr");
        let response = certificate(&mut trustd.client(), csr, Some(TOKEN))
            .await
            .expect("certificate")
            .into_inner();
        let leaf = assert_plain_server_leaf(&response.crt);
        assert_eq!(leaf.dns_names, ["worker-2"]);
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn response_bundle_is_the_issuing_ca_then_the_accepted_cas() {
    within_deadline(async {
        let pki = Pki::new();
        let old = Pki::new();
        let trustd = Trustd::start_with(&pki, |config| {
            let path = config.journal.with_file_name("accepted.pem");
            // The issuing CA listed again and a key block must not show up in the bundle.
            let bundle = format!("{}{}{}", old.ca_pem(), pki.ca_pem(), old.ca.key_pem());
            std::fs::write(&path, bundle).expect("write bundle");
            config.accepted_cas = Some(path);
        })
        .await;
        let csr = worker_csr("worker", &["worker"], KeyAlgorithm::Ed25519);
        let response = certificate(&mut trustd.client(), csr, Some(TOKEN))
            .await
            .expect("certificate")
            .into_inner();
        let expected = format!("{}{}", pki.ca_pem(), old.ca_pem());
        assert_eq!(String::from_utf8(response.ca).expect("utf-8"), expected);
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn sixteen_concurrent_requests_each_get_a_distinct_journaled_certificate() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let client = trustd.client();
        let mut calls = Vec::new();
        for i in 0..16 {
            let mut client = client.clone();
            let csr = worker_csr(&format!("worker-{i}"), &[], KeyAlgorithm::Ed25519);
            calls.push(tokio::spawn(async move {
                certificate(&mut client, csr, Some(TOKEN)).await
            }));
        }
        let mut serials = Vec::new();
        for call in calls {
            let response = call.await.expect("task").expect("certificate").into_inner();
            serials.push(assert_plain_server_leaf(&response.crt).serial);
        }
        let journal = trustd.journal();
        assert_eq!(journal.len(), 16);
        let mut journaled: Vec<_> = journal.into_iter().map(|r| r.serial).collect();
        serials.sort();
        journaled.sort();
        journaled.dedup();
        assert_eq!(journaled, serials);
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn ttl_comes_from_the_config() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start_with(&pki, |config| {
            config.policy.ttl = Duration::from_secs(90);
        })
        .await;
        let csr = worker_csr("worker", &[], KeyAlgorithm::Ed25519);
        let response = certificate(&mut trustd.client(), csr, Some(TOKEN))
            .await
            .expect("certificate")
            .into_inner();
        let leaf = assert_plain_server_leaf(&response.crt);
        assert_eq!(
            leaf.not_after - leaf.not_before,
            time::Duration::seconds(90)
        );
        trustd.stop().await;
    })
    .await;
}
