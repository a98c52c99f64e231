//! Host names, IP addresses and `host[:port]` endpoints as they appear in configs.
//!
//! Purely syntactic: nothing here resolves a name or touches the network.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Longest DNS name in text form (RFC 1035 §2.3.4, without the trailing dot).
const MAX_DNS_NAME: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_DNS_LABEL: usize = 63;

/// An IP address or a DNS name, e.g. one `machine.certSANs` entry or an endpoint's host.
///
/// The split matters downstream: certificates carry IP SANs and DNS SANs separately
/// (Talos's `CertSANIPs` / `CertSANDNSNames`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, as written (case preserved); may start with a `*.` wildcard label.
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl Host {
    /// Parses an IP address, or else a DNS name (a leading `*.` wildcard label is allowed, as
    /// certificate SANs may carry one).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let name = text.strip_prefix("*.").unwrap_or(text);
        match dns_name_problem(name) {
            None => Ok(Host::Dns(text.to_owned())),
            Some(problem) => Err(format!(
                "{text:?} is neither an IP address nor a valid DNS name ({problem})"
            )),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ip(ip) => ip.fmt(f),
        }
    }
}

/// A control-plane endpoint: a host with an optional port (`10.0.0.1`, `cp.example:50000`,
/// `[fd00::1]:50000`). Without a port, the caller's default applies (apid's 50000).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: Host,
    port: Option<u16>,
}

impl Endpoint {
    /// An endpoint from its parts.
    pub fn new(host: Host, port: Option<u16>) -> Self {
        Self { host, port }
    }

    /// The host part.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port, if one was written.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port, or `default` if none was written.
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }
}

impl FromStr for Endpoint {
    type Err = String;

    /// Parses `host`, `host:port`, `ipv6`, or `[ipv6]:port`; the error is a lower-case reason.
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if text.contains("://") {
            return Err(format!(
                "{text:?} must be host or host:port, without a scheme"
            ));
        }
        if let Some(rest) = text.strip_prefix('[') {
            let Some((inner, after)) = rest.split_once(']') else {
                return Err(format!("{text:?} has an unclosed '['"));
            };
            let ip = inner
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{inner:?} in brackets is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(parse_port(port)?),
                    None => return Err(format!("{text:?} must be [ipv6] or [ipv6]:port")),
                },
            };
            return Ok(Endpoint::new(Host::Ip(IpAddr::V6(ip)), port));
        }
        // A bare IPv6 address has colons but no port.
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Endpoint::new(Host::Ip(ip), None));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "{text:?}: an IPv6 address with a port must be written [address]:port"
                ));
            }
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (text, None),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Endpoint::new(Host::Ip(ip), port));
        }
        match dns_name_problem(host) {
            None => Ok(Endpoint::new(Host::Dns(host.to_owned()), port)),
            Some(problem) => Err(format!(
                "{host:?} is neither an IP address nor a valid DNS name ({problem})"
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (Host::Ip(IpAddr::V6(ip)), Some(port)) => write!(f, "[{ip}]:{port}"),
            (host, Some(port)) => write!(f, "{host}:{port}"),
            (host, None) => host.fmt(f),
        }
    }
}

/// Why `name` is not a DNS name (RFC 1123 host name syntax), or `None` if it is one.
///
/// Labels of letters, digits and inner hyphens, 1–63 bytes each, 253 in all. The last label
/// may not be all digits, so a mistyped IPv4 address such as `10.0.0.256` is not silently
/// taken for a name.
pub(crate) fn dns_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if name.len() > MAX_DNS_NAME {
        return Some("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("empty label");
        }
        if label.len() > MAX_DNS_LABEL {
            return Some("label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Some("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label cannot start or end with '-'");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("the last label cannot be all digits");
    }
    None
}

/// Parses a TCP port 1–65535.
fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("invalid port {text:?}: must be 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ips_or_dns_names() {
        assert_eq!(Host::parse("10.0.0.1"), Ok(Host::Ip([10, 0, 0, 1].into())));
        assert_eq!(Host::parse("::1"), Ok(Host::Ip(Ipv6Addr::LOCALHOST.into())));
        assert_eq!(
            Host::parse("Node-1.example"),
            Ok(Host::Dns("Node-1.example".into()))
        );
        assert_eq!(
            Host::parse("*.example.com"),
            Ok(Host::Dns("*.example.com".into()))
        );
        for bad in [
            "",
            "node_1",
            "-node",
            "node-",
            "a..b",
            "10.0.0.256",
            "*",
            "a.*.b",
            "node 1",
            &"a".repeat(64),
            &format!("{}.com", ["abc"; 70].join(".")),
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn endpoints_parse_and_display() {
        let cases = [
            ("127.0.0.1", "127.0.0.1", None),
            ("127.0.0.1:50000", "127.0.0.1", Some(50000)),
            ("cp.example", "cp.example", None),
            ("cp.example:443", "cp.example", Some(443)),
            ("::1", "::1", None),
            ("[fd00::1]", "fd00::1", None),
            ("[fd00::1]:50000", "fd00::1", Some(50000)),
        ];
        for (text, host, port) in cases {
            let endpoint: Endpoint = text.parse().unwrap();
            assert_eq!(endpoint.host().to_string(), host, "{text}");
            assert_eq!(endpoint.port(), port, "{text}");
            let shown = endpoint.to_string();
            assert_eq!(shown.parse::<Endpoint>().unwrap(), endpoint, "{text}");
        }
        assert_eq!(
            "[::1]:5".parse::<Endpoint>().unwrap().to_string(),
            "[::1]:5"
        );
        assert_eq!("h".parse::<Endpoint>().unwrap().port_or(50000), 50000);
    }

    #[test]
    fn bad_endpoints_say_why() {
        for (text, needle) in [
            ("", "empty"),
            ("https://cp:443", "scheme"),
            ("cp:0", "port"),
            ("cp:65536", "port"),
            ("cp:", "port"),
            ("cp:http", "port"),
            ("fd00::1:99999", "[address]:port"),
            ("[fd00::1", "unclosed"),
            ("[10.0.0.1]:5", "IPv6"),
            ("[::1]5", "[ipv6]:port"),
            ("bad_host:50000", "DNS name"),
        ] {
            let err = text.parse::<Endpoint>().unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
