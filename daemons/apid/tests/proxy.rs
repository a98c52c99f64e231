//! The transparent proxy to machined: streaming, large messages and the 32 MiB limit,
//! deadlines, cancellation, machined down and back, and client keepalive pings.

mod support;

use std::time::{Duration, Instant};

use basalt_api::machine::{ApplyConfigurationRequest, ReadRequest};
use support::{Apid, Backend, Pki, seen_timeout, version, within_deadline};
use tonic::{Code, Request};

const TEN_MB: usize = 10 * 1000 * 1000;
const OVER_LIMIT: usize = 32 * 1024 * 1024 + 1;

fn read(path: &str) -> ReadRequest {
    ReadRequest {
        path: path.to_owned(),
    }
}

#[tokio::test]
async fn a_server_stream_passes_through_in_order() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        let mut stream = client
            .read(read("count:50"))
            .await
            .expect("read")
            .into_inner();
        let mut got = Vec::new();
        while let Some(message) = stream.message().await.expect("message") {
            got.push(String::from_utf8(message.bytes).expect("utf8"));
        }
        let expected: Vec<String> = (0..50).map(|i| format!("chunk-{i}")).collect();
        assert_eq!(got, expected);

        // A status from machined comes back unchanged.
        let err = client
            .read(read("nope"))
            .await
            .expect_err("backend refuses the path");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "no such test path nope");
        let err = client
            .memory(())
            .await
            .expect_err("not implemented by the backend");
        assert_eq!(err.code(), Code::Unimplemented);

        backend.stop().await;
        let audit = apid.stop().await;
        let codes: Vec<&str> = audit.iter().map(|r| r["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["OK", "NOT_FOUND", "UNIMPLEMENTED"], "{audit:?}");
    })
    .await;
}

#[tokio::test]
async fn a_client_stream_passes_through() {
    use basalt_api::basalt::v1::diagnostics_service_client::DiagnosticsServiceClient;
    use basalt_api::common::Data;

    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let reader = pki.client(&["os:reader"]);
        let mut client = DiagnosticsServiceClient::new(apid.channel(&pki, Some(&reader)));

        let messages = (0..100).map(|i| Data {
            metadata: None,
            bytes: vec![0; i],
        });
        let reply = client
            .collect(tokio_stream::iter(messages))
            .await
            .expect("collect");
        assert_eq!(reply.get_ref().messages, 100);
        assert_eq!(reply.get_ref().bytes, (0..100u64).sum::<u64>());
        assert_eq!(support::seen_roles(reply.metadata()), ["os:reader"]);

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_stream_that_trickles_and_one_that_outruns_machined_pass_through() {
    use basalt_api::basalt::v1::diagnostics_service_client::DiagnosticsServiceClient;
    use basalt_api::common::Data;
    use tokio_stream::StreamExt as _;

    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let reader = pki.client(&["os:reader"]);
        let mut client = DiagnosticsServiceClient::new(apid.channel(&pki, Some(&reader)))
            .max_encoding_message_size(64 << 20);

        // Messages that arrive after the call was forwarded: apid keeps passing them on.
        let trickle = tokio_stream::iter((0..5).map(|i| Data {
            metadata: None,
            bytes: vec![1; i],
        }))
        .throttle(Duration::from_millis(20));
        let reply = client.collect(trickle).await.expect("trickled collect");
        assert_eq!(reply.get_ref().messages, 5);
        assert_eq!(reply.get_ref().bytes, 10);

        // Far more than the HTTP/2 windows between client, apid and machined: the upload
        // only completes if apid follows machined's flow control.
        let flood = tokio_stream::iter((0..40).map(|_| Data {
            metadata: None,
            bytes: vec![2; 1 << 20],
        }));
        let reply = client.collect(flood).await.expect("flooding collect");
        assert_eq!(reply.get_ref().messages, 40);
        assert_eq!(reply.get_ref().bytes, 40 << 20);

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn ten_megabyte_messages_pass_both_ways() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        let reply = client
            .apply_configuration(ApplyConfigurationRequest {
                data: vec![7; TEN_MB],
                ..Default::default()
            })
            .await
            .expect("10 MB request");
        assert_eq!(
            reply.get_ref().messages[0].warnings,
            [format!("received {TEN_MB} bytes")]
        );

        let mut stream = client
            .read(read(&format!("big:{TEN_MB}")))
            .await
            .expect("read")
            .into_inner();
        let message = stream
            .message()
            .await
            .expect("message")
            .expect("one message");
        assert_eq!(message.bytes.len(), TEN_MB);
        assert!(stream.message().await.expect("end").is_none());

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn messages_over_32_mib_are_refused_both_ways() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        let err = client
            .apply_configuration(ApplyConfigurationRequest {
                data: vec![7; OVER_LIMIT],
                ..Default::default()
            })
            .await
            .expect_err("request over the limit");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().starts_with("request message of "),
            "{}",
            err.message()
        );

        let mut stream = client
            .read(read(&format!("big:{OVER_LIMIT}")))
            .await
            .expect("headers arrive")
            .into_inner();
        let err = stream.message().await.expect_err("response over the limit");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().starts_with("response message of "),
            "{}",
            err.message()
        );

        // The connection and apid are fine afterwards.
        version(&mut client).await.expect("still serving");

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_deadline_is_forwarded_and_enforced() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        let mut request = Request::new(read("slow"));
        request.set_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let response = client.read(request).await.expect("headers arrive");
        assert!(
            !seen_timeout(response.metadata()).is_empty(),
            "grpc-timeout forwarded"
        );
        let mut stream = response.into_inner();
        stream
            .message()
            .await
            .expect("first")
            .expect("first message");
        let err = stream.message().await.expect_err("deadline");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dropping_the_client_stream_cancels_the_upstream_call() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let mut backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        let mut stream = client.read(read("watch")).await.expect("read").into_inner();
        stream
            .message()
            .await
            .expect("first")
            .expect("first message");
        drop(stream);
        backend.cancelled().await;

        backend.stop().await;
        let audit = apid.stop().await;
        assert_eq!(audit[0]["code"], "CANCELLED", "{audit:?}");
    })
    .await;
}

#[tokio::test]
async fn machined_down_is_unavailable_at_once_and_recovery_needs_no_restart() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        let started = Instant::now();
        let err = version(&mut client).await.expect_err("no machined yet");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let expected = format!("machined is not reachable at {}", apid.socket.display());
        assert!(err.message().starts_with(&expected), "{}", err.message());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        let backend = Backend::start(&apid.socket).await;
        version(&mut client).await.expect("machined is back");

        // machined restarts: the next call after it is back works again.
        backend.stop().await;
        let err = version(&mut client).await.expect_err("machined stopped");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let backend = Backend::start(&apid.socket).await;
        version(&mut client).await.expect("machined is back again");

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn client_keepalive_pings_are_tolerated() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let client_cert = pki.client(&["os:admin"]);
        let connector = support::tls_connector(pki.ca_pem(), Some(&client_cert));
        let addr = apid.addr;
        // talosctl pings every 10 s; ping far more often to make any penalty show.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .http2_keep_alive_interval(Duration::from_millis(50))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let connector = connector.clone();
                async move {
                    let tls = support::tls_connect(addr, &connector).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .expect("connect");
        let mut client = support::machine_client(channel);
        version(&mut client).await.expect("first call");
        // Deliberately let time pass with the connection idle and pinging.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        version(&mut client).await.expect("after many pings");
        assert_eq!(
            apid.stats.snapshot().completed,
            1,
            "the connection was never replaced"
        );

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}
