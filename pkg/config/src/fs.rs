//! Crash-safe file writes: after a crash a file holds its old or its new contents, never a mix.
//!
//! Used by the CLI for generated configs and keys, and later by machined for its state dir
//! (DESIGN.md §5).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// Whether [`write_atomic`] may replace an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace the file if it exists.
    Allow,
    /// Fail with [`Error::AlreadyExists`] if the file exists.
    Refuse,
}

/// Writes `bytes` to `path` atomically, with permission bits `mode` (e.g. `0o600`).
///
/// Steps: create a temporary file next to `path` (same directory, so the final step is a
/// same-filesystem rename) with `mode`, write, fsync, move it into place, fsync the directory
/// so the new directory entry survives a crash. On failure the temporary file is removed.
///
/// With [`Overwrite::Refuse`] the final step is a hard link instead of a rename: `link(2)`
/// fails if the target exists, so a file created concurrently is never clobbered (the
/// existence check up front only saves the write).
///
/// A symlink at `path` is replaced, not followed. The parent directory must exist; see
/// [`ensure_private_dir`].
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: Overwrite,
) -> Result<(), Error> {
    let write_err = |source: io::Error| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let already_exists = || Error::AlreadyExists {
        path: path.to_path_buf(),
    };

    if overwrite == Overwrite::Refuse && fs::symlink_metadata(path).is_ok() {
        return Err(already_exists());
    }
    let file_name = path.file_name().ok_or_else(|| {
        write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ))
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };

    let (tmp_path, mut file) = create_temp(dir, file_name, mode).map_err(write_err)?;
    let result = (|| {
        // The mode given at open time is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        match overwrite {
            Overwrite::Allow => fs::rename(&tmp_path, path),
            Overwrite::Refuse => {
                fs::hard_link(&tmp_path, path)?;
                fs::remove_file(&tmp_path)
            }
        }
    })();
    if let Err(source) = result {
        // Best effort: the temp file is garbage either way, and the original error matters more.
        let _ = fs::remove_file(&tmp_path);
        return Err(if source.kind() == io::ErrorKind::AlreadyExists {
            already_exists()
        } else {
            write_err(source)
        });
    }
    sync_dir(dir).map_err(write_err)
}

/// Creates directory `path` (and missing parents) with mode 0700 if it does not exist.
///
/// An existing directory is left as it is, like Go's `os.MkdirAll(dir, 0o700)` in talosctl:
/// tightening a directory the user chose (say, the working directory) would be a surprise.
pub fn ensure_private_dir(path: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| Error::CreateDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Opens a new, uniquely named temporary file in `dir`.
///
/// The name starts with a dot so directory listings and globs skip it; the pid and a counter
/// keep concurrent writers apart, and `create_new` makes a collision an error, not a clobber.
fn create_temp(dir: &Path, file_name: &std::ffi::OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp.{}.{n}", std::process::id()));
        let tmp_path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp_path)
        {
            Ok(file) => return Ok((tmp_path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_err = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("cannot create a temporary file")))
}

/// fsyncs a directory so a rename or link in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_with_the_requested_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.yaml");
        write_atomic(&path, b"one", 0o600, Overwrite::Refuse).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(entries(dir.path()), ["secret.yaml"]);

        write_atomic(&path, b"two", 0o644, Overwrite::Allow).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(entries(dir.path()), ["secret.yaml"]);
    }

    #[test]
    fn refuse_keeps_the_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, b"new", 0o600, Overwrite::Refuse).unwrap_err();
        assert!(
            matches!(&err, Error::AlreadyExists { path: p } if p == &path),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{} already exists", path.display())
        );
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["config"]);
    }

    #[test]
    fn missing_directory_is_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("config");
        let err = write_atomic(&path, b"x", 0o600, Overwrite::Allow).unwrap_err();
        assert!(matches!(err, Error::Write { .. }), "{err:?}");
    }

    #[test]
    fn private_dir_is_created_0700_and_existing_dirs_are_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b");
        ensure_private_dir(&nested).unwrap();
        assert_eq!(mode_of(&nested), 0o700);
        assert_eq!(mode_of(&dir.path().join("a")), 0o700);

        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&open).unwrap();
        assert_eq!(mode_of(&open), 0o755);
    }
}
