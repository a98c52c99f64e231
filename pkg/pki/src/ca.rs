//! The certificate authority: generation, loading, and issuing client and server leaves.
//!
//! Every leaf goes through `CertificateAuthority::sign_leaf`, which fixes the extensions from
//! the kind of certificate being made and then writes the issuer and subject names itself.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE};

use crate::der::{self, tag};
use crate::error::Error;
use crate::key::{KeyAlgorithm, PrivateKey};
use crate::name::{SubjectAltName, validate_common_name, validate_organization};
use crate::pem::{self as pem_util, CERTIFICATE_LABEL};

/// How far certificates issued by [`CertificateAuthority::issue_client`],
/// [`CertificateAuthority::issue_server`] and [`CertificateAuthority::generate`] are backdated.
///
/// A freshly issued certificate must be accepted at once by a peer whose clock runs a little
/// behind the issuing machine's; without this, apid rejects a brand-new client certificate as
/// "not yet valid" for the first minutes. CSRs signed under a [`crate::SigningPolicy`] (trustd)
/// are *not* backdated, as in Talos, which regenerates them when time sync changes.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// Lifetime of the OS CA Talos generates: 87600 h, ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);

/// Organization of the Talos OS CA, kept so that bundles interoperate with Talos.
pub const TALOS_CA_ORGANIZATION: &str = "talos";

/// Bytes of randomness in a serial number (the top bit is cleared to keep it positive).
const SERIAL_LEN: usize = 16;

/// Bytes of the CA's subject key identifier (Talos uses 20 random bytes, not a key hash).
const CA_KEY_ID_LEN: usize = 20;

/// Parameters for a new CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaOptions {
    /// Key type of the CA; leaves follow it.
    pub algorithm: KeyAlgorithm,
    /// Subject Organization.
    pub organization: Option<String>,
    /// Subject common name.
    pub common_name: Option<String>,
    /// Lifetime from now.
    pub validity: Duration,
}

impl CaOptions {
    /// What Talos makes for its OS CA: Ed25519, `O=talos`, no CN, ten years.
    pub fn talos_os() -> Self {
        Self {
            algorithm: KeyAlgorithm::Ed25519,
            organization: Some(TALOS_CA_ORGANIZATION.to_owned()),
            common_name: None,
            validity: CA_VALIDITY,
        }
    }
}

impl Default for CaOptions {
    fn default() -> Self {
        Self::talos_os()
    }
}

/// A client certificate to issue (talosctl, apid's impersonator cert).
#[derive(Clone, Debug)]
pub struct ClientCertRequest {
    /// Subject common name; Talos admin certs have none.
    pub common_name: Option<String>,
    /// Roles, written as one subject Organization each, sorted. An empty set gives a cert with
    /// no roles (allowed: it authenticates but is authorized for nothing).
    pub roles: basalt_authz::RoleSet,
    /// Lifetime from now; must not be zero.
    pub ttl: Duration,
}

/// A server certificate to issue (apid, trustd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCertRequest {
    /// Subject common name (Talos: the node FQDN).
    pub common_name: Option<String>,
    /// DNS names and IP addresses the server answers on.
    pub sans: Vec<SubjectAltName>,
    /// Lifetime from now; must not be zero.
    pub ttl: Duration,
}

/// A freshly issued certificate with its newly generated key.
pub struct IssuedCert {
    /// The leaf certificate (PEM `CERTIFICATE`).
    pub cert_pem: String,
    /// Its private key (PEM `PRIVATE KEY`, PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A CA certificate together with its private key.
///
/// The key is known to match the certificate and the certificate is known to be a CA: both are
/// checked when the value is built, so issuing never produces a certificate nobody can verify.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// The CA's subject exactly as encoded in its certificate; copied byte for byte into the
    /// issuer field of every leaf so that name chaining never depends on re-encoding.
    subject_der: Vec<u8>,
    /// Human-readable subject, for `Debug`.
    subject: String,
    /// The CA's subject key identifier, copied into each leaf's authority key identifier.
    key_id: Option<Vec<u8>>,
    key: PrivateKey,
}

impl CertificateAuthority {
    /// Generates a self-signed CA the way Talos does: CA:TRUE, key usage certSign and
    /// digitalSignature, EKU serverAuth and clientAuth (Talos sets both on its CA), a random
    /// 128-bit serial and a random 20-byte subject key identifier.
    ///
    /// NotBefore is backdated by [`CLOCK_SKEW_ALLOWANCE`] like client certificates, so a new
    /// cluster's CA is valid at once on machines whose clocks lag a little.
    pub fn generate(opts: &CaOptions) -> Result<Self, Error> {
        let (not_before, not_after) = validity(CLOCK_SKEW_ALLOWANCE, opts.validity)?;
        let key = PrivateKey::generate(opts.algorithm)?;

        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        if let Some(org) = &opts.organization {
            validate_organization(org)?;
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.as_str());
        }
        if let Some(cn) = &opts.common_name {
            validate_common_name(cn)?;
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_identifier_method = KeyIdMethod::PreSpecified(random_bytes(CA_KEY_ID_LEN)?);

        let cert = params.self_signed(&key.inner).map_err(Error::Generate)?;
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// Loads a CA from its certificate and key PEM (for example from a Talos secrets bundle).
    ///
    /// The first `CERTIFICATE` block is the CA. Fails unless the certificate is a CA (basic
    /// constraints CA:TRUE and, if key usage is present, keyCertSign) and the key is the one
    /// the certificate was made for.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let der = pem_util::first_block(
            cert_pem.as_bytes(),
            "CA certificate",
            &[CERTIFICATE_LABEL],
            CERTIFICATE_LABEL,
        )?;
        let key = PrivateKey::from_pem(key_pem)?;
        Self::from_parts(der, key)
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA key as PEM (`PRIVATE KEY`, PKCS#8).
    pub fn key_pem(&self) -> String {
        self.key.to_pem()
    }

    /// The CA's key type, which is also the key type of every leaf it issues.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm()
    }

    /// Issues a client certificate with a new key of the CA's type.
    ///
    /// Subject: O = one value per role (sorted), optional CN. Extensions: CA:FALSE, key usage
    /// digitalSignature, EKU clientAuth **only** (apid refuses anything else, as Talos's
    /// `verifyExtKeyUsage` does), no SANs. Validity: now − [`CLOCK_SKEW_ALLOWANCE`] to
    /// now + ttl.
    pub fn issue_client(&self, req: &ClientCertRequest) -> Result<IssuedCert, Error> {
        let organizations = req.roles.strings();
        for org in &organizations {
            validate_organization(org)?;
        }
        if let Some(cn) = &req.common_name {
            validate_common_name(cn)?;
        }
        let (not_before, not_after) = validity(CLOCK_SKEW_ALLOWANCE, req.ttl)?;
        let key = PrivateKey::generate(self.algorithm())?;
        let der = self.sign_leaf(
            &Leaf {
                common_name: req.common_name.as_deref(),
                organizations: &organizations,
                sans: &[],
                usage: ExtendedKeyUsagePurpose::ClientAuth,
                not_before,
                not_after,
            },
            &key.inner,
        )?;
        Ok(IssuedCert {
            cert_pem: pem_util::encode(CERTIFICATE_LABEL, &der),
            key_pem: key.to_pem(),
        })
    }

    /// Issues a server certificate with a new key of the CA's type.
    ///
    /// Subject: optional CN, never an Organization (a server cert must not carry roles).
    /// Extensions: CA:FALSE, key usage digitalSignature, EKU serverAuth only, the given SANs
    /// (validated). Validity: now − [`CLOCK_SKEW_ALLOWANCE`] to now + ttl.
    pub fn issue_server(&self, req: &ServerCertRequest) -> Result<IssuedCert, Error> {
        if let Some(cn) = &req.common_name {
            validate_common_name(cn)?;
        }
        for san in &req.sans {
            san.validate()?;
        }
        let (not_before, not_after) = validity(CLOCK_SKEW_ALLOWANCE, req.ttl)?;
        let key = PrivateKey::generate(self.algorithm())?;
        let der = self.sign_leaf(
            &Leaf {
                common_name: req.common_name.as_deref(),
                organizations: &[],
                sans: &req.sans,
                usage: ExtendedKeyUsagePurpose::ServerAuth,
                not_before,
                not_after,
            },
            &key.inner,
        )?;
        Ok(IssuedCert {
            cert_pem: pem_util::encode(CERTIFICATE_LABEL, &der),
            key_pem: key.to_pem(),
        })
    }

    /// Builds, from a certificate DER and a key, a CA whose invariants hold.
    fn from_parts(cert_der: Vec<u8>, key: PrivateKey) -> Result<Self, Error> {
        let cert = pem_util::parse_certificate(&cert_der)?;

        let bc = cert
            .get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS)
            .map_err(Error::ParseCertificate)?;
        let is_ca = match bc.map(|ext| ext.parsed_extension()) {
            Some(ParsedExtension::BasicConstraints(bc)) => bc.ca,
            Some(_) => {
                return Err(Error::NotACa {
                    reason: "basic constraints extension is malformed",
                });
            }
            None => false,
        };
        if !is_ca {
            return Err(Error::NotACa {
                reason: "basic constraints CA:TRUE is missing",
            });
        }
        let ku = cert
            .get_extension_unique(&OID_X509_EXT_KEY_USAGE)
            .map_err(Error::ParseCertificate)?;
        match ku.map(|ext| ext.parsed_extension()) {
            Some(ParsedExtension::KeyUsage(ku)) if !ku.key_cert_sign() => {
                return Err(Error::NotACa {
                    reason: "key usage does not allow certificate signing",
                });
            }
            Some(ParsedExtension::KeyUsage(_)) | None => {}
            Some(_) => {
                return Err(Error::NotACa {
                    reason: "key usage extension is malformed",
                });
            }
        }

        let spki = cert.public_key();
        let cert_alg = KeyAlgorithm::from_spki(spki)?;
        if cert_alg != key.algorithm()
            || spki.subject_public_key.data.as_ref() != key.public_key_raw()
        {
            return Err(Error::KeyMismatch);
        }

        let key_id = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let subject_der = cert.subject().as_raw().to_vec();
        let subject = cert.subject().to_string();

        Ok(Self {
            cert_pem: pem_util::encode(CERTIFICATE_LABEL, &cert_der),
            cert_der,
            subject_der,
            subject,
            key_id,
            key,
        })
    }

    /// Signs a leaf over `public_key`.
    ///
    /// Everything in the certificate comes from `leaf`, never from a request: basic constraints
    /// CA:FALSE (explicit), key usage digitalSignature, exactly one EKU, a random serial.
    ///
    /// rcgen's `DistinguishedName` keeps one value per attribute type, but a client cert needs
    /// one Organization per role, and the issuer should be the CA's subject byte for byte. So
    /// rcgen builds the certificate with placeholder names, then the TBS is re-assembled with
    /// the real issuer and subject and signed with the CA key. rcgen's draft is signed by
    /// [`DraftSigner`], which does not sign: the draft's signature is thrown away.
    pub(crate) fn sign_leaf(
        &self,
        leaf: &Leaf<'_>,
        public_key: &impl PublicKeyData,
    ) -> Result<Vec<u8>, Error> {
        let mut params = CertificateParams::default();
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        if leaf.common_name.is_some() || !leaf.organizations.is_empty() {
            // Placeholder, replaced below. Its only effect is that rcgen does not mark the SAN
            // extension critical, which RFC 5280 requires only for an empty subject.
            params.distinguished_name.push(DnType::CommonName, "-");
        }
        params.subject_alt_names = leaf
            .sans
            .iter()
            .map(|san| match san {
                SubjectAltName::Dns(name) => name
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(Error::Generate),
                SubjectAltName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![leaf.usage.clone()];
        params.use_authority_key_identifier_extension = self.key_id.is_some();
        params.key_identifier_method = KeyIdMethod::Sha256;

        let mut issuer_params = CertificateParams::default();
        issuer_params.distinguished_name = DistinguishedName::new();
        if let Some(id) = &self.key_id {
            issuer_params.key_identifier_method = KeyIdMethod::PreSpecified(id.clone());
        }
        let issuer = Issuer::new(issuer_params, DraftSigner(&self.key.inner));

        let draft = params
            .signed_by(public_key, &issuer)
            .map_err(Error::Generate)?;
        let subject = encode_name(leaf.organizations, leaf.common_name);
        replace_names_and_sign(draft.der(), &self.subject_der, &subject, &self.key.inner)
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("algorithm", &self.algorithm())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Stands in for the CA key while rcgen encodes a leaf's draft: same algorithm (so the draft's
/// `signatureAlgorithm`, which the final certificate keeps, is right), empty signature. The
/// draft's signature is never used, and a real one was a whole ECDSA signature per issued
/// certificate: 15-30 µs of the 150-190 µs trustd spent per certificate (docs/BENCHMARKS.md).
struct DraftSigner<'a>(&'a rcgen::KeyPair);

impl PublicKeyData for DraftSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

impl SigningKey for DraftSigner<'_> {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

/// What a leaf certificate contains besides its public key and serial.
#[derive(Debug)]
pub(crate) struct Leaf<'a> {
    pub(crate) common_name: Option<&'a str>,
    pub(crate) organizations: &'a [String],
    pub(crate) sans: &'a [SubjectAltName],
    pub(crate) usage: ExtendedKeyUsagePurpose,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

/// Returns `(now − backdate, now + ttl)` at whole seconds, refusing a zero ttl and end dates
/// X.509 cannot express (after 9999).
pub(crate) fn validity(
    backdate: Duration,
    ttl: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), Error> {
    if ttl.is_zero() {
        return Err(Error::InvalidTtl { reason: "zero" });
    }
    let too_long = || Error::InvalidTtl {
        reason: "ends after the year 9999",
    };
    let now = OffsetDateTime::now_utc();
    let now = now - time::Duration::nanoseconds(i64::from(now.nanosecond()));
    let ttl = time::Duration::try_from(ttl).map_err(|_| too_long())?;
    let not_after = now
        .checked_add(ttl)
        .filter(|t| t.year() <= 9999)
        .ok_or_else(too_long)?;
    let not_after = not_after - time::Duration::nanoseconds(i64::from(not_after.nanosecond()));
    let backdate = time::Duration::try_from(backdate).map_err(|_| Error::InvalidTtl {
        reason: "backdating is too large",
    })?;
    let not_before = now.checked_sub(backdate).ok_or(Error::InvalidTtl {
        reason: "backdating is too large",
    })?;
    Ok((not_before, not_after))
}

/// A random positive serial of [`SERIAL_LEN`] bytes (RFC 5280 allows up to 20).
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = random_bytes(SERIAL_LEN)?;
    // Clear the top bit so the INTEGER is positive without a sign byte.
    bytes[0] &= 0x7f;
    if bytes.iter().all(|&b| b == 0) {
        // Serial numbers must be positive, and zero is not.
        bytes[SERIAL_LEN - 1] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

fn random_bytes(len: usize) -> Result<Vec<u8>, Error> {
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    Ok(bytes)
}

/// DER `Name` with one RDN per Organization (in the given order) and then the CN, each value a
/// UTF8String — the order Go's `pkix.Name` writes (O before CN).
fn encode_name(organizations: &[String], common_name: Option<&str>) -> Vec<u8> {
    // id-at-organizationName 2.5.4.10 and id-at-commonName 2.5.4.3.
    const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    fn rdn(out: &mut Vec<u8>, oid: &[u8], value: &str) {
        let mut atv = der::tlv(tag::OID, oid);
        der::write_tlv(&mut atv, tag::UTF8_STRING, value.as_bytes());
        let set = der::tlv(tag::SEQUENCE, &atv);
        der::write_tlv(out, tag::SET, &set);
    }

    let mut rdns = Vec::new();
    for org in organizations {
        rdn(&mut rdns, ORGANIZATION, org);
    }
    if let Some(cn) = common_name {
        rdn(&mut rdns, COMMON_NAME, cn);
    }
    der::tlv(tag::SEQUENCE, &rdns)
}

/// Replaces the issuer and subject of a certificate and signs the new TBS with `key`.
///
/// `cert` is rcgen output, so a failure here is an internal fault reported as
/// [`Error::Encode`], not a panic.
fn replace_names_and_sign(
    cert: &[u8],
    issuer: &[u8],
    subject: &[u8],
    key: &rcgen::KeyPair,
) -> Result<Vec<u8>, Error> {
    // TBSCertificate fields, in order (RFC 5280 §4.1).
    const ISSUER: usize = 3;
    const SUBJECT: usize = 5;
    const MIN_FIELDS: usize = 7;
    let malformed = |reason| Error::Encode { reason };

    let (outer, rest) = der::read_tlv(cert).ok_or(malformed("certificate"))?;
    if outer.tag != tag::SEQUENCE || !rest.is_empty() {
        return Err(malformed("certificate"));
    }
    let parts = der::read_all(outer.content).ok_or(malformed("certificate"))?;
    let [tbs, signature_algorithm, _signature] = parts[..] else {
        return Err(malformed("certificate has not three parts"));
    };
    let fields = der::read_all(tbs.content).ok_or(malformed("TBS certificate"))?;
    if tbs.tag != tag::SEQUENCE || fields.len() < MIN_FIELDS {
        return Err(malformed("TBS certificate"));
    }

    let mut tbs_content = Vec::with_capacity(tbs.content.len() + subject.len() + issuer.len());
    for (i, field) in fields.iter().enumerate() {
        let bytes = match i {
            ISSUER => issuer,
            SUBJECT => subject,
            _ => field.raw,
        };
        tbs_content.extend_from_slice(bytes);
    }
    let new_tbs = der::tlv(tag::SEQUENCE, &tbs_content);

    let signature = key.sign(&new_tbs).map_err(Error::Generate)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);

    let mut body = new_tbs;
    body.extend_from_slice(signature_algorithm.raw);
    der::write_tlv(&mut body, tag::BIT_STRING, &bits);
    Ok(der::tlv(tag::SEQUENCE, &body))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use basalt_authz::RoleSet;

    use super::*;
    use crate::identity::Identity;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn ca(alg: KeyAlgorithm) -> CertificateAuthority {
        CertificateAuthority::generate(&CaOptions {
            algorithm: alg,
            ..CaOptions::talos_os()
        })
        .expect("generate CA")
    }

    fn client(ca: &CertificateAuthority, roles: &[&str]) -> IssuedCert {
        ca.issue_client(&ClientCertRequest {
            common_name: None,
            roles: RoleSet::parse(roles.iter().copied()),
            ttl: DAY,
        })
        .expect("issue client")
    }

    #[test]
    fn talos_os_ca_is_ed25519_o_talos_without_cn_for_ten_years() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let id = Identity::from_pem(ca.cert_pem()).expect("identity");
        assert!(id.is_ca);
        assert_eq!(id.organizations, vec!["talos".to_owned()]);
        assert_eq!(id.common_name, None);
        assert!(id.ext_key_usage.client_auth && id.ext_key_usage.server_auth);
        assert!(!id.ext_key_usage.other);
        let years = (id.not_after - id.not_before).whole_days() / 365;
        assert_eq!(years, 10);
        assert_eq!(ca.algorithm(), KeyAlgorithm::Ed25519);
    }

    #[test]
    fn p256_ca_generates_and_issues_p256_leaves() {
        let ca = ca(KeyAlgorithm::EcdsaP256);
        assert_eq!(ca.algorithm(), KeyAlgorithm::EcdsaP256);
        let issued = client(&ca, &["os:reader"]);
        let key = PrivateKey::from_pem(&issued.key_pem).expect("key");
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
    }

    #[test]
    fn ca_round_trips_through_pem() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let ca = ca(alg);
            let back = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).expect("load");
            assert_eq!(back.cert_der(), ca.cert_der());
            assert_eq!(back.algorithm(), alg);
            // The reloaded CA still issues certificates that chain to the original.
            let issued = client(&back, &["os:admin"]);
            let leaf = Identity::from_pem(&issued.cert_pem).expect("leaf");
            let root = Identity::from_pem(ca.cert_pem()).expect("root");
            assert_eq!(leaf.issuer, root.subject);
        }
    }

    #[test]
    fn ca_with_the_wrong_key_is_refused() {
        let a = ca(KeyAlgorithm::Ed25519);
        let b = ca(KeyAlgorithm::Ed25519);
        let c = ca(KeyAlgorithm::EcdsaP256);
        for key in [b.key_pem(), c.key_pem()] {
            assert!(matches!(
                CertificateAuthority::from_pem(a.cert_pem(), &key),
                Err(Error::KeyMismatch)
            ));
        }
    }

    #[test]
    fn a_leaf_cannot_be_loaded_as_a_ca() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let issued = client(&ca, &["os:admin"]);
        assert!(matches!(
            CertificateAuthority::from_pem(&issued.cert_pem, &issued.key_pem),
            Err(Error::NotACa { .. })
        ));
    }

    #[test]
    fn client_cert_has_sorted_roles_client_auth_only_no_sans_and_is_backdated() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let before = OffsetDateTime::now_utc();
        let issued = ca
            .issue_client(&ClientCertRequest {
                common_name: Some("talos-cp-1".to_owned()),
                roles: RoleSet::parse(["os:reader", "os:admin", "os:etcd:backup"]),
                ttl: DAY,
            })
            .expect("issue");
        let id = Identity::from_pem(&issued.cert_pem).expect("identity");

        assert_eq!(
            id.organizations,
            vec!["os:admin", "os:etcd:backup", "os:reader"]
        );
        assert_eq!(id.roles.strings(), id.organizations);
        assert_eq!(id.common_name.as_deref(), Some("talos-cp-1"));
        assert!(id.is_client_auth_only());
        assert!(!id.is_ca);
        assert!(id.dns_names.is_empty() && id.ip_addresses.is_empty());

        let skew = time::Duration::try_from(CLOCK_SKEW_ALLOWANCE).expect("skew");
        assert!(id.not_before <= before - skew + time::Duration::seconds(1));
        assert!(id.not_before >= before - skew - time::Duration::seconds(5));
        let ttl = id.not_after - before;
        assert!((ttl - time::Duration::DAY).abs() <= time::Duration::seconds(5));
    }

    #[test]
    fn client_cert_without_roles_has_no_organization() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let id = Identity::from_pem(&client(&ca, &[]).cert_pem).expect("identity");
        assert!(id.organizations.is_empty());
        assert!(id.roles.strings().is_empty());
        assert!(id.is_client_auth_only());
    }

    #[test]
    fn zero_ttl_is_refused() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let err = ca
            .issue_client(&ClientCertRequest {
                common_name: None,
                roles: RoleSet::parse(["os:admin"]),
                ttl: Duration::ZERO,
            })
            .expect_err("zero ttl");
        assert!(matches!(err, Error::InvalidTtl { .. }));
        let err = ca
            .issue_server(&ServerCertRequest {
                common_name: None,
                sans: vec![],
                ttl: Duration::from_secs(u64::MAX),
            })
            .expect_err("huge ttl");
        assert!(matches!(err, Error::InvalidTtl { .. }));
    }

    #[test]
    fn server_cert_has_sans_and_server_auth_only() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let issued = ca
            .issue_server(&ServerCertRequest {
                common_name: Some("node-1.example".to_owned()),
                sans: vec![
                    "127.0.0.1".parse().expect("ip"),
                    "localhost".parse().expect("dns"),
                    "fd00::1".parse().expect("ip6"),
                ],
                ttl: DAY,
            })
            .expect("issue");
        let id = Identity::from_pem(&issued.cert_pem).expect("identity");
        assert_eq!(id.dns_names, vec!["localhost"]);
        assert_eq!(
            id.ip_addresses,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                "fd00::1".parse::<IpAddr>().expect("ip6")
            ]
        );
        assert!(id.organizations.is_empty());
        assert!(id.ext_key_usage.present && id.ext_key_usage.server_auth);
        assert!(!id.ext_key_usage.client_auth && !id.ext_key_usage.other);
        assert!(!id.is_client_auth_only());
        assert!(!id.is_ca);
    }

    #[test]
    fn server_cert_with_a_malformed_san_is_refused() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let err = ca
            .issue_server(&ServerCertRequest {
                common_name: None,
                sans: vec![SubjectAltName::Dns("*.example.com".to_owned())],
                ttl: DAY,
            })
            .expect_err("wildcard");
        assert!(matches!(err, Error::InvalidSan { .. }));
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let a = Identity::from_pem(&client(&ca, &["os:admin"]).cert_pem).expect("a");
        let b = Identity::from_pem(&client(&ca, &["os:admin"]).cert_pem).expect("b");
        assert_ne!(a.serial, b.serial);
        assert!(a.serial.len() <= 32 && !a.serial.is_empty());
    }

    #[test]
    fn debug_redacts_keys() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let issued = client(&ca, &["os:admin"]);
        for debug in [format!("{ca:?}"), format!("{issued:?}")] {
            assert!(debug.contains("<redacted>"));
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        }
    }

    #[test]
    fn long_roles_and_names_are_refused() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let long = "x".repeat(65);
        let err = ca
            .issue_client(&ClientCertRequest {
                common_name: None,
                roles: RoleSet::parse([long.as_str()]),
                ttl: DAY,
            })
            .expect_err("long role");
        assert!(matches!(err, Error::InvalidOrganization { .. }));
        let err = ca
            .issue_client(&ClientCertRequest {
                common_name: Some(long.clone()),
                roles: RoleSet::parse(["os:admin"]),
                ttl: DAY,
            })
            .expect_err("long cn");
        assert!(matches!(err, Error::InvalidCommonName { .. }));
    }
}
