//! [`Base64Pem`]: PEM bytes that YAML stores as standard base64 (Talos's `crt`/`key` encoding).
//!
//! This module only recognises PEM *labels* so validation can say "that is not a certificate";
//! it never decodes DER or parses X.509 (that is `basalt-pki`'s job).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// A PEM blob (one or more blocks) that YAML carries as the standard base64 of its bytes.
///
/// Talos (siderolabs/crypto `PEMEncodedCertificateAndKey`) writes every `crt`, `key` and `ca`
/// value this way, so the same encoding makes our files interchangeable with Talos's.
///
/// `Debug` shows only the first PEM label and the length, never the bytes, because the same
/// type carries private keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Pem(Vec<u8>);

impl Base64Pem {
    /// Wraps PEM bytes as they are (no check that they are PEM).
    pub fn from_pem(pem: impl Into<Vec<u8>>) -> Self {
        Self(pem.into())
    }

    /// Decodes the YAML representation: standard base64 (with padding) of the PEM bytes.
    ///
    /// ASCII whitespace is ignored, as Go's decoder ignores line breaks, so folded YAML
    /// scalars still decode.
    pub fn from_base64(text: &str) -> Result<Self, Error> {
        let compact: String = text.split_ascii_whitespace().collect();
        STANDARD
            .decode(compact.as_bytes())
            .map(Self)
            .map_err(|source| Error::DecodeBase64 { source })
    }

    /// The YAML representation: standard base64 of the PEM bytes.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }

    /// The PEM bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The PEM bytes as text (PEM is ASCII; anything else is an error).
    pub fn as_str(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.0).map_err(|source| Error::PemNotUtf8 { source })
    }

    /// Consumes the wrapper, returning the PEM bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// True when there are no bytes at all (Talos writes `key: ""` for workers).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels of every `-----BEGIN <label>-----` line, in order.
    pub fn labels(&self) -> Vec<&str> {
        const BEGIN: &str = "-----BEGIN ";
        const DASHES: &str = "-----";
        let Ok(text) = self.as_str() else {
            return Vec::new();
        };
        let mut labels = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            rest = &rest[start + BEGIN.len()..];
            let Some(end) = rest.find(DASHES) else { break };
            let label = &rest[..end];
            // A label is one line of printable text; anything else is not a PEM header.
            if !label.is_empty() && !label.contains(['\n', '\r']) {
                labels.push(label);
            }
            rest = &rest[end + DASHES.len()..];
        }
        labels
    }

    /// True if the bytes contain a `-----BEGIN CERTIFICATE-----` block.
    ///
    /// A cheap shape check for validation; the certificate itself is not parsed here.
    pub fn looks_like_certificate(&self) -> bool {
        self.labels().contains(&"CERTIFICATE")
    }

    /// True if the bytes contain a `-----BEGIN ... PRIVATE KEY-----` block.
    ///
    /// Any `... PRIVATE KEY` label counts: Talos writes `ED25519 PRIVATE KEY` (PKCS#8 body) and
    /// `EC PRIVATE KEY`, Go accepts any label with that suffix, and so do we.
    pub fn looks_like_private_key(&self) -> bool {
        self.labels()
            .iter()
            .any(|label| is_private_key_label(label))
    }
}

impl fmt::Debug for Base64Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = self.labels();
        f.debug_struct("Base64Pem")
            .field("label", &labels.first().copied().unwrap_or("<none>"))
            .field("len", &self.0.len())
            .finish()
    }
}

impl From<Vec<u8>> for Base64Pem {
    fn from(pem: Vec<u8>) -> Self {
        Self(pem)
    }
}

impl Serialize for Base64Pem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Base64Pem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(Base64PemVisitor)
    }
}

/// Accepts a string and decodes it, so YAML errors read "expected a base64 string".
struct Base64PemVisitor;

impl Visitor<'_> for Base64PemVisitor {
    type Value = Base64Pem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a base64 string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Base64Pem, E> {
        Base64Pem::from_base64(text).map_err(|err| match err {
            // base64's messages end in a period; drop it so serde_yaml's " at line N" reads well.
            Error::DecodeBase64 { source } => E::custom(format_args!(
                "invalid base64: {}",
                source.to_string().trim_end_matches('.')
            )),
            other => E::custom(other),
        })
    }
}

/// serde helper for optional PEM fields: a missing key, `null` and `""` all mean "absent".
///
/// Talos writes `key: ""` in worker configs and may write empty strings elsewhere; treating
/// them as absent keeps one meaning for "no key".
pub(crate) mod optional {
    use serde::{Deserialize, Deserializer};

    use super::Base64Pem;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Base64Pem>, D::Error> {
        Ok(Option::<Base64Pem>::deserialize(deserializer)?.filter(|pem| !pem.is_empty()))
    }
}

fn is_private_key_label(label: &str) -> bool {
    label == "PRIVATE KEY" || label.ends_with(" PRIVATE KEY")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str =
        "-----BEGIN ED25519 PRIVATE KEY-----\nMC4C\n-----END ED25519 PRIVATE KEY-----\n";

    #[test]
    fn base64_round_trip() {
        let pem = Base64Pem::from_pem(CERT);
        let encoded = pem.to_base64();
        assert!(encoded.starts_with("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"));
        assert_eq!(Base64Pem::from_base64(&encoded).unwrap(), pem);
        assert_eq!(pem.as_str().unwrap(), CERT);
    }

    #[test]
    fn whitespace_inside_base64_is_ignored() {
        let encoded = Base64Pem::from_pem(CERT).to_base64();
        let (a, b) = encoded.split_at(10);
        let folded = format!("{a}\n  {b}\n");
        assert_eq!(
            Base64Pem::from_base64(&folded).unwrap().as_bytes(),
            CERT.as_bytes()
        );
    }

    #[test]
    fn bad_base64_is_an_error() {
        let err = Base64Pem::from_base64("not base64!").unwrap_err();
        assert!(matches!(err, Error::DecodeBase64 { .. }), "{err:?}");
        // Missing padding is rejected, as Go's StdEncoding does.
        assert!(Base64Pem::from_base64("YQ").is_err());
    }

    #[test]
    fn labels_are_recognised() {
        let both = Base64Pem::from_pem(format!("{CERT}{KEY}"));
        assert_eq!(both.labels(), ["CERTIFICATE", "ED25519 PRIVATE KEY"]);
        assert!(both.looks_like_certificate());
        assert!(both.looks_like_private_key());

        let cert = Base64Pem::from_pem(CERT);
        assert!(cert.looks_like_certificate());
        assert!(!cert.looks_like_private_key());

        for label in ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"] {
            let key = Base64Pem::from_pem(format!("-----BEGIN {label}-----\nAA==\n"));
            assert!(key.looks_like_private_key(), "{label}");
            assert!(!key.looks_like_certificate(), "{label}");
        }

        let junk = Base64Pem::from_pem("hello");
        assert!(!junk.looks_like_certificate());
        assert!(!junk.looks_like_private_key());
        let binary = Base64Pem::from_pem(vec![0xff, 0xfe]);
        assert!(binary.labels().is_empty());
        assert!(binary.as_str().is_err());
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let key = Base64Pem::from_pem(KEY);
        let shown = format!("{key:?}");
        assert!(shown.contains("ED25519 PRIVATE KEY"), "{shown}");
        assert!(!shown.contains("MC4C"), "{shown}");
    }

    #[test]
    fn serde_uses_a_base64_string() {
        let pem = Base64Pem::from_pem(CERT);
        let yaml = serde_yaml::to_string(&pem).unwrap();
        assert_eq!(yaml.trim(), pem.to_base64());
        let back: Base64Pem = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, pem);

        let err = serde_yaml::from_str::<Base64Pem>("{a: 1}").unwrap_err();
        assert!(
            err.to_string().contains("expected a base64 string"),
            "{err}"
        );
        let err = serde_yaml::from_str::<Base64Pem>("'%%%'").unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }
}
