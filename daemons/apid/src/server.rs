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

use basalt_config::{ApidConfig, ApidLimits};
use basalt_grpc::reload::DEFAULT_POLL_INTERVAL;
use basalt_grpc::{
    CredentialFiles, HandshakeStatsHandle, ReloadHandle, ServerConfigReloader, TlsAcceptLoop,
    TlsConnection,
};
use basalt_pki::RevocationCheck;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::audit::{AuditLog, AuditWriter};
use crate::connections::{Connections, PerAddressLimit};
use crate::error::{BoxError, Error};
use crate::forward::Machined;
use crate::limits::{LimitStats, Limiter, Refusals};
use crate::local::LocalServices;
use crate::metrics::Endpoint;
use crate::peer::Peer;
use crate::pipeline::{self, Shared};
use crate::remote::{ForwardingFiles, RemoteApids};
use crate::revocation::{self, REVOCATION_POLL_INTERVAL, RevocationList, Revoked};
use crate::routing::LocalNames;

/// How long open calls get to finish after shutdown is requested (Talos: 10 s graceful stop).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
        // The deny list first: without it the handshake must not accept anyone (fail closed).
        let revocation = RevocationList::new(load_revocation(&config)?);
        let (reloader, tls_config, reload) = load_credentials(&config, &revocation)?;
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
        // Per-address connection limit, right after the accept: a flood from one address spends
        // no handshake and cannot take every pending-handshake slot.
        let per_address = PerAddressLimit::new(config.limits.max_connections_per_address);
        let acceptor = TlsAcceptLoop::new(listener, tls_config, config.handshake_timeout)
            .with_admission(Arc::new(per_address.clone()));
        let (audit, audit_writer) = AuditLog::open(&config.audit)?;
        let metrics = Endpoint::bind(&config, &audit, acceptor.stats()).await?;
        let shared = Shared {
            audit,
            local: LocalServices::new().map_err(Error::Reflection)?,
            machined: Machined::new(&config.machined_socket),
            local_names: local_names(&config.tls.cert, local_addr.port())?,
            // Forwarding dials other apids on the port this one listens on (Talos: 50000).
            remote: config.forwarding.as_ref().map(|creds| {
                Arc::new(RemoteApids::new(
                    ForwardingFiles {
                        cert: creds.cert.clone(),
                        key: creds.key.clone(),
                        ca: config.tls.ca.clone(),
                    },
                    local_addr.port(),
                ))
            }),
            limiter: Limiter::new(config.limits),
            revocation: revocation.clone(),
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
            metrics,
            revocation: Revocation {
                path: config.revocation.clone(),
                list: revocation,
                connections: Arc::default(),
                per_address,
            },
            http2: http2_builder(&config.limits),
        })
    }
}

/// The deny list, its file, and the open connections it may close; and the per-address
/// connection limit.
#[derive(Debug)]
struct Revocation {
    path: Option<std::path::PathBuf>,
    list: RevocationList,
    connections: Arc<Connections>,
    per_address: PerAddressLimit,
}

/// Reads the configured deny list (none configured: nothing is revoked).
fn load_revocation(config: &ApidConfig) -> Result<Revoked, Error> {
    match &config.revocation {
        Some(path) => revocation::load(path).map_err(Error::LoadRevocation),
        None => Ok(Revoked::default()),
    }
}

/// The names this node answers to, from its server certificate (read once at bind: a renewed
/// certificate keeps the node's names).
fn local_names(cert: &std::path::Path, port: u16) -> Result<LocalNames, Error> {
    let read_error = |source: BoxError| Error::ReadServerCertificate {
        path: cert.to_owned(),
        source,
    };
    let pem = std::fs::read_to_string(cert).map_err(|err| read_error(Box::new(err)))?;
    LocalNames::from_server_cert(&pem, port).map_err(|err| read_error(Box::new(err)))
}

/// Checks what [`Server::bind`] would load, without binding: the TLS files are read and must
/// form a valid server config. Used by `apid --check-config`.
pub fn check_config(config: &ApidConfig) -> Result<(), Error> {
    let revocation = RevocationList::new(load_revocation(config)?);
    load_credentials(config, &revocation).map(drop)
}

fn load_credentials(
    config: &ApidConfig,
    revocation: &RevocationList,
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
    // Every rebuilt config consults the same live deny list at each handshake.
    let revocation: Arc<dyn RevocationCheck> = Arc::new(revocation.clone());
    ServerConfigReloader::load(
        files,
        Arc::new(move |pem| {
            basalt_pki::server_config_for_apid_with_revocation(
                &pem.cert,
                &pem.key,
                &pem.ca,
                Some(Arc::clone(&revocation)),
            )
        }),
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
    metrics: Option<Endpoint>,
    revocation: Revocation,
    http2: http2::Builder<TokioExecutor>,
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

    /// Calls and connections refused by the per-client limits so far (live counters).
    pub fn limit_stats(&self) -> LimitStatsHandle {
        LimitStatsHandle {
            calls: self.shared.limiter.refusals(),
            connections: self.revocation.per_address.clone(),
        }
    }

    /// The address of the Prometheus endpoint (`GET /metrics`), when `metrics` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(Endpoint::local_addr)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open calls finish for up
    /// to [`SHUTDOWN_GRACE`], closes what is left and flushes the audit log.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Bound {
            acceptor,
            reloader,
            shared,
            audit_writer,
            metrics,
            revocation,
            http2,
            ..
        } = self;
        // Closes a revoked certificate's open connections within a poll interval of the list
        // changing; aborted at shutdown.
        let revocation_task = revocation.path.clone().map(|path| {
            tokio::spawn(revocation::watch(
                path,
                revocation.list.clone(),
                Arc::clone(&revocation.connections),
                REVOCATION_POLL_INTERVAL,
            ))
        });
        // Scrapes are served until this guard drops at the end of `serve`.
        let _metrics = metrics.map(Endpoint::spawn);
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
                    Some(conn) => spawn_connection(
                        conn,
                        &http2,
                        &shared,
                        &revocation,
                        &graceful,
                        &mut connections,
                    ),
                    None => {
                        warn!("Accept loop stopped");
                        break;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        info!(connections = connections.len(), "Shutting down");
        if let Some(task) = revocation_task {
            task.abort();
        }
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

/// The HTTP/2 server settings: streams per connection and header size from the configured
/// limits (`machine.apidLimits`); see the constants for the why of the others.
fn http2_builder(limits: &ApidLimits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(limits.max_header_bytes)
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
    http2: &http2::Builder<TokioExecutor>,
    shared: &Arc<Shared>,
    revocation: &Revocation,
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
) {
    let TlsConnection {
        stream,
        peer_addr,
        admitted,
    } = conn;
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
    let (serial, fingerprint) = peer.as_ref().map_or(("", ""), |peer| {
        (peer.serial.as_str(), peer.fingerprint.as_str())
    });
    let mut registration = revocation.connections.register(serial, fingerprint);
    // The handshake checked the list as it was then; one revoked since, before this connection
    // was registered, was not seen by the watcher's sweep.
    if revocation.list.current().contains(serial, fingerprint) {
        warn!(
            peer.addr = %peer_addr,
            peer.serial = serial,
            "Connection of a revoked certificate closed"
        );
        return;
    }
    let shared = Arc::clone(shared);
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let peer = peer.clone();
        // Boxed: hyper spawns a task per call holding this future, and the call's state
        // (pipeline + forwarding) is kilobytes; unboxed, it was memcpy'd on every move into
        // the task (perf: ~15 % of apid's samples at concurrency 16, docs/BENCHMARKS.md).
        Box::pin(async move {
            Ok::<_, Infallible>(pipeline::handle(&shared, peer.as_ref(), request).await)
        })
    });
    let connection = graceful.watch(http2.serve_connection(TokioIo::new(stream), service));
    // Boxed, like the handshake's task (basalt_grpc::tls): the connection's future is kilobytes,
    // and tokio moves it by value several times while spawning it and as it finishes.
    connections.spawn(Box::pin(async move {
        tokio::select! {
            result = connection => {
                if let Err(err) = result {
                    debug!(
                        peer.addr = %peer_addr,
                        error = &err as &dyn std::error::Error,
                        "Connection ended with an error"
                    );
                }
            }
            // Dropping the connection closes the socket and ends every stream on it, even one
            // that would never end by itself (`logs -f`); graceful shutdown would wait for it.
            () = registration.revoked() => {
                info!(peer.addr = %peer_addr, "Closed the connection of a revoked certificate");
            }
        }
        // The connection is gone: it leaves the registry and frees its per-address place.
        drop(registration);
        drop(admitted);
    }));
}

/// Live counters of what the per-client limits refused; see [`Bound::limit_stats`].
#[derive(Clone)]
pub struct LimitStatsHandle {
    // Not `Shared`: a handle kept by a caller must not keep the audit log open past `serve`.
    calls: Arc<Refusals>,
    connections: PerAddressLimit,
}

impl LimitStatsHandle {
    /// The counters as they are now.
    pub fn snapshot(&self) -> LimitStats {
        LimitStats {
            connections_refused: self.connections.refused(),
            ..self.calls.snapshot()
        }
    }
}

impl std::fmt::Debug for LimitStatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitStatsHandle")
            .field("stats", &self.snapshot())
            .finish()
    }
}
