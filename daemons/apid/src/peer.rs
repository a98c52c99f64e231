//! Who is calling: the verified client certificate of a connection, and the effective roles
//! and caller description of each call.
//!
//! Trust rule (DESIGN §3.2, STYLE §11 rule 3): identity and roles come only from the verified
//! TLS leaf. The internal metadata keys `talos-role`, `basalt-caller` and `proxyfrom` are
//! attacker-controlled when a client sends them, so every value is removed from every request;
//! `talos-role` and `basalt-caller` are honoured only from a peer whose certificate holds
//! `os:impersonator` (another node's apid forwarding a call, Talos's `Injector`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use basalt_authz::{Role, RoleSet, metadata};
use basalt_pki::Identity;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::Error;

/// `talos-role`, parsed once.
static ROLE: HeaderName = HeaderName::from_static(metadata::ROLE);
/// `basalt-caller`, parsed once.
static CALLER: HeaderName = HeaderName::from_static(metadata::CALLER);
/// `proxyfrom`, parsed once.
static PROXY_FROM: HeaderName = HeaderName::from_static(metadata::PROXY_FROM);

/// The verified client certificate of one TLS connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// The TCP peer address.
    pub(crate) addr: SocketAddr,
    /// `addr` as text, rendered once: every audit record of the connection carries it.
    pub(crate) addr_text: Box<str>,
    /// Subject CN, if the certificate has one.
    pub(crate) common_name: Option<String>,
    /// Serial number, lowercase hex.
    pub(crate) serial: String,
    /// SHA-256 of the certificate, lowercase hex.
    pub(crate) fingerprint: String,
    /// The roles in the certificate's Organization values (Talos parsing, unknown kept).
    pub(crate) roles: RoleSet,
    /// The identity of every call that asserts no other roles, built once per connection.
    pub(crate) identity: Arc<CallIdentity>,
}

impl Peer {
    /// Reads the leaf of the chain rustls verified during the handshake.
    pub(crate) fn from_leaf(addr: SocketAddr, leaf: Option<&[u8]>) -> Result<Self, Error> {
        let leaf = leaf.ok_or(Error::NoPeerCertificate)?;
        let id =
            Identity::from_der(leaf).map_err(|source| Error::ReadPeerCertificate { source })?;
        let unknown: Vec<&str> = id.roles.unknown().collect();
        if !unknown.is_empty() {
            tracing::debug!(peer.addr = %addr, roles.unknown = ?unknown, "Certificate holds unknown roles");
        }
        Ok(Self::new(
            addr,
            id.common_name,
            id.serial,
            id.fingerprint,
            id.roles,
        ))
    }

    /// A peer with the call identity its own certificate gives.
    pub(crate) fn new(
        addr: SocketAddr,
        common_name: Option<String>,
        serial: String,
        fingerprint: String,
        roles: RoleSet,
    ) -> Self {
        let caller = caller_value(common_name.as_deref(), &serial, &fingerprint, &roles, addr);
        let identity = Arc::new(CallIdentity::new(roles.clone(), caller, false));
        Self {
            addr,
            addr_text: addr.to_string().into_boxed_str(),
            common_name,
            serial,
            fingerprint,
            roles,
            identity,
        }
    }

    /// Whether this peer may assert another caller's roles (`os:impersonator`).
    pub(crate) fn is_impersonator(&self) -> bool {
        self.roles.contains(&Role::Impersonator)
    }

    /// The `basalt-caller` value describing this peer holding `roles`; see [`caller_value`].
    fn caller(&self, roles: &RoleSet) -> String {
        caller_value(
            self.common_name.as_deref(),
            &self.serial,
            &self.fingerprint,
            roles,
            self.addr,
        )
    }
}

/// The internal metadata a client sent, after it was removed from the request.
#[derive(Debug, Default)]
pub(crate) struct Stripped {
    /// Every `talos-role` value, split on commas (grpc-go may join repeated values).
    roles: Vec<String>,
    /// The first `basalt-caller` value, if any and if it is valid UTF-8.
    caller: Option<String>,
    /// The first `proxyfrom` value, if any and if it is valid UTF-8.
    proxy_from: Option<String>,
}

/// Removes every value of `talos-role`, `basalt-caller` and `proxyfrom` from `headers`.
///
/// `HeaderMap::remove` drops every value of a key and returns the first; unlike `entry`, it
/// never grows the map (`entry` reserves room for an insertion, an allocation per call).
pub(crate) fn strip_internal_metadata(headers: &mut HeaderMap) -> Stripped {
    let roles = headers
        .get_all(&ROLE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .map(str::to_owned)
        .collect();
    headers.remove(&ROLE);
    Stripped {
        roles,
        caller: first_text(headers.remove(&CALLER)),
        // Loop guard for node routing: honoured only from another apid (see `CallIdentity`).
        proxy_from: first_text(headers.remove(&PROXY_FROM)),
    }
}

/// A removed header value as text, if it is valid UTF-8.
fn first_text(value: Option<HeaderValue>) -> Option<String> {
    value.and_then(|value| value.to_str().ok().map(str::to_owned))
}

/// The identity a call runs with.
#[derive(Clone, Debug)]
pub(crate) struct CallIdentity {
    /// The roles the call is authorized with and that machined receives in `talos-role`.
    pub(crate) roles: RoleSet,
    /// The `basalt-caller` value machined receives.
    pub(crate) caller: String,
    /// True when the roles came from an impersonator's `talos-role`, not from the certificate.
    pub(crate) impersonated: bool,
    /// The `proxyfrom` an `os:impersonator` peer sent: another apid forwarded this call from
    /// that node, so it is served here and never forwarded again (the loop guard).
    pub(crate) forwarded_from: Option<String>,
    /// `roles` as `talos-role` header values (cloning one is a reference-count increment).
    role_values: Vec<HeaderValue>,
    /// `caller` as a header value.
    caller_value: Option<HeaderValue>,
}

impl CallIdentity {
    /// An identity with its header values rendered.
    ///
    /// A role string that cannot be a header value (non-ASCII from an odd certificate) is
    /// left out of `talos-role`: it could never match a rule anyway.
    pub(crate) fn new(roles: RoleSet, caller: String, impersonated: bool) -> Self {
        let role_values = roles
            .iter()
            .filter_map(|role| match HeaderValue::from_str(role.as_str()) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::debug!(role = role.as_str(), "Role cannot be sent as metadata");
                    None
                }
            })
            .collect();
        let caller_value = HeaderValue::from_str(&caller).ok();
        Self {
            roles,
            caller,
            impersonated,
            forwarded_from: None,
            role_values,
            caller_value,
        }
    }

    /// Effective identity: the certificate's roles, or, for an `os:impersonator` peer that sent
    /// `talos-role`, the roles it asserts (and the original caller it names, if any).
    ///
    /// An impersonator that sends no `talos-role` keeps its certificate roles, which no rule
    /// names, so it is denied everywhere (Talos).
    ///
    /// `proxyfrom` counts only from an impersonator too; from anyone else it was removed and
    /// is ignored.
    pub(crate) fn resolve(peer: &Peer, stripped: Stripped) -> Arc<Self> {
        if !peer.is_impersonator() {
            return Arc::clone(&peer.identity);
        }
        let mut identity = if stripped.roles.is_empty() {
            (*peer.identity).clone()
        } else {
            let roles = RoleSet::parse(stripped.roles.iter().map(String::as_str));
            let caller = stripped.caller.unwrap_or_else(|| peer.caller(&roles));
            Self::new(roles, caller, true)
        };
        identity.forwarded_from = stripped.proxy_from;
        Arc::new(identity)
    }

    /// Writes `talos-role` (one header value per role, as grpc-go's multi-valued metadata and
    /// Talos's `SetMetadata` do) and `basalt-caller` into the upstream request.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for value in &self.role_values {
            headers.append(&ROLE, value.clone());
        }
        if let Some(value) = &self.caller_value {
            headers.insert(&CALLER, value.clone());
        }
    }
}

/// Renders the `basalt-caller` value: `cn=<cn>;serial=<hex>;fp=<sha256 hex>;roles=<r1>,<r2>;addr=<ip:port>`.
///
/// Keys always appear in this order; `cn=` is empty when the certificate has no CN and `roles=`
/// is empty for a certificate without roles. Values are percent-encoded (RFC 3986 style, `%XX`)
/// for every byte outside `A-Z a-z 0-9 - . _ ~ : @ / +`, so `;`, `=`, `,` and non-ASCII never
/// break the format and the whole value is a valid HTTP header value.
pub(crate) fn caller_value(
    common_name: Option<&str>,
    serial: &str,
    fingerprint: &str,
    roles: &RoleSet,
    addr: SocketAddr,
) -> String {
    let roles: Vec<String> = roles.iter().map(|r| percent_encode(r.as_str())).collect();
    format!(
        "cn={};serial={};fp={};roles={};addr={}",
        percent_encode(common_name.unwrap_or("")),
        percent_encode(serial),
        percent_encode(fingerprint),
        roles.join(","),
        percent_encode(&addr.to_string()),
    )
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:@/+".contains(&byte) {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(roles: &[&str]) -> Peer {
        Peer::new(
            "127.0.0.1:4242".parse().unwrap(),
            Some("alice".to_owned()),
            "1f".to_owned(),
            "ab".repeat(32),
            RoleSet::parse(roles.iter().copied()),
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn internal_metadata_is_removed_and_other_metadata_kept() {
        let mut map = headers(&[
            ("talos-role", "os:admin"),
            ("talos-role", "os:operator,os:etcd:backup"),
            ("basalt-caller", "cn=mallory"),
            ("proxyfrom", "10.0.0.1"),
            ("proxyfrom", "10.0.0.2"),
            ("node", "10.0.0.9"),
            ("grpc-timeout", "5S"),
        ]);
        let stripped = strip_internal_metadata(&mut map);
        assert!(map.get("talos-role").is_none());
        assert!(map.get("basalt-caller").is_none());
        assert!(map.get("proxyfrom").is_none());
        assert_eq!(map.get("node").unwrap(), "10.0.0.9");
        assert_eq!(map.get("grpc-timeout").unwrap(), "5S");
        assert_eq!(
            stripped.roles,
            ["os:admin", "os:operator", "os:etcd:backup"]
        );
        assert_eq!(stripped.caller.as_deref(), Some("cn=mallory"));
    }

    #[test]
    fn a_plain_client_keeps_its_certificate_roles() {
        let mut map = headers(&[("talos-role", "os:admin"), ("basalt-caller", "cn=root")]);
        let call = CallIdentity::resolve(&peer(&["os:reader"]), strip_internal_metadata(&mut map));
        assert_eq!(call.roles.strings(), ["os:reader"]);
        assert!(!call.impersonated);
        assert!(call.caller.starts_with("cn=alice;"), "{}", call.caller);
    }

    #[test]
    fn an_impersonator_asserts_roles_and_caller() {
        let mut map = headers(&[
            ("talos-role", "os:operator"),
            ("basalt-caller", "cn=bob;serial=2"),
        ]);
        let call = CallIdentity::resolve(
            &peer(&["os:impersonator"]),
            strip_internal_metadata(&mut map),
        );
        assert_eq!(call.roles.strings(), ["os:operator"]);
        assert_eq!(call.caller, "cn=bob;serial=2");
        assert!(call.impersonated);
        assert_eq!(call.forwarded_from, None);
    }

    #[test]
    fn proxyfrom_counts_only_from_an_impersonator() {
        let forwarded = || headers(&[("talos-role", "os:reader"), ("proxyfrom", "10.0.0.1:50000")]);
        let call = CallIdentity::resolve(
            &peer(&["os:impersonator"]),
            strip_internal_metadata(&mut forwarded()),
        );
        assert_eq!(call.forwarded_from.as_deref(), Some("10.0.0.1:50000"));
        let call = CallIdentity::resolve(
            &peer(&["os:admin"]),
            strip_internal_metadata(&mut forwarded()),
        );
        assert_eq!(call.forwarded_from, None);
        assert_eq!(call.roles.strings(), ["os:admin"]);
    }

    #[test]
    fn an_impersonator_without_roles_keeps_only_impersonator() {
        let call = CallIdentity::resolve(&peer(&["os:impersonator"]), Stripped::default());
        assert_eq!(call.roles.strings(), ["os:impersonator"]);
        assert!(!call.impersonated);
    }

    #[test]
    fn roles_are_forwarded_one_value_each() {
        let call = CallIdentity::resolve(&peer(&["os:reader", "os:operator"]), Stripped::default());
        let mut map = headers(&[("talos-role", "stale")]);
        map.remove("talos-role");
        call.apply(&mut map);
        let values: Vec<&str> = map
            .get_all("talos-role")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(values, ["os:operator", "os:reader"]);
        assert!(map.get("basalt-caller").is_some());
    }

    #[test]
    fn caller_value_is_escaped() {
        let value = caller_value(
            Some("a;b=c, d\u{e9}"),
            "ff",
            "00",
            &RoleSet::parse(["os:admin", "x,y"]),
            "[::1]:50000".parse().unwrap(),
        );
        assert_eq!(
            value,
            "cn=a%3Bb%3Dc%2C%20d%C3%A9;serial=ff;fp=00;roles=os:admin,x%2Cy;addr=%5B::1%5D:50000"
        );
        assert!(HeaderValue::from_str(&value).is_ok());
        let empty = caller_value(
            None,
            "1",
            "2",
            &RoleSet::default(),
            "127.0.0.1:1".parse().unwrap(),
        );
        assert_eq!(empty, "cn=;serial=1;fp=2;roles=;addr=127.0.0.1:1");
    }
}
