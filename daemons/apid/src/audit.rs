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
//! roles and `caller` the original caller it named. `code` is the gRPC status name from the
//! response headers or trailers, `CANCELLED` when the client went away before the end, and
//! `UNKNOWN` when the response carried no status. `reason` is present on denials.
//!
//! Records are written by one task; the request path only does a non-blocking send into a large
//! channel. If the writer falls that far behind, records are dropped and counted (and a warning
//! is logged) rather than stalling calls.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use basalt_config::AuditSink;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::error::Error;
use crate::peer::{CallIdentity, Peer};

/// Records waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Where the request path sends finished records. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens the sink (a file is created 0600 and appended to) and starts the writer task,
    /// which ends after every `AuditLog` clone is dropped and the queue is written out.
    pub(crate) fn open(sink: &AuditSink) -> Result<(Self, JoinHandle<()>), Error> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match sink {
            AuditSink::Stderr => Box::new(tokio::io::stderr()),
            AuditSink::File(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| Error::OpenAudit {
                        path: path.clone(),
                        source,
                    })?;
                Box::new(tokio::fs::File::from_std(file))
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_loop(rx, out));
        Ok((
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        ))
    }

    /// Starts the record of one call; it is written when the returned guard is dropped.
    pub(crate) fn start(&self, peer: &Peer, call: &CallIdentity, method: &str) -> AuditGuard {
        AuditGuard {
            log: self.clone(),
            started: Instant::now(),
            time: OffsetDateTime::now_utc(),
            peer: peer.clone(),
            roles: call.roles.strings(),
            impersonated: call.impersonated,
            caller: call.impersonated.then(|| call.caller.clone()),
            method: method.to_owned(),
            decision: Decision::Allow,
            reason: None,
            code: None,
            finished: false,
        }
    }

    fn send(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
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

/// One call's record in progress; written exactly once, when dropped.
#[derive(Debug)]
pub(crate) struct AuditGuard {
    log: AuditLog,
    started: Instant,
    time: OffsetDateTime,
    peer: Peer,
    roles: Vec<String>,
    impersonated: bool,
    caller: Option<String>,
    method: String,
    decision: Decision,
    reason: Option<String>,
    code: Option<Code>,
    /// The response ended normally (trailers or end of stream seen), so a missing code means
    /// "no status sent" rather than "cancelled".
    finished: bool,
}

impl AuditGuard {
    /// Records a denial and its explanation.
    pub(crate) fn deny(&mut self, reason: String) {
        self.decision = Decision::Deny;
        self.reason = Some(reason);
    }

    /// Records the gRPC status of the response (the first one seen wins: headers of a
    /// trailers-only response, otherwise the final trailer).
    pub(crate) fn set_code(&mut self, code: Code) {
        self.code.get_or_insert(code);
    }

    /// The response body ended (with or without trailers).
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    fn render(&self) -> String {
        let code = match (self.code, self.finished) {
            (Some(code), _) => code,
            (None, true) => Code::Unknown,
            (None, false) => Code::Cancelled,
        };
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let record = Record {
            time: self.time.format(&Rfc3339).unwrap_or_default(),
            peer: self.peer.addr.to_string(),
            cn: self.peer.common_name.as_deref(),
            serial: &self.peer.serial,
            fingerprint: &self.peer.fingerprint,
            roles: &self.roles,
            impersonated: self.impersonated.then_some(true),
            cert_roles: self.impersonated.then(|| self.peer.roles.strings()),
            caller: self.caller.as_deref(),
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
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(&record).unwrap_or_default()
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        let line = self.render();
        tracing::debug!(
            grpc.method = %self.method,
            peer.addr = %self.peer.addr,
            grpc.code = code_name(self.code.unwrap_or(Code::Unknown)),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "Call finished"
        );
        self.log.send(line);
    }
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    peer: String,
    cn: Option<&'a str>,
    serial: &'a str,
    fingerprint: &'a str,
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_roles: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<&'a str>,
    method: &'a str,
    decision: &'static str,
    code: &'static str,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
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

/// Writes queued records, batching whatever is already waiting, until every sender is gone.
async fn write_loop(mut rx: mpsc::Receiver<String>, mut out: Box<dyn AsyncWrite + Send + Unpin>) {
    const BATCH_BYTES: usize = 64 * 1024;
    let mut failed = false;
    while let Some(line) = rx.recv().await {
        let mut batch = line;
        batch.push('\n');
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => {
                    batch.push_str(&line);
                    batch.push('\n');
                }
                Err(_) => break,
            }
        }
        let result = match out.write_all(batch.as_bytes()).await {
            Ok(()) => out.flush().await,
            Err(err) => Err(err),
        };
        match result {
            // Log the first failure and the recovery, not every record.
            Err(err) if !failed => {
                failed = true;
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "Audit log write failed"
                );
            }
            Ok(()) if failed => {
                failed = false;
                tracing::info!("Audit log writes work again");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use basalt_authz::RoleSet;

    use super::*;

    fn peer() -> Peer {
        Peer {
            addr: "127.0.0.1:4000".parse().unwrap(),
            common_name: None,
            serial: "abc".to_owned(),
            fingerprint: "00ff".to_owned(),
            roles: RoleSet::parse(["os:impersonator"]),
        }
    }

    #[tokio::test]
    async fn records_are_json_lines_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (log, task) = AuditLog::open(&AuditSink::File(path.clone())).unwrap();
        let call = CallIdentity {
            roles: RoleSet::parse(["os:reader"]),
            caller: "cn=bob".to_owned(),
            impersonated: true,
        };
        let mut guard = log.start(&peer(), &call, "/machine.MachineService/Reboot");
        guard.deny("no".to_owned());
        guard.set_code(Code::PermissionDenied);
        drop(guard);
        drop(log.start(&peer(), &call, "/machine.MachineService/Version"));
        drop(log);
        task.await.unwrap();

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

    #[test]
    fn unopenable_file_is_an_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let err =
            AuditLog::open(&AuditSink::File("/nonexistent-dir/audit.log".into())).unwrap_err();
        assert!(matches!(err, Error::OpenAudit { .. }), "{err:?}");
    }
}
