//! Per-client call limits: a request rate (token bucket) and a cap on open calls, both keyed
//! by the client certificate's SHA-256 fingerprint.
//!
//! Why per certificate: it is the identity apid has verified, so one client cannot exhaust the
//! node for the others, and one that opens many connections does not get more. Why a token
//! bucket: a client may burst (talosctl's `dashboard` fires a dozen calls at once) while its
//! steady rate stays bounded.
//!
//! Memory stays bounded: the table holds at most [`MAX_TRACKED_IDENTITIES`] certificates; when
//! full, identities with no open call are evicted (a new bucket starts full, so forgetting an
//! idle client only ever gives it its burst back). Should every tracked identity have a call
//! open, a new identity is refused until one finishes.
//!
//! Calls from an `os:impersonator` peer (another node's apid forwarding) are not limited here:
//! their callers were limited by the apid they called first.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use basalt_config::ApidLimits;

/// The most client certificates tracked at once.
pub const MAX_TRACKED_IDENTITIES: usize = 10_000;

/// A call refused by a limit. The message names the limit and when to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// The certificate made calls faster than its rate allows.
    #[error(
        "rate limit exceeded: a client certificate may make {rate} calls per second (bursts of \
         {burst}); retry in {} ms",
        .retry_after.as_millis().max(1)
    )]
    Rate {
        /// Steady calls per second.
        rate: u32,
        /// Bucket size.
        burst: u32,
        /// When the next call would be admitted.
        retry_after: Duration,
    },
    /// The certificate already has the most calls open.
    #[error(
        "too many calls in flight: a client certificate may have {limit} calls (streams \
         included) open at once; retry when one of them has finished"
    )]
    InFlight {
        /// The limit.
        limit: u32,
    },
    /// Every tracked identity has a call open and the table is full.
    #[error("too many distinct clients are calling this node ({limit}); retry in a few seconds")]
    Identities {
        /// The table's size.
        limit: usize,
    },
}

/// Counters of refused calls, by limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitStats {
    /// Calls refused by the rate limit.
    pub rate_limited: u64,
    /// Calls refused by the in-flight limit.
    pub in_flight_limited: u64,
    /// Connections refused by the per-address limit.
    pub connections_refused: u64,
}

/// The limiter shared by every connection.
pub(crate) struct Limiter {
    limits: ApidLimits,
    table: Mutex<HashMap<String, Bucket>>,
    refusals: Arc<Refusals>,
}

/// Calls refused, by limit; shared with whoever reports them (without keeping the limiter).
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    rate_limited: AtomicU64,
    in_flight_limited: AtomicU64,
}

impl Refusals {
    /// The counters as they are now (connections are counted elsewhere: 0 here).
    pub(crate) fn snapshot(&self) -> LimitStats {
        LimitStats {
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            in_flight_limited: self.in_flight_limited.load(Ordering::Relaxed),
            connections_refused: 0,
        }
    }
}

/// One certificate's state.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    in_flight: Arc<AtomicU32>,
}

/// Holds one in-flight slot of a certificate until dropped (when the call's response ends).
#[derive(Debug)]
pub(crate) struct CallPermit {
    in_flight: Arc<AtomicU32>,
}

impl Limiter {
    /// A limiter enforcing `limits`.
    pub(crate) fn new(limits: ApidLimits) -> Self {
        Limiter {
            limits,
            table: Mutex::new(HashMap::new()),
            refusals: Arc::default(),
        }
    }

    /// Admits one call of the certificate `fingerprint` now, or says which limit refused it.
    pub(crate) fn admit(&self, fingerprint: &str) -> Result<CallPermit, LimitExceeded> {
        self.admit_at(fingerprint, Instant::now())
    }

    /// The refusal counters, live.
    pub(crate) fn refusals(&self) -> Arc<Refusals> {
        Arc::clone(&self.refusals)
    }

    #[cfg(test)]
    fn stats(&self) -> LimitStats {
        self.refusals.snapshot()
    }

    fn admit_at(&self, fingerprint: &str, now: Instant) -> Result<CallPermit, LimitExceeded> {
        let burst = f64::from(self.limits.burst);
        let rate = f64::from(self.limits.requests_per_second);
        let mut table = self.lock();
        // Looked up by `&str` first: `entry` would need an owned key, an allocation per call.
        if !table.contains_key(fingerprint) {
            if table.len() >= MAX_TRACKED_IDENTITIES {
                evict_idle(&mut table);
                if table.len() >= MAX_TRACKED_IDENTITIES {
                    return Err(LimitExceeded::Identities {
                        limit: MAX_TRACKED_IDENTITIES,
                    });
                }
            }
            table.insert(
                fingerprint.to_owned(),
                Bucket {
                    tokens: burst,
                    refilled: now,
                    in_flight: Arc::new(AtomicU32::new(0)),
                },
            );
        }
        let Some(bucket) = table.get_mut(fingerprint) else {
            unreachable!("the bucket was found or inserted above, under the same lock");
        };

        // In flight first: a refused call must not also spend a token.
        if bucket.in_flight.load(Ordering::Acquire) >= self.limits.max_in_flight {
            self.refusals
                .in_flight_limited
                .fetch_add(1, Ordering::Relaxed);
            return Err(LimitExceeded::InFlight {
                limit: self.limits.max_in_flight,
            });
        }

        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            self.refusals.rate_limited.fetch_add(1, Ordering::Relaxed);
            let retry_after = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
            return Err(LimitExceeded::Rate {
                rate: self.limits.requests_per_second,
                burst: self.limits.burst,
                retry_after,
            });
        }
        bucket.tokens -= 1.0;
        bucket.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(CallPermit {
            in_flight: Arc::clone(&bucket.in_flight),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bucket>> {
        // Each critical section leaves the table consistent: a poisoned lock is still usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Forgets every identity with no call open.
fn evict_idle(table: &mut HashMap<String, Bucket>) {
    table.retain(|_, bucket| bucket.in_flight.load(Ordering::Acquire) > 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, in_flight: u32) -> Limiter {
        Limiter::new(ApidLimits {
            requests_per_second: rate,
            burst,
            max_in_flight: in_flight,
            ..ApidLimits::default()
        })
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_applies_per_certificate() {
        let limiter = limiter(10, 3, 100);
        let start = Instant::now();
        for _ in 0..3 {
            drop(limiter.admit_at("a", start).expect("within the burst"));
        }
        let err = limiter.admit_at("a", start).expect_err("burst spent");
        match &err {
            LimitExceeded::Rate { retry_after, .. } => {
                assert_eq!(*retry_after, Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("10 calls per second"), "{err}");
        assert!(err.to_string().contains("retry in 100 ms"), "{err}");
        // Another certificate has its own bucket.
        drop(limiter.admit_at("b", start).expect("other certificate"));
        // A tenth of a second refills one token.
        drop(
            limiter
                .admit_at("a", start + Duration::from_millis(100))
                .expect("refilled"),
        );
        assert_eq!(limiter.stats().rate_limited, 1);
    }

    #[test]
    fn open_calls_are_capped_until_one_finishes() {
        let limiter = limiter(1000, 1000, 2);
        let now = Instant::now();
        let first = limiter.admit_at("a", now).expect("first");
        let _second = limiter.admit_at("a", now).expect("second");
        let err = limiter.admit_at("a", now).expect_err("third");
        assert_eq!(err, LimitExceeded::InFlight { limit: 2 });
        assert!(err.to_string().contains("2 calls"), "{err}");
        drop(limiter.admit_at("b", now).expect("other certificate"));
        drop(first);
        drop(limiter.admit_at("a", now).expect("a slot was freed"));
        assert_eq!(limiter.stats().in_flight_limited, 1);
    }

    #[test]
    fn the_table_stays_bounded_by_evicting_idle_identities() {
        let limiter = limiter(1000, 1000, 10);
        let now = Instant::now();
        let busy = limiter.admit_at("busy", now).expect("busy");
        for i in 0..MAX_TRACKED_IDENTITIES + 5 {
            drop(
                limiter
                    .admit_at(&format!("client-{i}"), now)
                    .expect("admitted"),
            );
            assert!(limiter.tracked() <= MAX_TRACKED_IDENTITIES);
        }
        // The identity with an open call survived every eviction.
        assert!(limiter.lock().contains_key("busy"));
        drop(busy);
    }

    #[test]
    fn a_new_identity_is_refused_while_every_tracked_one_has_a_call_open() {
        let limiter = limiter(1000, 1000, 10);
        let now = Instant::now();
        let open: Vec<CallPermit> = (0..MAX_TRACKED_IDENTITIES)
            .map(|i| {
                limiter
                    .admit_at(&format!("client-{i}"), now)
                    .expect("admitted")
            })
            .collect();
        let refused = limiter.admit_at("newcomer", now).expect_err("table full");
        assert_eq!(
            refused,
            LimitExceeded::Identities {
                limit: MAX_TRACKED_IDENTITIES
            }
        );
        // A tracked identity is still served, and once calls end the newcomer is too.
        drop(limiter.admit_at("client-0", now).expect("tracked"));
        drop(open);
        drop(limiter.admit_at("newcomer", now).expect("room again"));
    }
}
