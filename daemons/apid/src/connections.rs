//! Open client connections: how many each source address holds (the per-address limit,
//! applied right after the TCP accept), and which certificate each established one was opened
//! with, so that a revocation can close the connections of a revoked certificate at once.
//!
//! hyper's graceful shutdown is not enough for revocation: it waits for open streams to end,
//! and a `logs -f` stream never does. A revoked connection's task is instead told to stop
//! serving, which drops the HTTP/2 connection and closes the socket; every stream on it ends.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use basalt_grpc::{Admission, Admitted};
use tokio::sync::oneshot;

use crate::revocation::Revoked;

// === per-address limit ===

/// The per-source-address connection limit, asked by the accept loop before any TLS work. A
/// connection counts from its accept (handshake included) until it closes.
#[derive(Clone, Debug)]
pub(crate) struct PerAddressLimit {
    table: Arc<AddressTable>,
}

#[derive(Debug)]
struct AddressTable {
    limit: u32,
    /// Open connections per address; an address leaves the map with its last connection, so
    /// the map never holds more entries than there are open connections.
    counts: Mutex<HashMap<IpAddr, u32>>,
    refused: AtomicU64,
}

/// A connection refused because its address already holds the most connections allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{address} already holds {limit} open connections (the per-address limit)")]
pub(crate) struct TooManyConnections {
    /// The source address.
    pub(crate) address: IpAddr,
    /// The limit.
    pub(crate) limit: u32,
}

/// One counted connection; dropping it frees its place.
#[derive(Debug)]
struct AddressSlot {
    table: Arc<AddressTable>,
    address: IpAddr,
}

impl PerAddressLimit {
    /// At most `limit` open connections per source address.
    pub(crate) fn new(limit: u32) -> Self {
        PerAddressLimit {
            table: Arc::new(AddressTable {
                limit,
                counts: Mutex::new(HashMap::new()),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// How many connections were refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.table.refused.load(Ordering::Relaxed)
    }

    fn try_admit(&self, address: IpAddr) -> Result<AddressSlot, TooManyConnections> {
        let table = &self.table;
        let mut counts = lock(&table.counts);
        let count = counts.entry(address).or_insert(0);
        if *count >= table.limit {
            table.refused.fetch_add(1, Ordering::Relaxed);
            return Err(TooManyConnections {
                address,
                limit: table.limit,
            });
        }
        *count += 1;
        Ok(AddressSlot {
            table: Arc::clone(table),
            address,
        })
    }
}

impl Admission for PerAddressLimit {
    fn admit(&self, peer: SocketAddr) -> Result<Admitted, String> {
        self.try_admit(peer.ip())
            .map(|slot| Box::new(slot) as Admitted)
            .map_err(|err| err.to_string())
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.table.counts);
        if let Some(count) = counts.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

// === revocation registry ===

/// Every established connection, by id, with the certificate it was opened with.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    live: HashMap<u64, Live>,
}

/// What is known about one open connection.
#[derive(Debug)]
struct Live {
    serial: String,
    fingerprint: String,
    /// Fired to close the connection; `None` once fired.
    close: Option<oneshot::Sender<()>>,
}

impl Connections {
    /// Registers a connection made with the certificate `serial`/`fingerprint` (empty if
    /// unreadable); it stays registered until the returned [`Registration`] is dropped.
    pub(crate) fn register(self: &Arc<Self>, serial: &str, fingerprint: &str) -> Registration {
        let mut inner = lock(&self.inner);
        let id = inner.next_id;
        inner.next_id += 1;
        let (close, closed) = oneshot::channel();
        inner.live.insert(
            id,
            Live {
                serial: serial.to_owned(),
                fingerprint: fingerprint.to_owned(),
                close: Some(close),
            },
        );
        Registration {
            id,
            connections: Arc::clone(self),
            closed,
        }
    }

    /// Tells every connection whose certificate `revoked` lists to close; returns how many.
    pub(crate) fn close_revoked(&self, revoked: &Revoked) -> usize {
        let mut inner = lock(&self.inner);
        let mut closed = 0;
        for live in inner.live.values_mut() {
            if revoked.contains(&live.serial, &live.fingerprint)
                && let Some(close) = live.close.take()
            {
                // The receiver is gone only if the connection is ending anyway.
                let _ = close.send(());
                closed += 1;
            }
        }
        closed
    }

    /// How many connections are registered now.
    #[cfg(test)]
    fn open(&self) -> usize {
        lock(&self.inner).live.len()
    }
}

/// One registered connection; dropping it unregisters the connection.
pub(crate) struct Registration {
    id: u64,
    connections: Arc<Connections>,
    closed: oneshot::Receiver<()>,
}

impl Registration {
    /// Completes when the connection must be closed (its certificate was revoked).
    pub(crate) async fn revoked(&mut self) {
        if (&mut self.closed).await.is_err() {
            // The sender lives in the registry until this registration is dropped; never
            // resolve on its loss.
            std::future::pending::<()>().await;
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.connections.inner).live.remove(&self.id);
    }
}

/// Every critical section here leaves its map consistent, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const A: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 1);
    const B: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)), 1);

    #[test]
    fn the_limit_is_per_address_and_freed_by_dropping() {
        let limit = PerAddressLimit::new(2);
        let first = limit.admit(A).expect("first");
        let _second = limit.admit(A).expect("second");
        let err = limit.admit(A).expect_err("third from A");
        assert!(err.contains("127.0.0.1 already holds 2"), "{err}");
        assert_eq!(limit.refused(), 1);
        let _other = limit.admit(B).expect("B has its own count");
        drop(first);
        let _again = limit.admit(A).expect("a slot was freed");
        // Addresses without connections leave the table.
        drop(_other);
        assert_eq!(lock(&limit.table.counts).len(), 1);
    }

    #[tokio::test]
    async fn only_connections_of_a_revoked_certificate_are_told_to_close() {
        let connections = Arc::new(Connections::default());
        let mut revoked = connections.register("1a", "f1");
        let mut kept = connections.register("2b", "f2");
        let list = Revoked::parse(r#"{"revoked": [{"serial": "1a"}]}"#).expect("list");
        assert_eq!(connections.close_revoked(&list), 1);
        tokio::time::timeout(Duration::from_secs(5), revoked.revoked())
            .await
            .expect("the revoked connection is told to close");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), kept.revoked())
                .await
                .is_err(),
            "the other connection stays open"
        );
        // A second reload does not signal the same connection twice.
        assert_eq!(connections.close_revoked(&list), 0);
        drop(revoked);
        drop(kept);
        assert_eq!(connections.open(), 0);
    }
}
