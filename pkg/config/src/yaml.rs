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

/// A mapping whose keys must be distinct: serde's maps keep the last of two equal keys, where
/// Talos's YAML (go-yaml v3) refuses "mapping key already defined". Use as
/// `#[serde(deserialize_with = "crate::yaml::unique_keys")]`; `null` is an empty map.
pub(crate) fn unique_keys<'de, D, K, V>(
    deserializer: D,
) -> Result<std::collections::BTreeMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: serde::Deserialize<'de> + Ord + std::fmt::Display,
    V: serde::Deserialize<'de>,
{
    struct Unique<K, V>(std::marker::PhantomData<(K, V)>);

    impl<'de, K, V> serde::de::Visitor<'de> for Unique<K, V>
    where
        K: serde::Deserialize<'de> + Ord + std::fmt::Display,
        V: serde::Deserialize<'de>,
    {
        type Value = std::collections::BTreeMap<K, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Self::Value::new())
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Self::Value::new();
            while let Some(key) = map.next_key::<K>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "the key {key:?} is listed twice",
                        key = key.to_string()
                    )));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_any(Unique(std::marker::PhantomData))
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
