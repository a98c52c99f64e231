//! Bad input on every level, and trustd keeps serving through all of it: CSRs that do not
//! verify or parse or have the wrong key type, methods trustd does not serve, bytes that are
//! not TLS, and a journal that cannot be written.

mod support;

use std::net::IpAddr;

use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_pki::KeyAlgorithm;
use support::{Pki, TOKEN, Trustd, certificate, channel, openssl, within_deadline, worker_csr};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;
use trustd::HandshakeFailure;

fn csr() -> String {
    worker_csr("worker-1", &["worker-1"], KeyAlgorithm::Ed25519)
}

/// The CSR with the last byte of its signature flipped.
fn tampered_csr() -> String {
    let block = pem::parse(csr()).expect("pem");
    let mut der = block.contents().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

#[tokio::test]
async fn csr_with_a_broken_signature_is_invalid_argument() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let status = certificate(&mut trustd.client(), tampered_csr(), Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "CSR signature does not verify");
        assert!(trustd.journal().is_empty());
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn p256_csr_to_an_ed25519_ca_is_invalid_argument_naming_both_key_types() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let csr = worker_csr("worker-1", &[], KeyAlgorithm::EcdsaP256);
        let status = certificate(&mut trustd.client(), csr, Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "CSR key type ecdsa-p256 does not match the CA key type ed25519"
        );
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_rsa_csr_from_openssl_is_invalid_argument_and_trustd_keeps_signing() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let dir = tempfile::tempdir().expect("tempdir");
        openssl(
            dir.path(),
            &[
                "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-subj",
                "/CN=worker-1", "-out", "csr.pem",
            ],
        );
        let rsa = std::fs::read(dir.path().join("csr.pem")).expect("csr");
        let status = certificate(&mut trustd.client(), rsa, Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.message(),
            "unsupported key algorithm RSA (1.2.840.113549.1.1.1): basalt uses ed25519 or ecdsa-p256 keys"
        );
        assert!(trustd.journal().is_empty());

        // Nothing was torn: the next good CSR is signed and journaled.
        certificate(&mut trustd.client(), csr(), Some(TOKEN))
            .await
            .expect("a good CSR after the RSA one");
        assert_eq!(trustd.journal().len(), 1);
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn garbage_and_malformed_csrs_are_invalid_argument() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let mut client = trustd.client();
        let wildcard = {
            // A wildcard DNS SAN: well-formed PKCS#10, refused by the policy.
            let dir = tempfile::tempdir().expect("tempdir");
            support::openssl(
                dir.path(),
                &[
                    "req", "-new", "-newkey", "ed25519", "-nodes", "-keyout", "k.pem", "-subj",
                    "/CN=w", "-addext", "subjectAltName=DNS:*.example.com", "-out", "c.pem",
                ],
            );
            std::fs::read(dir.path().join("c.pem")).expect("csr")
        };
        for (input, message) in [
            (b"not a csr".to_vec(), "failed to parse CSR: "),
            (
                b"-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQA=\n-----END CERTIFICATE REQUEST-----\n"
                    .to_vec(),
                "failed to parse CSR: ",
            ),
            (pki.ca_pem().as_bytes().to_vec(), "failed to parse CSR: "),
            (wildcard, "invalid subject alternative name \"*.example.com\""),
        ] {
            let status = certificate(&mut client, input, Some(TOKEN))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().starts_with(message),
                "{:?} does not start with {message:?}",
                status.message()
            );
        }
        certificate(&mut client, csr(), Some(TOKEN))
            .await
            .expect("still serving");
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn other_methods_are_unimplemented_and_streaming_ones_say_so() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        let mut machine = MachineServiceClient::new(channel(
            trustd.addr,
            pki.ca_pem(),
            IpAddr::from([127, 0, 0, 1]),
        ));
        let status = machine.version(()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "unknown method /machine.MachineService/Version: trustd serves only \
             /securityapi.SecurityService/Certificate"
        );
        let status = machine
            .logs(basalt_api::machine::LogsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "streaming APIs are not supported");
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn garbage_instead_of_tls_is_refused_and_the_server_keeps_serving() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x00],
        ] {
            let mut tcp = TcpStream::connect(trustd.addr).await.expect("connect");
            tcp.write_all(garbage).await.expect("write");
            // The server closes the connection (after at most a TLS alert).
            let mut buf = [0u8; 64];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        support::eventually("three failed handshakes", || {
            trustd.stats.snapshot().total_failed() == 3
        })
        .await;
        assert!(trustd.failed(HandshakeFailure::NotTls) >= 2);
        certificate(&mut trustd.client(), csr(), Some(TOKEN))
            .await
            .expect("still serving");
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_journal_that_cannot_be_written_means_no_certificate() {
    within_deadline(async {
        let pki = Pki::new();
        // Every write to /dev/full fails with ENOSPC.
        let trustd = Trustd::start_with(&pki, |config| {
            config.journal = "/dev/full".into();
        })
        .await;
        let status = certificate(&mut trustd.client(), csr(), Some(TOKEN))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/dev/full"), "{status:?}");
        trustd.stop().await;
    })
    .await;
}
