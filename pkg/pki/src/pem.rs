//! PEM handling beyond what the rustls helpers parse.
//!
//! The `pem` crate silently skips a block whose END line is missing; here such input is an
//! error, so a truncated file is reported as truncated instead of as "no certificate found".

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::Error;

/// Label of certificate blocks.
pub(crate) const CERTIFICATE_LABEL: &str = "CERTIFICATE";
/// Label of PKCS#10 request blocks (openssl before 0.9.8 wrote `NEW CERTIFICATE REQUEST`).
pub(crate) const CSR_LABEL: &str = "CERTIFICATE REQUEST";
/// Description of the labels accepted for keys, for error messages.
pub(crate) const KEY_LABEL: &str = "PRIVATE KEY";

/// Reads every certificate block of a PEM bundle (e.g. a CA bundle with several accepted CAs).
///
/// Other blocks are skipped. Each certificate is checked to be X.509 DER so that a broken bundle
/// fails when it is loaded, not at the first handshake. An input without any certificate is an
/// error.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    const WHAT: &str = "certificate";
    let certs: Vec<_> = parse_blocks(pem, WHAT)?
        .into_iter()
        .filter(|b| b.tag() == CERTIFICATE_LABEL)
        .map(|b| b.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(Error::MissingPemBlock {
            what: WHAT,
            label: CERTIFICATE_LABEL,
        });
    }
    for der in &certs {
        parse_certificate(der)?;
    }
    Ok(certs.into_iter().map(CertificateDer::from).collect())
}

/// Encodes certificates as one PEM bundle (`CERTIFICATE` blocks, `\n` line endings), in order.
///
/// The counterpart of [`certificates_from_pem`]: trustd rebuilds the CA bundle it hands out
/// from parsed certificates, so nothing but certificates (no stray key block of a hand-edited
/// file) ever leaves the node.
pub fn certificates_to_pem<C: AsRef<[u8]>>(certs: &[C]) -> String {
    certs
        .iter()
        .map(|der| encode(CERTIFICATE_LABEL, der.as_ref()))
        .collect()
}

/// Decodes every PEM block, refusing broken framing and truncated blocks.
pub(crate) fn parse_blocks(input: &[u8], what: &'static str) -> Result<Vec<pem::Pem>, Error> {
    let blocks = pem::parse_many(input).map_err(|source| Error::ParsePem { what, source })?;
    // Every BEGIN line must have produced a block; otherwise one was cut off.
    if count_begin_lines(input) != blocks.len() {
        return Err(Error::ParsePem {
            what,
            source: pem::PemError::MalformedFraming,
        });
    }
    Ok(blocks)
}

/// Returns the contents of the first block with one of `labels`.
pub(crate) fn first_block(
    input: &[u8],
    what: &'static str,
    labels: &[&str],
    missing_label: &'static str,
) -> Result<Vec<u8>, Error> {
    parse_blocks(input, what)?
        .into_iter()
        .find(|b| labels.contains(&b.tag()))
        .map(pem::Pem::into_contents)
        .ok_or(Error::MissingPemBlock {
            what,
            label: missing_label,
        })
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, Error> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| Error::ParseCertificate(e.into()))?;
    if !rest.is_empty() {
        return Err(Error::TrailingData {
            what: "certificate",
        });
    }
    Ok(cert)
}

/// Encodes DER as a PEM block with `\n` line endings.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn count_begin_lines(input: &[u8]) -> usize {
    const BEGIN: &[u8] = b"-----BEGIN ";
    input.windows(BEGIN.len()).filter(|w| *w == BEGIN).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_block_is_a_pem_error() {
        let full = encode(CERTIFICATE_LABEL, &[0x30; 300]);
        let truncated = &full[..full.len() / 2];
        assert!(matches!(
            certificates_from_pem(truncated.as_bytes()),
            Err(Error::ParsePem { .. })
        ));
    }

    #[test]
    fn bad_base64_is_a_pem_error() {
        let input = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            certificates_from_pem(input.as_bytes()),
            Err(Error::ParsePem { .. })
        ));
    }

    #[test]
    fn a_bundle_round_trips_and_keeps_only_certificates() {
        let ca = crate::CertificateAuthority::generate(&crate::CaOptions::talos_os()).expect("ca");
        let other =
            crate::CertificateAuthority::generate(&crate::CaOptions::talos_os()).expect("ca");
        let input = format!("{}{}{}", ca.cert_pem(), ca.key_pem(), other.cert_pem());
        let certs = certificates_from_pem(input.as_bytes()).expect("parse");
        assert_eq!(certs.len(), 2);
        let bundle = certificates_to_pem(&certs);
        assert!(!bundle.contains("PRIVATE KEY"));
        assert_eq!(bundle, format!("{}{}", ca.cert_pem(), other.cert_pem()));
        assert_eq!(
            certificates_from_pem(bundle.as_bytes()).expect("again"),
            certs
        );
    }

    #[test]
    fn empty_input_has_no_certificate() {
        assert!(matches!(
            certificates_from_pem(b""),
            Err(Error::MissingPemBlock { .. })
        ));
    }

    #[test]
    fn a_block_that_is_not_x509_is_a_certificate_error() {
        let input = encode(CERTIFICATE_LABEL, b"definitely not DER");
        assert!(matches!(
            certificates_from_pem(input.as_bytes()),
            Err(Error::ParseCertificate(_))
        ));
    }
}
