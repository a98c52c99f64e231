//! The accepted join tokens, held as SHA-256 digests, and the constant-time check.
//!
//! Both sides are hashed before comparing, as Talos does: the comparison then always runs over
//! 32 bytes whatever the presented length, so neither the length nor a common prefix of the
//! real token shows in the timing. Every accepted token is compared, without stopping at a
//! match, so the time does not tell which entry matched either. Only the digests are kept in
//! memory.

use std::fmt;
use std::time::SystemTime;

use basalt_config::AcceptedToken;
use ring::digest::{SHA256, digest};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// How many hex digits of a token's SHA-256 name it in logs and the journal.
const FINGERPRINT_HEX_DIGITS: usize = 8;

/// A short public name for a token: the first 8 hex digits of its SHA-256
/// (`printf %s "$TOKEN" | sha256sum | cut -c1-8`).
///
/// It lets an operator see in the journal which token a node used (is anyone still on the
/// retired one?) without the token itself ever being written down; 32 bits of a hash say
/// nothing useful about a 22-character random token.
pub fn token_fingerprint(token: &str) -> String {
    fingerprint_of(&sha256(token.as_bytes()))
}

/// The outcome of checking a presented token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// The token is accepted; carries its fingerprint.
    Accepted {
        /// [`token_fingerprint`] of the token.
        fingerprint: String,
    },
    /// The token was accepted once but its `expires` has passed.
    Expired {
        /// [`token_fingerprint`] of the token.
        fingerprint: String,
    },
    /// The token is not one of ours.
    Unknown,
}

/// The accepted tokens, as digests with their expiry.
pub(crate) struct TokenSet {
    entries: Vec<Entry>,
}

struct Entry {
    digest: [u8; 32],
    expires: Option<SystemTime>,
}

impl TokenSet {
    /// Hashes the configured tokens; the token strings are not kept.
    pub(crate) fn new(tokens: &[AcceptedToken]) -> Self {
        Self {
            entries: tokens
                .iter()
                .map(|t| Entry {
                    digest: sha256(t.token.as_str().as_bytes()),
                    expires: t.expires,
                })
                .collect(),
        }
    }

    /// How many tokens are still valid at `now`.
    pub(crate) fn valid_count(&self, now: SystemTime) -> usize {
        self.entries.iter().filter(|e| is_valid(e, now)).count()
    }

    /// Checks `presented` against every accepted token; see the module docs for why this is
    /// constant-time in the token values.
    pub(crate) fn check(&self, presented: &[u8], now: SystemTime) -> TokenCheck {
        let presented = sha256(presented);
        let mut matched = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            let equal = entry.digest.ct_eq(&presented);
            // Remember the first matching index without branching on the secret comparison.
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index = u32::conditional_select(&index, &i, equal & !matched);
            matched |= equal;
        }
        if !bool::from(matched) {
            return TokenCheck::Unknown;
        }
        // Expiry is not secret: branching on it after the comparison leaks nothing.
        let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
        else {
            return TokenCheck::Unknown;
        };
        let fingerprint = fingerprint_of(&entry.digest);
        if is_valid(entry, now) {
            TokenCheck::Accepted { fingerprint }
        } else {
            TokenCheck::Expired { fingerprint }
        }
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("tokens", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn is_valid(entry: &Entry, now: SystemTime) -> bool {
    entry.expires.is_none_or(|at| now < at)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn fingerprint_of(digest: &[u8; 32]) -> String {
    basalt_pki::hex(&digest[..FINGERPRINT_HEX_DIGITS / 2])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use basalt_config::Token;

    use super::*;

    const CURRENT: &str = "abcdef.0123456789abcdef";
    const RETIRED: &str = "ghijkl.0123456789abcdef";
    const EXPIRED: &str = "mnopqr.0123456789abcdef";

    fn set(now: SystemTime) -> TokenSet {
        let token = |t: &str, expires| AcceptedToken {
            token: Token::parse(t).unwrap(),
            expires,
        };
        TokenSet::new(&[
            token(CURRENT, None),
            token(RETIRED, Some(now + Duration::from_secs(3600))),
            token(EXPIRED, Some(now - Duration::from_secs(1))),
        ])
    }

    #[test]
    fn current_and_retired_tokens_are_accepted_until_they_expire() {
        let now = SystemTime::now();
        let set = set(now);
        assert_eq!(
            set.check(CURRENT.as_bytes(), now),
            TokenCheck::Accepted {
                fingerprint: token_fingerprint(CURRENT)
            }
        );
        assert!(matches!(
            set.check(RETIRED.as_bytes(), now),
            TokenCheck::Accepted { .. }
        ));
        assert!(matches!(
            set.check(RETIRED.as_bytes(), now + Duration::from_secs(3600)),
            TokenCheck::Expired { .. }
        ));
        assert_eq!(
            set.check(EXPIRED.as_bytes(), now),
            TokenCheck::Expired {
                fingerprint: token_fingerprint(EXPIRED)
            }
        );
        assert_eq!(set.valid_count(now), 2);
    }

    #[test]
    fn anything_else_is_unknown() {
        let now = SystemTime::now();
        let set = set(now);
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdeg",
            "abcdef.0123456789abcdef ",
            "ABCDEF.0123456789ABCDEF",
        ] {
            assert_eq!(set.check(bad.as_bytes(), now), TokenCheck::Unknown, "{bad}");
        }
        assert_eq!(set.check(&[0xff; 4096], now), TokenCheck::Unknown);
    }

    #[test]
    fn fingerprints_are_short_hashes_not_the_token() {
        let fp = token_fingerprint(CURRENT);
        assert_eq!(fp.len(), 8);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!CURRENT.contains(&fp));
        assert_ne!(fp, token_fingerprint(RETIRED));
        // sha256("abcdef.0123456789abcdef"), as `sha256sum` prints it.
        let full: String = sha256(CURRENT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(full.starts_with(&fp));
    }

    #[test]
    fn debug_shows_no_digest() {
        let debug = format!("{:?}", set(SystemTime::now()));
        assert_eq!(debug, "TokenSet { tokens: 3, .. }");
    }
}
