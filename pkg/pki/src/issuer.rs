//! Which CA signed a certificate: a signature check, not a name comparison.
//!
//! Talos's OS CA is `O=talos` with no CN, so an old and a new CA during a rotation have the same
//! subject; only the signature tells them apart. Used by the certificate status API and by
//! `basaltctl rotate-ca` to follow a rotation node by node.

use crate::error::Error;
use crate::pem as pem_util;

/// True when `ca_der`'s key signed `leaf_der` (and the leaf's issuer name is the CA's subject).
///
/// This is not chain validation: validity periods and extensions are not checked. Both inputs
/// must be well-formed certificates ([`Error::ParseCertificate`] otherwise); a signature made
/// by another key, or with an algorithm ring cannot verify, is `Ok(false)`.
pub fn is_issued_by(leaf_der: &[u8], ca_der: &[u8]) -> Result<bool, Error> {
    let leaf = pem_util::parse_certificate(leaf_der)?;
    let ca = pem_util::parse_certificate(ca_der)?;
    if leaf.issuer().as_raw() != ca.subject().as_raw() {
        return Ok(false);
    }
    Ok(leaf.verify_signature(Some(ca.public_key())).is_ok())
}

/// The issuer's common name (the last CN, as Go reads it), `None` when the issuer has none
/// (Talos's OS CA is `O=talos` only).
pub fn issuer_common_name(der: &[u8]) -> Result<Option<String>, Error> {
    let cert = pem_util::parse_certificate(der)?;
    let mut common_name = None;
    for attr in cert.issuer().iter_common_name() {
        common_name = Some(attr.as_str().map_err(Error::ParseCertificate)?.to_owned());
    }
    Ok(common_name)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::{CaOptions, CertificateAuthority, ServerCertRequest};
    use crate::key::KeyAlgorithm;

    fn leaf_of(ca: &CertificateAuthority) -> Vec<u8> {
        let issued = ca
            .issue_server(&ServerCertRequest {
                common_name: Some("node".to_owned()),
                sans: Vec::new(),
                ttl: Duration::from_secs(3600),
            })
            .expect("issue");
        ::pem::parse(&issued.cert_pem).expect("pem").into_contents()
    }

    #[test]
    fn a_leaf_is_issued_by_its_ca_and_not_by_a_look_alike() {
        for algorithm in [KeyAlgorithm::Ed25519, KeyAlgorithm::EcdsaP256] {
            let options = CaOptions {
                algorithm,
                ..CaOptions::talos_os()
            };
            let ca = CertificateAuthority::generate(&options).expect("ca");
            // Same subject (`O=talos`), other key: what a rotation's new CA looks like.
            let other = CertificateAuthority::generate(&options).expect("other ca");
            let leaf = leaf_of(&ca);
            assert!(is_issued_by(&leaf, ca.cert_der()).expect("check"));
            assert!(!is_issued_by(&leaf, other.cert_der()).expect("check"));
            // A CA is issued by itself.
            assert!(is_issued_by(ca.cert_der(), ca.cert_der()).expect("check"));
            assert_eq!(issuer_common_name(&leaf).expect("issuer"), None);
        }
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("ca");
        assert!(is_issued_by(b"nope", ca.cert_der()).is_err());
        assert!(is_issued_by(ca.cert_der(), b"nope").is_err());
    }
}
