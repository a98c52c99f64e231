//! The certificate status API through the real apid (`basalt.v1.CertificateService/Status`)
//! and `basaltctl certs`: the fields match what openssl reads from the node's files, readers
//! may look, a certificate without roles may not, and a short-lived client certificate is
//! flagged.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use basalt_api::basalt::v1::certificate_service_client::CertificateServiceClient;
use basalt_api::basalt::v1::{CertificateInfo, CertificateStatusRequest};
use basalt_e2e::cli::text;
use basalt_e2e::{Cert, Node, within_test_deadline};
use basalt_pki::Identity;
use tonic::Code;

/// What `openssl x509 -noout <options>` prints for `path`, after the `=`; `None` when openssl
/// is not installed.
fn openssl_field(path: &Path, options: &[&str]) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout"])
        .args(options)
        .arg("-in")
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "openssl x509 {options:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(text.trim().split_once('=').unwrap().1.to_owned())
}

/// Checks one entry against the PEM file it came from, with openssl where it is installed.
fn assert_matches_file(info: &CertificateInfo, path: &Path) {
    assert_eq!(info.source, path.display().to_string());
    assert!(info.error.is_empty(), "{}: {}", info.role, info.error);
    let identity = Identity::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(info.serial, identity.serial, "{}", info.role);
    assert_eq!(info.fingerprint, identity.fingerprint, "{}", info.role);
    assert_eq!(info.not_after, identity.not_after.unix_timestamp());
    assert_eq!(info.not_before, identity.not_before.unix_timestamp());
    match openssl_field(path, &["-serial"]) {
        // openssl prints upper-case hex, padded to whole bytes.
        Some(serial) => assert_eq!(
            serial.to_lowercase().trim_start_matches('0'),
            info.serial,
            "{}",
            info.role
        ),
        None => eprintln!("openssl not installed: skipping the serial cross-check"),
    }
    if let Some(fingerprint) = openssl_field(path, &["-fingerprint", "-sha256"]) {
        assert_eq!(
            fingerprint.replace(':', "").to_lowercase(),
            info.fingerprint,
            "{}",
            info.role
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_through_apid_matches_the_nodes_files() {
    within_test_deadline(async {
        let node = Node::start().await;
        // A reader may look: the reply holds no secret.
        let status = CertificateServiceClient::new(node.channel(Cert::Reader).await)
            .status(CertificateStatusRequest {})
            .await
            .unwrap_or_else(|status| panic!("Status: {status:?}{}", node.log_tail()))
            .into_inner()
            .messages
            .remove(0);
        let roles: Vec<&str> = status
            .certificates
            .iter()
            .map(|c| c.role.as_str())
            .collect();
        assert_eq!(
            roles,
            ["ca-issuing", "apid-server", "apid-client", "trustd-server"],
            "{:?}",
            status.certificates
        );
        let ca = Identity::from_pem(node.pki().ca_pem()).unwrap();
        let [ca_info, server, client, trustd] = &status.certificates[..] else {
            unreachable!()
        };
        assert_eq!(ca_info.fingerprint, ca.fingerprint);
        assert_eq!(ca_info.serial, ca.serial);
        assert_eq!(ca_info.organizations, ["talos"]);
        assert_eq!(ca_info.source, "machine.ca");

        let apid_dir = node.state_dir().join("apid");
        assert_matches_file(server, &apid_dir.join("server.crt"));
        assert_matches_file(client, &apid_dir.join("client.crt"));
        assert_matches_file(trustd, &node.state_dir().join("trustd").join("server.crt"));
        for leaf in [server, client, trustd] {
            // Talos's CA has no CN; the signer is found by signature.
            assert_eq!(leaf.issuer, "O=talos");
            assert_eq!(leaf.issuer_common_name, "");
            assert_eq!(leaf.issuer_fingerprint, ca.fingerprint, "{}", leaf.role);
        }
        assert!(
            server.ip_addresses.contains(&"127.0.0.1".to_owned()),
            "{:?}",
            server.ip_addresses
        );
        assert!(server.organizations.is_empty());
        assert_eq!(client.organizations, ["os:impersonator"]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((status.now - now).abs() < 60, "node clock {}", status.now);

        // A certificate without roles is refused, and the node keeps serving.
        let denied = CertificateServiceClient::new(node.channel(Cert::NoOrganization).await)
            .status(CertificateStatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        CertificateServiceClient::new(node.channel(Cert::Operator).await)
            .status(CertificateStatusRequest {})
            .await
            .expect("an operator may look too");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_cli_prints_json_and_flags_a_short_lived_client_certificate() {
    within_test_deadline(async {
        let node = Node::start().await;
        // A year: nothing to say about the client certificate.
        let long = client_config(&node, "long.config", "8760h").await;
        let out = node.basaltctl(&long, &["certs", "-o", "json"]).await;
        assert!(out.status.success(), "certs: {}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["client"]["role"], "client");
        assert!(report["client"].get("warning").is_none(), "{report:#}");
        let nodes = report["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1, "{report:#}");
        let certs = nodes[0]["certificates"].as_array().unwrap();
        let server = certs
            .iter()
            .find(|c| c["role"] == "apid-server")
            .unwrap_or_else(|| panic!("{report:#}"));
        let file = Identity::from_pem(
            &std::fs::read_to_string(node.state_dir().join("apid").join("server.crt")).unwrap(),
        )
        .unwrap();
        assert_eq!(server["serial"], file.serial.as_str());
        assert!(server["not_after"].as_str().unwrap().ends_with('Z'));
        // A fresh 24 h server certificate is not overdue for renewal: no warning.
        assert!(server.get("warning").is_none(), "{server:#}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));

        // A day: expires within 30 days, so it is flagged in the output and on stderr.
        let short = client_config(&node, "short.config", "24h").await;
        let out = node.basaltctl(&short, &["certs", "-o", "json"]).await;
        assert!(out.status.success(), "certs: {}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let warning = report["client"]["warning"].as_str().unwrap_or_else(|| {
            panic!("no warning for a 24 h client certificate: {report:#}");
        });
        assert!(warning.contains("expires in"), "{warning}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning: the client certificate"),
            "{stderr}"
        );

        // The table names the same thing in its WARN column.
        let out = node.basaltctl(&short, &["certs"]).await;
        assert!(out.status.success(), "certs: {}", text(&out));
        let table = String::from_utf8_lossy(&out.stdout);
        let client_row = table
            .lines()
            .find(|line| line.starts_with("(client)"))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(client_row.ends_with("EXPIRES SOON"), "{table}");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_its_trustd_issued_certificate_and_no_control_plane_files() {
    within_test_deadline(async {
        let control_plane = Node::start().await;
        let worker = Node::builder().worker_of(&control_plane).start().await;
        let status = CertificateServiceClient::new(worker.channel(Cert::Reader).await)
            .status(CertificateStatusRequest {})
            .await
            .unwrap_or_else(|status| panic!("Status: {status:?}{}", worker.log_tail()))
            .into_inner()
            .messages
            .remove(0);
        let roles: Vec<&str> = status
            .certificates
            .iter()
            .map(|c| c.role.as_str())
            .collect();
        assert_eq!(
            roles,
            ["ca-issuing", "apid-server"],
            "{:?}",
            status.certificates
        );
        let ca = Identity::from_pem(control_plane.pki().ca_pem()).unwrap();
        let server = &status.certificates[1];
        assert_matches_file(server, &worker.state_dir().join("apid").join("server.crt"));
        assert_eq!(server.issuer_fingerprint, ca.fingerprint);
        // trustd's policy: no Organization on a node certificate.
        assert!(server.organizations.is_empty());

        // The CLI shows each node, dialed through its own endpoint.
        let config = client_config(&control_plane, "admin.config", "8760h").await;
        for addr in [control_plane.apid_addr(), worker.apid_addr()] {
            let endpoint = addr.to_string();
            let out = control_plane
                .basaltctl(&config, &["certs", "-o", "json", "-e", &endpoint])
                .await;
            assert!(out.status.success(), "certs -e {endpoint}: {}", text(&out));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["nodes"][0]["node"], endpoint.as_str(), "{report:#}");
        }
        worker.shutdown().await;
        control_plane.shutdown().await;
    })
    .await;
}

/// An admin client config for the node with `ttl`.
async fn client_config(node: &Node, name: &str, ttl: &str) -> PathBuf {
    node.gen_client_config(name, "os:admin", ttl, &[node.apid_addr()])
        .await
}
