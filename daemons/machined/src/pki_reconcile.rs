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
use std::time::Duration;

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
/// `old` and `new` (see the module docs for the keys; the hostname is among the SANs).
/// `kernel_hostname` stands in for a config that sets no `machine.hostname`.
pub(crate) fn pki_changed(old: &MachineConfig, new: &MachineConfig, kernel_hostname: &str) -> bool {
    old.ca_crt() != new.ca_crt()
        || old.ca_key() != new.ca_key()
        || old.accepted_cas() != new.accepted_cas()
        || apid::server_sans(old, node_hostname(old, kernel_hostname))
            != apid::server_sans(new, node_hostname(new, kernel_hostname))
        || old.token() != new.token()
        || old.accepted_tokens() != new.accepted_tokens()
}

/// The node's hostname under `machine`: its `machine.hostname`, else the kernel's.
pub(crate) fn node_hostname<'a>(machine: &'a MachineConfig, kernel_hostname: &'a str) -> &'a str {
    machine.hostname().unwrap_or(kernel_hostname)
}

/// Keeps the hostname `host` reports (the Hostname call, logs) in step with the active
/// config: `machine.hostname` is a live change.
pub(crate) async fn follow_hostname(
    mut feed: ConfigFeed,
    host: Arc<dyn Host>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = feed.changed() => {
                host.set_configured_hostname(feed.current().hostname().map(str::to_owned));
            }
            () = stopped(&mut stop) => return,
        }
    }
}

/// How soon a failed re-issue is tried again (a full disk, a write error): not in a loop, and
/// not only at the next renewal either, which is hours away.
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Control planes: re-issues apid's and trustd's certificates every
/// [`apid::renew_interval`], and re-issues them and rewrites trustd's files whenever the
/// active config changes what they depend on ([`pki_changed`]). A failure is logged, the
/// current files stay in place, and the same work is tried again after `retry`: until it
/// succeeds, the config it was for does not count as issued, so a change that failed (a token
/// removed, say) is never left half done behind later renewals.
pub(crate) async fn run_control_plane(
    mut feed: ConfigFeed,
    apid_files: ApidFiles,
    trustd: Option<TrustdFiles>,
    kernel_hostname: String,
    mut stop: watch::Receiver<bool>,
    retry: Duration,
) {
    let mut issued_from = feed.current();
    let mut next_attempt = Instant::now() + apid::renew_interval();
    loop {
        let timer = tokio::select! {
            () = tokio::time::sleep_until(next_attempt) => true,
            () = feed.changed() => false,
            () = stopped(&mut stop) => return,
        };
        let machine = feed.current();
        let hostname = node_hostname(&machine, &kernel_hostname).to_owned();
        let work = if pki_changed(&issued_from, &machine, &kernel_hostname) {
            Work::Rewrite
        } else if timer {
            Work::Renew
        } else {
            // Nothing the certificates depend on changed.
            issued_from = machine;
            continue;
        };
        // About a dozen atomic writes, each fsynced with its directory, and the signing: on
        // the blocking pool, not on machined's one runtime thread that serves every call.
        let job = (
            machine.clone(),
            apid_files.clone(),
            trustd.clone(),
            hostname.clone(),
        );
        let done = tokio::task::spawn_blocking(move || {
            let (machine, apid_files, trustd, hostname) = job;
            reissue(&machine, &apid_files, trustd.as_ref(), &hostname, work)
        })
        .await
        .unwrap_or_else(|join| Err(Error::BlockingTask { source: join }));
        match done {
            Ok(()) => {
                tracing::info!(
                    trigger = work.as_str(),
                    valid_for_s = apid::node_cert_ttl().as_secs(),
                    "Re-issued apid's and trustd's certificates"
                );
                issued_from = machine;
                next_attempt = Instant::now() + apid::renew_interval();
            }
            Err(err) => {
                tracing::error!(
                    trigger = work.as_str(),
                    error = &err as &dyn std::error::Error,
                    retry_in_s = retry.as_secs_f64(),
                    "Cannot re-issue node certificates; keeping the current ones"
                );
                next_attempt = Instant::now() + retry.min(apid::renew_interval());
            }
        }
    }
}

/// What a wake-up of [`run_control_plane`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// Fresh server certificates from the same config.
    Renew,
    /// The config changed what certificates or trustd depend on: everything is written again.
    Rewrite,
}

impl Work {
    fn as_str(self) -> &'static str {
        match self {
            Work::Renew => "renewal",
            Work::Rewrite => "config changed",
        }
    }
}

fn reissue(
    machine: &MachineConfig,
    apid_files: &ApidFiles,
    trustd: Option<&TrustdFiles>,
    hostname: &str,
    work: Work,
) -> Result<(), Error> {
    apid::issue_server_cert(machine, apid_files, hostname)
        .map_err(|source| Error::Apid { source })?;
    if let Some(trustd) = trustd {
        match work {
            Work::Renew => trustd_files::issue_server_cert(machine, trustd, hostname),
            // CA, accepted CAs, tokens: everything trustd reads.
            Work::Rewrite => trustd_files::write_all(machine, trustd, hostname),
        }
        .map_err(|source| Error::Trustd { source })?;
    }
    Ok(())
}

/// What apid and trustd are given of a config must be usable before it is applied (checked by
/// ApplyConfiguration, not when a stored config is loaded: a node whose stored config predates
/// a check must still start):
/// - every CA certificate (`machine.ca.crt` and each `acceptedCAs` entry) is an X.509
///   certificate, since apid refuses to start with a CA bundle it cannot read;
/// - no join token is listed twice (`machine.token` and `acceptedTokens`), since trustd refuses
///   such a config, after the CA files were already rewritten;
/// - on a config holding the CA key (a control plane), the key belongs to the certificate, or
///   no node certificate could be issued from it.
///
/// The error names the key and says why.
pub(crate) fn check_trust_material(machine: &MachineConfig) -> Result<(), String> {
    let mut seen = std::collections::HashSet::from([machine.token()]);
    for (i, accepted) in machine.accepted_tokens().iter().enumerate() {
        if !seen.insert(&accepted.token) {
            // The value is never repeated in the error: it is a secret.
            return Err(format!(
                "machine.acceptedTokens[{i}]: is machine.token or an earlier entry again; list \
                 each token once"
            ));
        }
    }
    let certificates = std::iter::once(("machine.ca.crt".to_owned(), machine.ca_crt())).chain(
        machine
            .accepted_cas()
            .iter()
            .enumerate()
            .map(|(i, crt)| (format!("machine.acceptedCAs[{i}]"), crt)),
    );
    for (key, crt) in certificates {
        let pem = crt
            .as_str()
            .map_err(|_| format!("{key}: the certificate must be UTF-8 PEM"))?;
        basalt_pki::certificates_from_pem(pem.as_bytes())
            .map_err(|err| format!("{key}: not a usable certificate: {err}"))?;
    }
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

        // The hostname is a SAN: setting `machine.hostname` (or changing it) changes them,
        // setting it to what the kernel reports does not.
        let mut raw = base.to_raw();
        raw.machine.hostname = Some("cp-2".to_owned());
        let renamed = MachineConfig::try_from(raw).expect("config");
        assert!(pki_changed(&base, &renamed, "cp-1"));
        assert!(!pki_changed(&base, &renamed, "cp-2"));
    }

    /// A token change whose rewrite failed is tried again soon, as a rewrite, until trustd's
    /// config says what the active one does (before 2026-12-08 the failed config counted as
    /// issued, and later renewals rewrote only the server certificate: a removed token stayed
    /// accepted until the next change or restart).
    #[tokio::test]
    async fn a_failed_rewrite_is_retried_until_trustd_has_the_new_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let apid_files = ApidFiles::under(dir.path()).expect("apid files");
        let trustd = TrustdFiles::under(dir.path()).expect("trustd files");
        std::fs::create_dir_all(apid_files.cert.parent().expect("dir")).expect("mkdir");
        std::fs::create_dir_all(&trustd.dir).expect("mkdir");
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let base = control_plane(&ca);
        reissue(&base, &apid_files, Some(&trustd), "cp-1", Work::Rewrite).expect("first files");
        let before = std::fs::read_to_string(&trustd.config).expect("trustd.yaml");

        let active = |config: MachineConfig| {
            Arc::new(ActiveConfig {
                version: 1,
                sha256: String::new(),
                config,
                yaml: Arc::from(""),
            })
        };
        let (tx, rx) = watch::channel(active(base.clone()));
        let feed = ConfigFeed {
            active: Some(rx),
            boot: base.clone(),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_control_plane(
            feed,
            apid_files,
            Some(trustd.clone()),
            "cp-1".to_owned(),
            stop_rx,
            Duration::from_millis(50),
        ));

        // The loop takes the base config as issued before anything changes.
        tokio::time::sleep(Duration::from_millis(100)).await;

        // trustd.yaml cannot be replaced while a directory is in its place.
        std::fs::remove_file(&trustd.config).expect("rm");
        std::fs::create_dir(&trustd.config).expect("mkdir");
        let mut raw = base.to_raw();
        raw.machine.token = Some("zzzzzz.0123456789abcdef".to_owned());
        tx.send_replace(active(MachineConfig::try_from(raw).expect("config")));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(trustd.config.is_dir(), "the rewrite failed meanwhile");

        std::fs::remove_dir(&trustd.config).expect("rmdir");
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            if let Ok(text) = std::fs::read_to_string(&trustd.config) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "trustd's config was never rewritten"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(after, before, "trustd's config holds the new token");
        stop_tx.send_replace(true);
        task.await.expect("the loop ends");
    }

    /// A certificate under the right PEM labels whose body is not one passed validation, and
    /// apid then could not start (its CA bundle did not load).
    #[test]
    fn a_ca_certificate_that_does_not_parse_is_refused_by_name() {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let mut raw = control_plane(&ca).to_raw();
        raw.machine
            .accepted_cas
            .push(basalt_config::machine::RawCertificate {
                crt: Some(Base64Pem::from_pem(
                    "-----BEGIN CERTIFICATE-----\nMIIBnotacert\n-----END CERTIFICATE-----\n"
                        .to_owned(),
                )),
            });
        let config = MachineConfig::try_from(raw).expect("the labels pass the config's check");
        let err = check_trust_material(&config).expect_err("not a certificate");
        assert!(
            err.starts_with("machine.acceptedCAs[0]: not a usable certificate"),
            "{err}"
        );
    }

    /// trustd refuses a token listed twice, after machined had already rewritten the CA files:
    /// the apply is refused first, without the token in the message.
    #[test]
    fn a_join_token_listed_twice_is_refused_without_showing_it() {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let base = control_plane(&ca);
        let token = base.token().as_str().to_owned();
        let mut raw = base.to_raw();
        raw.machine.accepted_tokens = vec![
            basalt_config::machine::RawMachineToken::Plain("zyxwvu.fedcba9876543210".into()),
            basalt_config::machine::RawMachineToken::Plain(token.clone()),
        ];
        let config = MachineConfig::try_from(raw).expect("valid on its own");
        let err = check_trust_material(&config).expect_err("listed twice");
        assert!(err.starts_with("machine.acceptedTokens[1]: "), "{err}");
        assert!(!err.contains(&token), "{err}");
        assert_eq!(check_trust_material(&base), Ok(()));
    }

    #[test]
    fn a_ca_key_of_another_certificate_is_refused_by_name() {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let other = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        assert_eq!(check_trust_material(&control_plane(&ca)), Ok(()));
        let mut raw = control_plane(&ca).to_raw();
        if let Some(ca) = raw.machine.ca.as_mut() {
            ca.key = Some(Base64Pem::from_pem(other.key_pem()));
        }
        let mismatched = MachineConfig::try_from(raw).expect("config");
        let err = check_trust_material(&mismatched).expect_err("mismatch");
        assert!(err.starts_with("machine.ca:"), "{err}");
    }
}
