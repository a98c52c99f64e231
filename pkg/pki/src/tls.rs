//! rustls configs for basalt: apid's mutual-TLS server, trustd's server-only TLS, and the
//! clients that call them.
//!
//! Policy, in one place:
//! - **TLS 1.3 only**, ring provider only, ALPN `h2` (grpc-go ≥ 1.67 insists on it).
//! - apid **requires** a client certificate, verified by webpki against the accepted CA bundle
//!   (several CAs during rotation), and then by [`ClientAuthOnlyVerifier`]: the leaf's extended
//!   key usage must be exactly `[clientAuth]` (Talos apid's `verifyExtKeyUsage`), so a leaked
//!   server certificate, which chains to the same CA, cannot call the API.
//! - No session resumption: a resumed TLS 1.3 session would skip the client verifier, and with
//!   it every later check (EKU, revocation). Tickets and the session cache are both off.
//!
//! Keys are read with [`PrivateKey::from_pem`], not rustls' PEM helpers, because Talos writes
//! its keys with the `ED25519 PRIVATE KEY` label, which those helpers do not parse.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use crate::error::Error;
use crate::identity::{ExtKeyUsage, Identity};
use crate::key::PrivateKey;
use crate::pem::certificates_from_pem;

/// The one ALPN protocol apid speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a rustls config could not be built. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA bundle could not be read as PEM certificates.
    #[error("read CA bundle")]
    ReadCaBundle(#[source] Error),

    /// The certificate chain could not be read as PEM certificates.
    #[error("read certificate chain")]
    ReadCertificate(#[source] Error),

    /// The private key could not be read.
    #[error("read private key")]
    ReadKey(#[source] Error),

    /// A CA certificate was refused as a trust anchor by webpki.
    #[error("use CA certificate as a trust anchor")]
    TrustAnchor(#[source] rustls::Error),

    /// The client-certificate verifier could not be built.
    #[error("build client certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),

    /// The server-certificate verifier could not be built.
    #[error("build server certificate verifier")]
    ServerVerifier(#[source] rustls::server::VerifierBuilderError),

    /// rustls refused the config: for instance the key does not match the certificate.
    #[error("build TLS config")]
    Config(#[source] rustls::Error),
}

/// The leaf's extended key usage is not exactly `[clientAuth]`.
///
/// Carried inside [`CertificateError::Other`] so that whoever logs a failed handshake can
/// recognise it (downcast the [`OtherError`]) and count it as a wrong-EKU refusal.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("client certificate extended key usage must be exactly clientAuth; it {}", describe(.0))]
pub struct ExtKeyUsageError(pub ExtKeyUsage);

impl fmt::Debug for ExtKeyUsageError {
    /// The same text as `Display`: rustls prints [`CertificateError::Other`] with `Debug`, and
    /// this way a logged handshake error reads as a sentence.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn describe(eku: &ExtKeyUsage) -> String {
    if !eku.present {
        return "has no extended key usage extension (valid for any purpose)".to_owned();
    }
    let mut listed = Vec::new();
    if eku.server_auth {
        listed.push("serverAuth");
    }
    if eku.client_auth {
        listed.push("clientAuth");
    }
    if eku.other {
        listed.push("other purposes");
    }
    if listed.is_empty() {
        "lists no purpose".to_owned()
    } else {
        format!("lists {}", listed.join(", "))
    }
}

/// The ring crypto provider, the only one basalt uses (STYLE §11 rule 14).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// apid's server config: TLS 1.3, ALPN `h2`, client certificate required, chained to one of the
/// CAs in `ca_bundle_pem` and with EKU exactly clientAuth, session resumption off.
///
/// `cert_chain_pem` is the server certificate followed by any intermediates; `key_pem` may use
/// the `PRIVATE KEY`, `ED25519 PRIVATE KEY` or `EC PRIVATE KEY` label. Fails if any input does
/// not parse or if the key does not belong to the certificate.
pub fn server_config_for_apid(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    ca_bundle_pem: &[u8],
) -> Result<ServerConfig, TlsError> {
    server_config_for_apid_with_revocation(cert_chain_pem, key_pem, ca_bundle_pem, None)
}

/// [`server_config_for_apid`], and a client certificate that `revocation` reports as revoked
/// is refused with [`CertificateError::Revoked`] after the chain and EKU checks passed.
///
/// `revocation` is consulted at every handshake, so a deny list that changes applies to the
/// next connection without rebuilding the config.
pub fn server_config_for_apid_with_revocation(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    ca_bundle_pem: &[u8],
    revocation: Option<Arc<dyn RevocationCheck>>,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(root_store(ca_bundle_pem)?);
    let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(TlsError::ClientVerifier)?;
    let mut verifier = ClientAuthOnlyVerifier::new(webpki);
    if let Some(revocation) = revocation {
        verifier = verifier.with_revocation(revocation);
    }
    let verifier = Arc::new(verifier);

    let chain = certificates_from_pem(cert_chain_pem).map_err(TlsError::ReadCertificate)?;
    let key = private_key_der(key_pem)?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: every connection runs the full client verification (see module docs).
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(config)
}

/// trustd's server config: TLS 1.3, ALPN `h2`, **no client authentication** (callers are
/// nodes that have no certificate yet; they authenticate with the join token inside the call),
/// no session tickets or session cache.
///
/// Resumption is off for the same reason as apid's, minus the verifier: nothing is gained for
/// a call a node makes twice a day, and every connection stays a full handshake with the
/// current certificate. Inputs are read as in [`server_config_for_apid`].
pub fn server_config_without_client_auth(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<ServerConfig, TlsError> {
    let chain = certificates_from_pem(cert_chain_pem).map_err(TlsError::ReadCertificate)?;
    let key = private_key_der(key_pem)?;
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(config)
}

/// A client config for apid (or any basalt TLS server): TLS 1.3, ALPN `h2`, servers verified
/// against `ca_bundle_pem`, and, when `identity` is `Some((cert_chain_pem, key_pem))`, that
/// client certificate presented.
///
/// Used by `basalt-client`, by apid when it forwards to another node, and by tests.
pub fn client_config(
    ca_bundle_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(root_store(ca_bundle_pem)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(TlsError::ServerVerifier)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_webpki_verifier(verifier);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_chain_pem, key_pem)) => {
            let chain = certificates_from_pem(cert_chain_pem).map_err(TlsError::ReadCertificate)?;
            builder
                .with_client_auth_cert(chain, private_key_der(key_pem)?)
                .map_err(TlsError::Config)?
        }
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Every certificate of a PEM bundle as a trust anchor.
fn root_store(ca_bundle_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates_from_pem(ca_bundle_pem).map_err(TlsError::ReadCaBundle)? {
        roots.add(cert).map_err(TlsError::TrustAnchor)?;
    }
    Ok(roots)
}

/// Reads a PEM key with basalt's loader (all Talos labels) and hands it to rustls as PKCS#8.
fn private_key_der(key_pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = std::str::from_utf8(key_pem).map_err(|_| {
        TlsError::ReadKey(Error::ParseKey {
            reason: "key PEM is not valid UTF-8",
            source: None,
        })
    })?;
    let key = PrivateKey::from_pem(text).map_err(TlsError::ReadKey)?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        key.inner.serialize_der(),
    )))
}

/// Answers whether a client certificate is on a deny list (apid's revocation list).
///
/// Called from the TLS handshake with the verified leaf's serial (lowercase hex, no leading
/// zeros, as [`Identity::serial`]) and SHA-256 fingerprint (lowercase hex); it must be quick
/// and must not block.
pub trait RevocationCheck: fmt::Debug + Send + Sync {
    /// Whether the certificate with this serial or fingerprint is revoked.
    fn is_revoked(&self, serial: &str, fingerprint: &str) -> bool;
}

// === impl ClientAuthOnlyVerifier ===

/// Wraps a chain-verifying [`ClientCertVerifier`] (webpki) and additionally requires the leaf's
/// extended key usage to be exactly `[clientAuth]`.
///
/// webpki alone accepts a leaf that lists serverAuth next to clientAuth, or that has no EKU
/// extension at all (which means "any purpose"); Talos refuses both, and so do we. The chain
/// check runs first, so a certificate from an unknown CA is reported as such.
pub struct ClientAuthOnlyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocation: Option<Arc<dyn RevocationCheck>>,
}

impl ClientAuthOnlyVerifier {
    /// Wraps `inner`, which must verify the chain (and should require a certificate).
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        Self {
            inner,
            revocation: None,
        }
    }

    /// Also refuses a leaf that `revocation` lists ([`CertificateError::Revoked`]).
    pub fn with_revocation(mut self, revocation: Arc<dyn RevocationCheck>) -> Self {
        self.revocation = Some(revocation);
        self
    }
}

impl fmt::Debug for ClientAuthOnlyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuthOnlyVerifier")
            .field("inner", &self.inner)
            .field("revocation", &self.revocation)
            .finish()
    }
}

impl ClientCertVerifier for ClientAuthOnlyVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = Identity::from_der(end_entity).map_err(|_| CertificateError::BadEncoding)?;
        if !identity.is_client_auth_only() {
            return Err(
                CertificateError::Other(OtherError(Arc::new(ExtKeyUsageError(
                    identity.ext_key_usage,
                ))))
                .into(),
            );
        }
        // Last: only a certificate that would otherwise be accepted is reported as revoked.
        if let Some(revocation) = &self.revocation
            && revocation.is_revoked(&identity.serial, &identity.fingerprint)
        {
            return Err(CertificateError::Revoked.into());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use basalt_authz::{Role, RoleSet};
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    use rustls::{ClientConnection, ServerConnection};
    use rustls_pki_types::ServerName;

    use super::*;
    use crate::ca::{CaOptions, CertificateAuthority, ClientCertRequest, ServerCertRequest};
    use crate::name::SubjectAltName;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A CA and a server certificate for 127.0.0.1 issued by it.
    struct Pki {
        ca: CertificateAuthority,
        server_cert: String,
        server_key: String,
    }

    fn pki() -> Pki {
        crate::install_crypto_provider();
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("ca");
        let server = ca
            .issue_server(&ServerCertRequest {
                common_name: None,
                sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
                ttl: HOUR,
            })
            .expect("server cert");
        Pki {
            ca,
            server_cert: server.cert_pem,
            server_key: server.key_pem,
        }
    }

    fn client_cert(ca: &CertificateAuthority) -> (String, String) {
        let issued = ca
            .issue_client(&ClientCertRequest {
                common_name: Some("admin".to_owned()),
                roles: RoleSet::from([Role::Admin]),
                ttl: HOUR,
            })
            .expect("client cert");
        (issued.cert_pem, issued.key_pem)
    }

    /// A leaf with exactly the given EKUs (none: no extension), issued with rcgen by `ca`.
    fn leaf_with_eku(
        ca: &CertificateAuthority,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        let ca_key = KeyPair::from_pem(&ca.key_pem()).expect("ca key");
        let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).expect("issuer");
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "os:admin");
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = ekus;
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Runs a TLS handshake in memory. Returns the server's error, if the server refused.
    fn handshake(server: ServerConfig, client: ClientConfig) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut server = ServerConnection::new(Arc::new(server)).expect("server");
        let mut client = ClientConnection::new(Arc::new(client), name).expect("client");
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("client write");
            if !buf.is_empty() {
                server.read_tls(&mut buf.as_slice()).expect("server read");
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            server.write_tls(&mut buf).expect("server write");
            if !buf.is_empty() {
                client.read_tls(&mut buf.as_slice()).expect("client read");
                // A client-side failure shows up as the server's error on the next round.
                if let Err(err) = client.process_new_packets() {
                    return Err(rustls::Error::General(format!("client: {err}")));
                }
            }
            if !server.is_handshaking() && !client.is_handshaking() {
                assert_eq!(server.alpn_protocol(), Some(ALPN_H2));
                assert!(server.peer_certificates().is_some_and(|c| !c.is_empty()));
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn server_config(pki: &Pki) -> ServerConfig {
        server_config_for_apid(
            pki.server_cert.as_bytes(),
            pki.server_key.as_bytes(),
            pki.ca.cert_pem().as_bytes(),
        )
        .expect("server config")
    }

    fn client_with(pki: &Pki, cert: &str, key: &str) -> ClientConfig {
        client_config(
            pki.ca.cert_pem().as_bytes(),
            Some((cert.as_bytes(), key.as_bytes())),
        )
        .expect("client config")
    }

    fn is_eku_refusal(err: &rustls::Error) -> bool {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<ExtKeyUsageError>().is_some()
            }
            _ => false,
        }
    }

    #[test]
    fn client_auth_only_certificate_is_accepted() {
        let pki = pki();
        let (cert, key) = client_cert(&pki.ca);
        handshake(server_config(&pki), client_with(&pki, &cert, &key)).expect("handshake");
        // The same through rcgen with an explicit clientAuth-only EKU.
        let (cert, key) = leaf_with_eku(&pki.ca, vec![ExtendedKeyUsagePurpose::ClientAuth]);
        handshake(server_config(&pki), client_with(&pki, &cert, &key)).expect("handshake");
    }

    #[test]
    fn client_and_server_auth_certificate_is_refused() {
        let pki = pki();
        let (cert, key) = leaf_with_eku(
            &pki.ca,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let err = handshake(server_config(&pki), client_with(&pki, &cert, &key)).unwrap_err();
        assert!(is_eku_refusal(&err), "{err:?}");
        assert!(
            err.to_string()
                .contains("must be exactly clientAuth; it lists serverAuth, clientAuth"),
            "{err}"
        );
    }

    #[test]
    fn certificate_without_eku_is_refused() {
        let pki = pki();
        let (cert, key) = leaf_with_eku(&pki.ca, vec![]);
        let err = handshake(server_config(&pki), client_with(&pki, &cert, &key)).unwrap_err();
        assert!(is_eku_refusal(&err), "{err:?}");
        assert!(err.to_string().contains("no extended key usage"), "{err}");
    }

    #[test]
    fn server_certificate_used_as_client_is_refused() {
        let pki = pki();
        let err = handshake(
            server_config(&pki),
            client_with(&pki, &pki.server_cert, &pki.server_key),
        )
        .unwrap_err();
        // webpki already refuses a serverAuth-only leaf for client authentication.
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::InvalidPurpose
                        | CertificateError::InvalidPurposeContext { .. }
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn certificate_from_another_ca_is_refused() {
        let pki = pki();
        let other = CertificateAuthority::generate(&CaOptions::talos_os()).expect("other ca");
        let (cert, key) = client_cert(&other);
        let err = handshake(server_config(&pki), client_with(&pki, &cert, &key)).unwrap_err();
        // Every Talos-style CA is named `O=talos`, so webpki finds a same-named issuer and then
        // fails on its signature; a differently named CA gives UnknownIssuer.
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature | CertificateError::UnknownIssuer
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_client_certificate_is_refused() {
        let pki = pki();
        let client = client_config(pki.ca.cert_pem().as_bytes(), None).expect("client");
        let err = handshake(server_config(&pki), client).unwrap_err();
        assert!(
            matches!(err, rustls::Error::NoCertificatesPresented),
            "{err:?}"
        );
    }

    #[test]
    fn a_ca_bundle_with_several_cas_accepts_each() {
        let pki = pki();
        let retired = CertificateAuthority::generate(&CaOptions::talos_os()).expect("retired");
        let bundle = format!("{}{}", pki.ca.cert_pem(), retired.cert_pem());
        let server = || {
            server_config_for_apid(
                pki.server_cert.as_bytes(),
                pki.server_key.as_bytes(),
                bundle.as_bytes(),
            )
            .expect("server config")
        };
        for ca in [&pki.ca, &retired] {
            let (cert, key) = client_cert(ca);
            handshake(server(), client_with(&pki, &cert, &key)).expect("handshake");
        }
    }

    #[test]
    fn server_config_is_tls13_h2_without_resumption() {
        let pki = pki();
        let config = server_config(&pki);
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(config.send_tls13_tickets, 0);
        assert!(!config.session_storage.can_cache());
    }

    #[test]
    fn server_without_client_auth_accepts_a_client_without_a_certificate() {
        let pki = pki();
        let server = server_config_without_client_auth(
            pki.server_cert.as_bytes(),
            pki.server_key.as_bytes(),
        )
        .expect("server config");
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(server.send_tls13_tickets, 0);
        assert!(!server.session_storage.can_cache());
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut server = ServerConnection::new(Arc::new(server)).expect("server");
        let client = client_config(pki.ca.cert_pem().as_bytes(), None).expect("client");
        let mut client = ClientConnection::new(Arc::new(client), name).expect("client");
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("client write");
            server.read_tls(&mut buf.as_slice()).expect("server read");
            server.process_new_packets().expect("server");
            let mut buf = Vec::new();
            server.write_tls(&mut buf).expect("server write");
            client.read_tls(&mut buf.as_slice()).expect("client read");
            client.process_new_packets().expect("client");
            if !server.is_handshaking() && !client.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking() && !client.is_handshaking());
        assert_eq!(server.alpn_protocol(), Some(ALPN_H2));
        assert!(server.peer_certificates().is_none());
        assert!(matches!(
            server_config_without_client_auth(b"junk", pki.server_key.as_bytes()),
            Err(TlsError::ReadCertificate(_))
        ));
    }

    #[test]
    fn talos_ed25519_key_label_is_accepted() {
        let pki = pki();
        let der = ::pem::parse(&pki.server_key).expect("pem").into_contents();
        let talos_key = ::pem::encode(&::pem::Pem::new("ED25519 PRIVATE KEY", der));
        server_config_for_apid(
            pki.server_cert.as_bytes(),
            talos_key.as_bytes(),
            pki.ca.cert_pem().as_bytes(),
        )
        .expect("server config");
    }

    /// A deny list of one serial, for the revocation test.
    #[derive(Debug)]
    struct DenySerial(String);

    impl RevocationCheck for DenySerial {
        fn is_revoked(&self, serial: &str, _fingerprint: &str) -> bool {
            serial == self.0
        }
    }

    #[test]
    fn revoked_client_certificate_is_refused_and_others_are_not() {
        let pki = pki();
        let (revoked_cert, revoked_key) = client_cert(&pki.ca);
        let (good_cert, good_key) = client_cert(&pki.ca);
        let serial = Identity::from_pem(&revoked_cert).expect("identity").serial;
        let server = || {
            server_config_for_apid_with_revocation(
                pki.server_cert.as_bytes(),
                pki.server_key.as_bytes(),
                pki.ca.cert_pem().as_bytes(),
                Some(Arc::new(DenySerial(serial.clone()))),
            )
            .expect("server config")
        };
        let err = handshake(server(), client_with(&pki, &revoked_cert, &revoked_key))
            .expect_err("revoked certificate accepted");
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );
        handshake(server(), client_with(&pki, &good_cert, &good_key))
            .expect("a certificate not on the list is accepted");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let pki = pki();
        let cert = pki.server_cert.as_bytes();
        let key = pki.server_key.as_bytes();
        let ca = pki.ca.cert_pem().as_bytes();
        assert!(matches!(
            server_config_for_apid(cert, key, b""),
            Err(TlsError::ReadCaBundle(_))
        ));
        assert!(matches!(
            server_config_for_apid(b"junk", key, ca),
            Err(TlsError::ReadCertificate(_))
        ));
        assert!(matches!(
            server_config_for_apid(cert, cert, ca),
            Err(TlsError::ReadKey(_))
        ));
        assert!(matches!(
            server_config_for_apid(cert, &[0xff, 0xfe], ca),
            Err(TlsError::ReadKey(_))
        ));
        let (_, other_key) = client_cert(&pki.ca);
        assert!(matches!(
            server_config_for_apid(cert, other_key.as_bytes(), ca),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            client_config(b"", None),
            Err(TlsError::ReadCaBundle(_))
        ));
    }
}
