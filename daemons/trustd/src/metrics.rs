//! trustd's Prometheus metrics, served on `GET /metrics` by `basalt_grpc::metrics` when
//! `metrics:` is set in trustd's config (off by default).
//!
//! | family | labels | counts |
//! | --- | --- | --- |
//! | `basalt_trustd_issued_total` | — | certificates issued (journaled and returned) |
//! | `basalt_trustd_token_failures_total` | — | calls refused for a missing, unknown or expired token |
//! | `basalt_trustd_rate_limited_total` | — | calls refused by the per-peer rate limit |
//! | `basalt_trustd_locked_out_total` | — | calls refused because the peer is locked out after bad tokens |
//! | `basalt_trustd_handshake_failures_total` | `reason` | failed TLS handshakes |
//! | `basalt_cert_not_after_seconds` | `cert` = `ca`, `server` | expiry of the issuing CA and trustd's own certificate |
//!
//! No label carries a peer address or a token: a scrape reveals counts only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use basalt_config::TrustdConfig;
use basalt_grpc::metrics::{MetricsListener, ServingGuard, TextEncoder, earliest_not_after};
use basalt_grpc::{HandshakeFailure, HandshakeStatsHandle};

use crate::error::Error;

/// trustd's counters; relaxed atomics, bumped on the request path.
#[derive(Debug, Default)]
pub(crate) struct TrustdMetrics {
    issued: AtomicU64,
    token_failures: AtomicU64,
    rate_limited: AtomicU64,
    locked_out: AtomicU64,
}

impl TrustdMetrics {
    pub(crate) fn issued(&self) {
        self.issued.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn token_failure(&self) {
        self.token_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn locked_out(&self) {
        self.locked_out.fetch_add(1, Ordering::Relaxed);
    }
}

/// The metrics endpoint of one trustd: bound in `Server::bind`, served alongside the API.
#[derive(Debug)]
pub(crate) struct Endpoint {
    listener: MetricsListener,
    scrape: Arc<Scrape>,
}

#[derive(Debug)]
struct Scrape {
    counters: Arc<TrustdMetrics>,
    handshakes: HandshakeStatsHandle,
    ca: PathBuf,
    server: PathBuf,
}

impl Endpoint {
    /// Binds `config.metrics` if set; `None` when metrics are off (the default).
    pub(crate) async fn bind(
        config: &TrustdConfig,
        counters: Arc<TrustdMetrics>,
        handshakes: HandshakeStatsHandle,
    ) -> Result<Option<Self>, Error> {
        let Some(addr) = config.metrics else {
            return Ok(None);
        };
        let listener = MetricsListener::bind(addr)
            .await
            .map_err(|source| Error::BindMetrics { addr, source })?;
        Ok(Some(Self {
            listener,
            scrape: Arc::new(Scrape {
                counters,
                handshakes,
                ca: config.ca.cert.clone(),
                server: config.tls.cert.clone(),
            }),
        }))
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves scrapes until the returned guard is dropped.
    pub(crate) fn spawn(self) -> ServingGuard {
        let scrape = self.scrape;
        self.listener
            .serve_until_dropped(Arc::new(move || scrape.render()))
    }
}

impl Scrape {
    fn render(&self) -> String {
        let mut text = TextEncoder::new();
        let counters = &*self.counters;
        let simple = [
            (
                "basalt_trustd_issued_total",
                "Certificates issued (journaled and returned).",
                &counters.issued,
            ),
            (
                "basalt_trustd_token_failures_total",
                "Calls refused for a missing, unknown or expired join token.",
                &counters.token_failures,
            ),
            (
                "basalt_trustd_rate_limited_total",
                "Calls refused by the per-peer rate limit.",
                &counters.rate_limited,
            ),
            (
                "basalt_trustd_locked_out_total",
                "Calls refused because the peer is locked out after bad tokens.",
                &counters.locked_out,
            ),
        ];
        for (name, help, counter) in simple {
            text.family(name, "counter", help);
            text.sample(name, &[], counter.load(Ordering::Relaxed));
        }

        let handshakes = self.handshakes.snapshot();
        text.family(
            "basalt_trustd_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by reason.",
        );
        for reason in HandshakeFailure::ALL {
            text.sample(
                "basalt_trustd_handshake_failures_total",
                &[("reason", reason.as_str())],
                handshakes.failed(reason),
            );
        }

        text.family(
            "basalt_cert_not_after_seconds",
            "gauge",
            "Expiry (Unix time) of the issuing CA and of trustd's server certificate.",
        );
        for (name, path) in [("ca", &self.ca), ("server", &self.server)] {
            // A file unreadable right now (mid-rotation) leaves its sample out.
            if let Some(not_after) = earliest_not_after(path) {
                text.sample(
                    "basalt_cert_not_after_seconds",
                    &[("cert", name)],
                    not_after,
                );
            }
        }
        text.finish()
    }
}
