//! The crate-wide error type and the validation [`Problem`] it carries.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in this crate.
///
/// Variants are named after the operation that failed and carry the file path or document they
/// were working on. Messages are lower-case and never repeat their `source`: callers that print
/// the chain (`anyhow`'s `{:#}`) get each cause exactly once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`write_atomic`](crate::fs::write_atomic) was told not to overwrite, and the target exists.
    ///
    /// The message stays neutral on purpose: whether `--force` exists is the CLI's business.
    #[error("{} already exists", .path.display())]
    AlreadyExists {
        /// The file that already exists.
        path: PathBuf,
    },

    /// A directory could not be created.
    #[error("cannot create directory {}", .path.display())]
    CreateDir {
        /// The directory being created.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// A string was not valid standard base64.
    #[error("invalid base64")]
    DecodeBase64 {
        /// The decoder's complaint.
        source: base64::DecodeError,
    },

    /// The document was empty (or only comments / `null`).
    #[error("{document}{} is empty", at(.path))]
    Empty {
        /// Which kind of document.
        document: Document,
        /// The file it came from, when it was loaded from one.
        path: Option<PathBuf>,
    },

    /// The document parsed but failed validation; every problem found is listed.
    #[error("{}", render_invalid(*.document, .path.as_deref(), .problems))]
    Invalid {
        /// Which kind of document.
        document: Document,
        /// The file it came from, when it was loaded from one.
        path: Option<PathBuf>,
        /// Every problem found, in document order; never empty.
        problems: Vec<Problem>,
    },

    /// A string is not a token of the form `[0-9a-z]{6}.[0-9a-z]{16}`.
    #[error("invalid token: must look like [0-9a-z]{{6}}.[0-9a-z]{{16}}")]
    InvalidToken,

    /// The client config names no current context.
    #[error("no current context is set in the client config")]
    NoCurrentContext,

    /// The file to load does not exist.
    ///
    /// Kept apart from [`Error::Read`] so callers can give a "run `gen` first" hint.
    #[error("no {document} at {}", .path.display())]
    NotFound {
        /// Which kind of document was expected.
        document: Document,
        /// The path that does not exist.
        path: PathBuf,
    },

    /// The YAML was malformed, had a value of the wrong type, or an unknown key.
    ///
    /// The source (serde_yaml's error) names the key path and the line and column, e.g.
    /// `machine.ca.crt: invalid base64 ... at line 5 column 9`.
    #[error("cannot parse {document}{}", at(.path))]
    Parse {
        /// Which kind of document.
        document: Document,
        /// The file it came from, when it was loaded from one.
        path: Option<PathBuf>,
        /// serde_yaml's error, with key path and location.
        source: serde_yaml::Error,
    },

    /// PEM bytes were asked for as text but are not UTF-8.
    #[error("PEM data is not valid UTF-8")]
    PemNotUtf8 {
        /// Where decoding stopped.
        source: std::str::Utf8Error,
    },

    /// The system random number generator failed.
    #[error("cannot generate random bytes")]
    Random,

    /// A file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },

    /// A document could not be rendered as YAML.
    #[error("cannot serialize {document}")]
    Serialize {
        /// Which kind of document.
        document: Document,
        /// serde_yaml's error.
        source: serde_yaml::Error,
    },

    /// The client config's current context names a context it does not define.
    #[error("current context {name:?} is not defined in the client config")]
    UnknownContext {
        /// The dangling context name.
        name: String,
    },

    /// A file could not be written (or its directory synced).
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file being written (the final name, not the temporary one).
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
}

impl Error {
    /// The validation problems, if this is an [`Error::Invalid`]; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    /// Attaches the file a document was loaded from to parse and validation errors.
    pub(crate) fn with_path(mut self, file: &Path) -> Self {
        match &mut self {
            Error::Empty { path, .. } | Error::Invalid { path, .. } | Error::Parse { path, .. } => {
                *path = Some(file.to_path_buf());
            }
            _ => {}
        }
        self
    }
}

/// The kinds of document this crate reads and writes, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Document {
    /// apid's config file.
    ApidConfig,
    /// The CLI's client config (talosconfig layout).
    ClientConfig,
    /// A node's machine config.
    MachineConfig,
    /// The cluster secrets bundle (`secrets.yaml`).
    SecretsBundle,
    /// trustd's config file.
    TrustdConfig,
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Document::ApidConfig => "apid config",
            Document::ClientConfig => "client config",
            Document::MachineConfig => "machine config",
            Document::SecretsBundle => "secrets bundle",
            Document::TrustdConfig => "trustd config",
        })
    }
}

/// One validation problem: the dotted key path it concerns and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the offending key, e.g. `machine.token` or `cluster.endpoints[1]`.
    pub key: String,
    /// What is wrong, lower-case, e.g. `is required`.
    pub reason: String,
}

impl Problem {
    /// Builds a problem for `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Collects problems during validation so that all of them are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem::new(key, reason));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were found so far (to tell whether a step added any).
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(())` if nothing was found, otherwise one [`Error::Invalid`] listing everything.
    pub(crate) fn into_result(self, document: Document) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_error(document))
        }
    }

    pub(crate) fn into_error(self, document: Document) -> Error {
        Error::Invalid {
            document,
            path: None,
            problems: self.0,
        }
    }
}

/// `" /path"` when a path is known, `""` otherwise.
fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" {}", path.display()),
        None => String::new(),
    }
}

/// One problem per line, indented, so an operator can fix everything in one pass.
fn render_invalid(document: Document, path: Option<&Path>, problems: &[Problem]) -> String {
    let mut out = format!("invalid {document}");
    if let Some(path) = path {
        out.push(' ');
        out.push_str(&path.display().to_string());
    }
    out.push(':');
    for problem in problems {
        out.push_str("\n  - ");
        out.push_str(&problem.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_each_problem_on_its_own_line() {
        let mut problems = Problems::default();
        problems.push("machine.token", "must look like [0-9a-z]{6}.[0-9a-z]{16}");
        problems.push("cluster.endpoints", "at least one endpoint is required");
        let err = problems.into_error(Document::MachineConfig);
        assert_eq!(
            err.to_string(),
            "invalid machine config:\n  \
             - machine.token: must look like [0-9a-z]{6}.[0-9a-z]{16}\n  \
             - cluster.endpoints: at least one endpoint is required"
        );
        let err = err.with_path(Path::new("/etc/basalt/config.yaml"));
        assert!(
            err.to_string()
                .starts_with("invalid machine config /etc/basalt/config.yaml:\n")
        );
        assert_eq!(err.problems().len(), 2);
    }

    #[test]
    fn no_problems_is_ok() {
        assert!(
            Problems::default()
                .into_result(Document::SecretsBundle)
                .is_ok()
        );
    }
}
