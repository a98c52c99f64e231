//! basalt-client against a real TLS 1.3 server (apid's rustls config from basalt-pki, serving
//! the gRPC health service): the happy path, node metadata on the wire, and each kind of
//! connection failure told apart.

// Test helpers unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_authz::{Role, RoleSet};
use basalt_client::{ApidEndpoint, Client, ConnectOptions, Credentials, Error, Target};
use basalt_pki::{
    CaOptions, CertificateAuthority, ClientCertRequest, ServerCertRequest, SubjectAltName,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const HOUR: Duration = Duration::from_secs(3600);

struct Server {
    addr: SocketAddr,
    ca: CertificateAuthority,
    /// `node` metadata of every request the server saw (`None` when absent).
    seen_nodes: Arc<Mutex<Vec<Option<String>>>>,
}

/// A TLS server like apid (same rustls config) with the health service, on 127.0.0.1:0.
async fn server() -> Server {
    basalt_pki::install_crypto_provider();
    let ca = CertificateAuthority::generate(&CaOptions::talos_os()).unwrap();
    let cert = ca
        .issue_server(&ServerCertRequest {
            common_name: None,
            sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
            ttl: HOUR,
        })
        .unwrap();
    let config = basalt_pki::server_config_for_apid(
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // Refused handshakes are simply dropped, as apid does after logging them.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                }
            });
        }
    });

    let seen_nodes = Arc::new(Mutex::new(Vec::new()));
    let record = {
        let seen = Arc::clone(&seen_nodes);
        move |request: Request<()>| -> Result<Request<()>, Status> {
            let node = request
                .metadata()
                .get("node")
                .map(|value| value.to_str().unwrap().to_owned());
            seen.lock().unwrap().push(node);
            Ok(request)
        }
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(record))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
    );
    Server {
        addr,
        ca,
        seen_nodes,
    }
}

fn credentials(ca: &CertificateAuthority, trusted_ca_pem: &str) -> Credentials {
    let issued = ca
        .issue_client(&ClientCertRequest {
            common_name: Some("admin".to_owned()),
            roles: RoleSet::from([Role::Admin]),
            ttl: HOUR,
        })
        .unwrap();
    Credentials::from_pem(trusted_ca_pem, issued.cert_pem, issued.key_pem).unwrap()
}

fn target(endpoint: &str, credentials: Credentials) -> Target {
    Target::new(vec![endpoint.parse::<ApidEndpoint>().unwrap()], credentials).unwrap()
}

fn options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Some(Duration::from_secs(10)),
    }
}

async fn check(client: &Client) -> Vec<basalt_client::NodeResult<()>> {
    client
        .each_node(HealthCheckRequest::default(), |client, request| async move {
            HealthClient::new(client.channel()).check(request).await
        })
        .await
        .into_iter()
        .map(|result| result.map(|_| ()))
        .collect()
}

#[tokio::test]
async fn calls_go_to_each_node_with_node_metadata() {
    let server = server().await;
    let creds = credentials(&server.ca, server.ca.cert_pem());
    let client = Client::connect(&target(&server.addr.to_string(), creds), &options())
        .await
        .unwrap();

    // No nodes: one call, named after the endpoint, without routing metadata.
    let results = check(&client).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].node, server.addr.to_string());
    assert!(results[0].result.is_ok(), "{:?}", results[0].result);

    // Two nodes: one call each, in order, each with `node`.
    let client = client.with_nodes(vec!["10.0.0.2".into(), "node-3".into()]);
    let results = check(&client).await;
    let names: Vec<&str> = results.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(names, ["10.0.0.2", "node-3"]);
    assert!(results.iter().all(|r| r.result.is_ok()));

    let mut seen = server.seen_nodes.lock().unwrap().clone();
    seen[1..].sort();
    assert_eq!(
        seen,
        [None, Some("10.0.0.2".to_owned()), Some("node-3".to_owned())]
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let server = server().await;
    // Bind and drop to get a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let creds = credentials(&server.ca, server.ca.cert_pem());
    let err = Client::connect(&target(&closed.to_string(), creds), &options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test]
async fn a_server_certificate_without_the_endpoint_san_is_not_trusted() {
    let server = server().await;
    let creds = credentials(&server.ca, server.ca.cert_pem());
    // Same server, dialed by a name its certificate does not carry.
    let endpoint = format!("localhost:{}", server.addr.port());
    let err = Client::connect(&target(&endpoint, creds), &options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ServerCertificate { .. }), "{err:?}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    let server = server().await;
    let other = CertificateAuthority::generate(&CaOptions::talos_os()).unwrap();
    let creds = credentials(&other, server.ca.cert_pem());
    let target = target(&server.addr.to_string(), creds);
    // In TLS 1.3 the server judges the client certificate after the client's side of the
    // handshake is done, so the refusal shows at connect or at the first call.
    let message = match Client::connect(&target, &options()).await {
        Err(err) => {
            assert!(matches!(err, Error::HandshakeRefused { .. }), "{err:?}");
            err.to_string()
        }
        Ok(client) => {
            let status = check(&client).await.remove(0).result.unwrap_err();
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            status.message().to_owned()
        }
    };
    assert!(message.contains("refused by the server"), "{message}");
}

#[tokio::test]
async fn an_expired_client_certificate_is_caught_before_dialing() {
    let server = server().await;
    let creds = credentials(&server.ca, server.ca.cert_pem());
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let err = creds.check_validity(later).unwrap_err();
    assert!(
        matches!(err, Error::ClientCertificateExpired { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("generate a new one with basaltctl gen client-config"),
        "{err}"
    );
}
