//! What Reset wipes: the contents of machined's state directory, except what the node needs to
//! come back as itself (see the `lifecycle` module docs for why each item survives).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::Error;

/// machined's state directory and the rules of a reset wipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StateLayout {
    /// The state directory (canonical).
    dir: PathBuf,
    /// Paths that survive (canonical); their ancestor directories survive with them.
    keep: Vec<PathBuf>,
    /// Directories whose regular files are emptied in place instead of removed (canonical).
    empty: Vec<PathBuf>,
}

/// What a wipe did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WipeReport {
    /// Entries removed (a removed directory counts once).
    pub(crate) removed: usize,
    /// Files emptied in place.
    pub(crate) emptied: usize,
    /// Entries kept.
    pub(crate) kept: usize,
}

impl StateLayout {
    /// The layout of `dir`: `keep` survive a wipe, regular files under `empty` are truncated.
    /// Paths outside `dir` are ignored. Every path is resolved (symlinks followed) now, so a
    /// path given through a symlink still matches what the wipe walks; a path that does not
    /// exist yet is used as written, made absolute.
    pub(crate) fn new(
        dir: &Path,
        keep: impl IntoIterator<Item = PathBuf>,
        empty: impl IntoIterator<Item = PathBuf>,
    ) -> Self {
        let dir = resolve(dir);
        let inside = |paths: Vec<PathBuf>| -> Vec<PathBuf> {
            paths
                .into_iter()
                .map(|path| resolve(&path))
                .filter(|path| path.starts_with(&dir) && *path != dir)
                .collect()
        };
        let keep = inside(keep.into_iter().collect());
        let empty = inside(empty.into_iter().collect());
        StateLayout { dir, keep, empty }
    }

    /// Wipes the state directory: every entry is removed unless it is kept, lies on the way to
    /// a kept or emptied path, or is a regular file under an emptied directory (then it is
    /// truncated to zero bytes). Symlinks are removed, never followed. Blocking.
    pub(crate) fn wipe(&self) -> Result<WipeReport, Error> {
        let mut report = WipeReport::default();
        self.wipe_dir(&self.dir, &mut report)?;
        Ok(report)
    }

    fn wipe_dir(&self, dir: &Path, report: &mut WipeReport) -> Result<(), Error> {
        let err = |path: &Path, op: &'static str| {
            let path = path.to_owned();
            move |source: io::Error| Error::WipeState { op, path, source }
        };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            // Nothing to wipe.
            Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(err(dir, "list")(source)),
        };
        for entry in entries {
            let entry = entry.map_err(err(dir, "list"))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(err(&path, "inspect"))?;
            if self.keep.contains(&path) {
                report.kept += 1;
            } else if self.empty.iter().any(|empty| path.starts_with(empty)) {
                if file_type.is_dir() {
                    self.wipe_dir(&path, report)?;
                } else if file_type.is_file() {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|file| file.set_len(0))
                        .map_err(err(&path, "empty"))?;
                    report.emptied += 1;
                } else {
                    report.kept += 1;
                }
            } else if file_type.is_dir() && self.leads_somewhere(&path) {
                self.wipe_dir(&path, report)?;
            } else {
                if file_type.is_dir() {
                    // remove_dir_all does not follow symlinks inside the tree.
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                }
                .map_err(err(&path, "remove"))?;
                report.removed += 1;
            }
        }
        Ok(())
    }

    /// Whether a kept or emptied path lies below `dir`.
    fn leads_somewhere(&self, dir: &Path) -> bool {
        self.keep
            .iter()
            .chain(&self.empty)
            .any(|path| path.starts_with(dir))
    }
}

/// `path` with symlinks resolved; for a path that does not exist, its existing parent resolved
/// and the rest appended; made absolute either way.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(real) = fs::canonicalize(path) {
        return real;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) if parent != absolute => resolve(parent).join(name),
        _ => absolute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn wipe_keeps_what_the_node_needs_and_empties_logs_in_place() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        write(&state.join("machine.yaml"), "config");
        write(&state.join("apid/apid.yaml"), "apid");
        write(&state.join("apid/server.key"), "key");
        write(&state.join("run/other"), "x");
        write(&state.join("logs/web.log"), "lots of output");
        write(&state.join("logs/web.log.1"), "older output");
        write(&state.join("history/1.yaml"), "old config");
        write(&state.join("boot_id"), "id");
        write(&state.join("data/deep/file"), "service data");
        fs::create_dir_all(state.join("run")).expect("run");
        let outside = tmp.path().join("outside");
        write(&outside.join("precious"), "keep me");
        std::os::unix::fs::symlink(&outside, state.join("link")).expect("symlink");

        // Hold a log file open, as the supervisor does.
        let mut open_log = fs::OpenOptions::new()
            .append(true)
            .open(state.join("logs/web.log"))
            .expect("open");

        let layout = StateLayout::new(
            &state,
            [
                state.join("machine.yaml"),
                state.join("apid"),
                state.join("run/machined.sock"),
                tmp.path().join("elsewhere.yaml"),
            ],
            [state.join("logs")],
        );
        let report = layout.wipe().expect("wipe");

        assert_eq!(
            fs::read_to_string(state.join("machine.yaml")).expect("kept"),
            "config"
        );
        assert_eq!(
            fs::read_to_string(state.join("apid/server.key")).expect("kept"),
            "key"
        );
        assert!(!state.join("run/other").exists());
        assert!(state.join("run").is_dir(), "on the way to the socket");
        assert_eq!(fs::read(state.join("logs/web.log")).expect("emptied"), b"");
        assert_eq!(
            fs::read(state.join("logs/web.log.1")).expect("emptied"),
            b""
        );
        for gone in ["history", "boot_id", "data", "link"] {
            assert!(
                fs::symlink_metadata(state.join(gone)).is_err(),
                "{gone} should be gone"
            );
        }
        assert_eq!(
            fs::read_to_string(outside.join("precious")).expect("outside untouched"),
            "keep me"
        );
        assert_eq!(report.emptied, 2);
        assert_eq!(report.kept, 2);

        // The open log keeps working: appends land at the start of the emptied file.
        use std::io::Write as _;
        open_log.write_all(b"after reset\n").expect("append");
        assert_eq!(
            fs::read_to_string(state.join("logs/web.log")).expect("log"),
            "after reset\n"
        );
    }

    #[test]
    fn a_missing_state_directory_wipes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = StateLayout::new(&tmp.path().join("nope"), [], []);
        assert_eq!(layout.wipe().expect("wipe"), WipeReport::default());
    }

    #[test]
    fn kept_paths_given_through_a_symlink_still_match() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        write(&state.join("machine.yaml"), "config");
        std::os::unix::fs::symlink(&state, tmp.path().join("alias")).expect("symlink");
        let layout = StateLayout::new(&state, [tmp.path().join("alias/machine.yaml")], []);
        layout.wipe().expect("wipe");
        assert!(state.join("machine.yaml").exists());
    }
}
