//! The machine config (DESIGN.md §5): YAML → [`RawMachineConfig`] (serde, unknown keys
//! rejected) → [`MachineConfig`] (validated; every problem reported at once).
//!
//! ```yaml
//! version: v1alpha1
//! machine:
//!   type: controlplane                      # or worker
//!   token: abcdef.0123456789abcdef          # trustd join token
//!   acceptedTokens:                         # optional: retired tokens still accepted
//!     - ghijkl.0123456789abcdef             #   until removed, or
//!     - {token: mnopqr.0123456789abcdef, expires: 2030-01-01T00:00:00Z}  # until then
//!   ca: {crt: <base64 PEM>, key: <base64 PEM>}  # key on controlplane only
//!   acceptedCAs: [{crt: <base64 PEM>}]      # optional: CA rotation
//!   certSANs: [10.0.0.1, node.example]      # optional
//!   hostname: node-1                        # optional
//!   apid: {listen: "0.0.0.0:50000", handshakeTimeout: 10s}   # optional (these are the defaults)
//!   trustd: {listen: "0.0.0.0:50001", handshakeTimeout: 10s} # optional
//!   metrics: {apid: "127.0.0.1:9100", trustd: "127.0.0.1:9101"}  # optional, off by default
//!   apidLimits: {requestsPerSecond: 100}    # optional: apid's per-client limits, see [`crate::limits`]
//!   services: [...]                         # optional: supervised processes, see [`crate::service`]
//! cluster:
//!   name: dev
//!   endpoints: [127.0.0.1]
//! ```
//!
//! Key names and the `ca`/`acceptedCAs` shapes follow Talos's v1alpha1 config so operators
//! meet familiar spellings (`certSANs`, `acceptedCAs`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::apid::{bounded_duration, format_duration};
use crate::error::Problems;
use crate::host::{Endpoint, Host, dns_name_problem};
use crate::limits::{ApidLimits, RawApidLimits};
use crate::pem::{self, Base64Pem};
use crate::secrets::SecretsBundle;
use crate::service::{RawService, ServiceConfig, validate_services};
use crate::token::TOKEN_FORMAT;
use crate::trustd::{AcceptedToken, RawAcceptedToken};
use crate::{Document, Error, Token, yaml};

/// apid's TCP port (Talos's).
pub const APID_PORT: u16 = 50000;
/// trustd's TCP port (Talos's).
pub const TRUSTD_PORT: u16 = 50001;
/// Where apid listens when `machine.apid.listen` is not set: every IPv4 address, port 50000.
pub const DEFAULT_APID_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, APID_PORT));
/// Where trustd listens when `machine.trustd.listen` is not set: every IPv4 address, port 50001.
pub const DEFAULT_TRUSTD_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, TRUSTD_PORT));
/// The only `version` this crate understands.
pub const MACHINE_CONFIG_VERSION: &str = "v1alpha1";
/// Longest allowed `cluster.name` (a DNS label, since it ends up in context names and SANs).
pub const MAX_CLUSTER_NAME_LEN: usize = 63;

/// The role of a machine in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MachineType {
    /// Holds the CA key: issues its own apid certificate and runs trustd.
    ControlPlane,
    /// Has the CA certificate only; gets its apid certificate from trustd.
    Worker,
}

impl MachineType {
    /// The YAML spelling: `controlplane` or `worker`.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::ControlPlane => "controlplane",
            MachineType::Worker => "worker",
        }
    }
}

impl fmt::Display for MachineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineType {
    /// A lower-case reason, ready to be a validation [`Problem`](crate::Problem)'s text.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "controlplane" => Ok(MachineType::ControlPlane),
            "worker" => Ok(MachineType::Worker),
            other => Err(format!(
                "{other:?} is not a machine type: use controlplane or worker"
            )),
        }
    }
}

/// A validated machine config. Built by [`MachineConfig::from_yaml`], [`MachineConfig::load`],
/// [`MachineConfig::generate`] or `TryFrom<RawMachineConfig>`; fields are private so every
/// value has passed validation (for example, a worker never holds the CA key).
///
/// `Debug` is safe to log: tokens and PEM blobs redact themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    machine_type: MachineType,
    token: Token,
    accepted_tokens: Vec<AcceptedToken>,
    ca_crt: Base64Pem,
    ca_key: Option<Base64Pem>,
    accepted_cas: Vec<Base64Pem>,
    cert_sans: Vec<Host>,
    hostname: Option<String>,
    apid_listen: SocketAddr,
    trustd_listen: SocketAddr,
    apid_handshake_timeout: Duration,
    trustd_handshake_timeout: Duration,
    apid_metrics: Option<SocketAddr>,
    trustd_metrics: Option<SocketAddr>,
    apid_limits: ApidLimits,
    services: Vec<ServiceConfig>,
    cluster_name: String,
    endpoints: Vec<Endpoint>,
}

impl MachineConfig {
    /// Parses and validates a machine config.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        RawMachineConfig::from_yaml(text)?.try_into()
    }

    /// Reads, parses and validates the machine config at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = yaml::read(Document::MachineConfig, path)?;
        Self::from_yaml(&text).map_err(|err| err.with_path(path))
    }

    /// Renders the config as YAML; [`MachineConfig::from_yaml`] reads it back unchanged.
    pub fn to_yaml(&self) -> Result<String, Error> {
        self.to_raw().to_yaml()
    }

    /// The config `gen config` writes for one machine type (see [`RawMachineConfig::generate`]),
    /// validated. Fails with [`Error::Invalid`] if the cluster name, endpoint or bundle is bad.
    pub fn generate(
        bundle: &SecretsBundle,
        cluster_name: &str,
        endpoint: &str,
        machine_type: MachineType,
    ) -> Result<Self, Error> {
        RawMachineConfig::generate(bundle, cluster_name, endpoint, machine_type).try_into()
    }

    /// The serde form of this config, e.g. to edit and re-validate it.
    pub fn to_raw(&self) -> RawMachineConfig {
        // Defaults are left out so a later change of default reaches existing files.
        let listener = |(addr, default): (SocketAddr, SocketAddr), (timeout, default_timeout)| {
            let raw = RawListener {
                listen: (addr != default).then(|| addr.to_string()),
                handshake_timeout: (timeout != default_timeout).then(|| format_duration(timeout)),
            };
            (raw != RawListener::default()).then_some(raw)
        };
        RawMachineConfig {
            version: Some(MACHINE_CONFIG_VERSION.to_owned()),
            machine: RawMachine {
                kind: Some(self.machine_type.as_str().to_owned()),
                token: Some(self.token.as_str().to_owned()),
                accepted_tokens: self
                    .accepted_tokens
                    .iter()
                    .map(RawMachineToken::from_accepted)
                    .collect(),
                ca: Some(RawCa {
                    crt: Some(self.ca_crt.clone()),
                    key: self.ca_key.clone(),
                }),
                accepted_cas: self
                    .accepted_cas
                    .iter()
                    .map(|crt| RawCertificate {
                        crt: Some(crt.clone()),
                    })
                    .collect(),
                cert_sans: self.cert_sans.iter().map(Host::to_string).collect(),
                hostname: self.hostname.clone(),
                apid: listener(
                    (self.apid_listen, DEFAULT_APID_LISTEN),
                    (
                        self.apid_handshake_timeout,
                        crate::apid::DEFAULT_HANDSHAKE_TIMEOUT,
                    ),
                ),
                trustd: listener(
                    (self.trustd_listen, DEFAULT_TRUSTD_LISTEN),
                    (
                        self.trustd_handshake_timeout,
                        crate::trustd::DEFAULT_HANDSHAKE_TIMEOUT,
                    ),
                ),
                metrics: (self.apid_metrics.is_some() || self.trustd_metrics.is_some()).then(
                    || RawMetrics {
                        apid: self.apid_metrics.map(|addr| addr.to_string()),
                        trustd: self.trustd_metrics.map(|addr| addr.to_string()),
                    },
                ),
                apid_limits: self.apid_limits.to_raw(),
                services: self.services.iter().map(ServiceConfig::to_raw).collect(),
            },
            cluster: RawCluster {
                name: Some(self.cluster_name.clone()),
                endpoints: self.endpoints.iter().map(Endpoint::to_string).collect(),
            },
        }
    }

    /// `machine.type`.
    pub fn machine_type(&self) -> MachineType {
        self.machine_type
    }

    /// `machine.token`: the current trustd join token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// `machine.acceptedTokens`: retired tokens trustd still accepts during rotation, each
    /// until its `expires` (if any).
    pub fn accepted_tokens(&self) -> &[AcceptedToken] {
        &self.accepted_tokens
    }

    /// `machine.ca.crt`: the issuing CA certificate (PEM).
    pub fn ca_crt(&self) -> &Base64Pem {
        &self.ca_crt
    }

    /// `machine.ca.key`: the issuing CA key; `Some` exactly on control-plane machines.
    pub fn ca_key(&self) -> Option<&Base64Pem> {
        self.ca_key.as_ref()
    }

    /// `machine.acceptedCAs`: extra CA certificates trusted during rotation (the issuing CA
    /// is trusted in addition, as in Talos).
    pub fn accepted_cas(&self) -> &[Base64Pem] {
        &self.accepted_cas
    }

    /// `machine.certSANs`: extra names and addresses for apid's server certificate.
    pub fn cert_sans(&self) -> &[Host] {
        &self.cert_sans
    }

    /// `machine.hostname`, if set.
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// `machine.apid.listen`, or [`DEFAULT_APID_LISTEN`].
    pub fn apid_listen(&self) -> SocketAddr {
        self.apid_listen
    }

    /// `machine.trustd.listen`, or [`DEFAULT_TRUSTD_LISTEN`].
    pub fn trustd_listen(&self) -> SocketAddr {
        self.trustd_listen
    }

    /// `machine.apid.handshakeTimeout`: how long a client gets to finish apid's TLS handshake.
    pub fn apid_handshake_timeout(&self) -> Duration {
        self.apid_handshake_timeout
    }

    /// `machine.trustd.handshakeTimeout`: the same for trustd.
    pub fn trustd_handshake_timeout(&self) -> Duration {
        self.trustd_handshake_timeout
    }

    /// `machine.metrics.apid`: where apid serves Prometheus metrics; `None` (default): nowhere.
    pub fn apid_metrics(&self) -> Option<SocketAddr> {
        self.apid_metrics
    }

    /// `machine.metrics.trustd`: where trustd serves Prometheus metrics; `None` (default):
    /// nowhere.
    pub fn trustd_metrics(&self) -> Option<SocketAddr> {
        self.trustd_metrics
    }

    /// `machine.apidLimits`: apid's per-client limits (defaults where not set).
    pub fn apid_limits(&self) -> ApidLimits {
        self.apid_limits
    }

    /// `machine.services`: the processes machined supervises besides apid and trustd, in
    /// config order; names are unique and dependencies form no cycle.
    pub fn services(&self) -> &[ServiceConfig] {
        &self.services
    }

    /// `cluster.name`.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// `cluster.endpoints`: the control-plane endpoints (never empty).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl TryFrom<RawMachineConfig> for MachineConfig {
    type Error = Error;

    /// Validates every field and reports all problems in one [`Error::Invalid`].
    fn try_from(raw: RawMachineConfig) -> Result<Self, Error> {
        let mut problems = Problems::default();
        let RawMachineConfig {
            version,
            machine,
            cluster,
        } = raw;

        match version.as_deref() {
            Some(MACHINE_CONFIG_VERSION) => {}
            None => problems.push("version", "is required (v1alpha1)"),
            Some(other) => problems.push(
                "version",
                format!("unsupported version {other:?}: must be v1alpha1"),
            ),
        }

        let machine_type = required(&mut problems, "machine.type", machine.kind).and_then(|text| {
            text.parse::<MachineType>()
                .map_err(|reason| problems.push("machine.type", reason))
                .ok()
        });

        let token = required(&mut problems, "machine.token", machine.token)
            .and_then(|text| parse_token(&mut problems, "machine.token", &text));
        let accepted_tokens: Vec<AcceptedToken> = machine
            .accepted_tokens
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| {
                parse_accepted_token(
                    &mut problems,
                    &format!("machine.acceptedTokens[{i}]"),
                    entry,
                )
            })
            .collect();

        let (ca_crt, ca_key) = match machine.ca {
            None => {
                problems.push("machine.ca", "is required");
                (None, None)
            }
            Some(RawCa { crt, key }) => {
                let crt = required(&mut problems, "machine.ca.crt", crt)
                    .and_then(|crt| check_certificate(&mut problems, "machine.ca.crt", crt));
                let key = check_ca_key(&mut problems, machine_type, key);
                (crt, key)
            }
        };
        let accepted_cas: Vec<Base64Pem> = machine
            .accepted_cas
            .into_iter()
            .enumerate()
            .filter_map(|(i, RawCertificate { crt })| {
                let key = format!("machine.acceptedCAs[{i}].crt");
                required(&mut problems, &key, crt)
                    .and_then(|crt| check_certificate(&mut problems, &key, crt))
            })
            .collect();

        let cert_sans: Vec<Host> = machine
            .cert_sans
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                Host::parse(text)
                    .map_err(|reason| problems.push(format!("machine.certSANs[{i}]"), reason))
                    .ok()
            })
            .collect();

        if let Some(hostname) = &machine.hostname
            && let Some(problem) = dns_name_problem(hostname)
        {
            problems.push(
                "machine.hostname",
                format!("{hostname:?} is not a valid host name ({problem})"),
            );
        }

        let (apid, trustd) = (
            machine.apid.unwrap_or_default(),
            machine.trustd.unwrap_or_default(),
        );
        let apid_listen = parse_listen(
            &mut problems,
            "machine.apid.listen",
            apid.listen,
            DEFAULT_APID_LISTEN,
        );
        let trustd_listen = parse_listen(
            &mut problems,
            "machine.trustd.listen",
            trustd.listen,
            DEFAULT_TRUSTD_LISTEN,
        );
        let apid_handshake_timeout = bounded_duration(
            &mut problems,
            "machine.apid.handshakeTimeout",
            apid.handshake_timeout,
            crate::apid::DEFAULT_HANDSHAKE_TIMEOUT,
            crate::apid::MAX_HANDSHAKE_TIMEOUT,
        );
        let trustd_handshake_timeout = bounded_duration(
            &mut problems,
            "machine.trustd.handshakeTimeout",
            trustd.handshake_timeout,
            crate::trustd::DEFAULT_HANDSHAKE_TIMEOUT,
            crate::trustd::MAX_HANDSHAKE_TIMEOUT,
        );
        if let (Some(apid), Some(trustd)) = (apid_listen, trustd_listen)
            && overlaps(apid, trustd)
        {
            problems.push(
                "machine.trustd.listen",
                format!("{trustd} clashes with machine.apid.listen {apid}"),
            );
        }

        let metrics = machine.metrics.unwrap_or_default();
        let apid_metrics =
            crate::apid::metrics_address(&mut problems, "machine.metrics.apid", metrics.apid);
        let trustd_metrics =
            crate::apid::metrics_address(&mut problems, "machine.metrics.trustd", metrics.trustd);
        // Every address a daemon binds, in the order a clash is reported against: two that
        // overlap would leave one daemon unable to start.
        let bound = [
            ("machine.apid.listen", apid_listen),
            ("machine.trustd.listen", trustd_listen),
            ("machine.metrics.apid", apid_metrics),
            ("machine.metrics.trustd", trustd_metrics),
        ];
        for (i, (key, addr)) in bound.iter().enumerate().skip(2) {
            let Some(addr) = addr else { continue };
            if let Some((other, taken)) = bound[..i].iter().find_map(|(other, taken)| {
                taken.filter(|t| overlaps(*addr, *t)).map(|t| (other, t))
            }) {
                problems.push(*key, format!("{addr} clashes with {other} {taken}"));
            }
        }
        let apid_limits =
            ApidLimits::validate(&mut problems, "machine.apidLimits", machine.apid_limits);
        let services = validate_services(&mut problems, machine.services);

        let cluster_name = required(&mut problems, "cluster.name", cluster.name)
            .and_then(|name| check_cluster_name(&mut problems, name));
        if cluster.endpoints.is_empty() {
            problems.push("cluster.endpoints", "at least one endpoint is required");
        }
        let endpoints: Vec<Endpoint> = cluster
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                text.parse::<Endpoint>()
                    .map_err(|reason| problems.push(format!("cluster.endpoints[{i}]"), reason))
                    .ok()
            })
            .collect();

        // Every `None` below was recorded as a problem, so the fallback arm never returns an
        // empty problem list.
        match (
            machine_type,
            token,
            ca_crt,
            apid_listen,
            trustd_listen,
            apid_handshake_timeout,
            trustd_handshake_timeout,
            cluster_name,
        ) {
            (
                Some(machine_type),
                Some(token),
                Some(ca_crt),
                Some(apid_listen),
                Some(trustd_listen),
                Some(apid_handshake_timeout),
                Some(trustd_handshake_timeout),
                Some(cluster_name),
            ) if problems.is_empty() => Ok(MachineConfig {
                machine_type,
                token,
                accepted_tokens,
                ca_crt,
                ca_key,
                accepted_cas,
                cert_sans,
                hostname: machine.hostname,
                apid_listen,
                trustd_listen,
                apid_handshake_timeout,
                trustd_handshake_timeout,
                apid_metrics,
                trustd_metrics,
                apid_limits,
                services,
                cluster_name,
                endpoints,
            }),
            _ => Err(problems.into_error(Document::MachineConfig)),
        }
    }
}

// === Raw (serde) types ===

/// The machine config as written in YAML, before validation.
///
/// Every key is optional at this level so that a missing key becomes a validation problem
/// listed with all the others rather than a parse error that hides them. Unknown keys are
/// parse errors (`deny_unknown_fields`): a typo must not silently drop a setting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a machine config mapping")]
pub struct RawMachineConfig {
    /// `version`: must be `v1alpha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `machine`: this node.
    #[serde(default)]
    pub machine: RawMachine,
    /// `cluster`: the cluster it belongs to.
    #[serde(default)]
    pub cluster: RawCluster,
}

impl RawMachineConfig {
    /// Parses YAML without validating; an empty document is [`Error::Empty`].
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        yaml::parse_required(Document::MachineConfig, text)
    }

    /// Renders as YAML, leaving out unset keys.
    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::render(Document::MachineConfig, self)
    }

    /// The config `gen config` writes for one machine of `machine_type`:
    /// `machine.token` = `trustdinfo.token`, `machine.ca` = `certs.os` (the key only on a
    /// control plane: workers get the CA certificate without its key), one endpoint.
    ///
    /// Not validated, so the caller can add `certSANs`, `hostname`, … before
    /// `MachineConfig::try_from`.
    pub fn generate(
        bundle: &SecretsBundle,
        cluster_name: &str,
        endpoint: &str,
        machine_type: MachineType,
    ) -> Self {
        let os = &bundle.certs.os;
        let key = match machine_type {
            MachineType::ControlPlane => Some(os.key.clone()),
            MachineType::Worker => None,
        };
        Self {
            version: Some(MACHINE_CONFIG_VERSION.to_owned()),
            machine: RawMachine {
                kind: Some(machine_type.as_str().to_owned()),
                token: Some(bundle.trustdinfo.token.clone()),
                ca: Some(RawCa {
                    crt: Some(os.crt.clone()),
                    key,
                }),
                ..RawMachine::default()
            },
            cluster: RawCluster {
                name: Some(cluster_name.to_owned()),
                endpoints: vec![endpoint.to_owned()],
            },
        }
    }
}

/// `machine:` as written in YAML.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a machine section mapping"
)]
pub struct RawMachine {
    /// `type`: `controlplane` or `worker`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `token`: the trustd join token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `acceptedTokens`: retired join tokens still accepted, optionally until an expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_tokens: Vec<RawMachineToken>,
    /// `ca`: the issuing CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<RawCa>,
    /// `acceptedCAs`: extra trusted CA certificates (Talos's spelling).
    #[serde(rename = "acceptedCAs", default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_cas: Vec<RawCertificate>,
    /// `certSANs`: extra SANs for apid's certificate (Talos's spelling).
    #[serde(rename = "certSANs", default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<String>,
    /// `hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `apid`: apid settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apid: Option<RawListener>,
    /// `trustd`: trustd settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trustd: Option<RawListener>,
    /// `metrics`: Prometheus endpoints of apid and trustd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RawMetrics>,
    /// `apidLimits`: apid's per-client limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apid_limits: Option<RawApidLimits>,
    /// `services`: supervised processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<RawService>,
}

impl fmt::Debug for RawMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<none>" };
        f.debug_struct("RawMachine")
            .field("kind", &self.kind)
            .field("token", &redacted(self.token.is_some()))
            .field("accepted_tokens", &self.accepted_tokens.len())
            .field("ca", &self.ca)
            .field("accepted_cas", &self.accepted_cas)
            .field("cert_sans", &self.cert_sans)
            .field("hostname", &self.hostname)
            .field("apid", &self.apid)
            .field("trustd", &self.trustd)
            .field("metrics", &self.metrics)
            .field("apid_limits", &self.apid_limits)
            .field("services", &self.services)
            .finish()
    }
}

/// `machine.ca:` — a CA certificate and, on control planes, its key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with crt and key")]
pub struct RawCa {
    /// `crt`: base64 of the PEM certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<Base64Pem>,
    /// `key`: base64 of the PEM private key; absent, `null` or `""` (Talos's worker form) all
    /// mean "no key".
    #[serde(
        default,
        deserialize_with = "pem::optional::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub key: Option<Base64Pem>,
}

/// One `machine.acceptedCAs` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with crt")]
pub struct RawCertificate {
    /// `crt`: base64 of the PEM certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<Base64Pem>,
}

/// `machine.apid:` / `machine.trustd:` — a server's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with listen and/or handshakeTimeout"
)]
pub struct RawListener {
    /// `listen`: `address:port` to bind, e.g. `0.0.0.0:50000` or `[::]:50000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `handshakeTimeout`: how long a client gets to finish the TLS handshake (Go duration,
    /// default 10s, at most 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<String>,
}

/// `machine.metrics:` — where apid and trustd serve Prometheus metrics (plain HTTP,
/// `GET /metrics`, unauthenticated: use a loopback or management address). Each is optional;
/// an unset one is off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with apid and/or trustd")]
pub struct RawMetrics {
    /// `apid`: `address:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apid: Option<String>,
    /// `trustd`: `address:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trustd: Option<String>,
}

/// `cluster:` as written in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a cluster section mapping")]
pub struct RawCluster {
    /// `name`: `[a-z0-9-]`, at most 63 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `endpoints`: control-plane endpoints, `host` or `host:port`.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

// === validation helpers ===

fn required<T>(problems: &mut Problems, key: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        problems.push(key, "is required");
    }
    value
}

fn parse_token(problems: &mut Problems, key: &str, text: &str) -> Option<Token> {
    Token::parse(text)
        .map_err(|_| problems.push(key, format!("must look like {TOKEN_FORMAT}")))
        .ok()
}

/// One `machine.acceptedTokens` entry: a plain token, or `{token, expires}`.
fn parse_accepted_token(
    problems: &mut Problems,
    key: &str,
    entry: &RawMachineToken,
) -> Option<AcceptedToken> {
    let (token, expires) = match entry {
        RawMachineToken::Plain(text) => (parse_token(problems, key, text), None),
        RawMachineToken::Expiring(raw) => {
            let token = match &raw.token {
                Some(text) => parse_token(problems, &format!("{key}.token"), text),
                None => {
                    problems.push(format!("{key}.token"), "is required");
                    None
                }
            };
            (token, raw.expires.as_ref())
        }
    };
    let expires = match expires {
        None => Some(None),
        Some(text) => match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(at) => Some(Some(SystemTime::from(at))),
            Err(_) => {
                problems.push(
                    format!("{key}.expires"),
                    format!("{text:?} is not an RFC 3339 time such as 2030-01-01T00:00:00Z"),
                );
                None
            }
        },
    };
    Some(AcceptedToken {
        token: token?,
        expires: expires?,
    })
}

/// One entry of `machine.acceptedTokens` as written in YAML: a bare token (accepted until
/// removed) or a mapping with `token` and an optional RFC 3339 `expires`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a token, or a mapping with token and optional expires"
)]
pub enum RawMachineToken {
    /// `- abcdef.0123456789abcdef`
    Plain(String),
    /// `- {token: abcdef.0123456789abcdef, expires: 2030-01-01T00:00:00Z}`
    Expiring(RawAcceptedToken),
}

impl RawMachineToken {
    /// The YAML form of a validated entry.
    pub fn from_accepted(accepted: &AcceptedToken) -> Self {
        let token = accepted.token.as_str().to_owned();
        match accepted.expires {
            None => RawMachineToken::Plain(token),
            Some(at) => RawMachineToken::Expiring(RawAcceptedToken {
                token: Some(token),
                // A parsed expiry always formats; if it ever did not, write the epoch so the
                // token reads as expired rather than as valid forever.
                expires: Some(
                    OffsetDateTime::from(at)
                        .format(&Rfc3339)
                        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned()),
                ),
            }),
        }
    }
}

impl fmt::Debug for RawMachineToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawMachineToken::Plain(_) => f.write_str("Plain(<redacted>)"),
            RawMachineToken::Expiring(raw) => f.debug_tuple("Expiring").field(raw).finish(),
        }
    }
}

/// A CA certificate must look like one, and must not smuggle a private key along: `crt`
/// values are handed to workers and clients.
fn check_certificate(problems: &mut Problems, key: &str, crt: Base64Pem) -> Option<Base64Pem> {
    if !crt.looks_like_certificate() {
        problems.push(
            key,
            "must be base64 of a PEM certificate (-----BEGIN CERTIFICATE-----)",
        );
        None
    } else if crt.looks_like_private_key() {
        problems.push(
            key,
            "contains a private key; only the certificate belongs here",
        );
        None
    } else {
        Some(crt)
    }
}

/// Control planes sign certificates and need the CA key; workers must not hold it (a stolen
/// worker must not be able to mint admin certificates).
fn check_ca_key(
    problems: &mut Problems,
    machine_type: Option<MachineType>,
    key: Option<Base64Pem>,
) -> Option<Base64Pem> {
    const KEY: &str = "machine.ca.key";
    match (machine_type, key) {
        (Some(MachineType::ControlPlane), None) => {
            problems.push(KEY, "is required on a controlplane machine");
            None
        }
        (Some(MachineType::ControlPlane), Some(key)) if !key.looks_like_private_key() => {
            problems.push(
                KEY,
                "must be base64 of a PEM private key (-----BEGIN ... PRIVATE KEY-----)",
            );
            None
        }
        (Some(MachineType::Worker), Some(_)) => {
            problems.push(
                KEY,
                "must not be set on a worker: workers get the CA certificate only",
            );
            None
        }
        (_, key) => key,
    }
}

fn parse_listen(
    problems: &mut Problems,
    key: &str,
    listen: Option<String>,
    default: SocketAddr,
) -> Option<SocketAddr> {
    match listen {
        None => Some(default),
        Some(text) => text
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(
                    key,
                    format!("{text:?} is not an address:port such as 0.0.0.0:{APID_PORT} or [::]:{APID_PORT}"),
                )
            })
            .ok(),
    }
}

/// True if binding both addresses would fail with "address in use". Port 0 (pick any) never
/// clashes.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_cluster_name(problems: &mut Problems, name: String) -> Option<String> {
    const KEY: &str = "cluster.name";
    if name.is_empty() {
        problems.push(KEY, "must not be empty");
        None
    } else if name.len() > MAX_CLUSTER_NAME_LEN {
        problems.push(
            KEY,
            format!("must be at most {MAX_CLUSTER_NAME_LEN} characters"),
        );
        None
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        problems.push(
            KEY,
            format!("{name:?} may contain only lowercase letters, digits and '-'"),
        );
        None
    } else {
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::secrets::{BundleCerts, CertAndKey};
    use crate::test_support::{CA_CERT, CA_KEY, OTHER_CERT};

    const TOKEN: &str = "abcdef.0123456789abcdef";

    fn b64(pem: &str) -> String {
        Base64Pem::from_pem(pem).to_base64()
    }

    fn bundle() -> SecretsBundle {
        SecretsBundle::new(BundleCerts::os_only(CertAndKey::from_pem(CA_CERT, CA_KEY))).unwrap()
    }

    fn controlplane_yaml() -> String {
        format!(
            "version: v1alpha1\n\
             machine:\n  \
               type: controlplane\n  \
               token: {TOKEN}\n  \
               acceptedTokens: [zyxwvu.fedcba9876543210]\n  \
               ca:\n    crt: {crt}\n    key: {key}\n  \
               acceptedCAs:\n    - crt: {other}\n  \
               certSANs: [10.0.0.1, node.example, 'fd00::1']\n  \
               hostname: node-1\n  \
               apid: {{listen: '127.0.0.1:50000'}}\n  \
               trustd: {{listen: '[::]:50001'}}\n\
             cluster:\n  \
               name: dev\n  \
               endpoints: [127.0.0.1, 'cp.example:50000']\n",
            crt = b64(CA_CERT),
            key = b64(CA_KEY),
            other = b64(OTHER_CERT),
        )
    }

    fn worker_yaml() -> String {
        format!(
            "version: v1alpha1\nmachine:\n  type: worker\n  token: {TOKEN}\n  ca:\n    crt: {crt}\n\
             cluster:\n  name: dev\n  endpoints: [10.0.0.1]\n",
            crt = b64(CA_CERT)
        )
    }

    fn problem_keys(err: &Error) -> Vec<&str> {
        err.problems().iter().map(|p| p.key.as_str()).collect()
    }

    fn parse_error_text(err: &Error) -> String {
        assert!(matches!(err, Error::Parse { .. }), "{err:?}");
        std::error::Error::source(err).unwrap().to_string()
    }

    /// A metrics endpoint on an address another daemon binds left one of them unable to start.
    #[test]
    fn metrics_addresses_may_not_clash_with_each_other_or_the_listeners() {
        let text = worker_yaml().replace(
            "  ca:\n",
            "  metrics: {apid: '0.0.0.0:50000', trustd: '127.0.0.1:9100'}\n  ca:\n",
        );
        let text = text.replace(
            "metrics: {",
            "apid: {listen: '0.0.0.0:50000'}\n  metrics: {",
        );
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(problem_keys(&err), ["machine.metrics.apid"]);
        assert!(
            err.to_string()
                .contains("0.0.0.0:50000 clashes with machine.apid.listen 0.0.0.0:50000"),
            "{err}"
        );
        let text = worker_yaml().replace(
            "  ca:\n",
            "  metrics: {apid: '127.0.0.1:9100', trustd: '0.0.0.0:9100'}\n  ca:\n",
        );
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(problem_keys(&err), ["machine.metrics.trustd"]);
        let text = worker_yaml().replace(
            "  ca:\n",
            "  metrics: {apid: '127.0.0.1:9100', trustd: '127.0.0.1:9101'}\n  ca:\n",
        );
        MachineConfig::from_yaml(&text).expect("apart");
    }

    #[test]
    fn accepted_tokens_may_carry_an_expiry_that_round_trips() {
        let text = worker_yaml().replace(
            "  ca:\n",
            "  acceptedTokens:\n    - zyxwvu.fedcba9876543210\n    \
             - {token: ghijkl.0123456789abcdef, expires: 2030-01-01T00:00:00Z}\n  ca:\n",
        );
        let config = MachineConfig::from_yaml(&text).unwrap();
        let tokens = config.accepted_tokens();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].expires, None);
        assert_eq!(tokens[1].token.as_str(), "ghijkl.0123456789abcdef");
        let at = OffsetDateTime::parse("2030-01-01T00:00:00Z", &Rfc3339).unwrap();
        assert_eq!(tokens[1].expires, Some(SystemTime::from(at)));
        let again = MachineConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again, config);
        // Redacted in Debug.
        let debug = format!("{:?}", config.to_raw().machine.accepted_tokens);
        assert!(!debug.contains("ghijkl"), "{debug}");
    }

    #[test]
    fn bad_accepted_token_entries_name_their_key() {
        let text = worker_yaml().replace(
            "  ca:\n",
            "  acceptedTokens:\n    - {token: ghijkl.0123456789abcdef, expires: tomorrow}\n    \
             - {token: nope}\n    - {expires: 2030-01-01T00:00:00Z}\n  ca:\n",
        );
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(
            problem_keys(&err),
            [
                "machine.acceptedTokens[0].expires",
                "machine.acceptedTokens[1].token",
                "machine.acceptedTokens[2].token",
            ]
        );
        assert!(!err.to_string().contains("nope"), "{err}");
        // An unknown key in an entry is a parse error.
        let text = worker_yaml().replace(
            "  ca:\n",
            "  acceptedTokens:\n    - {token: ghijkl.0123456789abcdef, until: x}\n  ca:\n",
        );
        assert!(MachineConfig::from_yaml(&text).is_err());
    }

    #[test]
    fn full_controlplane_config_parses() {
        let config = MachineConfig::from_yaml(&controlplane_yaml()).unwrap();
        assert_eq!(config.machine_type(), MachineType::ControlPlane);
        assert_eq!(config.token().as_str(), TOKEN);
        assert_eq!(config.accepted_tokens().len(), 1);
        assert_eq!(config.ca_crt().as_bytes(), CA_CERT.as_bytes());
        assert_eq!(config.ca_key().unwrap().as_bytes(), CA_KEY.as_bytes());
        assert_eq!(config.accepted_cas().len(), 1);
        assert_eq!(
            config.cert_sans(),
            [
                Host::Ip([10, 0, 0, 1].into()),
                Host::Dns("node.example".into()),
                Host::Ip("fd00::1".parse::<IpAddr>().unwrap()),
            ]
        );
        assert_eq!(config.hostname(), Some("node-1"));
        assert_eq!(config.apid_listen(), "127.0.0.1:50000".parse().unwrap());
        assert_eq!(config.trustd_listen(), "[::]:50001".parse().unwrap());
        assert_eq!(config.cluster_name(), "dev");
        assert_eq!(config.endpoints().len(), 2);
        assert_eq!(config.endpoints()[1].port(), Some(50000));
    }

    #[test]
    fn yaml_round_trips() {
        for text in [controlplane_yaml(), worker_yaml()] {
            let config = MachineConfig::from_yaml(&text).unwrap();
            let again = MachineConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
            assert_eq!(again, config);
        }
    }

    #[test]
    fn numeric_looking_token_stays_a_string() {
        let token = "123456.0123456789012345";
        let text = worker_yaml().replace(TOKEN, token);
        let config = MachineConfig::from_yaml(&text).unwrap();
        assert_eq!(config.token().as_str(), token);
        let again = MachineConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again.token().as_str(), token);
    }

    #[test]
    fn defaults_apply_and_are_not_written_back() {
        let config = MachineConfig::from_yaml(&worker_yaml()).unwrap();
        assert_eq!(config.apid_listen(), DEFAULT_APID_LISTEN);
        assert_eq!(config.trustd_listen(), DEFAULT_TRUSTD_LISTEN);
        assert_eq!(DEFAULT_APID_LISTEN.to_string(), "0.0.0.0:50000");
        assert_eq!(DEFAULT_TRUSTD_LISTEN.to_string(), "0.0.0.0:50001");
        assert!(config.ca_key().is_none());
        let yaml = config.to_yaml().unwrap();
        assert!(!yaml.contains("apid"), "{yaml}");
        assert!(!yaml.contains("key"), "{yaml}");
    }

    #[test]
    fn talos_style_empty_worker_key_means_no_key() {
        let text = worker_yaml().replace("  ca:\n", "  ca:\n    key: \"\"\n");
        let config = MachineConfig::from_yaml(&text).unwrap();
        assert!(config.ca_key().is_none());
    }

    #[test]
    fn generate_gives_controlplane_the_key_and_worker_only_the_cert() {
        let bundle = bundle();
        let cp =
            MachineConfig::generate(&bundle, "dev", "10.0.0.1", MachineType::ControlPlane).unwrap();
        assert_eq!(cp.token().as_str(), bundle.trustdinfo.token);
        assert_eq!(cp.ca_crt(), &bundle.certs.os.crt);
        assert_eq!(cp.ca_key(), Some(&bundle.certs.os.key));
        assert_eq!(cp.endpoints()[0].to_string(), "10.0.0.1");

        let worker =
            MachineConfig::generate(&bundle, "dev", "10.0.0.1", MachineType::Worker).unwrap();
        assert_eq!(worker.ca_crt(), &bundle.certs.os.crt);
        assert!(worker.ca_key().is_none());
        let yaml = worker.to_yaml().unwrap();
        assert!(!yaml.contains(&bundle.certs.os.key.to_base64()), "{yaml}");
        assert_eq!(MachineConfig::from_yaml(&yaml).unwrap(), worker);

        let err =
            MachineConfig::generate(&bundle, "Dev!", "http://x", MachineType::Worker).unwrap_err();
        assert_eq!(problem_keys(&err), ["cluster.name", "cluster.endpoints[0]"]);
    }

    #[test]
    fn several_problems_are_reported_together() {
        // A bad token, a worker carrying the CA key, and no endpoints: three problems at once.
        let text = format!(
            "version: v1alpha1\nmachine:\n  type: worker\n  token: not-a-token\n  \
             ca:\n    crt: {crt}\n    key: {key}\ncluster:\n  name: dev\n  endpoints: []\n",
            crt = b64(CA_CERT),
            key = b64(CA_KEY)
        );
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(
            problem_keys(&err),
            ["machine.token", "machine.ca.key", "cluster.endpoints"]
        );
        assert_eq!(
            err.to_string(),
            "invalid machine config:\n  \
             - machine.token: must look like [0-9a-z]{6}.[0-9a-z]{16}\n  \
             - machine.ca.key: must not be set on a worker: workers get the CA certificate only\n  \
             - cluster.endpoints: at least one endpoint is required"
        );
        // The token itself never appears in the error.
        assert!(!err.to_string().contains("not-a-token"));
    }

    #[test]
    fn every_field_is_checked() {
        let text = format!(
            "version: v2\nmachine:\n  type: server\n  token: x\n  acceptedTokens: [ok, {TOKEN}, '']\n  \
             ca:\n    crt: {key}\n  acceptedCAs:\n    - crt: {both}\n    - {{}}\n  \
             certSANs: [10.0.0.1, bad_name, '']\n  hostname: -node\n  \
             apid: {{listen: ':50000'}}\n  trustd: {{listen: 'localhost:50001'}}\n\
             cluster:\n  name: My_Cluster\n  endpoints: ['cp:99999', 10.0.0.1, 'https://cp']\n",
            key = b64(CA_KEY),
            both = b64(&format!("{CA_CERT}{CA_KEY}")),
        );
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(
            problem_keys(&err),
            [
                "version",
                "machine.type",
                "machine.token",
                "machine.acceptedTokens[0]",
                "machine.acceptedTokens[2]",
                "machine.ca.crt",
                "machine.acceptedCAs[0].crt",
                "machine.acceptedCAs[1].crt",
                "machine.certSANs[1]",
                "machine.certSANs[2]",
                "machine.hostname",
                "machine.apid.listen",
                "machine.trustd.listen",
                "cluster.name",
                "cluster.endpoints[0]",
                "cluster.endpoints[2]",
            ],
            "{err}"
        );
    }

    #[test]
    fn missing_keys_are_problems_not_parse_errors() {
        let err = MachineConfig::from_yaml("machine: {}\ncluster: {}\n").unwrap_err();
        assert_eq!(
            problem_keys(&err),
            [
                "version",
                "machine.type",
                "machine.token",
                "machine.ca",
                "cluster.name",
                "cluster.endpoints"
            ]
        );
    }

    #[test]
    fn controlplane_needs_a_usable_key() {
        let text = controlplane_yaml().replace(&b64(CA_KEY), &b64(CA_CERT));
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(problem_keys(&err), ["machine.ca.key"]);

        let cp = controlplane_yaml();
        let start = cp.find("    key: ").unwrap();
        let end = start + cp[start..].find('\n').unwrap() + 1;
        let without_key = format!("{}{}", &cp[..start], &cp[end..]);
        let err = MachineConfig::from_yaml(&without_key).unwrap_err();
        assert_eq!(
            err.problems()[0].reason,
            "is required on a controlplane machine"
        );
    }

    #[test]
    fn clashing_listen_addresses_are_rejected() {
        let text = worker_yaml().replace(
            "  ca:",
            "  apid: {listen: '0.0.0.0:7000'}\n  trustd: {listen: '127.0.0.1:7000'}\n  ca:",
        );
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(problem_keys(&err), ["machine.trustd.listen"]);
        // Port 0 means "any free port" and never clashes (tests bind both that way).
        let text = worker_yaml().replace(
            "  ca:",
            "  apid: {listen: '127.0.0.1:0'}\n  trustd: {listen: '127.0.0.1:0'}\n  ca:",
        );
        MachineConfig::from_yaml(&text).unwrap();
    }

    #[test]
    fn type_errors_name_the_key_and_position() {
        let text = worker_yaml().replace(&format!("crt: {}", b64(CA_CERT)), "crt: {a: 1}");
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        let message = parse_error_text(&err);
        assert!(
            message.starts_with("machine.ca.crt: invalid type: map, expected a base64 string"),
            "{message}"
        );
        assert!(message.contains("line 6 column"), "{message}");
        assert_eq!(err.to_string(), "cannot parse machine config");
    }

    #[test]
    fn bad_base64_names_the_key() {
        let text = worker_yaml().replace(&format!("crt: {}", b64(CA_CERT)), "crt: '!!!'");
        let message = parse_error_text(&MachineConfig::from_yaml(&text).unwrap_err());
        assert!(
            message.starts_with("machine.ca.crt: invalid base64"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let text = worker_yaml().replace("  type: worker\n", "  type: worker\n  certSans: []\n");
        let message = parse_error_text(&MachineConfig::from_yaml(&text).unwrap_err());
        assert!(
            message.starts_with("machine: unknown field `certSans`, expected one of"),
            "{message}"
        );
        let text = format!("{}extra: true\n", worker_yaml());
        let message = parse_error_text(&MachineConfig::from_yaml(&text).unwrap_err());
        assert!(message.starts_with("unknown field `extra`"), "{message}");
    }

    #[test]
    fn handshake_timeouts_are_validated_and_round_trip() {
        let text = worker_yaml().replace(
            "  type: worker\n",
            "  type: worker\n  apid: {handshakeTimeout: 7s}\n  trustd: {handshakeTimeout: 2m}\n",
        );
        let config = MachineConfig::from_yaml(&text).expect("valid");
        assert_eq!(config.apid_handshake_timeout(), Duration::from_secs(7));
        assert_eq!(config.trustd_handshake_timeout(), Duration::from_secs(120));
        assert_eq!(config.apid_listen(), DEFAULT_APID_LISTEN);
        let again = MachineConfig::try_from(config.to_raw()).expect("round trip");
        assert_eq!(again.apid_handshake_timeout(), Duration::from_secs(7));

        let text = worker_yaml().replace(
            "  type: worker\n",
            "  type: worker\n  apid: {handshakeTimeout: 0s}\n  trustd: {handshakeTimeout: 1h}\n",
        );
        let err = MachineConfig::from_yaml(&text).expect_err("bad timeouts");
        assert_eq!(
            problem_keys(&err),
            [
                "machine.apid.handshakeTimeout",
                "machine.trustd.handshakeTimeout"
            ],
            "{err}"
        );
    }

    #[test]
    fn bad_input_never_panics() {
        let full = controlplane_yaml();
        for text in [
            "",
            "\n# nothing\n",
            "null",
            "[1, 2]",
            "version: [",
            "machine: 3",
            "machine:\n  type: [worker]\n",
            "machine:\n  acceptedTokens: token\n",
            "cluster:\n  endpoints: {a: b}\n",
            "version: v1alpha1\n---\nversion: v1alpha1\n",
            "\u{0}\u{1}",
            &format!("machine: {}", "[".repeat(10_000)),
            "a: &a [*a, *a]\nb: *a\n",
            &full[..full.len() / 3],
            &full[..full.len() - 20],
        ] {
            assert!(MachineConfig::from_yaml(text).is_err(), "{text:?}");
        }
        assert!(matches!(
            MachineConfig::from_yaml(""),
            Err(Error::Empty {
                document: Document::MachineConfig,
                ..
            })
        ));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.yaml");
        assert!(matches!(
            MachineConfig::load(&path),
            Err(Error::NotFound {
                document: Document::MachineConfig,
                ..
            })
        ));
        std::fs::write(&path, worker_yaml().replace(TOKEN, "bad")).unwrap();
        let err = MachineConfig::load(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("invalid machine config {}:\n", path.display())),
            "{err}"
        );
        std::fs::write(&path, worker_yaml()).unwrap();
        assert_eq!(MachineConfig::load(&path).unwrap().cluster_name(), "dev");
    }

    #[test]
    fn debug_redacts_secrets() {
        let config = MachineConfig::from_yaml(&controlplane_yaml()).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(!shown.contains("MC4C"), "{shown}");
        let raw = RawMachineConfig::from_yaml(&controlplane_yaml()).unwrap();
        let shown = format!("{raw:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(!shown.contains("zyxwvu"), "{shown}");
    }

    #[test]
    fn services_are_validated_with_the_rest_and_round_trip() {
        let text = worker_yaml().replace(
            "  type: worker\n",
            "  type: worker\n  services:\n    - {name: web, command: /bin/web, dependsOn: [db]}\n    \
             - {name: db, command: /bin/db, restart: never}\n",
        );
        let config = MachineConfig::from_yaml(&text).unwrap();
        let names: Vec<&str> = config.services().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["web", "db"]);
        let again = MachineConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again, config);

        let text = text
            .replace("token: abcdef", "token: bad")
            .replace("[db]", "[nope]");
        let err = MachineConfig::from_yaml(&text).unwrap_err();
        assert_eq!(
            problem_keys(&err),
            ["machine.token", "machine.services[0].dependsOn[0]"]
        );
    }

    #[test]
    fn machine_type_spellings() {
        for kind in [MachineType::ControlPlane, MachineType::Worker] {
            assert_eq!(kind.to_string().parse::<MachineType>(), Ok(kind));
        }
        assert!("init".parse::<MachineType>().is_err());
    }
}
