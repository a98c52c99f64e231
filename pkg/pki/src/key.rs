//! Private keys: generation, PEM in and out, and the two supported algorithms.

use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::PrivatePkcs8KeyDer;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::der::{self, tag};
use crate::error::Error;
use crate::pem::{self as pem_util, KEY_LABEL};

/// The key algorithms basalt issues and accepts.
///
/// Ed25519 is the default because the Talos OS CA is Ed25519 and Talos picks leaf key types from
/// the CA; ECDSA P-256 is offered for peers that cannot do Ed25519.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// Ed25519 (RFC 8410), Talos's choice for the OS CA.
    #[default]
    Ed25519,
    /// ECDSA over NIST P-256 with SHA-256.
    EcdsaP256,
}

impl KeyAlgorithm {
    /// The name used in configuration and on the command line (`ed25519`, `ecdsa-p256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256 => "ecdsa-p256",
        }
    }

    pub(crate) fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::Ed25519 => &rcgen::PKCS_ED25519,
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }

    /// The key algorithm of the first certificate in a PEM document. A worker holds its CA's
    /// certificate without the key and picks its CSR key type this way (Talos's
    /// `NewCSRAndIdentityFromCA`), since trustd signs only CSRs of the CA's key type.
    pub fn of_certificate_pem(pem: &str) -> Result<Self, Error> {
        let der = pem_util::first_block(
            pem.as_bytes(),
            "certificate",
            &[pem_util::CERTIFICATE_LABEL],
            pem_util::CERTIFICATE_LABEL,
        )?;
        let cert = pem_util::parse_certificate(&der)?;
        Self::from_spki(cert.public_key())
    }

    /// The algorithm of a certificate's or CSR's public key.
    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, Error> {
        let alg = &spki.algorithm;
        if alg.algorithm == OID_SIG_ED25519 {
            return Ok(Self::Ed25519);
        }
        if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
            return match curve {
                Some(curve) if curve == OID_EC_P256 => Ok(Self::EcdsaP256),
                Some(curve) => Err(Error::UnsupportedKeyAlgorithm {
                    name: format!("ECDSA on curve {}", curve.to_id_string()),
                }),
                None => Err(Error::UnsupportedKeyAlgorithm {
                    name: "ECDSA without a named curve".to_owned(),
                }),
            };
        }
        let oid = alg.algorithm.to_id_string();
        let name = if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
            format!("RSA ({oid})")
        } else {
            oid
        };
        Err(Error::UnsupportedKeyAlgorithm { name })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ed25519" => Ok(Self::Ed25519),
            "ecdsa-p256" => Ok(Self::EcdsaP256),
            other => Err(Error::UnsupportedKeyAlgorithm {
                name: other.to_owned(),
            }),
        }
    }
}

// === impl PrivateKey ===

/// A private key (Ed25519 or ECDSA P-256), held as PKCS#8.
///
/// `Debug` prints only the algorithm, so a key can sit in a struct that gets logged.
pub struct PrivateKey {
    pub(crate) inner: KeyPair,
    alg: KeyAlgorithm,
}

impl PrivateKey {
    /// Generates a fresh key with the operating system's random number generator.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, Error> {
        let generated = KeyPair::generate_for(alg.rcgen()).map_err(Error::Generate)?;
        // Reload through the normalizing reader so that the stored (and written) PKCS#8 is v1.
        Self::from_pkcs8_der(generated.serialized_der())
    }

    /// Reads the first private-key block of a PEM document.
    ///
    /// Accepted labels: `PRIVATE KEY` (PKCS#8), `ED25519 PRIVATE KEY` (what Talos writes; the
    /// body is PKCS#8 too) and `EC PRIVATE KEY` (SEC1, as `openssl ecparam -genkey` writes; it is
    /// wrapped into PKCS#8 here because ring reads nothing else). Other blocks, such as the
    /// `EC PARAMETERS` block openssl puts in front, are skipped. Encrypted and RSA keys are
    /// refused.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        const WHAT: &str = "private key";
        let blocks = pem_util::parse_blocks(pem.as_bytes(), WHAT)?;
        let block = blocks
            .iter()
            .find(|b| b.tag().ends_with("PRIVATE KEY"))
            .ok_or(Error::MissingPemBlock {
                what: WHAT,
                label: KEY_LABEL,
            })?;
        match block.tag() {
            "PRIVATE KEY" | "ED25519 PRIVATE KEY" => Self::from_pkcs8_der(block.contents()),
            "EC PRIVATE KEY" => Self::from_pkcs8_der(&sec1_p256_to_pkcs8(block.contents())),
            "ENCRYPTED PRIVATE KEY" => Err(Error::ParseKey {
                reason: "encrypted private keys are not supported",
                source: None,
            }),
            _ => Err(Error::ParseKey {
                reason: "only Ed25519 and ECDSA P-256 keys are supported",
                source: None,
            }),
        }
    }

    /// Reads a PKCS#8 DER key (Ed25519 or ECDSA P-256), v1 or v2.
    ///
    /// The key is kept (and later written) as PKCS#8 **v1**: ring generates Ed25519 keys as v2
    /// (RFC 5958, with the public key), which OpenSSL 3.0 cannot read; v1 is what openssl and
    /// Talos write and what every reader accepts.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        let v1 = pkcs8_v1(der).ok_or(Error::ParseKey {
            reason: "not a PKCS#8 PrivateKeyInfo",
            source: None,
        })?;
        let pkcs8 = PrivatePkcs8KeyDer::from(v1.as_slice());
        let mut last = None;
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            // Only the two algorithms above are passed, which rcgen handles without panicking.
            match KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, alg.rcgen()) {
                Ok(inner) => return Ok(Self { inner, alg }),
                Err(err) => last = Some(err),
            }
        }
        Err(Error::ParseKey {
            reason: "not a PKCS#8 Ed25519 or ECDSA P-256 key",
            source: last,
        })
    }

    /// The key as PEM, label `PRIVATE KEY` (PKCS#8), which Talos and openssl both read.
    pub fn to_pem(&self) -> String {
        self.inner.serialize_pem()
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    /// The public half as DER `SubjectPublicKeyInfo`.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.inner.subject_public_key_info()
    }

    /// The raw public key (the bit string inside the SPKI), for comparisons.
    pub(crate) fn public_key_raw(&self) -> &[u8] {
        self.inner.public_key_raw()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.alg)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Re-encodes a PKCS#8 v1 or v2 document as v1: version 0, the algorithm and the private key;
/// the optional attributes and (v2) public key are dropped. `None` if it is not PKCS#8.
fn pkcs8_v1(der: &[u8]) -> Option<Vec<u8>> {
    let (outer, rest) = der::read_tlv(der)?;
    if outer.tag != tag::SEQUENCE || !rest.is_empty() {
        return None;
    }
    let items = der::read_all(outer.content)?;
    let [version, algorithm, private_key, ..] = items[..] else {
        return None;
    };
    let known_version = version.tag == tag::INTEGER && matches!(version.content, [0] | [1]);
    if !known_version || algorithm.tag != tag::SEQUENCE || private_key.tag != tag::OCTET_STRING {
        return None;
    }
    let mut body = der::tlv(tag::INTEGER, &[0x00]);
    body.extend_from_slice(algorithm.raw);
    body.extend_from_slice(private_key.raw);
    Some(der::tlv(tag::SEQUENCE, &body))
}

/// Wraps a SEC1 `ECPrivateKey` in a PKCS#8 `PrivateKeyInfo` for P-256.
///
/// The SEC1 body is carried unchanged; ring checks its version, that an embedded curve (if any)
/// is P-256, and that the embedded public key matches the private scalar, so a key for another
/// curve or a damaged key fails there with a parse error.
fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // id-ecPublicKey 1.2.840.10045.2.1 and prime256v1 1.2.840.10045.3.1.7.
    const ID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

    let mut alg_id = der::tlv(tag::OID, ID_EC_PUBLIC_KEY);
    der::write_tlv(&mut alg_id, tag::OID, PRIME256V1);

    let mut body = der::tlv(tag::INTEGER, &[0x00]);
    der::write_tlv(&mut body, tag::SEQUENCE, &alg_id);
    der::write_tlv(&mut body, tag::OCTET_STRING, sec1);
    der::tlv(tag::SEQUENCE, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_type_of_a_ca_certificate_is_read_without_its_key() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let ca = crate::CertificateAuthority::generate(&crate::CaOptions {
                algorithm: alg,
                ..crate::CaOptions::talos_os()
            })
            .expect("CA");
            assert_eq!(
                KeyAlgorithm::of_certificate_pem(ca.cert_pem()).expect("alg"),
                alg
            );
        }
        assert!(KeyAlgorithm::of_certificate_pem("not PEM").is_err());
    }

    /// Extracts the SEC1 `ECPrivateKey` from a ring-made PKCS#8 document.
    fn pkcs8_to_sec1(pkcs8: &[u8]) -> Vec<u8> {
        let (outer, _) = der::read_tlv(pkcs8).expect("pkcs8");
        let items = der::read_all(outer.content).expect("pkcs8 items");
        items[2].content.to_vec()
    }

    fn pem_with_label(label: &str, der: Vec<u8>) -> String {
        ::pem::encode(&::pem::Pem::new(label, der))
    }

    #[test]
    fn algorithm_names_parse_and_print() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            assert_eq!(alg.as_str().parse::<KeyAlgorithm>().expect("parse"), alg);
        }
        assert!(matches!(
            "rsa".parse::<KeyAlgorithm>(),
            Err(Error::UnsupportedKeyAlgorithm { .. })
        ));
        assert_eq!(KeyAlgorithm::default(), KeyAlgorithm::Ed25519);
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let key = PrivateKey::generate(alg).expect("generate");
            let pem = key.to_pem();
            assert_eq!(::pem::parse(&pem).expect("pem").tag(), KEY_LABEL);
            let back = PrivateKey::from_pem(&pem).expect("reload");
            assert_eq!(back.algorithm(), alg);
            assert_eq!(back.public_key_der(), key.public_key_der());
        }
    }

    #[test]
    fn keys_are_stored_as_pkcs8_v1() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let key = PrivateKey::generate(alg).expect("generate");
            let der = key.inner.serialize_der();
            let (outer, _) = der::read_tlv(&der).expect("pkcs8");
            let items = der::read_all(outer.content).expect("items");
            assert_eq!(items.len(), 3, "{alg}");
            assert_eq!(items[0].content, [0], "{alg}");
        }
    }

    #[test]
    fn pkcs8_v2_input_loads() {
        let rng = ring::rand::SystemRandom::new();
        let v2 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("v2");
        let key = PrivateKey::from_pkcs8_der(v2.as_ref()).expect("load v2");
        assert_eq!(key.algorithm(), KeyAlgorithm::Ed25519);
        assert_ne!(key.inner.serialize_der(), v2.as_ref());
    }

    #[test]
    fn talos_ed25519_label_loads() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).expect("generate");
        let pem = pem_with_label("ED25519 PRIVATE KEY", key.inner.serialize_der());
        let back = PrivateKey::from_pem(&pem).expect("load");
        assert_eq!(back.algorithm(), KeyAlgorithm::Ed25519);
        assert_eq!(back.public_key_der(), key.public_key_der());
    }

    #[test]
    fn sec1_ec_private_key_loads_after_a_parameters_block() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("generate");
        let sec1 = pkcs8_to_sec1(&key.inner.serialize_der());
        let params = pem_with_label("EC PARAMETERS", vec![0x06, 0x08, 1, 2, 3, 4, 5, 6, 7, 8]);
        let pem = format!("{params}{}", pem_with_label("EC PRIVATE KEY", sec1));
        let back = PrivateKey::from_pem(&pem).expect("load");
        assert_eq!(back.algorithm(), KeyAlgorithm::EcdsaP256);
        assert_eq!(back.public_key_der(), key.public_key_der());
        // Written back out as PKCS#8.
        assert_eq!(::pem::parse(back.to_pem()).expect("pem").tag(), KEY_LABEL);
    }

    #[test]
    fn garbage_keys_are_parse_errors() {
        let cases = [
            pem_with_label("PRIVATE KEY", vec![0x30, 0x03, 0x02, 0x01, 0x00]),
            pem_with_label("EC PRIVATE KEY", vec![0x30, 0x00]),
            pem_with_label("RSA PRIVATE KEY", vec![0x30, 0x00]),
            pem_with_label("ENCRYPTED PRIVATE KEY", vec![0x30, 0x00]),
        ];
        for pem in cases {
            assert!(
                matches!(PrivateKey::from_pem(&pem), Err(Error::ParseKey { .. })),
                "{pem}"
            );
        }
    }

    #[test]
    fn mangled_keys_never_panic() {
        for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let der = PrivateKey::generate(alg)
                .expect("generate")
                .inner
                .serialize_der();
            for len in 0..der.len() {
                assert!(
                    PrivateKey::from_pkcs8_der(&der[..len]).is_err(),
                    "{alg} at {len}"
                );
            }
            for i in 0..der.len() {
                for bit in 0..8 {
                    let mut mangled = der.clone();
                    mangled[i] ^= 1 << bit;
                    let _ = PrivateKey::from_pkcs8_der(&mangled);
                    let _ = PrivateKey::from_pkcs8_der(&sec1_p256_to_pkcs8(&mangled));
                }
            }
        }
    }

    #[test]
    fn empty_or_keyless_pem_is_a_missing_block() {
        assert!(matches!(
            PrivateKey::from_pem(""),
            Err(Error::MissingPemBlock { .. })
        ));
        let cert_only = pem_with_label("CERTIFICATE", vec![0x30, 0x00]);
        assert!(matches!(
            PrivateKey::from_pem(&cert_only),
            Err(Error::MissingPemBlock { .. })
        ));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = PrivateKey::generate(KeyAlgorithm::Ed25519).expect("generate");
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"));
        let pem = key.to_pem();
        let body_line = pem.lines().nth(1).expect("body");
        assert!(!debug.contains(body_line));
    }
}
