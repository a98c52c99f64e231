//! Worker bootstrap: apid's server certificate comes from trustd (talos-facts.md §3.2).
//!
//! A worker's machine config holds the CA certificate without its key. machined
//!
//! 1. generates a key of the CA's key type (trustd signs nothing else) and a CSR: CN = the
//!    hostname, SANs = `127.0.0.1`, apid's listen address when it is a specific one, the
//!    hostname and `machine.certSANs` ([`csr_sans`]);
//! 2. calls `securityapi.SecurityService/Certificate` on the control planes' trustd
//!    ([`targets`]: `cluster.endpoints`, port 50001 unless given) round-robin, each attempt
//!    limited to [`ATTEMPT_TIMEOUT`], with exponential backoff and jitter between failures
//!    ([`RetryBackoff`]). TLS verifies trustd against the worker's CA bundle (`machine.ca.crt`
//!    and `machine.acceptedCAs`), with no client certificate; metadata `token` carries
//!    `machine.token`;
//! 3. writes key, certificate and the returned CA bundle atomically into `<state>/apid/`
//!    ([`crate::apid::write_credentials`]), then lets apid start (once);
//! 4. renews at half the certificate's remaining lifetime; apid reloads the files itself.
//!
//! Each certificate written is published on the event bus as a `machine.TaskEvent` (action
//! STOP) named [`TASK_ISSUED`] or [`TASK_RENEWED`].
//!
//! A failure is logged with the reason (an invalid token shows as trustd's `Unauthenticated`)
//! and retried; the worker's apid keeps serving with its current certificate meanwhile.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use basalt_api::securityapi::CertificateRequest;
use basalt_api::securityapi::security_service_client::SecurityServiceClient;
use basalt_config::{Host, MachineConfig, TRUSTD_PORT};
use basalt_pki::{Identity, KeyAlgorithm, SubjectAltName, build_csr, validate_common_name};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tonic::transport::{Endpoint, Uri};

use crate::apid::{self, ApidFiles, is_dns_name};
use crate::events::{EventBus, EventPayload};
use crate::pki_reconcile::{ConfigFeed, issued_by_machine_ca, node_hostname, pki_changed};
use crate::supervise::stopped;

/// Task name of the event published when the first certificate is written.
pub const TASK_ISSUED: &str = "issueApidCertificateFromTrustd";

/// Task name of the event published when a renewed certificate is written.
pub const TASK_RENEWED: &str = "renewApidCertificateFromTrustd";

/// How long one attempt (connect, handshake and call) may take (Talos: 10 s).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shortest wait before renewing, so a certificate that is already (nearly) expired does not
/// make machined call trustd in a tight loop.
pub const MIN_RENEW_DELAY: Duration = Duration::from_secs(1);

/// Why a certificate could not be obtained from trustd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `cluster.endpoints` named nothing to call.
    #[error("cluster.endpoints is empty: no trustd to ask for a certificate")]
    NoEndpoints,
    /// The CA bundle could not be read from the machine config.
    #[error("read the CA bundle from the machine config")]
    Bundle {
        /// What failed.
        #[source]
        source: apid::Error,
    },
    /// `machine.ca.crt` does not hold a certificate with a supported key type.
    #[error("read the key type of machine.ca.crt")]
    KeyAlgorithm {
        /// What basalt-pki refused.
        #[source]
        source: basalt_pki::Error,
    },
    /// Building the key and CSR failed.
    #[error("build the certificate signing request")]
    Csr {
        /// What basalt-pki refused.
        #[source]
        source: basalt_pki::Error,
    },
    /// The TLS client config could not be built from the CA bundle.
    #[error("build the TLS client config for trustd")]
    Tls {
        /// What was wrong with the bundle.
        #[source]
        source: basalt_pki::TlsError,
    },
    /// The connection to trustd failed.
    #[error("connect to trustd at {target}")]
    Connect {
        /// `host:port`.
        target: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// trustd answered with an error status (e.g. Unauthenticated "invalid token").
    #[error("trustd at {target} refused the CSR: {code:?}: {message}")]
    Refused {
        /// `host:port`.
        target: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// trustd's message.
        message: String,
    },
    /// The attempt took longer than [`ATTEMPT_TIMEOUT`].
    #[error("trustd at {target} did not answer within {timeout:?}")]
    Timeout {
        /// `host:port`.
        target: String,
        /// The limit.
        timeout: Duration,
    },
    /// trustd's certificate does not parse or is not a serverAuth certificate.
    #[error("trustd at {target} returned an unusable certificate")]
    BadCertificate {
        /// `host:port`.
        target: String,
        /// Why it is unusable.
        #[source]
        source: basalt_pki::Error,
    },
    /// The returned certificate is not valid for serverAuth.
    #[error("trustd at {target} returned a certificate without serverAuth")]
    NotServerAuth {
        /// `host:port`.
        target: String,
    },
    /// The returned certificate or CA bundle is not UTF-8 PEM.
    #[error("trustd at {target} returned a {what} that is not UTF-8")]
    NotUtf8 {
        /// `host:port`.
        target: String,
        /// "certificate" or "CA bundle".
        what: &'static str,
    },
    /// Writing the credentials into `<state>/apid/` failed.
    #[error("write apid's credentials")]
    Write {
        /// What failed.
        #[source]
        source: apid::Error,
    },
    /// The blocking task writing the credentials panicked or was cancelled.
    #[error("write apid's credentials on the blocking pool")]
    WriteTask {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A trustd endpoint: `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host (DNS name or IP address).
    pub host: Host,
    /// The port (50001 unless the endpoint says otherwise).
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Dns(ref name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// The trustd endpoints: every `cluster.endpoints` entry, [`TRUSTD_PORT`] unless it names one.
pub fn targets(machine: &MachineConfig) -> Vec<Target> {
    machine
        .endpoints()
        .iter()
        .map(|endpoint| Target {
            host: endpoint.host().clone(),
            port: endpoint.port_or(TRUSTD_PORT),
        })
        .collect()
}

/// The CSR's SANs, sorted and without duplicates: `127.0.0.1`, apid's listen address when it
/// is a specific one, the hostname (when it is a valid DNS name) and every `machine.certSANs`
/// entry that is a valid certificate name.
pub fn csr_sans(machine: &MachineConfig, hostname: &str) -> Vec<SubjectAltName> {
    let mut sans = vec![SubjectAltName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    let listen = machine.apid_listen().ip();
    if !listen.is_unspecified() {
        sans.push(SubjectAltName::Ip(listen));
    }
    if is_dns_name(hostname) {
        sans.push(SubjectAltName::Dns(hostname.to_owned()));
    }
    for host in machine.cert_sans() {
        match host {
            Host::Ip(ip) => sans.push(SubjectAltName::Ip(*ip)),
            Host::Dns(name) if is_dns_name(name) => sans.push(SubjectAltName::Dns(name.clone())),
            Host::Dns(name) => {
                tracing::warn!(name = %name, "Skipping a SAN that is not a valid DNS name");
            }
        }
    }
    sans.sort();
    sans.dedup();
    sans
}

/// The CSR's CN: the hostname, or none when it is not a valid common name.
pub fn common_name(hostname: &str) -> &str {
    if validate_common_name(hostname).is_ok() {
        hostname
    } else {
        ""
    }
}

/// Exponential backoff with jitter between failed attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBackoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// The delay doubles after each failure, up to this cap.
    pub max: Duration,
    /// Up to this much is added at random, so that workers do not retry in lockstep.
    pub jitter: Duration,
}

impl Default for RetryBackoff {
    /// 1 s doubling to at most 30 s, plus up to 100 ms of jitter (Talos: 1 s units, 100 ms
    /// jitter).
    fn default() -> Self {
        RetryBackoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: Duration::from_millis(100),
        }
    }
}

impl RetryBackoff {
    /// The wait after `failures` consecutive failures (1 = the first), with `random` picking
    /// the jitter: `random / u32::MAX` of [`RetryBackoff::jitter`].
    pub fn delay(&self, failures: u32, random: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let base = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        let fraction = f64::from(random) / f64::from(u32::MAX);
        base + self.jitter.mul_f64(fraction)
    }
}

/// A certificate trustd issued, with the key it was issued for.
#[derive(Clone)]
pub struct Issued {
    /// The private key (PEM).
    pub key_pem: String,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// trustd's accepted-CA bundle (PEM).
    pub ca_pem: String,
    /// The parsed certificate.
    pub identity: Identity,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.identity.serial)
            .field("not_after", &self.identity.not_after)
            .finish_non_exhaustive()
    }
}

/// One attempt: a fresh key and CSR sent to `target`, bounded by [`ATTEMPT_TIMEOUT`].
pub async fn request(
    machine: &MachineConfig,
    hostname: &str,
    target: &Target,
) -> Result<Issued, Error> {
    let bundle = apid::ca_bundle(machine).map_err(|source| Error::Bundle { source })?;
    let alg = KeyAlgorithm::of_certificate_pem(&bundle_last_or_first(machine, &bundle))
        .map_err(|source| Error::KeyAlgorithm { source })?;
    let (csr, key) = build_csr(common_name(hostname), &csr_sans(machine, hostname), alg)
        .map_err(|source| Error::Csr { source })?;
    let tls = basalt_pki::client_config(bundle.as_bytes(), None)
        .map_err(|source| Error::Tls { source })?;
    let name = target.to_string();
    let call = call(target, Arc::new(tls), machine.token().as_str(), csr);
    let (ca, crt) = tokio::time::timeout(ATTEMPT_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout {
            target: name.clone(),
            timeout: ATTEMPT_TIMEOUT,
        })??;
    let cert_pem = String::from_utf8(crt).map_err(|_| Error::NotUtf8 {
        target: name.clone(),
        what: "certificate",
    })?;
    let identity = Identity::from_pem(&cert_pem).map_err(|source| Error::BadCertificate {
        target: name.clone(),
        source,
    })?;
    if !identity.ext_key_usage.server_auth {
        return Err(Error::NotServerAuth { target: name });
    }
    let ca_pem = String::from_utf8(ca).map_err(|_| Error::NotUtf8 {
        target: name.clone(),
        what: "CA bundle",
    })?;
    Ok(Issued {
        key_pem: key.to_pem(),
        cert_pem,
        ca_pem,
        identity,
    })
}

/// The CA whose key type the CSR must have: Talos takes the last accepted CA; basalt's
/// trustd signs with `machine.ca`, so that one (the first of the bundle) is used.
fn bundle_last_or_first(machine: &MachineConfig, bundle: &str) -> String {
    machine
        .ca_crt()
        .as_str()
        .map_or_else(|_| bundle.to_owned(), str::to_owned)
}

/// Connects (server-auth TLS, ALPN h2) and calls `Certificate`; returns `(ca, crt)`.
async fn call(
    target: &Target,
    tls: Arc<rustls::ClientConfig>,
    token: &str,
    csr: String,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let name = target.to_string();
    let server_name = match &target.host {
        Host::Ip(ip) => ServerName::from(*ip),
        Host::Dns(dns) => ServerName::try_from(dns.clone()).unwrap_or_else(|_| {
            // A valid `Host::Dns` is always a valid server name; an IP literal is the fallback.
            ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }),
    };
    let addr = name.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let tls = Arc::clone(&tls);
        let addr = addr.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect(addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(tls).connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The authority is ignored: the connector decides where the connection goes.
    let channel = Endpoint::from_static("http://trustd.invalid")
        .connect_timeout(ATTEMPT_TIMEOUT)
        .connect_with_connector(connector)
        .await
        .map_err(|source| Error::Connect {
            target: name.clone(),
            source,
        })?;
    let mut request = tonic::Request::new(CertificateRequest {
        csr: csr.into_bytes(),
    });
    let token = token.parse().map_err(|_| Error::Refused {
        target: name.clone(),
        code: tonic::Code::InvalidArgument,
        message: "machine.token is not valid metadata".to_owned(),
    })?;
    request.metadata_mut().insert("token", token);
    let response = SecurityServiceClient::new(channel)
        .certificate(request)
        .await
        .map_err(|status| Error::Refused {
            target: name,
            code: status.code(),
            message: status.message().to_owned(),
        })?
        .into_inner();
    Ok((response.ca, response.crt))
}

/// How long to wait before renewing a certificate valid until `not_after`: half its
/// remaining lifetime, at least [`MIN_RENEW_DELAY`].
pub fn renew_delay(not_after: time::OffsetDateTime, now: time::OffsetDateTime) -> Duration {
    let remaining = Duration::try_from(not_after - now).unwrap_or(Duration::ZERO);
    (remaining / 2).max(MIN_RENEW_DELAY)
}

/// Obtains apid's certificate from trustd and keeps it renewed until `stop`, following the
/// active config (`feed`): a change of `machine.ca`, `acceptedCAs` or what the SANs come from
/// rewrites apid's `ca.pem` at once, and requests a new certificate when the current one is not
/// issued by the new `machine.ca` or its SANs change (`crate::pki_reconcile`).
///
/// `on_first` runs once, after the first certificate is written (it starts apid).
/// Failures are logged and retried round-robin over [`targets`] with `backoff`.
pub(crate) async fn run(
    mut feed: ConfigFeed,
    files: ApidFiles,
    kernel_hostname: String,
    backoff: RetryBackoff,
    events: EventBus,
    on_first: impl FnOnce() + Send,
    mut stop: watch::Receiver<bool>,
) {
    let mut machine = feed.current();
    let mut on_first = Some(on_first);
    let mut next = 0usize;
    let mut failures = 0u32;
    loop {
        let targets = targets(&machine);
        let wait = match targets.get(next % targets.len().max(1)) {
            None => {
                tracing::error!(error = %Error::NoEndpoints, "Cannot obtain apid's certificate");
                // Nothing to call until a config names an endpoint.
                None
            }
            Some(target) => Some(
                attempt(
                    &machine,
                    &files,
                    node_hostname(&machine, &kernel_hostname),
                    target,
                    &backoff,
                    &events,
                    &mut on_first,
                    &mut next,
                    &mut failures,
                )
                .await,
            ),
        };
        let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
        // Wait for the renewal (or retry) time, or for a config change that needs a new
        // certificate now.
        loop {
            tokio::select! {
                () = sleep_until_or_forever(deadline) => break,
                () = feed.changed() => {
                    let updated = feed.current();
                    if !pki_changed(&machine, &updated, &kernel_hostname) {
                        machine = updated;
                        continue;
                    }
                    let sans = |config| csr_sans(config, node_hostname(config, &kernel_hostname));
                    let reissue = machine.ca_crt() != updated.ca_crt()
                        || sans(&machine) != sans(&updated)
                        || !issued_by_machine_ca(&files.cert, &updated);
                    machine = updated;
                    write_ca_bundle(&machine, &files);
                    if reissue || deadline.is_none() {
                        tracing::info!(
                            "The machine config changed what apid's certificate depends on; \
                             requesting a new one from trustd"
                        );
                        failures = 0;
                        break;
                    }
                }
                () = stopped(&mut stop) => return,
            }
        }
    }
}

/// One request to `target` and what follows from it; returns how long to wait before the
/// next one (the renewal time, or the backoff after a failure).
#[allow(clippy::too_many_arguments)]
async fn attempt(
    machine: &MachineConfig,
    files: &ApidFiles,
    hostname: &str,
    target: &Target,
    backoff: &RetryBackoff,
    events: &EventBus,
    on_first: &mut Option<impl FnOnce() + Send>,
    next: &mut usize,
    failures: &mut u32,
) -> Duration {
    let outcome = match request(machine, hostname, target).await {
        Ok(issued) => {
            // apid accepts clients of the CAs this node's config trusts; trustd's bundle is
            // the fallback if the config's cannot be read.
            let bundle = apid::ca_bundle(machine).unwrap_or_else(|_| issued.ca_pem.clone());
            // Three fsynced atomic writes: on the blocking pool, not on machined's one runtime
            // thread that serves every call.
            let (files, key, cert) = (
                files.clone(),
                issued.key_pem.clone(),
                issued.cert_pem.clone(),
            );
            match tokio::task::spawn_blocking(move || {
                apid::write_credentials(&files, &key, &cert, &bundle)
            })
            .await
            {
                Ok(written) => written
                    .map(|()| issued)
                    .map_err(|source| Error::Write { source }),
                Err(join) => Err(Error::WriteTask { source: join }),
            }
        }
        Err(err) => Err(err),
    };
    match outcome {
        Ok(issued) => {
            let renewal = on_first.is_none();
            tracing::info!(
                trustd = %target,
                serial = %issued.identity.serial,
                not_after = %issued.identity.not_after,
                "{}",
                if renewal {
                    "Renewed apid's server certificate from trustd"
                } else {
                    "Obtained apid's server certificate from trustd"
                }
            );
            events.publish(
                EventPayload::Task(basalt_api::machine::TaskEvent {
                    task: if renewal { TASK_RENEWED } else { TASK_ISSUED }.to_owned(),
                    action: basalt_api::machine::task_event::Action::Stop as i32,
                }),
                None,
            );
            if let Some(start) = on_first.take() {
                start();
            }
            if issued_by_machine_ca(&files.cert, machine) {
                *failures = 0;
                renew_delay(issued.identity.not_after, time::OffsetDateTime::now_utc())
            } else {
                // trustd still signs with another CA (it reloads a new `machine.ca` within a
                // second or two of its control plane): keep this certificate, ask again soon.
                *failures = failures.saturating_add(1);
                let delay = backoff.delay(*failures, random_u32());
                tracing::warn!(
                    trustd = %target,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "trustd's certificate is not issued by machine.ca; asking again"
                );
                delay
            }
        }
        Err(err) => {
            *failures = failures.saturating_add(1);
            *next = next.wrapping_add(1);
            let delay = backoff.delay(*failures, random_u32());
            tracing::warn!(
                trustd = %target,
                attempt = *failures,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = &err as &dyn std::error::Error,
                "Cannot obtain apid's server certificate from trustd"
            );
            delay
        }
    }
}

/// Rewrites apid's `ca.pem` from `machine` (apid reloads it); a failure is logged and the
/// next certificate write tries again.
fn write_ca_bundle(machine: &MachineConfig, files: &ApidFiles) {
    let written = apid::ca_bundle(machine).and_then(|bundle| {
        basalt_config::fs::write_atomic(
            &files.ca,
            bundle.as_bytes(),
            0o644,
            basalt_config::fs::Overwrite::Allow,
        )
        .map_err(|source| apid::Error::Write {
            what: "CA bundle",
            source,
        })
    });
    match written {
        Ok(()) => tracing::info!("Rewrote apid's CA bundle from the machine config"),
        Err(err) => tracing::error!(
            error = &err as &dyn std::error::Error,
            "Cannot rewrite apid's CA bundle"
        ),
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => u32::from_ne_bytes(bytes),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use basalt_config::{BundleCerts, CertAndKey, MachineType, SecretsBundle};
    use basalt_pki::{CaOptions, CertificateAuthority};

    use super::*;

    fn worker(endpoint: &str) -> MachineConfig {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
        let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
        MachineConfig::generate(&bundle, "dev", endpoint, MachineType::Worker).expect("config")
    }

    #[test]
    fn targets_default_to_port_50001() {
        let machine = worker("10.5.0.2");
        assert_eq!(
            targets(&machine)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.5.0.2:50001"]
        );
    }

    #[test]
    fn csr_sans_cover_loopback_and_hostname_only() {
        let machine = worker("10.5.0.2");
        let sans = csr_sans(&machine, "worker-1");
        assert!(sans.contains(&SubjectAltName::Ip("127.0.0.1".parse().expect("ip"))));
        assert!(sans.contains(&SubjectAltName::Dns("worker-1".to_owned())));
        // The control plane's endpoint is not this node's name.
        assert!(!sans.contains(&SubjectAltName::Ip("10.5.0.2".parse().expect("ip"))));
        let mut sorted = sans.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sans, sorted);
        assert!(
            !csr_sans(&machine, "not a name")
                .iter()
                .any(|s| matches!(s, SubjectAltName::Dns(_)))
        );
    }

    #[test]
    fn csr_key_matches_the_ca_and_has_no_organization() {
        let machine = worker("10.5.0.2");
        let pem = machine.ca_crt().as_str().expect("pem");
        let alg = KeyAlgorithm::of_certificate_pem(pem).expect("alg");
        assert_eq!(alg, KeyAlgorithm::Ed25519);
        let (csr, _key) = build_csr(
            common_name("worker-1"),
            &csr_sans(&machine, "worker-1"),
            alg,
        )
        .expect("csr");
        let parsed = basalt_pki::Csr::from_pem(csr.as_bytes()).expect("parse");
        assert_eq!(parsed.common_name(), Some("worker-1"));
        assert!(parsed.requested_organizations().is_empty());
        assert_eq!(parsed.key_algorithm(), Some(KeyAlgorithm::Ed25519));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let backoff = RetryBackoff::default();
        assert_eq!(backoff.delay(1, 0), Duration::from_secs(1));
        assert_eq!(backoff.delay(2, 0), Duration::from_secs(2));
        assert_eq!(backoff.delay(3, 0), Duration::from_secs(4));
        assert_eq!(backoff.delay(10, 0), Duration::from_secs(30));
        assert_eq!(backoff.delay(u32::MAX, 0), Duration::from_secs(30));
        let jittered = backoff.delay(1, u32::MAX);
        assert!(jittered > Duration::from_secs(1));
        assert!(jittered <= Duration::from_millis(1100));
    }

    #[test]
    fn renewal_is_at_half_the_remaining_lifetime() {
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(
            renew_delay(now + time::Duration::hours(24), now),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            renew_delay(now - time::Duration::hours(1), now),
            MIN_RENEW_DELAY
        );
    }
}
