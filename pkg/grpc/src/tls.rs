//! The TLS accept loop: TCP accept → one task per handshake (under a timeout) → a channel of
//! finished streams.
//!
//! Why a task per handshake: a client that opens a TCP connection and then says nothing (or
//! dribbles bytes) would otherwise block every handshake behind it. Here it only holds one of
//! [`DEFAULT_MAX_PENDING_HANDSHAKES`] permits until its timeout fires.
//!
//! Each handshake reads the current `Arc<ServerConfig>` from a `watch` channel when it starts,
//! so a reloaded certificate or CA bundle applies to the next connection and never to one that
//! is already open.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use basalt_pki::tls::ExtKeyUsageError;
use rustls::{CertificateError, InvalidMessage, PeerIncompatible, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

/// At most this many handshakes run at once; further connections wait in the kernel's accept
/// backlog. Bounds the memory a flood of silent connections can pin.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;

/// A connection whose TLS handshake completed: the client certificate (if the config asks for
/// one) has been verified.
#[derive(Debug)]
pub struct TlsConnection {
    /// The TLS stream, ready for HTTP/2.
    pub stream: TlsStream<TcpStream>,
    /// The peer's address as seen by the TCP accept (never taken from anything the peer says).
    pub peer_addr: SocketAddr,
    /// What [`Admission::admit`] returned for this connection: keep it as long as the
    /// connection is open (`None` without an admission policy).
    pub admitted: Option<Admitted>,
}

/// Held for as long as an admitted connection is open; dropping it releases the connection's
/// place (e.g. in a per-address count).
pub type Admitted = Box<dyn std::any::Any + Send + Sync>;

/// Decides right after the TCP accept, before any TLS work, whether a connection may proceed:
/// for example a per-source-address connection limit.
pub trait Admission: fmt::Debug + Send + Sync {
    /// `Ok` lets the connection proceed, counted until the returned value is dropped; `Err`
    /// closes it at once, with the reason to log.
    fn admit(&self, peer: SocketAddr) -> Result<Admitted, String>;
}

/// Accepts TCP connections and runs TLS handshakes concurrently; see the module docs.
#[derive(Debug)]
pub struct TlsAcceptLoop {
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
    max_pending: usize,
    stats: HandshakeStatsHandle,
    admission: Option<Arc<dyn Admission>>,
}

impl TlsAcceptLoop {
    /// An accept loop over an already bound `listener`, taking the server config from `config`
    /// at the start of every handshake.
    pub fn new(
        listener: TcpListener,
        config: watch::Receiver<Arc<ServerConfig>>,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            listener,
            config,
            handshake_timeout,
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
            stats: HandshakeStatsHandle::default(),
            admission: None,
        }
    }

    /// Asks `admission` about every accepted connection before its handshake starts; a
    /// refused one is closed at once and counted ([`HandshakeStats::refused`]).
    pub fn with_admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Changes how many handshakes may be in progress at once (at least one).
    pub fn with_max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// The address the listener is bound to (with port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The handshake counters, shared with the running loop.
    pub fn stats(&self) -> HandshakeStatsHandle {
        self.stats.clone()
    }

    /// Starts the loop. Finished connections arrive on the returned receiver; dropping the
    /// receiver stops the loop and aborts handshakes in progress. The task ends by itself then.
    pub fn spawn(self) -> (mpsc::Receiver<TlsConnection>, JoinHandle<()>) {
        // A small buffer: connections are picked up at once by the serve loop, and a full
        // channel should push back on handshakes rather than pile up finished streams.
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(self.run(tx));
        (rx, task)
    }

    async fn run(self, tx: mpsc::Sender<TlsConnection>) {
        let permits = Arc::new(Semaphore::new(self.max_pending));
        let mut handshakes = JoinSet::new();
        loop {
            while handshakes.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = tx.closed() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    // The semaphore is never closed; stop rather than spin if it ever is.
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, peer_addr) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Per-connection errors (reset before accept) are harmless; resource
                    // exhaustion needs a pause so the loop does not spin.
                    warn!(error = &err as &dyn std::error::Error, "TCP accept failed");
                    tokio::time::sleep(crate::ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let admitted = match &self.admission {
                None => None,
                Some(admission) => match admission.admit(peer_addr) {
                    Ok(admitted) => Some(admitted),
                    Err(reason) => {
                        // Dropping the socket closes it; no handshake is spent on it.
                        self.stats.0.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer.addr = %peer_addr, reason = %reason, "Connection refused");
                        continue;
                    }
                },
            };
            // Latency matters more than packet count for request/response RPCs.
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(self.config.borrow().clone());
            let timeout = self.handshake_timeout;
            let stats = self.stats.clone();
            let tx = tx.clone();
            // Boxed: tokio moves a task's future by value several times while spawning it and
            // again as it finishes, and this one holds a TLS handshake (about 4 KiB).
            handshakes.spawn(Box::pin(async move {
                let _permit = permit;
                let result = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
                match result {
                    Ok(Ok(stream)) => {
                        stats.0.completed.fetch_add(1, Ordering::Relaxed);
                        debug!(peer.addr = %peer_addr, "TLS handshake completed");
                        // A closed channel means the server is shutting down: drop the stream.
                        let _ = tx
                            .send(TlsConnection {
                                stream,
                                peer_addr,
                                admitted,
                            })
                            .await;
                    }
                    Ok(Err(err)) => {
                        let reason = HandshakeFailure::classify(&err);
                        stats.record(reason);
                        warn!(
                            peer.addr = %peer_addr,
                            reason = reason.as_str(),
                            error = &err as &dyn std::error::Error,
                            "TLS handshake failed"
                        );
                    }
                    Err(_elapsed) => {
                        stats.record(HandshakeFailure::Timeout);
                        warn!(
                            peer.addr = %peer_addr,
                            reason = HandshakeFailure::Timeout.as_str(),
                            timeout_ms = timeout.as_millis() as u64,
                            "TLS handshake failed"
                        );
                    }
                }
            }));
        }
        handshakes.shutdown().await;
    }
}

/// Why a TLS handshake failed, as counted and logged.
///
/// The reason is what an operator needs to tell apart "the client's certificate expired" from
/// "the client talks to the wrong cluster": `user-asks.md` shows expired certs misread as an
/// unreachable node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client certificate's extended key usage is not exactly clientAuth.
    BadEku,
    /// The client certificate has expired.
    Expired,
    /// The client sent no certificate.
    NoCertificate,
    /// The first bytes were not a TLS record (plaintext HTTP/2, a port scanner, …).
    NotTls,
    /// The client certificate is not valid yet (clock skew, or a post-dated certificate).
    NotYetValid,
    /// Anything else: the client hung up, a malformed message, a client that refused our
    /// certificate, …
    Other,
    /// The client offered no TLS version we accept (apid is TLS 1.3 only).
    ProtocolVersion,
    /// The client certificate is on the node's revocation list.
    Revoked,
    /// The handshake did not finish within the handshake timeout.
    Timeout,
    /// The client certificate does not chain to an accepted CA.
    UnknownCa,
}

impl HandshakeFailure {
    /// Every reason, in declaration order.
    pub const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::BadEku,
        HandshakeFailure::Expired,
        HandshakeFailure::NoCertificate,
        HandshakeFailure::NotTls,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::Other,
        HandshakeFailure::ProtocolVersion,
        HandshakeFailure::Revoked,
        HandshakeFailure::Timeout,
        HandshakeFailure::UnknownCa,
    ];

    /// The snake_case name used in logs (`reason = "unknown_ca"`).
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::BadEku => "bad_eku",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::Other => "other",
            HandshakeFailure::ProtocolVersion => "protocol_version",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::UnknownCa => "unknown_ca",
        }
    }

    /// Classifies the error tokio-rustls returned from a failed server handshake.
    pub fn classify(err: &io::Error) -> HandshakeFailure {
        let Some(tls) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Other;
        };
        Self::classify_rustls(tls)
    }

    /// Classifies a rustls error seen by the server during a handshake.
    pub fn classify_rustls(err: &rustls::Error) -> HandshakeFailure {
        match err {
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    HandshakeFailure::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    HandshakeFailure::NotYetValid
                }
                // Talos CAs are all named `O=talos`: a certificate from another cluster's CA
                // finds a same-named issuer and fails on the signature instead of on the name.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    HandshakeFailure::UnknownCa
                }
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => HandshakeFailure::BadEku,
                CertificateError::Revoked => HandshakeFailure::Revoked,
                CertificateError::Other(other)
                    if other.0.downcast_ref::<ExtKeyUsageError>().is_some() =>
                {
                    HandshakeFailure::BadEku
                }
                _ => HandshakeFailure::Other,
            },
            rustls::Error::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::ServerDoesNotSupportTls12Or13,
            ) => HandshakeFailure::ProtocolVersion,
            rustls::Error::InvalidMessage(
                InvalidMessage::InvalidContentType | InvalidMessage::UnknownProtocolVersion,
            ) => HandshakeFailure::NotTls,
            _ => HandshakeFailure::Other,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time copy of the handshake counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    /// Handshakes that completed.
    pub completed: u64,
    /// Connections closed right after the accept by the [`Admission`] policy.
    pub refused: u64,
    /// Failures, indexed like [`HandshakeFailure::ALL`].
    failed: [u64; 10],
}

impl HandshakeStats {
    /// How many handshakes failed for `reason`.
    pub fn failed(&self, reason: HandshakeFailure) -> u64 {
        self.failed[index(reason)]
    }

    /// How many handshakes failed, for any reason.
    pub fn total_failed(&self) -> u64 {
        self.failed.iter().sum()
    }
}

/// Shared handle to the live counters of one accept loop.
#[derive(Clone, Debug, Default)]
pub struct HandshakeStatsHandle(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    refused: AtomicU64,
    failed: [AtomicU64; 10],
}

impl HandshakeStatsHandle {
    /// The counters as they are now.
    pub fn snapshot(&self) -> HandshakeStats {
        let mut failed = [0; 10];
        for (slot, counter) in failed.iter_mut().zip(&self.0.failed) {
            *slot = counter.load(Ordering::Relaxed);
        }
        HandshakeStats {
            completed: self.0.completed.load(Ordering::Relaxed),
            refused: self.0.refused.load(Ordering::Relaxed),
            failed,
        }
    }

    fn record(&self, reason: HandshakeFailure) {
        self.0.failed[index(reason)].fetch_add(1, Ordering::Relaxed);
    }
}

fn index(reason: HandshakeFailure) -> usize {
    match reason {
        HandshakeFailure::BadEku => 0,
        HandshakeFailure::Expired => 1,
        HandshakeFailure::NoCertificate => 2,
        HandshakeFailure::NotTls => 3,
        HandshakeFailure::NotYetValid => 4,
        HandshakeFailure::Other => 5,
        HandshakeFailure::ProtocolVersion => 6,
        HandshakeFailure::Revoked => 7,
        HandshakeFailure::Timeout => 8,
        HandshakeFailure::UnknownCa => 9,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use basalt_pki::ExtKeyUsage;
    use rustls::OtherError;

    use super::*;

    fn wrapped(err: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn reasons_are_classified() {
        let eku = CertificateError::Other(OtherError(Arc::new(ExtKeyUsageError(
            ExtKeyUsage::default(),
        ))));
        for (err, reason) in [
            (
                rustls::Error::NoCertificatesPresented,
                HandshakeFailure::NoCertificate,
            ),
            (CertificateError::Expired.into(), HandshakeFailure::Expired),
            (
                CertificateError::NotValidYet.into(),
                HandshakeFailure::NotYetValid,
            ),
            (
                CertificateError::UnknownIssuer.into(),
                HandshakeFailure::UnknownCa,
            ),
            (
                CertificateError::BadSignature.into(),
                HandshakeFailure::UnknownCa,
            ),
            (
                CertificateError::InvalidPurpose.into(),
                HandshakeFailure::BadEku,
            ),
            (eku.into(), HandshakeFailure::BadEku),
            (CertificateError::Revoked.into(), HandshakeFailure::Revoked),
            (
                PeerIncompatible::SupportedVersionsExtensionRequired.into(),
                HandshakeFailure::ProtocolVersion,
            ),
            (
                InvalidMessage::InvalidContentType.into(),
                HandshakeFailure::NotTls,
            ),
            (rustls::Error::DecryptError, HandshakeFailure::Other),
        ] {
            assert_eq!(HandshakeFailure::classify(&wrapped(err)), reason);
        }
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(HandshakeFailure::classify(&eof), HandshakeFailure::Other);
    }

    #[test]
    fn counters_count_by_reason() {
        let stats = HandshakeStatsHandle::default();
        stats.record(HandshakeFailure::Timeout);
        stats.record(HandshakeFailure::Timeout);
        stats.record(HandshakeFailure::UnknownCa);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.failed(HandshakeFailure::Timeout), 2);
        assert_eq!(snapshot.failed(HandshakeFailure::UnknownCa), 1);
        assert_eq!(snapshot.failed(HandshakeFailure::Expired), 0);
        assert_eq!(snapshot.total_failed(), 3);
        // Every reason has its own slot and a distinct name.
        let names: std::collections::BTreeSet<_> =
            HandshakeFailure::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), HandshakeFailure::ALL.len());
        for (i, reason) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(index(*reason), i);
        }
    }
}
