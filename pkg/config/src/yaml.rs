//! Shared read/parse/render helpers so every document reports errors the same way.

use std::io;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Document, Error};

/// Parses one YAML document; `Ok(None)` for an empty document (nothing, comments, or `null`).
///
/// serde_yaml's errors already carry the dotted key path and line/column
/// (`machine.ca.crt: invalid base64 ... at line 5 column 9`), so they are passed through as the
/// source unchanged.
pub(crate) fn parse<T: DeserializeOwned>(
    document: Document,
    text: &str,
) -> Result<Option<T>, Error> {
    serde_yaml::from_str::<Option<T>>(text).map_err(|source| Error::Parse {
        document,
        path: None,
        source,
    })
}

/// Like [`parse`], but an empty document is an [`Error::Empty`].
pub(crate) fn parse_required<T: DeserializeOwned>(
    document: Document,
    text: &str,
) -> Result<T, Error> {
    parse(document, text)?.ok_or(Error::Empty {
        document,
        path: None,
    })
}

/// Renders a document as YAML.
pub(crate) fn render<T: Serialize>(document: Document, value: &T) -> Result<String, Error> {
    serde_yaml::to_string(value).map_err(|source| Error::Serialize { document, source })
}

/// Reads a whole file as UTF-8; a missing file is [`Error::NotFound`].
pub(crate) fn read(document: Document, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::NotFound {
            document,
            path: path.to_path_buf(),
        },
        _ => Error::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}
