//! The client-certificate deny list: loaded from the file machined writes, consulted at every
//! TLS handshake, and watched so that a change closes the open connections of a newly revoked
//! certificate within a second.
//!
//! The file is JSON, written atomically by machined (`<state>/apid/revoked.json`):
//!
//! ```json
//! {"revoked": [{"serial": "1f3a", "fingerprint": "", "reason": "laptop lost", …}, …]}
//! ```
//!
//! apid reads only `serial` and `fingerprint` of each entry (either may be empty) and ignores
//! every other key, so machined can record more (time, reason, caller) without apid caring.
//!
//! Failure handling: at startup a file that exists but cannot be read or parsed stops apid
//! (fail closed: serving without the list would let revoked clients in). While serving, a bad
//! file keeps the previous list and logs an error; a missing file means an empty list (machined
//! has not revoked anything yet).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use basalt_grpc::FileStamp;
use basalt_pki::RevocationCheck;
use serde::Deserialize;
use tracing::{error, info};

use crate::connections::Connections;

/// How often the deny-list file is checked for changes. Well under the one second within which
/// a revoked certificate's connections must be closed; one `stat` per tick costs nothing.
pub const REVOCATION_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why the deny list could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The file exists but could not be read.
    #[error("read the revocation list {}", .path.display())]
    Read {
        /// The configured file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the JSON machined writes.
    #[error("parse the revocation list {}", .path.display())]
    Parse {
        /// The configured file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: serde_json::Error,
    },
}

/// One version of the deny list, normalized for lookups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Revoked {
    /// Lowercase hex without leading zeros (as `basalt_pki::Identity::serial`).
    serials: HashSet<String>,
    /// Lowercase hex, no separators.
    fingerprints: HashSet<String>,
}

impl Revoked {
    /// Parses the file's JSON.
    pub(crate) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let file: RevocationFile = serde_json::from_str(text)?;
        let mut revoked = Revoked::default();
        for entry in file.revoked {
            let serial = normalize_serial(&entry.serial);
            if !serial.is_empty() {
                revoked.serials.insert(serial);
            }
            let fingerprint = normalize_hex(&entry.fingerprint);
            if !fingerprint.is_empty() {
                revoked.fingerprints.insert(fingerprint);
            }
        }
        Ok(revoked)
    }

    /// Whether a certificate with this serial or fingerprint is listed.
    pub(crate) fn contains(&self, serial: &str, fingerprint: &str) -> bool {
        (!serial.is_empty() && self.serials.contains(serial))
            || (!fingerprint.is_empty() && self.fingerprints.contains(fingerprint))
    }

    /// How many entries the list has.
    fn len(&self) -> usize {
        self.serials.len() + self.fingerprints.len()
    }
}

/// The current deny list, shared by the TLS verifier, the connection registry and the watcher.
#[derive(Clone, Debug, Default)]
pub(crate) struct RevocationList(Arc<RwLock<Arc<Revoked>>>);

impl RevocationList {
    /// A list holding `revoked`.
    pub(crate) fn new(revoked: Revoked) -> Self {
        RevocationList(Arc::new(RwLock::new(Arc::new(revoked))))
    }

    /// The list as it is now.
    pub(crate) fn current(&self) -> Arc<Revoked> {
        // A poisoned lock still holds a whole `Arc` (the writer only swaps it): keep using it.
        match self.0.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, revoked: Revoked) {
        let revoked = Arc::new(revoked);
        match self.0.write() {
            Ok(mut guard) => *guard = revoked,
            Err(poisoned) => *poisoned.into_inner() = revoked,
        }
    }
}

impl RevocationList {
    /// Whether the original caller a forwarded call names in `basalt-caller`
    /// (`…;serial=<hex>;fp=<hex>;…`, honoured only from another apid) is revoked here.
    pub(crate) fn is_caller_revoked(&self, basalt_caller: &str) -> bool {
        let field = |key: &str| {
            basalt_caller
                .split(';')
                .find_map(|part| part.strip_prefix(key))
                .unwrap_or("")
        };
        let serial = normalize_serial(field("serial="));
        let fingerprint = normalize_hex(field("fp="));
        self.current().contains(&serial, &fingerprint)
    }
}

impl RevocationCheck for RevocationList {
    fn is_revoked(&self, serial: &str, fingerprint: &str) -> bool {
        self.current().contains(serial, fingerprint)
    }
}

/// Loads the list at startup: a missing file is an empty list, a bad one an error.
pub(crate) fn load(path: &Path) -> Result<Revoked, RevocationError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Revoked::parse(&text).map_err(|source| RevocationError::Parse {
            path: path.to_owned(),
            source,
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Revoked::default()),
        Err(source) => Err(RevocationError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Polls `path` every `interval`; when it changed, loads it, publishes it to `list` and closes
/// every open connection whose certificate it lists. Runs until aborted.
pub(crate) async fn watch(
    path: PathBuf,
    list: RevocationList,
    connections: Arc<Connections>,
    interval: Duration,
) {
    let mut seen = FileStamp::of(&path);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = FileStamp::of(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&path) {
            Ok(revoked) => {
                let entries = revoked.len();
                list.replace(revoked);
                // After the swap: a handshake racing with this sees the new list, and a
                // connection registered before it is found here.
                let closed = connections.close_revoked(&list.current());
                info!(
                    revocation.path = %path.display(),
                    revocation.entries = entries,
                    connections.closed = closed,
                    "Revocation list loaded"
                );
            }
            Err(err) => error!(
                error = &err as &dyn std::error::Error,
                "Revocation list not reloaded; keeping the previous one"
            ),
        }
    }
}

/// Lowercase, without `:` separators or a `0x` prefix.
pub(crate) fn normalize_hex(text: &str) -> String {
    let text = text.trim();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    text.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// [`normalize_hex`] without leading zeros (`"0"` stays `"0"`), as serials are printed.
pub(crate) fn normalize_serial(text: &str) -> String {
    let hex = normalize_hex(text);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() && !hex.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// What the file holds, as far as apid cares.
#[derive(Debug, Deserialize)]
struct RevocationFile {
    #[serde(default)]
    revoked: Vec<RevocationFileEntry>,
}

#[derive(Debug, Deserialize)]
struct RevocationFileEntry {
    #[serde(default)]
    serial: String,
    #[serde(default)]
    fingerprint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_by_serial_or_fingerprint_and_extra_keys_are_ignored() {
        let revoked = Revoked::parse(
            r#"{"revoked": [
                {"serial": "0x00:1F:3a", "reason": "lost", "time": "2026-01-01T00:00:00Z"},
                {"fingerprint": "AB:cd"}
            ], "version": 3}"#,
        )
        .expect("parse");
        assert!(revoked.contains("1f3a", ""));
        assert!(revoked.contains("", "abcd"));
        assert!(!revoked.contains("1f3b", "abce"));
        // Empty values never match an empty entry.
        assert!(!revoked.contains("", ""));
        assert_eq!(revoked.len(), 2);
    }

    #[test]
    fn bad_json_is_an_error_and_a_missing_file_an_empty_list() {
        assert!(Revoked::parse("revoked: [").is_err());
        assert!(Revoked::parse(r#"{"revoked": {"serial": 1}}"#).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("revoked.json");
        assert_eq!(load(&missing).expect("missing"), Revoked::default());
        std::fs::write(&missing, "{").expect("write");
        assert!(matches!(load(&missing), Err(RevocationError::Parse { .. })));
    }

    #[test]
    fn serials_are_normalized_like_identity_serials() {
        assert_eq!(normalize_serial("00Ab"), "ab");
        assert_eq!(normalize_serial("0x0"), "0");
        assert_eq!(normalize_serial(""), "");
        assert_eq!(normalize_hex("AB:CD"), "abcd");
    }

    #[test]
    fn the_shared_list_is_what_the_verifier_consults() {
        let list = RevocationList::default();
        assert!(!list.is_revoked("1", ""));
        list.replace(Revoked::parse(r#"{"revoked": [{"serial": "1"}]}"#).expect("parse"));
        assert!(list.is_revoked("1", ""));
    }

    #[test]
    fn a_forwarded_callers_certificate_is_looked_up_by_serial_or_fingerprint() {
        let list = RevocationList::new(
            Revoked::parse(r#"{"revoked": [{"serial": "2a"}, {"fingerprint": "ff"}]}"#)
                .expect("parse"),
        );
        assert!(list.is_caller_revoked("cn=a;serial=2a;fp=00;roles=os:admin;addr=x"));
        assert!(list.is_caller_revoked("cn=b;serial=3;fp=ff;roles=;addr=x"));
        assert!(!list.is_caller_revoked("cn=c;serial=3;fp=00;roles=;addr=x"));
        assert!(!list.is_caller_revoked(""));
    }
}
