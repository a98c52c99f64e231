//! Every RPC declared in `proto/` must be either in the authz table or explicitly served with
//! token authentication; a new RPC can never rely on the admin-only fallback by accident.

use std::collections::BTreeSet;

use basalt_api::{FILE_DESCRIPTOR_SET, METHODS};
use basalt_authz::{Decision, Role, RoleSet, TOKEN_AUTHENTICATED, authorize, rule};
use prost::Message as _;
use prost_types::FileDescriptorSet;

/// Full paths of every method in the embedded descriptor set.
fn methods_in_descriptor_set() -> BTreeSet<String> {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut paths = BTreeSet::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                paths.insert(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths
}

#[test]
fn every_declared_method_has_a_rule_or_is_token_authenticated() {
    let paths = methods_in_descriptor_set();
    assert!(!paths.is_empty());
    let missing: Vec<&String> = paths
        .iter()
        .filter(|path| rule(path).is_none() && !TOKEN_AUTHENTICATED.contains(&path.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "methods without an authz rule (add the Talos row, or list them in \
         TOKEN_AUTHENTICATED): {missing:?}"
    );
}

#[test]
fn methods_list_and_descriptor_set_agree() {
    let listed: BTreeSet<String> = METHODS.iter().map(|m| m.path.to_owned()).collect();
    assert_eq!(listed, methods_in_descriptor_set());
}

#[test]
fn token_authenticated_methods_are_declared_and_have_no_role_rule() {
    let paths = methods_in_descriptor_set();
    for method in TOKEN_AUTHENTICATED {
        assert!(
            paths.contains(*method),
            "{method} is not declared in proto/"
        );
        assert!(
            rule(method).is_none(),
            "{method} must not be in the role table"
        );
    }
}

#[test]
fn admin_may_call_every_role_checked_method() {
    let admin = RoleSet::from([Role::Admin]);
    for path in methods_in_descriptor_set() {
        if TOKEN_AUTHENTICATED.contains(&path.as_str()) {
            continue;
        }
        assert_eq!(authorize(&path, &admin), Decision::Allow, "{path}");
    }
}

#[test]
fn reader_is_refused_the_methods_that_expose_secrets_or_change_state() {
    let reader = RoleSet::from([Role::Reader]);
    for method in [
        "Copy",
        "GenerateClientConfiguration",
        "Read",
        "Reboot",
        "Reset",
        "ServiceRestart",
        "ServiceStart",
        "ServiceStop",
        "Shutdown",
        "Upgrade",
    ] {
        let path = format!("/machine.MachineService/{method}");
        assert!(!authorize(&path, &reader).is_allowed(), "{path}");
    }
}
