//! The signing policy trustd applies to CSRs.
//!
//! Issued parameters are built **from policy, never from the CSR**. From the CSR only the
//! public key, the common name and the DNS/IP SANs are taken, each bounded and checked.
//! Everything else is fixed here: not a CA, digitalSignature, serverAuth only, no Organization,
//! validity now .. now + ttl, a random serial.
//!
//! Why not sign rcgen's `CertificateSigningRequestParams`: it copies the requested basic
//! constraints, key usages and EKUs into the certificate parameters and `signed_by` honours
//! them, so a token holder could ask for CA:TRUE or clientAuth. Talos strips the Organization
//! for the same reason: an O would be read as a role by apid.

use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose, SubjectPublicKeyInfo};

use crate::ca::{CertificateAuthority, Leaf, validity};
use crate::csr::Csr;
use crate::error::Error;
use crate::name::{SubjectAltName, validate_common_name};
use crate::pem::{self as pem_util, CERTIFICATE_LABEL};

/// Default lifetime of a trustd-issued certificate: 24 h, as Talos (renewed at half-life).
pub const DEFAULT_CSR_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default cap on the number of SANs in one CSR.
pub const DEFAULT_MAX_SANS: usize = 32;
/// Default cap on the size of a PEM CSR; a real one is well under 2 KiB.
pub const DEFAULT_MAX_CSR_BYTES: usize = 16 * 1024;

/// What trustd will sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningPolicy {
    /// Lifetime of issued certificates, starting now (no backdating, as Talos: nodes renew
    /// when time sync changes).
    pub ttl: Duration,
    /// Most DNS + IP SANs one CSR may ask for.
    pub max_sans: usize,
    /// Largest CSR accepted, in bytes of PEM input.
    pub max_csr_bytes: usize,
    /// Refuse CSRs whose key type differs from the CA's. Talos copies the signature algorithm
    /// from the CSR, so there a mismatch cannot be signed; keeping the rule keeps key types
    /// uniform across a cluster.
    pub require_ca_key_type: bool,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_CSR_TTL,
            max_sans: DEFAULT_MAX_SANS,
            max_csr_bytes: DEFAULT_MAX_CSR_BYTES,
            require_ca_key_type: true,
        }
    }
}

impl SigningPolicy {
    /// Parses and verifies a PEM CSR under this policy's size limit.
    pub fn parse_csr(&self, pem: &[u8]) -> Result<Csr, Error> {
        Csr::from_pem_with_limit(pem, self.max_csr_bytes)
    }

    /// Checks the CSR against the policy and returns what may be signed: the CN and the SANs
    /// (deduplicated, request order kept).
    fn admit(&self, csr: &Csr, ca: &CertificateAuthority) -> Result<Admitted, Error> {
        if csr.encoded_len() > self.max_csr_bytes {
            return Err(Error::CsrTooLarge {
                size: csr.encoded_len(),
                max: self.max_csr_bytes,
            });
        }
        let alg = csr.require_key_algorithm()?;
        if self.require_ca_key_type && alg != ca.algorithm() {
            return Err(Error::KeyTypeMismatch {
                csr: alg,
                ca: ca.algorithm(),
            });
        }
        if csr.sans().len() > self.max_sans {
            return Err(Error::TooManySans {
                count: csr.sans().len(),
                max: self.max_sans,
            });
        }
        let mut sans: Vec<SubjectAltName> = Vec::with_capacity(csr.sans().len());
        for san in csr.sans() {
            // Hook for further SAN rules (Talos has a TODO to match the caller's address).
            san.validate()?;
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        let common_name = match csr.common_name() {
            Some("") | None => None,
            Some(cn) => {
                validate_common_name(cn)?;
                Some(cn.to_owned())
            }
        };
        Ok(Admitted { common_name, sans })
    }
}

/// The parts of a CSR that passed the policy.
#[derive(Debug)]
struct Admitted {
    common_name: Option<String>,
    sans: Vec<SubjectAltName>,
}

impl CertificateAuthority {
    /// Signs a verified CSR under `policy` and returns the leaf as PEM; see
    /// [`sign_csr_der`](Self::sign_csr_der).
    pub fn sign_csr(&self, csr: &Csr, policy: &SigningPolicy) -> Result<String, Error> {
        let der = self.sign_csr_der(csr, policy)?;
        Ok(pem_util::encode(CERTIFICATE_LABEL, &der))
    }

    /// Signs a verified CSR under `policy` and returns the leaf as DER (trustd reads the issued
    /// certificate back for its journal, and DER spares it a PEM round trip).
    ///
    /// The result is a server certificate: CA:FALSE, digitalSignature, EKU serverAuth only, no
    /// Organization whatever the CSR asked, the CSR's CN and DNS/IP SANs (URIs and e-mail
    /// addresses dropped, as Talos does), NotBefore = now, NotAfter = now + `policy.ttl`.
    pub fn sign_csr_der(&self, csr: &Csr, policy: &SigningPolicy) -> Result<Vec<u8>, Error> {
        let admitted = policy.admit(csr, self)?;
        let public_key =
            SubjectPublicKeyInfo::from_der(csr.public_key_der()).map_err(Error::Generate)?;
        let (not_before, not_after) = validity(Duration::ZERO, policy.ttl)?;
        self.sign_leaf(
            &Leaf {
                common_name: admitted.common_name.as_deref(),
                organizations: &[],
                sans: &admitted.sans,
                usage: ExtendedKeyUsagePurpose::ServerAuth,
                not_before,
                not_after,
            },
            &public_key,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use time::OffsetDateTime;

    use super::*;
    use crate::ca::CaOptions;
    use crate::csr::build_csr;
    use crate::identity::Identity;
    use crate::key::KeyAlgorithm;

    fn ca(alg: KeyAlgorithm) -> CertificateAuthority {
        CertificateAuthority::generate(&CaOptions {
            algorithm: alg,
            ..CaOptions::talos_os()
        })
        .expect("ca")
    }

    /// A CSR that asks for everything a leaf must not get.
    fn greedy_csr(alg: KeyAlgorithm, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "os:admin");
        params
            .distinguished_name
            .push(DnType::CommonName, "talos-default-worker-1");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::CodeSigning,
        ];
        params.subject_alt_names = sans;
        let key = KeyPair::generate_for(alg.rcgen()).expect("key");
        let csr = params.serialize_request(&key).expect("csr");
        csr.pem().expect("pem").into_bytes()
    }

    fn sign(
        ca: &CertificateAuthority,
        pem: &[u8],
        policy: &SigningPolicy,
    ) -> Result<Identity, Error> {
        let csr = policy.parse_csr(pem)?;
        let cert = ca.sign_csr(&csr, policy)?;
        Identity::from_pem(&cert)
    }

    #[test]
    fn csr_asking_for_ca_o_and_client_auth_gets_a_plain_server_leaf() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let pem = greedy_csr(
            KeyAlgorithm::Ed25519,
            vec![
                SanType::IpAddress([10, 5, 0, 4].into()),
                SanType::DnsName("talos-default-worker-1".try_into().expect("dns")),
                SanType::URI("spiffe://evil/admin".try_into().expect("uri")),
                SanType::Rfc822Name("root@example.com".try_into().expect("email")),
            ],
        );
        let csr = Csr::from_pem(&pem).expect("parse");
        assert!(csr.requested_ca());
        assert_eq!(csr.requested_organizations(), ["os:admin"]);
        assert_eq!(
            csr.requested_ext_key_usages(),
            ["serverAuth", "clientAuth", "codeSigning"]
        );
        assert_eq!(csr.dropped_san_count(), 2);

        let id = sign(&ca, &pem, &SigningPolicy::default()).expect("sign");
        assert!(!id.is_ca);
        assert!(id.organizations.is_empty());
        assert!(id.roles.strings().is_empty());
        assert_eq!(id.common_name.as_deref(), Some("talos-default-worker-1"));
        assert!(id.ext_key_usage.present && id.ext_key_usage.server_auth);
        assert!(!id.ext_key_usage.client_auth && !id.ext_key_usage.other);
        assert_eq!(id.dns_names, vec!["talos-default-worker-1"]);
        assert_eq!(id.ip_addresses, vec![IpAddr::from([10, 5, 0, 4])]);
    }

    #[test]
    fn signed_leaf_has_explicit_ca_false_and_digital_signature_only() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let pem = greedy_csr(KeyAlgorithm::Ed25519, vec![]);
        let csr = Csr::from_pem(&pem).expect("parse");
        let cert = ca.sign_csr(&csr, &SigningPolicy::default()).expect("sign");
        let der = ::pem::parse(&cert).expect("pem").into_contents();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let bc = x509.basic_constraints().expect("bc").expect("present");
        assert!(!bc.value.ca);
        let ku = x509.key_usage().expect("ku").expect("present");
        assert!(ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        // And it verifies under the CA's key.
        let ca_der = ca.cert_der().to_vec();
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        x509.verify_signature(Some(ca_x509.public_key()))
            .expect("leaf signature verifies");
        assert_eq!(x509.issuer().as_raw(), ca_x509.subject().as_raw());
    }

    #[test]
    fn ttl_comes_from_the_policy_and_is_not_backdated() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let (pem, _) = build_csr("node", &[], KeyAlgorithm::Ed25519).expect("csr");
        let policy = SigningPolicy {
            ttl: Duration::from_secs(3600),
            ..SigningPolicy::default()
        };
        let before = OffsetDateTime::now_utc();
        let id = sign(&ca, pem.as_bytes(), &policy).expect("sign");
        let slack = time::Duration::seconds(5);
        assert!(id.not_before <= before + slack && id.not_before >= before - slack);
        let lifetime = id.not_after - id.not_before;
        assert_eq!(lifetime, time::Duration::HOUR);

        let zero = SigningPolicy {
            ttl: Duration::ZERO,
            ..SigningPolicy::default()
        };
        assert!(matches!(
            sign(&ca, pem.as_bytes(), &zero),
            Err(Error::InvalidTtl { .. })
        ));
    }

    #[test]
    fn default_policy_is_talos_like() {
        let policy = SigningPolicy::default();
        assert_eq!(policy.ttl, Duration::from_secs(86_400));
        assert_eq!(policy.max_sans, 32);
        assert_eq!(policy.max_csr_bytes, 16 * 1024);
        assert!(policy.require_ca_key_type);
    }

    #[test]
    fn too_many_sans_are_refused() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let sans: Vec<SubjectAltName> = (0..5)
            .map(|i| SubjectAltName::Dns(format!("node-{i}")))
            .collect();
        let (pem, _) = build_csr("node", &sans, KeyAlgorithm::Ed25519).expect("csr");
        let policy = SigningPolicy {
            max_sans: 4,
            ..SigningPolicy::default()
        };
        assert!(matches!(
            sign(&ca, pem.as_bytes(), &policy),
            Err(Error::TooManySans { count: 5, max: 4 })
        ));
        let policy = SigningPolicy {
            max_sans: 5,
            ..SigningPolicy::default()
        };
        assert_eq!(
            sign(&ca, pem.as_bytes(), &policy)
                .expect("sign")
                .dns_names
                .len(),
            5
        );
    }

    #[test]
    fn malformed_dns_sans_are_refused() {
        let ca = ca(KeyAlgorithm::Ed25519);
        for bad in ["*.example.com", "-leading.example", "under_score", "a..b"] {
            let pem = greedy_csr(
                KeyAlgorithm::Ed25519,
                vec![SanType::DnsName(bad.try_into().expect("ia5"))],
            );
            assert!(
                matches!(
                    sign(&ca, &pem, &SigningPolicy::default()),
                    Err(Error::InvalidSan { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_sans_are_signed_once() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let sans = vec![
            SubjectAltName::Dns("node".to_owned()),
            SubjectAltName::Dns("node".to_owned()),
        ];
        let (pem, _) = build_csr("node", &sans, KeyAlgorithm::Ed25519).expect("csr");
        let id = sign(&ca, pem.as_bytes(), &SigningPolicy::default()).expect("sign");
        assert_eq!(id.dns_names, vec!["node"]);
    }

    #[test]
    fn csr_key_type_must_match_the_ca() {
        let ed_ca = ca(KeyAlgorithm::Ed25519);
        let (p256_csr, _) = build_csr("node", &[], KeyAlgorithm::EcdsaP256).expect("csr");
        assert!(matches!(
            sign(&ed_ca, p256_csr.as_bytes(), &SigningPolicy::default()),
            Err(Error::KeyTypeMismatch {
                csr: KeyAlgorithm::EcdsaP256,
                ca: KeyAlgorithm::Ed25519
            })
        ));
        // With the rule off, the CA signs the other key type.
        let relaxed = SigningPolicy {
            require_ca_key_type: false,
            ..SigningPolicy::default()
        };
        let id = sign(&ed_ca, p256_csr.as_bytes(), &relaxed).expect("sign");
        assert_eq!(id.common_name.as_deref(), Some("node"));

        let p256_ca = ca(KeyAlgorithm::EcdsaP256);
        let (ed_csr, _) = build_csr("node", &[], KeyAlgorithm::Ed25519).expect("csr");
        assert!(matches!(
            sign(&p256_ca, ed_csr.as_bytes(), &SigningPolicy::default()),
            Err(Error::KeyTypeMismatch { .. })
        ));
        assert!(sign(&p256_ca, p256_csr.as_bytes(), &SigningPolicy::default()).is_ok());
    }

    #[test]
    fn oversized_csr_is_refused_by_the_policy() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let (pem, _) = build_csr("node", &[], KeyAlgorithm::Ed25519).expect("csr");
        let csr = Csr::from_pem(pem.as_bytes()).expect("parse");
        let small = SigningPolicy {
            max_csr_bytes: 64,
            ..SigningPolicy::default()
        };
        assert!(matches!(
            small.parse_csr(pem.as_bytes()),
            Err(Error::CsrTooLarge { .. })
        ));
        assert!(matches!(
            ca.sign_csr(&csr, &small),
            Err(Error::CsrTooLarge { .. })
        ));
    }

    #[test]
    fn overlong_common_name_is_refused() {
        let ca = ca(KeyAlgorithm::Ed25519);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "n".repeat(65));
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        assert!(matches!(
            sign(&ca, pem.as_bytes(), &SigningPolicy::default()),
            Err(Error::InvalidCommonName { .. })
        ));
    }
}
