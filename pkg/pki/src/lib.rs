//! basalt-pki: everything X.509 for basalt.
//!
//! # What this crate owns
//!
//! - **Keys**: Ed25519 (default, as the Talos OS CA) and ECDSA P-256, generated with ring; PEM
//!   in with the labels Talos and openssl write (`PRIVATE KEY`, `ED25519 PRIVATE KEY`,
//!   `EC PRIVATE KEY`), PEM out as PKCS#8 ([`PrivateKey`]).
//! - **The CA and its leaves** ([`CertificateAuthority`]): the OS CA as Talos makes it, client
//!   certificates whose Organization values are roles and whose EKU is exactly clientAuth, and
//!   server certificates with DNS/IP SANs and EKU serverAuth.
//! - **CSRs and the signing policy** ([`build_csr`], [`Csr`], [`SigningPolicy`]): trustd signs
//!   only what the policy builds, taking from a verified CSR just its key, CN and SANs.
//! - **Reading identities** ([`Identity`]): CN, roles, serial, fingerprint and EKU of a leaf.
//! - **PEM** ([`certificates_from_pem`], [`certificates_to_pem`]) and the one-time rustls
//!   crypto-provider install ([`install_crypto_provider`]).
//!
//! # What it must not contain
//!
//! No tokio, no tonic, no sockets, no file I/O: callers read files and pass bytes. Crypto is
//! ring only (no aws-lc). Only this crate depends on rcgen and x509-parser.
//!
//! # Failure model
//!
//! Every parse of untrusted input (PEM, DER, CSRs, keys) returns an [`Error`]; nothing here
//! panics on input.

#![forbid(unsafe_code)]

mod ca;
mod csr;
mod der;
mod error;
mod identity;
mod issuer;
mod key;
mod name;
mod pem;
mod policy;
pub mod tls;

pub use crate::ca::{
    CA_VALIDITY, CLOCK_SKEW_ALLOWANCE, CaOptions, CertificateAuthority, ClientCertRequest,
    IssuedCert, ServerCertRequest, TALOS_CA_ORGANIZATION,
};
pub use crate::csr::{Csr, build_csr};
pub use crate::error::Error;
pub use crate::identity::{ExtKeyUsage, Identity, hex};
pub use crate::issuer::{is_issued_by, issuer_common_name};
pub use crate::key::{KeyAlgorithm, PrivateKey};
pub use crate::name::{
    MAX_COMMON_NAME_LEN, MAX_DNS_LABEL_LEN, MAX_DNS_NAME_LEN, MAX_ORGANIZATION_LEN, SubjectAltName,
    validate_common_name, validate_dns_name,
};
pub use crate::pem::{certificates_from_pem, certificates_to_pem};
pub use crate::policy::{DEFAULT_CSR_TTL, DEFAULT_MAX_CSR_BYTES, DEFAULT_MAX_SANS, SigningPolicy};
pub use crate::tls::{
    RevocationCheck, TlsError, client_config, server_config_for_apid,
    server_config_for_apid_with_revocation, server_config_without_client_auth,
};

/// Installs ring as the process-wide rustls crypto provider.
///
/// rustls 0.23 refuses to build configs when no provider, or more than one, is available.
/// Call this early in every binary and test that builds a rustls config; calling it again is
/// harmless (the "already installed" result is ignored).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_provider_install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
