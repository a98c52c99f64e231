//! Join tokens (`[0-9a-z]{6}.[0-9a-z]{16}`) and the crate's one source of randomness.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use ring::rand::{SecureRandom, SystemRandom};

use crate::Error;

/// What [`Token::parse`] accepts, spelled as in error messages.
pub const TOKEN_FORMAT: &str = "[0-9a-z]{6}.[0-9a-z]{16}";

/// Characters a token is made of.
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;

/// A trustd join token (`machine.token`, `trustdinfo.token`) or Kubernetes bootstrap token:
/// six and sixteen characters of `[0-9a-z]` joined by a dot, as Talos's `genToken(6, 16)`.
///
/// `Debug` redacts the value and there is no `Display`, so a token reaches a log only through
/// an explicit [`Token::as_str`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// Checks the format and wraps the string.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if is_token(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::InvalidToken)
        }
    }

    /// A fresh random token from the system CSPRNG.
    pub fn generate() -> Result<Self, Error> {
        let id = random_alphanumeric(ID_LEN)?;
        let secret = random_alphanumeric(SECRET_LEN)?;
        Ok(Self(format!("{id}.{secret}")))
    }

    /// The token text, for writing into a file or a request header.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the token, returning its text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Generates a token of the form `[0-9a-z]{6}.[0-9a-z]{16}` (see [`Token::generate`]).
pub fn generate_token() -> Result<Token, Error> {
    Token::generate()
}

/// True if `text` has the token format `[0-9a-z]{6}.[0-9a-z]{16}`.
pub fn is_token(text: &str) -> bool {
    let is_part = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    match text.split_once('.') {
        Some((id, secret)) => is_part(id, ID_LEN) && is_part(secret, SECRET_LEN),
        None => false,
    }
}

/// `len` characters drawn uniformly from [`ALPHABET`].
///
/// Rejection sampling keeps the draw unbiased: 256 is not a multiple of 36, so bytes at or
/// above 252 (= 7 × 36) are discarded instead of being folded onto the first four characters.
fn random_alphanumeric(len: usize) -> Result<String, Error> {
    const LIMIT: u8 = 252;
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| Error::Random)?;
        for &byte in buf.iter().filter(|&&b| b < LIMIT) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(byte % 36)]));
        }
    }
    Ok(out)
}

/// `N` bytes from the system CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Random)?;
    Ok(buf)
}

/// Standard base64 (with padding) of 32 random bytes: Talos's cluster secret and
/// secretbox encryption secret.
pub(crate) fn random_base64_32() -> Result<String, Error> {
    Ok(STANDARD.encode(random_bytes::<32>()?))
}

/// URL-safe base64 (with padding) of 32 random bytes: Talos's cluster id
/// (`ClusterIDEncoding` is `base64.URLEncoding`, so ids may contain `-` and `_`).
pub(crate) fn random_url_base64_32() -> Result<String, Error> {
    Ok(URL_SAFE.encode(random_bytes::<32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_talos_format() {
        for _ in 0..100 {
            let token = generate_token().unwrap();
            assert!(is_token(token.as_str()), "{}", token.as_str());
            assert_eq!(Token::parse(token.as_str()).unwrap(), token);
        }
        assert_ne!(generate_token().unwrap(), generate_token().unwrap());
    }

    #[test]
    fn generated_tokens_use_the_whole_alphabet() {
        // 100 tokens = 2200 draws; every one of the 36 characters shows up with near certainty
        // (P(miss one) < 36 * (35/36)^2200 ≈ 1e-25), and a biased or truncated alphabet
        // would show as a missing character.
        let mut seen = [false; 36];
        for _ in 0..100 {
            for b in generate_token()
                .unwrap()
                .as_str()
                .bytes()
                .filter(|&b| b != b'.')
            {
                let index = ALPHABET.iter().position(|&a| a == b).unwrap();
                seen[index] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn token_format_is_checked() {
        assert!(is_token("abcdef.0123456789abcdef"));
        for bad in [
            "",
            ".",
            "abcdef0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdefg.0123456789abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde-",
            "abcdef.0123456789abcdef.",
            "abcdef.01234567.9abcdef",
            "abcdé.0123456789abcdef",
        ] {
            assert!(!is_token(bad), "{bad:?}");
            assert!(matches!(Token::parse(bad), Err(Error::InvalidToken)));
        }
    }

    #[test]
    fn debug_redacts() {
        let token = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn random_secrets_decode_to_32_bytes() {
        let secret = random_base64_32().unwrap();
        assert_eq!(STANDARD.decode(secret).unwrap().len(), 32);
        let id = random_url_base64_32().unwrap();
        assert_eq!(URL_SAFE.decode(id).unwrap().len(), 32);
    }
}
