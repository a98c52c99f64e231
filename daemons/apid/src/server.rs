//! `Server::bind` → [`Bound`] → [`Bound::serve`]: the listener, TLS, HTTP/2 and shutdown.
//!
//! Connection level, in order: TCP accept → TLS 1.3 handshake in its own task under the
//! handshake timeout (`basalt_grpc::tls`) → the verified leaf certificate read once per
//! connection ([`Peer`]) → HTTP/2 served by hyper directly, each request going through
//! [`pipeline::handle`].
//!
//! hyper is used directly rather than through tonic's server because apid needs the verified
//! peer certificate per connection and forwards raw HTTP/2 requests; tonic's router would add
//! nothing but a decode step we must avoid.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::ApidConfig;
use basalt_grpc::reload::DEFAULT_POLL_INTERVAL;
use basalt_grpc::{
    CredentialFiles, HandshakeStatsHandle, ReloadHandle, ServerConfigReloader, TlsAcceptLoop,
    TlsConnection,
};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::audit::{AuditLog, AuditWriter};
use crate::error::{BoxError, Error};
use crate::forward::Machined;
use crate::local::LocalServices;
use crate::peer::Peer;
use crate::pipeline::{self, Shared};
use crate::routing::LocalNames;

/// How long open calls get to finish after shutdown is requested (Talos: 10 s graceful stop).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Most concurrent calls (HTTP/2 streams) one connection may have open.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Largest request header block accepted, in bytes (gRPC metadata is small; talosctl sends well
/// under 1 KiB).
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Largest HTTP/2 frame apid accepts: the protocol's default and minimum, 16 KiB.
pub const MAX_FRAME_SIZE: u32 = 16 * 1024;

/// apid pings idle connections this often to find dead peers. Client pings (talosctl sends one
/// every 10 s) are always answered and never counted against the client.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// A connection whose ping is not answered within this time is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Namespace for [`Server::bind`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds the listen address (port 0 picks a free port), loads the TLS credentials and
    /// opens the audit sink, so that every configuration problem shows up here rather than at
    /// the first call. machined's socket is not dialled: apid may start first.
    pub async fn bind(config: ApidConfig) -> Result<Bound, Error> {
        let (reloader, tls_config, reload) = load_credentials(&config)?;
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
        let acceptor = TlsAcceptLoop::new(listener, tls_config, config.handshake_timeout);
        let (audit, audit_writer) = AuditLog::open(&config.audit)?;
        let shared = Shared {
            audit,
            local: LocalServices::new().map_err(Error::Reflection)?,
            machined: Machined::new(&config.machined_socket),
            local_names: local_names(&config.tls.cert)?,
        };
        info!(
            addr = %local_addr,
            machined.socket = %config.machined_socket.display(),
            "apid bound"
        );
        Ok(Bound {
            local_addr,
            stats: acceptor.stats(),
            acceptor,
            reloader,
            reload,
            shared: Arc::new(shared),
            audit_writer,
        })
    }
}

/// The names this node answers to, from its server certificate (read once at bind: a renewed
/// certificate keeps the node's names).
fn local_names(cert: &std::path::Path) -> Result<LocalNames, Error> {
    let read_error = |source: BoxError| Error::ReadServerCertificate {
        path: cert.to_owned(),
        source,
    };
    let pem = std::fs::read_to_string(cert).map_err(|err| read_error(Box::new(err)))?;
    LocalNames::from_server_cert(&pem).map_err(|err| read_error(Box::new(err)))
}

/// Checks what [`Server::bind`] would load, without binding: the TLS files are read and must
/// form a valid server config. Used by `apid --check-config`.
pub fn check_config(config: &ApidConfig) -> Result<(), Error> {
    load_credentials(config).map(drop)
}

fn load_credentials(
    config: &ApidConfig,
) -> Result<
    (
        ServerConfigReloader,
        tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>,
        ReloadHandle,
    ),
    Error,
> {
    let files = CredentialFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        ca: config.tls.ca.clone(),
    };
    ServerConfigReloader::load(
        files,
        Arc::new(|pem| basalt_pki::server_config_for_apid(&pem.cert, &pem.key, &pem.ca)),
    )
    .map_err(Error::LoadCredentials)
}

/// A bound apid, ready to [`serve`](Bound::serve).
#[derive(Debug)]
pub struct Bound {
    local_addr: SocketAddr,
    acceptor: TlsAcceptLoop,
    reloader: ServerConfigReloader,
    reload: ReloadHandle,
    stats: HandshakeStatsHandle,
    shared: Arc<Shared>,
    audit_writer: AuditWriter,
}

impl Bound {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads the TLS credentials on demand (the binary wires SIGHUP to it). The files are
    /// also polled every second while serving.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Live TLS handshake counters (completed, and failed by reason).
    pub fn handshake_stats(&self) -> HandshakeStatsHandle {
        self.stats.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open calls finish for up
    /// to [`SHUTDOWN_GRACE`], closes what is left and flushes the audit log.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Bound {
            acceptor,
            reloader,
            shared,
            audit_writer,
            ..
        } = self;
        // The reloader ends by itself once the accept loop (its last config reader) is gone.
        let reload_task = tokio::spawn(reloader.run(DEFAULT_POLL_INTERVAL));
        let (mut incoming, accept_task) = acceptor.spawn();
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = incoming.recv() => match accepted {
                    Some(conn) => spawn_connection(conn, &shared, &graceful, &mut connections),
                    None => {
                        warn!("Accept loop stopped");
                        break;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        info!(connections = connections.len(), "Shutting down");
        drop(incoming);
        let _ = accept_task.await;
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            warn!(
                grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
                "Calls still open after the grace period; closing them"
            );
        }
        connections.shutdown().await;
        drop(shared);
        let _ = reload_task.await;
        // Every audit sender is gone now, so the writer drains its queue and ends.
        audit_writer.finished().await;
        info!("Stopped");
        Ok(())
    }
}

/// The HTTP/2 server settings; see the constants for the why of each value.
fn http2_builder() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_frame_size(MAX_FRAME_SIZE)
        // Talos's flow-control windows (`InitialWindowSize`, `InitialConnWindowSize`).
        .initial_stream_window_size(65_535 * 32)
        .initial_connection_window_size(65_535 * 16)
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

fn spawn_connection(
    conn: TlsConnection,
    shared: &Arc<Shared>,
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
) {
    let TlsConnection { stream, peer_addr } = conn;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.as_ref());
    // Everything a call needs from the certificate is worked out here, once per connection.
    let peer = match Peer::from_leaf(peer_addr, leaf) {
        Ok(peer) => {
            debug!(
                peer.addr = %peer_addr,
                peer.cn = peer.common_name.as_deref().unwrap_or(""),
                peer.serial = %peer.serial,
                peer.roles = %peer.roles,
                "Connection authenticated"
            );
            Some(Arc::new(peer))
        }
        Err(err) => {
            warn!(
                peer.addr = %peer_addr,
                error = &err as &dyn std::error::Error,
                "Cannot read the verified client certificate; every call will be refused"
            );
            None
        }
    };
    let shared = Arc::clone(shared);
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(&shared, peer.as_ref(), request).await) }
    });
    let connection =
        graceful.watch(http2_builder().serve_connection(TokioIo::new(stream), service));
    connections.spawn(async move {
        if let Err(err) = connection.await {
            debug!(
                peer.addr = %peer_addr,
                error = &err as &dyn std::error::Error,
                "Connection ended with an error"
            );
        }
    });
}
