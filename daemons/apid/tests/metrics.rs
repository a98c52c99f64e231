//! apid's Prometheus endpoint: off by default, and when on, the counters move with real calls,
//! denials and failed handshakes, scraped over plain HTTP/1.1 as a collector would.

mod support;

use apid::HandshakeFailure;
use basalt_api::machine::RebootRequest;
use basalt_pki::{CaOptions, CertificateAuthority};
use support::{
    Apid, Pki, client_cert, http_exchange, machine_client, sample_value, scrape_metrics, version,
    within_deadline,
};

#[tokio::test]
async fn calls_denials_and_bad_handshakes_are_counted() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
        })
        .await;
        let metrics = apid.metrics.expect("metrics endpoint bound");
        let backend = apid.backend().await;

        let mut reader = apid.machine(&pki, &pki.client(&["os:reader"]));
        version(&mut reader).await.expect("reader may call Version");
        let denied = reader
            .reboot(RebootRequest::default())
            .await
            .expect_err("reader may not reboot");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);

        let other = CertificateAuthority::generate(&CaOptions::talos_os()).expect("other ca");
        let mut stranger =
            machine_client(apid.channel(&pki, Some(&client_cert(&other, &["os:admin"]))));
        version(&mut stranger)
            .await
            .expect_err("a foreign certificate is refused");
        apid.expect_failed(HandshakeFailure::UnknownCa, 1).await;

        // The audit record (and with it the count) is finished when the response ends, just
        // after the client sees it: poll briefly.
        let version_ok =
            "basalt_apid_requests_total{method=\"/machine.MachineService/Version\",code=\"OK\"}";
        let mut body = scrape_metrics(metrics).await;
        for _ in 0..100 {
            if sample_value(&body, version_ok) >= 1.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            body = scrape_metrics(metrics).await;
        }
        assert_eq!(sample_value(&body, version_ok), 1.0, "{body}");
        assert_eq!(
            sample_value(
                &body,
                "basalt_apid_requests_total{method=\"/machine.MachineService/Reboot\",\
                 code=\"PERMISSION_DENIED\"}"
            ),
            1.0,
            "{body}"
        );
        assert_eq!(
            sample_value(
                &body,
                "basalt_apid_authz_denials_total{method=\"/machine.MachineService/Reboot\"}"
            ),
            1.0,
            "{body}"
        );
        assert_eq!(
            sample_value(
                &body,
                "basalt_apid_handshake_failures_total{reason=\"unknown_ca\"}"
            ),
            1.0,
            "{body}"
        );
        assert_eq!(
            sample_value(
                &body,
                "basalt_apid_handshake_failures_total{reason=\"expired\"}"
            ),
            0.0
        );
        assert_eq!(sample_value(&body, "basalt_apid_audit_dropped_total"), 0.0);
        // The allowed Version is timed, the denied Reboot is not.
        let count = sample_value(
            &body,
            "basalt_apid_call_duration_seconds_count{target=\"local\"}",
        );
        assert_eq!(count, 1.0, "{body}");
        assert_eq!(
            sample_value(
                &body,
                "basalt_apid_call_duration_seconds_bucket{target=\"local\",le=\"+Inf\"}"
            ),
            count,
            "{body}"
        );
        assert!(
            sample_value(
                &body,
                "basalt_apid_call_duration_seconds_sum{target=\"local\"}"
            ) > 0.0,
            "{body}"
        );
        assert!(
            body.contains("# TYPE basalt_apid_call_duration_seconds histogram"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE basalt_apid_requests_total counter"),
            "{body}"
        );

        // Expiry gauges: the test server certificate and CA are valid now and later.
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
        let server = sample_value(&body, "basalt_cert_not_after_seconds{cert=\"server\"}");
        let ca = sample_value(&body, "basalt_cert_not_after_seconds{cert=\"ca\"}");
        assert!(
            server > now && ca > server,
            "server {server}, ca {ca}, now {now}"
        );
        // No forwarding credentials configured: no client sample.
        assert!(!body.contains("cert=\"client\""), "{body}");

        // A path no one declared is counted under `unknown`, never under its own label.
        let mut channel = apid.channel(&pki, Some(&pki.client(&["os:admin"])));
        let _ = unknown_method(&mut channel).await;
        let mut body = scrape_metrics(metrics).await;
        for _ in 0..100 {
            if body.contains("method=\"unknown\"") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            body = scrape_metrics(metrics).await;
        }
        assert!(body.contains("method=\"unknown\""), "{body}");
        assert!(!body.contains("/attacker.Chosen"), "{body}");

        // Other paths and methods get plain HTTP errors, and the endpoint keeps serving.
        let not_found = http_exchange(metrics, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
        let post = http_exchange(metrics, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let too_large = http_exchange(metrics, &huge).await;
        assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");
        scrape_metrics(metrics).await;

        // And the API still answers.
        version(&mut reader)
            .await
            .expect("Version after the scrapes");
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

/// Calls `/attacker.Chosen/Path` (admin, so the call passes authz and machined answers it).
async fn unknown_method(channel: &mut tonic::transport::Channel) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/attacker.Chosen/Path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(tonic::Request::new(()), path, codec)
        .await
        .map(drop)
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        assert_eq!(apid.metrics, None);
        assert_eq!(apid.config.metrics, None);
        apid.stop().await;
    })
    .await;
}
