//! Dialing apid: TCP, then TLS 1.3 with the context's CA and client certificate (our own
//! connector over tokio-rustls), then HTTP/2 via tonic.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_config::Context;
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Channel;

use crate::credentials::Credentials;
use crate::endpoint::{ApidEndpoint, parse_endpoints};
use crate::error::{Error, chain};

/// Largest gRPC message sent or accepted: Talos's 32 MiB (talos-facts §8), up from tonic's
/// 4 MiB default.
pub const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// How long a diagnostic connection waits after its handshake for the server's verdict.
const VERDICT_WAIT: Duration = Duration::from_secs(2);

/// How long TCP connect plus TLS handshake may take per endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect and as whom: endpoints, target nodes and credentials.
///
/// Usually built from a client-config [`Context`] and then adjusted by command-line overrides
/// ([`Target::with_endpoints`], [`Target::with_nodes`]).
#[derive(Clone, Debug)]
pub struct Target {
    endpoints: Vec<ApidEndpoint>,
    nodes: Vec<String>,
    credentials: Credentials,
}

impl Target {
    /// A target with at least one endpoint and no nodes.
    pub fn new(endpoints: Vec<ApidEndpoint>, credentials: Credentials) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Self {
            endpoints,
            nodes: Vec::new(),
            credentials,
        })
    }

    /// The context's endpoints, nodes and `ca`/`crt`/`key`.
    pub fn from_context(context: &Context) -> Result<Self, Error> {
        let credentials = Credentials::from_context(context)?;
        let target = Self::new(parse_endpoints(&context.endpoints)?, credentials)?;
        Ok(target.with_nodes(context.nodes.clone()))
    }

    /// Replaces the endpoints (e.g. from `--endpoints`); fails on an empty list.
    pub fn with_endpoints(self, endpoints: Vec<ApidEndpoint>) -> Result<Self, Error> {
        Self::new(endpoints, self.credentials).map(|target| target.with_nodes(self.nodes))
    }

    /// Replaces the target nodes (e.g. from `--nodes`). Empty means "the endpoint itself".
    /// A node named twice is called once: a second reboot of the same node would fail ("a
    /// reboot is already in progress") and report a failure for a reboot that worked.
    pub fn with_nodes(mut self, nodes: Vec<String>) -> Self {
        self.nodes = distinct(nodes);
        self
    }

    /// The endpoints, tried in order.
    pub fn endpoints(&self) -> &[ApidEndpoint] {
        &self.endpoints
    }

    /// The nodes each call is sent to.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The TLS material.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

/// Connection settings.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Limit for TCP connect plus TLS handshake, per endpoint.
    pub connect_timeout: Duration,
    /// Deadline applied to every request on the connection (streams included); `None` leaves
    /// requests unbounded.
    pub request_timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: None,
        }
    }
}

/// A connection to one apid plus the nodes to address through it.
///
/// Cheap to clone (the channel is shared). Requests never carry `talos-role` or `proxyfrom`:
/// those are apid's to set when it forwards.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    endpoint: ApidEndpoint,
    nodes: Vec<String>,
    /// Kept to dial again when a failure needs diagnosing ([`Client::diagnose`]).
    tls: TlsConnector,
    connect_timeout: Duration,
    /// How many per-node calls [`Client::each_node`] runs at once.
    pub(crate) concurrency: usize,
}

impl Client {
    /// Connects to the first endpoint of `target` that completes TCP, TLS and HTTP/2 setup.
    ///
    /// The client certificate's validity is checked against the local clock first, so an
    /// expired certificate is reported as such instead of as a refused handshake. When every
    /// endpoint fails, the first endpoint's error is returned.
    pub async fn connect(target: &Target, options: &ConnectOptions) -> Result<Self, Error> {
        target
            .credentials
            .check_validity(OffsetDateTime::now_utc())?;
        let tls = TlsConnector::from(Arc::new(target.credentials.tls_config()?));
        let mut first_error = None;
        for endpoint in &target.endpoints {
            match connect_one(endpoint, &tls, options).await {
                Ok(channel) => {
                    return Ok(Self {
                        channel,
                        endpoint: endpoint.clone(),
                        nodes: target.nodes.clone(),
                        tls,
                        connect_timeout: options.connect_timeout,
                        concurrency: crate::limit::DEFAULT_CONCURRENCY,
                    });
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or(Error::NoEndpoints))
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &ApidEndpoint {
        &self.endpoint
    }

    /// The nodes calls made with [`Client::each_node`] go to; empty means the endpoint itself.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The same connection addressing other nodes (each once, as [`Target::with_nodes`]).
    pub fn with_nodes(mut self, nodes: Vec<String>) -> Self {
        self.nodes = distinct(nodes);
        self
    }

    /// The underlying channel, for services other than the machine API.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A `machine.MachineService` client on this connection, with the 32 MiB message limits.
    pub fn machine(&self) -> MachineServiceClient<Channel> {
        MachineServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

impl Client {
    /// Finds out why calls failed at the transport level when their errors do not say (the
    /// connection may close before the server's TLS alert is read): dials the endpoint again
    /// and waits briefly after the handshake for the server's verdict on the client
    /// certificate. `None` means the server accepted the connection.
    pub(crate) async fn diagnose(&self) -> Option<Error> {
        let mut stream = match dial(&self.endpoint, &self.tls, self.connect_timeout).await {
            Ok(stream) => stream.into_inner(),
            Err(err) => return Some(err),
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(VERDICT_WAIT, stream.read(&mut byte)).await {
            Ok(Err(err)) => Some(Error::from_handshake(
                self.endpoint.to_string(),
                self.endpoint.host().to_string(),
                err,
            )),
            Ok(Ok(0)) => Some(Error::Handshake {
                endpoint: self.endpoint.to_string(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection right after the TLS handshake",
                ),
            }),
            // Data (HTTP/2 SETTINGS) or silence: the server accepted us.
            Ok(Ok(_)) | Err(_) => None,
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// A failed dial as it travels through tonic and hyper when the channel reconnects later:
/// the full text of our [`Error`], found again by `crate::error::diagnose_status`.
#[derive(Debug)]
pub(crate) struct DialFailed(pub(crate) String);

impl fmt::Display for DialFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for DialFailed {}

/// Dials one endpoint eagerly so that connection errors surface here, typed.
async fn connect_one(
    endpoint: &ApidEndpoint,
    tls: &TlsConnector,
    options: &ConnectOptions,
) -> Result<Channel, Error> {
    let mut builder = tonic::transport::Endpoint::from_shared(endpoint.uri())
        .map_err(|source| Error::Transport {
            endpoint: endpoint.to_string(),
            source,
        })?
        .tcp_nodelay(true);
    if let Some(timeout) = options.request_timeout {
        builder = builder.timeout(timeout);
    }

    // tonic keeps the connector for reconnects; the first failure's typed error is kept here
    // because tonic only hands back its own wrapper.
    let last_error: Arc<Mutex<Option<Error>>> = Arc::default();
    let connector = {
        let endpoint = endpoint.clone();
        let tls = tls.clone();
        let timeout = options.connect_timeout;
        let last_error = Arc::clone(&last_error);
        tower::service_fn(move |_uri: http::Uri| {
            let endpoint = endpoint.clone();
            let tls = tls.clone();
            let last_error = Arc::clone(&last_error);
            async move {
                match dial(&endpoint, &tls, timeout).await {
                    Ok(stream) => Ok(stream),
                    Err(err) => {
                        let text = chain(&err);
                        if let Ok(mut slot) = last_error.lock() {
                            *slot = Some(err);
                        }
                        Err(DialFailed(text))
                    }
                }
            }
        })
    };
    match builder.connect_with_connector(connector).await {
        Ok(channel) => Ok(channel),
        Err(source) => {
            let dialed = last_error.lock().ok().and_then(|mut slot| slot.take());
            Err(dialed.unwrap_or(Error::Transport {
                endpoint: endpoint.to_string(),
                source,
            }))
        }
    }
}

/// TCP connect and TLS handshake, bounded by `timeout`.
async fn dial(
    endpoint: &ApidEndpoint,
    tls: &TlsConnector,
    timeout: Duration,
) -> Result<TokioIo<TlsStream<TcpStream>>, Error> {
    let server_name = endpoint.server_name()?;
    let attempt = async {
        let tcp = TcpStream::connect(endpoint.authority())
            .await
            .map_err(|source| Error::Unreachable {
                endpoint: endpoint.to_string(),
                source,
            })?;
        // Small unary calls: do not wait to coalesce writes. Failure to set it is harmless.
        let _ = tcp.set_nodelay(true);
        let stream = tls.connect(server_name, tcp).await.map_err(|err| {
            Error::from_handshake(endpoint.to_string(), endpoint.host().to_string(), err)
        })?;
        Ok(TokioIo::new(stream))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Error::ConnectTimeout {
            endpoint: endpoint.to_string(),
            timeout,
        })?
}

/// `nodes` in their order, each once.
fn distinct(nodes: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    nodes
        .into_iter()
        .filter(|node| seen.insert(node.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_named_twice_is_called_once_in_the_order_given() {
        let nodes = ["10.0.0.3", "10.0.0.2", "10.0.0.3", "10.0.0.2", "10.0.0.4"];
        assert_eq!(
            distinct(nodes.iter().map(|n| n.to_string()).collect()),
            ["10.0.0.3", "10.0.0.2", "10.0.0.4"]
        );
    }
}
