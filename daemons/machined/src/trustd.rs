//! trustd's credentials and config file, produced by machined on control-plane nodes
//! (talos-facts.md §4.5), for the trustd it supervises as a built-in service.
//!
//! Everything lands in `<state>/trustd/` (what `basalt_config::trustd` says machined must
//! provide):
//!
//! | file | content | mode |
//! | --- | --- | --- |
//! | `server.crt` / `server.key` | trustd's serverAuth certificate (SANs as apid's, 24 h) | 0644 / 0600 |
//! | `ca.crt` / `ca.key` | the issuing CA from `machine.ca` | 0644 / 0600 |
//! | `accepted.pem` | `machine.acceptedCAs`, only when there are any | 0644 |
//! | `trustd.yaml` | [`basalt_config::TrustdConfig`]: tokens = `machine.token` + `machine.acceptedTokens` | 0600 |
//! | `issued.jsonl` | written by trustd: one JSON line per issued certificate | (trustd's) |
//!
//! Every file is written atomically; trustd polls its server certificate and reloads it, so
//! renewal ([`issue_server_cert`]) needs no restart.

use std::path::{Path, PathBuf};

use basalt_config::fs::{Overwrite, ensure_private_dir, write_atomic};
use basalt_config::trustd::CertKeyFiles;
use basalt_config::{AcceptedToken, MachineConfig, RateLimit, TrustdConfig, TrustdPolicy};
use basalt_pki::{CertificateAuthority, ServerCertRequest};

use crate::apid::{is_dns_name, node_cert_ttl, server_sans};

/// Why trustd's credentials or config could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The machine config holds no CA key: only control-plane nodes run trustd.
    #[error("machine.ca has no key: trustd runs only on control-plane nodes")]
    NoCaKey,
    /// `machine.ca` or an accepted CA is not UTF-8 PEM.
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
    /// Issuing trustd's server certificate failed.
    #[error("issue trustd's server certificate")]
    Issue {
        /// What basalt-pki refused.
        #[source]
        source: basalt_pki::Error,
    },
    /// A path could not be made absolute (trustd's config requires absolute paths).
    #[error("resolve {path}")]
    Absolute {
        /// The relative path.
        path: PathBuf,
        /// The I/O error (reading the working directory).
        #[source]
        source: std::io::Error,
    },
    /// Creating `<state>/trustd` failed.
    #[error("create trustd's state directory")]
    CreateDir {
        /// The error, naming the directory.
        #[source]
        source: basalt_config::Error,
    },
    /// Writing one of trustd's files failed.
    #[error("write trustd's {what}")]
    Write {
        /// Which file.
        what: &'static str,
        /// The error, naming the file.
        #[source]
        source: basalt_config::Error,
    },
    /// The trustd config machined built does not pass trustd's own validation.
    #[error("build trustd's config")]
    Config {
        /// The validation or rendering error.
        #[source]
        source: basalt_config::Error,
    },
}

/// Where trustd's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustdFiles {
    /// `<state>/trustd`.
    pub dir: PathBuf,
    /// `server.crt`.
    pub cert: PathBuf,
    /// `server.key`.
    pub key: PathBuf,
    /// `ca.crt`.
    pub ca_cert: PathBuf,
    /// `ca.key`.
    pub ca_key: PathBuf,
    /// `accepted.pem`.
    pub accepted: PathBuf,
    /// `issued.jsonl`.
    pub journal: PathBuf,
    /// `trustd.yaml`, the argument to `trustd --config`.
    pub config: PathBuf,
}

impl TrustdFiles {
    /// The file layout under `state_dir` (made absolute).
    pub fn under(state_dir: &Path) -> Result<Self, Error> {
        let dir = std::path::absolute(state_dir)
            .map_err(|source| Error::Absolute {
                path: state_dir.to_owned(),
                source,
            })?
            .join("trustd");
        Ok(TrustdFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            accepted: dir.join("accepted.pem"),
            journal: dir.join("issued.jsonl"),
            config: dir.join("trustd.yaml"),
            dir,
        })
    }
}

/// Writes the CA, issues trustd's server certificate and writes `trustd.yaml`.
pub fn prepare(
    machine: &MachineConfig,
    state_dir: &Path,
    hostname: &str,
) -> Result<TrustdFiles, Error> {
    let files = TrustdFiles::under(state_dir)?;
    ensure_private_dir(&files.dir).map_err(|source| Error::CreateDir { source })?;
    write_all(machine, &files, hostname)?;
    Ok(files)
}

/// Writes every file of `files` from `machine`: the CA, the accepted CAs, a fresh server
/// certificate and `trustd.yaml` (tokens). Used at start and when the active config's CAs or
/// tokens change; trustd reloads all of it by itself. The config goes last: it is what makes
/// trustd look at a new accepted-CA bundle.
pub fn write_all(
    machine: &MachineConfig,
    files: &TrustdFiles,
    hostname: &str,
) -> Result<(), Error> {
    let (ca_crt, ca_key) = ca_pems(machine)?;
    write(&files.ca_key, &ca_key, 0o600, "CA key")?;
    write(&files.ca_cert, &ca_crt, 0o644, "CA certificate")?;

    let mut accepted = String::new();
    for ca in machine.accepted_cas() {
        if !accepted.is_empty() && !accepted.ends_with('\n') {
            accepted.push('\n');
        }
        accepted.push_str(ca.as_str().map_err(|source| Error::CaPem { source })?);
    }
    let accepted_cas = if accepted.is_empty() {
        None
    } else {
        write(&files.accepted, &accepted, 0o644, "accepted CAs")?;
        Some(files.accepted.clone())
    };
    issue_server_cert(machine, files, hostname)?;

    let tokens = trustd_tokens(machine);
    let config = TrustdConfig {
        listen: machine.trustd_listen(),
        tls: CertKeyFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        ca: CertKeyFiles {
            cert: files.ca_cert.clone(),
            key: files.ca_key.clone(),
        },
        accepted_cas,
        tokens,
        journal: files.journal.clone(),
        // Workers' certificates live as long as the control plane's own (`--node-cert-ttl`).
        policy: TrustdPolicy {
            ttl: node_cert_ttl(),
            ..TrustdPolicy::default()
        },
        rate_limit: RateLimit::default(),
        handshake_timeout: machine.trustd_handshake_timeout(),
        metrics: machine.trustd_metrics(),
    };
    let yaml = config
        .to_yaml()
        .map_err(|source| Error::Config { source })?;
    // Fail here, with machined's error, rather than in a crash-looping child.
    TrustdConfig::from_yaml(&yaml).map_err(|source| Error::Config { source })?;
    write(&files.config, &yaml, 0o600, "config")
}

/// Issues a fresh server certificate for trustd from `machine.ca` (same CN and SANs as apid's,
/// 24 h). Called by [`prepare`] and then at every renewal; trustd reloads it by itself.
pub fn issue_server_cert(
    machine: &MachineConfig,
    files: &TrustdFiles,
    hostname: &str,
) -> Result<(), Error> {
    let (ca_crt, ca_key) = ca_pems(machine)?;
    let ca = CertificateAuthority::from_pem(&ca_crt, &ca_key)
        .map_err(|source| Error::LoadCa { source })?;
    let issued = ca
        .issue_server(&ServerCertRequest {
            common_name: is_dns_name(hostname).then(|| hostname.to_owned()),
            sans: server_sans(machine, hostname),
            ttl: node_cert_ttl(),
        })
        .map_err(|source| Error::Issue { source })?;
    // The key first, as for apid: a reload between the writes fails on a mismatch and retries.
    write(&files.key, &issued.key_pem, 0o600, "server key")?;
    write(&files.cert, &issued.cert_pem, 0o644, "server certificate")
}

/// trustd's `tokens`: `machine.token` (no expiry) first, then each `machine.acceptedTokens`
/// entry with its expiry.
pub fn trustd_tokens(machine: &MachineConfig) -> Vec<AcceptedToken> {
    std::iter::once(AcceptedToken {
        token: machine.token().clone(),
        expires: None,
    })
    .chain(machine.accepted_tokens().iter().cloned())
    .collect()
}

fn ca_pems(machine: &MachineConfig) -> Result<(String, String), Error> {
    let key = machine.ca_key().ok_or(Error::NoCaKey)?;
    let pem = |value: &basalt_config::Base64Pem| {
        value
            .as_str()
            .map(str::to_owned)
            .map_err(|source| Error::CaPem { source })
    };
    Ok((pem(machine.ca_crt())?, pem(key)?))
}

fn write(path: &Path, text: &str, mode: u32, what: &'static str) -> Result<(), Error> {
    write_atomic(path, text.as_bytes(), mode, Overwrite::Allow)
        .map_err(|source| Error::Write { what, source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use basalt_config::{BundleCerts, CertAndKey, MachineType, SecretsBundle};
    use basalt_pki::{CaOptions, Identity};

    use super::*;

    #[test]
    fn prepare_writes_a_valid_config_and_a_server_only_cert() {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
        let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
        let machine =
            MachineConfig::generate(&bundle, "dev", "10.5.0.2", MachineType::ControlPlane)
                .expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        let files = prepare(&machine, dir.path(), "cp-1").expect("prepare");

        let config = TrustdConfig::load(&files.config).expect("trustd accepts the config");
        assert_eq!(config.tokens.len(), 1);
        assert_eq!(config.tokens[0].token, *machine.token());
        assert_eq!(config.listen, machine.trustd_listen());
        assert_eq!(config.accepted_cas, None);
        for private in [&files.config, &files.ca_key, &files.key] {
            let mode = std::fs::metadata(private)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", private.display());
        }
        let cert = Identity::from_pem(&std::fs::read_to_string(&files.cert).expect("read"))
            .expect("parse");
        assert!(cert.ext_key_usage.server_auth && !cert.ext_key_usage.client_auth);
        assert!(cert.organizations.is_empty());
        assert!(cert.dns_names.contains(&"cp-1".to_owned()));
    }
}
