//! Names that go into certificates: subject alternative names, common names, organizations,
//! and their validation.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::error::Error;

/// Upper bound for a common name (RFC 5280 `ub-common-name`).
pub const MAX_COMMON_NAME_LEN: usize = 64;
/// Upper bound for one Organization value (RFC 5280 `ub-organization-name`).
pub const MAX_ORGANIZATION_LEN: usize = 64;
/// Upper bound for a DNS name in presentation form without the trailing dot (RFC 1035).
pub const MAX_DNS_NAME_LEN: usize = 253;
/// Upper bound for one DNS label (RFC 1035).
pub const MAX_DNS_LABEL_LEN: usize = 63;

/// A subject alternative name basalt puts in server certificates: a DNS name or an IP address.
///
/// Talos copies only these two kinds from a CSR and drops URIs and e-mail addresses; so does
/// basalt. Parse with [`FromStr`] to get validation; values built directly are validated when a
/// certificate is issued.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectAltName {
    /// A host name (no wildcards).
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl SubjectAltName {
    /// Checks that the name is well-formed (IP addresses always are).
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Self::Dns(name) => validate_dns_name(name),
            Self::Ip(_) => Ok(()),
        }
    }
}

impl FromStr for SubjectAltName {
    type Err = Error;

    /// Reads an IP address if the text is one, else a DNS name, which must be well-formed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        validate_dns_name(s)?;
        Ok(Self::Dns(s.to_owned()))
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => ip.fmt(f),
        }
    }
}

/// Checks a DNS name: labels of 1 to 63 characters from `[A-Za-z0-9-]` that do not start or end
/// with `-`, at most 253 characters in all, no wildcard and no trailing dot.
///
/// Talos does not check SANs at all; basalt does, because a trustd caller holds only a shared
/// token and should not be able to get a wildcard or an unparseable name signed.
pub fn validate_dns_name(name: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidSan {
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty DNS name"));
    }
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(invalid("DNS name longer than 253 characters"));
    }
    if name.contains('*') {
        return Err(invalid("wildcard DNS names are not allowed"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid("empty DNS label"));
        }
        if label.len() > MAX_DNS_LABEL_LEN {
            return Err(invalid("DNS label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid(
                "DNS labels may contain only letters, digits and '-'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("DNS labels may not start or end with '-'"));
        }
    }
    Ok(())
}

/// Checks a common name: non-empty, at most 64 characters, no control characters.
pub fn validate_common_name(cn: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidCommonName { reason };
    if cn.is_empty() {
        return Err(invalid("empty"));
    }
    if cn.chars().count() > MAX_COMMON_NAME_LEN {
        return Err(invalid("longer than 64 characters"));
    }
    if cn.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    Ok(())
}

/// Checks one Organization value (one role): non-empty, at most 64 characters, no control
/// characters.
pub(crate) fn validate_organization(value: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidOrganization {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("empty"));
    }
    if value.chars().count() > MAX_ORGANIZATION_LEN {
        return Err(invalid("longer than 64 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_parse_as_ip_sans() {
        assert_eq!(
            "127.0.0.1".parse::<SubjectAltName>().expect("v4"),
            SubjectAltName::Ip([127, 0, 0, 1].into())
        );
        let v6: SubjectAltName = "fd00::1".parse().expect("v6");
        assert!(matches!(v6, SubjectAltName::Ip(IpAddr::V6(_))));
        assert_eq!(v6.to_string(), "fd00::1");
    }

    #[test]
    fn host_names_parse_as_dns_sans() {
        for name in [
            "localhost",
            "talos-default-worker-1",
            "a.b-c.example.com",
            "x1",
        ] {
            let san: SubjectAltName = name.parse().expect(name);
            assert_eq!(san, SubjectAltName::Dns(name.to_owned()));
            assert_eq!(san.to_string(), name);
        }
    }

    #[test]
    fn malformed_dns_names_are_refused() {
        let long_label = "a".repeat(64);
        let long_name = ["a"; 127].join(".") + ".bb";
        for name in [
            "",
            "*.example.com",
            "foo..bar",
            "foo.",
            ".foo",
            "-foo.example",
            "foo-.example",
            "foo_bar",
            "foo bar",
            "exa\u{0}mple",
            "bücher.example",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(
                matches!(
                    name.parse::<SubjectAltName>(),
                    Err(Error::InvalidSan { .. })
                ),
                "{name:?} should be refused"
            );
        }
    }

    #[test]
    fn dns_name_limits_are_inclusive() {
        let label = "a".repeat(63);
        assert!(validate_dns_name(&label).is_ok());
        let name = [
            label.as_str(),
            label.as_str(),
            label.as_str(),
            &"b".repeat(61),
        ]
        .join(".");
        assert_eq!(name.len(), 253);
        assert!(validate_dns_name(&name).is_ok());
    }

    #[test]
    fn common_names_are_bounded() {
        assert!(validate_common_name("talos-default-worker-1").is_ok());
        assert!(validate_common_name(&"é".repeat(64)).is_ok());
        assert!(validate_common_name(&"a".repeat(65)).is_err());
        assert!(validate_common_name("").is_err());
        assert!(validate_common_name("evil\nname").is_err());
    }
}
