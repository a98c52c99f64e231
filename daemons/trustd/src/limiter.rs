//! Per-peer limits: a token bucket per source address and a lockout after repeated bad tokens.
//!
//! Talos's trustd has neither: its only gate is the shared token, so anyone who can reach
//! :50001 may guess as fast as the network allows. Here each peer gets `perPeerPerMinute`
//! requests per minute (the bucket holds that many, refilled continuously), and after
//! `lockoutAfter` consecutive bad tokens it is refused outright for `lockoutFor`, whatever token
//! it sends then. A good token resets the count; a lockout is not extended by attempts made
//! during it (so a node that retries with the right token gets in once the lockout ends).
//!
//! Peers are keyed by IP address, not address and port (a new connection must not mean a new
//! bucket). IPv6 peers are keyed by their /64, the smallest block a site is usually given, so
//! one host cannot dodge the limit by rotating through its own addresses; IPv4-mapped IPv6
//! addresses count as the IPv4 address.
//!
//! The table is bounded ([`MAX_TRACKED_PEERS`]). When it is full, entries that carry no state
//! (full bucket, no failures, not locked) are dropped first, then the least recently seen
//! entry. An attacker with more addresses than the table holds can thus age out a lockout; with
//! that many addresses it could spread its guesses anyway.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use basalt_config::RateLimit;

/// Most peers tracked at once; see the module docs for what happens when the table is full.
pub const MAX_TRACKED_PEERS: usize = 4096;

/// Who a limit applies to: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey(IpAddr);

impl PeerKey {
    /// The key of a source address (see the module docs).
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    Self(IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0)))
                }
            },
        }
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a request was refused before its token was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer is locked out after too many bad tokens.
    LockedOut {
        /// Until the lockout ends.
        retry_after: Duration,
    },
    /// The peer used up its bucket.
    RateLimited {
        /// Until one request is available again.
        retry_after: Duration,
    },
}

/// The per-peer table; see the module docs.
pub(crate) struct PeerLimiter {
    limits: RateLimit,
    capacity: usize,
    peers: Mutex<HashMap<PeerKey, PeerState>>,
}

#[derive(Debug)]
struct PeerState {
    /// Requests left in the bucket (fractional: it refills continuously).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
    /// Bad tokens in a row.
    failures: u32,
    /// Refused until then.
    locked_until: Option<Instant>,
    /// Last request, for eviction.
    seen: Instant,
}

impl PeerLimiter {
    /// A limiter with the configured limits and the default table size.
    pub(crate) fn new(limits: RateLimit) -> Self {
        Self::with_capacity(limits, MAX_TRACKED_PEERS)
    }

    fn with_capacity(limits: RateLimit, capacity: usize) -> Self {
        Self {
            limits,
            capacity: capacity.max(1),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the lockout, then takes one request from the peer's bucket.
    pub(crate) fn admit(&self, peer: PeerKey, now: Instant) -> Result<(), Refusal> {
        let mut peers = self.lock();
        let state = self.entry(&mut peers, peer, now);
        state.seen = now;
        if let Some(until) = state.locked_until {
            if now < until {
                return Err(Refusal::LockedOut {
                    retry_after: until - now,
                });
            }
            // The lockout is over: start afresh.
            state.locked_until = None;
            state.failures = 0;
        }
        refill(state, self.limits, now);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let per_second = rate_per_second(self.limits);
            Err(Refusal::RateLimited {
                retry_after: Duration::from_secs_f64((1.0 - state.tokens) / per_second),
            })
        }
    }

    /// Counts a bad token. Returns the lockout duration if this failure started one.
    pub(crate) fn record_failure(&self, peer: PeerKey, now: Instant) -> Option<Duration> {
        let mut peers = self.lock();
        let state = self.entry(&mut peers, peer, now);
        state.seen = now;
        state.failures = state.failures.saturating_add(1);
        if state.failures >= self.limits.lockout_after && state.locked_until.is_none() {
            state.locked_until = Some(now + self.limits.lockout_for);
            Some(self.limits.lockout_for)
        } else {
            None
        }
    }

    /// Bad tokens from this peer in a row so far.
    pub(crate) fn failures(&self, peer: PeerKey) -> u32 {
        self.lock().get(&peer).map_or(0, |s| s.failures)
    }

    /// A good token: the failure count starts again.
    pub(crate) fn record_success(&self, peer: PeerKey) {
        if let Some(state) = self.lock().get_mut(&peer) {
            state.failures = 0;
        }
    }

    /// How many peers are tracked (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, PeerState>> {
        // The table holds counters only; a panic mid-update leaves it usable.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peer's entry, made room for and created if needed.
    fn entry<'a>(
        &self,
        peers: &'a mut HashMap<PeerKey, PeerState>,
        peer: PeerKey,
        now: Instant,
    ) -> &'a mut PeerState {
        if !peers.contains_key(&peer) && peers.len() >= self.capacity {
            self.evict(peers, now);
        }
        peers.entry(peer).or_insert_with(|| PeerState {
            tokens: f64::from(self.limits.per_peer_per_minute),
            refilled: now,
            failures: 0,
            locked_until: None,
            seen: now,
        })
    }

    /// Drops stateless entries; if none, the least recently seen one.
    fn evict(&self, peers: &mut HashMap<PeerKey, PeerState>, now: Instant) {
        let limits = self.limits;
        peers.retain(|_, state| {
            refill(state, limits, now);
            let locked = state.locked_until.is_some_and(|until| now < until);
            locked || state.failures > 0 || state.tokens < f64::from(limits.per_peer_per_minute)
        });
        if peers.len() >= self.capacity
            && let Some(oldest) = peers
                .iter()
                .min_by_key(|(_, state)| state.seen)
                .map(|(key, _)| *key)
        {
            peers.remove(&oldest);
        }
    }
}

impl fmt::Debug for PeerLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerLimiter")
            .field("limits", &self.limits)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

fn rate_per_second(limits: RateLimit) -> f64 {
    f64::from(limits.per_peer_per_minute) / 60.0
}

fn refill(state: &mut PeerState, limits: RateLimit, now: Instant) {
    let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
    let capacity = f64::from(limits.per_peer_per_minute);
    state.tokens = (state.tokens + elapsed * rate_per_second(limits)).min(capacity);
    state.refilled = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn limits(per_minute: u32) -> RateLimit {
        RateLimit {
            per_peer_per_minute: per_minute,
            lockout_after: 3,
            lockout_for: Duration::from_secs(60),
        }
    }

    fn peer(text: &str) -> PeerKey {
        PeerKey::of(text.parse().unwrap())
    }

    #[test]
    fn bucket_allows_a_burst_then_refills_at_the_rate() {
        let limiter = PeerLimiter::new(limits(60));
        let now = Instant::now();
        let a = peer("10.0.0.1");
        for _ in 0..60 {
            limiter.admit(a, now).unwrap();
        }
        let Err(Refusal::RateLimited { retry_after }) = limiter.admit(a, now) else {
            panic!("61st request in the same instant must be refused");
        };
        assert!(retry_after <= SECOND && retry_after > Duration::ZERO);
        // One request per second comes back.
        limiter.admit(a, now + SECOND).unwrap();
        assert!(limiter.admit(a, now + SECOND).is_err());
        // Another peer has its own bucket.
        limiter.admit(peer("10.0.0.2"), now).unwrap();
    }

    #[test]
    fn lockout_after_consecutive_failures_refuses_everything_until_it_ends() {
        let limiter = PeerLimiter::new(limits(600));
        let now = Instant::now();
        let a = peer("10.0.0.1");
        assert_eq!(limiter.record_failure(a, now), None);
        assert_eq!(limiter.record_failure(a, now), None);
        assert_eq!(
            limiter.record_failure(a, now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(limiter.failures(a), 3);
        // Further failures do not extend the lockout.
        assert_eq!(limiter.record_failure(a, now + SECOND), None);
        let Err(Refusal::LockedOut { retry_after }) = limiter.admit(a, now + SECOND) else {
            panic!("locked out");
        };
        assert_eq!(retry_after, Duration::from_secs(59));
        assert!(limiter.admit(peer("10.0.0.2"), now).is_ok());
        // Once it ends, the peer starts afresh.
        limiter.admit(a, now + Duration::from_secs(60)).unwrap();
        assert_eq!(limiter.failures(a), 0);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let limiter = PeerLimiter::new(limits(600));
        let now = Instant::now();
        let a = peer("10.0.0.1");
        limiter.record_failure(a, now);
        limiter.record_failure(a, now);
        limiter.record_success(a);
        assert_eq!(limiter.record_failure(a, now), None);
        assert_eq!(limiter.failures(a), 1);
    }

    #[test]
    fn ipv6_peers_share_their_64_and_mapped_ipv4_is_ipv4() {
        assert_eq!(peer("2001:db8:1:2::1"), peer("2001:db8:1:2:ffff::9"));
        assert_ne!(peer("2001:db8:1:2::1"), peer("2001:db8:1:3::1"));
        assert_eq!(peer("::ffff:10.0.0.1"), peer("10.0.0.1"));
        assert_eq!(peer("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(peer("10.0.0.1").to_string(), "10.0.0.1");
    }

    #[test]
    fn table_is_bounded_and_keeps_peers_with_state() {
        let limiter = PeerLimiter::with_capacity(limits(10), 4);
        let now = Instant::now();
        let locked = peer("10.0.0.1");
        for _ in 0..3 {
            limiter.record_failure(locked, now);
        }
        // Three idle peers (their buckets refill to full by `later`), then many new ones.
        for i in 2..=4 {
            limiter.admit(peer(&format!("10.0.0.{i}")), now).unwrap();
        }
        let later = now + Duration::from_secs(60);
        for i in 5..=7 {
            limiter.admit(peer(&format!("10.0.1.{i}")), later).unwrap();
            assert!(limiter.len() <= 4);
        }
        assert_eq!(limiter.len(), 4);
        // The idle peers made room; the locked-out one is still locked.
        assert!(matches!(
            limiter.admit(locked, now + SECOND),
            Err(Refusal::LockedOut { .. })
        ));
    }

    #[test]
    fn when_every_entry_has_state_the_oldest_goes() {
        let limiter = PeerLimiter::with_capacity(limits(10), 2);
        let now = Instant::now();
        limiter.record_failure(peer("10.0.0.1"), now);
        limiter.record_failure(peer("10.0.0.2"), now + SECOND);
        limiter.record_failure(peer("10.0.0.3"), now + 2 * SECOND);
        assert_eq!(limiter.len(), 2);
        assert_eq!(limiter.failures(peer("10.0.0.1")), 0);
        assert_eq!(limiter.failures(peer("10.0.0.3")), 1);
    }
}
