//! The client-certificate deny list (`basalt.v1.RevocationService`): kept by machined,
//! persisted in its state directory, and handed to apid as a file apid watches.
//!
//! | file | content | reader |
//! | --- | --- | --- |
//! | `<state>/revocation.json` | the list: serial or fingerprint, reason, time, caller | machined |
//! | `<state>/apid/revoked.json` | the same list, rewritten after every change | apid |
//!
//! Both are JSON (`{"revoked": [ … ]}`) and written atomically (temp file, fsync, rename), the
//! store first: a crash between the two writes leaves apid one change behind, and the next
//! start of machined rewrites apid's copy from the store.
//!
//! Policy: a certificate is named by its serial (hex) or by the SHA-256 fingerprint of its DER
//! (64 hex digits). A CA certificate of the node (`machine.ca`, `machine.acceptedCAs`) cannot
//! be revoked: apid's deny list only applies to client leaves, and the way to distrust a CA is
//! to rotate it. Revoking the caller's own certificate, or apid's impersonator certificate, is
//! allowed: an admin may cut off a certificate that leaked even if it is their own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use basalt_config::fs::{Overwrite, write_atomic};
use serde::{Deserialize, Serialize};

use crate::config_store::{Caller, format_time};

/// apid's copy of the list, in apid's state directory (`ApidConfig::revocation`).
pub const APID_REVOCATION_FILE: &str = "revoked.json";

/// machined's list, in its state directory.
pub const STORE_FILE: &str = "revocation.json";

/// The most entries the list holds; far more than a node ever needs, and it bounds the file
/// apid reloads.
pub const MAX_ENTRIES: usize = 10_000;

/// The longest reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// Why a revocation could not be recorded or the list not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The request does not name exactly one well-formed certificate, or has no reason.
    #[error("{0}")]
    InvalidArgument(String),
    /// The certificate is one of the node's CAs.
    #[error(
        "{what} is a CA certificate of this node; a CA cannot be revoked (rotate it out of \
         machine.ca / machine.acceptedCAs instead)"
    )]
    RevokeCa {
        /// `serial 1a2b` or `fingerprint ab12…`.
        what: String,
    },
    /// The list is full.
    #[error("the revocation list already holds {MAX_ENTRIES} entries")]
    Full,
    /// machined runs without a state directory.
    #[error("machined runs without a state directory (--state), so it keeps no revocation list")]
    NoStore,
    /// The stored list could not be read or parsed.
    #[error("read the revocation list {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The list could not be rendered as JSON (a bug: it holds only strings).
    #[error("render the revocation list")]
    Encode(#[source] serde_json::Error),
    /// The list could not be written.
    #[error("write the revocation list")]
    Write(#[source] basalt_config::Error),
}

impl From<RevocationError> for tonic::Status {
    fn from(err: RevocationError) -> Self {
        match err {
            RevocationError::InvalidArgument(_) => tonic::Status::invalid_argument(err.to_string()),
            RevocationError::RevokeCa { .. } | RevocationError::NoStore => {
                tonic::Status::failed_precondition(err.to_string())
            }
            RevocationError::Full => tonic::Status::resource_exhausted(err.to_string()),
            // A full disk is the operator's to fix; the path stays in the log.
            RevocationError::Write(ref source) if crate::error::is_out_of_space(source) => {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "Revocation list is out of space"
                );
                tonic::Status::resource_exhausted(
                    "no space left in machined's state directory: the revocation was not \
                     recorded; free some space and revoke again",
                )
            }
            RevocationError::Read { .. }
            | RevocationError::Encode(_)
            | RevocationError::Write(_) => crate::error::internal(&err),
        }
    }
}

/// Which certificate a request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Serial number, lowercase hex without leading zeros.
    Serial(String),
    /// SHA-256 fingerprint, 64 lowercase hex digits.
    Fingerprint(String),
}

impl Target {
    /// Validates a request's `serial` and `fingerprint`: exactly one set, hex, and a
    /// fingerprint of 64 digits. `:` separators, a `0x` prefix (serial) and upper case are
    /// accepted and normalized away.
    pub fn parse(serial: &str, fingerprint: &str) -> Result<Self, RevocationError> {
        let invalid = |text: &str| Err(RevocationError::InvalidArgument(text.to_owned()));
        match (serial.trim().is_empty(), fingerprint.trim().is_empty()) {
            (true, true) => invalid("name the certificate by serial or by fingerprint"),
            (false, false) => invalid("give either serial or fingerprint, not both"),
            (false, true) => {
                let hex = hex_digits(serial.trim().trim_start_matches("0x"));
                match hex {
                    Some(hex) if hex.len() <= 40 => {
                        let trimmed = hex.trim_start_matches('0');
                        Ok(Target::Serial(if trimmed.is_empty() {
                            "0".to_owned()
                        } else {
                            trimmed.to_owned()
                        }))
                    }
                    Some(_) => invalid("serial is longer than the 20 bytes X.509 allows"),
                    None => invalid(&format!(
                        "serial {serial:?} is not hexadecimal (e.g. 3f9a0c…, as `basaltctl \
                         config info` prints it)"
                    )),
                }
            }
            (true, false) => match hex_digits(fingerprint.trim()) {
                Some(hex) if hex.len() == 64 => Ok(Target::Fingerprint(hex)),
                _ => invalid(&format!(
                    "fingerprint {fingerprint:?} is not a SHA-256 fingerprint (64 hex digits)"
                )),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Serial(serial) => format!("serial {serial}"),
            Target::Fingerprint(fingerprint) => format!("fingerprint {fingerprint}"),
        }
    }

    fn matches(&self, entry: &RevokedEntry) -> bool {
        match self {
            Target::Serial(serial) => entry.serial == *serial,
            Target::Fingerprint(fingerprint) => entry.fingerprint == *fingerprint,
        }
    }
}

/// A certificate that must never be revoked (one of the node's CAs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectedCert {
    /// Serial, as [`basalt_pki::Identity::serial`].
    pub serial: String,
    /// SHA-256 fingerprint.
    pub fingerprint: String,
}

impl ProtectedCert {
    /// Every certificate in `pem` (a CA bundle); certificates that do not parse are skipped.
    pub fn from_pem_bundle(pem: &str) -> Vec<ProtectedCert> {
        basalt_pki::certificates_from_pem(pem.as_bytes())
            .unwrap_or_default()
            .iter()
            .filter_map(|der| basalt_pki::Identity::from_der(der.as_ref()).ok())
            .map(|id| ProtectedCert {
                serial: id.serial,
                fingerprint: id.fingerprint,
            })
            .collect()
    }
}

/// One entry of the list, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedEntry {
    /// Serial (lowercase hex); empty when revoked by fingerprint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// SHA-256 fingerprint (lowercase hex); empty when revoked by serial.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub time: String,
    /// Who.
    pub caller: Caller,
}

/// The list and its files; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct RevocationStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    apid_file: Option<PathBuf>,
    entries: Vec<RevokedEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationFile {
    revoked: Vec<RevokedEntry>,
}

impl RevocationStore {
    /// Opens the list in `state_dir` (none yet: empty) and writes apid's copy to `apid_file`,
    /// so that apid starts with the current list.
    pub fn open(state_dir: &Path, apid_file: Option<PathBuf>) -> Result<Self, RevocationError> {
        let path = state_dir.join(STORE_FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<RevocationFile>(&bytes)
                    .map_err(|err| RevocationError::Read {
                        path: path.clone(),
                        source: Box::new(err),
                    })?
                    .revoked
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                return Err(RevocationError::Read {
                    path,
                    source: Box::new(err),
                });
            }
        };
        let inner = Inner {
            path,
            apid_file,
            entries,
        };
        if let Some(apid_file) = &inner.apid_file {
            write_list(apid_file, &inner.entries)?;
        }
        Ok(RevocationStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// The list, oldest entry first.
    pub fn list(&self) -> Vec<RevokedEntry> {
        self.lock().entries.clone()
    }

    /// Adds `target` unless it is listed already (then returns the earlier entry and `true`) or
    /// is one of `protected`. The store is written before apid's copy.
    pub fn revoke(
        &self,
        target: &Target,
        reason: &str,
        caller: Caller,
        protected: &[ProtectedCert],
    ) -> Result<(RevokedEntry, bool), RevocationError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(RevocationError::InvalidArgument(
                "a reason is required (it is recorded with the entry)".to_owned(),
            ));
        }
        if reason.len() > MAX_REASON_BYTES {
            return Err(RevocationError::InvalidArgument(format!(
                "the reason is longer than {MAX_REASON_BYTES} bytes"
            )));
        }
        let is_protected = protected.iter().any(|ca| match target {
            Target::Serial(serial) => ca.serial == *serial,
            Target::Fingerprint(fingerprint) => ca.fingerprint == *fingerprint,
        });
        if is_protected {
            return Err(RevocationError::RevokeCa {
                what: target.describe(),
            });
        }
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.iter().find(|entry| target.matches(entry)) {
            return Ok((entry.clone(), true));
        }
        if inner.entries.len() >= MAX_ENTRIES {
            return Err(RevocationError::Full);
        }
        let (serial, fingerprint) = match target {
            Target::Serial(serial) => (serial.clone(), String::new()),
            Target::Fingerprint(fingerprint) => (String::new(), fingerprint.clone()),
        };
        let entry = RevokedEntry {
            serial,
            fingerprint,
            reason: reason.to_owned(),
            time: format_time(SystemTime::now()),
            caller,
        };
        let mut entries = inner.entries.clone();
        entries.push(entry.clone());
        // Persist first; memory changes only once the store and apid's copy are on disk.
        write_list(&inner.path, &entries)?;
        if let Some(apid_file) = &inner.apid_file
            && let Err(err) = write_list(apid_file, &entries)
        {
            // Not enforced, so not recorded: the store goes back to what apid enforces, and
            // the caller may simply revoke again. (Should that fail too, the next start of
            // machined writes the stored list to apid.)
            if let Err(undo) = write_list(&inner.path, &inner.entries) {
                tracing::error!(
                    error = &undo as &dyn std::error::Error,
                    "Could not take back a revocation apid does not enforce yet; it takes \
                     effect when machined next starts"
                );
            }
            return Err(err);
        }
        inner.entries = entries;
        Ok((entry, false))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Entries are replaced only after both writes succeeded: a poisoned lock is consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn write_list(path: &Path, entries: &[RevokedEntry]) -> Result<(), RevocationError> {
    let file = RevocationFile {
        revoked: entries.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(RevocationError::Encode)?;
    write_atomic(path, &json, 0o600, Overwrite::Allow).map_err(RevocationError::Write)
}

/// Lowercase hex digits of `text` without `:` separators; `None` if anything else is there or
/// nothing is.
fn hex_digits(text: &str) -> Option<String> {
    let digits: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit())).then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_validated_and_normalized() {
        assert_eq!(
            Target::parse("0x00:1F", "").expect("serial"),
            Target::Serial("1f".to_owned())
        );
        let fp = format!("AB:CD:{}", "ef".repeat(30));
        assert_eq!(
            Target::parse("", &fp).expect("fingerprint"),
            Target::Fingerprint(format!("abcd{}", "ef".repeat(30)))
        );
        for (serial, fingerprint) in [
            ("", ""),
            ("1f", "ab"),
            ("xyz", ""),
            ("", "abcd"),
            ("", "zz"),
            (&"f".repeat(41), ""),
        ] {
            assert!(
                matches!(
                    Target::parse(serial, fingerprint),
                    Err(RevocationError::InvalidArgument(_))
                ),
                "{serial:?} {fingerprint:?}"
            );
        }
    }

    #[test]
    fn the_list_persists_and_apid_gets_a_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let apid_file = dir.path().join("apid-revoked.json");
        let store = RevocationStore::open(dir.path(), Some(apid_file.clone())).expect("open");
        assert!(
            std::fs::read_to_string(&apid_file)
                .expect("apid copy written at open")
                .contains("revoked")
        );
        let target = Target::Serial("1f".to_owned());
        let (entry, again) = store
            .revoke(&target, "lost laptop", Caller::machined(), &[])
            .expect("revoke");
        assert!(!again);
        let (_, again) = store
            .revoke(&target, "twice", Caller::machined(), &[])
            .expect("revoke again");
        assert!(again, "already listed");

        let reopened = RevocationStore::open(dir.path(), None).expect("reopen");
        assert_eq!(reopened.list(), vec![entry]);
        assert!(
            std::fs::read_to_string(&apid_file)
                .expect("apid copy")
                .contains("\"1f\"")
        );
    }

    #[test]
    fn a_ca_and_a_missing_reason_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RevocationStore::open(dir.path(), None).expect("open");
        let ca = ProtectedCert {
            serial: "1f".to_owned(),
            fingerprint: "00".repeat(32),
        };
        let err = store
            .revoke(
                &Target::Serial("1f".to_owned()),
                "x",
                Caller::machined(),
                &[ca],
            )
            .expect_err("CA");
        assert!(matches!(err, RevocationError::RevokeCa { .. }));
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::FailedPrecondition
        );
        let err = store
            .revoke(
                &Target::Serial("2".to_owned()),
                "  ",
                Caller::machined(),
                &[],
            )
            .expect_err("reason");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
        let long = "x".repeat(MAX_REASON_BYTES + 1);
        let err = store
            .revoke(
                &Target::Serial("2".to_owned()),
                &long,
                Caller::machined(),
                &[],
            )
            .expect_err("long reason");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "the reason is longer than 1024 bytes");
        assert!(store.list().is_empty());
    }

    /// A revocation apid's copy does not get is not recorded at all: the store is put back,
    /// so what machined lists is what apid enforces, and revoking again works.
    #[test]
    fn a_revocation_whose_apid_copy_fails_is_taken_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let apid_file = dir.path().join("apid-revoked.json");
        let store = RevocationStore::open(dir.path(), Some(apid_file.clone())).expect("open");
        // A directory in the way: the copy's rename fails.
        std::fs::remove_file(&apid_file).expect("rm");
        std::fs::create_dir(&apid_file).expect("mkdir");
        let target = Target::Serial("1f".to_owned());
        let err = store
            .revoke(&target, "lost laptop", Caller::machined(), &[])
            .expect_err("apid's copy cannot be written");
        assert!(matches!(err, RevocationError::Write(_)), "{err:?}");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
        assert!(store.list().is_empty(), "not in memory");
        let reopened = RevocationStore::open(dir.path(), None).expect("reopen");
        assert!(reopened.list().is_empty(), "not on disk either");

        std::fs::remove_dir(&apid_file).expect("rmdir");
        store
            .revoke(&target, "lost laptop", Caller::machined(), &[])
            .expect("revoke again");
        assert_eq!(store.list().len(), 1);
    }

    #[test]
    fn a_full_disk_is_resource_exhausted() {
        let full = basalt_config::Error::Write {
            path: "/state/revocation.json".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let status = tonic::Status::from(RevocationError::Write(full));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with("no space left"), "{status:?}");
        assert!(!status.message().contains("/state"), "{status:?}");
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(STORE_FILE), "{").expect("write");
        assert!(matches!(
            RevocationStore::open(dir.path(), None),
            Err(RevocationError::Read { .. })
        ));
    }
}
