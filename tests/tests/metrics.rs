//! `machine.metrics` end to end: machined writes the addresses into apid's and trustd's configs,
//! and both real processes serve Prometheus text that moves with real calls.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use basalt_api::machine::RebootRequest;
use basalt_e2e::{Cert, Node, within_test_deadline};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// One scrape; `None` while nothing listens yet (the endpoint comes up with its daemon).
async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    Some(body.to_owned())
}

fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("numeric sample"))
}

/// Scrapes until `series` has at least `min`, for at most 10 s (a call is counted when its
/// response has ended, just after the client sees it).
async fn scrape_until(addr: SocketAddr, series: &str, min: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(body) = scrape(addr).await
            && value(&body, series).is_some_and(|v| v >= min)
        {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {min} at {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
