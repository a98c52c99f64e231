//! ApplyConfiguration and the config history through apid with the real binaries: the history
//! names the certificate apid verified (via `basalt-caller`), readers may read the history but
//! not apply, and only admins read the config back.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::basalt::v1::{GetRequest, HistoryRequest};
use basalt_api::machine::ApplyConfigurationRequest;
use basalt_api::machine::apply_configuration_request::Mode;
use std::time::{Duration, Instant};

use basalt_config::{ApidConfig, RawApidLimits};
use basalt_e2e::{Cert, Node, within_test_deadline};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_through_apid_is_recorded_with_the_callers_certificate() {
    within_test_deadline(async {
        let node = Node::start().await;
        let mut raw = node.active_config().await;
        raw.machine.hostname = Some("renamed".to_owned());
        let changed = raw.to_yaml().unwrap();

        // A reader passes apid's rules (Talos's maintenance-mode row) and machined refuses.
        let status = node
            .client(Cert::Reader)
            .await
            .apply_configuration(ApplyConfigurationRequest {
                data: changed.clone().into_bytes(),
                mode: Mode::NoReboot as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

        let reply = node
            .client(Cert::Admin)
            .await
            .apply_configuration(ApplyConfigurationRequest {
                data: changed.clone().into_bytes(),
                mode: Mode::Auto as i32,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("apply: {status:?}{}", node.log_tail()))
            .into_inner()
            .messages
            .remove(0);
        assert_eq!(reply.mode, Mode::NoReboot as i32, "{}", reply.mode_details);

        let history = ConfigServiceClient::new(node.channel(Cert::Reader).await)
            .history(HistoryRequest { limit: 0 })
            .await
            .unwrap_or_else(|status| panic!("History: {status:?}{}", node.log_tail()))
            .into_inner()
            .messages
            .remove(0)
            .entries;
        let newest = &history[0];
        assert_eq!(newest.mode, "AUTO(NO_REBOOT)");
        assert!(newest.active);
        let caller = newest.caller.as_ref().unwrap();
        assert_eq!(caller.common_name, "e2e");
        assert_eq!(caller.roles, ["os:admin"]);
        assert!(!caller.serial.is_empty() && !caller.fingerprint.is_empty());
        assert!(
            caller.address.starts_with("127.0.0.1:"),
            "{}",
            caller.address
        );
        assert_eq!(history.last().unwrap().mode, "INITIAL");

        // Readers may not read the config back (it holds the CA key and the token).
        let status = ConfigServiceClient::new(node.channel(Cert::Reader).await)
            .get(GetRequest { version: 0 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        node.shutdown().await;
    })
    .await;
}

/// Version with one `x-padding` header of `bytes` bytes: what apid's header-size limit sees.
async fn version_with_header(node: &Node, bytes: usize) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(());
    let padding = "a".repeat(bytes);
    request
        .metadata_mut()
        .insert("x-padding", padding.parse().unwrap());
    node.client(Cert::Admin)
        .await
        .version(request)
        .await
        .map(drop)
}

/// apid reads its limits and handshake timeout from the config file machined writes before
/// starting it, so those keys need a reboot: NO_REBOOT refuses them, AUTO reboots the node
/// (container mode) and apid comes back enforcing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_limits_need_a_reboot_and_apid_comes_back_enforcing_them() {
    within_test_deadline(async {
        let node = Node::start().await;
        // 10 KiB of metadata passes the default 64 KiB header limit.
        version_with_header(&node, 10 * 1024)
            .await
            .unwrap_or_else(|status| panic!("default limit: {status:?}{}", node.log_tail()));

        let mut raw = node.active_config().await;
        raw.machine.apid_limits = Some(RawApidLimits {
            max_streams_per_connection: Some(32),
            max_header_bytes: Some(8 * 1024),
            ..RawApidLimits::default()
        });
        raw.machine
            .apid
            .get_or_insert_with(Default::default)
            .handshake_timeout = Some("7s".to_owned());
        let changed = raw.to_yaml().unwrap().into_bytes();

        let status = node
            .client(Cert::Admin)
            .await
            .apply_configuration(ApplyConfigurationRequest {
                data: changed.clone(),
                mode: Mode::NoReboot as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("machine.apidLimits"),
            "{status:?}"
        );

        let apid_before = node.apid_pid().expect("apid runs");
        let reply = node
            .client(Cert::Admin)
            .await
            .apply_configuration(ApplyConfigurationRequest {
                data: changed,
                mode: Mode::Auto as i32,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("apply: {status:?}{}", node.log_tail()))
            .into_inner()
            .messages
            .remove(0);
        assert_eq!(reply.mode, Mode::Reboot as i32, "{}", reply.mode_details);

        // Bounded wait for the new apid to answer.
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let restarted = node.apid_pid().is_some_and(|pid| pid != apid_before);
            if restarted && version_with_header(&node, 16).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "apid did not come back after the reboot{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let written = std::fs::read_to_string(node.state_dir().join("apid/apid.yaml")).unwrap();
        let apid = ApidConfig::from_yaml(&written).unwrap();
        assert_eq!(apid.limits.max_streams_per_connection, 32);
        assert_eq!(apid.limits.max_header_bytes, 8 * 1024);
        assert_eq!(apid.handshake_timeout, Duration::from_secs(7));
        // The same 10 KiB header is now over the limit; small calls are still served.
        version_with_header(&node, 10 * 1024)
            .await
            .expect_err("10 KiB of headers over an 8 KiB limit");
        version_with_header(&node, 16)
            .await
            .unwrap_or_else(|status| panic!("after: {status:?}{}", node.log_tail()));
        node.shutdown().await;
    })
    .await;
}
