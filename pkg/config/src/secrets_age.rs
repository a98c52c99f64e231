//! Secrets bundles encrypted at rest with [age](https://age-encryption.org/v1) (x25519
//! recipients, ASCII armor).
//!
//! `basaltctl gen secrets --encrypt-to age1…` writes the bundle through [`encrypt_bundle`];
//! every command that reads a bundle goes through [`load_bundle`], which takes the optional
//! `--identity FILE`:
//!
//! | file | identity | result |
//! | --- | --- | --- |
//! | plain YAML | none or any | parsed as before (an identity is not needed and not an error) |
//! | age (armored or binary) | none | [`AgeError::IdentityRequired`]: says the file is encrypted and to pass `--identity` |
//! | age | does not match | [`AgeError::Decrypt`] naming the file ("no identity … matches") |
//! | age, truncated or altered | matching | [`AgeError::Decrypt`]: age authenticates every chunk, so nothing partial is parsed |
//!
//! An identity file is what `age-keygen` writes: `AGE-SECRET-KEY-1…` lines, `#` comments and
//! blank lines. Only native x25519 identities are accepted (no plugins, no passphrases: an
//! interactive prompt has no place in a tool that scripts call).
//!
//! Plaintext is held in memory only as long as parsing needs it; the decrypted YAML never
//! touches the disk. A command that changes a bundle (`rotate-ca --with-secrets`) writes it
//! back in the form it found it ([`load_bundle_to_rewrite`]): an encrypted one stays encrypted,
//! to the identities that decrypted it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use age::x25519;

use crate::SecretsBundle;

/// What an armored age file starts with.
pub const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";

/// What a binary age file starts with.
pub const BINARY_MAGIC: &str = "age-encryption.org/v1";

/// Largest encrypted bundle read: a real one is about 10 KiB.
pub const MAX_ENCRYPTED_BYTES: u64 = 1024 * 1024;

/// Errors of encrypting or loading a bundle at rest.
#[derive(Debug, thiserror::Error)]
pub enum AgeError {
    /// `--encrypt-to` is not an x25519 age recipient.
    #[error("{recipient:?} is not an age x25519 recipient (age1…): {reason}")]
    ParseRecipient {
        /// What was given (public, safe to show).
        recipient: String,
        /// age's complaint.
        reason: &'static str,
    },

    /// The identity file could not be read.
    #[error("read age identity file {}", .path.display())]
    ReadIdentity {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A line of the identity file is not an x25519 identity (the line itself is secret and
    /// never shown).
    #[error("age identity file {} line {line}: not an x25519 identity (AGE-SECRET-KEY-1…)", .path.display())]
    ParseIdentity {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },

    /// The identity file holds no identity at all.
    #[error("age identity file {} holds no identity", .path.display())]
    NoIdentity {
        /// The file.
        path: PathBuf,
    },

    /// The bundle file could not be read.
    #[error("read secrets bundle {}", .path.display())]
    ReadBundle {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The bundle file is larger than [`MAX_ENCRYPTED_BYTES`].
    #[error("secrets bundle {} is larger than {MAX_ENCRYPTED_BYTES} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },

    /// The bundle is age-encrypted and no identity was given.
    #[error(
        "secrets bundle {} is age-encrypted: pass the identity that can decrypt it with --identity FILE",
        .path.display()
    )]
    IdentityRequired {
        /// The file.
        path: PathBuf,
    },

    /// Decryption failed: wrong identity, or a truncated or altered file.
    #[error("decrypt secrets bundle {}", .path.display())]
    Decrypt {
        /// The file.
        path: PathBuf,
        /// age's reason ("no identity matched", "invalid header", "MAC mismatch", …).
        #[source]
        source: age::DecryptError,
    },

    /// The decrypted plaintext is not UTF-8 (it was not a bundle).
    #[error("decrypted secrets bundle {} is not UTF-8 text", .path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },

    /// The (decrypted) YAML is not a valid bundle.
    #[error(transparent)]
    Bundle(#[from] crate::Error),

    /// Encryption failed (cannot happen for x25519 recipients writing to memory; kept typed).
    #[error("encrypt the secrets bundle")]
    Encrypt(#[source] std::io::Error),

    /// age refused the recipient list.
    #[error("encrypt the secrets bundle")]
    EncryptSetup(#[source] age::EncryptError),
}

/// Parses an `age1…` x25519 recipient.
pub fn parse_recipient(text: &str) -> Result<x25519::Recipient, AgeError> {
    x25519::Recipient::from_str(text.trim()).map_err(|reason| AgeError::ParseRecipient {
        recipient: text.to_owned(),
        reason,
    })
}

/// Reads an identity file (`age-keygen` format): every non-blank, non-`#` line must be an
/// `AGE-SECRET-KEY-1…` identity, and at least one must be present.
pub fn read_identities(path: &Path) -> Result<Vec<x25519::Identity>, AgeError> {
    let text = std::fs::read_to_string(path).map_err(|source| AgeError::ReadIdentity {
        path: path.to_owned(),
        source,
    })?;
    parse_identities(&text, path)
}

fn parse_identities(text: &str, path: &Path) -> Result<Vec<x25519::Identity>, AgeError> {
    let mut identities = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity = x25519::Identity::from_str(line).map_err(|_| AgeError::ParseIdentity {
            path: path.to_owned(),
            line: index + 1,
        })?;
        identities.push(identity);
    }
    if identities.is_empty() {
        return Err(AgeError::NoIdentity {
            path: path.to_owned(),
        });
    }
    Ok(identities)
}

/// Whether `bytes` look like an age file (armored or binary), judged by the first line.
pub fn is_age_encrypted(bytes: &[u8]) -> bool {
    let start = trim_leading_whitespace(bytes);
    start.starts_with(ARMOR_BEGIN.as_bytes()) || start.starts_with(BINARY_MAGIC.as_bytes())
}

fn trim_leading_whitespace(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[skip..]
}

/// The bundle as an ASCII-armored age file for `recipient`.
pub fn encrypt_bundle(
    bundle: &SecretsBundle,
    recipient: &x25519::Recipient,
) -> Result<Vec<u8>, AgeError> {
    let yaml = bundle.to_yaml()?;
    encrypt(yaml.as_bytes(), std::slice::from_ref(recipient))
}

/// How a bundle file was stored, so that a command that changes the bundle writes it back the
/// same way ([`load_bundle_to_rewrite`], [`render_bundle`]).
#[derive(Debug)]
pub enum BundleForm {
    /// Plain YAML.
    Plain,
    /// age-encrypted; written back to the recipients of the identities that decrypted it.
    Encrypted(Vec<x25519::Recipient>),
}

/// [`load_bundle`], and how the file is stored. An encrypted bundle is to be written back
/// encrypted to every identity in `identity_file` (their public halves), since the other
/// recipients it may have had cannot be read from the file.
pub fn load_bundle_to_rewrite(
    path: &Path,
    identity_file: Option<&Path>,
) -> Result<(SecretsBundle, BundleForm), AgeError> {
    let bundle = load_bundle(path, identity_file)?;
    let form = match identity_file {
        Some(identity_file) if is_age_encrypted(&read_bounded(path)?) => BundleForm::Encrypted(
            read_identities(identity_file)?
                .iter()
                .map(x25519::Identity::to_public)
                .collect(),
        ),
        _ => BundleForm::Plain,
    };
    Ok((bundle, form))
}

/// The bundle's file contents in `form`.
pub fn render_bundle(bundle: &SecretsBundle, form: &BundleForm) -> Result<Vec<u8>, AgeError> {
    let yaml = bundle.to_yaml()?;
    match form {
        BundleForm::Plain => Ok(yaml.into_bytes()),
        BundleForm::Encrypted(recipients) => encrypt(yaml.as_bytes(), recipients),
    }
}

fn encrypt(plaintext: &[u8], recipients: &[x25519::Recipient]) -> Result<Vec<u8>, AgeError> {
    let encryptor = age::Encryptor::with_recipients(
        recipients
            .iter()
            .map(|recipient| recipient as &dyn age::Recipient),
    )
    .map_err(AgeError::EncryptSetup)?;
    let mut out = Vec::new();
    let armored =
        ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).map_err(AgeError::Encrypt)?;
    let mut writer = encryptor.wrap_output(armored).map_err(AgeError::Encrypt)?;
    writer.write_all(plaintext).map_err(AgeError::Encrypt)?;
    writer
        .finish()
        .and_then(ArmoredWriter::finish)
        .map_err(AgeError::Encrypt)?;
    Ok(out)
}

/// Loads the bundle at `path`, decrypting it with the identities in `identity_file` when it is
/// age-encrypted; see the module docs for every case.
pub fn load_bundle(path: &Path, identity_file: Option<&Path>) -> Result<SecretsBundle, AgeError> {
    let bytes = read_bounded(path)?;
    if !is_age_encrypted(&bytes) {
        // Plain bundles keep their exact old behaviour, errors included.
        return SecretsBundle::load(path).map_err(AgeError::Bundle);
    }
    let Some(identity_file) = identity_file else {
        return Err(AgeError::IdentityRequired {
            path: path.to_owned(),
        });
    };
    let identities = read_identities(identity_file)?;
    let text = decrypt(&bytes, &identities, path)?;
    SecretsBundle::from_yaml(&text).map_err(|err| AgeError::Bundle(err.with_path(path)))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, AgeError> {
    let read_error = |source| AgeError::ReadBundle {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_ENCRYPTED_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_ENCRYPTED_BYTES {
        return Err(AgeError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Decrypts an age file (armored or binary) held in memory.
fn decrypt(bytes: &[u8], identities: &[x25519::Identity], path: &Path) -> Result<String, AgeError> {
    let decrypt_error = |source| AgeError::Decrypt {
        path: path.to_owned(),
        source,
    };
    let decryptor = age::Decryptor::new(ArmoredReader::new(trim_leading_whitespace(bytes)))
        .map_err(decrypt_error)?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|id| id as &dyn age::Identity))
        .map_err(decrypt_error)?;
    let mut plaintext = Vec::new();
    // A truncated or altered payload fails its chunk's authentication here, before anything
    // is parsed; the size is bounded by the (bounded) ciphertext.
    reader
        .read_to_end(&mut plaintext)
        .map_err(|err| decrypt_error(age::DecryptError::Io(err)))?;
    String::from_utf8(plaintext).map_err(|_| AgeError::NotText {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{CA_CERT, CA_KEY};
    use age::secrecy::ExposeSecret;

    fn bundle_yaml() -> String {
        let os = crate::CertAndKey::from_pem(CA_CERT, CA_KEY);
        SecretsBundle::new(crate::BundleCerts::os_only(os))
            .expect("bundle")
            .to_yaml()
            .expect("yaml")
    }

    fn identity_file(dir: &Path, identity: &x25519::Identity) -> PathBuf {
        let path = dir.join("key.txt");
        let text = format!(
            "# created: now\n# public key: {}\n\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        );
        std::fs::write(&path, text).expect("write identity");
        path
    }

    #[test]
    fn round_trip_with_a_generated_identity() {
        let dir = tempfile::tempdir().expect("dir");
        let bundle = SecretsBundle::from_yaml(&bundle_yaml()).expect("bundle");
        let identity = x25519::Identity::generate();
        let recipient = parse_recipient(&identity.to_public().to_string()).expect("recipient");
        let encrypted = encrypt_bundle(&bundle, &recipient).expect("encrypt");
        let text = String::from_utf8(encrypted.clone()).expect("armored is text");
        assert!(text.starts_with(ARMOR_BEGIN), "{text}");
        assert!(!text.contains("trustdinfo"), "plaintext leaked: {text}");

        let path = dir.path().join("secrets.yaml");
        std::fs::write(&path, &encrypted).expect("write");
        let key = identity_file(dir.path(), &identity);
        let loaded = load_bundle(&path, Some(&key)).expect("decrypt");
        assert_eq!(loaded, bundle);
    }

    #[test]
    fn an_encrypted_bundle_without_identity_says_so() {
        let dir = tempfile::tempdir().expect("dir");
        let bundle = SecretsBundle::from_yaml(&bundle_yaml()).expect("bundle");
        let identity = x25519::Identity::generate();
        let path = dir.path().join("secrets.yaml");
        std::fs::write(
            &path,
            encrypt_bundle(&bundle, &identity.to_public()).expect("encrypt"),
        )
        .expect("write");
        let err = load_bundle(&path, None).expect_err("needs an identity");
        assert!(matches!(err, AgeError::IdentityRequired { .. }), "{err:?}");
        assert!(err.to_string().contains("--identity"), "{err}");
    }

    #[test]
    fn a_wrong_identity_is_a_decrypt_error() {
        let dir = tempfile::tempdir().expect("dir");
        let bundle = SecretsBundle::from_yaml(&bundle_yaml()).expect("bundle");
        let right = x25519::Identity::generate();
        let wrong = x25519::Identity::generate();
        let path = dir.path().join("secrets.yaml");
        std::fs::write(
            &path,
            encrypt_bundle(&bundle, &right.to_public()).expect("encrypt"),
        )
        .expect("write");
        let key = identity_file(dir.path(), &wrong);
        let err = load_bundle(&path, Some(&key)).expect_err("wrong identity");
        assert!(
            matches!(
                err,
                AgeError::Decrypt {
                    source: age::DecryptError::NoMatchingKeys,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_or_altered_ciphertext_never_yields_a_bundle() {
        let dir = tempfile::tempdir().expect("dir");
        let bundle = SecretsBundle::from_yaml(&bundle_yaml()).expect("bundle");
        let identity = x25519::Identity::generate();
        let key = identity_file(dir.path(), &identity);
        // Binary form, so every byte is ciphertext or header (armor would add base64 errors).
        let yaml = bundle.to_yaml().expect("yaml");
        let encryptor = age::Encryptor::with_recipients(std::iter::once(
            &identity.to_public() as &dyn age::Recipient
        ))
        .expect("encryptor");
        let mut binary = Vec::new();
        let mut writer = encryptor.wrap_output(&mut binary).expect("writer");
        writer.write_all(yaml.as_bytes()).expect("write");
        writer.finish().expect("finish");

        let path = dir.path().join("secrets.age");
        std::fs::write(&path, &binary).expect("write");
        assert_eq!(load_bundle(&path, Some(&key)).expect("intact"), bundle);

        let step = (binary.len() / 64).max(1);
        for len in (0..binary.len()).step_by(step) {
            std::fs::write(&path, &binary[..len]).expect("write");
            assert!(
                load_bundle(&path, Some(&key)).is_err(),
                "truncated at {len}"
            );
        }
        for at in (0..binary.len()).step_by(step) {
            let mut altered = binary.clone();
            altered[at] ^= 0x01;
            std::fs::write(&path, &altered).expect("write");
            assert!(
                load_bundle(&path, Some(&key)).is_err(),
                "bit flipped at {at}"
            );
        }
    }

    #[test]
    fn plain_bundles_load_as_before_with_or_without_identity() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secrets.yaml");
        std::fs::write(&path, bundle_yaml()).expect("write");
        let plain = load_bundle(&path, None).expect("plain");
        let key = identity_file(dir.path(), &x25519::Identity::generate());
        assert_eq!(load_bundle(&path, Some(&key)).expect("plain"), plain);
    }

    #[test]
    fn bad_recipients_and_identity_files_are_named_errors() {
        let err = parse_recipient("age1nope").expect_err("bad recipient");
        assert!(err.to_string().contains("age1nope"), "{err}");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key.txt");
        std::fs::write(&path, "# only a comment\n\n").expect("write");
        assert!(matches!(
            read_identities(&path),
            Err(AgeError::NoIdentity { .. })
        ));
        std::fs::write(&path, "AGE-SECRET-KEY-1SECRETBUTBROKEN\n").expect("write");
        let Err(err) = read_identities(&path) else {
            panic!("a broken identity must be refused");
        };
        assert!(matches!(err, AgeError::ParseIdentity { line: 1, .. }));
        assert!(!err.to_string().contains("SECRETBUTBROKEN"), "{err}");
    }
}
