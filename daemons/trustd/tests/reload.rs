//! trustd's own server certificate is replaced without a restart (machined renews it at
//! half-life): new connections get the new one, and calls keep working.

mod support;

use std::sync::Arc;
use std::time::Duration;

use basalt_pki::{Identity, KeyAlgorithm, ServerCertRequest, SubjectAltName};
use rustls_pki_types::ServerName;
use support::{Pki, TOKEN, Trustd, certificate, within_deadline, worker_csr};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The common name of the certificate trustd presents on a new connection.
async fn served_common_name(trustd: &Trustd, pki: &Pki) -> Option<String> {
    let config = basalt_pki::client_config(pki.ca_pem().as_bytes(), None).expect("tls config");
    let tcp = TcpStream::connect(trustd.addr).await.expect("connect");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(trustd.addr.ip().into()), tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    let leaf = session.peer_certificates().expect("server certificate")[0].clone();
    Identity::from_der(&leaf).expect("leaf").common_name
}

#[tokio::test]
async fn replaced_server_certificate_is_used_for_new_connections() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        assert_eq!(
            served_common_name(&trustd, &pki).await.as_deref(),
            Some("trustd")
        );
        let renewed = pki
            .ca
            .issue_server(&ServerCertRequest {
                common_name: Some("trustd-renewed".to_owned()),
                sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
                ttl: Duration::from_secs(3600),
            })
            .expect("renewed cert");
        std::fs::write(&trustd.config.tls.key, &renewed.key_pem).expect("write key");
        std::fs::write(&trustd.config.tls.cert, &renewed.cert_pem).expect("write cert");
        trustd.reload.reload().await.expect("reload");
        assert_eq!(
            served_common_name(&trustd, &pki).await.as_deref(),
            Some("trustd-renewed")
        );
        let csr = worker_csr("worker-1", &[], KeyAlgorithm::Ed25519);
        certificate(&mut trustd.client(), csr, Some(TOKEN))
            .await
            .expect("certificate after the reload");
        trustd.stop().await;
    })
    .await;
}
