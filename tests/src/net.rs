//! Client-side connections to apid: gRPC channels over mTLS, and raw probes that show what
//! happens at the TLS and HTTP/2 level.
//!
//! The channel is built here (tokio-rustls with `basalt_pki::tls::client_config`, handed to
//! tonic through `Endpoint::connect_with_connector`) rather than with basalt-client, so the
//! e2e tests exercise the daemons with code that shares nothing with the server side beyond
//! the rustls config builder.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// gRPC message size limit the clients use in both directions (Talos: 32 MiB).
pub const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// How long a probe waits for the server to answer or close.
pub const PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty HTTP/2 SETTINGS frame: length 0, type 4, flags 0, stream 0.
pub const H2_EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A TLS client config for apid: the node's CA as trust anchor and, optionally, a client
/// certificate. TLS 1.3 and ALPN `h2`, as every basalt client.
pub fn tls_config(ca_pem: &str, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    basalt_pki::install_crypto_provider();
    let identity = identity.map(|(cert, key)| (cert.as_bytes(), key.as_bytes()));
    Arc::new(
        basalt_pki::tls::client_config(ca_pem.as_bytes(), identity)
            .expect("build the client TLS config"),
    )
}

/// Opens a TCP connection to `addr` and runs the TLS handshake as a client, verifying the
/// server certificate against the IP address.
pub async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(tls)
        .connect(ServerName::from(addr.ip()), tcp)
        .await
}

/// Connects a tonic channel to apid at `addr` over mTLS (one HTTP/2 connection).
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        async move { tls_connect(addr, tls).await.map(TokioIo::new) }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect_timeout(PROBE_PATIENCE)
        .connect_with_connector(connector)
        .await
}

/// Connects a plaintext HTTP/2 channel to machined's unix socket, as apid does.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    });
    // The authority is ignored: the connector decides where the connection goes.
    Endpoint::from_static("http://machined.invalid")
        .connect_timeout(PROBE_PATIENCE)
        .connect_with_connector(connector)
        .await
}

/// What a server did with a connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered the HTTP/2 preface with its SETTINGS frame: the connection is usable.
    Accepted,
    /// The connection failed before any HTTP/2 frame came back; the text says how (for TLS, the
    /// alert apid sent, e.g. `received fatal alert: UnknownCA`).
    Refused(String),
}

impl Outcome {
    /// The failure text, or a panic naming `what` if the connection was accepted.
    pub fn refusal(self, what: &str) -> String {
        match self {
            Outcome::Refused(reason) => reason,
            Outcome::Accepted => panic!("{what}: the server accepted the connection"),
        }
    }
}

/// Probes a server that was just told to refuse a certificate (a revocation it picks up
/// within its poll interval) every 50 ms until it refuses, for up to `patience`; the last
/// outcome, so the caller can name what it expected with [`Outcome::refusal`].
///
/// A connection that is closed without an alert is probed again: the list changed between
/// that handshake's check and the connection's registration, and apid closes such a
/// connection silently. The next handshake sees the list and gets the alert.
pub async fn refused_within(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    patience: Duration,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let outcome = probe_tls(addr, Arc::clone(&tls)).await;
        let silent_close = outcome == Outcome::Refused("connection closed".to_owned());
        let settled = matches!(outcome, Outcome::Refused(_)) && !silent_close;
        if settled || tokio::time::Instant::now() >= deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a TLS handshake with `tls`, then sends the HTTP/2 preface and reads the first frame
/// header.
///
/// With TLS 1.3 the server checks the client certificate *after* the client considers the
/// handshake done, so a refused certificate shows up as an alert on the first read, not as a
/// failed `connect`; reading the server's SETTINGS frame is what proves acceptance.
pub async fn probe_tls(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Outcome {
    let attempt = async {
        let mut stream = tls_connect(addr, tls).await?;
        probe_h2(&mut stream).await
    };
    match tokio::time::timeout(PROBE_PATIENCE, attempt).await {
        Ok(outcome) => outcome.unwrap_or_else(|err| Outcome::Refused(err.to_string())),
        Err(_) => {
            panic!("apid neither accepted nor refused a TLS connection in {PROBE_PATIENCE:?}")
        }
    }
}

/// Sends the HTTP/2 preface in plaintext over TCP and reads what comes back, until the server
/// closes the connection. Returns the bytes received.
pub async fn plaintext_h2(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(H2_PREFACE).await?;
    tcp.write_all(&H2_EMPTY_SETTINGS).await?;
    tcp.flush().await?;
    let mut received = Vec::new();
    let read = tokio::time::timeout(PROBE_PATIENCE, async {
        let mut buf = [0u8; 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                // A reset is also a way of closing.
                Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(err) => return Err(err),
            }
        }
    })
    .await;
    match read {
        Ok(result) => result.map(|()| received),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the server kept a plaintext connection open for {PROBE_PATIENCE:?} after \
                 sending {received:?}"
            ),
        )),
    }
}

/// Whether `bytes` starts with an HTTP/2 SETTINGS frame header.
pub fn starts_with_h2_settings(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[3] == 4 && bytes[5..9] == [0, 0, 0, 0]
}

async fn probe_h2<S>(stream: &mut S) -> io::Result<Outcome>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The server may already have sent its alert and closed, making the write fail with a
    // broken pipe; the alert is still waiting to be read, and it is the better explanation.
    let mut preface = H2_PREFACE.to_vec();
    preface.extend_from_slice(&H2_EMPTY_SETTINGS);
    let write = async {
        stream.write_all(&preface).await?;
        stream.flush().await
    }
    .await;
    let mut header = [0u8; 9];
    let read = stream.read_exact(&mut header).await;
    if let (Err(write), Err(read)) = (&write, &read)
        && !read.to_string().contains("alert")
    {
        return Err(io::Error::new(write.kind(), write.to_string()));
    }
    match read {
        Ok(_) if starts_with_h2_settings(&header) => Ok(Outcome::Accepted),
        Ok(_) => Ok(Outcome::Refused(format!(
            "the server answered with a frame that is not SETTINGS: {header:?}"
        ))),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
            Ok(Outcome::Refused("connection closed".to_owned()))
        }
        Err(err) => Err(err),
    }
}
