//! apid endpoints as clients dial them: `host` or `host:port`, port 50000 by default.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use basalt_config::{APID_PORT, Endpoint, Host};
use rustls_pki_types::ServerName;

use crate::error::Error;

/// One apid address to dial: a host (IP address or DNS name) and a port.
///
/// Parsed the way talosctl reads `endpoints` (talos-facts §1.9): `10.0.0.1`, `node.example`,
/// `10.0.0.1:50001`, `[fd00::1]:50000` or a bare `fd00::1`; a missing port becomes
/// [`APID_PORT`]. The host is also the TLS server name, so apid's certificate needs a SAN for
/// every endpoint clients dial.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ApidEndpoint {
    host: Host,
    port: u16,
}

impl ApidEndpoint {
    /// An endpoint from its parts.
    pub fn new(host: Host, port: u16) -> Self {
        Self { host, port }
    }

    /// The host part.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (50000 unless the endpoint named one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name the server certificate is checked against: the endpoint's IP address (no SNI
    /// is sent) or DNS name.
    pub fn server_name(&self) -> Result<ServerName<'static>, Error> {
        match &self.host {
            Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
            Host::Dns(name) => {
                ServerName::try_from(name.clone()).map_err(|_| Error::InvalidEndpoint {
                    endpoint: self.to_string(),
                    reason: "not usable as a TLS server name".to_owned(),
                })
            }
        }
    }

    /// The URI tonic is given. The scheme is `http` because TLS is done by our own connector
    /// (tonic would otherwise insist on its own TLS setup for `https`); the wire is still TLS.
    pub(crate) fn uri(&self) -> String {
        format!("http://{self}")
    }

    /// `host:port` as `TcpStream::connect` takes it (IPv6 in brackets).
    pub(crate) fn authority(&self) -> String {
        self.to_string()
    }
}

impl FromStr for ApidEndpoint {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let endpoint =
            text.trim()
                .parse::<Endpoint>()
                .map_err(|reason| Error::InvalidEndpoint {
                    endpoint: text.to_owned(),
                    reason,
                })?;
        Ok(Self {
            port: endpoint.port_or(APID_PORT),
            host: endpoint.host().clone(),
        })
    }
}

impl fmt::Display for ApidEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// Parses every endpoint of a list; an empty list is [`Error::NoEndpoints`].
pub fn parse_endpoints<S: AsRef<str>>(texts: &[S]) -> Result<Vec<ApidEndpoint>, Error> {
    if texts.is_empty() {
        return Err(Error::NoEndpoints);
    }
    texts.iter().map(|text| text.as_ref().parse()).collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn parse(text: &str) -> ApidEndpoint {
        text.parse().expect(text)
    }

    #[test]
    fn a_bare_host_gets_port_50000() {
        let ep = parse("10.0.0.1");
        assert_eq!(ep.host(), &Host::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!(ep.port(), 50000);
        assert_eq!(ep.to_string(), "10.0.0.1:50000");
        assert_eq!(parse("node-1.example").to_string(), "node-1.example:50000");
    }

    #[test]
    fn an_explicit_port_is_kept() {
        assert_eq!(parse("127.0.0.2:50010").port(), 50010);
        assert_eq!(parse("cp.example:1234").to_string(), "cp.example:1234");
    }

    #[test]
    fn ipv6_is_written_in_brackets() {
        let ep = parse("[fd00::1]:50001");
        assert_eq!(ep.host(), &Host::Ip(IpAddr::V6("fd00::1".parse().unwrap())));
        assert_eq!(ep.to_string(), "[fd00::1]:50001");
        assert_eq!(parse("::1").to_string(), "[::1]:50000");
        assert_eq!(parse("[::1]").uri(), "http://[::1]:50000");
    }

    #[test]
    fn server_name_is_the_host() {
        assert_eq!(
            parse("127.0.0.1:50000").server_name().unwrap(),
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
        );
        assert_eq!(
            parse("[::1]").server_name().unwrap(),
            ServerName::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST).into())
        );
        assert_eq!(
            parse("cp.example").server_name().unwrap(),
            ServerName::try_from("cp.example").unwrap()
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for text in [
            "",
            "https://10.0.0.1",
            "fd00::1:50000:x",
            "10.0.0.1:99999",
            "a b",
        ] {
            let err = text.parse::<ApidEndpoint>().unwrap_err();
            assert!(
                matches!(err, Error::InvalidEndpoint { .. }),
                "{text:?}: {err:?}"
            );
        }
        assert!(matches!(
            parse_endpoints::<&str>(&[]),
            Err(Error::NoEndpoints)
        ));
    }
}
