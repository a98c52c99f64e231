//! apid's Prometheus metrics: what is counted, and how it is rendered for `GET /metrics`
//! (served by `basalt_grpc::metrics` when `metrics:` is set in apid's config; off by default).
//!
//! | family | labels | source |
//! | --- | --- | --- |
//! | `basalt_apid_requests_total` | `method`, `code` | every audited call, when its record is written |
//! | `basalt_apid_authz_denials_total` | `method` | calls the rules table refused |
//! | `basalt_apid_forwarded_total` | `target` | allowed calls routed by `node`/`nodes` metadata, per named node (a fan-out counts each) |
//! | `basalt_apid_call_duration_seconds` (histogram) | `target` | allowed unary calls, from routing to the end of the response: `local` (this node's machined), the node named by `node`/`nodes` when there is one, `fanout` for several; a fan-out also times each node's part under that node (or `local`) |
//! | `basalt_apid_handshake_failures_total` | `reason` | the TLS accept loop's counters |
//! | `basalt_apid_handshakes_total` | — | completed handshakes |
//! | `basalt_apid_audit_dropped_total` | — | audit records dropped because the writer was behind |
//! | `basalt_apid_audit_write_failed_total` | — | audit records lost because the sink refused them (a full disk, an I/O error) |
//! | `basalt_cert_not_after_seconds` | `cert` = `ca`, `server`, `client` | the credential files, read at each scrape |
//!
//! Label cardinality is bounded by construction: `method` is one of basalt's declared methods
//! (plus apid's own health and reflection methods) or `unknown`, whatever path a client sends;
//! `code` is one of the 17 gRPC codes; `target` is capped at [`MAX_TARGETS`] distinct values,
//! after which further targets count as `other`. Streaming calls are left out of the duration
//! histogram: a `logs -f` lasts as long as someone watches, which says nothing about latency.
//!
//! Counters are relaxed atomics on the request path: no lock, no allocation (calls routed to
//! another node take a lock, next to a network hop).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt_config::ApidConfig;
use basalt_grpc::HandshakeStatsHandle;
use basalt_grpc::metrics::{MetricsListener, ServingGuard, TextEncoder, earliest_not_after};
use tonic::Code;

use crate::audit::{AuditLog, code_name};
use crate::error::Error;

/// apid's own methods (answered locally, not in basalt's descriptor list) that get their own
/// `method` label rather than `unknown`, and whether each is unary.
const LOCAL_METHODS: &[(&str, bool)] = &[
    ("/grpc.health.v1.Health/Check", true),
    ("/grpc.health.v1.Health/Watch", false),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        false,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        false,
    ),
];

/// The label of a method path that is not a known method.
pub(crate) const UNKNOWN_METHOD: &str = "unknown";

/// Most distinct `target` label values kept for forwarded calls; the rest count as `other`.
pub(crate) const MAX_TARGETS: usize = 256;

/// Upper bounds (seconds) of the duration histogram's buckets: from a local call's fraction of
/// a millisecond to a slow remote node's seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `target` of calls to several nodes in the duration histogram.
const FANOUT_TARGET: &str = "fanout";

/// The `target` of calls served by this node's machined.
const LOCAL_TARGET: &str = "local";

/// One duration histogram: a count per bucket (not cumulative; rendering adds them up), the
/// total count and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, duration: Duration) {
        // The count first and read last (see `render`), so +Inf is never below a finite bucket.
        self.count.fetch_add(1, Ordering::Relaxed);
        let seconds = duration.as_secs_f64();
        if let Some(bucket) = DURATION_BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name` for `target`.
    fn render(&self, text: &mut TextEncoder, name: &str, target: &str) {
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0;
        for (le, bucket) in DURATION_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = le.to_string();
            text.sample(&bucket_name, &[("target", target), ("le", &le)], cumulative);
        }
        // Read after the buckets, which `observe` bumps after the count.
        let count = self.count.load(Ordering::Relaxed);
        text.sample(&bucket_name, &[("target", target), ("le", "+Inf")], count);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        text.sample(&format!("{name}_sum"), &[("target", target)], sum);
        text.sample(&format!("{name}_count"), &[("target", target)], count);
    }
}

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
    /// `[row]`: whether the method is unary (only those are timed).
    unary: Vec<bool>,
    /// Durations of calls served here, of fan-outs, and of calls to one other node by target.
    local_durations: Histogram,
    fanout_durations: Histogram,
    routed_durations: Mutex<BTreeMap<String, Histogram>>,
    /// Audit records dropped because the writer was behind.
    audit_dropped: AtomicU64,
    /// Audit records lost because writing them failed.
    audit_write_failed: AtomicU64,
}

impl Default for ApidMetrics {
    fn default() -> Self {
        let names: Vec<&'static str> = basalt_api::METHODS
            .iter()
            .map(|m| m.path)
            .chain(LOCAL_METHODS.iter().map(|(path, _)| *path))
            .collect();
        let rows = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let count = names.len() + 1;
        // Rows as in `names`; an unknown path (the last row) is not timed.
        let unary = basalt_api::METHODS
            .iter()
            .map(|m| !m.client_streaming && !m.server_streaming)
            .chain(LOCAL_METHODS.iter().map(|(_, unary)| *unary))
            .chain([false])
            .collect();
        Self {
            rows,
            names,
            requests: (0..count).map(|_| Default::default()).collect(),
            denials: (0..count).map(|_| AtomicU64::new(0)).collect(),
            forwarded: Mutex::new(BTreeMap::new()),
            unary,
            local_durations: Histogram::default(),
            fanout_durations: Histogram::default(),
            routed_durations: Mutex::new(BTreeMap::new()),
            audit_dropped: AtomicU64::new(0),
            audit_write_failed: AtomicU64::new(0),
        }
    }
}

/// A method's row in the counters, looked up once per finished call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MethodRow(usize);

impl ApidMetrics {
    /// The row of `method` (a path nobody declared shares the `unknown` row).
    pub(crate) fn method_row(&self, method: &str) -> MethodRow {
        MethodRow(self.row(method))
    }

    fn row(&self, method: &str) -> usize {
        self.rows.get(method).copied().unwrap_or(self.names.len())
    }

    fn label(&self, row: usize) -> &'static str {
        self.names.get(row).copied().unwrap_or(UNKNOWN_METHOD)
    }

    /// Counts one finished call with the status it ended with.
    pub(crate) fn record_call(&self, MethodRow(row): MethodRow, code: Code) {
        if let Some(counters) = self.requests.get(row) {
            counters[code as usize % CODES.len()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one call the rules table refused.
    pub(crate) fn record_denial(&self, MethodRow(row): MethodRow) {
        if let Some(counter) = self.denials.get(row) {
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

    /// Times one allowed call routed to `targets` (none: served here); streaming methods are
    /// not timed.
    pub(crate) fn record_duration(
        &self,
        MethodRow(row): MethodRow,
        targets: &[String],
        duration: Duration,
    ) {
        if !self.unary.get(row).copied().unwrap_or(false) {
            return;
        }
        match targets {
            [] => self.local_durations.observe(duration),
            [target] => self.observe_routed(target, duration),
            _ => self.fanout_durations.observe(duration),
        }
    }

    /// Times one node's part of a unary fan-out, from the request to its last byte or its
    /// failure, under the node's name (`local` when it is this node).
    pub(crate) fn record_fanout_node(&self, target: &str, local: bool, duration: Duration) {
        if local {
            self.local_durations.observe(duration);
        } else {
            self.observe_routed(target, duration);
        }
    }

    fn observe_routed(&self, target: &str, duration: Duration) {
        let mut routed = self
            .routed_durations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(histogram) = routed.get(target) {
            histogram.observe(duration);
        } else {
            let key = if routed.len() < MAX_TARGETS {
                target
            } else {
                "other"
            };
            routed.entry(key.to_owned()).or_default().observe(duration);
        }
    }

    /// Counts one audit record dropped because the writer was behind.
    pub(crate) fn record_audit_dropped(&self) {
        self.audit_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `records` audit records lost because the sink refused them.
    pub(crate) fn record_audit_write_failed(&self, records: u64) {
        self.audit_write_failed
            .fetch_add(records, Ordering::Relaxed);
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

        const DURATION: &str = "basalt_apid_call_duration_seconds";
        text.family(
            DURATION,
            "histogram",
            "Time from routing to the end of the response of allowed unary calls, by target: \
             local (this node's machined), the node named by node/nodes metadata, or fanout \
             (a fan-out also times each node's part under that node).",
        );
        calls
            .local_durations
            .render(&mut text, DURATION, LOCAL_TARGET);
        {
            let routed = calls
                .routed_durations
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (target, histogram) in routed.iter() {
                histogram.render(&mut text, DURATION, target);
            }
        }
        calls
            .fanout_durations
            .render(&mut text, DURATION, FANOUT_TARGET);

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
            "basalt_apid_audit_write_failed_total",
            "counter",
            "Audit records lost because the sink refused them (a full disk, an I/O error).",
        );
        text.sample(
            "basalt_apid_audit_write_failed_total",
            &[],
            calls.audit_write_failed.load(Ordering::Relaxed),
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
        metrics.record_call(
            metrics.method_row("/machine.MachineService/Version"),
            Code::Ok,
        );
        for i in 0..1000 {
            let row = metrics.method_row(&format!("/attacker.Chosen/Path{i}"));
            metrics.record_call(row, Code::PermissionDenied);
        }
        metrics.record_call(metrics.method_row("/grpc.health.v1.Health/Check"), Code::Ok);
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
    fn unary_calls_are_timed_by_target_and_streams_are_not() {
        let metrics = Arc::new(ApidMetrics::default());
        let ms = Duration::from_millis;
        let version = "/machine.MachineService/Version";
        metrics.record_duration(metrics.method_row(version), &[], ms(3));
        metrics.record_duration(metrics.method_row(version), &[], ms(30));
        metrics.record_duration(
            metrics.method_row(version),
            &["node-2".to_owned()],
            ms(20_000),
        );
        metrics.record_duration(
            metrics.method_row(version),
            &["a".to_owned(), "b".to_owned()],
            ms(7),
        );
        metrics.record_duration(
            metrics.method_row("/machine.MachineService/Logs"),
            &[],
            ms(1),
        );
        metrics.record_duration(
            metrics.method_row("/grpc.health.v1.Health/Watch"),
            &[],
            ms(1),
        );
        metrics.record_duration(metrics.method_row("/not.Declared/Method"), &[], ms(1));
        metrics.record_duration(
            metrics.method_row("/grpc.health.v1.Health/Check"),
            &[],
            ms(1),
        );
        let text = metrics.render_for_test();
        for sample in [
            "# TYPE basalt_apid_call_duration_seconds histogram",
            // Cumulative: 1 ms (the health check) and 3 ms, then the 30 ms call.
            "basalt_apid_call_duration_seconds_bucket{target=\"local\",le=\"0.001\"} 1\n",
            "basalt_apid_call_duration_seconds_bucket{target=\"local\",le=\"0.005\"} 2\n",
            "basalt_apid_call_duration_seconds_bucket{target=\"local\",le=\"0.025\"} 2\n",
            "basalt_apid_call_duration_seconds_bucket{target=\"local\",le=\"0.05\"} 3\n",
            "basalt_apid_call_duration_seconds_bucket{target=\"local\",le=\"+Inf\"} 3\n",
            "basalt_apid_call_duration_seconds_sum{target=\"local\"} 0.034\n",
            "basalt_apid_call_duration_seconds_count{target=\"local\"} 3\n",
            // Slower than the last bucket: only in +Inf.
            "basalt_apid_call_duration_seconds_bucket{target=\"node-2\",le=\"10\"} 0\n",
            "basalt_apid_call_duration_seconds_bucket{target=\"node-2\",le=\"+Inf\"} 1\n",
            "basalt_apid_call_duration_seconds_count{target=\"fanout\"} 1\n",
        ] {
            assert!(text.contains(sample), "{sample} in\n{text}");
        }
    }

    #[test]
    fn each_node_of_a_fan_out_is_timed_under_its_name() {
        let metrics = Arc::new(ApidMetrics::default());
        let ms = Duration::from_millis;
        metrics.record_fanout_node("node-2", false, ms(2));
        metrics.record_fanout_node("node-1", true, ms(2));
        let text = metrics.render_for_test();
        for sample in [
            "basalt_apid_call_duration_seconds_count{target=\"node-2\"} 1\n",
            "basalt_apid_call_duration_seconds_count{target=\"local\"} 1\n",
            "basalt_apid_call_duration_seconds_count{target=\"fanout\"} 0\n",
        ] {
            assert!(text.contains(sample), "{sample} in\n{text}");
        }
        assert!(!text.contains("target=\"node-1\""), "{text}");
    }

    #[test]
    fn duration_targets_are_capped() {
        let metrics = ApidMetrics::default();
        let version = "/machine.MachineService/Version";
        for i in 0..MAX_TARGETS + 10 {
            metrics.record_duration(
                metrics.method_row(version),
                &[format!("node-{i}")],
                Duration::from_millis(1),
            );
        }
        let routed = metrics.routed_durations.lock().expect("lock");
        assert_eq!(routed.len(), MAX_TARGETS + 1);
        let other = routed.get("other").expect("other");
        assert_eq!(other.count.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn code_columns_follow_the_wire_numbers() {
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(*code as usize, i);
        }
    }
}
