//! apid's Prometheus metrics: what is counted, and how it is rendered for `GET /metrics`
//! (served by `basalt_grpc::metrics` when `metrics:` is set in apid's config; off by default).
//!
//! | family | labels | source |
//! | --- | --- | --- |
//! | `basalt_apid_requests_total` | `method`, `code` | every audited call, when its record is written |
//! | `basalt_apid_authz_denials_total` | `method` | calls the rules table refused |
//! | `basalt_apid_forwarded_total` | `target` | allowed calls routed by `node`/`nodes` metadata, per named node (a fan-out counts each) |
//! | `basalt_apid_handshake_failures_total` | `reason` | the TLS accept loop's counters |
//! | `basalt_apid_handshakes_total` | — | completed handshakes |
//! | `basalt_apid_audit_dropped_total` | — | audit records dropped because the writer was behind |
//! | `basalt_cert_not_after_seconds` | `cert` = `ca`, `server`, `client` | the credential files, read at each scrape |
//!
//! Label cardinality is bounded by construction: `method` is one of basalt's declared methods
//! (plus apid's own health and reflection methods) or `unknown`, whatever path a client sends;
//! `code` is one of the 17 gRPC codes; `target` is capped at [`MAX_TARGETS`] distinct values,
//! after which further targets count as `other`.
//!
//! Counters are relaxed atomics on the request path: no lock, no allocation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use basalt_config::ApidConfig;
use basalt_grpc::HandshakeStatsHandle;
use basalt_grpc::metrics::{MetricsListener, ServingGuard, TextEncoder, earliest_not_after};
use tonic::Code;

use crate::audit::{AuditLog, code_name};
use crate::error::Error;

/// apid's own methods (answered locally, not in basalt's descriptor list) that get their own
/// `method` label rather than `unknown`.
const LOCAL_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The label of a method path that is not a known method.
pub(crate) const UNKNOWN_METHOD: &str = "unknown";

/// Most distinct `target` label values kept for forwarded calls; the rest count as `other`.
pub(crate) const MAX_TARGETS: usize = 256;

/// The gRPC codes in wire order (0..=16), the column index of the request counters.
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The call counters of one apid; shared by every connection.
#[derive(Debug)]
pub(crate) struct ApidMetrics {
    /// Method path → row; the last row (`names.len()`) is `unknown`.
    rows: HashMap<&'static str, usize>,
    /// Row → label value.
    names: Vec<&'static str>,
    /// `[row][code]`.
    requests: Vec<[AtomicU64; 17]>,
    /// `[row]`.
    denials: Vec<AtomicU64>,
    /// Forwarded calls by target; forwarding is rare enough next to a hop for a lock.
    forwarded: Mutex<BTreeMap<String, u64>>,
    /// Audit records dropped because the writer was behind.
    audit_dropped: AtomicU64,
}

impl Default for ApidMetrics {
    fn default() -> Self {
        let names: Vec<&'static str> = basalt_api::METHODS
            .iter()
            .map(|m| m.path)
            .chain(LOCAL_METHODS.iter().copied())
            .collect();
        let rows = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let count = names.len() + 1;
        Self {
            rows,
            names,
            requests: (0..count).map(|_| Default::default()).collect(),
            denials: (0..count).map(|_| AtomicU64::new(0)).collect(),
            forwarded: Mutex::new(BTreeMap::new()),
            audit_dropped: AtomicU64::new(0),
        }
    }
}

impl ApidMetrics {
    fn row(&self, method: &str) -> usize {
        self.rows.get(method).copied().unwrap_or(self.names.len())
    }

    fn label(&self, row: usize) -> &'static str {
        self.names.get(row).copied().unwrap_or(UNKNOWN_METHOD)
    }

    /// Counts one finished call with the status it ended with.
    pub(crate) fn record_call(&self, method: &str, code: Code) {
        let row = self.row(method);
        if let Some(counters) = self.requests.get(row) {
            counters[code as usize % CODES.len()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one call the rules table refused.
    pub(crate) fn record_denial(&self, method: &str) {
        if let Some(counter) = self.denials.get(self.row(method)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one allowed call routed to `target` (a node named by `node`/`nodes` metadata;
    /// a fan-out counts once per node).
    pub(crate) fn record_forward(&self, target: &str) {
        // A poisoned lock only means another thread panicked mid-increment; the map is fine.
        let mut forwarded = self
            .forwarded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = forwarded.get_mut(target) {
            *count += 1;
        } else if forwarded.len() < MAX_TARGETS {
            forwarded.insert(target.to_owned(), 1);
        } else {
            *forwarded.entry("other".to_owned()).or_default() += 1;
        }
    }

    /// Counts one audit record dropped because the writer was behind.
    pub(crate) fn record_audit_dropped(&self) {
        self.audit_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text of these counters alone (tests).
    #[cfg(test)]
    pub(crate) fn render_for_test(self: &Arc<Self>) -> String {
        Scrape {
            calls: Arc::clone(self),
            handshakes: HandshakeStatsHandle::default(),
            certs: CertFiles {
                ca: PathBuf::new(),
                server: PathBuf::new(),
                client: None,
            },
        }
        .render()
    }

    /// How many calls to `method` ended with `code` (tests).
    #[cfg(test)]
    pub(crate) fn calls(&self, method: &str, code: Code) -> u64 {
        self.requests[self.row(method)][code as usize].load(Ordering::Relaxed)
    }
}

/// Everything a scrape reads: the counters, the handshake stats and the paths of the
/// certificates whose expiry is exported. It holds no `AuditLog`: the audit writer ends only
/// once every sender is gone, and a scrape must not keep it alive.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub(crate) calls: Arc<ApidMetrics>,
    pub(crate) handshakes: HandshakeStatsHandle,
    pub(crate) certs: CertFiles,
}

/// The credential files behind `basalt_cert_not_after_seconds`.
#[derive(Clone, Debug)]
pub(crate) struct CertFiles {
    ca: PathBuf,
    server: PathBuf,
    client: Option<PathBuf>,
}

impl CertFiles {
    pub(crate) fn of(config: &ApidConfig) -> Self {
        Self {
            ca: config.tls.ca.clone(),
            server: config.tls.cert.clone(),
            client: config.forwarding.as_ref().map(|f| f.cert.clone()),
        }
    }
}

impl Scrape {
    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        let mut text = TextEncoder::new();
        let calls = &*self.calls;

        text.family(
            "basalt_apid_requests_total",
            "counter",
            "Calls apid finished, by method and gRPC status code.",
        );
        for (row, counters) in calls.requests.iter().enumerate() {
            for (code, counter) in CODES.iter().zip(counters) {
                let value = counter.load(Ordering::Relaxed);
                // Zero series are left out: 100+ methods × 17 codes would be mostly zeros.
                if value > 0 {
                    let labels = [("method", calls.label(row)), ("code", code_name(*code))];
                    text.sample("basalt_apid_requests_total", &labels, value);
                }
            }
        }

        text.family(
            "basalt_apid_authz_denials_total",
            "counter",
            "Calls the rules table refused, by method.",
        );
        for (row, counter) in calls.denials.iter().enumerate() {
            let value = counter.load(Ordering::Relaxed);
            if value > 0 {
                let labels = [("method", calls.label(row))];
                text.sample("basalt_apid_authz_denials_total", &labels, value);
            }
        }

        text.family(
            "basalt_apid_forwarded_total",
            "counter",
            "Allowed calls routed by node/nodes metadata, by target node.",
        );
        {
            let forwarded = calls
                .forwarded
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (target, value) in forwarded.iter() {
                text.sample("basalt_apid_forwarded_total", &[("target", target)], value);
            }
        }

        let handshakes = self.handshakes.snapshot();
        text.family(
            "basalt_apid_handshakes_total",
            "counter",
            "TLS handshakes that completed.",
        );
        text.sample("basalt_apid_handshakes_total", &[], handshakes.completed);
        text.family(
            "basalt_apid_handshake_failures_total",
            "counter",
            "TLS handshakes that failed, by reason.",
        );
        for reason in basalt_grpc::HandshakeFailure::ALL {
            text.sample(
                "basalt_apid_handshake_failures_total",
                &[("reason", reason.as_str())],
                handshakes.failed(reason),
            );
        }

        text.family(
            "basalt_apid_audit_dropped_total",
            "counter",
            "Audit records dropped because the writer was behind.",
        );
        text.sample(
            "basalt_apid_audit_dropped_total",
            &[],
            calls.audit_dropped.load(Ordering::Relaxed),
        );

        text.family(
            "basalt_cert_not_after_seconds",
            "gauge",
            "Expiry (Unix time) of apid's certificates: the earliest accepted client CA, the \
             server certificate and the forwarding client certificate.",
        );
        let certs = [
            ("ca", Some(&self.certs.ca)),
            ("server", Some(&self.certs.server)),
            ("client", self.certs.client.as_ref()),
        ];
        for (name, path) in certs {
            // A file that cannot be read right now (mid-rotation) leaves its sample out; the
            // reloader logs the problem.
            if let Some(not_after) = path.and_then(|path| earliest_not_after(path)) {
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

/// The metrics endpoint of one apid: bound in `Server::bind`, served alongside the API.
#[derive(Debug)]
pub(crate) struct Endpoint {
    listener: MetricsListener,
    scrape: Arc<Scrape>,
}

impl Endpoint {
    /// Binds `config.metrics` if set; `None` when metrics are off (the default).
    pub(crate) async fn bind(
        config: &ApidConfig,
        audit: &AuditLog,
        handshakes: HandshakeStatsHandle,
    ) -> Result<Option<Self>, Error> {
        let Some(addr) = config.metrics else {
            return Ok(None);
        };
        let listener = MetricsListener::bind(addr)
            .await
            .map_err(|source| Error::BindMetrics { addr, source })?;
        let scrape = Scrape {
            calls: Arc::clone(audit.metrics()),
            handshakes,
            certs: CertFiles::of(config),
        };
        Ok(Some(Self {
            listener,
            scrape: Arc::new(scrape),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_share_one_label_and_known_ones_keep_theirs() {
        let metrics = ApidMetrics::default();
        metrics.record_call("/machine.MachineService/Version", Code::Ok);
        for i in 0..1000 {
            metrics.record_call(&format!("/attacker.Chosen/Path{i}"), Code::PermissionDenied);
        }
        metrics.record_call("/grpc.health.v1.Health/Check", Code::Ok);
        assert_eq!(
            metrics.calls("/machine.MachineService/Version", Code::Ok),
            1
        );
        assert_eq!(
            metrics.calls("/some.Other/Path", Code::PermissionDenied),
            1000
        );
        assert_eq!(metrics.calls("/grpc.health.v1.Health/Check", Code::Ok), 1);
    }

    #[test]
    fn forward_targets_are_capped() {
        let metrics = ApidMetrics::default();
        for i in 0..MAX_TARGETS + 10 {
            metrics.record_forward(&format!("node-{i}"));
        }
        metrics.record_forward("node-0");
        let forwarded = metrics.forwarded.lock().expect("lock");
        assert_eq!(forwarded.len(), MAX_TARGETS + 1);
        assert_eq!(forwarded.get("other"), Some(&10));
        assert_eq!(forwarded.get("node-0"), Some(&2));
    }

    #[test]
    fn code_columns_follow_the_wire_numbers() {
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(*code as usize, i);
        }
    }
}
