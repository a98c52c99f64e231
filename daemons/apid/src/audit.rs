//! The audit log: one JSON object per line and per call.
//!
//! ```json
//! {"time":"2026-11-22T03:20:01.123456Z","peer":"10.0.0.5:53122","cn":"alice",
//!  "serial":"5e1f…","fingerprint":"9c0a…","roles":["os:reader"],
//!  "method":"/machine.MachineService/Reboot","decision":"deny","code":"PERMISSION_DENIED",
//!  "duration_ms":0.182,"reason":"/machine.MachineService/Reboot needs one of os:admin, os:operator; the certificate holds os:reader"}
//! ```
//!
//! (one line in the file). `time` is when the call arrived (RFC 3339, UTC); `duration_ms` runs
//! until the response ended — for streams, until the final trailer. `cn` is `null` when the
//! certificate has none. `roles` are the effective roles; when an `os:impersonator` peer (another
//! apid) asserted them, `impersonated` is `true`, `cert_roles` holds the peer certificate's own
//! roles and `caller` the original caller it named (its `cn=` and `serial=`); `via` is the node
//! that forwarded the call (its `proxyfrom`). `targets` lists the other nodes a call was routed
//! to (`node` / `nodes`, as named). `code` is the gRPC status name from the
//! response headers or trailers, `CANCELLED` when the client went away before the end, and
//! `UNKNOWN` when the response carried no status. `reason` is present on denials.
//!
//! Records are written by one dedicated thread that owns the file. The request path only moves
//! the record (already-shared parts by reference count) into a channel, without blocking and
//! without formatting anything; the thread renders the JSON, writes whatever has queued up in one
//! go and flushes as soon as the queue is empty. If the writer falls [`QUEUE`] records behind,
//! records are dropped and counted (and a warning is logged) rather than stalling calls. If the
//! sink refuses writes (a full disk), the records it cannot take are lost and counted too; see
//! [`Writer`].
//!
//! Why a thread and not a task writing through `tokio::fs`: every `tokio::fs` write is a hand-off
//! to the blocking pool and back, two thread wake-ups per batch on the request path's runtime.
//! The thread also waits [`COALESCE`] after each batch before it goes back to sleep on the
//! channel: under steady load the next records arrive within that time, so senders find it
//! awake and never pay for waking it, and a busy apid writes once per interval, not once per call.
//! The loop is `basalt_daemon::drain_in_batches`, which the daemons' stderr shares.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use basalt_config::AuditSink;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::oneshot;
use tonic::Code;

use crate::error::Error;
use crate::metrics::ApidMetrics;
use crate::peer::{CallIdentity, Peer};

/// Records waiting for the writer before new ones are dropped.
pub(crate) const QUEUE: usize = 16 * 1024;

/// How long the writer lingers after a batch for more records before it sleeps on the channel.
/// Bounds how long a record can wait in the queue; see the module docs.
pub(crate) const COALESCE: Duration = Duration::from_millis(2);

/// The writer's output buffer; a larger batch is written in several system calls.
const BUFFER: usize = 64 * 1024;

/// Where the request path sends finished records. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Entry>,
    /// Records sent and not yet taken by the writer; bounds the (unbounded, lazily allocated)
    /// channel at [`QUEUE`].
    queued: Arc<AtomicUsize>,
    dropped: AtomicU64,
    /// Call counters, bumped as each record is finished (`crate::metrics`).
    metrics: Arc<ApidMetrics>,
}

/// The running writer thread; see [`AuditLog::open`].
#[derive(Debug)]
pub(crate) struct AuditWriter {
    done: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl AuditWriter {
    /// Waits until the writer has written and flushed every record and ended, which happens
    /// once every [`AuditLog`] clone (and every record in progress) is gone.
    pub(crate) async fn finished(self) {
        // An error only means the thread ended without saying so (it panicked); either way
        // it is gone and `join` returns at once.
        let _ = self.done.await;
        let _ = self.thread.join();
    }
}

impl AuditLog {
    /// Opens the sink (a file is created 0600 and appended to) and starts the writer thread,
    /// which ends after every `AuditLog` clone is dropped and the queue is written out.
    pub(crate) fn open(sink: &AuditSink) -> Result<(Self, AuditWriter), Error> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Stderr => Box::new(std::io::stderr()),
            AuditSink::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| Error::OpenAudit {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::<ApidMetrics>::default();
        let (done_tx, done) = oneshot::channel();
        let mut writer = Writer::new(out, Arc::clone(&queued), Arc::clone(&metrics));
        let thread = std::thread::Builder::new()
            .name("apid-audit".to_owned())
            .spawn(move || {
                // Until every sender is gone and the queue is empty.
                basalt_daemon::drain_in_batches(&rx, COALESCE, &mut writer);
                writer.finish();
                let _ = done_tx.send(());
            })
            .map_err(Error::StartAuditWriter)?;
        let log = Self {
            inner: Arc::new(Inner {
                tx,
                queued,
                dropped: AtomicU64::new(0),
                metrics,
            }),
        };
        Ok((log, AuditWriter { done, thread }))
    }

    /// Starts the record of one call; it is written when the returned guard is dropped.
    pub(crate) fn start(
        &self,
        peer: &Arc<Peer>,
        call: &Arc<CallIdentity>,
        method: String,
    ) -> AuditGuard {
        AuditGuard {
            log: self.clone(),
            started: Instant::now(),
            permit: None,
            entry: Some(Entry {
                time: OffsetDateTime::now_utc(),
                duration: Duration::ZERO,
                peer: Arc::clone(peer),
                call: Arc::clone(call),
                method,
                decision: Decision::Allow,
                reason: None,
                code: None,
                finished: false,
                targets: Vec::new(),
            }),
        }
    }

    /// The call counters fed by finished records.
    pub(crate) fn metrics(&self) -> &Arc<ApidMetrics> {
        &self.inner.metrics
    }

    fn send(&self, entry: Entry) {
        let inner = &*self.inner;
        // Reserve a place first, so the queue never holds more than QUEUE records.
        let sent =
            inner.queued.fetch_add(1, Ordering::Relaxed) < QUEUE && inner.tx.send(entry).is_ok();
        if !sent {
            inner.queued.fetch_sub(1, Ordering::Relaxed);
            let dropped = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            inner.metrics.record_audit_dropped();
            tracing::warn!(
                audit.dropped = dropped,
                "Audit writer is behind; record dropped"
            );
        }
    }
}

/// The authorization outcome recorded for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Authorized (by the rules table, or a local service that needs no role).
    Allow,
    /// Refused by the rules table.
    Deny,
}

/// One call's record in progress; sent to the writer exactly once, when dropped.
#[derive(Debug)]
pub(crate) struct AuditGuard {
    log: AuditLog,
    started: Instant,
    /// Always `Some` until the guard is dropped.
    entry: Option<Entry>,
    /// The call's in-flight slot (`crate::limits`): the guard lives exactly as long as the
    /// call's response, so the slot is freed when the call ends.
    permit: Option<crate::limits::CallPermit>,
}

/// What the writer renders into one line.
#[derive(Debug)]
struct Entry {
    time: OffsetDateTime,
    duration: Duration,
    peer: Arc<Peer>,
    call: Arc<CallIdentity>,
    method: String,
    decision: Decision,
    reason: Option<String>,
    code: Option<Code>,
    /// The response ended normally (trailers or end of stream seen), so a missing code means
    /// "no status sent" rather than "cancelled".
    finished: bool,
    /// The other nodes the call was routed to (`node` / `nodes`), as named; empty when served
    /// here.
    targets: Vec<String>,
}

impl AuditGuard {
    /// Records a denial and its explanation.
    pub(crate) fn deny(&mut self, reason: String) {
        if let Some(entry) = self.entry.as_mut() {
            entry.decision = Decision::Deny;
            entry.reason = Some(reason);
        }
    }

    /// Records the gRPC status of the response (the first one seen wins: headers of a
    /// trailers-only response, otherwise the final trailer).
    pub(crate) fn set_code(&mut self, code: Code) {
        if let Some(entry) = self.entry.as_mut() {
            entry.code.get_or_insert(code);
        }
    }

    /// Records the nodes the call is routed to (none: served by this node).
    pub(crate) fn set_targets(&mut self, targets: Vec<String>) {
        if let Some(entry) = self.entry.as_mut() {
            entry.targets = targets;
        }
    }

    /// Keeps the call's in-flight slot until the record is written (the call has ended).
    pub(crate) fn hold(&mut self, permit: crate::limits::CallPermit) {
        self.permit = Some(permit);
    }

    /// The response body ended (with or without trailers).
    pub(crate) fn finish(&mut self) {
        if let Some(entry) = self.entry.as_mut() {
            entry.finished = true;
        }
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        entry.duration = self.started.elapsed();
        // Counted here, where method, decision and final code are all known, exactly once.
        let metrics = &self.log.inner.metrics;
        let code = entry.final_code();
        let row = metrics.method_row(&entry.method);
        metrics.record_call(row, code);
        if entry.decision == Decision::Deny && code == Code::PermissionDenied {
            metrics.record_denial(row);
        }
        if entry.decision == Decision::Allow {
            // Routed by `node`/`nodes` metadata: one count per named target.
            for target in &entry.targets {
                metrics.record_forward(target);
            }
            metrics.record_duration(row, &entry.targets, entry.duration);
        }
        tracing::debug!(
            grpc.method = %entry.method,
            peer.addr = %entry.peer.addr,
            grpc.code = code_name(entry.code.unwrap_or(Code::Unknown)),
            duration_ms = entry.duration.as_secs_f64() * 1000.0,
            "Call finished"
        );
        self.log.send(entry);
    }
}

impl Entry {
    /// The status the call ended with: the one seen, else `UNKNOWN` for a response that ended
    /// without one, else `CANCELLED` (the client went away first).
    fn final_code(&self) -> Code {
        match (self.code, self.finished) {
            (Some(code), _) => code,
            (None, true) => Code::Unknown,
            (None, false) => Code::Cancelled,
        }
    }

    /// Appends the record as one JSON line.
    fn render(&self, out: &mut Vec<u8>) {
        let code = self.final_code();
        let duration_ms = self.duration.as_secs_f64() * 1000.0;
        let (peer, call) = (&*self.peer, &*self.call);
        let record = Record {
            time: self.time.format(&Rfc3339).unwrap_or_default(),
            peer: &peer.addr_text,
            cn: peer.common_name.as_deref(),
            serial: &peer.serial,
            fingerprint: &peer.fingerprint,
            roles: Roles(&call.roles),
            impersonated: call.impersonated.then_some(true),
            cert_roles: call.impersonated.then_some(Roles(&peer.roles)),
            caller: call.impersonated.then_some(call.caller.as_str()),
            via: call.forwarded_from.as_deref(),
            targets: (!self.targets.is_empty()).then_some(self.targets.as_slice()),
            method: &self.method,
            decision: match self.decision {
                Decision::Allow => "allow",
                Decision::Deny => "deny",
            },
            code: code_name(code),
            // Microsecond precision is plenty and keeps lines short.
            duration_ms: (duration_ms * 1000.0).round() / 1000.0,
            reason: self.reason.as_deref(),
        };
        // Serializing plain strings and numbers into a Vec cannot fail.
        if serde_json::to_writer(&mut *out, &record).is_ok() {
            out.push(b'\n');
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    peer: &'a str,
    cn: Option<&'a str>,
    serial: &'a str,
    fingerprint: &'a str,
    roles: Roles<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_roles: Option<Roles<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    targets: Option<&'a [String]>,
    method: &'a str,
    decision: &'static str,
    code: &'static str,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// A role set as the sorted list of its strings (Talos `Set.Strings()`), written without
/// collecting them into a `Vec<String>` first.
struct Roles<'a>(&'a basalt_authz::RoleSet);

impl Serialize for Roles<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(basalt_authz::Role::as_str))
    }
}

/// The canonical gRPC status name (`OK`, `PERMISSION_DENIED`, …).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The writer thread's state.
///
/// A failed write loses exactly the record being added: `BufWriter` keeps what it could not
/// write of earlier records and writes it, in order, once the sink works again, but it does not
/// take a new record while its buffer cannot be emptied. Those lost records are counted
/// (`basalt_apid_audit_write_failed_total`), so a full disk is visible as a gap in the evidence
/// rather than a silent one.
struct Writer {
    queued: Arc<AtomicUsize>,
    metrics: Arc<ApidMetrics>,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The record being rendered (reused).
    line: Vec<u8>,
    /// The first failed write of the current batch, reported when it ends.
    written: std::io::Result<()>,
    /// Records of the current batch that could not be written.
    lost_in_batch: u64,
    /// Records lost since writes began failing; `None` while they work.
    lost_since_failure: Option<u64>,
}

impl Writer {
    fn new(
        out: Box<dyn Write + Send>,
        queued: Arc<AtomicUsize>,
        metrics: Arc<ApidMetrics>,
    ) -> Self {
        Self {
            queued,
            metrics,
            out: BufWriter::with_capacity(BUFFER, out),
            line: Vec::with_capacity(512),
            written: Ok(()),
            lost_in_batch: 0,
            lost_since_failure: None,
        }
    }

    /// Counts the batch's losses and logs the first failure and the recovery, not every record.
    fn report(&mut self, result: std::io::Result<()>) {
        let lost = std::mem::take(&mut self.lost_in_batch);
        if lost > 0 {
            self.metrics.record_audit_write_failed(lost);
        }
        match (result, self.lost_since_failure) {
            (Err(err), None) => {
                self.lost_since_failure = Some(lost);
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    audit.lost = lost,
                    "Audit log write failed; records that do not fit in the writer's buffer \
                     are lost (counted in basalt_apid_audit_write_failed_total) until it works \
                     again"
                );
            }
            (Err(_), Some(total)) => self.lost_since_failure = Some(total + lost),
            (Ok(()), Some(total)) => {
                self.lost_since_failure = None;
                tracing::info!(audit.lost = total + lost, "Audit log writes work again");
            }
            (Ok(()), None) => {}
        }
    }

    /// After the last batch: whatever is still held could not be written and is lost with the
    /// thread, so it is counted and said (one record per line end held).
    fn finish(self) {
        let held = self.out.buffer();
        if !held.is_empty() {
            let lost = held.iter().filter(|&&b| b == b'\n').count() as u64;
            self.metrics.record_audit_write_failed(lost);
            tracing::error!(
                audit.lost = lost,
                "Audit records could not be written before the writer ended"
            );
        }
        // Dropping the `BufWriter` would try the sink once more; the count above is final.
        let _ = self.out.into_parts();
    }
}

/// `BufWriter` never splits a line across two writes, so lines stay whole on a shared stderr too.
impl basalt_daemon::Batch<Entry> for Writer {
    fn add(&mut self, entry: Entry) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.line.clear();
        entry.render(&mut self.line);
        drop(entry);
        if let Err(err) = self.out.write_all(&self.line) {
            self.lost_in_batch += 1;
            if self.written.is_ok() {
                self.written = Err(err);
            }
        }
    }

    fn end(&mut self) {
        let written = std::mem::replace(&mut self.written, Ok(()));
        let flushed = self.out.flush();
        self.report(written.and(flushed));
    }
}

#[cfg(test)]
mod tests {
    use basalt_authz::RoleSet;

    use super::*;

    fn peer() -> Arc<Peer> {
        Arc::new(Peer::new(
            "127.0.0.1:4000".parse().unwrap(),
            None,
            "abc".to_owned(),
            "00ff".to_owned(),
            RoleSet::parse(["os:impersonator"]),
        ))
    }

    #[tokio::test]
    async fn records_are_json_lines_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (log, writer) = AuditLog::open(&AuditSink::File(path.clone())).unwrap();
        let call = Arc::new(CallIdentity::new(
            RoleSet::parse(["os:reader"]),
            "cn=bob".to_owned(),
            true,
        ));
        let mut guard = log.start(&peer(), &call, "/machine.MachineService/Reboot".to_owned());
        guard.deny("no".to_owned());
        guard.set_code(Code::PermissionDenied);
        drop(guard);
        drop(log.start(&peer(), &call, "/machine.MachineService/Version".to_owned()));
        drop(log);
        writer.finished().await;

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["decision"], "deny");
        assert_eq!(first["code"], "PERMISSION_DENIED");
        assert_eq!(first["reason"], "no");
        assert_eq!(first["cn"], serde_json::Value::Null);
        assert_eq!(first["roles"], serde_json::json!(["os:reader"]));
        assert_eq!(first["cert_roles"], serde_json::json!(["os:impersonator"]));
        assert_eq!(first["caller"], "cn=bob");
        assert_eq!(first["peer"], "127.0.0.1:4000");
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
        // Dropped before the response ended: the client went away.
        assert_eq!(lines[1]["code"], "CANCELLED");
        assert_eq!(lines[1]["decision"], "allow");

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn records_are_written_while_apid_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (log, writer) = AuditLog::open(&AuditSink::File(path.clone())).unwrap();
        let call = Arc::clone(&peer().identity);
        let mut guard = log.start(&peer(), &call, "/machine.MachineService/Version".to_owned());
        guard.set_code(Code::Ok);
        guard.finish();
        drop(guard);
        // The log is still open: the record must reach the file soon anyway.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 1 {
                let record: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
                assert_eq!(record["code"], "OK");
                assert_eq!(record["roles"], serde_json::json!(["os:impersonator"]));
                assert!(record.get("caller").is_none(), "{record}");
                assert!(record.get("impersonated").is_none(), "{record}");
                break;
            }
            assert!(Instant::now() < deadline, "record not written: {text:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(log);
        writer.finished().await;
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _writer) =
            AuditLog::open(&AuditSink::File(dir.path().join("audit.log"))).unwrap();
        // Pretend the writer is QUEUE records behind.
        log.inner.queued.fetch_add(QUEUE, Ordering::Relaxed);
        let call = Arc::clone(&peer().identity);
        drop(log.start(&peer(), &call, "/x.Y/Z".to_owned()));
        assert_eq!(log.inner.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(log.inner.queued.load(Ordering::Relaxed), QUEUE);
        // The drop is exported (`basalt_apid_audit_dropped_total`) and the call still counted.
        assert!(
            log.metrics()
                .render_for_test()
                .contains("basalt_apid_audit_dropped_total 1\n")
        );
        assert_eq!(log.metrics().calls("/x.Y/Z", Code::Cancelled), 1);
    }

    #[test]
    fn finished_records_feed_the_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _writer) =
            AuditLog::open(&AuditSink::File(dir.path().join("audit.log"))).unwrap();
        let call = Arc::clone(&peer().identity);
        let mut routed = log.start(&peer(), &call, "/machine.MachineService/Version".to_owned());
        routed.set_targets(vec!["node-2".to_owned(), "node-3".to_owned()]);
        routed.set_code(Code::Ok);
        drop(routed);
        let mut denied = log.start(&peer(), &call, "/machine.MachineService/Reboot".to_owned());
        denied.set_targets(vec!["node-2".to_owned()]);
        denied.deny("needs os:admin".to_owned());
        denied.set_code(Code::PermissionDenied);
        drop(denied);
        let text = log.metrics().render_for_test();
        for line in [
            "basalt_apid_forwarded_total{target=\"node-2\"} 1\n",
            "basalt_apid_forwarded_total{target=\"node-3\"} 1\n",
            "basalt_apid_authz_denials_total{method=\"/machine.MachineService/Reboot\"} 1\n",
            "basalt_apid_requests_total{method=\"/machine.MachineService/Version\",code=\"OK\"} 1\n",
            // The allowed fan-out is timed; the denied call to node-2 is not.
            "basalt_apid_call_duration_seconds_count{target=\"fanout\"} 1\n",
            "basalt_apid_call_duration_seconds_count{target=\"local\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("target=\"node-2\",le="), "{text}");
    }

    /// A sink that refuses every write while `full` is set, as a full disk does.
    #[derive(Clone, Default)]
    struct Disk {
        full: Arc<std::sync::atomic::AtomicBool>,
        bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.full.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lost(metrics: &Arc<ApidMetrics>) -> u64 {
        let text = metrics.render_for_test();
        let line = text
            .lines()
            .find(|l| l.starts_with("basalt_apid_audit_write_failed_total "))
            .expect("the counter is exported");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn records_a_full_sink_refuses_are_counted_and_held_ones_written_later() {
        use basalt_daemon::Batch;

        let (log, _writer) = AuditLog::open(&AuditSink::Stderr).unwrap();
        let disk = Disk::default();
        let metrics = Arc::<ApidMetrics>::default();
        let mut writer = Writer::new(
            Box::new(disk.clone()),
            Arc::new(AtomicUsize::new(usize::MAX / 2)),
            Arc::clone(&metrics),
        );
        let call = Arc::clone(&peer().identity);
        let record = |n: usize| {
            let mut guard = log.start(&peer(), &call, format!("/x.Y/Call{n}"));
            guard.entry.take().expect("entry")
        };

        // One record reaches the disk; then the disk is full.
        writer.add(record(0));
        writer.end();
        disk.full.store(true, Ordering::Relaxed);
        // Records that fit in the buffer are held, not lost; the rest are lost and counted.
        let mut sent = 1;
        while lost(&metrics) == 0 {
            for _ in 0..100 {
                writer.add(record(sent));
                sent += 1;
            }
            writer.end();
            assert!(sent < 10_000, "nothing counted as lost");
        }
        let lost_while_full = lost(&metrics);
        assert!(lost_while_full < sent as u64);

        // The disk has room again: the held records are written, whole and in order, and every
        // record is either on the disk or counted.
        disk.full.store(false, Ordering::Relaxed);
        writer.add(record(sent));
        sent += 1;
        writer.end();
        let text = String::from_utf8(disk.bytes.lock().unwrap().clone()).unwrap();
        let methods: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
                v["method"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(methods.len() as u64 + lost_while_full, sent as u64);
        assert_eq!(methods.first().map(String::as_str), Some("/x.Y/Call0"));
        assert_eq!(methods.last(), Some(&format!("/x.Y/Call{}", sent - 1)));
        let numbers: Vec<usize> = methods
            .iter()
            .map(|m| m.trim_start_matches("/x.Y/Call").parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(
            lost(&metrics),
            lost_while_full,
            "nothing lost after recovery"
        );

        // Held records that never get written are counted when the writer ends.
        disk.full.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            writer.add(record(sent));
            sent += 1;
        }
        writer.end();
        assert_eq!(lost(&metrics), lost_while_full);
        writer.finish();
        assert_eq!(lost(&metrics), lost_while_full + 3);
    }

    #[test]
    fn unopenable_file_is_an_error() {
        let err =
            AuditLog::open(&AuditSink::File("/nonexistent-dir/audit.log".into())).unwrap_err();
        assert!(matches!(err, Error::OpenAudit { .. }), "{err:?}");
    }
}
