//! What the TLS handshake refuses, how failures are counted, and that one stuck client does
//! not hold up the others.

mod support;

use std::time::Duration;

use apid::HandshakeFailure;
use basalt_pki::{CaOptions, CertificateAuthority};
use rcgen::ExtendedKeyUsagePurpose;
use support::{Apid, CertKey, Pki, client_cert, machine_client, version, within_deadline};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Calls Version with `client` and expects the connection to be refused, then waits for the
/// refusal to be counted under `reason`.
async fn refused(apid: &Apid, pki: &Pki, client: Option<&CertKey>, reason: HandshakeFailure) {
    let mut machine = machine_client(apid.channel(pki, client));
    let err = version(&mut machine)
        .await
        .expect_err("the handshake must fail");
    // tonic reports a refused handshake as Unavailable or Unknown (transport error).
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        "{err:?}"
    );
    apid.expect_failed(reason, 1).await;
    assert_eq!(
        apid.stats.snapshot().total_failed(),
        1,
        "{:?}",
        apid.stats.snapshot()
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let other = CertificateAuthority::generate(&CaOptions::talos_os()).expect("other ca");
        refused(
            &apid,
            &pki,
            Some(&client_cert(&other, &["os:admin"])),
            HandshakeFailure::UnknownCa,
        )
        .await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let now = OffsetDateTime::now_utc();
        let expired = pki.rcgen_client(
            "os:admin",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            now - time::Duration::days(2),
            now - time::Duration::days(1),
        );
        refused(&apid, &pki, Some(&expired), HandshakeFailure::Expired).await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_certificate_not_yet_valid_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let now = OffsetDateTime::now_utc();
        let future = pki.rcgen_client(
            "os:admin",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            now + time::Duration::days(1),
            now + time::Duration::days(2),
        );
        refused(&apid, &pki, Some(&future), HandshakeFailure::NotYetValid).await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_certificate_that_is_also_for_servers_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let now = OffsetDateTime::now_utc();
        let both = pki.rcgen_client(
            "os:admin",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            now - time::Duration::hours(1),
            now + time::Duration::hours(1),
        );
        refused(&apid, &pki, Some(&both), HandshakeFailure::BadEku).await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_certificate_without_an_eku_extension_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let now = OffsetDateTime::now_utc();
        // No EKU extension means "any purpose" to X.509; apid wants exactly clientAuth.
        let any_purpose = pki.rcgen_client(
            "os:admin",
            Vec::new(),
            now - time::Duration::hours(1),
            now + time::Duration::hours(1),
        );
        refused(&apid, &pki, Some(&any_purpose), HandshakeFailure::BadEku).await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        refused(&apid, &pki, None, HandshakeFailure::NoCertificate).await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn plaintext_http2_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let mut tcp = TcpStream::connect(apid.addr).await.expect("connect");
        // The HTTP/2 client preface and an empty SETTINGS frame, in clear text.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("write preface");
        let mut reply = Vec::new();
        let _ = tcp.read_to_end(&mut reply).await;
        // Whatever comes back (a TLS alert or nothing), it is not an HTTP/2 SETTINGS frame.
        assert!(
            reply.is_empty() || reply[0] == 0x15,
            "unexpected reply {reply:02x?}"
        );
        apid.expect_failed(HandshakeFailure::NotTls, 1).await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_tls12_only_client_is_refused() {
    within_deadline(async {
        let openssl = std::process::Command::new("openssl")
            .arg("version")
            .output();
        if !openssl.is_ok_and(|out| out.status.success()) {
            eprintln!("openssl is not installed; skipping the TLS 1.2 client test");
            return;
        }
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let client = pki.client(&["os:admin"]);
        let dir = support::short_tempdir();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.crt"),
            dir.path().join("c.key"),
        );
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        std::fs::write(&cert, &client.cert).unwrap();
        std::fs::write(&key, &client.key).unwrap();
        let output = tokio::process::Command::new("openssl")
            .args(["s_client", "-tls1_2", "-connect"])
            .arg(apid.addr.to_string())
            .arg("-CAfile")
            .arg(&ca)
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run openssl");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "openssl connected with TLS 1.2: {stderr}"
        );
        apid.expect_failed(HandshakeFailure::ProtocolVersion, 1)
            .await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_stuck_in_the_handshake_does_not_block_others() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.handshake_timeout = Duration::from_secs(2);
        })
        .await;
        let backend = apid.backend().await;

        // Opens TCP and says nothing.
        let mut stuck = TcpStream::connect(apid.addr).await.expect("connect");
        // A half-sent ClientHello: a record header promising more than arrives.
        let mut dribbling = TcpStream::connect(apid.addr).await.expect("connect");
        dribbling
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .expect("write");

        for _ in 0..3 {
            let mut client = apid.machine(&pki, &pki.client(&["os:reader"]));
            version(&mut client)
                .await
                .expect("others are served meanwhile");
        }
        assert_eq!(apid.failed(HandshakeFailure::Timeout), 0);

        // Both stuck handshakes end at the timeout, and the server closes them.
        apid.expect_failed(HandshakeFailure::Timeout, 2).await;
        let mut buf = [0u8; 16];
        assert_eq!(
            stuck.read(&mut buf).await.unwrap_or(0),
            0,
            "stuck socket closed"
        );

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn completed_handshakes_are_counted_and_failures_stay_zero() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));
        version(&mut client).await.expect("version");
        version(&mut client)
            .await
            .expect("version on the same connection");
        let stats = apid.stats.snapshot();
        assert_eq!(stats.completed, 1);
        assert_eq!(stats.total_failed(), 0);
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}
