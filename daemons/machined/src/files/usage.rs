//! `DiskUsage`: du-like sizes, with Talos's arithmetic and filters.

use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use basalt_api::machine::{DiskUsageInfo, DiskUsageRequest};

use super::policy::FilesPolicy;
use super::walk::{Entry, Outcome, Visit, WalkOptions, walk};
use super::{Sink, io_text};
use crate::Error;

/// Talos counts `/proc/kcore` (whose size is the whole address space) as 0.
const KCORE: &str = "/proc/kcore";

/// Most paths one DiskUsage call may name. Each is resolved (and kept) before anything is
/// measured, so without a cap one 32 MiB request of `"/"` repeated would hold millions of them.
pub(crate) const MAX_PATHS: usize = 256;

/// Resolves every requested path before anything is measured; the first bad one fails the
/// call.
pub(crate) fn resolve_all(policy: &FilesPolicy, paths: &[String]) -> Result<Vec<PathBuf>, Error> {
    if paths.is_empty() {
        return Err(Error::InvalidArgument {
            reason: "at least one path is required".to_owned(),
        });
    }
    if paths.len() > MAX_PATHS {
        return Err(Error::InvalidArgument {
            reason: format!(
                "{} paths named; one call measures at most {MAX_PATHS}",
                paths.len()
            ),
        });
    }
    paths.iter().map(|path| policy.resolve(path)).collect()
}

/// Measures each root in turn and sends what passes the request's filters. The walk limit is
/// one budget for the whole call, not one per root, so naming a path many times walks no more.
pub(crate) fn stream(
    policy: &FilesPolicy,
    roots: &[PathBuf],
    request: &DiskUsageRequest,
    sink: &Sink<DiskUsageInfo>,
) {
    let filter = Filter {
        recursion_depth: request.recursion_depth,
        all: request.all,
        threshold: request.threshold,
    };
    let limit = policy.max_walk_entries();
    let mut visited = 0;
    for root in roots {
        let options = WalkOptions {
            max_depth: None,
            limit: limit.saturating_sub(visited),
        };
        let outcome = match options.limit {
            0 => Outcome::Limit,
            _ => measure(policy, root, options, filter, &mut visited, |info| {
                sink.send(info)
            }),
        };
        match outcome {
            Outcome::Complete => {}
            Outcome::Stopped => return,
            Outcome::Limit => {
                sink.fail(
                    Error::WalkLimit {
                        path: root.display().to_string(),
                        limit,
                    }
                    .into(),
                );
                return;
            }
        }
    }
}

/// Which sizes are sent (Talos's rules, with one difference: the requested path itself is sent
/// even when it is a file and `all` is off, as `du FILE` does).
#[derive(Clone, Copy, Debug)]
struct Filter {
    /// N > 0: only entries less than N levels below the requested path (so 1 = the path only).
    recursion_depth: i32,
    /// Files too, not only directories.
    all: bool,
    /// Positive: drop sizes below it. Negative: drop sizes above its magnitude.
    threshold: i64,
}

impl Filter {
    fn depth_ok(self, depth: usize) -> bool {
        self.recursion_depth <= 0
            || usize::try_from(self.recursion_depth).is_ok_and(|max| depth < max)
    }

    fn keep(self, depth: usize, is_dir: bool, size: i64) -> bool {
        let threshold_ok = match self.threshold {
            0 => true,
            t if t > 0 => size >= t,
            t => size.unsigned_abs() <= t.unsigned_abs(),
        };
        self.depth_ok(depth) && (is_dir || self.all || depth == 0) && threshold_ok
    }
}

/// A directory whose children are being added up.
struct Open {
    info: DiskUsageInfo,
}

/// Walks `root`, adding each directory's children (its own size included) and sending each
/// kept entry through `send` (files when met, directories after their children). Entries that
/// cannot be measured are sent with `error` (when their depth is shown) and count as 0.
/// `visited` counts the entries walked.
fn measure(
    policy: &FilesPolicy,
    root: &Path,
    options: WalkOptions,
    filter: Filter,
    visited: &mut usize,
    mut send: impl FnMut(DiskUsageInfo) -> bool,
) -> Outcome {
    let mut open: Vec<Open> = Vec::new();
    let mut emit = |info: DiskUsageInfo| {
        if send(info) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    };
    walk(root, policy, options, |visit| match visit {
        Visit::Entry(entry) => {
            *visited += 1;
            let meta = match &entry.metadata {
                Ok(meta) => meta,
                Err(err) => {
                    let error = format!("lstat {}: {}", entry.path.display(), io_text(err));
                    return emit_error(&mut emit, filter, entry, error);
                }
            };
            let size = if entry.path == Path::new(KCORE) {
                0
            } else {
                i64::try_from(meta.size()).unwrap_or(i64::MAX)
            };
            if meta.is_dir() {
                if let Some(rule) = &entry.denied {
                    let error = format!("not measured: denied: {}", rule.reason());
                    return emit_error(&mut emit, filter, entry, error);
                }
                open.push(Open {
                    info: info(entry, size),
                });
                return ControlFlow::Continue(());
            }
            if let Some(parent) = open.last_mut() {
                parent.info.size = parent.info.size.saturating_add(size);
            }
            if filter.keep(entry.depth, false, size) {
                emit(info(entry, size))
            } else {
                ControlFlow::Continue(())
            }
        }
        Visit::ReadDirFailed(entry, err) => {
            let error = format!("open {}: {}", entry.path.display(), io_text(&err));
            emit_error(&mut emit, filter, entry, error)
        }
        Visit::Leave(dir) => {
            let Some(done) = open.pop() else {
                return ControlFlow::Continue(());
            };
            if let Some(parent) = open.last_mut() {
                parent.info.size = parent.info.size.saturating_add(done.info.size);
            }
            if filter.keep(dir.depth, true, done.info.size) {
                emit(done.info)
            } else {
                ControlFlow::Continue(())
            }
        }
    })
}

fn info(entry: &Entry, size: i64) -> DiskUsageInfo {
    DiskUsageInfo {
        metadata: None,
        name: entry.path.to_string_lossy().into_owned(),
        size,
        error: String::new(),
        relative_name: entry.relative.to_string_lossy().into_owned(),
    }
}

/// Sends an error entry when its depth is shown (a deep unreadable directory is not worth a
/// line when its parent's total is all that was asked for).
fn emit_error(
    emit: &mut impl FnMut(DiskUsageInfo) -> ControlFlow<()>,
    filter: Filter,
    entry: &Entry,
    error: String,
) -> ControlFlow<()> {
    if !filter.depth_ok(entry.depth) {
        return ControlFlow::Continue(());
    }
    emit(DiskUsageInfo {
        error,
        ..info(entry, 0)
    })
}

#[cfg(test)]
mod tests {
    use super::super::policy::DenyRule;
    use super::*;

    const ALL: WalkOptions = WalkOptions {
        max_depth: None,
        limit: 1000,
    };

    fn filter(recursion_depth: i32, all: bool, threshold: i64) -> Filter {
        Filter {
            recursion_depth,
            all,
            threshold,
        }
    }

    #[test]
    fn threshold_positive_drops_small_negative_drops_large() {
        let f = filter(0, true, 100);
        assert!(!f.keep(1, false, 99));
        assert!(f.keep(1, false, 100));
        let f = filter(0, true, -100);
        assert!(f.keep(1, false, 100));
        assert!(!f.keep(1, false, 101));
        let f = filter(0, true, i64::MIN);
        assert!(f.keep(1, false, i64::MAX));
    }

    #[test]
    fn files_only_with_all_except_the_requested_path() {
        assert!(!filter(0, false, 0).keep(1, false, 5));
        assert!(filter(0, false, 0).keep(1, true, 5));
        assert!(filter(0, true, 0).keep(1, false, 5));
        assert!(filter(0, false, 0).keep(0, false, 5));
    }

    #[test]
    fn recursion_depth_n_shows_n_levels() {
        let f = filter(1, true, 0);
        assert!(f.keep(0, true, 1));
        assert!(!f.keep(1, true, 1));
        let f = filter(2, true, 0);
        assert!(f.keep(1, true, 1));
        assert!(!f.keep(2, false, 1));
        assert!(filter(0, true, 0).keep(40, true, 1));
        assert!(filter(-1, true, 0).keep(40, true, 1));
    }

    /// `root/{a (10 B), d/{b (20 B), e/{c (30 B)}}}`.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = std::fs::canonicalize(dir.path()).expect("canonical");
        std::fs::create_dir_all(root.join("d/e")).expect("mkdir");
        std::fs::write(root.join("a"), [0; 10]).expect("write");
        std::fs::write(root.join("d/b"), [0; 20]).expect("write");
        std::fs::write(root.join("d/e/c"), [0; 30]).expect("write");
        (dir, root)
    }

    fn sizes(root: &Path, policy: &FilesPolicy, filter: Filter) -> Vec<(String, i64, bool)> {
        let mut out = Vec::new();
        let mut visited = 0;
        let outcome = measure(policy, root, ALL, filter, &mut visited, |info| {
            out.push((info.relative_name, info.size, !info.error.is_empty()));
            true
        });
        assert_eq!(outcome, Outcome::Complete);
        out
    }

    fn dir_size(path: &Path) -> i64 {
        i64::try_from(std::fs::metadata(path).expect("stat").size()).expect("size")
    }

    #[test]
    fn directories_sum_their_children_and_their_own_size_after_them() {
        let (_dir, root) = tree();
        let (e, d, r) = (
            dir_size(&root.join("d/e")),
            dir_size(&root.join("d")),
            dir_size(&root),
        );
        let got = sizes(&root, &FilesPolicy::default(), filter(0, true, 0));
        let want = [
            ("a", 10),
            ("d/b", 20),
            ("d/e/c", 30),
            ("d/e", e + 30),
            ("d", d + 20 + e + 30),
            (".", r + 10 + d + 20 + e + 30),
        ];
        let want: Vec<(String, i64, bool)> = want
            .iter()
            .map(|(n, s)| ((*n).to_owned(), *s, false))
            .collect();
        assert_eq!(got, want);
        // Without `all`: directories only; with depth 2: down to `d`.
        let got = sizes(&root, &FilesPolicy::default(), filter(2, false, 0));
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["d", "."]);
        assert_eq!(
            got[1].1,
            r + 10 + d + 20 + e + 30,
            "totals include hidden levels"
        );
    }

    #[test]
    fn a_denied_directory_is_reported_and_not_counted() {
        let (_dir, root) = tree();
        let policy = FilesPolicy::default()
            .with_denied(DenyRule::new(root.join("d"), "secret").expect("rule"));
        let got = sizes(&root, &policy, filter(0, false, 0));
        let r = dir_size(&root);
        assert_eq!(
            got,
            [("d".to_owned(), 0, true), (".".to_owned(), r + 10, false)]
        );
    }

    #[test]
    fn a_file_path_reports_its_own_size() {
        let (_dir, root) = tree();
        let got = sizes(
            &root.join("d/b"),
            &FilesPolicy::default(),
            filter(0, false, 0),
        );
        assert_eq!(got, [("b".to_owned(), 20, false)]);
    }

    #[test]
    fn an_empty_request_is_refused() {
        let err = resolve_all(&FilesPolicy::default(), &[]).expect_err("refused");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }
}
