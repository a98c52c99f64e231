//! `List`: one `FileInfo` per walked entry.

use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use basalt_api::machine::{self, FileInfo, list_request::Type};

use super::mode::go_file_mode;
use super::policy::FilesPolicy;
use super::walk::{Entry, Outcome, Visit, WalkOptions, walk};
use super::{Sink, io_text};
use crate::Error;

/// Walks the resolved `root` and sends what `request` asks for.
///
/// Depth as Talos: `recurse=false` lists the root and its children; `recurse=true` with
/// `recursion_depth` N ≥ 1 lists down to depth N; with 0 (or a negative value) there is no
/// limit. `types` filters what is sent (error entries always are), not what is walked.
pub(crate) fn stream(
    policy: &FilesPolicy,
    root: &Path,
    request: &machine::ListRequest,
    sink: &Sink<FileInfo>,
) {
    let options = WalkOptions {
        max_depth: max_depth(request.recurse, request.recursion_depth),
        limit: policy.max_walk_entries(),
    };
    let types: Vec<Type> = request
        .types
        .iter()
        .filter_map(|t| Type::try_from(*t).ok())
        .collect();
    let outcome = walk(root, policy, options, |visit| {
        let info = match visit {
            Visit::Entry(entry) => {
                let info = file_info(entry, request.report_xattrs);
                if !info.error.is_empty() || wanted(&types, entry) {
                    info
                } else {
                    return ControlFlow::Continue(());
                }
            }
            Visit::ReadDirFailed(entry, err) => FileInfo {
                name: entry.path.to_string_lossy().into_owned(),
                relative_name: entry.relative.to_string_lossy().into_owned(),
                error: format!("open {}: {}", entry.path.display(), io_text(&err)),
                ..FileInfo::default()
            },
            Visit::Leave(_) => return ControlFlow::Continue(()),
        };
        if sink.send(info) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    if outcome == Outcome::Limit {
        sink.fail(
            Error::WalkLimit {
                path: root.display().to_string(),
                limit: options.limit,
            }
            .into(),
        );
    }
}

/// Talos's depth rule as a [`WalkOptions::max_depth`].
fn max_depth(recurse: bool, recursion_depth: i32) -> Option<usize> {
    if !recurse {
        Some(1)
    } else {
        usize::try_from(recursion_depth)
            .ok()
            .filter(|depth| *depth > 0)
    }
}

/// Whether an entry's type is among `types` (an empty filter lets everything through).
fn wanted(types: &[Type], entry: &Entry) -> bool {
    if types.is_empty() {
        return true;
    }
    let Ok(meta) = &entry.metadata else {
        return true;
    };
    let kind = meta.file_type();
    types.iter().any(|t| match t {
        Type::Regular => kind.is_file(),
        Type::Directory => kind.is_dir(),
        Type::Symlink => kind.is_symlink(),
    })
}

/// The `FileInfo` of one entry. A denied directory carries its metadata and an error saying
/// why it was not listed; an entry that cannot be `lstat`ed carries only its names and error.
fn file_info(entry: &Entry, report_xattrs: bool) -> FileInfo {
    let name = entry.path.to_string_lossy().into_owned();
    let relative_name = entry.relative.to_string_lossy().into_owned();
    let meta = match &entry.metadata {
        Ok(meta) => meta,
        Err(err) => {
            return FileInfo {
                error: format!("lstat {name}: {}", io_text(err)),
                name,
                relative_name,
                ..FileInfo::default()
            };
        }
    };
    let mut error = String::new();
    let link = match &entry.link {
        Some(Ok(target)) => target.to_string_lossy().into_owned(),
        Some(Err(err)) => {
            error = format!("readlink {name}: {}", io_text(err));
            String::new()
        }
        None => String::new(),
    };
    if let Some(rule) = &entry.denied
        && meta.is_dir()
    {
        error = format!("not listed: denied: {}", rule.reason());
    }
    let xattrs = if report_xattrs {
        basalt_sys::xattrs(&entry.path)
            .unwrap_or_else(|err| {
                tracing::debug!(error = &err as &dyn std::error::Error, "Cannot read xattrs");
                Vec::new()
            })
            .into_iter()
            .map(|x| machine::Xattr {
                name: x.name,
                data: x.value,
            })
            .collect()
    } else {
        Vec::new()
    };
    FileInfo {
        metadata: None,
        name,
        size: i64::try_from(meta.size()).unwrap_or(i64::MAX),
        mode: go_file_mode(meta.mode()),
        modified: meta.mtime(),
        is_dir: meta.is_dir(),
        error,
        link,
        relative_name,
        uid: meta.uid(),
        gid: meta.gid(),
        xattrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_follows_talos() {
        assert_eq!(max_depth(false, 0), Some(1));
        assert_eq!(max_depth(false, 7), Some(1));
        assert_eq!(max_depth(true, 0), None);
        assert_eq!(max_depth(true, -3), None);
        assert_eq!(max_depth(true, 1), Some(1));
        assert_eq!(max_depth(true, 3), Some(3));
    }
}
