//! apid's TLS front door: which clients get past the handshake, and that a stuck handshake does
//! not stop apid from serving others.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use basalt_e2e::{Cert, Node, Outcome, net, within_test_deadline};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// How long a well-behaved client may wait for Version while other connections hang.
const SERVE_PATIENCE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_at_the_handshake() {
    within_test_deadline(async {
        let node = Node::start().await;
        let addr = node.apid_addr();

        // The alert rustls sends for each reason (RFC 8446 §6.2). `None`: any fatal alert (the
        // EKU check is basalt's own verifier, whose error maps to a generic alert).
        // Another cluster's CA has the same subject as ours (O=talos, as Talos makes it), so
        // the chain builder takes our CA as the issuer by name and the signature check fails:
        // DecryptError rather than UnknownCA.
        let cases: [(Option<Cert>, Option<&str>); 6] = [
            (Some(Cert::OtherCa), Some("DecryptError")),
            (Some(Cert::Expired), Some("CertificateExpired")),
            (Some(Cert::NotYetValid), Some("CertificateExpired")),
            (Some(Cert::ServerAndClientEku), None),
            (Some(Cert::NoEku), None),
            (None, Some("CertificateRequired")),
        ];
        for (cert, alert) in cases {
            let refusal = net::probe_tls(addr, node.tls(cert))
                .await
                .refusal(&format!("client certificate {cert:?}"));
            assert!(
                refusal.contains("received fatal alert"),
                "{cert:?} should be refused with a TLS alert, got: {refusal}"
            );
            if let Some(alert) = alert {
                assert!(
                    refusal.contains(alert),
                    "{cert:?} should be refused with alert {alert}, got: {refusal}"
                );
            }

            // The same through a gRPC client: the call fails at the transport, it is never a
            // gRPC answer such as PermissionDenied.
            if let Some(cert) = cert {
                let tls = node.tls(Some(cert));
                let call = async {
                    let channel = net::connect(addr, tls)
                        .await
                        .map_err(|err| err.to_string())?;
                    basalt_api::machine::machine_service_client::MachineServiceClient::new(channel)
                        .version(())
                        .await
                        .map_err(|status| format!("{status:?}"))
                };
                let result = call.await;
                assert!(
                    result.is_err(),
                    "Version with {cert:?} must fail: {result:?}"
                );
                let text = result.unwrap_err();
                assert!(
                    !text.contains("PermissionDenied"),
                    "{cert:?} got past the handshake: {text}"
                );
            }
        }

        // The control: the admin certificate on the same listener is accepted.
        let admin = net::probe_tls(addr, node.tls(Some(Cert::Admin))).await;
        assert_eq!(admin, Outcome::Accepted, "{}", node.log_tail());
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_only_client_is_refused() {
    within_test_deadline(async {
        let node = Node::start().await;

        // Control: the same openssl invocation with TLS 1.3 completes, verifying apid's
        // certificate for 127.0.0.1, so the refusal below is about the version only.
        let tls13 = s_client(&node, "-tls1_3").await;
        assert!(
            tls13.0 && tls13.1.contains("TLSv1.3"),
            "openssl s_client -tls1_3 should connect: {}{}",
            tls13.1,
            node.log_tail()
        );

        let (ok, output) = s_client(&node, "-tls1_2").await;
        assert!(!ok, "openssl s_client -tls1_2 must fail:\n{output}");
        assert!(
            output.contains("protocol version"),
            "expected a protocol_version alert from apid:\n{output}"
        );
        assert!(
            !output.contains("New, TLSv1.2"),
            "a TLS 1.2 session was established:\n{output}"
        );
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http2_is_refused() {
    within_test_deadline(async {
        let node = Node::start().await;
        let received = net::plaintext_h2(node.apid_addr())
            .await
            .unwrap_or_else(|err| panic!("plaintext h2 probe: {err}{}", node.log_tail()));
        assert!(
            !net::starts_with_h2_settings(&received),
            "apid answered plaintext HTTP/2 with a SETTINGS frame: {received:?}"
        );
        // What comes back, if anything, is a TLS record (an alert), never HTTP/2.
        assert!(
            received.is_empty() || received[0] == 0x15,
            "expected nothing or a TLS alert record, got {received:?}"
        );
        // apid is unaffected.
        node.client(Cert::Admin)
            .await
            .version(())
            .await
            .unwrap_or_else(|status| panic!("Version after the probe: {status:?}"));
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_serves_others_while_clients_hang_in_the_handshake() {
    within_test_deadline(async {
        let node = Node::start().await;
        let addr = node.apid_addr();

        // Some connections send nothing; others send half a ClientHello (a record header that
        // promises 512 bytes, then the start of the handshake message) and stall.
        let mut hanging = Vec::new();
        for i in 0..8 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
                    .await
                    .unwrap();
            }
            hanging.push(tcp);
        }

        for attempt in 0..3 {
            let call = async { node.client(Cert::Reader).await.version(()).await.map(drop) };
            match tokio::time::timeout(SERVE_PATIENCE, call).await {
                Ok(Ok(())) => {}
                Ok(Err(status)) => panic!(
                    "Version #{attempt} failed while handshakes hang: {status:?}{}",
                    node.log_tail()
                ),
                Err(_) => panic!(
                    "Version #{attempt} took over {SERVE_PATIENCE:?} while {} handshakes hang{}",
                    hanging.len(),
                    node.log_tail()
                ),
            }
        }
        // And a fresh full handshake, not just a call on a pooled connection.
        assert_eq!(
            net::probe_tls(addr, node.tls(Some(Cert::Admin))).await,
            Outcome::Accepted
        );
        drop(hanging);
        node.shutdown().await;
    })
    .await;
}

/// Runs the real `openssl s_client` against apid with the admin certificate, forcing
/// `version_flag`. Returns whether it succeeded and its stdout + stderr.
async fn s_client(node: &Node, version_flag: &str) -> (bool, String) {
    let admin = node.pki().credentials(Cert::Admin);
    let addr = node.apid_addr();
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.arg("s_client")
        .arg(version_flag)
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(&admin.cert_path)
        .arg("-key")
        .arg(&admin.key_path)
        .arg("-CAfile")
        .arg(node.pki().ca_path())
        .args(["-verify_ip", &addr.ip().to_string(), "-verify_return_error"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(15), cmd.output())
        .await
        .expect("openssl s_client finishes within 15 s")
        .expect("run openssl (the openssl binary is required; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
