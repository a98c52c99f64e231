//! apid's node credentials and config file, produced by machined on control-plane nodes.
//!
//! Talos's machined issues apid's server certificate locally from `machine.ca` on control-plane
//! nodes (talos-facts.md §4.3); workers get theirs from trustd ([`crate::bootstrap`] writes it
//! here with [`write_credentials`]). Everything lands in `<state>/apid/`:
//!
//! | file | content | mode |
//! | --- | --- | --- |
//! | `server.crt` | apid's server certificate (PEM) | 0644 |
//! | `server.key` | its private key (PEM) | 0600 |
//! | `ca.pem` | the accepted client CAs: `machine.ca.crt` then every `machine.acceptedCAs` entry | 0644 |
//! | `client.crt` | control planes: apid's `os:impersonator` client certificate, for forwarding | 0644 |
//! | `client.key` | its private key | 0600 |
//! | `apid.yaml` | [`basalt_config::ApidConfig`] pointing at the files above and machined's socket | 0600 |
//! | `audit.log` | written by apid: one JSON line per call | (apid's) |
//!
//! Every file is written atomically, so apid (which watches them) sees the old or the new
//! version, never a torn one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use basalt_authz::{Role, RoleSet};
use basalt_config::fs::{Overwrite, ensure_private_dir, write_atomic};
use basalt_config::{
    ApidConfig, ApidTls, AuditSink, ForwardingCredentials, MachineConfig, MachineType,
};
use basalt_pki::{CertificateAuthority, ClientCertRequest, ServerCertRequest, SubjectAltName};

/// Lifetime of apid's server certificate (Talos: 24 h).
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How often the server certificate is re-issued: at half its lifetime (Talos: every 12 h).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(12 * 60 * 60);

/// The shortest `--node-cert-ttl` accepted: renewal happens at half-life, and a certificate
/// must outlive the time apid needs to pick it up.
pub const MIN_NODE_CERT_TTL: Duration = Duration::from_secs(4);

/// Lifetime of node certificates when machined's main set one (`--node-cert-ttl`, for tests);
/// [`SERVER_CERT_TTL`] otherwise.
static NODE_CERT_TTL: OnceLock<Duration> = OnceLock::new();

/// Sets the lifetime of every node certificate this process issues (apid's server and
/// impersonator certificates, trustd's server certificate, and what trustd signs for workers).
/// Called once by machined's main, before anything is issued; a second call is ignored.
pub fn set_node_cert_ttl(ttl: Duration) {
    let _ = NODE_CERT_TTL.set(ttl.max(MIN_NODE_CERT_TTL));
}

/// The lifetime of node certificates: [`SERVER_CERT_TTL`] unless [`set_node_cert_ttl`] said
/// otherwise.
pub fn node_cert_ttl() -> Duration {
    NODE_CERT_TTL.get().copied().unwrap_or(SERVER_CERT_TTL)
}

/// How often control-plane certificates are re-issued: at half their lifetime.
pub fn renew_interval() -> Duration {
    node_cert_ttl() / 2
}

/// Why apid's credentials or config could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The machine config holds no CA key (a worker).
    #[error(
        "machine.type is {machine_type} and machine.ca has no key: apid's certificate must come \
         from trustd"
    )]
    NoCaKey {
        /// The node's machine type.
        machine_type: MachineType,
    },
    /// `machine.ca` is not UTF-8 PEM.
    #[error("read machine.ca")]
    CaPem {
        /// The decoding error.
        #[source]
        source: basalt_config::Error,
    },
    /// `machine.ca` does not hold a usable CA certificate and key.
    #[error("load the issuing CA from machine.ca")]
    LoadCa {
        /// What basalt-pki refused.
        #[source]
        source: basalt_pki::Error,
    },
    /// Issuing the impersonator client certificate failed.
    #[error("issue apid's os:impersonator client certificate")]
    IssueClient {
        /// What basalt-pki refused.
        #[source]
        source: basalt_pki::Error,
    },
    /// Issuing the server certificate failed.
    #[error("issue apid's server certificate")]
    Issue {
        /// What basalt-pki refused.
        #[source]
        source: basalt_pki::Error,
    },
    /// A path could not be made absolute (apid's config requires absolute paths).
    #[error("resolve {path}")]
    Absolute {
        /// The relative path.
        path: PathBuf,
        /// The I/O error (reading the working directory).
        #[source]
        source: std::io::Error,
    },
    /// Creating `<state>/apid` failed.
    #[error("create apid's state directory")]
    CreateDir {
        /// The error, naming the directory.
        #[source]
        source: basalt_config::Error,
    },
    /// Writing one of apid's files failed.
    #[error("write apid's {what}")]
    Write {
        /// Which file ("server certificate", "config", …).
        what: &'static str,
        /// The error, naming the file.
        #[source]
        source: basalt_config::Error,
    },
    /// The apid config machined built does not pass apid's own validation.
    #[error("build apid's config")]
    Config {
        /// The validation or rendering error.
        #[source]
        source: basalt_config::Error,
    },
}

/// Where apid's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApidFiles {
    /// `<state>/apid`.
    pub dir: PathBuf,
    /// `server.crt`.
    pub cert: PathBuf,
    /// `server.key`.
    pub key: PathBuf,
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `client.crt` and `client.key`: the impersonator credentials (control planes only).
    pub forwarding: ForwardingCredentials,
    /// `apid.yaml`, the argument to `apid --config`.
    pub config: PathBuf,
}

impl ApidFiles {
    /// The file layout under `state_dir` (made absolute).
    pub fn under(state_dir: &Path) -> Result<Self, Error> {
        let dir = absolute(state_dir)?.join("apid");
        Ok(ApidFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("ca.pem"),
            forwarding: ForwardingCredentials {
                cert: dir.join("client.crt"),
                key: dir.join("client.key"),
            },
            config: dir.join("apid.yaml"),
            dir,
        })
    }
}

/// Writes apid's config and, on a node holding the CA key (a control plane), issues apid's
/// server certificate: every file of [`ApidFiles`]. On a worker the credentials are left to
/// [`crate::bootstrap`], and apid must not start before they exist.
///
/// `hostname` is the node's hostname (the certificate's CN and a DNS SAN when it is a valid DNS
/// name); `machined_socket` is where apid forwards calls.
pub fn prepare(
    machine: &MachineConfig,
    state_dir: &Path,
    hostname: &str,
    machined_socket: &Path,
) -> Result<ApidFiles, Error> {
    let files = ApidFiles::under(state_dir)?;
    ensure_private_dir(&files.dir).map_err(|source| Error::CreateDir { source })?;
    let holds_ca_key = machine.ca_key().is_some();
    if holds_ca_key {
        issue_server_cert(machine, &files, hostname)?;
    }

    let config = ApidConfig {
        listen: machine.apid_listen(),
        tls: ApidTls {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: files.ca.clone(),
        },
        machined_socket: absolute(machined_socket)?,
        audit: AuditSink::File(files.dir.join("audit.log")),
        handshake_timeout: machine.apid_handshake_timeout(),
        // Only a node holding the CA key can mint an impersonator certificate; workers do not
        // forward (Talos: "no request forwarding").
        forwarding: holds_ca_key.then(|| files.forwarding.clone()),
        metrics: machine.apid_metrics(),
        // machined's revocation store keeps this file current (`crate::revocation`).
        revocation: Some(files.dir.join(crate::revocation::APID_REVOCATION_FILE)),
        limits: machine.apid_limits(),
    };
    let yaml = config
        .to_yaml()
        .map_err(|source| Error::Config { source })?;
    // Fail here, with machined's error, rather than in a crash-looping child.
    ApidConfig::from_yaml(&yaml).map_err(|source| Error::Config { source })?;
    write_atomic(&files.config, yaml.as_bytes(), 0o600, Overwrite::Allow).map_err(|source| {
        Error::Write {
            what: "config",
            source,
        }
    })?;
    Ok(files)
}

/// Issues a fresh server certificate, CA bundle and `os:impersonator` client certificate into
/// `files`. Called by [`prepare`] and then every [`RENEW_INTERVAL`]; apid picks the new files
/// up when they change.
pub fn issue_server_cert(
    machine: &MachineConfig,
    files: &ApidFiles,
    hostname: &str,
) -> Result<(), Error> {
    let Some(ca_key) = machine.ca_key() else {
        return Err(Error::NoCaKey {
            machine_type: machine.machine_type(),
        });
    };
    let pem = |value: &basalt_config::Base64Pem| {
        value
            .as_str()
            .map(str::to_owned)
            .map_err(|source| Error::CaPem { source })
    };
    let ca_crt = pem(machine.ca_crt())?;
    let ca = CertificateAuthority::from_pem(&ca_crt, &pem(ca_key)?)
        .map_err(|source| Error::LoadCa { source })?;
    let issued = ca
        .issue_server(&ServerCertRequest {
            common_name: is_dns_name(hostname).then(|| hostname.to_owned()),
            sans: server_sans(machine, hostname),
            ttl: node_cert_ttl(),
        })
        .map_err(|source| Error::Issue { source })?;
    let bundle = ca_bundle(machine)?;
    write_credentials(files, &issued.key_pem, &issued.cert_pem, &bundle)?;
    issue_impersonator_cert(&ca, files, hostname)
}

/// Issues apid's client certificate for calling other nodes' apids: O=`os:impersonator` only,
/// so the target honours the `talos-role` apid forwards and nothing else (talos-facts.md §4.3).
fn issue_impersonator_cert(
    ca: &CertificateAuthority,
    files: &ApidFiles,
    hostname: &str,
) -> Result<(), Error> {
    let issued = ca
        .issue_client(&ClientCertRequest {
            common_name: Some(format!("apid@{hostname}")),
            roles: RoleSet::from_iter([Role::Impersonator]),
            ttl: node_cert_ttl(),
        })
        .map_err(|source| Error::IssueClient { source })?;
    let writes: [(&Path, &[u8], u32, &'static str); 2] = [
        (
            &files.forwarding.key,
            issued.key_pem.as_bytes(),
            0o600,
            "impersonator key",
        ),
        (
            &files.forwarding.cert,
            issued.cert_pem.as_bytes(),
            0o644,
            "impersonator certificate",
        ),
    ];
    for (path, bytes, mode, what) in writes {
        write_atomic(path, bytes, mode, Overwrite::Allow)
            .map_err(|source| Error::Write { what, source })?;
    }
    Ok(())
}

/// The accepted CAs as one PEM bundle: `machine.ca.crt`, then every `machine.acceptedCAs`
/// entry.
pub fn ca_bundle(machine: &MachineConfig) -> Result<String, Error> {
    let pem = |value: &basalt_config::Base64Pem| {
        value
            .as_str()
            .map(str::to_owned)
            .map_err(|source| Error::CaPem { source })
    };
    let mut bundle = pem(machine.ca_crt())?;
    for accepted in machine.accepted_cas() {
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&pem(accepted)?);
    }
    Ok(bundle)
}

/// Writes apid's key, certificate and CA bundle, each atomically, the key first.
pub fn write_credentials(
    files: &ApidFiles,
    key_pem: &str,
    cert_pem: &str,
    bundle: &str,
) -> Result<(), Error> {
    // The key first: a reload between the two writes then fails on a key/cert mismatch and is
    // retried, instead of pairing a new certificate with nothing.
    let writes: [(&Path, &[u8], u32, &'static str); 3] = [
        (&files.key, key_pem.as_bytes(), 0o600, "server key"),
        (
            &files.cert,
            cert_pem.as_bytes(),
            0o644,
            "server certificate",
        ),
        (&files.ca, bundle.as_bytes(), 0o644, "CA bundle"),
    ];
    for (path, bytes, mode, what) in writes {
        write_atomic(path, bytes, mode, Overwrite::Allow)
            .map_err(|source| Error::Write { what, source })?;
    }
    Ok(())
}

/// The SANs of apid's server certificate, sorted and without duplicates:
/// - `127.0.0.1`, `::1` and `localhost`, so local clients can always connect;
/// - apid's listen address when it is a specific address (not `0.0.0.0` / `::`);
/// - the hostname, when it is a valid DNS name;
/// - every `machine.certSANs` entry;
/// - the host of every `cluster.endpoints` entry (clients dial those, and this node is a
///   control plane).
///
/// Entries that are not valid certificate names (e.g. a wildcard) are skipped with a warning.
pub(crate) fn server_sans(machine: &MachineConfig, hostname: &str) -> Vec<SubjectAltName> {
    let mut sans = vec![
        SubjectAltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SubjectAltName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        SubjectAltName::Dns("localhost".to_owned()),
    ];
    let listen = machine.apid_listen().ip();
    if !listen.is_unspecified() {
        sans.push(SubjectAltName::Ip(listen));
    }
    if is_dns_name(hostname) {
        sans.push(SubjectAltName::Dns(hostname.to_owned()));
    }
    let configured = machine
        .cert_sans()
        .iter()
        .chain(machine.endpoints().iter().map(|endpoint| endpoint.host()));
    for host in configured {
        match host {
            basalt_config::Host::Ip(ip) => sans.push(SubjectAltName::Ip(*ip)),
            basalt_config::Host::Dns(name) if is_dns_name(name) => {
                sans.push(SubjectAltName::Dns(name.clone()));
            }
            basalt_config::Host::Dns(name) => {
                tracing::warn!(name = %name, "Skipping a SAN that is not a valid DNS name");
            }
        }
    }
    sans.sort();
    sans.dedup();
    sans
}

pub(crate) fn is_dns_name(name: &str) -> bool {
    basalt_pki::validate_dns_name(name).is_ok()
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path).map_err(|source| Error::Absolute {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use basalt_config::{BundleCerts, CertAndKey, SecretsBundle};
    use basalt_pki::CaOptions;

    use super::*;

    fn control_plane() -> MachineConfig {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
        let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
        MachineConfig::generate(&bundle, "dev", "10.5.0.2", MachineType::ControlPlane)
            .expect("config")
    }

    #[test]
    fn sans_cover_loopback_hostname_and_endpoints() {
        let sans = server_sans(&control_plane(), "node-1");
        for expected in [
            SubjectAltName::Ip("127.0.0.1".parse().expect("ip")),
            SubjectAltName::Ip("::1".parse().expect("ip")),
            SubjectAltName::Ip("10.5.0.2".parse().expect("ip")),
            SubjectAltName::Dns("localhost".to_owned()),
            SubjectAltName::Dns("node-1".to_owned()),
        ] {
            assert!(
                sans.contains(&expected),
                "{expected:?} missing from {sans:?}"
            );
        }
        let mut sorted = sans.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sans, sorted);
    }

    #[test]
    fn machine_metrics_reach_apids_config_and_are_off_by_default() {
        let state = tempfile::tempdir().expect("tempdir");
        let socket = state.path().join("machined.sock");
        let files = prepare(&control_plane(), state.path(), "node-1", &socket).expect("prepare");
        assert_eq!(
            ApidConfig::load(&files.config).expect("config").metrics,
            None
        );

        let mut raw = control_plane().to_raw();
        raw.machine.metrics = Some(basalt_config::machine::RawMetrics {
            apid: Some("127.0.0.1:9100".to_owned()),
            trustd: None,
        });
        let machine = MachineConfig::try_from(raw).expect("valid");
        let files = prepare(&machine, state.path(), "node-1", &socket).expect("prepare");
        let config = ApidConfig::load(&files.config).expect("config");
        assert_eq!(
            config.metrics,
            Some("127.0.0.1:9100".parse().expect("addr"))
        );
    }

    #[test]
    fn a_control_plane_gets_an_impersonator_cert_for_forwarding() {
        let state = tempfile::tempdir().expect("tempdir");
        let files = prepare(
            &control_plane(),
            state.path(),
            "node-1",
            &state.path().join("machined.sock"),
        )
        .expect("prepare");
        let config = ApidConfig::load(&files.config).expect("apid config");
        assert_eq!(config.forwarding.as_ref(), Some(&files.forwarding));
        let pem = std::fs::read_to_string(&files.forwarding.cert).expect("client cert");
        let identity = basalt_pki::Identity::from_pem(&pem).expect("identity");
        assert_eq!(identity.roles, RoleSet::from_iter([Role::Impersonator]));
        assert_eq!(identity.common_name.as_deref(), Some("apid@node-1"));
    }

    #[test]
    fn an_invalid_hostname_is_left_out() {
        let sans = server_sans(&control_plane(), "not a name");
        assert!(
            !sans
                .iter()
                .any(|s| matches!(s, SubjectAltName::Dns(n) if n.contains(' ')))
        );
    }
}
