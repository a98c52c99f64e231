//! Per-client limits: request rate and open calls per certificate, connections per source
//! address. Each refusal is a ResourceExhausted (or a closed connection) for the client over
//! its limit only; everyone else keeps being served.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use basalt_api::machine::ReadRequest;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_config::ApidLimits;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use support::{Apid, CertKey, Pki, machine_client, tls_connector, version, within_deadline};
use tokio::net::TcpSocket;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

fn limits(adjust: impl FnOnce(&mut ApidLimits)) -> ApidLimits {
    let mut limits = ApidLimits::default();
    adjust(&mut limits);
    limits
}

/// A channel to apid whose TCP connection comes from `source` (any 127.0.0.0/8 address is
/// local on Linux), so that apid sees another peer address.
fn channel_from(source: IpAddr, apid: SocketAddr, pki: &Pki, client: &CertKey) -> Channel {
    let connector = tls_connector(pki.ca_pem(), Some(client));
    Endpoint::from_shared(format!("http://{apid}"))
        .expect("endpoint")
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let tcp = socket.connect(apid).await?;
                let tls = connector
                    .connect(ServerName::IpAddress(apid.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

#[tokio::test]
async fn a_client_above_its_rate_gets_resource_exhausted_and_another_is_unaffected() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.limits = limits(|l| {
                l.requests_per_second = 1;
                l.burst = 3;
            });
        })
        .await;
        let backend = apid.backend().await;
        let mut greedy = apid.machine(&pki, &pki.client(&["os:admin"]));

        // The burst of 3 passes; at one call per second, 10 calls in a row cannot all pass.
        let mut refused = None;
        for _ in 0..10 {
            if let Err(status) = version(&mut greedy).await {
                refused = Some(status);
                break;
            }
        }
        let status = refused.expect("a call above the rate is refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("rate limit") && status.message().contains("retry in"),
            "the message names the limit and when to retry: {status:?}"
        );

        // Another certificate has its own budget.
        let mut other = apid.machine(&pki, &pki.client(&["os:admin"]));
        version(&mut other).await.expect("another client is served");
        assert!(apid.limits.snapshot().rate_limited >= 1);

        backend.stop().await;
        let records = apid.stop().await;
        assert!(
            records
                .iter()
                .any(|r| r["code"] == "RESOURCE_EXHAUSTED" || r["code"] == "ResourceExhausted"),
            "the refusal is audited: {records:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn open_streams_above_the_in_flight_limit_get_resource_exhausted_until_one_ends() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.limits = limits(|l| l.max_in_flight = 2);
        })
        .await;
        let backend = apid.backend().await;
        let cert = pki.client(&["os:admin"]);
        let mut client = apid.machine(&pki, &cert);

        // Two streams that stay open (one message, then nothing).
        let mut streams = Vec::new();
        for _ in 0..2 {
            let mut stream = client
                .read(ReadRequest {
                    path: "watch".to_owned(),
                })
                .await
                .expect("stream opens")
                .into_inner();
            stream.message().await.expect("first message");
            streams.push(stream);
        }

        // A third call, even on another connection with the same certificate, is refused.
        let mut second_connection = apid.machine(&pki, &cert);
        let status = version(&mut second_connection)
            .await
            .expect_err("third open call");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("in flight"), "{status:?}");

        // Another certificate is not affected.
        let mut other = apid.machine(&pki, &pki.client(&["os:reader"]));
        version(&mut other).await.expect("another client is served");

        // Ending one stream frees its slot.
        drop(streams.pop());
        let mut served = false;
        for _ in 0..50 {
            if version(&mut client).await.is_ok() {
                served = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(served, "a slot is freed when a stream ends");
        assert!(apid.limits.snapshot().in_flight_limited >= 1);

        drop(streams);
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn connections_above_the_per_address_limit_are_closed_and_another_address_is_not() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.limits = limits(|l| l.max_connections_per_address = 2);
        })
        .await;
        let backend = apid.backend().await;
        let cert = pki.client(&["os:admin"]);
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);

        // Two connections from 127.0.0.1, kept open.
        let mut open: Vec<MachineServiceClient<Channel>> = Vec::new();
        for _ in 0..2 {
            let mut client = machine_client(channel_from(local, apid.addr, &pki, &cert));
            version(&mut client).await.expect("within the limit");
            open.push(client);
        }

        // A third from the same address is closed right after the accept, before any TLS.
        let mut third = machine_client(channel_from(local, apid.addr, &pki, &cert));
        let status = version(&mut third).await.expect_err("third connection");
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{status:?}"
        );
        assert_eq!(apid.limits.snapshot().connections_refused, 1);
        let handshakes = apid.stats.snapshot();
        assert_eq!(handshakes.refused, 1, "{handshakes:?}");
        assert_eq!(handshakes.total_failed(), 0, "no handshake was spent on it");

        // Another address has its own count.
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let mut elsewhere = machine_client(channel_from(other, apid.addr, &pki, &cert));
        version(&mut elsewhere)
            .await
            .expect("a connection from 127.0.0.2 is served");

        // The open connections were never disturbed.
        for client in &mut open {
            version(client).await.expect("still served");
        }

        drop(open);
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}
