//! Certificate signing requests: building one (a worker asking trustd) and reading one (trustd).
//!
//! A [`Csr`] only exists once its self-signature has verified, so holding one proves the
//! requester has the private key. What it *asks for* beyond the key, the CN and DNS/IP SANs is
//! kept only so it can be logged; the signing policy ignores it.

use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::error::Error;
use crate::identity::{hex, ip_from_bytes};
use crate::key::{KeyAlgorithm, PrivateKey};
use crate::name::{SubjectAltName, validate_common_name};
use crate::pem::{self as pem_util, CSR_LABEL};
use crate::policy::DEFAULT_MAX_CSR_BYTES;

/// Builds a CSR with a new key, as a worker does before calling trustd.
///
/// The CSR carries only the CN (omitted when empty) and the SANs; no Organization, no key
/// usages — trustd decides those. Pick `alg` equal to the CA's key type: trustd refuses
/// anything else, as Talos does.
pub fn build_csr(
    common_name: &str,
    sans: &[SubjectAltName],
    alg: KeyAlgorithm,
) -> Result<(String, PrivateKey), Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if !common_name.is_empty() {
        validate_common_name(common_name)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
    }
    params.subject_alt_names = sans
        .iter()
        .map(|san| {
            san.validate()?;
            Ok(match san {
                SubjectAltName::Dns(name) => {
                    SanType::DnsName(name.as_str().try_into().map_err(Error::Generate)?)
                }
                SubjectAltName::Ip(ip) => SanType::IpAddress(*ip),
            })
        })
        .collect::<Result<_, Error>>()?;

    let key = PrivateKey::generate(alg)?;
    let csr = params
        .serialize_request(&key.inner)
        .map_err(Error::Generate)?;
    let pem = pem_util::encode(CSR_LABEL, csr.der());
    Ok((pem, key))
}

/// A parsed CSR whose signature has been verified.
#[derive(Clone, Debug)]
pub struct Csr {
    spki_der: Vec<u8>,
    key_algorithm: Result<KeyAlgorithm, String>,
    common_name: Option<String>,
    sans: Vec<SubjectAltName>,
    dropped_sans: usize,
    requested_organizations: Vec<String>,
    requested_ca: bool,
    requested_ext_key_usages: Vec<String>,
    encoded_len: usize,
}

impl Csr {
    /// Decodes, parses and verifies a PEM CSR of at most [`DEFAULT_MAX_CSR_BYTES`].
    ///
    /// Accepts the labels `CERTIFICATE REQUEST` and `NEW CERTIFICATE REQUEST`. Fails on broken
    /// PEM, bad DER, trailing bytes, an unverifiable signature, a malformed SAN extension, more
    /// than one CN, or a CN that is not a string.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        Self::from_pem_with_limit(pem, DEFAULT_MAX_CSR_BYTES)
    }

    /// Like [`Csr::from_pem`] with another size limit; the size is checked before any parsing.
    pub fn from_pem_with_limit(pem: &[u8], max_bytes: usize) -> Result<Self, Error> {
        if pem.len() > max_bytes {
            return Err(Error::CsrTooLarge {
                size: pem.len(),
                max: max_bytes,
            });
        }
        let der = pem_util::first_block(
            pem,
            "CSR",
            &[CSR_LABEL, "NEW CERTIFICATE REQUEST"],
            CSR_LABEL,
        )?;
        let mut csr = Self::from_der(&der)?;
        csr.encoded_len = pem.len();
        Ok(csr)
    }

    /// Parses and verifies a DER CSR.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (rest, req) = X509CertificationRequest::from_der(der)
            .map_err(|e| Error::ParseCsr(X509Error::from(e)))?;
        if !rest.is_empty() {
            return Err(Error::TrailingData { what: "CSR" });
        }
        req.verify_signature().map_err(Error::CsrSignature)?;

        let info = &req.certification_request_info;
        let key_algorithm = KeyAlgorithm::from_spki(&info.subject_pki).map_err(|e| match e {
            Error::UnsupportedKeyAlgorithm { name } => name,
            other => other.to_string(),
        });

        let mut common_name = None;
        for attr in info.subject.iter_common_name() {
            if common_name.is_some() {
                return Err(Error::InvalidCommonName {
                    reason: "more than one common name",
                });
            }
            let cn = attr.as_str().map_err(|_| Error::InvalidCommonName {
                reason: "not a string",
            })?;
            common_name = Some(cn.to_owned());
        }
        let requested_organizations = info
            .subject
            .iter_organization()
            .map(|attr| attr.as_str().unwrap_or("<not a string>").to_owned())
            .collect();

        let mut csr = Self {
            spki_der: info.subject_pki.raw.to_vec(),
            key_algorithm,
            common_name,
            sans: Vec::new(),
            dropped_sans: 0,
            requested_organizations,
            requested_ca: false,
            requested_ext_key_usages: Vec::new(),
            encoded_len: der.len(),
        };

        let extensions = info
            .iter_attributes()
            .filter_map(|attr| match attr.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(req) => Some(&req.extensions),
                _ => None,
            });
        for ext in extensions.flatten() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        csr.add_san(name)?;
                    }
                }
                ParsedExtension::BasicConstraints(bc) => csr.requested_ca |= bc.ca,
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    let names = [
                        (eku.any, "anyExtendedKeyUsage"),
                        (eku.server_auth, "serverAuth"),
                        (eku.client_auth, "clientAuth"),
                        (eku.code_signing, "codeSigning"),
                        (eku.email_protection, "emailProtection"),
                        (eku.time_stamping, "timeStamping"),
                        (eku.ocsp_signing, "OCSPSigning"),
                    ];
                    csr.requested_ext_key_usages.extend(
                        names
                            .iter()
                            .filter(|(set, _)| *set)
                            .map(|(_, name)| (*name).to_owned()),
                    );
                    csr.requested_ext_key_usages
                        .extend(eku.other.iter().map(|oid| oid.to_id_string()));
                }
                ParsedExtension::ParseError { .. } => {
                    return Err(Error::ParseCsr(X509Error::InvalidExtensions));
                }
                _ => {}
            }
        }
        Ok(csr)
    }

    /// The requested common name, if any.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The requested DNS and IP SANs, in request order, not yet validated.
    pub fn sans(&self) -> &[SubjectAltName] {
        &self.sans
    }

    /// How many SANs of other kinds (URI, e-mail, …) were requested; they are never signed.
    pub fn dropped_san_count(&self) -> usize {
        self.dropped_sans
    }

    /// The key type, or `None` for a key basalt does not issue for (RSA, P-384, …).
    pub fn key_algorithm(&self) -> Option<KeyAlgorithm> {
        self.key_algorithm.as_ref().ok().copied()
    }

    /// The requested public key as DER `SubjectPublicKeyInfo`.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Organizations the requester asked for (for logging only; never signed).
    pub fn requested_organizations(&self) -> &[String] {
        &self.requested_organizations
    }

    /// Whether the requester asked to be a CA (for logging only; never granted).
    pub fn requested_ca(&self) -> bool {
        self.requested_ca
    }

    /// EKUs the requester asked for (for logging only; the policy sets serverAuth).
    pub fn requested_ext_key_usages(&self) -> &[String] {
        &self.requested_ext_key_usages
    }

    /// Size of the input the CSR was read from (PEM or DER bytes).
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// The key algorithm, or the unsupported algorithm as an error.
    pub(crate) fn require_key_algorithm(&self) -> Result<KeyAlgorithm, Error> {
        self.key_algorithm
            .clone()
            .map_err(|name| Error::UnsupportedKeyAlgorithm { name })
    }

    fn add_san(&mut self, name: &GeneralName<'_>) -> Result<(), Error> {
        match name {
            GeneralName::DNSName(dns) => self.sans.push(SubjectAltName::Dns((*dns).to_owned())),
            GeneralName::IPAddress(bytes) => {
                let ip = ip_from_bytes(bytes).ok_or_else(|| Error::InvalidSan {
                    value: hex(bytes),
                    reason: "IP address is not 4 or 16 bytes",
                })?;
                self.sans.push(SubjectAltName::Ip(ip));
            }
            GeneralName::Invalid(_, bytes) => {
                return Err(Error::InvalidSan {
                    value: String::from_utf8_lossy(bytes).into_owned(),
                    reason: "not a valid name",
                });
            }
            // URIs, e-mail addresses and the rest are dropped, as Talos does.
            _ => self.dropped_sans += 1,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_csr_parses_back_with_cn_sans_and_key_type() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let sans = vec![
                "10.5.0.4".parse().expect("ip"),
                "talos-default-worker-1".parse().expect("dns"),
            ];
            let (pem, key) = build_csr("talos-default-worker-1", &sans, alg).expect("build");
            assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
            let csr = Csr::from_pem(pem.as_bytes()).expect("parse");
            assert_eq!(csr.common_name(), Some("talos-default-worker-1"));
            assert_eq!(csr.sans(), &sans[..]);
            assert_eq!(csr.key_algorithm(), Some(alg));
            assert_eq!(csr.public_key_der(), key.public_key_der());
            assert!(csr.requested_organizations().is_empty());
            assert!(!csr.requested_ca());
            assert_eq!(csr.encoded_len(), pem.len());
        }
    }

    #[test]
    fn empty_common_name_is_left_out() {
        let (pem, _) = build_csr("", &[], KeyAlgorithm::Ed25519).expect("build");
        let csr = Csr::from_pem(pem.as_bytes()).expect("parse");
        assert_eq!(csr.common_name(), None);
    }

    #[test]
    fn flipped_signature_byte_fails_verification() {
        let (pem, _) = build_csr("node", &[], KeyAlgorithm::Ed25519).expect("build");
        let mut der = ::pem::parse(&pem).expect("pem").into_contents();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = pem_util::encode(CSR_LABEL, &der);
        assert!(matches!(
            Csr::from_pem(tampered.as_bytes()),
            Err(Error::CsrSignature(_))
        ));
    }

    #[test]
    fn tampered_subject_fails_verification() {
        let (pem, _) = build_csr("node-a", &[], KeyAlgorithm::EcdsaP256).expect("build");
        let der = ::pem::parse(&pem).expect("pem").into_contents();
        let pos = der
            .windows(6)
            .position(|w| w == b"node-a")
            .expect("cn in der");
        let mut der = der;
        der[pos + 5] = b'b';
        let tampered = pem_util::encode(CSR_LABEL, &der);
        assert!(matches!(
            Csr::from_pem(tampered.as_bytes()),
            Err(Error::CsrSignature(_))
        ));
    }

    #[test]
    fn bad_input_gives_the_matching_error() {
        assert!(matches!(
            Csr::from_pem(b""),
            Err(Error::MissingPemBlock { .. })
        ));
        let (pem, _) = build_csr("node", &[], KeyAlgorithm::Ed25519).expect("build");
        assert!(matches!(
            Csr::from_pem(&pem.as_bytes()[..pem.len() - 40]),
            Err(Error::ParsePem { .. })
        ));
        let not_a_csr = pem_util::encode(CSR_LABEL, b"\x30\x03\x02\x01\x00");
        assert!(matches!(
            Csr::from_pem(not_a_csr.as_bytes()),
            Err(Error::ParseCsr(_))
        ));
        let cert_label = pem_util::encode("CERTIFICATE", b"\x30\x00");
        assert!(matches!(
            Csr::from_pem(cert_label.as_bytes()),
            Err(Error::MissingPemBlock { .. })
        ));
        assert!(Csr::from_der(&[]).is_err());
        assert!(Csr::from_der(&[0xff; 64]).is_err());
    }

    #[test]
    fn mangled_csrs_never_panic() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let sans = [
                "10.0.0.1".parse().expect("ip"),
                "node".parse().expect("dns"),
            ];
            let (pem, _) = build_csr("node", &sans, alg).expect("build");
            let der = ::pem::parse(&pem).expect("pem").into_contents();
            for len in 0..der.len() {
                assert!(
                    Csr::from_der(&der[..len]).is_err(),
                    "{alg} truncated at {len}"
                );
            }
            for i in 0..der.len() {
                for bit in 0..8 {
                    let mut mangled = der.clone();
                    mangled[i] ^= 1 << bit;
                    // Any outcome but a panic is fine; a flip may hit a non-signed byte
                    // (e.g. the outer length), so success is possible but rare.
                    let _ = Csr::from_der(&mangled);
                }
            }
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![b'A'; DEFAULT_MAX_CSR_BYTES + 1];
        assert!(matches!(
            Csr::from_pem(&big),
            Err(Error::CsrTooLarge { .. })
        ));
        let (pem, _) = build_csr("node", &[], KeyAlgorithm::Ed25519).expect("build");
        assert!(matches!(
            Csr::from_pem_with_limit(pem.as_bytes(), 10),
            Err(Error::CsrTooLarge { size, max: 10 }) if size == pem.len()
        ));
    }

    #[test]
    fn build_csr_refuses_malformed_names() {
        let bad = [SubjectAltName::Dns("bad name".to_owned())];
        assert!(matches!(
            build_csr("node", &bad, KeyAlgorithm::Ed25519),
            Err(Error::InvalidSan { .. })
        ));
        assert!(matches!(
            build_csr(&"n".repeat(65), &[], KeyAlgorithm::Ed25519),
            Err(Error::InvalidCommonName { .. })
        ));
    }
}
