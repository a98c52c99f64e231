//! Failures caused by how basaltctl was called (a flag, an input file, the client config), as
//! against a node or the network failing: `main` exits with 64 (EX_USAGE) for the first and 1
//! for the rest, so a script can tell "fix the call" from "the node failed".

use std::fmt;

/// A failure the caller fixes by calling differently. Displays as what it wraps.
#[derive(Debug)]
pub(crate) struct UsageError(anyhow::Error);

impl UsageError {
    /// A usage error that says `text`.
    pub(crate) fn msg(text: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Self(anyhow::Error::msg(text.into())))
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The whole chain: this error has no source of its own.
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for UsageError {}

/// Marks a result's error as a [`UsageError`].
pub(crate) trait OrUsage<T> {
    fn or_usage(self) -> anyhow::Result<T>;
}

impl<T> OrUsage<T> for anyhow::Result<T> {
    fn or_usage(self) -> anyhow::Result<T> {
        self.map_err(|err| anyhow::Error::new(UsageError(err)))
    }
}

/// Whether `err`, or anything it wraps, is a [`UsageError`].
pub(crate) fn is_usage_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<UsageError>())
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn a_usage_error_is_found_under_context_and_reads_as_before() {
        let err = Err::<(), _>(anyhow::anyhow!("no such file"))
            .context("read config.yaml")
            .or_usage()
            .context("apply-config")
            .unwrap_err();
        assert!(is_usage_error(&err));
        assert_eq!(
            format!("{err:#}"),
            "apply-config: read config.yaml: no such file"
        );
        assert!(!is_usage_error(&anyhow::anyhow!("node unreachable")));
        assert!(is_usage_error(&UsageError::msg("pass --yes")));
    }
}
