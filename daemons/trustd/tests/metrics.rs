//! trustd's Prometheus endpoint: off by default; when on, issuances, token failures and rate
//! limiting are counted, scraped over plain HTTP/1.1 as a collector would.

mod support;

use std::net::SocketAddr;

use basalt_pki::KeyAlgorithm;
use support::{Pki, TOKEN, Trustd, certificate, within_deadline, worker_csr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to metrics");
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
    body.to_owned()
}

/// The value of the sample written exactly as `series`, or a panic naming it.
fn value(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .parse()
        .expect("integer sample")
}

#[tokio::test]
async fn issuances_token_failures_and_rate_limits_are_counted() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start_with(&pki, |config| {
            config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
            config.rate_limit.per_peer_per_minute = 4;
        })
        .await;
        let metrics = trustd.metrics.expect("metrics endpoint bound");
        let csr = worker_csr("worker-1", &["worker-1"], KeyAlgorithm::Ed25519);
        let mut client = trustd.client();

        certificate(&mut client, csr.clone(), Some(TOKEN))
            .await
            .expect("issued");
        let bad = certificate(&mut client, csr.clone(), Some("abcdef.0123456789abcdeX"))
            .await
            .expect_err("wrong token");
        assert_eq!(bad.code(), Code::Unauthenticated);
        let missing = certificate(&mut client, csr.clone(), None)
            .await
            .expect_err("no token");
        assert_eq!(missing.code(), Code::Unauthenticated);
        certificate(&mut client, csr.clone(), Some(TOKEN))
            .await
            .expect("issued");
        // The fifth call in the minute is over the budget of 4.
        let limited = certificate(&mut client, csr.clone(), Some(TOKEN))
            .await
            .expect_err("rate limited");
        assert_eq!(limited.code(), Code::ResourceExhausted);

        let body = scrape(metrics).await;
        assert_eq!(value(&body, "basalt_trustd_issued_total"), 2);
        assert_eq!(value(&body, "basalt_trustd_token_failures_total"), 2);
        assert_eq!(value(&body, "basalt_trustd_rate_limited_total"), 1);
        assert_eq!(value(&body, "basalt_trustd_locked_out_total"), 0);
        assert_eq!(
            value(
                &body,
                "basalt_trustd_handshake_failures_total{reason=\"not_tls\"}"
            ),
            0
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let ca: i64 = value(&body, "basalt_cert_not_after_seconds{cert=\"ca\"}") as i64;
        assert!(ca > now, "{body}");
        value(&body, "basalt_cert_not_after_seconds{cert=\"server\"}");
        assert_eq!(trustd.journal().len(), 2, "issued = journal lines");

        // Plaintext garbage on the TLS port is a handshake failure the endpoint reports.
        let mut raw = TcpStream::connect(trustd.addr).await.expect("connect");
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink).await;
        support::eventually("not_tls counted", || {
            trustd.failed(trustd::HandshakeFailure::NotTls) == 1
        })
        .await;
        let body = scrape(metrics).await;
        assert_eq!(
            value(
                &body,
                "basalt_trustd_handshake_failures_total{reason=\"not_tls\"}"
            ),
            1
        );
        trustd.stop().await;
    })
    .await;
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    within_deadline(async {
        let pki = Pki::new();
        let trustd = Trustd::start(&pki).await;
        assert_eq!(trustd.metrics, None);
        trustd.stop().await;
    })
    .await;
}
