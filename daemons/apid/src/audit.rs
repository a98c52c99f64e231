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
//! records are dropped and counted (and a warning is logged) rather than stalling calls.
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
        let (done_tx, done) = oneshot::channel();
        let mut writer = Writer {
            queued: Arc::clone(&queued),
            out: BufWriter::with_capacity(BUFFER, out),
            line: Vec::with_capacity(512),
            written: Ok(()),
            failed: false,
        };
        let thread = std::thread::Builder::new()
            .name("apid-audit".to_owned())
            .spawn(move || {
                // Until every sender is gone and the queue is empty.
                basalt_daemon::drain_in_batches(&rx, COALESCE, &mut writer);
                let _ = done_tx.send(());
            })
            .map_err(Error::StartAuditWriter)?;
        let log = Self {
            inner: Arc::new(Inner {
                tx,
                queued,
                dropped: AtomicU64::new(0),
                metrics: Arc::default(),
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
struct Writer {
    queued: Arc<AtomicUsize>,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The record being rendered (reused).
    line: Vec<u8>,
    /// The first failed write of the current batch, reported when it ends.
    written: std::io::Result<()>,
    /// The last write failed (so the next success is worth a log line).
    failed: bool,
}

impl Writer {
    /// Logs the first failure and the recovery, not every record.
    fn report(&mut self, result: std::io::Result<()>) {
        match result {
            Err(err) if !self.failed => {
                self.failed = true;
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "Audit log write failed"
                );
            }
            Ok(()) if self.failed => {
                self.failed = false;
                tracing::info!("Audit log writes work again");
            }
            _ => {}
        }
    }
}

/// `BufWriter` never splits a line across two writes, so lines stay whole on a shared stderr too.
impl basalt_daemon::Batch<Entry> for Writer {
    fn add(&mut self, entry: Entry) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.line.clear();
        entry.render(&mut self.line);
        drop(entry);
        if let Err(err) = self.out.write_all(&self.line)
            && self.written.is_ok()
        {
            self.written = Err(err);
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

    #[test]
    fn unopenable_file_is_an_error() {
        let err =
            AuditLog::open(&AuditSink::File("/nonexistent-dir/audit.log".into())).unwrap_err();
        assert!(matches!(err, Error::OpenAudit { .. }), "{err:?}");
    }
}
