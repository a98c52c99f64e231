//! Test PKI, generated at test time: the node's OS CA and one client certificate per [`Cert`].
//!
//! Certificates come from `basalt_pki` (the code `basaltctl gen` runs) where it can make them;
//! the deliberately bad ones it refuses to make (expired, not yet valid, serverAuth +
//! clientAuth, no EKU) are made with rcgen directly and signed by the same CA, so each is
//! refused for exactly one reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_authz::{Role, RoleSet};
use basalt_config::fs::{Overwrite, write_atomic};
use basalt_config::{BundleCerts, CertAndKey, SecretsBundle};
use basalt_pki::{CaOptions, CertificateAuthority, ClientCertRequest, IssuedCert, KeyAlgorithm};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

/// Lifetime of the good client certificates.
const CLIENT_TTL: Duration = Duration::from_secs(24 * 3600);

/// A client identity the tests can present to apid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cert {
    /// `O=os:admin`.
    Admin,
    /// `O=os:operator`.
    Operator,
    /// `O=os:reader`.
    Reader,
    /// Chained to the node's CA, EKU clientAuth, but no Organization at all: no roles.
    NoOrganization,
    /// `O=os:admin`, but issued by a CA the node does not know.
    OtherCa,
    /// `O=os:admin`, chained to the node's CA, expired an hour ago.
    Expired,
    /// `O=os:admin`, chained to the node's CA, valid only from tomorrow.
    NotYetValid,
    /// `O=os:admin`, chained to the node's CA, EKU serverAuth **and** clientAuth.
    ServerAndClientEku,
    /// `O=os:admin`, chained to the node's CA, without an EKU extension ("any purpose").
    NoEku,
    /// Chained to the node's CA, EKU clientAuth, Organization values that are no basalt role:
    /// `O=os:future` and `O=admin`.
    UnknownRoles,
}

impl Cert {
    /// Every variant, for writing the files.
    pub const ALL: [Cert; 10] = [
        Cert::Admin,
        Cert::Operator,
        Cert::Reader,
        Cert::NoOrganization,
        Cert::OtherCa,
        Cert::Expired,
        Cert::NotYetValid,
        Cert::ServerAndClientEku,
        Cert::NoEku,
        Cert::UnknownRoles,
    ];

    /// A short file-name-friendly name.
    pub fn name(self) -> &'static str {
        match self {
            Cert::Admin => "admin",
            Cert::Operator => "operator",
            Cert::Reader => "reader",
            Cert::NoOrganization => "no-organization",
            Cert::OtherCa => "other-ca",
            Cert::Expired => "expired",
            Cert::NotYetValid => "not-yet-valid",
            Cert::ServerAndClientEku => "server-and-client-eku",
            Cert::NoEku => "no-eku",
            Cert::UnknownRoles => "unknown-roles",
        }
    }
}

/// A certificate and its key, as PEM, plus where they were written.
#[derive(Clone)]
pub struct Credentials {
    /// The leaf certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The file holding `cert_pem`.
    pub cert_path: PathBuf,
    /// The file holding `key_pem` (mode 0600).
    pub key_path: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cert_path", &self.cert_path)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The node's CA and every test client certificate, written under one directory.
pub struct TestPki {
    ca: CertificateAuthority,
    ca_path: PathBuf,
    secrets_path: PathBuf,
    creds: Vec<(Cert, Credentials)>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("ca_path", &self.ca_path)
            .field("certs", &self.creds.len())
            .finish()
    }
}

impl TestPki {
    /// Generates the CA (key type `algorithm`; every leaf follows it) and every [`Cert`], and
    /// writes them to `dir`: `ca.pem`, `<name>.crt` / `<name>.key`, and `secrets.yaml` (a
    /// secrets bundle around the CA, for `basaltctl gen client-config --with-secrets`).
    pub fn generate(dir: &Path, algorithm: KeyAlgorithm) -> TestPki {
        basalt_pki::install_crypto_provider();
        std::fs::create_dir_all(dir).expect("create the PKI directory");
        let options = CaOptions {
            algorithm,
            ..CaOptions::talos_os()
        };
        let ca = CertificateAuthority::generate(&options).expect("generate the CA");
        let other_ca = CertificateAuthority::generate(&options).expect("generate another CA");

        let ca_path = dir.join("ca.pem");
        write(&ca_path, ca.cert_pem(), 0o644);

        let bundle = SecretsBundle::new(BundleCerts::os_only(CertAndKey::from_pem(
            ca.cert_pem(),
            ca.key_pem(),
        )))
        .expect("build a secrets bundle");
        let secrets_path = dir.join("secrets.yaml");
        write(
            &secrets_path,
            &bundle.to_yaml().expect("render the secrets bundle"),
            0o600,
        );

        let now = OffsetDateTime::now_utc();
        let hour = time::Duration::hours(1);
        let creds = Cert::ALL
            .into_iter()
            .map(|cert| {
                let issued = match cert {
                    Cert::Admin => issue(&ca, [Role::Admin].into_iter().collect()),
                    Cert::Operator => issue(&ca, [Role::Operator].into_iter().collect()),
                    Cert::Reader => issue(&ca, [Role::Reader].into_iter().collect()),
                    Cert::NoOrganization => issue(&ca, RoleSet::default()),
                    Cert::OtherCa => issue(&other_ca, [Role::Admin].into_iter().collect()),
                    // basalt-pki writes whatever roles it is given; `basaltctl gen` is what
                    // refuses unknown ones.
                    Cert::UnknownRoles => issue(&ca, RoleSet::parse(["os:future", "admin"])),
                    Cert::Expired => odd_admin(
                        &ca,
                        now - 48 * hour,
                        now - hour,
                        &[ExtendedKeyUsagePurpose::ClientAuth],
                    ),
                    Cert::NotYetValid => odd_admin(
                        &ca,
                        now + 24 * hour,
                        now + 48 * hour,
                        &[ExtendedKeyUsagePurpose::ClientAuth],
                    ),
                    Cert::ServerAndClientEku => odd_admin(
                        &ca,
                        now - hour,
                        now + 24 * hour,
                        &[
                            ExtendedKeyUsagePurpose::ServerAuth,
                            ExtendedKeyUsagePurpose::ClientAuth,
                        ],
                    ),
                    Cert::NoEku => odd_admin(&ca, now - hour, now + 24 * hour, &[]),
                };
                let cert_path = dir.join(format!("{}.crt", cert.name()));
                let key_path = dir.join(format!("{}.key", cert.name()));
                write(&cert_path, &issued.cert_pem, 0o644);
                write(&key_path, &issued.key_pem, 0o600);
                (
                    cert,
                    Credentials {
                        cert_pem: issued.cert_pem,
                        key_pem: issued.key_pem,
                        cert_path,
                        key_path,
                    },
                )
            })
            .collect();

        TestPki {
            ca,
            ca_path,
            secrets_path,
            creds,
        }
    }

    /// The node's CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The CA certificate (PEM): clients verify apid's server certificate with it.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The file holding [`TestPki::ca_pem`].
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A secrets bundle around the node's CA (for `basaltctl gen client-config`).
    pub fn secrets_path(&self) -> &Path {
        &self.secrets_path
    }

    /// The certificate and key for `cert`.
    pub fn credentials(&self, cert: Cert) -> &Credentials {
        self.creds
            .iter()
            .find_map(|(c, creds)| (*c == cert).then_some(creds))
            .expect("every Cert variant is generated")
    }
}

/// A client certificate from `ca`: EKU clientAuth only, one Organization per role.
fn issue(ca: &CertificateAuthority, roles: RoleSet) -> IssuedCert {
    ca.issue_client(&ClientCertRequest {
        common_name: Some("e2e".to_owned()),
        roles,
        ttl: CLIENT_TTL,
    })
    .expect("issue a client certificate")
}

/// An `O=os:admin` certificate signed by `ca` with validity and EKUs basalt-pki would refuse;
/// no EKUs means no EKU extension at all.
fn odd_admin(
    ca: &CertificateAuthority,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ekus: &[ExtendedKeyUsagePurpose],
) -> IssuedCert {
    let ca_key = KeyPair::from_pem(&ca.key_pem()).expect("load the CA key into rcgen");
    let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).expect("rcgen issuer");
    let algorithm = match ca.algorithm() {
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let key = KeyPair::generate_for(algorithm).expect("generate a leaf key");

    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, Role::Admin.as_str());
    name.push(DnType::CommonName, "e2e-odd");
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus.to_vec();
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("sign the leaf");
    IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    write_atomic(path, text.as_bytes(), mode, Overwrite::Allow)
        .unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}
