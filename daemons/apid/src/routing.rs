//! The `node` / `nodes` metadata keys: where a call goes (talos-facts.md §1.4).
//!
//! Talos clients name their target node in metadata: talosctl ≥ 1.14 always sends `node`
//! (one-to-one), older ones send `nodes` (one-to-many, see [`crate::fanout`]). [`route`]
//! turns the metadata into a [`Route`], in Talos's order:
//!
//! 1. a call that another apid forwarded (`proxyfrom` from an `os:impersonator` peer) is
//!    served here, whatever it names: the loop guard;
//! 2. `node` with several values is InvalidArgument;
//! 3. `nodes` fans out to every target, for the services Talos allows it on;
//! 4. `node` naming this node is served here, any other node is forwarded to its apid;
//! 5. no target: served here. A `node` or `nodes` value that is empty or not text is an
//!    invalid target, never "no target".
//!
//! A node without forwarding credentials (a worker) refuses every call that needs another
//! node with PermissionDenied "no request forwarding", as a Talos worker does. Both keys are
//! removed from the request: they never travel further.
//!
//! "This node" is every name in apid's own server certificate (its IP and DNS SANs and its
//! CN): machined puts the node's addresses, hostname and configured certSANs there, and a
//! client can only reach apid through a name that certificate vouches for. A target may carry
//! a port (`10.0.0.2:50001`, `[fd00::2]:50001`); without one it means apid's own port, and
//! with one it is this node only when the port is apid's too.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use basalt_authz::metadata::{NODE, NODES};
use basalt_pki::Identity;
use http::{HeaderMap, HeaderName};

/// Most targets one `nodes` call may name; more is refused rather than fanned out.
pub(crate) const MAX_TARGETS: usize = 256;

/// `node` and `nodes`, parsed once: a lookup by `&str` parses the name on every call.
static NODE_KEY: HeaderName = HeaderName::from_static(NODE);
static NODES_KEY: HeaderName = HeaderName::from_static(NODES);

/// Method prefixes that may be fanned out with `nodes` (Talos's list): their replies follow
/// the `messages` / `metadata = 1` envelope that fan-out splices.
const ONE_TO_MANY_PREFIXES: &[&str] = &[
    "/machine.MachineService/",
    "/cluster.ClusterService/",
    "/inspect.InspectService/",
    "/storage.StorageService/",
    "/time.TimeService/",
];

/// The names under which this node is addressed.
#[derive(Clone, Debug, Default)]
pub(crate) struct LocalNames {
    names: BTreeSet<String>,
    /// The port apid listens on: a target without a port means this one.
    port: u16,
}

impl LocalNames {
    /// Every SAN and the CN of apid's server certificate, for an apid listening on `port`.
    pub(crate) fn from_server_cert(pem: &str, port: u16) -> Result<Self, basalt_pki::Error> {
        let identity = Identity::from_pem(pem)?;
        let names = identity
            .dns_names
            .iter()
            .chain(identity.common_name.iter())
            .map(|name| name.to_ascii_lowercase())
            .chain(identity.ip_addresses.iter().map(IpAddr::to_string))
            .collect();
        Ok(LocalNames { names, port })
    }

    /// Whether `target` names this node. IPs compare by value (`::1` and `0:0::1` match).
    fn contains(&self, target: &Target) -> bool {
        let host = match &target.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Dns(name) => name.to_ascii_lowercase(),
        };
        self.names.contains(&host) && target.port.is_none_or(|port| port == self.port)
    }
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To this node's machined.
    Local,
    /// One-to-one to another node's apid.
    One(Target),
    /// One-to-many: every target's reply, with its metadata, merged into one.
    Many(Vec<FanoutTarget>),
}

impl Route {
    /// The targets, as named, for the audit record (none for a local call).
    pub(crate) fn target_names(&self) -> Vec<String> {
        match self {
            Route::Local => Vec::new(),
            Route::One(target) => vec![target.name.clone()],
            Route::Many(targets) => targets.iter().map(|t| t.target.name.clone()).collect(),
        }
    }
}

/// One target of a `nodes` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FanoutTarget {
    /// The node as named.
    pub(crate) target: Target,
    /// Whether it is this node (served by machined directly, without a hop).
    pub(crate) local: bool,
}

/// A node as a client named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The value as the client sent it: the `hostname` of fan-out metadata.
    pub(crate) name: String,
    /// The host to dial and to verify the server certificate against.
    pub(crate) host: Host,
    /// The port, when the client named one.
    pub(crate) port: Option<u16>,
}

/// A target's host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Host {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    /// As in a URI authority: IPv6 in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Target {
    /// Parses `host`, `host:port`, an IPv6 address, or `[ipv6]` with an optional `:port`.
    pub(crate) fn parse(value: &str) -> Result<Self, RouteError> {
        let invalid = || RouteError::InvalidTarget {
            target: value.to_owned(),
        };
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(invalid)?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| invalid())?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(invalid)?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else if let Ok(ip) = value.parse::<IpAddr>() {
            (Host::Ip(ip), None)
        } else {
            let (host, port) = match value.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (value, None),
            };
            let host = match host.parse::<IpAddr>() {
                Ok(ip @ IpAddr::V4(_)) => Host::Ip(ip),
                Ok(IpAddr::V6(_)) => return Err(invalid()),
                Err(_) if basalt_pki::validate_dns_name(host).is_ok() => Host::Dns(host.to_owned()),
                Err(_) => return Err(invalid()),
            };
            (host, port)
        };
        let port = match port {
            None => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(invalid)?,
            ),
        };
        Ok(Target {
            name: value.to_owned(),
            host,
            port,
        })
    }
}

/// Why a call cannot be routed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// `node` carried more than one value (Talos: InvalidArgument).
    #[error("node metadata must be single-valued")]
    MultiValuedNode,
    /// A target is not a host name, an IP address or either with a port.
    #[error(
        "invalid target {target:?}: name a node by IP address or host name, optionally with \
         :port (IPv6 in brackets)"
    )]
    InvalidTarget {
        /// The value as sent.
        target: String,
    },
    /// `nodes` named more targets than one call may fan out to.
    #[error("nodes names {count} targets; at most {MAX_TARGETS} are allowed in one call")]
    TooManyTargets {
        /// How many were named.
        count: usize,
    },
    /// `nodes` on a method whose reply has no per-node envelope (Talos's text).
    #[error("one-2-many proxying is not supported for method {method}")]
    OneToManyUnsupported {
        /// The full method path.
        method: String,
    },
    /// The call names another node, and this apid has no credentials to forward (a worker).
    #[error(
        "no request forwarding: {target:?} is not this node, and this node does not forward \
         calls to other nodes (only control planes do); call that node's endpoint directly or \
         through a control plane"
    )]
    NoForwarding {
        /// The first target that is not this node.
        target: String,
    },
}

/// Decides where a call goes and removes `node` / `nodes` from `headers`; see the module
/// docs. `forwarded` is true when another apid forwarded the call (the loop guard);
/// `can_forward` when this apid has forwarding credentials.
pub(crate) fn route(
    headers: &mut HeaderMap,
    local: &LocalNames,
    method: &str,
    forwarded: bool,
    can_forward: bool,
) -> Result<Route, RouteError> {
    let node = values(headers, &NODE_KEY);
    let nodes = values(headers, &NODES_KEY);
    headers.remove(&NODE_KEY);
    headers.remove(&NODES_KEY);
    if forwarded {
        return Ok(Route::Local);
    }
    let (node, nodes) = (node?, nodes?);
    if node.len() > 1 {
        return Err(RouteError::MultiValuedNode);
    }
    if !nodes.is_empty() {
        if !ONE_TO_MANY_PREFIXES.iter().any(|p| method.starts_with(p)) {
            return Err(RouteError::OneToManyUnsupported {
                method: method.to_owned(),
            });
        }
        if nodes.len() > MAX_TARGETS {
            return Err(RouteError::TooManyTargets { count: nodes.len() });
        }
        let mut targets = Vec::with_capacity(nodes.len());
        for value in &nodes {
            let target = Target::parse(value)?;
            let is_local = local.contains(&target);
            if !is_local && !can_forward {
                return Err(RouteError::NoForwarding {
                    target: target.name,
                });
            }
            targets.push(FanoutTarget {
                target,
                local: is_local,
            });
        }
        return Ok(Route::Many(targets));
    }
    if let Some(value) = node.first() {
        let target = Target::parse(value)?;
        if local.contains(&target) {
            return Ok(Route::Local);
        }
        if !can_forward {
            return Err(RouteError::NoForwarding {
                target: target.name,
            });
        }
        return Ok(Route::One(target));
    }
    Ok(Route::Local)
}

/// Every value of a metadata key; grpc-go may also join several values with commas.
///
/// A value that is empty or not text names no node, and is refused as an invalid target:
/// dropping it would serve the call here, on a node the caller did not name.
fn values(headers: &HeaderMap, key: &HeaderName) -> Result<Vec<String>, RouteError> {
    let mut values = Vec::new();
    for value in headers.get_all(key) {
        let text = value.to_str().map_err(|_| RouteError::InvalidTarget {
            target: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })?;
        for target in text.split(',').map(str::trim) {
            if target.is_empty() {
                return Err(RouteError::InvalidTarget {
                    target: text.trim().to_owned(),
                });
            }
            values.push(target.to_owned());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const VERSION: &str = "/machine.MachineService/Version";

    fn local() -> LocalNames {
        LocalNames {
            names: ["127.0.0.1", "::1", "localhost", "node-1"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            port: 50000,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (key, value) in pairs {
            map.append(*key, value.parse().unwrap());
        }
        map
    }

    fn route_of(
        pairs: &[(&'static str, &'static str)],
        can_forward: bool,
    ) -> Result<Route, RouteError> {
        route(&mut headers(pairs), &local(), VERSION, false, can_forward)
    }

    fn target(value: &str) -> Target {
        Target::parse(value).unwrap()
    }

    #[test]
    fn no_target_is_local() {
        let mut map = headers(&[("other", "x")]);
        assert_eq!(
            route(&mut map, &local(), VERSION, false, true),
            Ok(Route::Local)
        );
        assert!(map.contains_key("other"));
    }

    #[test]
    fn naming_this_node_is_local_and_the_keys_are_removed() {
        for value in [
            "127.0.0.1",
            "0:0::1",
            "NODE-1",
            "localhost",
            "127.0.0.1:50000",
            "[::1]:50000",
        ] {
            let mut map = HeaderMap::new();
            map.append(NODE, value.parse().unwrap());
            assert_eq!(
                route(&mut map, &local(), VERSION, false, false),
                Ok(Route::Local),
                "{value}"
            );
            assert!(!map.contains_key(NODE));
        }
    }

    #[test]
    fn another_port_on_this_host_is_another_node() {
        assert_eq!(
            route_of(&[("node", "127.0.0.1:50001")], true),
            Ok(Route::One(target("127.0.0.1:50001")))
        );
    }

    #[test]
    fn naming_another_node_forwards_or_is_refused_without_credentials() {
        assert_eq!(
            route_of(&[("node", "10.5.0.2")], true),
            Ok(Route::One(target("10.5.0.2")))
        );
        assert_eq!(
            route_of(&[("node", "10.5.0.2")], false),
            Err(RouteError::NoForwarding {
                target: "10.5.0.2".to_owned()
            })
        );
        assert_eq!(
            route_of(&[("nodes", "127.0.0.1"), ("nodes", "worker-2")], false),
            Err(RouteError::NoForwarding {
                target: "worker-2".to_owned()
            })
        );
    }

    #[test]
    fn nodes_fan_out_marking_local_targets() {
        let Ok(Route::Many(targets)) =
            route_of(&[("nodes", "127.0.0.1, worker-2,[fd00::2]:1")], true)
        else {
            panic!("fan-out expected");
        };
        let summary: Vec<(&str, bool)> = targets
            .iter()
            .map(|t| (t.target.name.as_str(), t.local))
            .collect();
        assert_eq!(
            summary,
            [
                ("127.0.0.1", true),
                ("worker-2", false),
                ("[fd00::2]:1", false)
            ]
        );
        // Only local targets need no credentials.
        assert!(matches!(
            route_of(&[("nodes", "127.0.0.1,node-1")], false),
            Ok(Route::Many(t)) if t.len() == 2
        ));
    }

    #[test]
    fn nodes_is_refused_outside_talos_services_and_beyond_the_cap() {
        let mut map = headers(&[("nodes", "a")]);
        assert_eq!(
            route(
                &mut map,
                &local(),
                "/basalt.v1.DiagnosticsService/Read",
                false,
                true
            ),
            Err(RouteError::OneToManyUnsupported {
                method: "/basalt.v1.DiagnosticsService/Read".to_owned()
            })
        );
        let many = (0..=MAX_TARGETS)
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut map = HeaderMap::new();
        map.append(NODES, many.parse().unwrap());
        assert_eq!(
            route(&mut map, &local(), VERSION, false, true),
            Err(RouteError::TooManyTargets {
                count: MAX_TARGETS + 1
            })
        );
    }

    #[test]
    fn a_forwarded_call_is_always_local() {
        let mut map = headers(&[("node", "10.0.0.9"), ("nodes", "a,b")]);
        assert_eq!(
            route(&mut map, &local(), VERSION, true, true),
            Ok(Route::Local)
        );
        assert!(!map.contains_key(NODE) && !map.contains_key(NODES));
    }

    #[test]
    fn an_empty_or_non_text_target_is_invalid_not_local() {
        for (key, value) in [
            ("node", ""),
            ("node", " "),
            ("nodes", ""),
            ("nodes", "127.0.0.1,"),
            ("nodes", " , "),
        ] {
            for can_forward in [true, false] {
                let mut map = HeaderMap::new();
                map.append(key, value.parse().unwrap());
                assert_eq!(
                    route(&mut map, &local(), VERSION, false, can_forward),
                    Err(RouteError::InvalidTarget {
                        target: value.trim().to_owned()
                    }),
                    "{key}: {value:?}"
                );
                assert!(!map.contains_key(key), "{key} is removed");
            }
        }
        let mut map = HeaderMap::new();
        map.append(NODE, HeaderValue::from_bytes(b"node-\xff").unwrap());
        assert_eq!(
            route(&mut map, &local(), VERSION, false, true),
            Err(RouteError::InvalidTarget {
                target: "node-\u{fffd}".to_owned()
            })
        );
        // A forwarded call is served here whatever it names, as before.
        let mut map = headers(&[("node", "")]);
        assert_eq!(
            route(&mut map, &local(), VERSION, true, true),
            Ok(Route::Local)
        );
    }

    #[test]
    fn two_node_values_are_invalid() {
        assert_eq!(
            route_of(&[("node", "127.0.0.1"), ("node", "node-1")], true),
            Err(RouteError::MultiValuedNode)
        );
    }

    #[test]
    fn targets_parse() {
        let t = target("10.0.0.2:50001");
        assert_eq!(
            (t.host.to_string(), t.port),
            ("10.0.0.2".to_owned(), Some(50001))
        );
        let t = target("fd00::2");
        assert_eq!((t.host.to_string(), t.port), ("[fd00::2]".to_owned(), None));
        let t = target("[fd00::2]:7");
        assert_eq!(
            (t.host.to_string(), t.port),
            ("[fd00::2]".to_owned(), Some(7))
        );
        let t = target("worker-1.example");
        assert_eq!(t.host, Host::Dns("worker-1.example".to_owned()));
        for bad in [
            "",
            "a b",
            "host:",
            "host:0",
            "host:70000",
            "[fd00::2",
            "[fd00::2]x",
            "[10.0.0.1]",
            "a/b",
            "http://x",
            "x:1:2",
        ] {
            assert_eq!(
                Target::parse(bad),
                Err(RouteError::InvalidTarget {
                    target: bad.to_owned()
                }),
                "{bad}"
            );
        }
    }
}
