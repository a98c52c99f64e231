//! The one error type of this crate.
//!
//! Variants are named after the operation that failed. Messages are lower-case, say what was
//! being done, and never contain key material. Sources are attached with `#[source]` and not
//! repeated in the message, so reporters that print the chain show each cause once.

use x509_parser::error::X509Error;

use crate::key::KeyAlgorithm;

/// Everything that can go wrong while generating, parsing or signing X.509 material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CA was loaded from a certificate that may not issue certificates.
    #[error("certificate is not a CA: {reason}")]
    NotACa {
        /// What is missing (basic constraints, key usage).
        reason: &'static str,
    },

    /// rcgen failed to generate a key or to build and sign a certificate or CSR.
    #[error("generate key, certificate or CSR")]
    Generate(#[source] rcgen::Error),

    /// A common name is empty where one is required, too long, or contains control characters.
    #[error("invalid common name: {reason}")]
    InvalidCommonName {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The DER produced while re-encoding a certificate could not be walked (an internal fault,
    /// never caused by caller input).
    #[error("re-encode certificate DER: {reason}")]
    Encode {
        /// What was malformed.
        reason: &'static str,
    },

    /// A subject organization (one role) is empty, too long or contains control characters.
    #[error("invalid organization {value:?}: {reason}")]
    InvalidOrganization {
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A subject alternative name is not a well-formed DNS name or IP address.
    #[error("invalid subject alternative name {value:?}: {reason}")]
    InvalidSan {
        /// The offending value, as requested.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A certificate lifetime is zero or does not fit in an X.509 validity period.
    #[error("invalid certificate lifetime: {reason}")]
    InvalidTtl {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The private key does not belong to the certificate it was loaded with.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,

    /// Talos signs with the CA key type and copies the CSR's signature algorithm, so a CSR whose
    /// key type differs from the CA's cannot be signed.
    #[error("CSR key type {csr} does not match the CA key type {ca}")]
    KeyTypeMismatch {
        /// The key type in the CSR.
        csr: KeyAlgorithm,
        /// The key type of the signing CA.
        ca: KeyAlgorithm,
    },

    /// A PEM input contains no block with the expected label.
    #[error("{what} PEM contains no {label} block")]
    MissingPemBlock {
        /// What was being read ("certificate", "CSR", "private key").
        what: &'static str,
        /// The label that was looked for.
        label: &'static str,
    },

    /// A certificate (or CA certificate) is not valid X.509 DER.
    #[error("parse X.509 certificate")]
    ParseCertificate(#[source] X509Error),

    /// A CSR is not a valid PKCS#10 request.
    #[error("parse certificate signing request")]
    ParseCsr(#[source] X509Error),

    /// A private key is not a PKCS#8 or SEC1 Ed25519 / ECDSA P-256 key.
    #[error("parse private key: {reason}")]
    ParseKey {
        /// What was wrong with it.
        reason: &'static str,
        /// The key library's error, when there is one.
        #[source]
        source: Option<rcgen::Error>,
    },

    /// The PEM framing is broken: a block was truncated, or its base64 does not decode.
    #[error("{what} PEM is truncated or malformed")]
    ParsePem {
        /// What was being read ("certificate", "CSR", "private key").
        what: &'static str,
        /// The PEM decoder's error.
        #[source]
        source: pem::PemError,
    },

    /// The CSR's self-signature does not verify, so nobody proved possession of its key.
    #[error("CSR signature does not verify")]
    CsrSignature(#[source] X509Error),

    /// A CSR is larger than the signing policy allows; refused before parsing.
    #[error("CSR is {size} bytes, more than the limit of {max}")]
    CsrTooLarge {
        /// Size of the PEM input.
        size: usize,
        /// The policy's limit.
        max: usize,
    },

    /// The operating system's random number generator failed.
    #[error("read random bytes from the system")]
    Random,

    /// A CSR or policy asked for more subject alternative names than allowed.
    #[error("{count} subject alternative names requested, more than the limit of {max}")]
    TooManySans {
        /// How many were requested.
        count: usize,
        /// The policy's limit.
        max: usize,
    },

    /// DER input had bytes after the end of the parsed structure.
    #[error("{what} DER has trailing bytes")]
    TrailingData {
        /// What was being parsed.
        what: &'static str,
    },

    /// A key algorithm name or public-key type is not Ed25519 or ECDSA P-256.
    #[error("unsupported key algorithm {name}: basalt uses ed25519 or ecdsa-p256 keys")]
    UnsupportedKeyAlgorithm {
        /// The name or OID that was given.
        name: String,
    },
}
