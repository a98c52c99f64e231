//! The authorization chain on machined's socket: peer uid, roles from `talos-role`, the rules
//! table, and Unimplemented for everything basalt does not serve.

mod support;

use basalt_api::METHODS;
use basalt_api::machine::{RebootRequest, UpgradeRequest};
use machined::AllowedUids;
use support::{Machined, with_roles, within_deadline};
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;

#[tokio::test]
async fn reader_gets_version() {
    within_deadline(async {
        let machined = Machined::start().await;
        let reply = machined
            .machine()
            .await
            .version(with_roles((), &["os:reader"]))
            .await
            .expect("reader may call Version");
        assert_eq!(reply.get_ref().messages.len(), 1);
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn reader_cannot_reboot_and_is_told_which_roles_are_needed() {
    within_deadline(async {
        let machined = Machined::start().await;
        let status = machined
            .machine()
            .await
            .reboot(with_roles(RebootRequest::default(), &["os:reader"]))
            .await
            .expect_err("reader must not reboot");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "/machine.MachineService/Reboot needs one of os:admin, os:operator; \
             the certificate holds os:reader"
        );
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_call_without_talos_role_is_denied() {
    within_deadline(async {
        let machined = Machined::start().await;
        let status = machined
            .machine()
            .await
            .version(())
            .await
            .expect_err("no roles, no access");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("holds no roles"),
            "{}",
            status.message()
        );
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn comma_separated_roles_in_one_value_are_accepted() {
    within_deadline(async {
        let machined = Machined::start().await;
        machined
            .machine()
            .await
            .version(with_roles((), &["os:future, os:operator"]))
            .await
            .expect("operator may call Version");
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn admin_calling_upgrade_is_told_basalt_does_not_implement_it() {
    within_deadline(async {
        let machined = Machined::start().await;
        let status = machined
            .machine()
            .await
            .upgrade(with_roles(UpgradeRequest::default(), &["os:admin"]))
            .await
            .expect_err("Upgrade is not implemented");
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(
            status.message(),
            "basalt does not implement /machine.MachineService/Upgrade yet"
        );
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_peer_uid_outside_the_allow_list_is_refused_even_as_admin() {
    within_deadline(async {
        let me = basalt_sys::current_uid();
        let other = me.wrapping_add(4242);
        let machined =
            Machined::start_with(|config, _| config.allowed_uids = AllowedUids::new([other])).await;
        let status = machined
            .machine()
            .await
            .version(with_roles((), &["os:admin"]))
            .await
            .expect_err("this uid is not allowed");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.message(),
            format!("peer uid {me} is not allowed to call machined")
        );
        machined.stop().await;
    })
    .await;
}

/// Calls every method machined's services declare, as admin, with an empty message (or an
/// empty stream), and checks that exactly the served ones are implemented.
#[tokio::test]
async fn every_declared_method_is_served_or_answers_unimplemented_by_name() {
    within_deadline(async {
        let machined = Machined::start().await;
        let mut grpc = tonic::client::Grpc::new(machined.channel().await);
        let (mut served_seen, mut unimplemented_seen) = (0, 0);
        // The lifecycle methods act on the node (Reboot, Shutdown and Reset restart, stop or
        // wipe it), follow forever (Events) or answer Unimplemented by design on a node
        // without a CA (GenerateClientConfiguration): tests/lifecycle.rs covers them.
        let lifecycle = [
            "/machine.MachineService/Events",
            "/machine.MachineService/GenerateClientConfiguration",
            "/machine.MachineService/Reboot",
            "/machine.MachineService/Reset",
            "/machine.MachineService/Shutdown",
        ];
        for method in METHODS.iter().filter(|m| {
            (m.path.starts_with("/machine.MachineService/")
                || m.path.starts_with("/basalt.v1.DiagnosticsService/")
                || m.path.starts_with("/basalt.v1.ConfigService/"))
                && !lifecycle.contains(&m.path)
        }) {
            grpc.ready().await.expect("channel ready");
            let path = PathAndQuery::from_static(method.path);
            let codec = tonic_prost::ProstCodec::<(), ()>::default();
            let request = with_roles((), &["os:admin"]);
            let result = match (method.client_streaming, method.server_streaming) {
                (false, false) => grpc.unary(request, path, codec).await.map(drop),
                (false, true) => match grpc.server_streaming(request, path, codec).await {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(())) => {}
                                Ok(None) => break Ok(()),
                                Err(status) => break Err(status),
                            }
                        }
                    }
                    Err(status) => Err(status),
                },
                (true, _) => {
                    let request = with_roles(tokio_stream::iter(Vec::<()>::new()), &["os:admin"]);
                    if method.server_streaming {
                        grpc.streaming(request, path, codec).await.map(drop)
                    } else {
                        grpc.client_streaming(request, path, codec).await.map(drop)
                    }
                }
            };
            let served = [
                "CPUInfo",
                "Copy",
                "DiskStats",
                "DiskUsage",
                "Dmesg",
                "Hostname",
                "List",
                "LoadAvg",
                "Logs",
                "LogsContainers",
                "Memory",
                "Mounts",
                "NetworkDeviceStats",
                "Processes",
                "Read",
                "ServiceList",
                "ServiceRestart",
                "ServiceStart",
                "ServiceStop",
                "SystemStat",
                "Version",
                "Echo",
                "Generate",
                "Collect",
                "ApplyConfiguration",
                "History",
                "Rollback",
                "Confirm",
                "Get",
            ]
            .iter()
            .any(|name| method.path.ends_with(&format!("/{name}")));
            match result {
                Ok(()) => {
                    assert!(served, "{} answered OK but is not served", method.path);
                    served_seen += 1;
                }
                // A served method may refuse an empty request (Read needs a path, Dmesg needs
                // /dev/kmsg access), but never as Unimplemented.
                Err(status) if served => {
                    assert_ne!(status.code(), Code::Unimplemented, "{}", method.path);
                    served_seen += 1;
                }
                Err(status) => {
                    unimplemented_seen += 1;
                    assert_eq!(status.code(), Code::Unimplemented, "{}", method.path);
                    assert_eq!(
                        status.message(),
                        format!("basalt does not implement {} yet", method.path)
                    );
                }
            }
        }
        assert_eq!(served_seen, 29, "every served method answered");
        assert!(unimplemented_seen > 0);
        machined.stop().await;
    })
    .await;
}
