//! What a new machine config changes, whether that needs a reboot, and the readable diff that
//! `dry_run` returns.

use std::time::Duration;

use basalt_config::MachineConfig;
use serde_yaml::Value;

/// Keys whose change needs a reboot; everything else applies live.
///
/// - `machine.type`: decides whether machined issues apid's certificate and runs trustd.
/// - `machine.apid` / `machine.trustd` (listen addresses, handshake timeouts),
///   `machine.apidLimits` and `machine.metrics`: apid and trustd read them from the config
///   files machined writes before it starts them, at its start and at every container-mode
///   reboot (the `writeDaemonConfigs` boot hook).
///
/// Services, `certSANs`, hostname, tokens, `ca`, `acceptedCAs` and `cluster` apply live: the
/// certificates and trustd's files follow them within seconds (`crate::pki_reconcile`).
pub const REBOOT_KEYS: &[&str] = &[
    "machine.type",
    "machine.apid",
    "machine.trustd",
    "machine.apidLimits",
    "machine.metrics",
];

/// How long the diff of a dry run may take to compute before it falls back to a coarser one.
const DIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// The keys that differ between two configs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Every changed key, as dotted paths (`machine.hostname`, `machine.ca.crt`), in
    /// document order.
    pub changed: Vec<String>,
    /// The subset of `changed` that needs a reboot ([`REBOOT_KEYS`]).
    pub needs_reboot: Vec<String>,
}

impl Change {
    /// Compares the validated configs (so formatting and comments never count), key by key
    /// down to the second level below `machine`/`cluster`.
    pub fn between(old: &MachineConfig, new: &MachineConfig) -> Self {
        let old = serde_yaml::to_value(old.to_raw()).unwrap_or(Value::Null);
        let new = serde_yaml::to_value(new.to_raw()).unwrap_or(Value::Null);
        let mut changed = Vec::new();
        changed_keys("", &old, &new, 0, &mut changed);
        let needs_reboot = changed
            .iter()
            .filter(|key| {
                REBOOT_KEYS.iter().any(|reboot| {
                    key.as_str() == *reboot
                        || key
                            .strip_prefix(reboot)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
            })
            .cloned()
            .collect();
        Change {
            changed,
            needs_reboot,
        }
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }
}

/// Walks both values in parallel, descending into mappings up to three levels (root →
/// `machine` → `ca` → `crt`); below that, or for sequences and scalars, a difference is
/// reported at the current path.
fn changed_keys(prefix: &str, old: &Value, new: &Value, depth: usize, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    // An absent section (`apid:` left out) compares like an empty one, so the leaf that was
    // set is named.
    let empty = serde_yaml::Mapping::new();
    let (old_map, new_map) = match (old, new) {
        (Value::Mapping(old), Value::Mapping(new)) => (old, new),
        (Value::Null, Value::Mapping(new)) => (&empty, new),
        (Value::Mapping(old), Value::Null) => (old, &empty),
        _ => {
            out.push(prefix.to_owned());
            return;
        }
    };
    if depth >= 3 {
        out.push(prefix.to_owned());
        return;
    }
    let keys = old_map
        .keys()
        .chain(new_map.keys().filter(|key| !old_map.contains_key(*key)));
    for key in keys {
        let name = match key {
            Value::String(name) => name.clone(),
            other => serde_yaml::to_string(other)
                .map(|text| text.trim().to_owned())
                .unwrap_or_default(),
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        let old_value = old_map.get(key).unwrap_or(&Value::Null);
        let new_value = new_map.get(key).unwrap_or(&Value::Null);
        changed_keys(&path, old_value, new_value, depth + 1, out);
    }
}

/// A line-based unified diff of two YAML texts (3 lines of context), or `None` when they are
/// identical.
pub(crate) fn unified_diff(old: &str, new: &str) -> Option<String> {
    if old == new {
        return None;
    }
    let diff = similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Myers)
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old, new);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header("current", "new")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version: v1alpha1
machine:
  type: worker
  token: abcdef.0123456789abcdef
  ca:
    crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJQekNCOHFBREFnRUNBaEVBCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
cluster:
  name: dev
  endpoints: [127.0.0.1]
";

    fn config(text: &str) -> MachineConfig {
        MachineConfig::from_yaml(text).expect("valid config")
    }

    #[test]
    fn comments_and_layout_are_not_changes() {
        let reformatted = format!(
            "# hello\n{}",
            BASE.replace("[127.0.0.1]", "\n    - 127.0.0.1")
        );
        assert!(Change::between(&config(BASE), &config(&reformatted)).is_empty());
    }

    #[test]
    fn hostname_is_live_and_type_or_listen_need_a_reboot() {
        let hostname = BASE.replace("type: worker", "type: worker\n  hostname: n2");
        let change = Change::between(&config(BASE), &config(&hostname));
        assert_eq!(change.changed, ["machine.hostname"]);
        assert!(change.needs_reboot.is_empty());

        let listen = BASE.replace(
            "type: worker",
            "type: worker\n  apid: {listen: \"127.0.0.1:50100\"}",
        );
        let change = Change::between(&config(BASE), &config(&listen));
        assert_eq!(change.changed, ["machine.apid.listen"]);
        assert_eq!(change.needs_reboot, ["machine.apid.listen"]);
    }

    #[test]
    fn diff_is_unified_and_none_when_equal() {
        assert_eq!(unified_diff(BASE, BASE), None);
        let diff = unified_diff("a\nb\nc\n", "a\nB\nc\n").unwrap();
        assert!(
            diff.starts_with("--- current\n+++ new\n@@ -1,3 +1,3 @@\n"),
            "{diff}"
        );
        assert!(diff.contains("-b\n+B\n"), "{diff}");
    }
}
