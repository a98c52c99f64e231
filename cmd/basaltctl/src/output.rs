//! Output formats: a table for people, JSON or YAML for scripts.

use std::io::Write;

use anyhow::Context as _;
use serde::Serialize;

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
}
