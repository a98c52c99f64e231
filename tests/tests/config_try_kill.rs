//! A TRY apply survives a `kill -9` of the real machined: its deadline is on disk, so a
//! machined started again on the same state directory reverts at once when the deadline passed
//! while it was down, and re-arms the revert when it did not.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::basalt::v1::{ConfigVersion, HistoryRequest};
use basalt_api::machine::ApplyConfigurationRequest;
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_e2e::{Cert, Node, within_test_deadline};

/// The active config's hostname.
async fn active_hostname(node: &Node) -> Option<String> {
    node.active_config().await.machine.hostname
}

async fn history(node: &Node) -> Vec<ConfigVersion> {
    ConfigServiceClient::new(node.channel(Cert::Reader).await)
        .history(HistoryRequest { limit: 0 })
        .await
        .unwrap_or_else(|status| panic!("History: {status:?}{}", node.log_tail()))
        .into_inner()
        .messages
        .remove(0)
        .entries
}

/// Applies the active config with hostname `trial` in TRY mode; returns the trial's deadline.
async fn try_hostname(node: &Node, timeout: Duration) -> SystemTime {
    let mut raw = node.active_config().await;
    raw.machine.hostname = Some("trial".to_owned());
    let asked = SystemTime::now();
    node.client(Cert::Admin)
        .await
        .apply_configuration(ApplyConfigurationRequest {
            data: raw.to_yaml().unwrap().into_bytes(),
            mode: Mode::Try as i32,
            try_mode_timeout: Some(prost_types::Duration {
                seconds: i64::try_from(timeout.as_secs()).unwrap(),
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("TRY apply: {status:?}{}", node.log_tail()));
    assert_eq!(active_hostname(node).await.as_deref(), Some("trial"));
    asked + timeout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_whose_deadline_passed_during_a_kill_9_is_reverted_at_restart() {
    within_test_deadline(async {
        let mut node = Node::start().await;
        let original = active_hostname(&node).await;
        let deadline = try_hostname(&node, Duration::from_secs(2)).await;

        node.kill_machined();
        // Down until the deadline has passed.
        while SystemTime::now() <= deadline + Duration::from_millis(200) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        node.restart().await;

        // Reverted while opening the store, before apid could answer.
        assert_eq!(
            active_hostname(&node).await,
            original,
            "{}",
            node.log_tail()
        );
        let newest = history(&node).await.remove(0);
        assert_eq!(newest.mode, "REVERT");
        assert!(newest.active);
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_survives_a_kill_9_and_is_reverted_when_its_deadline_passes() {
    within_test_deadline(async {
        let mut node = Node::start().await;
        let original = active_hostname(&node).await;
        // Long enough for the restart to come back well before it.
        let deadline = try_hostname(&node, Duration::from_secs(12)).await;

        node.kill_machined();
        node.restart().await;
        assert!(
            SystemTime::now() < deadline,
            "the restart took longer than the trial; nothing left to observe"
        );

        // Still on trial after the restart, with the deadline from before the kill.
        assert_eq!(active_hostname(&node).await.as_deref(), Some("trial"));
        let newest = history(&node).await.remove(0);
        assert_eq!(newest.mode, "TRY");
        assert!(newest.active && newest.try_deadline.is_some(), "{newest:?}");

        // The re-armed watchdog reverts it once the deadline passes.
        let patience = Instant::now()
            + deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default()
            + Duration::from_secs(15);
        loop {
            let newest = history(&node).await.remove(0);
            if newest.mode == "REVERT" && newest.active {
                break;
            }
            assert!(
                Instant::now() < patience,
                "no revert after the deadline: {newest:?}{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            SystemTime::now() >= deadline,
            "reverted before the deadline"
        );
        assert_eq!(active_hostname(&node).await, original);
        node.shutdown().await;
    })
    .await;
}
