//! The `node` / `nodes` metadata keys, until apid routes to other nodes.
//!
//! Talos clients name their target node in metadata: talosctl ≥ 1.14 always sends `node`, older
//! ones send `nodes` (talos-facts.md §1.4). basalt does not forward to other apids yet, so apid
//! behaves like a Talos worker, which has no forwarding certificate: a call naming this node is
//! served here with the key removed, and a call naming any other node is refused with
//! PermissionDenied "no request forwarding" — never silently answered by the wrong node.
//!
//! "This node" is every name in apid's own server certificate (its IP and DNS SANs and its
//! CN): machined puts the node's addresses, hostname and configured certSANs there, and a
//! client can only reach apid through a name that certificate vouches for.

use std::collections::BTreeSet;
use std::net::IpAddr;

use basalt_authz::metadata::{NODE, NODES};
use basalt_pki::Identity;
use http::HeaderMap;

/// The names under which this node is addressed.
#[derive(Clone, Debug, Default)]
pub(crate) struct LocalNames {
    names: BTreeSet<String>,
}

impl LocalNames {
    /// Every SAN and the CN of apid's server certificate.
    pub(crate) fn from_server_cert(pem: &str) -> Result<Self, basalt_pki::Error> {
        let identity = Identity::from_pem(pem)?;
        let names = identity
            .dns_names
            .iter()
            .chain(identity.common_name.iter())
            .map(|name| name.to_ascii_lowercase())
            .chain(identity.ip_addresses.iter().map(IpAddr::to_string))
            .collect();
        Ok(LocalNames { names })
    }

    /// Whether `target` names this node. IPs compare by value (`::1` and `0:0::1` match).
    fn contains(&self, target: &str) -> bool {
        match target.parse::<IpAddr>() {
            Ok(ip) => self.names.contains(&ip.to_string()),
            Err(_) => self.names.contains(&target.to_ascii_lowercase()),
        }
    }
}

/// Why a call cannot be served here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// `node` carried more than one value (Talos: InvalidArgument).
    #[error("node metadata must be single-valued")]
    MultiValuedNode,
    /// The call names another node, and this apid does not forward.
    #[error(
        "no request forwarding: {target:?} is not this node, and basalt does not route calls \
         to other nodes yet; call that node's endpoint directly"
    )]
    NoForwarding {
        /// The first target that is not this node.
        target: String,
    },
}

/// Removes `node` / `nodes` when they name only this node; refuses the call otherwise.
pub(crate) fn route_locally(headers: &mut HeaderMap, local: &LocalNames) -> Result<(), RouteError> {
    let node: Vec<String> = values(headers, NODE);
    if node.len() > 1 {
        return Err(RouteError::MultiValuedNode);
    }
    let nodes: Vec<String> = values(headers, NODES);
    if let Some(target) = node.iter().chain(&nodes).find(|t| !local.contains(t)) {
        return Err(RouteError::NoForwarding {
            target: target.clone(),
        });
    }
    headers.remove(NODE);
    headers.remove(NODES);
    Ok(())
}

/// Every value of a metadata key; grpc-go may also join several values with commas.
fn values(headers: &HeaderMap, key: &str) -> Vec<String> {
    headers
        .get_all(key)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalNames {
        LocalNames {
            names: ["127.0.0.1", "::1", "localhost", "node-1"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (key, value) in pairs {
            map.append(*key, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn no_target_is_local() {
        let mut map = headers(&[("other", "x")]);
        assert_eq!(route_locally(&mut map, &local()), Ok(()));
        assert!(map.contains_key("other"));
    }

    #[test]
    fn naming_this_node_is_local_and_the_key_is_removed() {
        for value in ["127.0.0.1", "0:0::1", "NODE-1", "localhost"] {
            let mut map = HeaderMap::new();
            map.append(NODE, value.parse().unwrap());
            assert_eq!(route_locally(&mut map, &local()), Ok(()), "{value}");
            assert!(!map.contains_key(NODE));
        }
        let mut map = headers(&[("nodes", "127.0.0.1, node-1")]);
        assert_eq!(route_locally(&mut map, &local()), Ok(()));
        assert!(!map.contains_key(NODES));
    }

    #[test]
    fn naming_another_node_is_refused() {
        let mut map = headers(&[("node", "10.5.0.2")]);
        assert_eq!(
            route_locally(&mut map, &local()),
            Err(RouteError::NoForwarding {
                target: "10.5.0.2".to_owned()
            })
        );
        let mut map = headers(&[("nodes", "127.0.0.1"), ("nodes", "worker-2")]);
        assert_eq!(
            route_locally(&mut map, &local()),
            Err(RouteError::NoForwarding {
                target: "worker-2".to_owned()
            })
        );
    }

    #[test]
    fn two_node_values_are_invalid() {
        let mut map = headers(&[("node", "127.0.0.1"), ("node", "node-1")]);
        assert_eq!(
            route_locally(&mut map, &local()),
            Err(RouteError::MultiValuedNode)
        );
    }
}
