//! `machine.metrics` end to end: machined writes the addresses into apid's and trustd's configs,
//! and both real processes serve Prometheus text that moves with real calls.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use basalt_api::machine::RebootRequest;
use basalt_e2e::metrics::{scrape_until, value};
use basalt_e2e::{Cert, Node, within_test_deadline};
use tonic::Code;

#[tokio::test]
async fn machine_metrics_turn_on_apid_and_trustd_endpoints() {
    within_test_deadline(async {
        let node = Node::builder().metrics().start().await;
        let (apid, trustd) = node.metrics_addrs().expect("metrics addresses");

        let mut reader = node.client(Cert::Reader).await;
        reader.version(()).await.expect("reader may call Version");
        let denied = reader
            .reboot(RebootRequest::default())
            .await
            .expect_err("reader may not reboot");
        assert_eq!(denied.code(), Code::PermissionDenied);

        let body = scrape_until(
            apid,
            "basalt_apid_authz_denials_total{method=\"/machine.MachineService/Reboot\"}",
            1.0,
        )
        .await;
        // The harness's readiness probe and ours: at least two Versions answered OK.
        let versions = value(
            &body,
            "basalt_apid_requests_total{method=\"/machine.MachineService/Version\",code=\"OK\"}",
        )
        .unwrap_or(0.0);
        assert!(versions >= 2.0, "{body}");
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
        for cert in ["ca", "server", "client"] {
            let series = format!("basalt_cert_not_after_seconds{{cert=\"{cert}\"}}");
            let not_after = value(&body, &series).unwrap_or_else(|| panic!("{series}\n{body}"));
            assert!(not_after > now, "{series} = {not_after}");
        }

        let body = scrape_until(trustd, "basalt_trustd_issued_total", 0.0).await;
        assert!(
            value(&body, "basalt_cert_not_after_seconds{cert=\"ca\"}").is_some(),
            "{body}"
        );
        node.shutdown().await;
    })
    .await;
}
