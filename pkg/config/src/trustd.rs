//! trustd's own config file (`trustd --config <state>/trustd/trustd.yaml`): YAML →
//! [`RawTrustdConfig`] (serde, unknown keys rejected) → [`TrustdConfig`] (validated; every
//! problem reported at once).
//!
//! ```yaml
//! listen: 0.0.0.0:50001                   # optional, default 0.0.0.0:50001
//! tls:                                    # trustd's own server certificate (server-side TLS only)
//!   cert: /state/trustd/server.crt        #   chain (PEM), leaf first; reloaded when it changes
//!   key: /state/trustd/server.key         #   its private key (PEM)
//! ca:                                     # the issuing OS CA
//!   cert: /state/trustd/ca.crt
//!   key: /state/trustd/ca.key
//! acceptedCas: /state/trustd/accepted.pem # optional: more CAs for the response bundle (rotation)
//! tokens:                                 # accepted join tokens: current first, then retired
//!   - token: abcdef.0123456789abcdef
//!   - token: ghijkl.0123456789abcdef
//!     expires: 2030-01-01T00:00:00Z       # optional, RFC 3339; refused from then on
//! journal: /state/trustd/issued.jsonl     # issuance journal, one JSON line per certificate
//! policy:                                 # optional
//!   ttl: 24h                              #   lifetime of issued certificates (default 24h)
//!   maxSans: 32                           #   most DNS + IP SANs per CSR (default 32)
//!   maxCsrBytes: 16384                    #   largest PEM CSR accepted (default 16 KiB)
//! rateLimit:                              # optional
//!   perPeerPerMinute: 60                  #   requests per peer IP per minute, burst included
//!   lockoutAfter: 5                       #   consecutive bad tokens before a lockout
//!   lockoutFor: 60s                       #   how long a locked-out peer is refused
//! handshakeTimeout: 10s                   # optional, default 10s
//! metrics: 127.0.0.1:9101                 # optional, default off: Prometheus text on GET /metrics
//! ```
//!
//! # What machined must provide
//!
//! machined writes this file (mode 0600: it holds the join tokens) for the trustd it
//! supervises on control-plane nodes, from the machine config: `tokens` = `machine.token`
//! followed by `machine.acceptedTokens` (each retired token with its `expires`), `ca` = the
//! files it wrote from `machine.ca` (certificate *and* key), `acceptedCas` = a bundle of
//! `machine.acceptedCAs` (left out when there are none), `listen` = `machine.trustd.listen`,
//! `tls` = a serverAuth certificate it issued for trustd (SANs as apid's; it may be replaced in
//! place at any time, trustd polls it), and a `journal` path in trustd's state directory. The
//! directories must exist. trustd re-reads this file, the `ca` files and `acceptedCas` when
//! they change and swaps in new `tokens`, `ca` and `acceptedCas` without a restart (CA and
//! token rotation); other settings take effect at the next start.
//!
//! Loading only reads and validates the YAML: it never opens the files it names or binds
//! anything (`trustd::Server::bind` does both). Paths must be absolute.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::apid::{
    absolute_path, bounded_duration, format_duration, metrics_address, parse_duration,
};
use crate::error::Problems;
use crate::machine::DEFAULT_TRUSTD_LISTEN;
use crate::token::TOKEN_FORMAT;
use crate::{Document, Error, Token, yaml};

/// Where trustd listens when `listen` is not set: every IPv4 address, port 50001 (Talos's).
pub const DEFAULT_LISTEN: SocketAddr = DEFAULT_TRUSTD_LISTEN;

/// Lifetime of issued certificates when `policy.ttl` is not set: 24 h, as Talos (workers renew
/// at half-life). Equal to `basalt_pki::DEFAULT_CSR_TTL`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest `policy.ttl` accepted. A trustd certificate is a node's server certificate,
/// renewed automatically; a year is already far more than it needs.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Most SANs per CSR when `policy.maxSans` is not set. Equal to `basalt_pki::DEFAULT_MAX_SANS`.
pub const DEFAULT_MAX_SANS: usize = 32;

/// The largest `policy.maxSans` accepted.
pub const MAX_MAX_SANS: usize = 256;

/// Largest PEM CSR when `policy.maxCsrBytes` is not set: 16 KiB, where a real one is under
/// 2 KiB. Equal to `basalt_pki::DEFAULT_MAX_CSR_BYTES`.
pub const DEFAULT_MAX_CSR_BYTES: usize = 16 * 1024;

/// The largest `policy.maxCsrBytes` accepted. trustd sizes its gRPC message limit from this
/// value, so it also bounds what an unauthenticated caller can make trustd buffer.
pub const MAX_MAX_CSR_BYTES: usize = 64 * 1024;

/// The smallest `policy.maxCsrBytes` accepted: below this not even an Ed25519 CSR fits.
pub const MIN_MAX_CSR_BYTES: usize = 256;

/// Requests per peer IP per minute when `rateLimit.perPeerPerMinute` is not set. A worker asks
/// once per renewal (every 12 h) and retries a handful of times when trustd is down, so 60 is
/// generous even for many workers behind one NAT address.
pub const DEFAULT_PER_PEER_PER_MINUTE: u32 = 60;

/// The largest `rateLimit.perPeerPerMinute` accepted (for benchmarks; about 16 700/s).
pub const MAX_PER_PEER_PER_MINUTE: u32 = 1_000_000;

/// Consecutive bad tokens from one peer before it is locked out, when `rateLimit.lockoutAfter`
/// is not set.
pub const DEFAULT_LOCKOUT_AFTER: u32 = 5;

/// The largest `rateLimit.lockoutAfter` accepted.
pub const MAX_LOCKOUT_AFTER: u32 = 1000;

/// How long a locked-out peer is refused when `rateLimit.lockoutFor` is not set.
pub const DEFAULT_LOCKOUT_FOR: Duration = Duration::from_secs(60);

/// The longest `rateLimit.lockoutFor` accepted.
pub const MAX_LOCKOUT_FOR: Duration = Duration::from_secs(3600);

/// How long a client gets to finish the TLS handshake when `handshakeTimeout` is not set.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `handshakeTimeout` accepted.
pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

/// A validated trustd config.
///
/// Fields are public so that tests and machined can build one directly; values read from YAML
/// have passed [`TrustdConfig::try_from`]'s checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustdConfig {
    /// `listen`: the TCP address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// `tls`: trustd's own server certificate and key.
    pub tls: CertKeyFiles,
    /// `ca`: the issuing CA's certificate and key.
    pub ca: CertKeyFiles,
    /// `acceptedCas`: a PEM bundle of further accepted CAs (CA rotation), or none.
    pub accepted_cas: Option<PathBuf>,
    /// `tokens`: the accepted join tokens, current first; never empty.
    pub tokens: Vec<AcceptedToken>,
    /// `journal`: the issuance journal file (created if missing, appended to).
    pub journal: PathBuf,
    /// `policy`: what is signed.
    pub policy: TrustdPolicy,
    /// `rateLimit`: per-peer limits.
    pub rate_limit: RateLimit,
    /// `handshakeTimeout`: how long a client gets to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// `metrics`: where to serve Prometheus metrics (plain HTTP, `GET /metrics`); `None` (the
    /// default) serves none. Meant for a loopback or management address: it is unauthenticated.
    pub metrics: Option<SocketAddr>,
}

/// A certificate file and its key file (`tls:` and `ca:`).
#[derive(Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    /// `cert`: the certificate (chain) as PEM.
    pub cert: PathBuf,
    /// `key`: the private key as PEM.
    pub key: PathBuf,
}

/// One accepted join token and when it stops being accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedToken {
    /// The token (its `Debug` is redacted).
    pub token: Token,
    /// From this instant on the token is refused; `None` = no expiry.
    pub expires: Option<SystemTime>,
}

/// `policy:` — the signing policy's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustdPolicy {
    /// `ttl`: lifetime of issued certificates.
    pub ttl: Duration,
    /// `maxSans`: most DNS + IP SANs per CSR.
    pub max_sans: usize,
    /// `maxCsrBytes`: largest PEM CSR accepted.
    pub max_csr_bytes: usize,
}

/// `rateLimit:` — per-peer (source IP) limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// `perPeerPerMinute`: requests one peer IP may make per minute (also the burst size).
    pub per_peer_per_minute: u32,
    /// `lockoutAfter`: consecutive bad tokens that lock a peer out.
    pub lockout_after: u32,
    /// `lockoutFor`: how long a locked-out peer is refused, whatever token it sends.
    pub lockout_for: Duration,
}

impl Default for TrustdPolicy {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_sans: DEFAULT_MAX_SANS,
            max_csr_bytes: DEFAULT_MAX_CSR_BYTES,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_peer_per_minute: DEFAULT_PER_PEER_PER_MINUTE,
            lockout_after: DEFAULT_LOCKOUT_AFTER,
            lockout_for: DEFAULT_LOCKOUT_FOR,
        }
    }
}

impl TrustdConfig {
    /// Parses and validates a trustd config.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        RawTrustdConfig::from_yaml(text)?.try_into()
    }

    /// Reads, parses and validates the trustd config at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = yaml::read(Document::TrustdConfig, path)?;
        Self::from_yaml(&text).map_err(|err| err.with_path(path))
    }

    /// Renders the config as YAML; [`TrustdConfig::from_yaml`] reads it back unchanged.
    pub fn to_yaml(&self) -> Result<String, Error> {
        self.to_raw()?.to_yaml()
    }

    /// The serde form of this config. Defaults are left out so that a later change of default
    /// reaches files machined wrote earlier.
    ///
    /// Fails only for a token expiry that RFC 3339 cannot express (before year 0 or after
    /// 9999), which YAML never produces.
    pub fn to_raw(&self) -> Result<RawTrustdConfig, Error> {
        let path = |p: &Path| Some(p.display().to_string());
        let files = |f: &CertKeyFiles| {
            Some(RawCertKeyFiles {
                cert: path(&f.cert),
                key: path(&f.key),
            })
        };
        let tokens = self
            .tokens
            .iter()
            .map(|t| {
                Ok(RawAcceptedToken {
                    token: Some(t.token.as_str().to_owned()),
                    expires: t.expires.map(format_time).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let policy = (self.policy != TrustdPolicy::default()).then(|| {
            let default = TrustdPolicy::default();
            RawTrustdPolicy {
                ttl: (self.policy.ttl != default.ttl).then(|| format_duration(self.policy.ttl)),
                max_sans: (self.policy.max_sans != default.max_sans)
                    .then_some(self.policy.max_sans as u64),
                max_csr_bytes: (self.policy.max_csr_bytes != default.max_csr_bytes)
                    .then_some(self.policy.max_csr_bytes as u64),
            }
        });
        let rate_limit = (self.rate_limit != RateLimit::default()).then(|| {
            let default = RateLimit::default();
            let limit = self.rate_limit;
            RawRateLimit {
                per_peer_per_minute: (limit.per_peer_per_minute != default.per_peer_per_minute)
                    .then_some(u64::from(limit.per_peer_per_minute)),
                lockout_after: (limit.lockout_after != default.lockout_after)
                    .then_some(u64::from(limit.lockout_after)),
                lockout_for: (limit.lockout_for != default.lockout_for)
                    .then(|| format_duration(limit.lockout_for)),
            }
        });
        Ok(RawTrustdConfig {
            listen: (self.listen != DEFAULT_LISTEN).then(|| self.listen.to_string()),
            tls: files(&self.tls),
            ca: files(&self.ca),
            accepted_cas: self.accepted_cas.as_deref().and_then(path),
            tokens: Some(tokens),
            journal: path(&self.journal),
            policy,
            rate_limit,
            handshake_timeout: (self.handshake_timeout != DEFAULT_HANDSHAKE_TIMEOUT)
                .then(|| format_duration(self.handshake_timeout)),
            metrics: self.metrics.map(|addr| addr.to_string()),
        })
    }
}

impl TryFrom<RawTrustdConfig> for TrustdConfig {
    type Error = Error;

    /// Validates every field and reports all problems in one [`Error::Invalid`].
    fn try_from(raw: RawTrustdConfig) -> Result<Self, Error> {
        let mut problems = Problems::default();

        let listen = match raw.listen {
            None => Some(DEFAULT_LISTEN),
            Some(text) => text
                .parse::<SocketAddr>()
                .map_err(|_| {
                    problems.push(
                        "listen",
                        format!(
                            "{text:?} is not an address:port such as 0.0.0.0:50001 or [::]:50001"
                        ),
                    )
                })
                .ok(),
        };

        let tls = cert_key_files(&mut problems, "tls", raw.tls);
        let ca = cert_key_files(&mut problems, "ca", raw.ca);
        let accepted_cas = match raw.accepted_cas {
            None => Some(None),
            Some(text) => absolute_path(&mut problems, "acceptedCas", Some(text)).map(Some),
        };
        let tokens = tokens(&mut problems, raw.tokens);
        let journal = absolute_path(&mut problems, "journal", raw.journal);
        let policy = policy(&mut problems, raw.policy.unwrap_or_default());
        let rate_limit = rate_limit(&mut problems, raw.rate_limit.unwrap_or_default());
        let handshake_timeout = bounded_duration(
            &mut problems,
            "handshakeTimeout",
            raw.handshake_timeout,
            DEFAULT_HANDSHAKE_TIMEOUT,
            MAX_HANDSHAKE_TIMEOUT,
        );

        // A bad address is a problem like any other; `None` here then never reaches `Ok`.
        let metrics = metrics_address(&mut problems, "metrics", raw.metrics);

        // Every `None` below was recorded as a problem, so the fallback arm never returns an
        // empty problem list.
        match (
            listen,
            tls,
            ca,
            accepted_cas,
            tokens,
            journal,
            policy,
            rate_limit,
            handshake_timeout,
        ) {
            (
                Some(listen),
                Some(tls),
                Some(ca),
                Some(accepted_cas),
                Some(tokens),
                Some(journal),
                Some(policy),
                Some(rate_limit),
                Some(handshake_timeout),
            ) if problems.is_empty() => Ok(TrustdConfig {
                listen,
                tls,
                ca,
                accepted_cas,
                tokens,
                journal,
                policy,
                rate_limit,
                handshake_timeout,
                metrics,
            }),
            _ => Err(problems.into_error(Document::TrustdConfig)),
        }
    }
}

impl fmt::Debug for CertKeyFiles {
    /// The key path is redacted like every other key reference in logged config (STYLE §4).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKeyFiles")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .finish()
    }
}

// === Raw (serde) types ===

/// The trustd config as written in YAML, before validation.
///
/// Every key is optional at this level so that a missing key becomes a validation problem
/// listed with all the others. Unknown keys are parse errors: a typo must not silently drop a
/// setting.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a trustd config mapping"
)]
pub struct RawTrustdConfig {
    /// `listen`: `address:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `tls`: trustd's server certificate and key paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawCertKeyFiles>,
    /// `ca`: the issuing CA's certificate and key paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<RawCertKeyFiles>,
    /// `acceptedCas`: path of a PEM bundle of further accepted CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_cas: Option<String>,
    /// `tokens`: the accepted join tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<RawAcceptedToken>>,
    /// `journal`: path of the issuance journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<String>,
    /// `policy`: signing limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RawTrustdPolicy>,
    /// `rateLimit`: per-peer limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RawRateLimit>,
    /// `handshakeTimeout`: a duration such as `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
    /// `metrics`: `address:port` of the Prometheus endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl fmt::Debug for RawTrustdConfig {
    /// Tokens are redacted; everything else is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawTrustdConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("accepted_cas", &self.accepted_cas)
            .field("tokens", &self.tokens)
            .field("journal", &self.journal)
            .field("policy", &self.policy)
            .field("rate_limit", &self.rate_limit)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl RawTrustdConfig {
    /// Parses YAML without validating; an empty document is [`Error::Empty`].
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        yaml::parse_required(Document::TrustdConfig, text)
    }

    /// Renders as YAML, leaving out unset keys.
    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::render(Document::TrustdConfig, self)
    }
}

/// `tls:` / `ca:` as written in YAML.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with cert and key")]
pub struct RawCertKeyFiles {
    /// `cert`: path of the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// `key`: path of the private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One entry of `tokens:` as written in YAML.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with token and optional expires"
)]
pub struct RawAcceptedToken {
    /// `token`: the join token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `expires`: RFC 3339 time from which the token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl fmt::Debug for RawCertKeyFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCertKeyFiles")
            .field("cert", &self.cert)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl fmt::Debug for RawAcceptedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawAcceptedToken")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("expires", &self.expires)
            .finish()
    }
}

/// `policy:` as written in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with ttl, maxSans and maxCsrBytes"
)]
pub struct RawTrustdPolicy {
    /// `ttl`: a duration such as `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// `maxSans`: a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sans: Option<u64>,
    /// `maxCsrBytes`: a size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_csr_bytes: Option<u64>,
}

/// `rateLimit:` as written in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with perPeerPerMinute, lockoutAfter and lockoutFor"
)]
pub struct RawRateLimit {
    /// `perPeerPerMinute`: a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_peer_per_minute: Option<u64>,
    /// `lockoutAfter`: a count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_after: Option<u64>,
    /// `lockoutFor`: a duration such as `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockout_for: Option<String>,
}

// === validation helpers ===

fn cert_key_files(
    problems: &mut Problems,
    key: &str,
    raw: Option<RawCertKeyFiles>,
) -> Option<CertKeyFiles> {
    match raw {
        None => {
            problems.push(key, "is required (cert and key)");
            None
        }
        Some(RawCertKeyFiles {
            cert,
            key: key_file,
        }) => {
            let cert = absolute_path(problems, &format!("{key}.cert"), cert);
            let key_file = absolute_path(problems, &format!("{key}.key"), key_file);
            Some(CertKeyFiles {
                cert: cert?,
                key: key_file?,
            })
        }
    }
}

fn tokens(
    problems: &mut Problems,
    raw: Option<Vec<RawAcceptedToken>>,
) -> Option<Vec<AcceptedToken>> {
    let raw = match raw {
        None => {
            problems.push("tokens", "is required: at least one join token");
            return None;
        }
        Some(raw) if raw.is_empty() => {
            problems.push("tokens", "must list at least one join token");
            return None;
        }
        Some(raw) => raw,
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, entry) in raw.into_iter().enumerate() {
        let token = match entry.token {
            None => {
                problems.push(format!("tokens[{i}].token"), "is required");
                None
            }
            // The value is never repeated in the problem: it may be a real token with a typo.
            Some(text) => match Token::parse(&text) {
                Ok(token) if !seen.insert(token.clone()) => {
                    problems.push(format!("tokens[{i}].token"), "is listed more than once");
                    None
                }
                Ok(token) => Some(token),
                Err(_) => {
                    problems.push(
                        format!("tokens[{i}].token"),
                        format!("must look like {TOKEN_FORMAT}"),
                    );
                    None
                }
            },
        };
        let expires = match entry.expires {
            None => Some(None),
            Some(text) => match OffsetDateTime::parse(&text, &Rfc3339) {
                Ok(at) => Some(Some(SystemTime::from(at))),
                Err(_) => {
                    problems.push(
                        format!("tokens[{i}].expires"),
                        format!("{text:?} is not an RFC 3339 time such as 2030-01-01T00:00:00Z"),
                    );
                    None
                }
            },
        };
        match (token, expires) {
            (Some(token), Some(expires)) => out.push(AcceptedToken { token, expires }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn policy(problems: &mut Problems, raw: RawTrustdPolicy) -> Option<TrustdPolicy> {
    let ttl = match raw.ttl {
        None => Some(DEFAULT_TTL),
        Some(text) => match parse_duration(&text) {
            Err(reason) => {
                problems.push("policy.ttl", reason);
                None
            }
            Ok(d) if d < Duration::from_secs(1) => {
                problems.push("policy.ttl", "must be at least 1s");
                None
            }
            Ok(d) if d > MAX_TTL => {
                problems.push(
                    "policy.ttl",
                    format!("must be at most {}h", MAX_TTL.as_secs() / 3600),
                );
                None
            }
            Ok(d) => Some(d),
        },
    };
    let max_sans = bounded_count(
        problems,
        "policy.maxSans",
        raw.max_sans,
        DEFAULT_MAX_SANS as u64,
        1,
        MAX_MAX_SANS as u64,
    );
    let max_csr_bytes = bounded_count(
        problems,
        "policy.maxCsrBytes",
        raw.max_csr_bytes,
        DEFAULT_MAX_CSR_BYTES as u64,
        MIN_MAX_CSR_BYTES as u64,
        MAX_MAX_CSR_BYTES as u64,
    );
    Some(TrustdPolicy {
        ttl: ttl?,
        // Both are bounded by constants that fit in usize.
        max_sans: usize::try_from(max_sans?).ok()?,
        max_csr_bytes: usize::try_from(max_csr_bytes?).ok()?,
    })
}

fn rate_limit(problems: &mut Problems, raw: RawRateLimit) -> Option<RateLimit> {
    let per_peer_per_minute = bounded_count(
        problems,
        "rateLimit.perPeerPerMinute",
        raw.per_peer_per_minute,
        u64::from(DEFAULT_PER_PEER_PER_MINUTE),
        1,
        u64::from(MAX_PER_PEER_PER_MINUTE),
    );
    let lockout_after = bounded_count(
        problems,
        "rateLimit.lockoutAfter",
        raw.lockout_after,
        u64::from(DEFAULT_LOCKOUT_AFTER),
        1,
        u64::from(MAX_LOCKOUT_AFTER),
    );
    let lockout_for = bounded_duration(
        problems,
        "rateLimit.lockoutFor",
        raw.lockout_for,
        DEFAULT_LOCKOUT_FOR,
        MAX_LOCKOUT_FOR,
    );
    Some(RateLimit {
        // Both are bounded by u32 constants.
        per_peer_per_minute: u32::try_from(per_peer_per_minute?).ok()?,
        lockout_after: u32::try_from(lockout_after?).ok()?,
        lockout_for: lockout_for?,
    })
}

/// A count in `min..=max`, or `default` when unset.
fn bounded_count(
    problems: &mut Problems,
    key: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Option<u64> {
    match value {
        None => Some(default),
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(n) => {
            problems.push(key, format!("{n} is out of range; use {min} to {max}"));
            None
        }
    }
}

/// RFC 3339 text of a time (UTC, `Z`).
fn format_time(at: SystemTime) -> Result<String, Error> {
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .map_err(|_| Error::Invalid {
            document: Document::TrustdConfig,
            path: None,
            problems: vec![crate::Problem::new(
                "tokens[].expires",
                "cannot be written as RFC 3339",
            )],
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_A: &str = "abcdef.0123456789abcdef";
    const TOKEN_B: &str = "ghijkl.0123456789abcdef";

    const FULL: &str = "\
listen: 127.0.0.1:50001
tls: {cert: /state/trustd/server.crt, key: /state/trustd/server.key}
ca: {cert: /state/trustd/ca.crt, key: /state/trustd/ca.key}
acceptedCas: /state/trustd/accepted.pem
tokens:
  - token: abcdef.0123456789abcdef
  - token: ghijkl.0123456789abcdef
    expires: 2030-01-01T00:00:00Z
journal: /state/trustd/issued.jsonl
policy: {ttl: 12h, maxSans: 8, maxCsrBytes: 4096}
rateLimit: {perPeerPerMinute: 10, lockoutAfter: 3, lockoutFor: 5m}
handshakeTimeout: 5s
";

    const MINIMAL: &str = "\
tls: {cert: /s/server.crt, key: /s/server.key}
ca: {cert: /s/ca.crt, key: /s/ca.key}
tokens: [{token: abcdef.0123456789abcdef}]
journal: /s/issued.jsonl
";

    fn problem_keys(err: &Error) -> Vec<&str> {
        err.problems().iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn full_config_parses() {
        let config = TrustdConfig::from_yaml(FULL).unwrap();
        assert_eq!(config.listen, "127.0.0.1:50001".parse().unwrap());
        assert_eq!(config.tls.cert, Path::new("/state/trustd/server.crt"));
        assert_eq!(config.tls.key, Path::new("/state/trustd/server.key"));
        assert_eq!(config.ca.cert, Path::new("/state/trustd/ca.crt"));
        assert_eq!(config.ca.key, Path::new("/state/trustd/ca.key"));
        assert_eq!(
            config.accepted_cas.as_deref(),
            Some(Path::new("/state/trustd/accepted.pem"))
        );
        assert_eq!(config.tokens.len(), 2);
        assert_eq!(config.tokens[0].token.as_str(), TOKEN_A);
        assert_eq!(config.tokens[0].expires, None);
        assert_eq!(config.tokens[1].token.as_str(), TOKEN_B);
        let expires = config.tokens[1].expires.unwrap();
        assert_eq!(
            expires
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_893_456_000
        );
        assert_eq!(config.journal, Path::new("/state/trustd/issued.jsonl"));
        assert_eq!(
            config.policy,
            TrustdPolicy {
                ttl: Duration::from_secs(12 * 3600),
                max_sans: 8,
                max_csr_bytes: 4096
            }
        );
        assert_eq!(
            config.rate_limit,
            RateLimit {
                per_peer_per_minute: 10,
                lockout_after: 3,
                lockout_for: Duration::from_secs(300)
            }
        );
        assert_eq!(config.handshake_timeout, Duration::from_secs(5));
    }

    #[test]
    fn defaults_apply_and_are_not_written_back() {
        let config = TrustdConfig::from_yaml(MINIMAL).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(DEFAULT_LISTEN.to_string(), "0.0.0.0:50001");
        assert_eq!(config.accepted_cas, None);
        assert_eq!(config.policy, TrustdPolicy::default());
        assert_eq!(config.policy.ttl, Duration::from_secs(86_400));
        assert_eq!(config.rate_limit, RateLimit::default());
        assert_eq!(config.rate_limit.lockout_after, 5);
        assert_eq!(config.rate_limit.lockout_for, Duration::from_secs(60));
        assert_eq!(config.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        let yaml = config.to_yaml().unwrap();
        for key in [
            "listen",
            "acceptedCas",
            "policy",
            "rateLimit",
            "handshakeTimeout",
            "expires",
        ] {
            assert!(!yaml.contains(key), "{yaml}");
        }
    }

    #[test]
    fn yaml_round_trips() {
        for text in [FULL, MINIMAL] {
            let config = TrustdConfig::from_yaml(text).unwrap();
            let again = TrustdConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
            assert_eq!(again, config);
        }
        // A partly default policy writes only what differs.
        let mut config = TrustdConfig::from_yaml(MINIMAL).unwrap();
        config.policy.max_sans = 4;
        let yaml = config.to_yaml().unwrap();
        assert!(
            yaml.contains("maxSans: 4") && !yaml.contains("ttl"),
            "{yaml}"
        );
        assert_eq!(TrustdConfig::from_yaml(&yaml).unwrap(), config);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "\
listen: localhost:50001
tls: {cert: server.crt}
ca: {cert: /s/ca.crt, key: ''}
acceptedCas: accepted.pem
tokens:
  - token: not-a-token
  - token: abcdef.0123456789abcdef
    expires: tomorrow
  - token: abcdef.0123456789abcdef
  - expires: 2030-01-01T00:00:00Z
policy: {ttl: 0s, maxSans: 0, maxCsrBytes: 1000000}
rateLimit: {perPeerPerMinute: 0, lockoutAfter: 1001, lockoutFor: 2h}
handshakeTimeout: 1d
";
        let err = TrustdConfig::from_yaml(text).unwrap_err();
        assert_eq!(
            problem_keys(&err),
            [
                "listen",
                "tls.cert",
                "tls.key",
                "ca.key",
                "acceptedCas",
                "tokens[0].token",
                "tokens[1].expires",
                "tokens[2].token",
                "tokens[3].token",
                "journal",
                "policy.ttl",
                "policy.maxSans",
                "policy.maxCsrBytes",
                "rateLimit.perPeerPerMinute",
                "rateLimit.lockoutAfter",
                "rateLimit.lockoutFor",
                "handshakeTimeout",
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("invalid trustd config:\n  - listen: "),
            "{text}"
        );
        assert!(
            text.contains("tokens[2].token: is listed more than once"),
            "{text}"
        );
        assert!(
            text.contains("policy.maxCsrBytes: 1000000 is out of range; use 256 to 65536"),
            "{text}"
        );
        // A malformed token is never echoed back.
        assert!(!text.contains("not-a-token"), "{text}");
    }

    #[test]
    fn missing_sections_are_problems_not_parse_errors() {
        let err = TrustdConfig::from_yaml("listen: 0.0.0.0:1\n").unwrap_err();
        assert_eq!(problem_keys(&err), ["tls", "ca", "tokens", "journal"]);
        let err = TrustdConfig::from_yaml(
            &MINIMAL.replace("tokens: [{token: abcdef.0123456789abcdef}]", "tokens: []"),
        )
        .unwrap_err();
        assert_eq!(problem_keys(&err), ["tokens"]);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        for text in [
            format!("{MINIMAL}token: abcdef.0123456789abcdef\n"),
            format!("{MINIMAL}policy: {{ttl: 1h, max_sans: 3}}\n"),
            format!("{MINIMAL}rateLimit: {{burst: 3}}\n"),
            MINIMAL.replace("{token: abcdef", "{secret: x, token: abcdef"),
            MINIMAL.replace("key: /s/ca.key", "key: /s/ca.key, ca: /s/x"),
        ] {
            assert!(
                matches!(TrustdConfig::from_yaml(&text), Err(Error::Parse { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn limits_are_bounded() {
        for (policy, ok) in [
            ("{ttl: 1s}", true),
            ("{ttl: 8760h}", true),
            ("{ttl: 8761h}", false),
            ("{ttl: 500ms}", false),
            ("{maxCsrBytes: 256}", true),
            ("{maxCsrBytes: 255}", false),
            ("{maxCsrBytes: 65536}", true),
            ("{maxSans: 256}", true),
            ("{maxSans: 257}", false),
        ] {
            let text = format!("{MINIMAL}policy: {policy}\n");
            assert_eq!(TrustdConfig::from_yaml(&text).is_ok(), ok, "{policy}");
        }
        for (limit, ok) in [
            ("{perPeerPerMinute: 1000000}", true),
            ("{perPeerPerMinute: 1000001}", false),
            ("{lockoutAfter: 1}", true),
            ("{lockoutAfter: 0}", false),
            ("{lockoutFor: 1h}", true),
            ("{lockoutFor: 0s}", false),
        ] {
            let text = format!("{MINIMAL}rateLimit: {limit}\n");
            assert_eq!(TrustdConfig::from_yaml(&text).is_ok(), ok, "{limit}");
        }
    }

    #[test]
    fn expiry_accepts_offsets() {
        let text = MINIMAL.replace(
            "tokens: [{token: abcdef.0123456789abcdef}]",
            "tokens: [{token: abcdef.0123456789abcdef, expires: '2030-01-01T02:00:00+02:00'}]",
        );
        let config = TrustdConfig::from_yaml(&text).unwrap();
        let at = config.tokens[0].expires.unwrap();
        assert_eq!(
            at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_893_456_000
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trustd.yaml");
        assert!(matches!(
            TrustdConfig::load(&path),
            Err(Error::NotFound {
                document: Document::TrustdConfig,
                ..
            })
        ));
        std::fs::write(&path, "listen: nope\n").unwrap();
        let err = TrustdConfig::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("invalid trustd config {}:", path.display())),
            "{err}"
        );
        std::fs::write(&path, FULL).unwrap();
        assert_eq!(
            TrustdConfig::load(&path).unwrap(),
            TrustdConfig::from_yaml(FULL).unwrap()
        );
    }

    #[test]
    fn debug_redacts_tokens_and_key_paths() {
        let config = TrustdConfig::from_yaml(FULL).unwrap();
        let raw = RawTrustdConfig::from_yaml(FULL).unwrap();
        for debug in [format!("{config:?}"), format!("{raw:?}")] {
            assert!(!debug.contains("0123456789abcdef"), "{debug}");
            assert!(!debug.contains("server.key"), "{debug}");
            assert!(!debug.contains("ca.key"), "{debug}");
            assert!(debug.contains("server.crt"), "{debug}");
        }
    }

    #[test]
    fn bad_input_never_panics() {
        for text in [
            "",
            "null",
            "[1, 2]",
            "tokens: 3",
            "tokens: [abc]",
            "policy: [1]",
            "policy: {maxSans: -1}",
            "\u{0}",
            &FULL[..FULL.len() / 2],
        ] {
            assert!(TrustdConfig::from_yaml(text).is_err(), "{text:?}");
        }
    }
}
