//! Reading who a certificate names: the leaf of a verified chain becomes an [`Identity`].
//!
//! This module does not verify anything; rustls has done that by the time apid calls it. It
//! only extracts the fields the authentication layer, the deny list and the logs need.

use std::net::IpAddr;

use basalt_authz::RoleSet;
use ring::digest;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};

use crate::error::Error;
use crate::pem::{self as pem_util, CERTIFICATE_LABEL};

/// Summary of a certificate's extended key usage extension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtKeyUsage {
    /// `id-kp-clientAuth` is listed.
    pub client_auth: bool,
    /// `id-kp-serverAuth` is listed.
    pub server_auth: bool,
    /// Any other purpose is listed (including `anyExtendedKeyUsage` and unknown OIDs).
    pub other: bool,
    /// The extension is present at all.
    pub present: bool,
}

/// The identity a certificate carries.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Subject CN, if any (the last one, as Go reads it, if there are several).
    pub common_name: Option<String>,
    /// Serial number, lowercase hex without colons or leading zeros (as Go's `Text(16)`).
    pub serial: String,
    /// SHA-256 of the certificate DER, lowercase hex; what the deny list matches.
    pub fingerprint: String,
    /// Subject Organization values, in certificate order.
    pub organizations: Vec<String>,
    /// The organizations read as roles (Talos: unknown roles are kept).
    pub roles: RoleSet,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Basic constraints say CA:TRUE.
    pub is_ca: bool,
    /// Extended key usage summary.
    pub ext_key_usage: ExtKeyUsage,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Issuer name in RFC 4514-like form (`O=talos`).
    pub issuer: String,
    /// Subject name in the same form.
    pub subject: String,
}

impl Identity {
    /// Reads a DER certificate. Malformed certificates, duplicate extensions and extensions
    /// that do not parse are errors, never silently ignored.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let cert = pem_util::parse_certificate(der)?;
        Self::from_x509(&cert, der)
    }

    /// Reads the first `CERTIFICATE` block of a PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let der = pem_util::first_block(
            pem.as_bytes(),
            "certificate",
            &[CERTIFICATE_LABEL],
            CERTIFICATE_LABEL,
        )?;
        Self::from_der(&der)
    }

    /// True when the extended key usage is exactly `[clientAuth]`.
    ///
    /// This is Talos apid's `verifyExtKeyUsage`: a certificate that is also valid for
    /// serverAuth (or has no EKU, which means "any") must not pass as a client, so that a
    /// leaked server cert cannot be used to call the API. Stricter than Go on one point:
    /// unknown EKU OIDs next to clientAuth are refused too.
    pub fn is_client_auth_only(&self) -> bool {
        let eku = self.ext_key_usage;
        eku.present && eku.client_auth && !eku.server_auth && !eku.other
    }

    fn from_x509(cert: &X509Certificate<'_>, der: &[u8]) -> Result<Self, Error> {
        let parse = Error::ParseCertificate;
        let subject = cert.subject();

        let mut common_name = None;
        for attr in subject.iter_common_name() {
            common_name = Some(attr.as_str().map_err(parse)?.to_owned());
        }
        let organizations = subject
            .iter_organization()
            .map(|attr| attr.as_str().map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()
            .map_err(parse)?;
        let roles = RoleSet::parse(organizations.iter().map(String::as_str));

        let is_ca = match unique_extension(cert, &OID_X509_EXT_BASIC_CONSTRAINTS)? {
            Some(ParsedExtension::BasicConstraints(bc)) => bc.ca,
            Some(_) => return Err(parse(X509Error::InvalidExtensions)),
            None => false,
        };

        let ext_key_usage = match unique_extension(cert, &OID_X509_EXT_EXTENDED_KEY_USAGE)? {
            Some(ParsedExtension::ExtendedKeyUsage(eku)) => ExtKeyUsage {
                client_auth: eku.client_auth,
                server_auth: eku.server_auth,
                other: eku.any
                    || eku.code_signing
                    || eku.email_protection
                    || eku.time_stamping
                    || eku.ocsp_signing
                    || !eku.other.is_empty(),
                present: true,
            },
            Some(_) => return Err(parse(X509Error::InvalidExtensions)),
            None => ExtKeyUsage::default(),
        };

        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        match unique_extension(cert, &OID_X509_EXT_SUBJECT_ALT_NAME)? {
            Some(ParsedExtension::SubjectAlternativeName(san)) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                        GeneralName::IPAddress(bytes) => {
                            ip_addresses.push(
                                ip_from_bytes(bytes).ok_or(parse(X509Error::InvalidExtensions))?,
                            );
                        }
                        GeneralName::Invalid(..) => {
                            return Err(parse(X509Error::InvalidExtensions));
                        }
                        _ => {}
                    }
                }
            }
            Some(_) => return Err(parse(X509Error::InvalidExtensions)),
            None => {}
        }

        let validity = cert.validity();
        Ok(Self {
            common_name,
            serial: cert.tbs_certificate.serial.to_str_radix(16),
            fingerprint: hex(digest::digest(&digest::SHA256, der).as_ref()),
            organizations,
            roles,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            is_ca,
            ext_key_usage,
            dns_names,
            ip_addresses,
            issuer: cert.issuer().to_string(),
            subject: subject.to_string(),
        })
    }
}

/// The parsed form of the only extension with `oid`; a duplicate or an extension that fails to
/// parse is an error (x509-parser would otherwise report it as absent).
fn unique_extension<'a>(
    cert: &'a X509Certificate<'_>,
    oid: &x509_parser::der_parser::oid::Oid<'_>,
) -> Result<Option<&'a ParsedExtension<'a>>, Error> {
    match cert
        .get_extension_unique(oid)
        .map_err(Error::ParseCertificate)?
    {
        Some(ext) => match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } | ParsedExtension::UnsupportedExtension { .. } => {
                Err(Error::ParseCertificate(X509Error::InvalidExtensions))
            }
            parsed => Ok(Some(parsed)),
        },
        None => Ok(None),
    }
}

/// An IP SAN is 4 or 16 bytes; anything else is malformed.
pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Lowercase hex without separators, two digits per byte (fingerprints, serials, ids).
pub fn hex(bytes: &[u8]) -> String {
    // A table, not `write!("{b:02x}")`: the formatter cost 8k instructions for a fingerprint,
    // twice in every apid handshake.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use basalt_authz::RoleSet;

    use super::*;
    use crate::ca::{CaOptions, CertificateAuthority, ClientCertRequest};

    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0x10, 0xa5, 0xff]), "000f10a5ff");
        let every: Vec<u8> = (0..=255).collect();
        let expected: String = every.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&every), expected);
    }

    fn issued_client(roles: &[&str]) -> (String, Vec<u8>) {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("ca");
        let issued = ca
            .issue_client(&ClientCertRequest {
                common_name: Some("admin".to_owned()),
                roles: RoleSet::parse(roles.iter().copied()),
                ttl: Duration::from_secs(3600),
            })
            .expect("issue");
        let der = ::pem::parse(&issued.cert_pem).expect("pem").into_contents();
        (issued.cert_pem, der)
    }

    #[test]
    fn identity_round_trips_cn_serial_fingerprint_and_roles() {
        let (pem, der) = issued_client(&["os:reader", "os:operator"]);
        let id = Identity::from_pem(&pem).expect("identity");
        assert_eq!(id.common_name.as_deref(), Some("admin"));
        assert_eq!(
            id.fingerprint,
            hex(digest::digest(&digest::SHA256, &der).as_ref())
        );
        assert_eq!(id.fingerprint.len(), 64);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let raw = x509.raw_serial();
        let stripped: Vec<u8> = raw.iter().copied().skip_while(|&b| b == 0).collect();
        assert_eq!(id.serial, hex(&stripped).trim_start_matches('0'));
        assert!(
            id.serial
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(id.roles.strings(), vec!["os:operator", "os:reader"]);
        assert_eq!(id.issuer, "O=talos");
        assert_eq!(id.subject, "O=os:operator, O=os:reader, CN=admin");
        assert_eq!(
            Identity::from_der(&der).expect("der").fingerprint,
            id.fingerprint
        );
    }

    #[test]
    fn unknown_roles_are_kept() {
        let (pem, _) = issued_client(&["os:admin", "os:future-role"]);
        let id = Identity::from_pem(&pem).expect("identity");
        assert!(id.roles.strings().contains(&"os:future-role".to_owned()));
    }

    #[test]
    fn client_auth_only_needs_exactly_client_auth() {
        let eku = |client_auth, server_auth, other, present| ExtKeyUsage {
            client_auth,
            server_auth,
            other,
            present,
        };
        let (pem, _) = issued_client(&["os:admin"]);
        let mut id = Identity::from_pem(&pem).expect("identity");
        for (usage, expected) in [
            (eku(true, false, false, true), true),
            (eku(true, true, false, true), false),
            (eku(true, false, true, true), false),
            (eku(false, false, false, false), false),
            (eku(false, true, false, true), false),
        ] {
            id.ext_key_usage = usage;
            assert_eq!(id.is_client_auth_only(), expected, "{usage:?}");
        }
    }

    #[test]
    fn a_cert_that_is_not_a_cert_is_a_parse_error() {
        let not_a_cert = crate::pem::encode("CERTIFICATE", &[0x30, 0x03, 0x02, 0x01, 0x05]);
        assert!(matches!(
            Identity::from_pem(&not_a_cert),
            Err(Error::ParseCertificate(_))
        ));
        assert!(matches!(
            Identity::from_der(b"hello"),
            Err(Error::ParseCertificate(_))
        ));
    }

    #[test]
    fn truncated_and_empty_pem_are_pem_errors() {
        let (pem, der) = issued_client(&["os:admin"]);
        assert!(matches!(
            Identity::from_pem(&pem[..pem.len() - 30]),
            Err(Error::ParsePem { .. })
        ));
        assert!(matches!(
            Identity::from_pem(""),
            Err(Error::MissingPemBlock { .. })
        ));
        assert!(Identity::from_der(&[]).is_err());
        // Truncated DER inside well-formed PEM.
        let cut = crate::pem::encode("CERTIFICATE", &der[..der.len() - 10]);
        assert!(matches!(
            Identity::from_pem(&cut),
            Err(Error::ParseCertificate(_))
        ));
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            Identity::from_der(&trailing),
            Err(Error::TrailingData { .. })
        ));
    }

    #[test]
    fn mangled_certificates_never_panic() {
        let (_, der) = issued_client(&["os:admin", "os:reader"]);
        for len in 0..der.len() {
            assert!(
                Identity::from_der(&der[..len]).is_err(),
                "truncated at {len}"
            );
        }
        for i in 0..der.len() {
            for bit in 0..8 {
                let mut mangled = der.clone();
                mangled[i] ^= 1 << bit;
                let _ = Identity::from_der(&mangled);
            }
        }
    }

    #[test]
    fn ip_sans_must_be_four_or_sixteen_bytes() {
        assert!(ip_from_bytes(&[127, 0, 0, 1]).is_some());
        assert!(ip_from_bytes(&[0; 16]).is_some());
        assert!(ip_from_bytes(&[1, 2, 3]).is_none());
        assert!(ip_from_bytes(&[]).is_none());
    }
}
