//! `basalt.v1.CertificateService`: the node's CAs and certificates with their validity, so an
//! operator sees what expires when and a CA rotation can be followed node by node.
//!
//! # What `Status` reports, in order
//!
//! 1. `ca-issuing`: `machine.ca` of the active machine config (the CA that signs the node's
//!    certificates; on a worker, the CA trustd signs with);
//! 2. `ca-accepted`: each `machine.acceptedCAs` entry not equal to `machine.ca`;
//! 3. `apid-server`: apid's server certificate (`<state>/apid/server.crt`);
//! 4. `apid-client`: apid's `os:impersonator` certificate (`<state>/apid/client.crt`; control
//!    planes only);
//! 5. `trustd-server`: trustd's server certificate (`<state>/trustd/server.crt`; control planes
//!    running trustd).
//!
//! The files are read at each call, so the answer is what the daemons load next, whatever
//! renewed it. A file that is missing or does not parse (a worker still waiting for trustd) is
//! reported in that entry's `error`, never as a failed call: the CAs are still worth seeing.
//! `issuer_fingerprint` names the accepted CA whose key signed each certificate (a signature
//! check: during a rotation the old and the new CA have the same subject).
//!
//! The reply holds public certificate fields only, never a key (rule: admin, operator, reader).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use basalt_api::basalt::v1::{
    CertificateInfo, CertificateStatus, CertificateStatusRequest, CertificateStatusResponse,
    certificate_service_server::CertificateService,
};
use basalt_config::MachineConfig;
use basalt_pki::Identity;
use tonic::{Request, Response, Status};

use super::blocking;
use crate::apid::ApidFiles;
use crate::trustd::TrustdFiles;

/// Where the machine config comes from at each request.
type Source = Arc<dyn Fn() -> Option<MachineConfig> + Send + Sync>;

/// The `CertificateService` implementation.
#[derive(Clone)]
pub(crate) struct CertificateApi {
    /// The active machine config, read at each request so a config apply that rotates the CA
    /// is followed; `None` (machined without one, as in some tests) reports no CA.
    source: Source,
    /// apid's files, when machined runs apid.
    apid: Option<ApidFiles>,
    /// trustd's files, when machined runs trustd (control planes).
    trustd: Option<TrustdFiles>,
}

impl CertificateApi {
    /// Reports the CAs of whatever `source` returns at each request and the certificates in
    /// `apid`'s and `trustd`'s files.
    pub(crate) fn new(
        source: impl Fn() -> Option<MachineConfig> + Send + Sync + 'static,
        apid: Option<ApidFiles>,
        trustd: Option<TrustdFiles>,
    ) -> Self {
        CertificateApi {
            source: Arc::new(source),
            apid,
            trustd,
        }
    }

    /// Builds the reply (blocking: reads files and verifies signatures).
    fn status(&self) -> CertificateStatus {
        let machine = (self.source)();
        let cas = machine.as_ref().map(accepted_cas).unwrap_or_default();
        let mut certificates: Vec<CertificateInfo> = cas
            .iter()
            .map(|ca| describe(ca.role, ca.source.clone(), &ca.der, &cas))
            .collect();

        let holds_ca_key = machine.as_ref().is_some_and(|m| m.ca_key().is_some());
        let mut files: Vec<(&'static str, PathBuf)> = Vec::new();
        if let Some(apid) = &self.apid {
            files.push((ROLE_APID_SERVER, apid.cert.clone()));
            if holds_ca_key {
                files.push((ROLE_APID_CLIENT, apid.forwarding.cert.clone()));
            }
        }
        if let Some(trustd) = &self.trustd {
            files.push((ROLE_TRUSTD_SERVER, trustd.cert.clone()));
        }
        for (role, path) in files {
            let source = path.display().to_string();
            certificates.push(match read_leaf(&path) {
                Ok(der) => describe(role, source, &der, &cas),
                Err(error) => failed(role, source, error),
            });
        }
        CertificateStatus {
            metadata: None,
            certificates,
            now: unix_seconds(SystemTime::now()),
        }
    }
}

impl std::fmt::Debug for CertificateApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateApi")
            .field("apid", &self.apid)
            .field("trustd", &self.trustd)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl CertificateService for CertificateApi {
    async fn status(
        &self,
        _request: Request<CertificateStatusRequest>,
    ) -> Result<Response<CertificateStatusResponse>, Status> {
        let api = self.clone();
        let status = blocking(move || Ok(api.status())).await?;
        Ok(Response::new(CertificateStatusResponse {
            messages: vec![status],
        }))
    }
}

/// `role` of `machine.ca`.
const ROLE_CA_ISSUING: &str = "ca-issuing";
/// `role` of a `machine.acceptedCAs` entry.
const ROLE_CA_ACCEPTED: &str = "ca-accepted";
/// `role` of apid's server certificate.
const ROLE_APID_SERVER: &str = "apid-server";
/// `role` of apid's impersonator client certificate.
const ROLE_APID_CLIENT: &str = "apid-client";
/// `role` of trustd's server certificate.
const ROLE_TRUSTD_SERVER: &str = "trustd-server";

/// One CA the node accepts, as DER.
#[derive(Debug)]
struct AcceptedCa {
    role: &'static str,
    source: String,
    der: Vec<u8>,
}

/// `machine.ca` then the `machine.acceptedCAs` entries that differ from it; a PEM that does not
/// hold a certificate is skipped (config validation already refused such configs).
fn accepted_cas(machine: &MachineConfig) -> Vec<AcceptedCa> {
    let first_der = |pem: &[u8]| {
        basalt_pki::certificates_from_pem(pem)
            .ok()
            .and_then(|certs| certs.into_iter().next())
            .map(|der| der.as_ref().to_vec())
    };
    let mut cas = Vec::new();
    if let Some(der) = first_der(machine.ca_crt().as_bytes()) {
        cas.push(AcceptedCa {
            role: ROLE_CA_ISSUING,
            source: "machine.ca".to_owned(),
            der,
        });
    }
    for (i, crt) in machine.accepted_cas().iter().enumerate() {
        let Some(der) = first_der(crt.as_bytes()) else {
            continue;
        };
        if cas.iter().any(|ca| ca.der == der) {
            continue;
        }
        cas.push(AcceptedCa {
            role: ROLE_CA_ACCEPTED,
            source: format!("machine.acceptedCAs[{i}]"),
            der,
        });
    }
    cas
}

/// The leaf (first certificate) of the PEM file at `path`.
fn read_leaf(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|err| format!("cannot read: {err}"))?;
    let certs = basalt_pki::certificates_from_pem(&pem)
        .map_err(|err| format!("cannot parse: {}", basalt_daemon::error_chain(&err)))?;
    certs
        .into_iter()
        .next()
        .map(|der| der.as_ref().to_vec())
        .ok_or_else(|| "holds no certificate".to_owned())
}

/// Every field of the certificate `der`; `cas` are searched for its signer.
fn describe(role: &str, source: String, der: &[u8], cas: &[AcceptedCa]) -> CertificateInfo {
    let identity = match Identity::from_der(der) {
        Ok(identity) => identity,
        Err(err) => {
            return failed(
                role,
                source,
                format!("cannot parse: {}", basalt_daemon::error_chain(&err)),
            );
        }
    };
    let issuer_fingerprint = cas
        .iter()
        .find(|ca| basalt_pki::is_issued_by(der, &ca.der).unwrap_or(false))
        .and_then(|ca| Identity::from_der(&ca.der).ok())
        .map(|ca| ca.fingerprint)
        .unwrap_or_default();
    CertificateInfo {
        role: role.to_owned(),
        source,
        common_name: identity.common_name.unwrap_or_default(),
        organizations: identity.organizations,
        serial: identity.serial,
        fingerprint: identity.fingerprint,
        issuer_common_name: basalt_pki::issuer_common_name(der)
            .ok()
            .flatten()
            .unwrap_or_default(),
        issuer: identity.issuer,
        issuer_fingerprint,
        not_before: identity.not_before.unix_timestamp(),
        not_after: identity.not_after.unix_timestamp(),
        dns_names: identity.dns_names,
        ip_addresses: identity
            .ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        error: String::new(),
    }
}

fn failed(role: &str, source: String, error: String) -> CertificateInfo {
    CertificateInfo {
        role: role.to_owned(),
        source,
        error,
        ..CertificateInfo::default()
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use basalt_authz::RoleSet;
    use basalt_config::{
        Base64Pem, BundleCerts, CertAndKey, MachineType, RawMachineConfig, SecretsBundle,
    };
    use basalt_pki::{CaOptions, CertificateAuthority, ClientCertRequest, ServerCertRequest};

    use super::*;

    fn machine(ca: &CertificateAuthority, accepted: &[&CertificateAuthority]) -> MachineConfig {
        let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
        let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
        let mut raw =
            RawMachineConfig::generate(&bundle, "test", "127.0.0.1", MachineType::ControlPlane);
        raw.machine.accepted_cas = accepted
            .iter()
            .map(|ca| basalt_config::machine::RawCertificate {
                crt: Some(Base64Pem::from_pem(ca.cert_pem())),
            })
            .collect();
        MachineConfig::try_from(raw).expect("valid config")
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn status_lists_cas_then_files_and_names_each_signer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = CertificateAuthority::generate(&CaOptions::talos_os()).expect("old ca");
        let new = CertificateAuthority::generate(&CaOptions::talos_os()).expect("new ca");
        // The window of a rotation: issuing with the new CA, the old one still accepted (and
        // the new one listed again in acceptedCAs, which must not be reported twice).
        let config = machine(&new, &[&old, &new]);
        let apid = ApidFiles::under(dir.path()).expect("apid files");
        let trustd = TrustdFiles::under(dir.path()).expect("trustd files");
        let server = new
            .issue_server(&ServerCertRequest {
                common_name: Some("node-1".to_owned()),
                sans: vec![basalt_pki::SubjectAltName::Ip(
                    "127.0.0.1".parse().expect("ip"),
                )],
                ttl: Duration::from_secs(3600),
            })
            .expect("server cert");
        write(&apid.cert, &server.cert_pem);
        // Still the old CA's: not renewed yet.
        let client = old
            .issue_client(&ClientCertRequest {
                common_name: Some("apid".to_owned()),
                roles: RoleSet::parse(["os:impersonator"]),
                ttl: Duration::from_secs(3600),
            })
            .expect("client cert");
        write(&apid.forwarding.cert, &client.cert_pem);

        let api = CertificateApi::new(move || Some(config.clone()), Some(apid), Some(trustd));
        let status = api.status();
        let roles: Vec<&str> = status
            .certificates
            .iter()
            .map(|c| c.role.as_str())
            .collect();
        assert_eq!(
            roles,
            [
                ROLE_CA_ISSUING,
                ROLE_CA_ACCEPTED,
                ROLE_APID_SERVER,
                ROLE_APID_CLIENT,
                ROLE_TRUSTD_SERVER
            ]
        );
        let new_fp = Identity::from_der(new.cert_der()).expect("id").fingerprint;
        let old_fp = Identity::from_der(old.cert_der()).expect("id").fingerprint;
        let [issuing, accepted, apid_server, apid_client, trustd_server] = &status.certificates[..]
        else {
            panic!("five entries");
        };
        assert_eq!(issuing.fingerprint, new_fp);
        assert_eq!(issuing.issuer_fingerprint, new_fp);
        assert_eq!(issuing.organizations, ["talos"]);
        assert_eq!(accepted.fingerprint, old_fp);
        assert_eq!(accepted.source, "machine.acceptedCAs[0]");

        let server_id = Identity::from_pem(&server.cert_pem).expect("id");
        assert_eq!(apid_server.serial, server_id.serial);
        assert_eq!(apid_server.common_name, "node-1");
        assert_eq!(apid_server.issuer, "O=talos");
        assert_eq!(apid_server.issuer_common_name, "");
        assert_eq!(apid_server.issuer_fingerprint, new_fp);
        assert_eq!(apid_server.ip_addresses, ["127.0.0.1"]);
        assert_eq!(
            apid_server.not_after,
            server_id.not_after.unix_timestamp(),
            "unix seconds"
        );
        assert!(apid_server.error.is_empty());

        assert_eq!(apid_client.issuer_fingerprint, old_fp);
        assert_eq!(apid_client.organizations, ["os:impersonator"]);

        assert!(
            trustd_server.error.starts_with("cannot read"),
            "{}",
            trustd_server.error
        );
        assert!(trustd_server.serial.is_empty());
        assert!(status.now > 0);
    }

    #[test]
    fn a_garbage_file_and_a_foreign_signer_are_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("ca");
        let foreign = CertificateAuthority::generate(&CaOptions::talos_os()).expect("foreign");
        let apid = ApidFiles::under(dir.path()).expect("apid files");
        write(&apid.cert, "not a certificate");
        let foreign_leaf = foreign
            .issue_client(&ClientCertRequest {
                common_name: None,
                roles: RoleSet::parse(["os:impersonator"]),
                ttl: Duration::from_secs(60),
            })
            .expect("client");
        write(&apid.forwarding.cert, &foreign_leaf.cert_pem);
        let config = machine(&ca, &[]);
        let status = CertificateApi::new(move || Some(config.clone()), Some(apid), None).status();
        assert_eq!(status.certificates.len(), 3);
        assert!(
            !status.certificates[1].error.is_empty(),
            "{:?}",
            status.certificates[1]
        );
        assert!(status.certificates[2].error.is_empty());
        assert!(status.certificates[2].issuer_fingerprint.is_empty());
    }

    #[test]
    fn without_a_machine_config_nothing_is_listed() {
        let status = CertificateApi::new(|| None, None, None).status();
        assert!(status.certificates.is_empty());
    }
}
