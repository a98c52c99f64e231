//! The method → roles table (Talos's machined `rules` map), its admin-only fallback, and the
//! authorization decision with a human-readable denial.

use crate::role::{Role, RoleSet};

/// Methods served by trustd and authenticated by the join token in the `token` metadata key.
///
/// They are never checked against the role table: trustd callers have no certificate, hence no
/// roles. If one of them ever reached the role table it would fall back to admin-only.
pub const TOKEN_AUTHENTICATED: &[&str] = &["/securityapi.SecurityService/Certificate"];

/// The roles allowed to call `method` (a full gRPC path such as
/// `/machine.MachineService/Reboot`), or `None` when the table has no rule for it.
///
/// Prefer [`authorize`] or [`required_roles`], which apply the admin-only fallback.
pub fn rule(method: &str) -> Option<&'static [Role]> {
    // About 80 rows: a linear scan costs far less than the TLS and HTTP/2 work around each call,
    // and keeps the table in Talos's order so it can be read against the source row by row.
    RULES
        .iter()
        .chain(BASALT_RULES)
        .find(|(path, _)| *path == method)
        .map(|(_, roles)| *roles)
}

/// The roles allowed to call `method`: its rule, or `{os:admin}` when it has none.
///
/// The fallback is Talos's `FallbackRoles`: a method nobody wrote a rule for is admin-only, so a
/// new RPC is never open by accident.
pub fn required_roles(method: &str) -> RoleSet {
    rule(method).unwrap_or(FALLBACK).iter().cloned().collect()
}

/// Decides whether a caller holding `held` may call `method`.
///
/// Allowed when `held` shares at least one role with [`required_roles`] (Talos
/// `Set.IncludesAny`); an empty `held` is always denied, and roles nobody names (unknown strings,
/// `os:impersonator`) grant nothing.
pub fn authorize(method: &str, held: &RoleSet) -> Decision {
    let allowed = rule(method).unwrap_or(FALLBACK);
    if allowed.iter().any(|role| held.contains(role)) {
        return Decision::Allow;
    }
    Decision::Deny(Denial {
        method: method.to_owned(),
        required: allowed.iter().cloned().collect(),
        held: held.clone(),
    })
}

/// The outcome of [`authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The caller holds one of the required roles.
    Allow,
    /// The caller holds none of the required roles.
    Deny(Denial),
}

impl Decision {
    /// Whether the call may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// `Ok(())` for [`Decision::Allow`], the [`Denial`] otherwise; handy with `?`.
    pub fn into_result(self) -> Result<(), Denial> {
        match self {
            Decision::Allow => Ok(()),
            Decision::Deny(denial) => Err(denial),
        }
    }
}

/// Why a call was denied: the method, the roles it needs (one of) and the roles the caller holds.
///
/// Displayed as `/machine.MachineService/Reboot needs one of os:admin, os:operator; the
/// certificate holds os:reader`. The text is meant for logs and audit records. On the wire,
/// Talos answers `PermissionDenied` with the generic `not authorized`; whether to send this text
/// instead is the server's choice.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{method} needs one of {required}; the certificate holds {held}")]
pub struct Denial {
    /// The full gRPC method path.
    pub method: String,
    /// The roles the method accepts; holding any one of them is enough.
    pub required: RoleSet,
    /// The roles the caller holds (possibly empty, displayed as `no roles`).
    pub held: RoleSet,
}

// === the table ===

/// Talos's `FallbackRoles`, for methods without a rule.
const FALLBACK: &[Role] = A;

const A: &[Role] = &[Role::Admin];
const AO: &[Role] = &[Role::Admin, Role::Operator];
const AOR: &[Role] = &[Role::Admin, Role::Operator, Role::Reader];
const AORE: &[Role] = &[Role::Admin, Role::Operator, Role::Reader, Role::EtcdBackup];
const AORI: &[Role] = &[
    Role::Admin,
    Role::Operator,
    Role::Reader,
    Role::ImageVerifier,
];
const AOE: &[Role] = &[Role::Admin, Role::Operator, Role::EtcdBackup];
const AR: &[Role] = &[Role::Admin, Role::Reader];
const AM: &[Role] = &[Role::Admin, Role::MetaWriter];

/// Every row of Talos's machined `rules` map (talos-facts.md section 2), in Talos's order,
/// including services basalt does not serve yet, so a method added later is already guarded
/// exactly as Talos guards it.
///
/// Rows marked "R only in maintenance mode" allow `os:reader` here, as in Talos; the handler must
/// refuse readers outside maintenance mode. "Sensitive types need A" is likewise a handler check.
const RULES: &[(&str, &[Role])] = &[
    ("/cluster.ClusterService/HealthCheck", AOR),
    ("/inspect.InspectService/ControllerRuntimeDependencies", AOR),
    ("/machine.ImageService/Import", A),
    ("/machine.ImageService/List", AOR),
    ("/machine.ImageService/Pull", AO),
    ("/machine.ImageService/Remove", A),
    ("/machine.ImageService/Verify", AORI),
    ("/machine.DebugService/ContainerRun", A),
    ("/machine.LifecycleService/Install", A),
    ("/machine.LifecycleService/Upgrade", A),
    ("/machine.StorageService/Statfs", AOR), // new after v1.13.9
    // R only in maintenance mode (handler check)
    ("/machine.MachineService/ApplyConfiguration", AR),
    ("/machine.MachineService/Bootstrap", A),
    ("/machine.MachineService/CPUInfo", AOR),
    ("/machine.MachineService/CPUFreqStats", AOR),
    ("/machine.MachineService/Containers", AOR),
    ("/machine.MachineService/Copy", A),
    ("/machine.MachineService/DiskStats", AOR),
    ("/machine.MachineService/DiskUsage", AOR),
    ("/machine.MachineService/Dmesg", AOR),
    ("/machine.MachineService/EtcdAlarmList", AORE),
    ("/machine.MachineService/EtcdAlarmDisarm", AO),
    ("/machine.MachineService/EtcdDefragment", AO),
    ("/machine.MachineService/EtcdForfeitLeadership", A),
    ("/machine.MachineService/EtcdLeaveCluster", A),
    ("/machine.MachineService/EtcdMemberList", AORE),
    ("/machine.MachineService/EtcdRecover", A),
    ("/machine.MachineService/EtcdRemoveMemberByID", A),
    ("/machine.MachineService/EtcdSnapshot", AOE),
    ("/machine.MachineService/EtcdStatus", AORE),
    ("/machine.MachineService/EtcdDowngradeCancel", A),
    ("/machine.MachineService/EtcdDowngradeEnable", A),
    ("/machine.MachineService/EtcdDowngradeValidate", A),
    ("/machine.MachineService/Events", AOR),
    ("/machine.MachineService/GenerateClientConfiguration", A),
    ("/machine.MachineService/Hostname", AOR),
    ("/machine.MachineService/ImageList", AOR), // deprecated
    ("/machine.MachineService/ImagePull", AO),  // deprecated
    ("/machine.MachineService/Kubeconfig", A),
    ("/machine.MachineService/List", AOR),
    ("/machine.MachineService/LoadAvg", AOR),
    ("/machine.MachineService/Logs", AOR),
    ("/machine.MachineService/LogsContainers", AOR),
    ("/machine.MachineService/Memory", AOR),
    ("/machine.MachineService/MetaWrite", AM),
    ("/machine.MachineService/MetaDelete", AM),
    ("/machine.MachineService/Mounts", AOR),
    ("/machine.MachineService/NetworkDeviceStats", AOR),
    ("/machine.MachineService/Netstat", AOR),
    ("/machine.MachineService/PacketCapture", AO),
    ("/machine.MachineService/Processes", AOR),
    ("/machine.MachineService/Read", A),
    ("/machine.MachineService/Reboot", AO),
    ("/machine.MachineService/Reset", A),
    ("/machine.MachineService/Restart", AO), // restarts a container
    ("/machine.MachineService/Rollback", A),
    ("/machine.MachineService/ServiceList", AOR),
    ("/machine.MachineService/ServiceRestart", AO),
    ("/machine.MachineService/ServiceStart", AO),
    ("/machine.MachineService/ServiceStop", AO),
    ("/machine.MachineService/Shutdown", AO),
    ("/machine.MachineService/Stats", AOR),
    ("/machine.MachineService/SystemStat", AOR),
    ("/machine.MachineService/Upgrade", A), // deprecated
    ("/machine.MachineService/Version", AOR),
    ("/cosi.resource.State/Create", A), // handler rejects all writes
    ("/cosi.resource.State/Destroy", A), // handler rejects all writes
    ("/cosi.resource.State/Teardown", A), // new after v1.13.9; handler rejects all writes
    ("/cosi.resource.State/TeardownAndDestroy", A), // new after v1.13.9; handler rejects all writes
    ("/cosi.resource.State/Get", AOR),  // Sensitive types need A
    ("/cosi.resource.State/List", AOR), // Sensitive types need A
    ("/cosi.resource.State/Update", A), // handler rejects all writes
    ("/cosi.resource.State/Watch", AOR), // Sensitive types need A
    ("/storage.StorageService/Disks", AOR),
    ("/storage.StorageService/BlockDeviceWipe", AR), // R only in maintenance mode
    // R only in maintenance mode; new after v1.13.9
    ("/machine.LVMService/LogicalVolumeRemove", AR),
    ("/machine.LVMService/VolumeGroupRemove", AR), // R only in maintenance mode; new after v1.13.9
    // R only in maintenance mode; new after v1.13.9
    ("/machine.LVMService/PhysicalVolumeRemove", AR),
    ("/machine.MDService/Destroy", AR), // R only in maintenance mode; new after v1.13.9
    ("/time.TimeService/Time", AOR),
    ("/time.TimeService/TimeCheck", AOR),
];

// === basalt additions ===

/// Rules for basalt's own RPCs (proto package `basalt.v1`), which Talos does not have. Kept apart
/// from [`RULES`] so that table stays a row-for-row copy of Talos's.
///
/// `DiagnosticsService` only moves bytes (echo, generate, count) and exposes nothing about the
/// node, so every role that may read anything may call it.
///
/// `ConfigService`: `History` lists versions, times, modes, hashes and the callers' identities
/// (certificate CN, serial, roles, address), never config contents, so readers may see it, as
/// they may see audit-like data elsewhere. `Rollback` and `Confirm` change the machine config
/// (as `ApplyConfiguration` does, which is admin-only outside maintenance mode) and `Get`
/// returns it with the join token and the CA key: admin only, like `Read`/`Copy`.
const BASALT_RULES: &[(&str, &[Role])] = &[
    ("/basalt.v1.DiagnosticsService/Echo", AOR),
    ("/basalt.v1.DiagnosticsService/Generate", AOR),
    ("/basalt.v1.DiagnosticsService/Collect", AOR),
    ("/basalt.v1.ConfigService/History", AOR),
    ("/basalt.v1.ConfigService/Rollback", A),
    ("/basalt.v1.ConfigService/Confirm", A),
    ("/basalt.v1.ConfigService/Get", A),
    // Revoke cuts a client off (and could lock other admins out): admin only. The list shows
    // serials, reasons and who revoked them, like History: every reading role.
    ("/basalt.v1.RevocationService/Revoke", A),
    ("/basalt.v1.RevocationService/ListRevoked", AOR),
    // Public certificate fields only (no keys): every reading role may see what expires.
    ("/basalt.v1.CertificateService/Status", AOR),
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The rows of talos-facts.md section 2, pasted verbatim: method, allowed roles, notes.
    const TALOS_TABLE: &str = r#"
| `/cluster.ClusterService/HealthCheck` | A, O, R | |
| `/inspect.InspectService/ControllerRuntimeDependencies` | A, O, R | |
| `/machine.ImageService/Import` | A | |
| `/machine.ImageService/List` | A, O, R | |
| `/machine.ImageService/Pull` | A, O | |
| `/machine.ImageService/Remove` | A | |
| `/machine.ImageService/Verify` | A, O, R, I | |
| `/machine.DebugService/ContainerRun` | A | |
| `/machine.LifecycleService/Install` | A | |
| `/machine.LifecycleService/Upgrade` | A | |
| `/machine.StorageService/Statfs` | A, O, R | new after v1.13.9 |
| `/machine.MachineService/ApplyConfiguration` | A, R | R only in maintenance mode (handler check) |
| `/machine.MachineService/Bootstrap` | A | |
| `/machine.MachineService/CPUInfo` | A, O, R | |
| `/machine.MachineService/CPUFreqStats` | A, O, R | |
| `/machine.MachineService/Containers` | A, O, R | |
| `/machine.MachineService/Copy` | A | |
| `/machine.MachineService/DiskStats` | A, O, R | |
| `/machine.MachineService/DiskUsage` | A, O, R | |
| `/machine.MachineService/Dmesg` | A, O, R | |
| `/machine.MachineService/EtcdAlarmList` | A, O, R, E | |
| `/machine.MachineService/EtcdAlarmDisarm` | A, O | |
| `/machine.MachineService/EtcdDefragment` | A, O | |
| `/machine.MachineService/EtcdForfeitLeadership` | A | |
| `/machine.MachineService/EtcdLeaveCluster` | A | |
| `/machine.MachineService/EtcdMemberList` | A, O, R, E | |
| `/machine.MachineService/EtcdRecover` | A | |
| `/machine.MachineService/EtcdRemoveMemberByID` | A | |
| `/machine.MachineService/EtcdSnapshot` | A, O, E | |
| `/machine.MachineService/EtcdStatus` | A, O, R, E | |
| `/machine.MachineService/EtcdDowngradeCancel` | A | |
| `/machine.MachineService/EtcdDowngradeEnable` | A | |
| `/machine.MachineService/EtcdDowngradeValidate` | A | |
| `/machine.MachineService/Events` | A, O, R | |
| `/machine.MachineService/GenerateClientConfiguration` | A | |
| `/machine.MachineService/Hostname` | A, O, R | |
| `/machine.MachineService/ImageList` | A, O, R | deprecated |
| `/machine.MachineService/ImagePull` | A, O | deprecated |
| `/machine.MachineService/Kubeconfig` | A | |
| `/machine.MachineService/List` | A, O, R | |
| `/machine.MachineService/LoadAvg` | A, O, R | |
| `/machine.MachineService/Logs` | A, O, R | |
| `/machine.MachineService/LogsContainers` | A, O, R | |
| `/machine.MachineService/Memory` | A, O, R | |
| `/machine.MachineService/MetaWrite` | A, M | |
| `/machine.MachineService/MetaDelete` | A, M | |
| `/machine.MachineService/Mounts` | A, O, R | |
| `/machine.MachineService/NetworkDeviceStats` | A, O, R | |
| `/machine.MachineService/Netstat` | A, O, R | |
| `/machine.MachineService/PacketCapture` | A, O | |
| `/machine.MachineService/Processes` | A, O, R | |
| `/machine.MachineService/Read` | A | |
| `/machine.MachineService/Reboot` | A, O | |
| `/machine.MachineService/Reset` | A | |
| `/machine.MachineService/Restart` | A, O | restarts a container |
| `/machine.MachineService/Rollback` | A | |
| `/machine.MachineService/ServiceList` | A, O, R | |
| `/machine.MachineService/ServiceRestart` | A, O | |
| `/machine.MachineService/ServiceStart` | A, O | |
| `/machine.MachineService/ServiceStop` | A, O | |
| `/machine.MachineService/Shutdown` | A, O | |
| `/machine.MachineService/Stats` | A, O, R | |
| `/machine.MachineService/SystemStat` | A, O, R | |
| `/machine.MachineService/Upgrade` | A | deprecated |
| `/machine.MachineService/Version` | A, O, R | |
| `/cosi.resource.State/Create` | A | handler rejects all writes |
| `/cosi.resource.State/Destroy` | A | handler rejects all writes |
| `/cosi.resource.State/Teardown` | A | new after v1.13.9; handler rejects all writes |
| `/cosi.resource.State/TeardownAndDestroy` | A | new after v1.13.9; handler rejects all writes |
| `/cosi.resource.State/Get` | A, O, R | Sensitive types need A |
| `/cosi.resource.State/List` | A, O, R | Sensitive types need A |
| `/cosi.resource.State/Update` | A | handler rejects all writes |
| `/cosi.resource.State/Watch` | A, O, R | Sensitive types need A |
| `/storage.StorageService/Disks` | A, O, R | |
| `/storage.StorageService/BlockDeviceWipe` | A, R | R only in maintenance mode |
| `/machine.LVMService/LogicalVolumeRemove` | A, R | R only in maintenance mode; new after v1.13.9 |
| `/machine.LVMService/VolumeGroupRemove` | A, R | R only in maintenance mode; new after v1.13.9 |
| `/machine.LVMService/PhysicalVolumeRemove` | A, R | R only in maintenance mode; new after v1.13.9 |
| `/machine.MDService/Destroy` | A, R | R only in maintenance mode; new after v1.13.9 |
| `/time.TimeService/Time` | A, O, R | |
| `/time.TimeService/TimeCheck` | A, O, R | |
"#;

    /// The roles the table's letters stand for, plus the impersonator, which no rule names.
    const LETTERS: [(char, Role); 7] = [
        ('A', Role::Admin),
        ('O', Role::Operator),
        ('R', Role::Reader),
        ('E', Role::EtcdBackup),
        ('I', Role::ImageVerifier),
        ('M', Role::MetaWriter),
        ('-', Role::Impersonator),
    ];

    /// (method, letters) for every row of [`TALOS_TABLE`].
    fn talos_rows() -> Vec<(&'static str, String)> {
        TALOS_TABLE
            .lines()
            .filter(|line| line.starts_with("| `/"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let method = cells[1].trim_matches('`');
                let letters = cells[2].split(", ").collect::<String>();
                (method, letters)
            })
            .collect()
    }

    #[test]
    fn every_talos_row_allows_exactly_the_listed_roles() {
        let rows = talos_rows();
        assert_eq!(rows.len(), 81, "the facts table has 81 rows");
        for (method, letters) in &rows {
            assert!(rule(method).is_some(), "{method} has no rule");
            for (letter, role) in LETTERS {
                let held = RoleSet::from([role.clone()]);
                assert_eq!(
                    authorize(method, &held).is_allowed(),
                    letters.contains(letter),
                    "{method} for {role} (Talos allows {letters})"
                );
            }
        }
    }

    #[test]
    fn the_table_has_no_rows_beyond_talos() {
        let talos: HashSet<&str> = talos_rows().into_iter().map(|(method, _)| method).collect();
        for (method, _) in RULES {
            assert!(talos.contains(method), "{method} is not in Talos's table");
        }
        let unique: HashSet<&str> = RULES.iter().map(|(method, _)| *method).collect();
        assert_eq!(unique.len(), RULES.len(), "duplicate rows");
    }

    #[test]
    fn basalt_additions_are_in_basalt_v1_and_not_in_talos_table() {
        let talos: HashSet<&str> = talos_rows().into_iter().map(|(method, _)| method).collect();
        for (method, _) in BASALT_RULES {
            assert!(method.starts_with("/basalt.v1."), "{method}");
            assert!(!talos.contains(method), "{method} duplicates a Talos row");
        }
    }

    #[test]
    fn diagnostics_is_open_to_admin_operator_and_reader_only() {
        for method in ["Echo", "Generate", "Collect"] {
            let path = format!("/basalt.v1.DiagnosticsService/{method}");
            for role in Role::KNOWN {
                let allowed = matches!(role, Role::Admin | Role::Operator | Role::Reader);
                assert_eq!(
                    authorize(&path, &RoleSet::from([role.clone()])).is_allowed(),
                    allowed,
                    "{path} for {role}"
                );
            }
        }
    }

    #[test]
    fn every_one_of_the_54_machine_service_methods_has_a_rule() {
        let count = RULES
            .iter()
            .filter(|(method, _)| method.starts_with("/machine.MachineService/"))
            .count();
        assert_eq!(count, 54);
    }

    #[test]
    fn unknown_method_falls_back_to_admin_only() {
        let method = "/machine.MachineService/SomethingNew";
        assert_eq!(rule(method), None);
        assert_eq!(required_roles(method), RoleSet::from([Role::Admin]));
        assert!(authorize(method, &RoleSet::from([Role::Admin])).is_allowed());
        for role in Role::KNOWN.into_iter().filter(|role| *role != Role::Admin) {
            assert!(
                !authorize(method, &RoleSet::from([role.clone()])).is_allowed(),
                "{role}"
            );
        }
        let all_but_admin: RoleSet = Role::KNOWN
            .into_iter()
            .filter(|role| *role != Role::Admin)
            .collect();
        assert!(!authorize(method, &all_but_admin).is_allowed());
    }

    #[test]
    fn token_authenticated_methods_are_not_in_the_role_table() {
        for method in TOKEN_AUTHENTICATED {
            assert_eq!(rule(method), None, "{method}");
            assert_eq!(required_roles(method), RoleSet::from([Role::Admin]));
        }
    }

    #[test]
    fn impersonator_alone_matches_no_rule() {
        let held = RoleSet::from([Role::Impersonator]);
        for (method, _) in RULES {
            assert!(!authorize(method, &held).is_allowed(), "{method}");
        }
        assert!(!authorize("/machine.MachineService/Unlisted", &held).is_allowed());
    }

    #[test]
    fn unknown_roles_grant_nothing() {
        let held = RoleSet::parse(["os:future", "admin"]);
        for (method, _) in RULES {
            assert!(!authorize(method, &held).is_allowed(), "{method}");
        }
    }

    #[test]
    fn any_one_matching_role_is_enough() {
        let held = RoleSet::parse(["os:future", "os:etcd:backup"]);
        assert!(authorize("/machine.MachineService/EtcdSnapshot", &held).is_allowed());
        assert!(!authorize("/machine.MachineService/Reboot", &held).is_allowed());
    }

    #[test]
    fn required_roles_of_a_rule_are_sorted() {
        assert_eq!(
            required_roles("/machine.MachineService/EtcdStatus").strings(),
            ["os:admin", "os:etcd:backup", "os:operator", "os:reader"]
        );
    }

    #[test]
    fn denial_names_method_required_and_held_roles() {
        let held = RoleSet::from([Role::Reader]);
        let Decision::Deny(denial) = authorize("/machine.MachineService/Reboot", &held) else {
            panic!("a reader must not reboot");
        };
        assert_eq!(denial.method, "/machine.MachineService/Reboot");
        assert_eq!(
            denial.required,
            RoleSet::from([Role::Admin, Role::Operator])
        );
        assert_eq!(denial.held, held);
        assert_eq!(
            denial.to_string(),
            "/machine.MachineService/Reboot needs one of os:admin, os:operator; \
             the certificate holds os:reader"
        );
    }

    #[test]
    fn empty_held_set_is_denied_and_reported_as_no_roles() {
        let decision = authorize("/machine.MachineService/Version", &RoleSet::default());
        let denial = decision
            .into_result()
            .expect_err("no roles means no access");
        assert_eq!(
            denial.to_string(),
            "/machine.MachineService/Version needs one of os:admin, os:operator, os:reader; \
             the certificate holds no roles"
        );
    }

    #[test]
    fn allow_converts_to_ok() {
        let decision = authorize(
            "/machine.MachineService/Reset",
            &RoleSet::from([Role::Admin]),
        );
        assert_eq!(decision, Decision::Allow);
        assert_eq!(decision.into_result(), Ok(()));
    }
}
