//! Keeps node certificates, apid's CA bundle and trustd's files in step with the active
//! machine config, and renews the control plane's certificates at half-life.
//!
//! The active config comes from [`ConfigStore::subscribe`] ([`ConfigFeed`]). When a live apply
//! changes what the certificates depend on — `machine.ca`, `machine.acceptedCAs`,
//! `machine.certSANs`, `cluster.endpoints`, `machine.token`, `machine.acceptedTokens` — then
//! at once:
//!
//! - on a control plane ([`run_control_plane`]): apid's `ca.pem` (= `machine.ca` +
//!   `acceptedCAs`), server and `os:impersonator` certificates are re-issued from the (possibly
//!   new) `machine.ca`, and trustd's CA, accepted-CA bundle, server certificate and config
//!   (tokens) are rewritten; apid and trustd poll their files and reload within a second or
//!   two, without a restart;
//! - on a worker (`crate::bootstrap::run`): apid's `ca.pem` is rewritten from the new config,
//!   and the server certificate is requested again from trustd when it is not issued by the
//!   current `machine.ca` or its SANs would change.
//!
//! Files are written one by one (each atomically): apid and trustd may see a mix for a moment,
//! fail to load it (they then keep the previous credentials and log why) and load the final
//! set at their next poll. apid keeps connections that are already open across a CA change
//! (their handshake is done); new connections use the new CA set.

use std::path::Path;
use std::sync::Arc;

use basalt_config::MachineConfig;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::apid::{self, ApidFiles};
use crate::config_store::{ActiveConfig, ConfigStore};
use crate::error::Error;
use crate::supervise::stopped;
use crate::trustd::{self as trustd_files, TrustdFiles};
use basalt_sys::Host;

/// The machine config certificates are issued from: the store's active config, or the boot
/// config when machined runs without a store.
#[derive(Debug)]
pub(crate) struct ConfigFeed {
    active: Option<watch::Receiver<Arc<ActiveConfig>>>,
    boot: MachineConfig,
}

impl ConfigFeed {
    /// Follows `store` when there is one; `boot` otherwise (it then never changes).
    pub(crate) fn new(boot: MachineConfig, store: Option<&ConfigStore>) -> Self {
        ConfigFeed {
            active: store.map(ConfigStore::subscribe),
            boot,
        }
    }

    /// The config now, marking it seen.
    pub(crate) fn current(&mut self) -> MachineConfig {
        match &mut self.active {
            Some(active) => active.borrow_and_update().config.clone(),
            None => self.boot.clone(),
        }
    }

    /// Resolves when a config not yet seen is published; never without a store (or once the
    /// store is gone).
    pub(crate) async fn changed(&mut self) {
        match &mut self.active {
            Some(active) => {
                if active.changed().await.is_err() {
                    self.active = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// Whether node certificates or trustd's files depend on something that differs between
/// `old` and `new` (see the module docs for the keys). `hostname` is the node's.
pub(crate) fn pki_changed(old: &MachineConfig, new: &MachineConfig, hostname: &str) -> bool {
    old.ca_crt() != new.ca_crt()
        || old.ca_key() != new.ca_key()
        || old.accepted_cas() != new.accepted_cas()
        || apid::server_sans(old, hostname) != apid::server_sans(new, hostname)
        || old.token() != new.token()
        || old.accepted_tokens() != new.accepted_tokens()
}

/// Control planes: re-issues apid's and trustd's certificates every
/// [`apid::renew_interval`], and re-issues them and rewrites trustd's files whenever the
/// active config changes what they depend on ([`pki_changed`]). Failures are logged; the
/// current files stay in place and the next change or renewal tries again.
pub(crate) async fn run_control_plane(
    mut feed: ConfigFeed,
    apid_files: ApidFiles,
    trustd: Option<TrustdFiles>,
    host: Arc<dyn Host>,
    mut stop: watch::Receiver<bool>,
) {
    let mut issued_from = feed.current();
    let mut next_renewal = Instant::now() + apid::renew_interval();
    loop {
        let reason = tokio::select! {
            () = tokio::time::sleep_until(next_renewal) => Reason::Renewal,
            () = feed.changed() => Reason::ConfigChanged,
            () = stopped(&mut stop) => return,
        };
        let hostname = match host.hostname() {
            Ok(hostname) => hostname,
            Err(source) => {
                let err = Error::Host { source };
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "Cannot renew node certificates: no hostname"
                );
                next_renewal = Instant::now() + apid::renew_interval();
                continue;
            }
        };
        let machine = match reason {
            Reason::Renewal => issued_from.clone(),
            Reason::ConfigChanged => {
                let next = feed.current();
                if !pki_changed(&issued_from, &next, &hostname) {
                    issued_from = next;
                    continue;
                }
                next
            }
        };
        match reissue(&machine, &apid_files, trustd.as_ref(), &hostname, reason) {
            Ok(()) => {
                tracing::info!(
                    trigger = reason.as_str(),
                    valid_for_s = apid::node_cert_ttl().as_secs(),
                    "Re-issued apid's and trustd's certificates"
                );
                issued_from = machine;
                next_renewal = Instant::now() + apid::renew_interval();
            }
            Err(err) => {
                tracing::error!(
                    trigger = reason.as_str(),
                    error = &err as &dyn std::error::Error,
                    "Cannot re-issue node certificates; keeping the current ones"
                );
                // The config is taken as handled so a bad one is not retried in a loop; a
                // renewal failure is retried at the next interval.
                if matches!(reason, Reason::ConfigChanged) {
                    issued_from = machine;
                }
                next_renewal = Instant::now() + apid::renew_interval();
            }
        }
    }
}

/// What started a re-issue.
#[derive(Clone, Copy, Debug)]
enum Reason {
    Renewal,
    ConfigChanged,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Renewal => "renewal",
            Reason::ConfigChanged => "config changed",
        }
    }
}

fn reissue(
    machine: &MachineConfig,
    apid_files: &ApidFiles,
    trustd: Option<&TrustdFiles>,
    hostname: &str,
    reason: Reason,
) -> Result<(), Error> {
    apid::issue_server_cert(machine, apid_files, hostname)
        .map_err(|source| Error::Apid { source })?;
    if let Some(trustd) = trustd {
        match reason {
            Reason::Renewal => trustd_files::issue_server_cert(machine, trustd, hostname),
            // CA, accepted CAs, tokens: everything trustd reads.
            Reason::ConfigChanged => trustd_files::write_all(machine, trustd, hostname),
        }
        .map_err(|source| Error::Trustd { source })?;
    }
    Ok(())
}

/// On a config holding the CA key (a control plane): the key must belong to the certificate,
/// or no node certificate could be issued from it. The error names the key and says why.
pub(crate) fn check_issuing_ca(machine: &MachineConfig) -> Result<(), String> {
    let Some(key) = machine.ca_key() else {
        return Ok(());
    };
    let (Ok(crt), Ok(key)) = (machine.ca_crt().as_str(), key.as_str()) else {
        return Err("machine.ca: the certificate and key must be UTF-8 PEM".to_owned());
    };
    basalt_pki::CertificateAuthority::from_pem(crt, key)
        .map(drop)
        .map_err(|err| format!("machine.ca: no CA can be loaded from crt and key: {err}"))
}

/// Whether the certificate in `cert_path` was signed by `machine.ca`; `false` when either
/// cannot be read.
pub(crate) fn issued_by_machine_ca(cert_path: &Path, machine: &MachineConfig) -> bool {
    let Ok(leaf_pem) = std::fs::read(cert_path) else {
        return false;
    };
    let Ok(ca_pem) = machine.ca_crt().as_str() else {
        return false;
    };
    let (Ok(leaf), Ok(ca)) = (
        basalt_pki::certificates_from_pem(&leaf_pem),
        basalt_pki::certificates_from_pem(ca_pem.as_bytes()),
    ) else {
        return false;
    };
    match (leaf.first(), ca.first()) {
        (Some(leaf), Some(ca)) => basalt_pki::is_issued_by(leaf, ca).unwrap_or(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use basalt_config::{Base64Pem, BundleCerts, CertAndKey, MachineType, SecretsBundle};
    use basalt_pki::{CaOptions, CertificateAuthority};

    use super::*;

    fn control_plane(ca: &CertificateAuthority) -> MachineConfig {
        let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
        let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
        MachineConfig::generate(&bundle, "dev", "10.5.0.2", MachineType::ControlPlane)
            .expect("config")
    }

    #[test]
    fn only_what_certificates_and_trustd_depend_on_counts_as_a_change() {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let base = control_plane(&ca);
        assert!(!pki_changed(&base, &base.clone(), "cp-1"));

        let mut raw = base.to_raw();
        raw.machine.cert_sans.push("10.9.9.9".to_owned());
        let sans = MachineConfig::try_from(raw).expect("config");
        assert!(pki_changed(&base, &sans, "cp-1"));

        let mut raw = base.to_raw();
        raw.machine.token = Some("zzzzzz.0123456789abcdef".to_owned());
        let token = MachineConfig::try_from(raw).expect("config");
        assert!(pki_changed(&base, &token, "cp-1"));

        let other = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        assert!(pki_changed(&base, &control_plane(&other), "cp-1"));
    }

    #[test]
    fn a_ca_key_of_another_certificate_is_refused_by_name() {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let other = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        assert_eq!(check_issuing_ca(&control_plane(&ca)), Ok(()));
        let mut raw = control_plane(&ca).to_raw();
        if let Some(ca) = raw.machine.ca.as_mut() {
            ca.key = Some(Base64Pem::from_pem(other.key_pem()));
        }
        let mismatched = MachineConfig::try_from(raw).expect("config");
        let err = check_issuing_ca(&mismatched).expect_err("mismatch");
        assert!(err.starts_with("machine.ca:"), "{err}");
    }
}
