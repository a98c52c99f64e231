//! The path policy of the file API: which paths Read, List, DiskUsage and Copy may touch.
//!
//! Talos lets `Read` and `Copy` reach any file, machine config and keys included
//! (talos-facts.md §2). basalt keeps Talos's roles (Read and Copy are admin-only) and adds a
//! policy in front of every file method:
//!
//! 1. the path must be absolute (InvalidArgument otherwise);
//! 2. it must not name a denied path, as written with `.`/`..` folded lexically
//!    (PermissionDenied, naming the path and the rule's reason);
//! 3. it is canonicalized (every symlink and `..` resolved; a missing path is NotFound);
//! 4. the canonical path must lie under an allowed root and must not lie under a denied path
//!    (PermissionDenied, naming what the path resolves to).
//!
//! Walks (List, DiskUsage, Copy) start at the canonical root and never follow a symlink, so
//! nothing they visit can leave the root; each visited path is checked against the deny rules
//! again, and a denied directory is never entered.
//!
//! # Defaults
//!
//! Allowed roots: `/`. Deny rules ([`default_deny_rules`]), each a path prefix in which `*`
//! matches exactly one component:
//!
//! | rule | why |
//! | --- | --- |
//! | `/dev` | device nodes: raw disks and memory (`/dev/mem`, `/dev/sda`), and reads that block (ttys, `/dev/random` on old kernels) or consume data (`/dev/kmsg`, served by Dmesg instead) |
//! | `/proc/kcore` | the kernel's image of physical memory |
//! | `/proc/kmsg` | reading consumes kernel log records; Dmesg serves the log |
//! | `/proc/*/mem`, `/proc/*/task/*/mem` | another process's memory |
//! | `/proc/*/environ`, `/proc/*/task/*/environ` | another process's environment, where secrets often live |
//!
//! `Server::bind` adds machined's state directory (`Config::state_dir`: keys, certificates,
//! config history) and the machine config file (`Config::machine_config_file`: CA key, join
//! tokens) to every policy, so no configuration can make the API hand out its own secrets.
//! `machined --files-root DIR` (repeatable) replaces the roots and `--files-deny PATH`
//! (repeatable) adds rules.
//!
//! # Limits
//!
//! The canonicalize-then-open sequence can race with someone swapping a path component for a
//! symlink in between. Read closes that gap by checking what the opened descriptor actually
//! refers to (`/proc/self/fd/N`) against the policy again before sending a byte, and Copy does
//! the same for every file it archives; walks never follow symlinks at all. Someone who can
//! already rename files on the node could still win a race inside a walked tree for a
//! directory's *listing* (names and sizes), which is accepted.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// Default entry limit of one List, DiskUsage or Copy walk. A walk that would visit more
/// entries ends with ResourceExhausted after sending what it has; it bounds the time and
/// memory one request may take (a recursive List of `/` on a busy host has millions of
/// entries, mostly under `/proc`).
pub const DEFAULT_MAX_WALK_ENTRIES: usize = 100_000;

/// Why machined's state directory is denied (added to every policy by
/// [`Server::bind`](crate::Server::bind)).
pub const STATE_DIR_REASON: &str =
    "machined's state directory (keys, certificates, config history)";

/// Why the machine config file is denied (added to every policy by
/// [`Server::bind`](crate::Server::bind)).
pub const MACHINE_CONFIG_REASON: &str = "the machine config (CA key, join tokens)";

/// A path prefix the file API refuses, with the reason given to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyRule {
    /// An absolute, lexically normalized path; a `*` component matches any single component.
    pattern: PathBuf,
    /// Why the path is refused, e.g. "another process's memory".
    reason: String,
}

impl DenyRule {
    /// A rule refusing `pattern` and everything below it. `pattern` must be absolute; `.` and
    /// `..` components are folded lexically; a `*` component matches any one component.
    pub fn new(
        pattern: impl Into<PathBuf>,
        reason: impl Into<String>,
    ) -> Result<Self, FilesPolicyError> {
        let pattern = pattern.into();
        if !pattern.is_absolute() {
            return Err(FilesPolicyError::RelativeDenyRule { path: pattern });
        }
        Ok(DenyRule {
            pattern: normalize(&pattern),
            reason: reason.into(),
        })
    }

    /// The refused path prefix.
    pub fn pattern(&self) -> &Path {
        &self.pattern
    }

    /// Why it is refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether `path` (absolute and normalized) is the pattern or lies below it.
    fn matches(&self, path: &Path) -> bool {
        let mut components = path.components();
        self.pattern.components().all(|pattern| {
            components
                .next()
                .is_some_and(|component| pattern.as_os_str() == "*" || pattern == component)
        })
    }
}

/// The deny rules every [`FilesPolicy::default`] starts with; see the module docs for the
/// reason behind each.
pub fn default_deny_rules() -> Vec<DenyRule> {
    const RULES: &[(&str, &str)] = &[
        (
            "/dev",
            "device nodes (raw disks and memory, and reads that block or consume data)",
        ),
        ("/proc/kcore", "the kernel's image of physical memory"),
        (
            "/proc/kmsg",
            "reading it consumes kernel log records; use Dmesg",
        ),
        ("/proc/*/mem", "another process's memory"),
        ("/proc/*/task/*/mem", "another process's memory"),
        (
            "/proc/*/environ",
            "another process's environment, where secrets often live",
        ),
        (
            "/proc/*/task/*/environ",
            "another process's environment, where secrets often live",
        ),
    ];
    RULES
        .iter()
        .map(|(pattern, reason)| DenyRule {
            pattern: PathBuf::from(pattern),
            reason: (*reason).to_owned(),
        })
        .collect()
}

/// A bad [`FilesPolicy`] or [`DenyRule`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesPolicyError {
    /// An allowed root is not an absolute path.
    #[error("allowed root {path} is not an absolute path")]
    RelativeRoot {
        /// The root as given.
        path: PathBuf,
    },
    /// A deny rule is not an absolute path.
    #[error("deny rule {path} is not an absolute path")]
    RelativeDenyRule {
        /// The rule as given.
        path: PathBuf,
    },
    /// No allowed root was given, which would refuse every path.
    #[error("at least one allowed root is required")]
    NoRoots,
}

/// Which paths the file API (Read, List, DiskUsage, Copy) may touch; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct FilesPolicy {
    /// Canonical forms of the allowed roots (as given when a root cannot be resolved).
    roots: Vec<PathBuf>,
    /// The deny rules, plus the canonical alias of each rule whose path resolves elsewhere.
    deny: Vec<DenyRule>,
    max_walk_entries: usize,
}

impl FilesPolicy {
    /// A policy allowing `roots` minus `deny` (and nothing of [`default_deny_rules`] unless it
    /// is passed in). Each root and rule that exists is also resolved now, so that a root or a
    /// denied directory reached through a symlink (`/var/lib` → `/data/lib`) still matches the
    /// canonical paths requests resolve to.
    pub fn new(
        roots: impl IntoIterator<Item = PathBuf>,
        deny: impl IntoIterator<Item = DenyRule>,
    ) -> Result<Self, FilesPolicyError> {
        let mut canonical_roots = Vec::new();
        for root in roots {
            if !root.is_absolute() {
                return Err(FilesPolicyError::RelativeRoot { path: root });
            }
            let root = std::fs::canonicalize(&root).unwrap_or_else(|_| normalize(&root));
            if !canonical_roots.contains(&root) {
                canonical_roots.push(root);
            }
        }
        if canonical_roots.is_empty() {
            return Err(FilesPolicyError::NoRoots);
        }
        let mut policy = FilesPolicy {
            roots: canonical_roots,
            deny: Vec::new(),
            max_walk_entries: DEFAULT_MAX_WALK_ENTRIES,
        };
        for rule in deny {
            policy = policy.with_denied(rule);
        }
        Ok(policy)
    }

    /// This policy with one more deny rule (and its canonical alias, when the rule's path
    /// exists and resolves elsewhere).
    pub fn with_denied(mut self, rule: DenyRule) -> Self {
        let is_pattern = rule.pattern.components().any(|c| c.as_os_str() == "*");
        if !is_pattern
            && let Ok(canonical) = std::fs::canonicalize(&rule.pattern)
            && canonical != rule.pattern
        {
            self.push_rule(DenyRule {
                pattern: canonical,
                reason: rule.reason.clone(),
            });
        }
        self.push_rule(rule);
        self
    }

    /// This policy, also denying machined's own state directory and machine config file.
    /// [`Server::bind`](crate::Server::bind) applies it to every policy, so no configuration
    /// can hand out machined's keys.
    pub(crate) fn protecting(
        mut self,
        state_dir: Option<&Path>,
        machine_config: Option<&Path>,
    ) -> Self {
        let own = [
            (state_dir, STATE_DIR_REASON),
            (machine_config, MACHINE_CONFIG_REASON),
        ];
        for (path, reason) in own {
            let Some(path) = path else { continue };
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
            match DenyRule::new(path, reason) {
                Ok(rule) => self = self.with_denied(rule),
                Err(err) => tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "Cannot protect a path of machined from the file API"
                ),
            }
        }
        self
    }

    /// This policy with another walk limit (at least 1).
    pub fn with_max_walk_entries(mut self, max: usize) -> Self {
        self.max_walk_entries = max.max(1);
        self
    }

    /// The allowed roots, canonical where they could be resolved.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The deny rules, including canonical aliases.
    pub fn deny_rules(&self) -> &[DenyRule] {
        &self.deny
    }

    /// How many entries one walk may visit.
    pub fn max_walk_entries(&self) -> usize {
        self.max_walk_entries
    }

    fn push_rule(&mut self, rule: DenyRule) {
        if !self.deny.contains(&rule) {
            self.deny.push(rule);
        }
    }

    /// Checks a path from a request and resolves it: absolute, not denied as written,
    /// canonicalized (blocking: call it off the async workers), under a root and not denied
    /// once resolved. Every refusal is an [`Error`] that names `requested`.
    pub(crate) fn resolve(&self, requested: &str) -> Result<PathBuf, Error> {
        let path = Path::new(requested);
        if !path.is_absolute() {
            return Err(Error::InvalidArgument {
                reason: format!("path must be absolute: {requested:?}"),
            });
        }
        if requested.contains('\0') {
            return Err(Error::InvalidArgument {
                reason: format!("path contains a NUL byte: {requested:?}"),
            });
        }
        if let Some(rule) = self.denied(&normalize(path)) {
            return Err(Error::PathDenied {
                path: requested.to_owned(),
                reason: rule.to_string(),
            });
        }
        let canonical = std::fs::canonicalize(path).map_err(|err| refusal(requested, path, err))?;
        self.check_resolved(requested, &canonical)?;
        Ok(canonical)
    }

    /// Checks what an opened file really is (`/proc/self/fd/N`) against the policy: the open
    /// follows symlinks in the path's directories, and one may have been swapped in since the
    /// path was resolved or listed.
    pub(crate) fn check_opened(&self, requested: &str, file: &std::fs::File) -> Result<(), Error> {
        use std::os::fd::AsRawFd as _;
        let fd_link = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let opened = std::fs::read_link(&fd_link).map_err(|source| Error::File {
            op: "read link",
            path: fd_link,
            source,
        })?;
        self.check_resolved(requested, &opened)
    }

    /// Checks where a requested path really leads: under an allowed root, not denied.
    pub(crate) fn check_resolved(&self, requested: &str, canonical: &Path) -> Result<(), Error> {
        let resolves = || {
            if Path::new(requested) == canonical {
                String::new()
            } else {
                format!("it resolves to {}, ", canonical.display())
            }
        };
        if !self.roots.iter().any(|root| canonical.starts_with(root)) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(Error::PathDenied {
                path: requested.to_owned(),
                reason: format!(
                    "{}outside the allowed roots ({})",
                    resolves(),
                    roots.join(", ")
                ),
            });
        }
        if let Some(rule) = self.denied(canonical) {
            return Err(Error::PathDenied {
                path: requested.to_owned(),
                reason: format!("{}{rule}", resolves()),
            });
        }
        Ok(())
    }

    /// The first deny rule covering `path` (absolute and normalized), if any.
    pub(crate) fn denied(&self, path: &Path) -> Option<&DenyRule> {
        self.deny.iter().find(|rule| rule.matches(path))
    }
}

impl Default for FilesPolicy {
    /// Root `/`, the [`default_deny_rules`], [`DEFAULT_MAX_WALK_ENTRIES`].
    fn default() -> Self {
        FilesPolicy {
            roots: vec![PathBuf::from("/")],
            deny: default_deny_rules(),
            max_walk_entries: DEFAULT_MAX_WALK_ENTRIES,
        }
    }
}

impl fmt::Debug for FilesPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilesPolicy")
            .field("roots", &self.roots)
            .field(
                "deny",
                &self.deny.iter().map(|r| &r.pattern).collect::<Vec<_>>(),
            )
            .field("max_walk_entries", &self.max_walk_entries)
            .finish()
    }
}

impl fmt::Display for DenyRule {
    /// `under /proc/*/mem: another process's memory`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "under {}: {}", self.pattern.display(), self.reason)
    }
}

/// `ELOOP` on Linux (every architecture basalt builds for).
const ELOOP: i32 = 40;

/// The error for a path that could not be canonicalized.
fn refusal(requested: &str, path: &Path, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Error::PathNotFound {
            path: requested.to_owned(),
        },
        io::ErrorKind::PermissionDenied => Error::PathDenied {
            path: requested.to_owned(),
            reason: "machined has no permission to resolve it".to_owned(),
        },
        // A symlink loop or a name too long: the caller's path is the problem; say which and
        // why. (std has no stable ErrorKind for ELOOP.) Anything else (EIO, ENOMEM, ESTALE) is
        // the node's, and an internal error.
        // ENAMETOOLONG, or (std's own check) a NUL byte in the path.
        io::ErrorKind::InvalidFilename | io::ErrorKind::InvalidInput => Error::InvalidArgument {
            reason: format!("cannot resolve {requested:?}: {}", super::io_text(&err)),
        },
        _ if err.raw_os_error() == Some(ELOOP) => Error::InvalidArgument {
            reason: format!("cannot resolve {requested}: {}", super::io_text(&err)),
        },
        _ => Error::File {
            op: "resolve",
            path: path.to_owned(),
            source: err,
        },
    }
}

/// `path` with `.` dropped and `..` folded lexically (never above `/`); absolute paths only.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use tonic::Code;

    use super::*;

    fn refused(result: Result<PathBuf, Error>) -> (Code, String) {
        let status = tonic::Status::from(result.expect_err("refused"));
        (status.code(), status.message().to_owned())
    }

    /// `<tmp>/allowed/{file,dir/,link-out -> ../outside,link-in -> file}`, `<tmp>/outside/secret`,
    /// `<tmp>/allowed/state/key` (denied), with a policy rooted at `<tmp>/allowed`.
    fn fixture() -> (tempfile::TempDir, PathBuf, FilesPolicy) {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = std::fs::canonicalize(dir.path()).expect("canonical tmp");
        let allowed = base.join("allowed");
        std::fs::create_dir_all(allowed.join("dir")).expect("mkdir");
        std::fs::create_dir_all(allowed.join("state")).expect("mkdir");
        std::fs::create_dir_all(base.join("outside")).expect("mkdir");
        std::fs::write(allowed.join("file"), b"x").expect("write");
        std::fs::write(allowed.join("state/key"), b"k").expect("write");
        std::fs::write(base.join("outside/secret"), b"s").expect("write");
        symlink("../outside", allowed.join("link-out")).expect("symlink");
        symlink("file", allowed.join("link-in")).expect("symlink");
        let policy = FilesPolicy::new(
            [allowed.clone()],
            [DenyRule::new(allowed.join("state"), "machined's state").expect("rule")],
        )
        .expect("policy");
        (dir, base, policy)
    }

    fn s(path: &Path) -> String {
        path.display().to_string()
    }

    #[test]
    fn a_relative_path_is_an_invalid_argument() {
        let policy = FilesPolicy::default();
        for path in ["etc/hostname", "", "./x", "../etc"] {
            let (code, message) = refused(policy.resolve(path));
            assert_eq!(code, Code::InvalidArgument, "{path}");
            assert!(message.starts_with("path must be absolute"), "{message}");
        }
    }

    #[test]
    fn a_path_inside_the_root_resolves_to_its_canonical_form() {
        let (_dir, base, policy) = fixture();
        let allowed = base.join("allowed");
        assert_eq!(
            policy
                .resolve(&s(&allowed.join("dir/../file")))
                .expect("ok"),
            allowed.join("file")
        );
        assert_eq!(
            policy.resolve(&s(&allowed.join("link-in"))).expect("ok"),
            allowed.join("file")
        );
    }

    #[test]
    fn dot_dot_cannot_escape_the_root() {
        let (_dir, base, policy) = fixture();
        let path = s(&base.join("allowed/../outside/secret"));
        let (code, message) = refused(policy.resolve(&path));
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains(&path), "{message}");
        assert!(message.contains("outside the allowed roots"), "{message}");
    }

    #[test]
    fn a_symlink_cannot_escape_the_root() {
        let (_dir, base, policy) = fixture();
        let path = s(&base.join("allowed/link-out/secret"));
        let (code, message) = refused(policy.resolve(&path));
        assert_eq!(code, Code::PermissionDenied);
        assert!(
            message.contains(&format!("resolves to {}", s(&base.join("outside/secret")))),
            "{message}"
        );
    }

    #[test]
    fn a_denied_path_is_refused_with_its_reason() {
        let (_dir, base, policy) = fixture();
        let path = s(&base.join("allowed/state/key"));
        let (code, message) = refused(policy.resolve(&path));
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains(&path), "{message}");
        assert!(message.contains("machined's state"), "{message}");
        // Also through `..` and through a symlink into it.
        let dotted = s(&base.join("allowed/dir/../state/key"));
        assert_eq!(code_of(&policy, &dotted), Code::PermissionDenied);
        symlink("state", base.join("allowed/to-state")).expect("symlink");
        let linked = s(&base.join("allowed/to-state/key"));
        let (code, message) = refused(policy.resolve(&linked));
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains("resolves to"), "{message}");
    }

    fn code_of(policy: &FilesPolicy, path: &str) -> Code {
        refused(policy.resolve(path)).0
    }

    #[test]
    fn a_denied_path_is_refused_even_when_missing() {
        let (_dir, base, policy) = fixture();
        let path = s(&base.join("allowed/state/not-there"));
        assert_eq!(code_of(&policy, &path), Code::PermissionDenied);
    }

    #[test]
    fn a_missing_path_is_not_found_and_named() {
        let (_dir, base, policy) = fixture();
        let path = s(&base.join("allowed/nope"));
        let (code, message) = refused(policy.resolve(&path));
        assert_eq!(code, Code::NotFound);
        assert_eq!(message, format!("{path}: no such file or directory"));
        // A path through a regular file is missing too.
        assert_eq!(
            code_of(&policy, &s(&base.join("allowed/file/x"))),
            Code::NotFound
        );
    }

    #[test]
    fn the_default_rules_refuse_kernel_memory_devices_and_process_secrets() {
        let policy = FilesPolicy::default();
        for path in [
            "/proc/kcore",
            "/proc/kmsg",
            "/dev/null",
            "/dev",
            "/proc/self/mem",
            "/proc/1/environ",
            "/proc/self/task/1/mem",
            "/proc/thread-self/environ",
        ] {
            assert_eq!(code_of(&policy, path), Code::PermissionDenied, "{path}");
        }
        assert!(policy.resolve("/proc/self/status").is_ok());
        assert!(policy.resolve("/").is_ok());
    }

    #[test]
    fn star_matches_exactly_one_component() {
        let rule = DenyRule::new("/proc/*/mem", "r").expect("rule");
        assert!(rule.matches(Path::new("/proc/12/mem")));
        assert!(rule.matches(Path::new("/proc/12/mem/x")));
        assert!(!rule.matches(Path::new("/proc/12")));
        assert!(!rule.matches(Path::new("/proc/12/task/3/mem")));
        assert!(!rule.matches(Path::new("/proc/12/memory")));
        let plain = DenyRule::new("/dev", "r").expect("rule");
        assert!(plain.matches(Path::new("/dev")));
        assert!(!plain.matches(Path::new("/devices")));
    }

    #[test]
    fn relative_roots_and_rules_are_refused_and_roots_are_required() {
        assert!(matches!(
            FilesPolicy::new([PathBuf::from("srv")], []),
            Err(FilesPolicyError::RelativeRoot { .. })
        ));
        assert!(matches!(
            DenyRule::new("state", "r"),
            Err(FilesPolicyError::RelativeDenyRule { .. })
        ));
        assert!(matches!(
            FilesPolicy::new(Vec::new(), []),
            Err(FilesPolicyError::NoRoots)
        ));
    }

    #[test]
    fn a_rule_reached_through_a_symlink_also_covers_its_target() {
        let (_dir, base, _) = fixture();
        let real = base.join("real-state");
        std::fs::create_dir(&real).expect("mkdir");
        std::fs::write(real.join("key"), b"k").expect("write");
        symlink(&real, base.join("allowed/alias")).expect("symlink");
        let policy = FilesPolicy::new([base.clone()], [])
            .expect("policy")
            .with_denied(DenyRule::new(base.join("allowed/alias"), "state").expect("rule"));
        assert_eq!(
            code_of(&policy, &s(&real.join("key"))),
            Code::PermissionDenied
        );
    }

    #[test]
    fn machined_state_and_config_are_always_protected() {
        let (_dir, base, policy) = fixture();
        let state = base.join("allowed/dir");
        let config = base.join("allowed/file");
        let policy = policy.protecting(Some(&state), Some(&config));
        let (code, message) = refused(policy.resolve(&s(&config)));
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains(MACHINE_CONFIG_REASON), "{message}");
        let (code, message) = refused(policy.resolve(&s(&state)));
        assert_eq!(code, Code::PermissionDenied);
        assert!(message.contains(STATE_DIR_REASON), "{message}");
    }

    #[test]
    fn normalize_folds_dots_without_touching_the_filesystem() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
        assert_eq!(normalize(Path::new("//a//b/")), PathBuf::from("/a/b"));
    }
}
