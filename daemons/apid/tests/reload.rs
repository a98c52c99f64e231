//! Certificate and CA reload: new connections see new files, open connections keep working,
//! and a broken update keeps the previous credentials.

mod support;

use std::path::Path;
use std::time::Duration;

use basalt_pki::{CaOptions, CertificateAuthority};
use support::{
    Apid, Pki, client_cert, seen_caller, server_cert, tls_connect, tls_connector, version,
    within_deadline,
};

/// Replaces a file the way machined does: write a temporary file, then rename it over.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

fn der(pem: &str) -> Vec<u8> {
    basalt_pki::certificates_from_pem(pem.as_bytes()).expect("pem")[0].to_vec()
}

/// The leaf certificate a fresh TLS connection to apid is served.
async fn served_leaf(apid: &Apid, pki: &Pki) -> Vec<u8> {
    let connector = tls_connector(pki.ca_pem(), Some(&pki.client(&["os:reader"])));
    let stream = tls_connect(apid.addr, &connector)
        .await
        .expect("tls connect");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certs")[0]
        .to_vec()
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_only() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut open = apid.machine(&pki, &pki.client(&["os:admin"]));
        let before = version(&mut open).await.expect("call before the reload");
        let before = seen_caller(before.metadata());
        assert_eq!(served_leaf(&apid, &pki).await, der(&pki.server.cert));

        // New cert and key on disk; the poller notices within about a second.
        let renewed = server_cert(&pki.ca);
        replace(&apid.config.tls.key, &renewed.key);
        replace(&apid.config.tls.cert, &renewed.cert);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while served_leaf(&apid, &pki).await != der(&renewed.cert) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "new certificate never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The connection opened before the reload still works, and is the same connection: the
        // caller description machined receives names the same client port.
        let after = version(&mut open)
            .await
            .expect("open connection survives the reload");
        assert_eq!(seen_caller(after.metadata()), before, "same connection");

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_broken_update_keeps_the_previous_credentials() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;

        replace(&apid.config.tls.key, "not a key\n");
        let err = apid.reload.reload().await.expect_err("broken key refused");
        assert!(err.to_string().starts_with("build TLS config"), "{err}");
        assert_eq!(served_leaf(&apid, &pki).await, der(&pki.server.cert));
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));
        version(&mut client)
            .await
            .expect("still serving with the old credentials");

        // A cert whose key does not match is refused too.
        let other = server_cert(&pki.ca);
        replace(&apid.config.tls.cert, &other.cert);
        replace(&apid.config.tls.key, &pki.server.key);
        apid.reload
            .reload()
            .await
            .expect_err("mismatched key refused");
        assert_eq!(served_leaf(&apid, &pki).await, der(&pki.server.cert));

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_on_demand_reload_applies_at_once_including_the_ca_bundle() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;

        // CA rotation: a client of the new CA is refused until the bundle lists the new CA.
        let next = CertificateAuthority::generate(&CaOptions::talos_os()).expect("next ca");
        let next_client = client_cert(&next, &["os:admin"]);
        let mut client = apid.machine(&pki, &next_client);
        version(&mut client).await.expect_err("unknown CA");

        replace(
            &apid.config.tls.ca,
            &format!("{}{}", pki.ca_pem(), next.cert_pem()),
        );
        // What SIGHUP does; no waiting for the poller.
        apid.reload.reload().await.expect("reload");
        let mut client = apid.machine(&pki, &next_client);
        version(&mut client)
            .await
            .expect("new CA accepted after the reload");
        let mut old = apid.machine(&pki, &pki.client(&["os:admin"]));
        version(&mut old).await.expect("old CA still accepted");

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}
