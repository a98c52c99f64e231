//! The client's TLS material: the CA bundle that must have signed apid's certificate, and the
//! client certificate and key that carry the caller's roles.

use std::fmt;
use std::sync::Arc;

use basalt_config::{Base64Pem, Context};
use basalt_pki::Identity;
use time::OffsetDateTime;

use crate::error::Error;

/// CA bundle, client certificate and key, as PEM.
///
/// Built from a client-config [`Context`] or from explicit PEMs. The client certificate is
/// parsed once here so that its validity can be checked locally before dialing: an expired
/// certificate otherwise shows up as an opaque handshake failure that users read as "node
/// unreachable" (user-asks §1b rows 12–13). `Debug` leaves the key out.
#[derive(Clone)]
pub struct Credentials {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    identity: Arc<Identity>,
}

impl Credentials {
    /// Wraps PEM texts. Fails if the certificate does not parse; the CA bundle and the key are
    /// checked when the TLS config is built ([`crate::Client::connect`]).
    pub fn from_pem(
        ca_pem: impl Into<Vec<u8>>,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<Self, Error> {
        let cert_pem = cert_pem.into();
        // The first certificate of the chain is the leaf; read from bytes so that a non-UTF-8
        // file is a parse error like any other malformed PEM.
        let leaf = basalt_pki::certificates_from_pem(&cert_pem)
            .map_err(|source| Error::ParseClientCertificate { source })?;
        let identity = match leaf.first() {
            Some(der) => Identity::from_der(der)
                .map_err(|source| Error::ParseClientCertificate { source })?,
            None => return Err(Error::MissingCredential { field: "crt" }),
        };
        Ok(Self {
            ca_pem: ca_pem.into(),
            cert_pem,
            key_pem: key_pem.into(),
            identity: Arc::new(identity),
        })
    }

    /// The `ca`, `crt` and `key` of a client-config context; each must be present.
    pub fn from_context(context: &Context) -> Result<Self, Error> {
        let field = |value: &Option<Base64Pem>, name: &'static str| {
            value
                .as_ref()
                .filter(|pem| !pem.is_empty())
                .map(|pem| pem.as_bytes().to_vec())
                .ok_or(Error::MissingCredential { field: name })
        };
        Self::from_pem(
            field(&context.ca, "ca")?,
            field(&context.crt, "crt")?,
            field(&context.key, "key")?,
        )
    }

    /// What the client certificate says: common name, roles, serial, validity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Fails with [`Error::ClientCertificateExpired`] or
    /// [`Error::ClientCertificateNotYetValid`] when `now` lies outside the certificate's
    /// validity.
    pub fn check_validity(&self, now: OffsetDateTime) -> Result<(), Error> {
        if now > self.identity.not_after {
            return Err(Error::ClientCertificateExpired {
                not_after: self.identity.not_after,
            });
        }
        if now < self.identity.not_before {
            return Err(Error::ClientCertificateNotYetValid {
                not_before: self.identity.not_before,
            });
        }
        Ok(())
    }

    /// The rustls client config: TLS 1.3, ALPN h2, servers verified against the CA bundle, this
    /// certificate presented (basalt-pki's one builder, shared with apid's forwarding).
    pub(crate) fn tls_config(&self) -> Result<rustls::ClientConfig, Error> {
        basalt_pki::install_crypto_provider();
        basalt_pki::client_config(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
            .map_err(|source| Error::TlsConfig { source })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("common_name", &self.identity.common_name)
            .field("roles", &self.identity.roles.strings())
            .field("serial", &self.identity.serial)
            .field("not_after", &self.identity.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use basalt_authz::{Role, RoleSet};
    use basalt_pki::{CaOptions, CertificateAuthority, ClientCertRequest};

    use super::*;

    fn context() -> Context {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).unwrap();
        let issued = ca
            .issue_client(&ClientCertRequest {
                common_name: Some("reader@dev".to_owned()),
                roles: RoleSet::from([Role::Reader]),
                ttl: Duration::from_secs(3600),
            })
            .unwrap();
        Context {
            endpoints: vec!["127.0.0.1".to_owned()],
            ca: Some(Base64Pem::from_pem(ca.cert_pem().to_owned())),
            crt: Some(Base64Pem::from_pem(issued.cert_pem)),
            key: Some(Base64Pem::from_pem(issued.key_pem)),
            ..Context::default()
        }
    }

    #[test]
    fn a_context_gives_credentials_and_the_identity() {
        let credentials = Credentials::from_context(&context()).unwrap();
        assert_eq!(credentials.identity().roles.strings(), ["os:reader"]);
        assert!(
            credentials
                .check_validity(OffsetDateTime::now_utc())
                .is_ok()
        );
        let debug = format!("{credentials:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains("PRIVATE KEY"),
            "{debug}"
        );
        credentials.tls_config().unwrap();
    }

    #[test]
    fn each_missing_field_is_named() {
        for field in ["ca", "crt", "key"] {
            let mut context = context();
            match field {
                "ca" => context.ca = None,
                "crt" => context.crt = None,
                _ => context.key = Some(Base64Pem::from_pem("")),
            }
            let err = Credentials::from_context(&context).unwrap_err();
            assert!(
                matches!(err, Error::MissingCredential { field: f } if f == field),
                "{field}: {err:?}"
            );
        }
    }

    #[test]
    fn a_broken_certificate_is_a_parse_error() {
        let err = Credentials::from_pem(
            "",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "",
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::ParseClientCertificate { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn validity_is_checked_both_ways() {
        let credentials = Credentials::from_context(&context()).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(matches!(
            credentials.check_validity(now + time::Duration::days(1)),
            Err(Error::ClientCertificateExpired { .. })
        ));
        assert!(matches!(
            credentials.check_validity(now - time::Duration::days(1)),
            Err(Error::ClientCertificateNotYetValid { .. })
        ));
    }
}
