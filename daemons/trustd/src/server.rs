//! `Server::bind` → [`Bound`] → [`Bound::serve`]: credentials, the CA, the journal, the
//! listener, TLS, tonic and shutdown.
//!
//! Connection level, in order: TCP accept → TLS 1.3 handshake (server-side only) in its own
//! task under the handshake timeout (`basalt_grpc::tls`) → tonic's HTTP/2 server over the
//! finished TLS streams (`serve_with_incoming_shutdown`; tonic's `Connected` impl for
//! `TlsStream<TcpStream>` puts the peer address into every request's extensions) → the layer
//! stack of [`stack`] → the `SecurityService` handler.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_api::securityapi::security_service_server::SecurityServiceServer;
use basalt_config::TrustdConfig;
use basalt_grpc::reload::DEFAULT_POLL_INTERVAL;
use basalt_grpc::{
    CredentialFiles, HandshakeStatsHandle, ReloadHandle, ServerConfigReloader, TlsAcceptLoop,
};
use basalt_pki::SigningPolicy;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tower::layer::util::{Identity as NoLayer, Stack};
use tracing::{info, warn};

use crate::admission::{AdmissionLayer, Gate};
use crate::error::Error;
use crate::journal::Journal;
use crate::log::RequestLogLayer;
use crate::metrics::Endpoint;
use crate::panic::CatchPanicLayer;
use crate::service::{CertificateService, Signer};
use crate::trust::{TrustReloader, TrustReloads};

/// How long open calls get to finish after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Most concurrent calls (HTTP/2 streams) one connection may have open. A node makes one call
/// at a time; the benchmark drives 16 per connection at most.
pub const MAX_CONCURRENT_STREAMS: u32 = 64;

/// A call that takes longer than this is cancelled (signing takes well under a millisecond;
/// only a stuck journal disk could get near it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// trustd pings idle connections this often to find dead peers.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// A connection whose ping is not answered within this time is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Added to `policy.maxCsrBytes` for the gRPC message limit: the protobuf framing of the
/// `csr` field, with room to spare. A CSR between the cap and cap + margin is refused by the
/// policy (`InvalidArgument`, with its size); a larger message is refused by tonic's decoder
/// (`OutOfRange`) before it is buffered.
pub const MESSAGE_SIZE_MARGIN: usize = 1024;

/// Largest request header block accepted; a token and gRPC's own headers need well under 1 KiB.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Namespace for [`Server::bind`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Loads trustd's TLS credentials, the issuing CA and the accepted CA bundle, opens the
    /// journal and binds the listen address (port 0 picks a free port), so that every
    /// configuration problem shows up here rather than at the first call.
    pub async fn bind(config: TrustdConfig) -> Result<Bound, Error> {
        let (reloader, tls, reload) = load_credentials(&config)?;
        let (trust_reloader, tokens, signing, trust_reloads) = TrustReloader::load(&config)?;
        let file = Journal::open_file(&config.journal).map_err(|source| Error::OpenJournal {
            path: config.journal.clone(),
            source,
        })?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| Error::BindListener {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::BindListener {
                addr: config.listen,
                source,
            })?;
        let acceptor = TlsAcceptLoop::new(listener, tls, config.handshake_timeout);
        let (journal, journal_task) = Journal::start(config.journal.clone(), file);
        let gate = Gate::new(&config, tokens);
        let metrics = Endpoint::bind(&config, Arc::clone(gate.metrics()), acceptor.stats()).await?;
        let valid_tokens = gate.valid_tokens();
        if valid_tokens == 0 {
            warn!("Every configured token has expired; every call will be refused");
        }
        let policy = SigningPolicy {
            ttl: config.policy.ttl,
            max_sans: config.policy.max_sans,
            max_csr_bytes: config.policy.max_csr_bytes,
            require_ca_key_type: true,
        };
        let (ca_algorithm, bundle_bytes) = {
            let signing = signing.borrow();
            (signing.ca.algorithm(), signing.bundle.len())
        };
        info!(
            addr = %local_addr,
            ca.algorithm = %ca_algorithm,
            ca.bundle_bytes = bundle_bytes,
            tokens.valid = valid_tokens,
            journal = %config.journal.display(),
            policy.ttl_s = policy.ttl.as_secs(),
            "trustd bound"
        );
        Ok(Bound {
            local_addr,
            stats: acceptor.stats(),
            acceptor,
            reloader,
            reload,
            trust_reloader,
            trust_reloads,
            max_message_size: policy.max_csr_bytes + MESSAGE_SIZE_MARGIN,
            signer: Arc::new(Signer {
                signing,
                policy,
                journal,
                metrics: Arc::clone(gate.metrics()),
            }),
            gate: Arc::new(gate),
            journal_task,
            metrics,
        })
    }
}

/// Checks what [`Server::bind`] would load, without binding or creating anything: the TLS
/// files must form a server config, the CA files a CA, the accepted bundle CA certificates,
/// and the journal must be appendable. Used by `trustd --check-config`.
pub fn check_config(config: &TrustdConfig) -> Result<(), Error> {
    load_credentials(config)?;
    crate::trust::load_ca(config)?;
    Journal::check_writable(&config.journal).map_err(|source| Error::OpenJournal {
        path: config.journal.clone(),
        source,
    })
}

type CredentialParts = (
    ServerConfigReloader,
    watch::Receiver<Arc<rustls::ServerConfig>>,
    ReloadHandle,
);

fn load_credentials(config: &TrustdConfig) -> Result<CredentialParts, Error> {
    // The reloader watches three files; trustd has no client CA, so the third is the issuing
    // CA certificate (read, not used by the TLS config, and shown in the reload log line).
    let files = CredentialFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        ca: config.ca.cert.clone(),
    };
    ServerConfigReloader::load(
        files,
        Arc::new(|pem| basalt_pki::server_config_without_client_auth(&pem.cert, &pem.key)),
    )
    .map_err(Error::LoadCredentials)
}

/// The layers around the router, outermost first.
type Layers = Stack<AdmissionLayer, Stack<CatchPanicLayer, Stack<RequestLogLayer, NoLayer>>>;

/// The one place the layer order is written down.
fn stack(gate: Arc<Gate>) -> Layers {
    tower::ServiceBuilder::new()
        // Order: outermost, so it times everything and logs the status actually sent; it
        // never logs metadata, so the token cannot leak through it.
        .layer(RequestLogLayer)
        // Order: outside admission and the handler, so a panic in either becomes `Internal`
        // inside the call's span.
        .layer(CatchPanicLayer)
        // Order: last before the router, so nothing unauthenticated reaches the handler or
        // makes tonic read a request body; refusals are plain `Status` responses.
        .layer(AdmissionLayer::new(gate))
        .into_inner()
}

/// A bound trustd, ready to [`serve`](Bound::serve).
#[derive(Debug)]
pub struct Bound {
    local_addr: SocketAddr,
    acceptor: TlsAcceptLoop,
    reloader: ServerConfigReloader,
    reload: ReloadHandle,
    trust_reloader: TrustReloader,
    trust_reloads: TrustReloads,
    stats: HandshakeStatsHandle,
    gate: Arc<Gate>,
    signer: Arc<Signer>,
    max_message_size: usize,
    journal_task: JoinHandle<()>,
    metrics: Option<Endpoint>,
}

impl Bound {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads trustd's TLS credentials on demand (the binary wires SIGHUP to it). The files
    /// are also polled every second while serving.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Reloads of the join tokens and CAs (`crate::trust`): counts, and on-demand reloads (the
    /// binary wires SIGHUP to it). The files are also polled every second while serving.
    pub fn trust_reloads(&self) -> TrustReloads {
        self.trust_reloads.clone()
    }

    /// Also re-reads `path`, the config file this trustd was started from, when it changes:
    /// new `tokens`, `ca` and `acceptedCas` take effect without a restart.
    #[must_use]
    pub fn watch_config_file(mut self, path: PathBuf) -> Self {
        self.trust_reloader.watch_config_file(path);
        self
    }

    /// Live TLS handshake counters (completed, and failed by reason).
    pub fn handshake_stats(&self) -> HandshakeStatsHandle {
        self.stats.clone()
    }

    /// The address of the Prometheus endpoint (`GET /metrics`), when `metrics` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(Endpoint::local_addr)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open calls finish for up
    /// to [`SHUTDOWN_GRACE`] and waits for the journal writer to drain.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Bound {
            acceptor,
            reloader,
            trust_reloader,
            gate,
            signer,
            max_message_size,
            journal_task,
            metrics,
            ..
        } = self;
        // Scrapes are served until this guard drops at the end of `serve`.
        let _metrics = metrics.map(Endpoint::spawn);
        // The reloader ends by itself once the accept loop (its last config reader) is gone.
        let reload_task = tokio::spawn(reloader.run(DEFAULT_POLL_INTERVAL));
        // Ends once the gate and the signer (the last readers) are gone, like the TLS reloader.
        let trust_task = tokio::spawn(trust_reloader.run(DEFAULT_POLL_INTERVAL));
        let (connections, accept_task) = acceptor.spawn();
        let incoming = ReceiverStream::new(connections).map(|conn| Ok::<_, io::Error>(conn.stream));
        let service = SecurityServiceServer::new(CertificateService::new(signer))
            .max_decoding_message_size(max_message_size);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut serving = Box::pin(
            tonic::transport::Server::builder()
                .timeout(REQUEST_TIMEOUT)
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
                .layer(stack(gate))
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        let mut shutdown = std::pin::pin!(shutdown);

        let (result, drained) = tokio::select! {
            result = &mut serving => {
                warn!("Server stopped without a shutdown request");
                (result, true)
            }
            () = &mut shutdown => {
                info!("Shutting down");
                let _ = stop.send(());
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await {
                    Ok(result) => (result, true),
                    Err(_) => {
                        warn!(
                            grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                            "Calls still open after the grace period; leaving them"
                        );
                        (Ok(()), false)
                    }
                }
            }
        };
        // Dropping the server drops the incoming stream, which stops the accept loop, which
        // releases the last TLS config reader, which stops the reloader.
        drop(serving);
        let _ = accept_task.await;
        let _ = reload_task.await;
        if drained {
            let _ = trust_task.await;
            // Every connection is closed, so every journal handle is gone: the writer has
            // answered all callers and ends.
            let _ = journal_task.await;
        } else {
            // Calls still hold the material; the reloader has nothing left to do.
            trust_task.abort();
        }
        info!("Stopped");
        result.map_err(Error::Serve)
    }
}
