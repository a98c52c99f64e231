//! apid's side of revocation, in process: the deny-list file is watched, a listed certificate
//! is refused at the handshake (counted as `revoked`), its open streams are closed, a bad file
//! keeps the previous list, a file apid cannot parse at startup stops it, and a call another
//! apid forwards for a caller revoked here is refused.

mod support;

use std::path::Path;
use std::time::Duration;

use apid::{HandshakeFailure, Server};
use basalt_api::machine::ReadRequest;
use support::{Apid, Pki, version, with_metadata, within_deadline};

/// The most a revoked client's open stream may take to end here (the promise is one second).
const PATIENCE: Duration = Duration::from_secs(5);

fn write_list(path: &Path, serials: &[&str]) {
    let entries: Vec<String> = serials
        .iter()
        .map(|serial| format!(r#"{{"serial": "{serial}", "reason": "test"}}"#))
        .collect();
    let json = format!(r#"{{"revoked": [{}]}}"#, entries.join(","));
    // Atomically, as machined writes it.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).expect("write list");
    std::fs::rename(&tmp, path).expect("rename list");
}

fn serial(cert_pem: &str) -> String {
    basalt_pki::Identity::from_pem(cert_pem)
        .expect("identity")
        .serial
}

#[tokio::test]
async fn a_listed_certificate_is_refused_and_its_stream_closed_while_others_are_served() {
    within_deadline(async {
        let pki = Pki::new();
        let revoked_cert = pki.client(&["os:admin"]);
        let other_cert = pki.client(&["os:operator"]);
        let list = support::short_tempdir();
        let list_path = list.path().join("revoked.json");
        write_list(&list_path, &[]);
        let path = list_path.clone();
        let apid = Apid::start_with(&pki, move |config| config.revocation = Some(path)).await;
        let backend = apid.backend().await;

        let mut doomed = apid.machine(&pki, &revoked_cert);
        let mut stream = doomed
            .read(ReadRequest {
                path: "watch".to_owned(),
            })
            .await
            .expect("stream opens")
            .into_inner();
        stream.message().await.expect("first message");
        let mut other = apid.machine(&pki, &other_cert);
        version(&mut other).await.expect("served");

        write_list(&list_path, &[&serial(&revoked_cert.cert)]);

        // The open stream ends without the client doing anything.
        let ended = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the revoked certificate's stream is closed");
        assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");

        // New connections with it fail at the handshake, counted as `revoked`.
        let mut again = apid.machine(&pki, &revoked_cert);
        version(&mut again)
            .await
            .expect_err("a revoked certificate");
        apid.expect_failed(HandshakeFailure::Revoked, 1).await;

        // The other certificate's open connection and new ones are served.
        version(&mut other)
            .await
            .expect("the other connection is kept");
        version(&mut apid.machine(&pki, &other_cert))
            .await
            .expect("a new connection of another certificate");

        // A file that does not parse keeps the previous list.
        std::fs::write(&list_path, "{ not json").expect("corrupt the list");
        tokio::time::sleep(Duration::from_millis(300)).await;
        version(&mut apid.machine(&pki, &revoked_cert))
            .await
            .expect_err("still revoked after a bad reload");
        version(&mut apid.machine(&pki, &other_cert))
            .await
            .expect("still serving");

        // An empty list lets the certificate back in.
        write_list(&list_path, &[]);
        let mut back = false;
        for _ in 0..50 {
            if version(&mut apid.machine(&pki, &revoked_cert))
                .await
                .is_ok()
            {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "an unrevoked certificate is accepted again");

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_list_apid_cannot_parse_at_startup_stops_it() {
    within_deadline(async {
        let pki = Pki::new();
        let dir = support::short_tempdir();
        let list_path = dir.path().join("revoked.json");
        std::fs::write(&list_path, "revoked: [").expect("write");
        let apid = Apid::start(&pki).await;
        let mut config = apid.config.clone();
        config.revocation = Some(list_path);
        let err = Server::bind(config).await.expect_err("bad list at startup");
        assert!(matches!(err, apid::Error::LoadRevocation(_)), "{err:?}");
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_forwarded_call_of_a_caller_revoked_here_is_unauthenticated() {
    within_deadline(async {
        let pki = Pki::new();
        let list = support::short_tempdir();
        let list_path = list.path().join("revoked.json");
        write_list(&list_path, &["2a"]);
        let path = list_path.clone();
        let apid = Apid::start_with(&pki, move |config| config.revocation = Some(path)).await;
        let backend = apid.backend().await;
        // Another node's apid, forwarding calls of two callers.
        let mut forwarder = apid.machine(&pki, &pki.client(&["os:impersonator"]));

        let revoked = [
            ("talos-role", "os:admin"),
            (
                "basalt-caller",
                "cn=alice;serial=2a;fp=00;roles=os:admin;addr=10.0.0.1:1",
            ),
        ];
        let err = forwarder
            .version(with_metadata((), &revoked))
            .await
            .expect_err("the original caller is revoked here");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("revoked"), "{err:?}");

        let other = [
            ("talos-role", "os:admin"),
            (
                "basalt-caller",
                "cn=bob;serial=2b;fp=00;roles=os:admin;addr=10.0.0.1:2",
            ),
        ];
        forwarder
            .version(with_metadata((), &other))
            .await
            .expect("another caller through the same apid is served");

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}
