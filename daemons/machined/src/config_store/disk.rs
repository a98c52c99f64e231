//! The files of the config store and their formats. Every write goes through
//! [`basalt_config::fs::write_atomic`] (temp file, fsync, rename, fsync dir), every removal is
//! followed by an fsync of the directory, so a crash leaves each file old or new, never torn.
//!
//! ```text
//! <state>/config/            0700
//!   current.yaml             the active machine config, byte for byte as applied (0600)
//!   staged.yaml              a StagedRecord: config that becomes active at the next boot
//!   try.yaml                 a TrialRecord: the config on trial, its deadline, what to restore
//!   history/                 0700
//!     00000017.yaml          an EntryFile: one version (metadata + the config YAML)
//! ```
//!
//! Files hold the join token and the CA key, hence the modes; the records have no `Debug`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use basalt_config::fs::{Overwrite, write_atomic};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Error;
use super::caller::Caller;

/// Mode of every file in the store: it holds secrets.
pub(super) const FILE_MODE: u32 = 0o600;

/// The store's paths.
#[derive(Clone, Debug)]
pub(super) struct Paths {
    pub(super) dir: PathBuf,
    pub(super) current: PathBuf,
    pub(super) staged: PathBuf,
    pub(super) trial: PathBuf,
    pub(super) history: PathBuf,
}

impl Paths {
    pub(super) fn new(dir: &Path) -> Self {
        Paths {
            dir: dir.to_path_buf(),
            current: dir.join("current.yaml"),
            staged: dir.join("staged.yaml"),
            trial: dir.join("try.yaml"),
            history: dir.join("history"),
        }
    }

    /// `history/<version, 8 digits>.yaml`.
    pub(super) fn entry(&self, version: u64) -> PathBuf {
        self.history.join(format!("{version:08}.yaml"))
    }
}

/// One history entry on disk.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntryFile {
    pub(super) version: u64,
    /// RFC 3339, UTC.
    pub(super) time: String,
    pub(super) mode: String,
    pub(super) caller: Caller,
    pub(super) sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) note: String,
    /// The config exactly as applied.
    pub(super) config: String,
}

/// `staged.yaml`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StagedRecord {
    pub(super) version: u64,
    pub(super) sha256: String,
    pub(super) config: String,
}

/// `try.yaml`: present exactly while a TRY apply waits for confirmation.
///
/// It carries the YAML to restore itself, so a revert never depends on a history entry that
/// pruning may have removed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrialRecord {
    /// The version on trial.
    pub(super) version: u64,
    /// RFC 3339, UTC: when it is reverted unless confirmed.
    pub(super) deadline: String,
    /// The last confirmed version, restored on revert.
    pub(super) revert_to_version: u64,
    pub(super) revert_to_sha256: String,
    pub(super) revert_to_config: String,
}

/// Reads and parses a YAML record; `Ok(None)` when the file does not exist.
pub(super) fn read_record<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, Error> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_yaml::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Decode {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a YAML record atomically.
pub(super) fn write_record<T: Serialize>(path: &Path, record: &T) -> Result<(), Error> {
    let text = serde_yaml::to_string(record).map_err(|source| Error::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    write_file(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically with [`FILE_MODE`].
pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomic(path, bytes, FILE_MODE, Overwrite::Allow).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Removes `path` (a missing file is fine) and fsyncs its directory, so the removal survives a
/// crash.
pub(super) fn remove_durably(path: &Path) -> Result<(), Error> {
    let remove_err = |source| Error::Remove {
        path: path.to_path_buf(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(remove_err(source)),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(remove_err)
}

/// Removes the temporary files an interrupted [`write_atomic`] left in `dir` (`.<name>.tmp.*`).
/// They are garbage: the rename that would have published them never happened.
pub(super) fn remove_temp_files(dir: &Path) -> Result<usize, Error> {
    let read_err = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp.") {
            remove_durably(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The versions in the history directory, from file names `NNNNNNNN.yaml`; other names are
/// ignored.
pub(super) fn entry_versions(history: &Path) -> Result<Vec<u64>, Error> {
    let read_err = |source| Error::Read {
        path: history.to_path_buf(),
        source,
    };
    let mut versions = Vec::new();
    for entry in fs::read_dir(history).map_err(read_err)? {
        let name = entry.map_err(read_err)?.file_name();
        let Some(stem) = name.to_str().and_then(|name| name.strip_suffix(".yaml")) else {
            continue;
        };
        if !stem.is_empty()
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(version) = stem.parse()
        {
            versions.push(version);
        }
    }
    versions.sort_unstable();
    Ok(versions)
}

/// Reads a file as UTF-8 text; `Ok(None)` when it does not exist.
pub(super) fn read_text(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    basalt_pki::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// `time` as RFC 3339 in UTC (nanosecond precision).
pub(crate) fn format_time(time: SystemTime) -> String {
    OffsetDateTime::from(time)
        .format(&Rfc3339)
        // Only years outside 0..=9999 fail to format, which a SystemTime from the clock or
        // from a parsed RFC 3339 string never is.
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses an RFC 3339 time written by [`format_time`].
pub(super) fn parse_time(path: &Path, text: &str) -> Result<SystemTime, Error> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|err| Error::Invalid {
            path: path.to_path_buf(),
            reason: format!("time {text:?} is not RFC 3339: {err}"),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_round_trip_with_nanoseconds() {
        let time = SystemTime::UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
        let text = format_time(time);
        assert_eq!(text, "2026-09-21T14:13:20.123456789Z");
        assert_eq!(parse_time(Path::new("x"), &text).unwrap(), time);
    }

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn temp_files_are_removed_and_entries_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "00000002.yaml",
            "00000010.yaml",
            ".00000011.yaml.tmp.42.0",
            "notes",
        ] {
            fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert_eq!(entry_versions(dir.path()).unwrap(), [2, 10]);
        assert!(!dir.path().join(".00000011.yaml.tmp.42.0").exists());
    }

    #[test]
    fn multi_line_configs_survive_the_entry_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.yaml");
        let config = "version: v1alpha1\n# a comment: with colons\nmachine:\n  type: worker\n";
        let entry = EntryFile {
            version: 3,
            time: format_time(SystemTime::now()),
            mode: "NO_REBOOT".to_owned(),
            caller: Caller::machined(),
            sha256: sha256_hex(config.as_bytes()),
            note: String::new(),
            config: config.to_owned(),
        };
        write_record(&path, &entry).unwrap();
        let back: EntryFile = read_record(&path).unwrap().unwrap();
        assert_eq!(back.config, config);
        assert_eq!(back.version, 3);
    }
}
