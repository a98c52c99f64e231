//! The directory walk behind List, DiskUsage and Copy: Go's `filepath.Walk` order (pre-order,
//! each directory's entries sorted by name), `lstat` only (a symlink is an entry, never
//! followed), the deny rules applied to every path (a denied directory is reported but never
//! entered), and a cap on the number of entries.

use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::policy::{DEFAULT_MAX_WALK_ENTRIES, DenyRule, FilesPolicy};

/// How far a walk goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalkOptions {
    /// Directories at this depth or deeper are reported but not entered; the root (depth 0)
    /// is always entered. `None`: no limit.
    pub(crate) max_depth: Option<usize>,
    /// The most entries the walk visits, the root included.
    pub(crate) limit: usize,
}

/// One visited path.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The full path: the walk's root joined with `relative`.
    pub(crate) path: PathBuf,
    /// `.` for a directory root, the file name for a file root, else the path below the root.
    pub(crate) relative: PathBuf,
    /// 0 for the root, 1 for its children, …
    pub(crate) depth: usize,
    /// `lstat` of the path.
    pub(crate) metadata: io::Result<Metadata>,
    /// The target, for a symlink.
    pub(crate) link: Option<io::Result<PathBuf>>,
    /// The deny rule covering the path, if any.
    pub(crate) denied: Option<DenyRule>,
}

impl Entry {
    pub(super) fn new(
        path: PathBuf,
        relative: PathBuf,
        depth: usize,
        policy: &FilesPolicy,
    ) -> Self {
        let metadata = fs::symlink_metadata(&path);
        let link = match &metadata {
            Ok(meta) if meta.file_type().is_symlink() => Some(fs::read_link(&path)),
            _ => None,
        };
        let denied = policy.denied(&path).cloned();
        Entry {
            path,
            relative,
            depth,
            metadata,
            link,
            denied,
        }
    }

    /// Whether this is a directory (not a symlink to one).
    pub(crate) fn is_dir(&self) -> bool {
        self.metadata.as_ref().is_ok_and(Metadata::is_dir)
    }

    fn child_relative(&self, name: &OsString) -> PathBuf {
        if self.depth == 0 {
            PathBuf::from(name)
        } else {
            self.relative.join(name)
        }
    }
}

/// What the visitor is told, in walk order.
#[derive(Debug)]
pub(crate) enum Visit<'a> {
    /// A path, before anything below it.
    Entry(&'a Entry),
    /// Reading the entries of this directory failed (told after its [`Visit::Entry`]).
    ReadDirFailed(&'a Entry, io::Error),
    /// Everything below this directory has been visited. Told for every directory that was
    /// entered, also when reading it failed.
    Leave(&'a Entry),
}

/// How a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every path was visited.
    Complete,
    /// The visitor asked to stop (the client went away).
    Stopped,
    /// [`WalkOptions::limit`] entries were visited and more remained.
    Limit,
}

/// Walks `root` (canonical, already checked against the policy); see the module docs.
pub(crate) fn walk(
    root: &Path,
    policy: &FilesPolicy,
    options: WalkOptions,
    mut visit: impl FnMut(Visit<'_>) -> ControlFlow<()>,
) -> Outcome {
    struct Frame {
        entry: Entry,
        children: std::vec::IntoIter<OsString>,
    }

    let relative = match root.file_name() {
        Some(name) if !fs::metadata(root).is_ok_and(|m| m.is_dir()) => PathBuf::from(name),
        _ => PathBuf::from("."),
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut count = 0_usize;
    let mut next = Some(Entry::new(root.to_owned(), relative, 0, policy));

    loop {
        if let Some(entry) = next.take() {
            count += 1;
            if visit(Visit::Entry(&entry)).is_break() {
                return Outcome::Stopped;
            }
            let enter = entry.is_dir()
                && entry.denied.is_none()
                && (entry.depth == 0 || options.max_depth.is_none_or(|max| entry.depth < max));
            if enter {
                // Enough names to sort any directory the walk can finish (so what is sent
                // before a limit is hit is still the lexically first), bounded in memory.
                let budget = options
                    .limit
                    .max(DEFAULT_MAX_WALK_ENTRIES)
                    .saturating_add(1);
                match children(&entry.path, budget) {
                    Ok(children) => stack.push(Frame {
                        entry,
                        children: children.into_iter(),
                    }),
                    Err(err) => {
                        if visit(Visit::ReadDirFailed(&entry, err)).is_break()
                            || visit(Visit::Leave(&entry)).is_break()
                        {
                            return Outcome::Stopped;
                        }
                    }
                }
            }
        }
        let Some(frame) = stack.last_mut() else {
            return Outcome::Complete;
        };
        match frame.children.next() {
            Some(name) => {
                if count >= options.limit {
                    return Outcome::Limit;
                }
                let parent = &frame.entry;
                next = Some(Entry::new(
                    parent.path.join(&name),
                    parent.child_relative(&name),
                    parent.depth + 1,
                    policy,
                ));
            }
            None => {
                if let Some(frame) = stack.pop()
                    && visit(Visit::Leave(&frame.entry)).is_break()
                {
                    return Outcome::Stopped;
                }
            }
        }
    }
}

/// The names in `dir`, sorted bytewise (Go's `filepath.Walk` order), at most `budget` of them
/// (a larger directory exceeds the walk's limit anyway).
fn children(dir: &Path, budget: usize) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name());
        if names.len() >= budget {
            break;
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// `root/{b/{c, d/e}, a, z -> b}`.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = fs::canonicalize(dir.path()).expect("canonical");
        fs::create_dir_all(root.join("b/d")).expect("mkdir");
        fs::write(root.join("a"), b"a").expect("write");
        fs::write(root.join("b/c"), b"c").expect("write");
        fs::write(root.join("b/d/e"), b"e").expect("write");
        symlink("b", root.join("z")).expect("symlink");
        (dir, root)
    }

    fn walked(root: &Path, policy: &FilesPolicy, options: WalkOptions) -> (Vec<String>, Outcome) {
        let mut seen = Vec::new();
        let outcome = walk(root, policy, options, |visit| {
            match visit {
                Visit::Entry(e) => seen.push(e.relative.display().to_string()),
                Visit::ReadDirFailed(e, _) => seen.push(format!("error {}", e.relative.display())),
                Visit::Leave(e) => seen.push(format!("leave {}", e.relative.display())),
            }
            ControlFlow::Continue(())
        });
        (seen, outcome)
    }

    const ALL: WalkOptions = WalkOptions {
        max_depth: None,
        limit: 1000,
    };

    #[test]
    fn pre_order_sorted_and_symlinks_are_not_followed() {
        let (_dir, root) = tree();
        let (seen, outcome) = walked(&root, &FilesPolicy::default(), ALL);
        assert_eq!(
            seen,
            [
                ".",
                "a",
                "b",
                "b/c",
                "b/d",
                "b/d/e",
                "leave b/d",
                "leave b",
                "z",
                "leave ."
            ]
        );
        assert_eq!(outcome, Outcome::Complete);
    }

    #[test]
    fn max_depth_reports_but_does_not_enter_deeper_directories() {
        let (_dir, root) = tree();
        let options = |max| WalkOptions {
            max_depth: Some(max),
            limit: 1000,
        };
        let (seen, _) = walked(&root, &FilesPolicy::default(), options(1));
        assert_eq!(seen, [".", "a", "b", "z", "leave ."]);
        // The root is always entered.
        let (seen, _) = walked(&root, &FilesPolicy::default(), options(0));
        assert_eq!(seen, [".", "a", "b", "z", "leave ."]);
        let (seen, _) = walked(&root, &FilesPolicy::default(), options(2));
        assert_eq!(
            seen,
            [".", "a", "b", "b/c", "b/d", "leave b", "z", "leave ."]
        );
    }

    #[test]
    fn a_denied_directory_is_visited_but_not_entered() {
        let (_dir, root) = tree();
        let policy = FilesPolicy::default().with_denied(
            super::super::policy::DenyRule::new(root.join("b/d"), "secret").expect("rule"),
        );
        let mut denied = Vec::new();
        let mut seen = Vec::new();
        walk(&root, &policy, ALL, |visit| {
            if let Visit::Entry(e) = visit {
                seen.push(e.relative.display().to_string());
                if e.denied.is_some() {
                    denied.push(e.relative.display().to_string());
                }
            }
            ControlFlow::Continue(())
        });
        assert_eq!(seen, [".", "a", "b", "b/c", "b/d", "z"]);
        assert_eq!(denied, ["b/d"]);
    }

    #[test]
    fn the_entry_limit_stops_the_walk() {
        let (_dir, root) = tree();
        let options = WalkOptions {
            max_depth: None,
            limit: 3,
        };
        let (seen, outcome) = walked(&root, &FilesPolicy::default(), options);
        assert_eq!(seen, [".", "a", "b"]);
        assert_eq!(outcome, Outcome::Limit);
        // Exactly as many entries as the limit is complete.
        let options = WalkOptions {
            max_depth: None,
            limit: 7,
        };
        assert_eq!(
            walked(&root, &FilesPolicy::default(), options).1,
            Outcome::Complete
        );
    }

    #[test]
    fn a_file_root_is_one_entry_named_after_the_file() {
        let (_dir, root) = tree();
        let (seen, outcome) = walked(&root.join("b/c"), &FilesPolicy::default(), ALL);
        assert_eq!(seen, ["c"]);
        assert_eq!(outcome, Outcome::Complete);
    }

    #[test]
    fn the_visitor_can_stop_the_walk() {
        let (_dir, root) = tree();
        let mut n = 0;
        let outcome = walk(&root, &FilesPolicy::default(), ALL, |_| {
            n += 1;
            if n == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(outcome, Outcome::Stopped);
        assert_eq!(n, 2);
    }
}
