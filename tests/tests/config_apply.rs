//! ApplyConfiguration and the config history through apid with the real binaries: the history
//! names the certificate apid verified (via `basalt-caller`), readers may read the history but
//! not apply, and only admins read the config back.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::basalt::v1::{GetRequest, HistoryRequest};
use basalt_api::machine::ApplyConfigurationRequest;
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_config::MachineConfig;
use basalt_e2e::{Cert, Node, within_test_deadline};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_through_apid_is_recorded_with_the_callers_certificate() {
    within_test_deadline(async {
        let node = Node::start().await;
        let mut admin_configs = ConfigServiceClient::new(node.channel(Cert::Admin).await);
        let active = admin_configs
            .get(GetRequest { version: 0 })
            .await
            .unwrap_or_else(|status| panic!("Get: {status:?}{}", node.log_tail()))
            .into_inner()
            .messages
            .remove(0);
        let yaml = String::from_utf8(active.data).unwrap();
        let mut raw = MachineConfig::from_yaml(&yaml).unwrap().to_raw();
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
