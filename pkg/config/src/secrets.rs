//! The cluster secrets bundle, drop-in compatible with Talos's `secrets.yaml`
//! (`talosctl gen secrets`, talos-facts §4.7).
//!
//! Rust field names are the YAML keys verbatim (Talos's go-yaml lowercases its field names), so
//! the mapping to the file needs no renames and is obvious at a glance.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::pem::Base64Pem;
use crate::token::{TOKEN_FORMAT, is_token, random_base64_32, random_url_base64_32};
use crate::{Document, Error, Token, yaml};

/// The secrets every node config of one cluster is generated from.
///
/// Unknown keys are rejected: a key we do not know might be a secret we would silently drop
/// when writing the bundle back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a secrets bundle mapping")]
pub struct SecretsBundle {
    /// Cluster identity (used by Talos's discovery service).
    pub cluster: ClusterSecrets,
    /// Kubernetes secrets; basalt carries them only for Talos compatibility.
    pub secrets: Secrets,
    /// trustd's join token.
    pub trustdinfo: TrustdInfo,
    /// CA certificates and keys.
    pub certs: BundleCerts,
}

impl SecretsBundle {
    /// A new bundle around `certs`, with a fresh random cluster id and secret, bootstrap token,
    /// secretbox encryption secret and trustd token (all from the system CSPRNG).
    pub fn new(certs: BundleCerts) -> Result<Self, Error> {
        Ok(Self {
            cluster: ClusterSecrets {
                id: random_url_base64_32()?,
                secret: random_base64_32()?,
            },
            secrets: Secrets {
                bootstraptoken: Token::generate()?.into_string(),
                // Talos writes secretbox for every contract newer than 1.2.
                secretboxencryptionsecret: Some(random_base64_32()?),
                aescbcencryptionsecret: None,
            },
            trustdinfo: TrustdInfo {
                token: Token::generate()?.into_string(),
            },
            certs,
        })
    }

    /// Parses and validates a bundle.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let bundle: Self = yaml::parse_required(Document::SecretsBundle, text)?;
        bundle.validate()?;
        Ok(bundle)
    }

    /// Renders the bundle in Talos's layout.
    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::render(Document::SecretsBundle, self)
    }

    /// Reads, parses and validates the bundle at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = yaml::read(Document::SecretsBundle, path)?;
        Self::from_yaml(&text).map_err(|err| err.with_path(path))
    }

    /// Checks everything basalt relies on and reports every problem at once.
    ///
    /// Like Talos's `Bundle.Validate` for `cluster`, `trustdinfo` and `certs.os`; token formats
    /// are checked too. The etcd and Kubernetes items are not required (basalt does not use
    /// them), but at most one encryption secret may be set, as in Talos.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Problems::default();

        // Talos encodes the id URL-safe and the secret standard; accept either alphabet for the
        // id in case another tool wrote it.
        check_base64(&mut problems, "cluster.id", &self.cluster.id, true);
        check_base64(&mut problems, "cluster.secret", &self.cluster.secret, false);

        if !is_token(&self.secrets.bootstraptoken) {
            problems.push(
                "secrets.bootstraptoken",
                format!("must look like {TOKEN_FORMAT}"),
            );
        }
        if self.secrets.secretboxencryptionsecret.is_some()
            && self.secrets.aescbcencryptionsecret.is_some()
        {
            problems.push(
                "secrets",
                "only one of secretboxencryptionsecret and aescbcencryptionsecret may be set",
            );
        }

        if !is_token(&self.trustdinfo.token) {
            problems.push("trustdinfo.token", format!("must look like {TOKEN_FORMAT}"));
        }

        let os = &self.certs.os;
        if !os.crt.looks_like_certificate() {
            problems.push(
                "certs.os.crt",
                "must be base64 of a PEM certificate (-----BEGIN CERTIFICATE-----)",
            );
        }
        if !os.key.looks_like_private_key() {
            problems.push(
                "certs.os.key",
                "must be base64 of a PEM private key (-----BEGIN ... PRIVATE KEY-----)",
            );
        }

        problems.into_result(Document::SecretsBundle)
    }
}

/// `cluster:` — the cluster's identity.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with id and secret")]
pub struct ClusterSecrets {
    /// URL-safe base64 of 32 random bytes.
    pub id: String,
    /// Standard base64 of 32 random bytes.
    pub secret: String,
}

impl fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `secrets:` — Kubernetes secrets, kept so a bundle round-trips to Talos unchanged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with bootstraptoken")]
pub struct Secrets {
    /// Kubernetes bootstrap token, `[0-9a-z]{6}.[0-9a-z]{16}`.
    pub bootstraptoken: String,
    /// Standard base64 of 32 random bytes (Talos > 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretboxencryptionsecret: Option<String>,
    /// Standard base64 of 32 random bytes (Talos ≤ 1.2 contracts, instead of secretbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aescbcencryptionsecret: Option<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |set: bool| if set { "<redacted>" } else { "<none>" };
        f.debug_struct("Secrets")
            .field("bootstraptoken", &"<redacted>")
            .field(
                "secretboxencryptionsecret",
                &redact(self.secretboxencryptionsecret.is_some()),
            )
            .field(
                "aescbcencryptionsecret",
                &redact(self.aescbcencryptionsecret.is_some()),
            )
            .finish()
    }
}

/// `trustdinfo:` — trustd's join token (what becomes `machine.token`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with token")]
pub struct TrustdInfo {
    /// `[0-9a-z]{6}.[0-9a-z]{16}`.
    pub token: String,
}

impl fmt::Debug for TrustdInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustdInfo")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `certs:` — the CAs of the cluster.
///
/// Only `os` (the Talos API CA, used by apid and trustd) is required. Talos also requires the
/// etcd and Kubernetes items, but basalt does not use them; they are optional here so a bundle
/// can be made from the OS CA alone, and kept verbatim when a Talos bundle is loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of CA certificates and keys"
)]
pub struct BundleCerts {
    /// etcd CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<CertAndKey>,
    /// Kubernetes CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<CertAndKey>,
    /// Kubernetes front-proxy (aggregator) CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8saggregator: Option<CertAndKey>,
    /// Kubernetes service-account signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8sserviceaccount: Option<KeyOnly>,
    /// The OS (Talos API) CA that signs every apid, trustd and client certificate.
    pub os: CertAndKey,
}

impl BundleCerts {
    /// Certificates with only the OS CA, which is all basalt needs.
    pub fn os_only(os: CertAndKey) -> Self {
        Self {
            etcd: None,
            k8s: None,
            k8saggregator: None,
            k8sserviceaccount: None,
            os,
        }
    }
}

/// A certificate and its private key, both base64 of PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with crt and key")]
pub struct CertAndKey {
    /// The certificate (PEM).
    pub crt: Base64Pem,
    /// The private key (PEM).
    pub key: Base64Pem,
}

impl CertAndKey {
    /// A certificate and key from their PEM (a CA's `cert_pem()` and `key_pem()`, say).
    pub fn from_pem(crt: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        Self {
            crt: Base64Pem::from_pem(crt),
            key: Base64Pem::from_pem(key),
        }
    }
}

/// A private key alone, base64 of PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with key")]
pub struct KeyOnly {
    /// The private key (PEM).
    pub key: Base64Pem,
}

fn check_base64(problems: &mut Problems, key: &str, value: &str, url_safe_too: bool) {
    if value.is_empty() {
        problems.push(key, "is required");
        return;
    }
    let ok = STANDARD.decode(value).is_ok() || (url_safe_too && URL_SAFE.decode(value).is_ok());
    if !ok {
        problems.push(key, "must be base64");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{CA_CERT, CA_KEY};

    fn os_ca() -> CertAndKey {
        CertAndKey::from_pem(CA_CERT, CA_KEY)
    }

    /// Talos's own `testdata/secrets.yaml` shape: every item present, cluster id URL-safe.
    fn talos_bundle() -> String {
        let b64 = |s: &str| STANDARD.encode(s);
        let cert_and_key = format!(
            "\n        crt: {}\n        key: {}",
            b64(CA_CERT),
            b64(CA_KEY)
        );
        format!(
            "cluster:\n    id: cgvhCbucls-WqkESDTRqykFgb4hROI4cBpgB0YJLLtM=\n    \
             secret: Wiu0qx68V3MKhFDr8+OFwGCNOOPBiQCDsLpRa3MdxEQ=\n\
             secrets:\n    bootstraptoken: 2psnp2.lry8e9gycdix3bpa\n    \
             secretboxencryptionsecret: 6zWBpno849HlD5jeuTmGToFYP+z8lgkJa0fhHobv7mE=\n\
             trustdinfo:\n    token: oamejv.9tk1nhuwnlc2nghf\n\
             certs:\n    etcd:{cert_and_key}\n    k8s:{cert_and_key}\n    \
             k8saggregator:{cert_and_key}\n    k8sserviceaccount:\n        key: {}\n    \
             os:{cert_and_key}\n",
            b64(CA_KEY)
        )
    }

    #[test]
    fn new_bundle_is_valid_and_round_trips() {
        let bundle = SecretsBundle::new(BundleCerts::os_only(os_ca())).unwrap();
        bundle.validate().unwrap();
        assert!(is_token(&bundle.trustdinfo.token));
        assert!(is_token(&bundle.secrets.bootstraptoken));
        assert_eq!(URL_SAFE.decode(&bundle.cluster.id).unwrap().len(), 32);
        assert_eq!(STANDARD.decode(&bundle.cluster.secret).unwrap().len(), 32);
        let secretbox = bundle.secrets.secretboxencryptionsecret.as_deref().unwrap();
        assert_eq!(STANDARD.decode(secretbox).unwrap().len(), 32);

        let yaml = bundle.to_yaml().unwrap();
        assert!(yaml.starts_with("cluster:\n"), "{yaml}");
        assert!(!yaml.contains("etcd"), "{yaml}");
        assert_eq!(SecretsBundle::from_yaml(&yaml).unwrap(), bundle);

        let other = SecretsBundle::new(BundleCerts::os_only(os_ca())).unwrap();
        assert_ne!(other.trustdinfo.token, bundle.trustdinfo.token);
        assert_ne!(other.cluster.secret, bundle.cluster.secret);
    }

    #[test]
    fn talos_bundle_loads_and_round_trips() {
        let bundle = SecretsBundle::from_yaml(&talos_bundle()).unwrap();
        assert_eq!(bundle.trustdinfo.token, "oamejv.9tk1nhuwnlc2nghf");
        assert!(bundle.certs.etcd.is_some());
        assert!(bundle.certs.k8sserviceaccount.is_some());
        assert_eq!(bundle.certs.os.crt.as_bytes(), CA_CERT.as_bytes());
        let again = SecretsBundle::from_yaml(&bundle.to_yaml().unwrap()).unwrap();
        assert_eq!(again, bundle);
    }

    #[test]
    fn aescbc_is_accepted_instead_of_secretbox() {
        let text = talos_bundle().replace("secretboxencryptionsecret", "aescbcencryptionsecret");
        let bundle = SecretsBundle::from_yaml(&text).unwrap();
        assert!(bundle.secrets.aescbcencryptionsecret.is_some());
        assert!(bundle.secrets.secretboxencryptionsecret.is_none());
    }

    #[test]
    fn every_problem_is_reported() {
        let mut bundle = SecretsBundle::new(BundleCerts::os_only(os_ca())).unwrap();
        bundle.cluster.id.clear();
        bundle.cluster.secret = "%%%".into();
        bundle.trustdinfo.token = "nope".into();
        bundle.secrets.aescbcencryptionsecret = Some("AAAA".into());
        bundle.certs.os = CertAndKey::from_pem(CA_KEY, CA_CERT);
        let err = bundle.validate().unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.id",
                "cluster.secret",
                "secrets",
                "trustdinfo.token",
                "certs.os.crt",
                "certs.os.key"
            ],
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("invalid secrets bundle:\n  - cluster.id: is required")
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let text = talos_bundle().replace("trustdinfo:\n", "trustdinfo:\n    extra: 1\n");
        let err = SecretsBundle::from_yaml(&text).unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            source.starts_with("trustdinfo: unknown field `extra`"),
            "{source}"
        );
    }

    #[test]
    fn bad_input_never_panics() {
        let full = talos_bundle();
        for text in [
            "",
            "# only a comment\n",
            "~",
            "cluster: [",
            &full[..full.len() / 2],
            "cluster: 5",
            "- a\n- b\n",
            &full.replace(
                "os:\n        crt: ",
                "os:\n        crt: '!!notbase64'\n        x: ",
            ),
        ] {
            assert!(SecretsBundle::from_yaml(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            SecretsBundle::from_yaml(""),
            Err(Error::Empty {
                document: Document::SecretsBundle,
                ..
            })
        ));
    }

    #[test]
    fn debug_redacts_secrets() {
        let bundle = SecretsBundle::new(BundleCerts::os_only(os_ca())).unwrap();
        let shown = format!("{bundle:?}");
        assert!(!shown.contains(&bundle.trustdinfo.token), "{shown}");
        assert!(!shown.contains(&bundle.cluster.secret), "{shown}");
        assert!(!shown.contains(&bundle.secrets.bootstraptoken), "{shown}");
        assert!(!shown.contains("MC4C"), "{shown}");
    }

    #[test]
    fn load_reports_missing_file_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.yaml");
        assert!(matches!(
            SecretsBundle::load(&path),
            Err(Error::NotFound { .. })
        ));
        std::fs::write(&path, "cluster: 5\n").unwrap();
        let err = SecretsBundle::load(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
