//! The CLI's client config, in Talos's talosconfig layout (talos-facts §4.8), so `basaltctl`
//! and `talosctl` can read each other's files.
//!
//! ```yaml
//! context: dev
//! contexts:
//!   dev:
//!     endpoints: [127.0.0.1]
//!     nodes: [10.0.0.2]
//!     ca: <base64 PEM>
//!     crt: <base64 PEM>
//!     key: <base64 PEM>
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::fs::{Overwrite, ensure_private_dir, write_atomic};
use crate::pem::{self, Base64Pem};
use crate::{Document, Error, yaml};

/// Mode of the client config file: it holds a private key.
pub const CLIENT_CONFIG_MODE: u32 = 0o600;

/// The default client config location under a home directory: `<home>/.basalt/config`.
///
/// The home directory is a parameter because only `main` reads the process environment.
pub fn default_path(home: &Path) -> PathBuf {
    home.join(".basalt").join("config")
}

/// A client config: named contexts and which one is current.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a client config mapping")]
pub struct ClientConfig {
    /// Name of the current context; empty when none is selected.
    #[serde(default)]
    pub context: String,
    /// Every context by name (sorted, so files are written deterministically).
    #[serde(default, deserialize_with = "crate::yaml::unique_keys")]
    pub contexts: BTreeMap<String, Context>,
}

impl ClientConfig {
    /// A config with one context, made current.
    pub fn with_context(name: impl Into<String>, context: Context) -> Self {
        let name = name.into();
        Self {
            context: name.clone(),
            contexts: BTreeMap::from([(name, context)]),
        }
    }

    /// Parses a client config. An empty document is an empty config, as in talosctl.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        Ok(yaml::parse(Document::ClientConfig, text)?.unwrap_or_default())
    }

    /// Renders the config as YAML.
    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::render(Document::ClientConfig, self)
    }

    /// Reads and parses the config at `path`; a missing file is [`Error::NotFound`] so the
    /// CLI can suggest generating one.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = yaml::read(Document::ClientConfig, path)?;
        Self::from_yaml(&text).map_err(|err| err.with_path(path))
    }

    /// Like [`ClientConfig::load`], but a missing file gives an empty config (for commands
    /// that add a context to whatever is there).
    pub fn load_or_default(path: &Path) -> Result<Self, Error> {
        match Self::load(path) {
            Err(Error::NotFound { .. }) => Ok(Self::default()),
            other => other,
        }
    }

    /// Writes the config atomically with mode 0600, creating its directory with mode 0700 if
    /// it does not exist (talosctl uses the same modes; an existing directory is not changed).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let yaml = self.to_yaml()?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            ensure_private_dir(dir)?;
        }
        write_atomic(path, yaml.as_bytes(), CLIENT_CONFIG_MODE, Overwrite::Allow)
    }

    /// The current context's name and settings.
    pub fn current(&self) -> Result<(&str, &Context), Error> {
        if self.context.is_empty() {
            return Err(Error::NoCurrentContext);
        }
        self.contexts
            .get_key_value(&self.context)
            .map(|(name, context)| (name.as_str(), context))
            .ok_or_else(|| Error::UnknownContext {
                name: self.context.clone(),
            })
    }

    /// The named context, for editing.
    pub fn context_mut(&mut self, name: &str) -> Option<&mut Context> {
        self.contexts.get_mut(name)
    }

    /// Merges `other` into this config with talosctl's rule (`Config.Merge`):
    ///
    /// - every incoming context is added; one whose name is taken is renamed `<name>-1`,
    ///   `<name>-2`, … (the first free name), and the renames are returned for the CLI to print;
    /// - if `other` names a current context, it becomes current here (under its new name if it
    ///   was renamed); otherwise the current context is kept.
    ///
    /// One deliberate difference: if `other.context` names a context `other` does not define,
    /// talosctl blanks the current context; here the current context is kept.
    pub fn merge(&mut self, other: ClientConfig) -> Vec<Rename> {
        let mut renames = Vec::new();
        let mut incoming_current = None;
        for (name, context) in other.contexts {
            let mut merged = name.clone();
            let mut suffix = 1u64;
            while self.contexts.contains_key(&merged) {
                merged = format!("{name}-{suffix}");
                suffix += 1;
            }
            if name == other.context {
                incoming_current = Some(merged.clone());
            }
            if merged != name {
                renames.push(Rename {
                    from: name,
                    to: merged.clone(),
                });
            }
            self.contexts.insert(merged, context);
        }
        if let Some(current) = incoming_current {
            self.context = current;
        }
        renames
    }
}

/// A context renamed by [`ClientConfig::merge`] because its name was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    /// The name in the incoming config.
    pub from: String,
    /// The name it was stored under.
    pub to: String,
}

impl fmt::Display for Rename {
    /// talosctl's format: `"from" -> "to"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} -> {:?}", self.from, self.to)
    }
}

/// One context: where to connect and with which credentials.
///
/// `Debug` is safe to log: PEM fields show only their label, the basic-auth password is
/// redacted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawContext")]
pub struct Context {
    /// apid endpoints to dial (`host` or `host:port`); always written, even when empty, as
    /// talosctl does.
    pub endpoints: Vec<String>,
    /// Default target nodes (the `node` metadata); left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// CA bundle (PEM) that verifies apid's server certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<Base64Pem>,
    /// Client certificate (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crt: Option<Base64Pem>,
    /// Client private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Base64Pem>,
    /// Talos's alternative authentication methods; kept so real talosconfigs round-trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// Talos's cluster name (used with Omni); kept so real talosconfigs round-trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Talos's proxy URL; kept so real talosconfigs round-trip.
    #[serde(rename = "proxy-url", skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
}

/// `auth:` — Talos's non-certificate authentication settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with basic or siderov1")]
pub struct Auth {
    /// HTTP basic credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// Omni's SideroV1 signature auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub siderov1: Option<SideroV1>,
}

/// `auth.basic:` — HTTP basic credentials. `Debug` redacts the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with username and password"
)]
pub struct BasicAuth {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password.
    #[serde(default)]
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `auth.siderov1:` — the identity used for SideroV1 signatures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with identity")]
pub struct SideroV1 {
    /// The identity (an e-mail address in Omni).
    #[serde(default)]
    pub identity: String,
}

/// A context as written in YAML: [`Context`] plus Talos's deprecated `target`, which is
/// folded into `endpoints` on load exactly as talosctl's `upgrade()` does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a context mapping")]
struct RawContext {
    #[serde(default)]
    target: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    endpoints: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    nodes: Vec<String>,
    #[serde(default, deserialize_with = "pem::optional::deserialize")]
    ca: Option<Base64Pem>,
    #[serde(default, deserialize_with = "pem::optional::deserialize")]
    crt: Option<Base64Pem>,
    #[serde(default, deserialize_with = "pem::optional::deserialize")]
    key: Option<Base64Pem>,
    #[serde(default)]
    auth: Option<Auth>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default, rename = "proxy-url")]
    proxy_url: Option<String>,
}

impl From<RawContext> for Context {
    fn from(raw: RawContext) -> Self {
        let mut endpoints = raw.endpoints;
        endpoints.extend(raw.target.filter(|target| !target.is_empty()));
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        Context {
            endpoints,
            nodes: raw.nodes,
            ca: raw.ca,
            crt: raw.crt,
            key: raw.key,
            auth: raw.auth,
            cluster: non_empty(raw.cluster),
            proxy_url: non_empty(raw.proxy_url),
        }
    }
}

/// Reads `null` (e.g. a bare `contexts:` line) as an empty collection.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_support::{CA_CERT, CA_KEY};

    fn context(endpoint: &str) -> Context {
        Context {
            endpoints: vec![endpoint.to_owned()],
            ca: Some(Base64Pem::from_pem(CA_CERT)),
            crt: Some(Base64Pem::from_pem(CA_CERT)),
            key: Some(Base64Pem::from_pem(CA_KEY)),
            ..Context::default()
        }
    }

    fn names(config: &ClientConfig) -> Vec<&str> {
        config.contexts.keys().map(String::as_str).collect()
    }

    /// Two contexts of one name kept only the second, silently; go-yaml refuses the file.
    #[test]
    fn a_context_listed_twice_is_refused_and_null_contexts_are_none() {
        let text = "context: dev\ncontexts:\n  dev: {endpoints: [1.1.1.1]}\n  \
                    dev: {endpoints: [2.2.2.2]}\n";
        let err = ClientConfig::from_yaml(text).expect_err("duplicate context");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            source
                .unwrap_or_default()
                .contains("the key \"dev\" is listed twice"),
            "{err:?}"
        );
        let config = ClientConfig::from_yaml("context: ''\ncontexts: null\n").expect("null");
        assert!(config.contexts.is_empty());
    }

    #[test]
    fn merge_into_empty() {
        let mut config = ClientConfig::default();
        let renames = config.merge(ClientConfig::with_context("foo", context("1.1.1.1")));
        assert!(renames.is_empty());
        assert_eq!(config.context, "foo");
        assert_eq!(names(&config), ["foo"]);
        assert_eq!(config.current().unwrap().1.endpoints, ["1.1.1.1"]);
    }

    #[test]
    fn merge_without_conflict() {
        let mut config = ClientConfig::with_context("foo", context("1.1.1.1"));
        let renames = config.merge(ClientConfig::with_context("bar", context("2.2.2.2")));
        assert!(renames.is_empty());
        assert_eq!(config.context, "bar");
        assert_eq!(names(&config), ["bar", "foo"]);
    }

    #[test]
    fn merge_with_clash_renames_to_first_free_suffix() {
        let mut config = ClientConfig::with_context("foo", context("1.1.1.1"));
        let renames = config.merge(ClientConfig::with_context("foo", context("2.2.2.2")));
        assert_eq!(
            renames,
            [Rename {
                from: "foo".into(),
                to: "foo-1".into()
            }]
        );
        assert_eq!(renames[0].to_string(), r#""foo" -> "foo-1""#);
        assert_eq!(config.context, "foo-1");
        assert_eq!(config.contexts["foo"].endpoints, ["1.1.1.1"]);
        assert_eq!(config.contexts["foo-1"].endpoints, ["2.2.2.2"]);

        let renames = config.merge(ClientConfig::with_context("foo", context("3.3.3.3")));
        assert_eq!(renames[0].to_string(), r#""foo" -> "foo-2""#);
        assert_eq!(config.context, "foo-2");
        assert_eq!(names(&config), ["foo", "foo-1", "foo-2"]);
        assert_eq!(config.current().unwrap().1.endpoints, ["3.3.3.3"]);
    }

    #[test]
    fn merge_keeps_current_when_incoming_has_none() {
        let mut config = ClientConfig::with_context("foo", context("1.1.1.1"));
        let mut incoming = ClientConfig::with_context("bar", context("2.2.2.2"));
        incoming.context.clear();
        config.merge(incoming);
        assert_eq!(config.context, "foo");
        assert_eq!(names(&config), ["bar", "foo"]);

        // An incoming current context that the incoming config does not define is ignored.
        let mut dangling = ClientConfig::with_context("baz", context("3.3.3.3"));
        dangling.context = "missing".into();
        config.merge(dangling);
        assert_eq!(config.context, "foo");
    }

    #[test]
    fn yaml_round_trips_in_talos_layout() {
        let mut config = ClientConfig::with_context("dev", context("127.0.0.1"));
        config.contexts.insert(
            "empty".into(),
            Context {
                nodes: vec!["10.0.0.2".into()],
                ..Context::default()
            },
        );
        let yaml = config.to_yaml().unwrap();
        assert!(yaml.starts_with("context: dev\ncontexts:\n"), "{yaml}");
        // endpoints is always written; empty optional fields are not.
        assert!(
            yaml.contains("  empty:\n    endpoints: []\n    nodes:\n"),
            "{yaml}"
        );
        assert!(!yaml.contains("cluster"), "{yaml}");
        assert!(yaml.contains(&format!("ca: {}", Base64Pem::from_pem(CA_CERT).to_base64())));
        assert_eq!(ClientConfig::from_yaml(&yaml).unwrap(), config);

        let empty = ClientConfig::default().to_yaml().unwrap();
        assert_eq!(empty, "context: ''\ncontexts: {}\n");
        assert_eq!(
            ClientConfig::from_yaml(&empty).unwrap(),
            ClientConfig::default()
        );
    }

    #[test]
    fn real_talosconfig_loads() {
        let b64 = |s: &str| Base64Pem::from_pem(s).to_base64();
        let text = format!(
            "context: omni-prod\n\
             contexts:\n    \
                 omni-prod:\n        \
                     endpoints:\n            - https://omni.example:443\n        \
                     auth:\n            siderov1:\n                identity: ops@example.com\n        \
                     cluster: prod\n    \
                 admin@dev:\n        \
                     target: 10.5.0.1\n        \
                     endpoints:\n            - 10.5.0.2\n        \
                     nodes:\n            - 10.5.0.3\n        \
                     ca: {ca}\n        crt: {crt}\n        key: {key}\n        \
                     auth:\n            basic:\n                username: u\n                password: hunter2\n        \
                     proxy-url: http://proxy:3128\n",
            ca = b64(CA_CERT),
            crt = b64(CA_CERT),
            key = b64(CA_KEY),
        );
        let config = ClientConfig::from_yaml(&text).unwrap();
        let (name, current) = config.current().unwrap();
        assert_eq!(name, "omni-prod");
        assert_eq!(current.cluster.as_deref(), Some("prod"));
        let identity = &current
            .auth
            .as_ref()
            .unwrap()
            .siderov1
            .as_ref()
            .unwrap()
            .identity;
        assert_eq!(identity, "ops@example.com");

        let dev = &config.contexts["admin@dev"];
        // Deprecated `target` is appended to endpoints, as talosctl does.
        assert_eq!(dev.endpoints, ["10.5.0.2", "10.5.0.1"]);
        assert_eq!(dev.nodes, ["10.5.0.3"]);
        assert_eq!(dev.key.as_ref().unwrap().as_bytes(), CA_KEY.as_bytes());
        assert_eq!(dev.proxy_url.as_deref(), Some("http://proxy:3128"));
        let shown = format!("{dev:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("MC4C"), "{shown}");

        let again = ClientConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let text = "context: a\ncontexts:\n  a:\n    endpoints: []\n    tls: insecure\n";
        let err = ClientConfig::from_yaml(text).unwrap_err();
        assert_eq!(err.to_string(), "cannot parse client config");
        let message = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            message.starts_with("contexts.a: unknown field `tls`"),
            "{message}"
        );
        assert!(message.contains("line 5"), "{message}");
    }

    #[test]
    fn current_context_errors() {
        let mut config = ClientConfig::default();
        assert!(matches!(config.current(), Err(Error::NoCurrentContext)));
        config.context = "gone".into();
        let err = config.current().unwrap_err();
        assert!(matches!(&err, Error::UnknownContext { name } if name == "gone"));
        assert_eq!(
            err.to_string(),
            "current context \"gone\" is not defined in the client config"
        );
    }

    #[test]
    fn context_mut_edits_in_place() {
        let mut config = ClientConfig::with_context("dev", context("1.1.1.1"));
        config
            .context_mut("dev")
            .unwrap()
            .nodes
            .push("10.0.0.9".into());
        assert_eq!(config.contexts["dev"].nodes, ["10.0.0.9"]);
        assert!(config.context_mut("nope").is_none());
    }

    #[test]
    fn save_writes_0600_in_a_0700_dir_and_loads_back() {
        let home = tempfile::tempdir().unwrap();
        let path = default_path(home.path());
        assert_eq!(path, home.path().join(".basalt/config"));

        assert!(matches!(
            ClientConfig::load(&path),
            Err(Error::NotFound {
                document: Document::ClientConfig,
                ..
            })
        ));
        assert_eq!(
            ClientConfig::load_or_default(&path).unwrap(),
            ClientConfig::default()
        );

        let config = ClientConfig::with_context("dev", context("127.0.0.1"));
        config.save(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(ClientConfig::load(&path).unwrap(), config);

        // Saving again replaces the file atomically and keeps the mode.
        let mut changed = config.clone();
        changed.merge(ClientConfig::with_context("dev", context("127.0.0.2")));
        changed.save(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(ClientConfig::load(&path).unwrap(), changed);
    }

    #[test]
    fn bad_input_never_panics() {
        for text in [
            "contexts: [",
            "contexts:\n  a:\n    endpoints: 5\n",
            "contexts:\n  a:\n    ca: '%%%'\n",
            "contexts:\n  a: [1]\n",
            "context: {a: b}\n",
            "- x\n",
            "context: a\ncontexts:\n  a:\n    endpoints: [",
        ] {
            assert!(ClientConfig::from_yaml(text).is_err(), "{text:?}");
        }
        // Empty documents and bare keys are empty configs, as talosctl reads them.
        for text in ["", "# comment\n", "context:\ncontexts:\n"] {
            let config = ClientConfig::from_yaml(text).unwrap();
            assert!(config.contexts.is_empty(), "{text:?}");
        }
    }
}
