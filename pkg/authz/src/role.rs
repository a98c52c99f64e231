//! `Role` and `RoleSet`, with Talos's parsing rules (`pkg/machinery/role/role.go`).

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// One role, as carried in a client certificate's Organization values and in the `talos-role`
/// metadata key.
///
/// The wire form is the Talos string (`os:admin`, …); [`Role::parse`] maps it to a variant and
/// keeps anything else as [`Role::Unknown`] for forward compatibility: an unknown role grants
/// nothing unless a rule names it.
///
/// Equality, ordering and hashing follow the role string ([`Role::as_str`]), so a set of roles
/// sorts like Talos's `Set.Strings()`.
#[derive(Clone, Debug)]
pub enum Role {
    /// `os:admin`: every API.
    Admin,
    /// `os:operator`: reader plus management APIs that do not expose secrets (reboot, …).
    Operator,
    /// `os:reader`: read-only APIs that do not expose secrets.
    Reader,
    /// `os:etcd:backup`: etcd snapshots.
    EtcdBackup,
    /// `os:image:verifier`: image verification.
    ImageVerifier,
    /// `os:meta:writer`: META key writes and deletes.
    MetaWriter,
    /// `os:impersonator`: may assert another caller's roles in `talos-role`; held only by apid's
    /// own client certificate (apid → apid). No rule names it.
    Impersonator,
    /// Any other string, kept verbatim (Talos does no prefix check). Build it with
    /// [`Role::parse`] so a known string never ends up here.
    Unknown(String),
}

impl Role {
    /// The seven roles Talos defines (`role.All`), sorted by their strings.
    pub const KNOWN: [Role; 7] = [
        Role::Admin,
        Role::EtcdBackup,
        Role::ImageVerifier,
        Role::Impersonator,
        Role::MetaWriter,
        Role::Operator,
        Role::Reader,
    ];

    /// Maps an exact Talos role string to its variant; anything else becomes [`Role::Unknown`].
    ///
    /// No trimming happens here; [`RoleSet::parse`] trims, as Talos's `role.Parse` does.
    pub fn parse(s: &str) -> Role {
        match s {
            "os:admin" => Role::Admin,
            "os:operator" => Role::Operator,
            "os:reader" => Role::Reader,
            "os:etcd:backup" => Role::EtcdBackup,
            "os:image:verifier" => Role::ImageVerifier,
            "os:meta:writer" => Role::MetaWriter,
            "os:impersonator" => Role::Impersonator,
            other => Role::Unknown(other.to_owned()),
        }
    }

    /// The Talos wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Role::Admin => "os:admin",
            Role::Operator => "os:operator",
            Role::Reader => "os:reader",
            Role::EtcdBackup => "os:etcd:backup",
            Role::ImageVerifier => "os:image:verifier",
            Role::MetaWriter => "os:meta:writer",
            Role::Impersonator => "os:impersonator",
            Role::Unknown(s) => s,
        }
    }

    /// Whether this is one of the seven Talos roles rather than [`Role::Unknown`].
    pub fn is_known(&self) -> bool {
        !matches!(self, Role::Unknown(_))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    /// Parsing never fails: unknown strings become [`Role::Unknown`].
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Role::parse(s))
    }
}

impl PartialEq for Role {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Role {}

impl PartialOrd for Role {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Role {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Role {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

// === impl RoleSet ===

/// A set of roles, sorted by role string.
///
/// What a caller holds (from its certificate or `talos-role`) and what a method requires are
/// both `RoleSet`s; access is granted when they share a role ([`RoleSet::includes_any`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RoleSet(BTreeSet<Role>);

impl RoleSet {
    /// Parses role strings the way Talos's `role.Parse` does: each value is trimmed, empty values
    /// are skipped (old Talos client certificates carry one empty Organization), and unknown
    /// roles are **kept** (see [`RoleSet::unknown`]).
    pub fn parse<I, S>(values: I) -> RoleSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        values
            .into_iter()
            .filter_map(|value| {
                let trimmed = value.as_ref().trim();
                (!trimmed.is_empty()).then(|| Role::parse(trimmed))
            })
            .collect()
    }

    /// The roles in this set that Talos does not define, sorted; worth a debug log line.
    pub fn unknown(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|role| !role.is_known())
            .map(Role::as_str)
    }

    /// Whether the two sets share at least one role; false if either set is empty
    /// (Talos `Set.IncludesAny`).
    pub fn includes_any(&self, other: &RoleSet) -> bool {
        // Iterate the smaller set and probe the larger one.
        let (small, large) = if self.len() <= other.len() {
            (self, other)
        } else {
            (other, self)
        };
        small.iter().any(|role| large.contains(role))
    }

    /// Whether `role` is in the set.
    pub fn contains(&self, role: &Role) -> bool {
        self.0.contains(role)
    }

    /// The role strings, sorted (Talos `Set.Strings()`): the form written to `talos-role` and to
    /// certificate Organization values.
    pub fn strings(&self) -> Vec<String> {
        self.0.iter().map(|role| role.as_str().to_owned()).collect()
    }

    /// Whether the set holds no role.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of roles in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The roles, sorted by role string.
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.0.iter()
    }

    /// Adds a role; adding one that is already present does nothing.
    pub fn insert(&mut self, role: Role) {
        self.0.insert(role);
    }
}

impl fmt::Display for RoleSet {
    /// `os:admin, os:reader`, or `no roles` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no roles");
        }
        for (i, role) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(role.as_str())?;
        }
        Ok(())
    }
}

impl FromIterator<Role> for RoleSet {
    fn from_iter<T: IntoIterator<Item = Role>>(iter: T) -> Self {
        RoleSet(iter.into_iter().collect())
    }
}

impl Extend<Role> for RoleSet {
    fn extend<T: IntoIterator<Item = Role>>(&mut self, iter: T) {
        self.0.extend(iter);
    }
}

impl<const N: usize> From<[Role; N]> for RoleSet {
    fn from(roles: [Role; N]) -> Self {
        roles.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a RoleSet {
    type Item = &'a Role;
    type IntoIter = std::collections::btree_set::Iter<'a, Role>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for RoleSet {
    type Item = Role;
    type IntoIter = std::collections::btree_set::IntoIter<Role>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_role_round_trips_through_its_string() {
        for role in Role::KNOWN {
            assert!(role.is_known(), "{role}");
            assert_eq!(Role::parse(role.as_str()), role);
            assert_eq!(role.as_str().parse::<Role>(), Ok(role.clone()));
            assert!(role.as_str().starts_with("os:"));
        }
    }

    #[test]
    fn known_roles_are_listed_sorted_and_distinct() {
        let strings: Vec<&str> = Role::KNOWN.iter().map(Role::as_str).collect();
        let mut sorted = strings.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(strings, sorted);
    }

    #[test]
    fn role_parse_is_exact() {
        assert_eq!(Role::parse("os:admin"), Role::Admin);
        assert_eq!(Role::parse("os:etcd:backup"), Role::EtcdBackup);
        assert_eq!(Role::parse("os:image:verifier"), Role::ImageVerifier);
        assert_eq!(Role::parse("os:meta:writer"), Role::MetaWriter);
        assert!(!Role::parse(" os:admin").is_known());
        assert!(!Role::parse("OS:ADMIN").is_known());
        assert!(!Role::parse("admin").is_known());
    }

    #[test]
    fn parse_trims_skips_empty_and_keeps_unknown_roles() {
        let set = RoleSet::parse(["  os:reader ", "", "   ", "os:future", "os:admin"]);
        assert_eq!(set.len(), 3);
        assert!(set.contains(&Role::Reader));
        assert!(set.contains(&Role::Admin));
        assert!(set.contains(&Role::Unknown("os:future".to_owned())));
        assert_eq!(set.unknown().collect::<Vec<_>>(), ["os:future"]);
    }

    #[test]
    fn parse_accepts_strings_without_the_os_prefix_as_unknown() {
        let set = RoleSet::parse(vec![String::from("foo")]);
        assert_eq!(set.unknown().collect::<Vec<_>>(), ["foo"]);
    }

    #[test]
    fn parse_of_only_empty_values_is_the_empty_set() {
        let set = RoleSet::parse([""]);
        assert!(set.is_empty());
        assert_eq!(set, RoleSet::default());
    }

    #[test]
    fn strings_are_sorted_and_deduplicated() {
        let set = RoleSet::parse(["os:reader", "os:admin", "os:reader", "os:etcd:backup"]);
        assert_eq!(set.strings(), ["os:admin", "os:etcd:backup", "os:reader"]);
        let listed: Vec<&Role> = set.iter().collect();
        assert_eq!(listed, [&Role::Admin, &Role::EtcdBackup, &Role::Reader]);
    }

    #[test]
    fn unknown_roles_sort_among_known_ones_by_string() {
        let set = RoleSet::parse(["os:reader", "os:future", "aaa"]);
        assert_eq!(set.strings(), ["aaa", "os:future", "os:reader"]);
    }

    #[test]
    fn includes_any_is_false_when_either_set_is_empty() {
        let empty = RoleSet::default();
        let admin = RoleSet::from([Role::Admin]);
        assert!(!empty.includes_any(&admin));
        assert!(!admin.includes_any(&empty));
        assert!(!empty.includes_any(&empty));
    }

    #[test]
    fn includes_any_needs_one_shared_role() {
        let held = RoleSet::from([Role::Reader, Role::EtcdBackup]);
        assert!(held.includes_any(&RoleSet::from([Role::Admin, Role::Reader])));
        assert!(!held.includes_any(&RoleSet::from([Role::Admin, Role::Operator])));
    }

    #[test]
    fn an_unknown_role_matches_only_the_same_string() {
        let held = RoleSet::parse(["os:future"]);
        assert!(held.includes_any(&RoleSet::parse(["os:future"])));
        assert!(!held.includes_any(&RoleSet::from(Role::KNOWN)));
    }

    #[test]
    fn display_joins_roles_or_says_no_roles() {
        assert_eq!(
            RoleSet::from([Role::Reader, Role::Admin]).to_string(),
            "os:admin, os:reader"
        );
        assert_eq!(RoleSet::default().to_string(), "no roles");
        assert_eq!(Role::MetaWriter.to_string(), "os:meta:writer");
    }

    #[test]
    fn insert_adds_once() {
        let mut set = RoleSet::default();
        set.insert(Role::Operator);
        set.insert(Role::Operator);
        set.extend([Role::Reader]);
        assert_eq!(set.strings(), ["os:operator", "os:reader"]);
    }

    #[test]
    fn equality_follows_the_role_string() {
        // A hand-built Unknown with a known string is the same role; `parse` never builds one.
        assert_eq!(Role::Unknown("os:admin".to_owned()), Role::Admin);
        assert_ne!(Role::Unknown("os:admins".to_owned()), Role::Admin);
    }
}
