//! Output formats: a table for people, JSON or YAML for scripts; and the one shape of
//! per-node results every node command prints.
//!
//! Per-node results ([`Replies`]): tables always carry a NODE column, even for one node, as
//! talosctl's do; json/yaml hold one object per node with `node` and either the node's data or
//! `error: {code, message}`. Failed nodes are listed on stderr as `NODE: Code: message` after
//! the results of the others ([`report_failures`]) and the command then fails (exit 1).

use std::io::Write;

use anyhow::Context as _;
use basalt_api::common::Metadata;
use basalt_client::NodeResult;
use serde::Serialize;
use tonic::{Code, Status};

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Table,
    Json,
    Yaml,
}

/// `-o/--output` for commands that print data. (Commands that write files use `-o FILE`, as
/// talosctl's `gen` commands do, so the flag is per command rather than global.)
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) format: OutputFormat,
}

/// A command result that can be printed in every format.
pub(crate) trait Render: Serialize {
    /// Column headers of the table form.
    fn headers(&self) -> Vec<&'static str>;
    /// Rows of the table form.
    fn rows(&self) -> Vec<Vec<String>>;
}

/// Prints `value` to stdout in the chosen format.
pub(crate) fn print<T: Render>(format: OutputFormat, value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, value).context("write JSON")?;
            writeln!(out)?;
        }
        OutputFormat::Yaml => {
            let yaml = serde_yaml::to_string(value).context("write YAML")?;
            out.write_all(yaml.as_bytes())?;
        }
        OutputFormat::Table => out.write_all(table(&value.headers(), &value.rows()).as_bytes())?,
    }
    Ok(())
}

/// Left-aligned columns separated by three spaces, as talosctl prints them.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut parts = Vec::new();
        for (i, cell) in cells.enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            parts.push(format!("{cell:<width$}"));
        }
        text.push_str(parts.join("   ").trim_end());
        text.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    text
}

// === per-node results ===

/// What one node answered, as printed in json/yaml: `node` plus either the data's fields or
/// `error`.
#[derive(Debug, Serialize)]
pub(crate) struct NodeReply<V> {
    pub(crate) node: String,
    #[serde(flatten)]
    pub(crate) data: Option<V>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ErrorView>,
}

/// A failed node: the gRPC code name (e.g. `PermissionDenied`) and the message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct ErrorView {
    pub(crate) code: String,
    pub(crate) message: String,
}

impl ErrorView {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code: format!("{code:?}"),
            message: message.into(),
        }
    }

    pub(crate) fn from_status(status: &Status) -> Self {
        Self::new(status.code(), status.message())
    }
}

impl std::fmt::Display for ErrorView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Lists each failed node on stderr (`NODE: error`) and fails when there was any; `total` is
/// the number of nodes addressed.
pub(crate) fn report_failures<'a, E: std::fmt::Display + 'a>(
    total: usize,
    failures: impl IntoIterator<Item = (&'a str, E)>,
) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for (node, error) in failures {
        eprintln!("{}", failure_line(node, &error));
        failed.push(node.to_owned());
    }
    nodes_failed(total, &failed)
}

/// The command's error when `failed` (already listed) is not empty.
pub(crate) fn nodes_failed(total: usize, failed: &[String]) -> anyhow::Result<()> {
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {total} nodes failed: {}",
            failed.len(),
            failed.join(", ")
        )
    }
}

/// One failure as listed on stderr.
pub(crate) fn failure_line(node: &str, error: &dyn std::fmt::Display) -> String {
    format!("{node}: {error}")
}

/// Every node's reply, in node order.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Replies<V>(pub(crate) Vec<NodeReply<V>>);

impl<V> Replies<V> {
    /// Prints each failure to stderr and fails when there was any.
    pub(crate) fn finish(&self) -> anyhow::Result<()> {
        report_failures(
            self.0.len(),
            self.0
                .iter()
                .filter_map(|reply| reply.error.as_ref().map(|err| (reply.node.as_str(), err))),
        )
    }
}

/// The table form of one node's data.
pub(crate) trait NodeTable {
    /// Column headers after NODE.
    fn headers() -> Vec<&'static str>;
    /// Rows, without the NODE cell.
    fn rows(&self) -> Vec<Vec<String>>;
}

impl<V: NodeTable> Replies<V> {
    pub(crate) fn table_headers() -> Vec<&'static str> {
        let mut headers = vec!["NODE"];
        headers.extend(V::headers());
        headers
    }
}

impl<V: NodeTable + Serialize> Render for Replies<V> {
    fn headers(&self) -> Vec<&'static str> {
        Self::table_headers()
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.0
            .iter()
            .filter_map(|reply| reply.data.as_ref().map(|data| (&reply.node, data)))
            .flat_map(|(node, data)| {
                data.rows().into_iter().map(move |row| {
                    let mut cells = vec![node.clone()];
                    cells.extend(row);
                    cells
                })
            })
            .collect()
    }
}

/// Messages that start with `common.Metadata` (every reply message of the machine API).
pub(crate) trait WithMetadata {
    fn metadata(&self) -> Option<&Metadata>;
}

/// Implements [`WithMetadata`] for reply messages with a `metadata` field.
macro_rules! with_metadata {
    ($($message:ty),* $(,)?) => {
        $(impl $crate::output::WithMetadata for $message {
            fn metadata(&self) -> Option<&basalt_api::common::Metadata> {
                self.metadata.as_ref()
            }
        })*
    };
}
pub(crate) use with_metadata;

/// Turns per-node results into replies. A reply envelope normally holds one message; a
/// message whose metadata carries an error (a fanned-out failure, Talos merge semantics) counts
/// as that node failing, and with several messages each is named after its metadata hostname.
pub(crate) fn replies<R, M, V>(
    results: Vec<NodeResult<R>>,
    messages: impl Fn(R) -> Vec<M>,
    view: impl Fn(M) -> V,
) -> Replies<V>
where
    M: WithMetadata,
{
    let mut out = Vec::new();
    for NodeResult { node, result } in results {
        let response = match result {
            Ok(response) => response,
            Err(status) => {
                out.push(failed(node, ErrorView::from_status(&status)));
                continue;
            }
        };
        let messages = messages(response);
        let several = messages.len() > 1;
        if messages.is_empty() {
            out.push(failed(
                node,
                ErrorView::new(Code::Unknown, "the node sent an empty reply"),
            ));
            continue;
        }
        for message in messages {
            let metadata = message.metadata().cloned().unwrap_or_default();
            let name = if several && !metadata.hostname.is_empty() {
                metadata.hostname.clone()
            } else {
                node.clone()
            };
            if metadata.error.is_empty() {
                out.push(NodeReply {
                    node: name,
                    data: Some(view(message)),
                    error: None,
                });
            } else {
                let code = metadata
                    .status
                    .map_or(Code::Unknown, |status| Code::from_i32(status.code));
                out.push(failed(name, ErrorView::new(code, metadata.error)));
            }
        }
    }
    Replies(out)
}

/// A node that failed with `error`.
pub(crate) fn failed<V>(node: String, error: ErrorView) -> NodeReply<V> {
    NodeReply {
        node,
        data: None,
        error: Some(error),
    }
}

/// Prefixes every line with `node: ` (when several nodes stream at once). Chunks hold whole
/// lines, but a line split across chunks is handled too.
pub(crate) struct LinePrefixer {
    prefix: Option<String>,
    at_line_start: bool,
}

impl LinePrefixer {
    pub(crate) fn new(prefix: Option<String>) -> Self {
        Self {
            prefix,
            at_line_start: true,
        }
    }

    pub(crate) fn apply(&mut self, bytes: &[u8]) -> Vec<u8> {
        let Some(prefix) = &self.prefix else {
            return bytes.to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len() + prefix.len());
        for &byte in bytes {
            if self.at_line_start {
                out.extend_from_slice(prefix.as_bytes());
            }
            out.push(byte);
            self.at_line_start = byte == b'\n';
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let text = table(
            &["NAME", "ENDPOINTS"],
            &[
                vec!["dev".into(), "127.0.0.1".into()],
                vec!["production".into(), "10.0.0.1".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME         ENDPOINTS\ndev          127.0.0.1\nproduction   10.0.0.1\n"
        );
    }

    #[test]
    fn several_nodes_prefix_every_line() {
        let mut prefixer = LinePrefixer::new(Some("n1: ".to_owned()));
        assert_eq!(prefixer.apply(b"a\nb"), b"n1: a\nn1: b");
        assert_eq!(prefixer.apply(b"c\nd\n"), b"c\nn1: d\n");
        let mut plain = LinePrefixer::new(None);
        assert_eq!(plain.apply(b"a\nb\n"), b"a\nb\n");
    }

    /// A view for the shape tests: one field, one column.
    #[derive(Debug, Serialize)]
    struct Up {
        up: bool,
    }

    impl NodeTable for Up {
        fn headers() -> Vec<&'static str> {
            vec!["UP"]
        }

        fn rows(&self) -> Vec<Vec<String>> {
            vec![vec![self.up.to_string()]]
        }
    }

    fn mixed() -> Replies<Up> {
        Replies(vec![
            NodeReply {
                node: "a".into(),
                data: Some(Up { up: true }),
                error: None,
            },
            failed(
                "b".into(),
                ErrorView::from_status(&Status::unavailable("b is down")),
            ),
        ])
    }

    #[test]
    fn per_node_tables_have_a_node_column_and_only_the_answers() {
        let replies = mixed();
        assert_eq!(
            table(&replies.headers(), &replies.rows()),
            "NODE   UP\na      true\n"
        );
    }

    #[test]
    fn per_node_yaml_holds_one_object_per_node_with_its_data_or_error() {
        let yaml = serde_yaml::to_string(&mixed()).expect("yaml");
        assert_eq!(
            yaml,
            "- node: a\n  up: true\n- node: b\n  error:\n    code: Unavailable\n    message: b is down\n"
        );
    }

    #[test]
    fn failures_fail_the_command_naming_the_nodes() {
        let replies = mixed();
        let err = replies.finish().expect_err("b failed");
        assert_eq!(err.to_string(), "1 of 2 nodes failed: b");
        assert_eq!(
            failure_line("b", &ErrorView::new(Code::NotFound, "no such file")),
            "b: NotFound: no such file"
        );
        assert!(nodes_failed(3, &[]).is_ok());
    }
}
