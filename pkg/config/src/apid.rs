//! apid's own config file (`apid --config <state>/apid/apid.yaml`): YAML → [`RawApidConfig`]
//! (serde, unknown keys rejected) → [`ApidConfig`] (validated; every problem reported at once).
//!
//! ```yaml
//! listen: 127.0.0.1:50000                 # optional, default 0.0.0.0:50000
//! tls:
//!   cert: /state/apid/server.crt          # server certificate chain (PEM), leaf first
//!   key: /state/apid/server.key           # its private key (PEM; ED25519/EC/PKCS#8 labels)
//!   ca: /state/apid/ca.pem                # accepted client CAs (one or more PEM certificates)
//! machinedSocket: /state/run/machined.sock
//! audit: stderr                           # optional, default stderr; or {path: /state/apid/audit.log}
//! handshakeTimeout: 10s                   # optional, default 10s
//! metrics: 127.0.0.1:9100                 # optional, default off: Prometheus text on GET /metrics
//! revocation: /state/apid/revoked.yaml    # optional: the deny list machined writes (watched)
//! limits: {requestsPerSecond: 100}        # optional: per-client limits, see [`crate::limits`]
//! forwarding:                             # optional; control planes only
//!   cert: /state/apid/client.crt          # apid's os:impersonator client certificate (PEM)
//!   key: /state/apid/client.key           # its private key (PEM)
//! ```
//!
//! Without `forwarding` apid cannot call other nodes' apids and refuses calls that name
//! another node (as a Talos worker does).
//!
//! machined writes this file for the apid it supervises. Loading only reads and validates the
//! YAML: it never opens the certificate files or binds anything (`apid::Server::bind` does both).
//! Paths must be absolute, because apid runs with whatever working directory its supervisor
//! gives it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::limits::{ApidLimits, RawApidLimits};
use crate::machine::DEFAULT_APID_LISTEN;
use crate::{Document, Error, yaml};

/// Where apid listens when `listen` is not set: every IPv4 address, port 50000 (Talos's).
pub const DEFAULT_LISTEN: SocketAddr = DEFAULT_APID_LISTEN;

/// How long a client gets to finish the TLS handshake when `handshakeTimeout` is not set.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `handshakeTimeout` accepted. Anything longer lets idle sockets pile up.
pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
pub const MAX_UNIX_SOCKET_PATH: usize = 107;

/// The YAML spelling of [`AuditSink::Stderr`].
const STDERR: &str = "stderr";

/// A validated apid config.
///
/// Fields are public so that tests and machined can build one directly; values read from YAML
/// have passed [`ApidConfig::try_from`]'s checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApidConfig {
    /// `listen`: the TCP address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `tls`: the server's credentials and the accepted client CAs.
    pub tls: ApidTls,
    /// `machinedSocket`: machined's unix socket, where every call is forwarded.
    pub machined_socket: PathBuf,
    /// `audit`: where the one-line-per-call audit records go.
    pub audit: AuditSink,
    /// `handshakeTimeout`: how long a client gets to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// `forwarding`: the `os:impersonator` client credentials apid uses to call other nodes'
    /// apids. `None` on workers: they do not forward.
    pub forwarding: Option<ForwardingCredentials>,
    /// `metrics`: where to serve Prometheus metrics (plain HTTP, `GET /metrics`); `None` (the
    /// default) serves none. Meant for a loopback or management address: it is unauthenticated.
    pub metrics: Option<SocketAddr>,
    /// `revocation`: the client-certificate deny list machined writes (YAML, watched and
    /// reloaded by apid). `None`: nothing is revoked.
    pub revocation: Option<PathBuf>,
    /// `limits`: per-client request rate, in-flight calls and connections per address.
    pub limits: ApidLimits,
}

/// `forwarding:` — file paths of apid's `os:impersonator` client certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardingCredentials {
    /// `cert`: the client certificate (PEM).
    pub cert: PathBuf,
    /// `key`: its private key (PEM).
    pub key: PathBuf,
}

impl fmt::Debug for ForwardingCredentials {
    /// The key path is redacted like every other key reference in logged config (STYLE §4).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardingCredentials")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `tls:` — file paths of apid's credentials. They are watched and reloaded when they change.
#[derive(Clone, PartialEq, Eq)]
pub struct ApidTls {
    /// `cert`: the server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// `key`: the server's private key (PEM).
    pub key: PathBuf,
    /// `ca`: the accepted client CA bundle (one or more PEM certificates; several during CA
    /// rotation).
    pub ca: PathBuf,
}

/// Where audit records are written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AuditSink {
    /// Appended to the file at this path (created if missing, mode 0600).
    File(PathBuf),
    /// Written to apid's standard error, one JSON object per line.
    #[default]
    Stderr,
}

impl ApidConfig {
    /// Parses and validates an apid config.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        RawApidConfig::from_yaml(text)?.try_into()
    }

    /// Reads, parses and validates the apid config at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = yaml::read(Document::ApidConfig, path)?;
        Self::from_yaml(&text).map_err(|err| err.with_path(path))
    }

    /// Renders the config as YAML; [`ApidConfig::from_yaml`] reads it back unchanged.
    pub fn to_yaml(&self) -> Result<String, Error> {
        self.to_raw().to_yaml()
    }

    /// The serde form of this config. Defaults are left out so that a later change of default
    /// reaches files machined wrote earlier.
    pub fn to_raw(&self) -> RawApidConfig {
        let path = |p: &Path| Some(p.display().to_string());
        RawApidConfig {
            listen: (self.listen != DEFAULT_LISTEN).then(|| self.listen.to_string()),
            tls: Some(RawApidTls {
                cert: path(&self.tls.cert),
                key: path(&self.tls.key),
                ca: path(&self.tls.ca),
            }),
            machined_socket: path(&self.machined_socket),
            audit: match &self.audit {
                AuditSink::Stderr => None,
                AuditSink::File(file) => {
                    Some(RawAuditSink::File(RawAuditFile { path: path(file) }))
                }
            },
            handshake_timeout: (self.handshake_timeout != DEFAULT_HANDSHAKE_TIMEOUT)
                .then(|| format_duration(self.handshake_timeout)),
            forwarding: self.forwarding.as_ref().map(|creds| RawForwarding {
                cert: path(&creds.cert),
                key: path(&creds.key),
            }),
            metrics: self.metrics.map(|addr| addr.to_string()),
            revocation: self.revocation.as_deref().and_then(path),
            limits: self.limits.to_raw(),
        }
    }
}

impl TryFrom<RawApidConfig> for ApidConfig {
    type Error = Error;

    /// Validates every field and reports all problems in one [`Error::Invalid`].
    fn try_from(raw: RawApidConfig) -> Result<Self, Error> {
        let mut problems = Problems::default();

        let listen = match raw.listen {
            None => Some(DEFAULT_LISTEN),
            Some(text) => text
                .parse::<SocketAddr>()
                .map_err(|_| {
                    problems.push(
                        "listen",
                        format!(
                            "{text:?} is not an address:port such as 0.0.0.0:50000 or [::]:50000"
                        ),
                    )
                })
                .ok(),
        };

        let (cert, key, ca) = match raw.tls {
            None => {
                problems.push("tls", "is required (cert, key and ca)");
                (None, None, None)
            }
            Some(RawApidTls { cert, key, ca }) => (
                absolute_path(&mut problems, "tls.cert", cert),
                absolute_path(&mut problems, "tls.key", key),
                absolute_path(&mut problems, "tls.ca", ca),
            ),
        };

        let machined_socket = absolute_path(&mut problems, "machinedSocket", raw.machined_socket)
            .filter(|path| {
                let len = path.as_os_str().len();
                if len > MAX_UNIX_SOCKET_PATH {
                    problems.push(
                        "machinedSocket",
                        format!(
                            "is {len} bytes long; unix socket paths are limited to \
                             {MAX_UNIX_SOCKET_PATH}"
                        ),
                    );
                    false
                } else {
                    true
                }
            });

        let audit = match raw.audit {
            None => Some(AuditSink::Stderr),
            Some(RawAuditSink::Keyword(word)) if word == STDERR => Some(AuditSink::Stderr),
            Some(RawAuditSink::Keyword(word)) => {
                problems.push(
                    "audit",
                    format!("{word:?} is not an audit sink: use stderr or {{path: FILE}}"),
                );
                None
            }
            Some(RawAuditSink::File(RawAuditFile { path })) => {
                absolute_path(&mut problems, "audit.path", path).map(AuditSink::File)
            }
        };

        let handshake_timeout = bounded_duration(
            &mut problems,
            "handshakeTimeout",
            raw.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
            MAX_HANDSHAKE_TIMEOUT,
        );

        // `forwarding` is optional as a whole; once present, both paths are required.
        let forwarding = raw.forwarding.map(|RawForwarding { cert, key }| {
            (
                absolute_path(&mut problems, "forwarding.cert", cert),
                absolute_path(&mut problems, "forwarding.key", key),
            )
        });
        let forwarding = match forwarding {
            None => Some(None),
            Some((Some(cert), Some(key))) => Some(Some(ForwardingCredentials { cert, key })),
            Some(_) => None,
        };

        // A bad address is a problem like any other; `None` here then never reaches `Ok`.
        let metrics = metrics_address(&mut problems, "metrics", raw.metrics);
        // Optional as a whole; once given it must be an absolute path (a problem otherwise).
        let revocation = raw
            .revocation
            .and_then(|path| absolute_path(&mut problems, "revocation", Some(path)));
        let limits = ApidLimits::validate(&mut problems, "limits", raw.limits);

        // Every `None` below was recorded as a problem, so the fallback arm never returns an
        // empty problem list.
        match (
            listen,
            cert,
            key,
            ca,
            machined_socket,
            audit,
            handshake_timeout,
            forwarding,
        ) {
            (
                Some(listen),
                Some(cert),
                Some(key),
                Some(ca),
                Some(machined_socket),
                Some(audit),
                Some(handshake_timeout),
                Some(forwarding),
            ) if problems.is_empty() => Ok(ApidConfig {
                listen,
                tls: ApidTls { cert, key, ca },
                machined_socket,
                audit,
                handshake_timeout,
                forwarding,
                metrics,
                revocation,
                limits,
            }),
            _ => Err(problems.into_error(Document::ApidConfig)),
        }
    }
}

impl fmt::Debug for ApidTls {
    /// The key path is redacted like every other key reference in logged config (STYLE §4).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApidTls")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .field("ca", &self.ca)
            .finish()
    }
}

// === Raw (serde) types ===

/// The apid config as written in YAML, before validation.
///
/// Every key is optional at this level so that a missing key becomes a validation problem
/// listed with all the others. Unknown keys are parse errors: a typo must not silently drop a
/// setting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an apid config mapping"
)]
pub struct RawApidConfig {
    /// `listen`: `address:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `tls`: credential file paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawApidTls>,
    /// `machinedSocket`: path of machined's unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machined_socket: Option<String>,
    /// `audit`: `stderr` or `{path: FILE}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<RawAuditSink>,
    /// `handshakeTimeout`: a duration such as `10s`, `500ms` or `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
    /// `forwarding`: the impersonator client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<RawForwarding>,
    /// `metrics`: `address:port` of the Prometheus endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// `revocation`: path of the deny list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<String>,
    /// `limits`: per-client limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawApidLimits>,
}

impl RawApidConfig {
    /// Parses YAML without validating; an empty document is [`Error::Empty`].
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        yaml::parse_required(Document::ApidConfig, text)
    }

    /// Renders as YAML, leaving out unset keys.
    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::render(Document::ApidConfig, self)
    }
}

/// `tls:` as written in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with cert, key and ca")]
pub struct RawApidTls {
    /// `cert`: path of the certificate chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// `key`: path of the private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `ca`: path of the accepted client CA bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// `forwarding:` as written in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with cert and key")]
pub struct RawForwarding {
    /// `cert`: path of the impersonator client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// `key`: path of its private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `audit:` as written in YAML: the word `stderr`, or a mapping with `path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "`stderr` or a mapping with path")]
pub enum RawAuditSink {
    /// A keyword; only `stderr` is valid.
    Keyword(String),
    /// `{path: FILE}`.
    File(RawAuditFile),
}

/// `audit: {path: …}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with path")]
pub struct RawAuditFile {
    /// `path`: the file records are appended to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

// === validation helpers ===

/// An optional `address:port` for a metrics endpoint; a bad value is recorded as a problem.
pub(crate) fn metrics_address(
    problems: &mut Problems,
    key: &str,
    value: Option<String>,
) -> Option<SocketAddr> {
    let text = value?;
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(
                key,
                format!("{text:?} is not an address:port such as 127.0.0.1:9100"),
            );
            None
        }
    }
}

/// A required, non-empty, absolute path.
pub(crate) fn absolute_path(
    problems: &mut Problems,
    key: &str,
    value: Option<String>,
) -> Option<PathBuf> {
    match value {
        None => {
            problems.push(key, "is required");
            None
        }
        Some(text) if text.is_empty() => {
            problems.push(key, "must not be empty");
            None
        }
        Some(text) if !Path::new(&text).is_absolute() => {
            problems.push(key, format!("{text:?} must be an absolute path"));
            None
        }
        Some(text) => Some(PathBuf::from(text)),
    }
}

/// A positive duration of at most `max`, or `default` when unset; a bad value is a problem
/// under `key` (and `None`).
pub(crate) fn bounded_duration(
    problems: &mut Problems,
    key: &str,
    value: Option<String>,
    default: Duration,
    max: Duration,
) -> Option<Duration> {
    match value {
        None => Some(default),
        Some(text) => match parse_duration(&text) {
            Err(reason) => {
                problems.push(key, reason);
                None
            }
            Ok(d) if d.is_zero() => {
                problems.push(key, "must be greater than zero");
                None
            }
            Ok(d) if d > max => {
                problems.push(key, format!("must be at most {}", format_duration(max)));
                None
            }
            Ok(d) => Some(d),
        },
    }
}

/// Parses a Go-style duration made of `<number><unit>` parts (`10s`, `1m30s`, `250ms`).
///
/// Units: `h`, `m`, `s`, `ms`. Numbers are whole (no fractions, no sign). The reason returned on
/// failure is ready to be a [`Problem`](crate::Problem)'s text.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration such as 10s, 500ms or 1m30s");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let part = match unit {
            "h" => number.checked_mul(3600).map(Duration::from_secs),
            "m" => number.checked_mul(60).map(Duration::from_secs),
            "s" => Some(Duration::from_secs(number)),
            "ms" => Some(Duration::from_millis(number)),
            _ => return Err(invalid()),
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
        rest = after;
    }
    Ok(total)
}

/// Renders a duration in the form [`parse_duration`] reads: whole seconds as `Ns`, otherwise
/// `Nms` (sub-millisecond parts are dropped).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "\
listen: 127.0.0.1:50000
tls:
  cert: /state/apid/server.crt
  key: /state/apid/server.key
  ca: /state/apid/ca.pem
machinedSocket: /state/run/machined.sock
audit: {path: /state/apid/audit.log}
handshakeTimeout: 1m30s
forwarding: {cert: /state/apid/client.crt, key: /state/apid/client.key}
";

    const MINIMAL: &str = "\
tls: {cert: /s/server.crt, key: /s/server.key, ca: /s/ca.pem}
machinedSocket: /s/machined.sock
";

    fn problem_keys(err: &Error) -> Vec<&str> {
        err.problems().iter().map(|p| p.key.as_str()).collect()
    }

    fn parse_error_text(err: &Error) -> String {
        assert!(matches!(err, Error::Parse { .. }), "{err:?}");
        std::error::Error::source(err)
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn forwarding_needs_both_absolute_paths() {
        let config = ApidConfig::from_yaml(FULL).unwrap();
        let creds = config.forwarding.expect("forwarding");
        assert_eq!(creds.cert, Path::new("/state/apid/client.crt"));
        assert!(ApidConfig::from_yaml(MINIMAL).unwrap().forwarding.is_none());
        let err = ApidConfig::from_yaml(&format!("{MINIMAL}forwarding: {{cert: client.crt}}\n"))
            .unwrap_err();
        assert_eq!(problem_keys(&err), ["forwarding.cert", "forwarding.key"]);
    }

    #[test]
    fn full_config_parses() {
        let config = ApidConfig::from_yaml(FULL).unwrap();
        assert_eq!(config.listen, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(config.tls.cert, Path::new("/state/apid/server.crt"));
        assert_eq!(config.tls.key, Path::new("/state/apid/server.key"));
        assert_eq!(config.tls.ca, Path::new("/state/apid/ca.pem"));
        assert_eq!(
            config.machined_socket,
            Path::new("/state/run/machined.sock")
        );
        assert_eq!(
            config.audit,
            AuditSink::File(PathBuf::from("/state/apid/audit.log"))
        );
        assert_eq!(config.handshake_timeout, Duration::from_secs(90));
    }

    #[test]
    fn defaults_apply_and_are_not_written_back() {
        let config = ApidConfig::from_yaml(MINIMAL).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(DEFAULT_LISTEN.to_string(), "0.0.0.0:50000");
        assert_eq!(config.audit, AuditSink::Stderr);
        assert_eq!(config.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        let yaml = config.to_yaml().unwrap();
        for key in ["listen", "audit", "handshakeTimeout"] {
            assert!(!yaml.contains(key), "{yaml}");
        }
        let explicit = MINIMAL.replace("machinedSocket", "audit: stderr\nmachinedSocket");
        assert_eq!(ApidConfig::from_yaml(&explicit).unwrap(), config);
    }

    #[test]
    fn yaml_round_trips() {
        for text in [FULL, MINIMAL] {
            let config = ApidConfig::from_yaml(text).unwrap();
            let again = ApidConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
            assert_eq!(again, config);
        }
        let mut config = ApidConfig::from_yaml(MINIMAL).unwrap();
        config.handshake_timeout = Duration::from_millis(1500);
        let again = ApidConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again.handshake_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "\
listen: localhost:50000
tls: {cert: server.crt, key: ''}
machinedSocket: relative.sock
audit: syslog
handshakeTimeout: 0s
";
        let err = ApidConfig::from_yaml(text).unwrap_err();
        assert_eq!(
            problem_keys(&err),
            [
                "listen",
                "tls.cert",
                "tls.key",
                "tls.ca",
                "machinedSocket",
                "audit",
                "handshakeTimeout"
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("invalid apid config:\n  - listen: "),
            "{text}"
        );
        assert!(text.contains("tls.ca: is required"), "{text}");
        assert!(
            text.contains("audit: \"syslog\" is not an audit sink: use stderr or {path: FILE}"),
            "{text}"
        );
    }

    #[test]
    fn missing_sections_are_problems_not_parse_errors() {
        let err = ApidConfig::from_yaml("listen: 0.0.0.0:1\n").unwrap_err();
        assert_eq!(problem_keys(&err), ["tls", "machinedSocket"]);
        let err = ApidConfig::from_yaml(&MINIMAL.replace("/s/machined.sock", "''")).unwrap_err();
        assert_eq!(problem_keys(&err), ["machinedSocket"]);
        let err = ApidConfig::from_yaml(&format!("{MINIMAL}audit: {{}}\n")).unwrap_err();
        assert_eq!(problem_keys(&err), ["audit.path"]);
    }

    #[test]
    fn socket_path_must_fit_the_kernel_limit() {
        let long = format!("/{}", "s".repeat(MAX_UNIX_SOCKET_PATH));
        let err = ApidConfig::from_yaml(&MINIMAL.replace("/s/machined.sock", &long)).unwrap_err();
        assert_eq!(problem_keys(&err), ["machinedSocket"]);
        assert!(err.to_string().contains("limited to 107"), "{err}");
        let fits = format!("/{}", "s".repeat(MAX_UNIX_SOCKET_PATH - 1));
        ApidConfig::from_yaml(&MINIMAL.replace("/s/machined.sock", &fits)).unwrap();
    }

    #[test]
    fn handshake_timeout_is_bounded() {
        for (value, ok) in [("10s", true), ("5m", true), ("5m1s", false), ("0ms", false)] {
            let text = format!("{MINIMAL}handshakeTimeout: {value}\n");
            assert_eq!(ApidConfig::from_yaml(&text).is_ok(), ok, "{value}");
        }
    }

    #[test]
    fn durations_parse_like_go() {
        for (text, expected) in [
            ("10s", Duration::from_secs(10)),
            ("250ms", Duration::from_millis(250)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1s500ms", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for text in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "1d",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = format!("{MINIMAL}handshake_timeout: 1s\n");
        let message = parse_error_text(&ApidConfig::from_yaml(&text).unwrap_err());
        assert!(
            message.starts_with("unknown field `handshake_timeout`"),
            "{message}"
        );
        let text = MINIMAL.replace("ca: /s/ca.pem", "ca: /s/ca.pem, crt: x");
        let message = parse_error_text(&ApidConfig::from_yaml(&text).unwrap_err());
        assert!(message.starts_with("tls: unknown field `crt`"), "{message}");
        let text = format!("{MINIMAL}audit: {{path: /a, mode: 600}}\n");
        assert!(matches!(
            ApidConfig::from_yaml(&text),
            Err(Error::Parse { .. })
        ));
    }

    #[test]
    fn bad_input_never_panics() {
        for text in [
            "",
            "null",
            "[1, 2]",
            "tls: 3",
            "audit: [stderr]",
            "listen: {a: b}",
            "\u{0}",
            &FULL[..40],
        ] {
            assert!(ApidConfig::from_yaml(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            ApidConfig::from_yaml(""),
            Err(Error::Empty {
                document: Document::ApidConfig,
                ..
            })
        ));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apid.yaml");
        assert!(matches!(
            ApidConfig::load(&path),
            Err(Error::NotFound {
                document: Document::ApidConfig,
                ..
            })
        ));
        std::fs::write(&path, "listen: nope\n").unwrap();
        let err = ApidConfig::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("invalid apid config {}:", path.display())),
            "{err}"
        );
        std::fs::write(&path, FULL).unwrap();
        assert_eq!(
            ApidConfig::load(&path).unwrap(),
            ApidConfig::from_yaml(FULL).unwrap()
        );
    }

    #[test]
    fn debug_redacts_the_key_path() {
        let config = ApidConfig::from_yaml(MINIMAL).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("server.key"), "{debug}");
        assert!(debug.contains("server.crt"), "{debug}");
    }
}
