//! Who made a config change: read from apid's `basalt-caller` metadata, else from the roles in
//! `talos-role` and the unix peer.

use std::fmt;

use basalt_authz::RoleSet;
use serde::{Deserialize, Serialize};

/// The identity recorded with a history entry.
///
/// `basalt-caller` is only as trustworthy as the peer that sent it: machined accepts metadata
/// only from allowed unix peers (apid, root), and apid strips it from its own clients, so the
/// value names the certificate apid verified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    /// The client certificate's common name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub common_name: String,
    /// The client certificate's serial number (hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// The client certificate's SHA-256 fingerprint (hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// The roles the call was authorized with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// `ip:port` of the client, `unix:uid=N` for a direct local caller, `machined` for
    /// machined's own changes (seeding, TRY reverts).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
}

impl Caller {
    /// machined itself (seeding from `--config`, reverting an unconfirmed TRY, recovery).
    pub fn machined() -> Self {
        Caller {
            address: "machined".to_owned(),
            ..Caller::default()
        }
    }

    /// The caller of a request: `basalt-caller` when present and well-formed, otherwise the
    /// `talos-role` roles and the unix peer's uid.
    pub(crate) fn from_metadata(
        basalt_caller: Option<&str>,
        roles: &RoleSet,
        peer_uid: Option<u32>,
    ) -> Self {
        if let Some(caller) = basalt_caller.and_then(parse_basalt_caller) {
            return caller;
        }
        Caller {
            roles: roles.strings(),
            address: peer_uid.map_or_else(|| "unix".to_owned(), |uid| format!("unix:uid={uid}")),
            ..Caller::default()
        }
    }
}

impl fmt::Display for Caller {
    /// `cn=alice serial=2a roles=os:admin addr=10.0.0.5:40112`, leaving out empty parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.common_name.is_empty() {
            parts.push(format!("cn={}", self.common_name));
        }
        if !self.serial.is_empty() {
            parts.push(format!("serial={}", self.serial));
        }
        if !self.roles.is_empty() {
            parts.push(format!("roles={}", self.roles.join(",")));
        }
        if !self.address.is_empty() {
            parts.push(format!("addr={}", self.address));
        }
        if parts.is_empty() {
            return f.write_str("unknown");
        }
        f.write_str(&parts.join(" "))
    }
}

/// Parses apid's `cn=<cn>;serial=<hex>;fp=<hex>;roles=<r1>,<r2>;addr=<ip:port>` (each value
/// percent-encoded). `None` if a part is not `key=value` or a value does not decode; unknown
/// keys are skipped so apid may add some.
fn parse_basalt_caller(value: &str) -> Option<Caller> {
    let mut caller = Caller::default();
    for part in value.split(';').filter(|part| !part.is_empty()) {
        let (key, raw) = part.split_once('=')?;
        match key {
            "cn" => caller.common_name = percent_decode(raw)?,
            "serial" => caller.serial = percent_decode(raw)?,
            "fp" => caller.fingerprint = percent_decode(raw)?,
            "roles" => {
                caller.roles = raw
                    .split(',')
                    .filter(|role| !role.is_empty())
                    .map(percent_decode)
                    .collect::<Option<_>>()?;
            }
            "addr" => caller.address = percent_decode(raw)?,
            _ => {}
        }
    }
    Some(caller)
}

/// `%XX` → byte; the result must be UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use basalt_authz::Role;

    use super::*;

    #[test]
    fn basalt_caller_is_parsed_and_decoded() {
        let caller = Caller::from_metadata(
            Some("cn=Alice%20B;serial=2a;fp=ab12;roles=os:admin,os:reader;addr=127.0.0.1:4242"),
            &RoleSet::default(),
            Some(0),
        );
        assert_eq!(caller.common_name, "Alice B");
        assert_eq!(caller.serial, "2a");
        assert_eq!(caller.fingerprint, "ab12");
        assert_eq!(caller.roles, ["os:admin", "os:reader"]);
        assert_eq!(caller.address, "127.0.0.1:4242");
        assert_eq!(
            caller.to_string(),
            "cn=Alice B serial=2a roles=os:admin,os:reader addr=127.0.0.1:4242"
        );
    }

    #[test]
    fn without_basalt_caller_the_roles_and_uid_are_recorded() {
        let roles = RoleSet::from([Role::Admin]);
        let caller = Caller::from_metadata(None, &roles, Some(1000));
        assert_eq!(caller.roles, ["os:admin"]);
        assert_eq!(caller.address, "unix:uid=1000");
        // A malformed value falls back too.
        let caller = Caller::from_metadata(Some("garbage"), &roles, Some(0));
        assert_eq!(caller.address, "unix:uid=0");
        let caller = Caller::from_metadata(Some("cn=%zz"), &roles, None);
        assert_eq!(caller.address, "unix");
    }
}
