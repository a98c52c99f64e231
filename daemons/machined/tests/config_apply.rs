//! ApplyConfiguration and `basalt.v1.ConfigService` over machined's real unix socket: modes,
//! dry run, validation, history with callers, TRY reverts (also across a restart), concurrency,
//! rollback and authorization.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::basalt::v1::{
    ConfigVersion, ConfirmRequest, GetRequest, HistoryRequest, RollbackRequest,
};
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_api::machine::{ApplyConfiguration, ApplyConfigurationRequest, ResetRequest};
use machined::events::EventPayload;
use machined::{Config, ConfigStore, ConfigStoreOptions, EventBus, MAX_MESSAGE_SIZE, Server};
use support::{connect, short_tempdir, with_roles, within_deadline};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// A valid worker config, with a CA certificate made for this test run (ApplyConfiguration
/// parses it: apid could not start with one that is not a certificate).
static BASE: LazyLock<String> = LazyLock::new(|| {
    let ca = basalt_pki::CertificateAuthority::generate(&basalt_pki::CaOptions::talos_os())
        .expect("a CA");
    let crt = basalt_config::Base64Pem::from_pem(ca.cert_pem().to_owned()).to_base64();
    format!(
        "version: v1alpha1
machine:
  type: worker
  token: abcdef.0123456789abcdef
  ca:
    crt: {crt}
cluster:
  name: dev
  endpoints: [127.0.0.1]
"
    )
});

/// What apid would send for an admin certificate.
const ALICE: &str = "cn=alice;serial=2a;fp=ab12;roles=os:admin;addr=10.0.0.7:40112";

fn with_hostname(name: &str) -> String {
    BASE.replace("type: worker", &format!("type: worker\n  hostname: {name}"))
}

/// A config whose change from [`BASE`] needs a reboot (apid's listen address).
fn with_listen() -> String {
    BASE.replace(
        "type: worker",
        "type: worker\n  apid:\n    listen: \"127.0.0.1:50100\"",
    )
}

/// machined serving on `<state>/run/machined.sock` with a config store in `<state>/config`.
struct Node {
    socket: PathBuf,
    store: ConfigStore,
    events: EventBus,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), machined::Error>>>,
}

impl Node {
    async fn start(state: &Path, history_limit: usize) -> Node {
        let socket = state.join("run/machined.sock");
        let host = Arc::new(basalt_sys::ContainerHost::new(Some("node-1".to_owned())));
        let mut config = Config::new(&socket, host);
        config.state_dir = Some(state.to_path_buf());
        let options = ConfigStoreOptions {
            dir: state.join("config"),
            history_limit,
        };
        let store = ConfigStore::open(&options, &BASE, "seeded by the test").expect("open store");
        config.config_store = Some(store.clone());
        let bound = Server::bind(config).await.expect("bind machined");
        let events = bound.events();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        Node {
            socket,
            store,
            events,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    async fn machine(&self) -> MachineServiceClient<Channel> {
        MachineServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    async fn configs(&self) -> ConfigServiceClient<Channel> {
        ConfigServiceClient::new(self.channel().await)
    }

    /// ApplyConfiguration as an admin (through apid, as alice).
    async fn apply(
        &self,
        yaml: &str,
        mode: Mode,
        dry_run: bool,
        timeout: Option<Duration>,
    ) -> Result<ApplyConfiguration, tonic::Status> {
        self.apply_bytes(yaml.as_bytes(), mode, dry_run, timeout)
            .await
    }

    /// [`Node::apply`] with a document that need not be text.
    async fn apply_bytes(
        &self,
        data: &[u8],
        mode: Mode,
        dry_run: bool,
        timeout: Option<Duration>,
    ) -> Result<ApplyConfiguration, tonic::Status> {
        let request = ApplyConfigurationRequest {
            data: data.to_vec(),
            mode: mode as i32,
            dry_run,
            try_mode_timeout: timeout.map(|t| prost_types::Duration {
                seconds: t.as_secs() as i64,
                nanos: t.subsec_nanos() as i32,
            }),
        };
        let mut request = with_roles(request, &["os:admin"]);
        request
            .metadata_mut()
            .insert("basalt-caller", MetadataValue::from_static(ALICE));
        let reply = self.machine().await.apply_configuration(request).await?;
        Ok(reply.into_inner().messages.remove(0))
    }

    async fn history(&self) -> Vec<ConfigVersion> {
        let reply = self
            .configs()
            .await
            .history(with_roles(HistoryRequest { limit: 0 }, &["os:reader"]))
            .await
            .expect("history");
        reply.into_inner().messages.remove(0).entries
    }

    /// The active config's YAML, read back through `ConfigService/Get`.
    async fn active_yaml(&self) -> String {
        let reply = self
            .configs()
            .await
            .get(with_roles(GetRequest { version: 0 }, &["os:admin"]))
            .await
            .expect("get");
        String::from_utf8(reply.into_inner().messages.remove(0).data).expect("utf-8")
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("serve task did not panic")
                .expect("serve ended cleanly");
        }
    }
}

fn state_dir() -> TempDir {
    short_tempdir()
}

/// Polls `check` every 50 ms until it holds, for at most `patience`.
async fn eventually<F, Fut>(patience: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < patience, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_validation_problem_is_reported_at_once_and_published() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let (_, mut events) = node.events.subscribe();
        let bad = BASE
            .replace("type: worker", "type: toaster")
            .replace("abcdef.0123456789abcdef", "not-a-token")
            .replace("name: dev", "name: \"\"");
        let status = node
            .apply(&bad, Mode::NoReboot, false, None)
            .await
            .expect_err("invalid config");
        assert_eq!(status.code(), Code::InvalidArgument);
        for key in ["machine.type", "machine.token", "cluster.name"] {
            assert!(
                status.message().contains(key),
                "{key} in {}",
                status.message()
            );
        }
        // Published on the event bus too.
        let event = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let event = events.recv().await.expect("event");
                if let EventPayload::ConfigValidationError(payload) = event.payload {
                    return payload;
                }
            }
        })
        .await
        .expect("validation event");
        assert!(event.error.contains("machine.token"), "{}", event.error);
        // Nothing changed.
        assert_eq!(node.history().await.len(), 1);
        assert_eq!(node.active_yaml().await, *BASE);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unparsable_configs_are_refused_with_the_key_and_position_and_nothing_changes() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let ca_line = BASE
            .lines()
            .find(|line| line.trim_start().starts_with("crt: "))
            .expect("BASE has a CA");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "an unknown key",
                BASE.replace("  type: worker\n", "  type: worker\n  certSans: []\n")
                    .into_bytes(),
                "machine: unknown field `certSans`",
            ),
            (
                "a map where a string belongs",
                BASE.replace(ca_line, "    crt: {a: 1}").into_bytes(),
                "machine.ca.crt: invalid type: map, expected a base64 string",
            ),
            (
                "bad base64",
                BASE.replace(ca_line, "    crt: '!!!'").into_bytes(),
                "machine.ca.crt: invalid base64",
            ),
            (
                "bytes that are not UTF-8",
                vec![0xff, 0xfe, 0x00, 0x80],
                "the machine configuration is not UTF-8 text",
            ),
            (
                "nesting 10,000 deep",
                format!("machine: {}", "[".repeat(10_000)).into_bytes(),
                "machine: invalid type: sequence, expected a machine section mapping",
            ),
            (
                "an alias bomb",
                b"a: &a [*a, *a]\nb: *a\n".to_vec(),
                "unknown field `a`",
            ),
        ];
        for (what, data, expected) in cases {
            let status = node
                .apply_bytes(&data, Mode::NoReboot, false, None)
                .await
                .expect_err(what);
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(
                status.message().contains(expected),
                "{what}: {expected:?} in {:?}",
                status.message()
            );
            // An error under a key also says where it is.
            if expected.starts_with("machine") {
                assert!(status.message().contains(" at line "), "{what}: {status:?}");
            }
        }
        // Nothing was stored or applied, and machined still takes a good config.
        assert_eq!(node.history().await.len(), 1);
        assert_eq!(node.active_yaml().await, *BASE);
        node.apply(&with_hostname("after"), Mode::NoReboot, false, None)
            .await
            .expect("a valid config after the bad ones");
        assert_eq!(node.history().await.len(), 2);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dry_run_changes_nothing_and_shows_the_diff() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let reply = node
            .apply(&with_hostname("n2"), Mode::Auto, true, None)
            .await
            .expect("dry run");
        assert_eq!(reply.mode, Mode::NoReboot as i32);
        let details = reply.mode_details;
        assert!(details.starts_with("Dry run summary:\n"), "{details}");
        assert!(
            details.contains("Applied configuration without a reboot (skipped in dry-run)"),
            "{details}"
        );
        assert!(
            details.contains("Changed keys: machine.hostname"),
            "{details}"
        );
        assert!(details.contains("--- current\n+++ new\n"), "{details}");
        assert!(details.contains("\n+  hostname: n2\n"), "{details}");
        assert_eq!(node.history().await.len(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config/current.yaml")).unwrap(),
            *BASE
        );

        let same = node.apply(&BASE, Mode::NoReboot, true, None).await.unwrap();
        assert!(
            same.mode_details.ends_with("No changes.\n"),
            "{}",
            same.mode_details
        );
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn no_reboot_applies_and_history_records_the_mode_and_the_caller() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let mut subscriber = node.store.subscribe();
        let reply = node
            .apply(&with_hostname("n2"), Mode::NoReboot, false, None)
            .await
            .expect("apply");
        assert_eq!(reply.mode, Mode::NoReboot as i32);
        assert_eq!(reply.mode_details, "Applied configuration without a reboot");
        assert_eq!(node.active_yaml().await, with_hostname("n2"));
        // The supervisor's seam sees the new config.
        subscriber.changed().await.expect("watch");
        assert_eq!(subscriber.borrow().config.hostname(), Some("n2"));

        let history = node.history().await;
        assert_eq!(history.len(), 2);
        let newest = &history[0];
        assert_eq!(newest.version, 2);
        assert_eq!(newest.mode, "NO_REBOOT");
        assert!(newest.active && !newest.staged);
        let caller = newest.caller.as_ref().expect("caller");
        assert_eq!(caller.common_name, "alice");
        assert_eq!(caller.serial, "2a");
        assert_eq!(caller.roles, ["os:admin"]);
        assert_eq!(caller.address, "10.0.0.7:40112");
        assert_eq!(newest.sha256.len(), 64);
        assert_eq!(history[1].mode, "INITIAL");
        assert!(!history[1].active);

        // AUTO is reported as AUTO(NO_REBOOT) in history.
        let reply = node
            .apply(&with_hostname("n3"), Mode::Auto, false, None)
            .await
            .unwrap();
        assert_eq!(reply.mode, Mode::NoReboot as i32);
        assert_eq!(node.history().await[0].mode, "AUTO(NO_REBOOT)");
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_caller_without_basalt_caller_is_recorded_by_roles_and_uid() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let request = with_roles(
            ApplyConfigurationRequest {
                data: with_hostname("n2").into_bytes(),
                mode: Mode::NoReboot as i32,
                ..Default::default()
            },
            &["os:admin"],
        );
        node.machine()
            .await
            .apply_configuration(request)
            .await
            .expect("apply");
        let caller = node.history().await[0].caller.clone().unwrap();
        assert_eq!(caller.roles, ["os:admin"]);
        assert!(
            caller.address.starts_with("unix:uid="),
            "{}",
            caller.address
        );
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn staged_is_recorded_but_not_active() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let reply = node
            .apply(&with_hostname("later"), Mode::Staged, false, None)
            .await
            .expect("stage");
        assert_eq!(reply.mode, Mode::Staged as i32);
        assert_eq!(node.active_yaml().await, *BASE);
        let history = node.history().await;
        assert_eq!(history[0].mode, "STAGED");
        assert!(history[0].staged && !history[0].active);
        assert!(history[1].active);
        node.stop().await;

        // The next start is a boot: the staged config becomes active.
        let node = Node::start(dir.path(), 20).await;
        assert_eq!(node.active_yaml().await, with_hostname("later"));
        let history = node.history().await;
        assert!(history[0].active && !history[0].staged);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn reboot_keys_are_refused_by_no_reboot_and_try_and_reboot_with_auto() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        for mode in [Mode::NoReboot, Mode::Try] {
            let status = node
                .apply(&with_listen(), mode, false, None)
                .await
                .expect_err("needs a reboot");
            assert_eq!(status.code(), Code::FailedPrecondition);
            assert!(
                status.message().contains("machine.apid.listen"),
                "{}",
                status.message()
            );
        }
        let status = node
            .apply(&with_hostname("x"), Mode::Reboot, false, None)
            .await
            .expect_err("REBOOT is deprecated");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(status.message().contains("AUTO"), "{}", status.message());

        // AUTO stages it and reboots; the reboot's boot activates it.
        let reply = node
            .apply(&with_listen(), Mode::Auto, false, None)
            .await
            .expect("auto with a reboot");
        assert_eq!(reply.mode, Mode::Reboot as i32, "{}", reply.mode_details);
        assert!(
            reply.mode_details.contains("reboot actor id"),
            "{}",
            reply.mode_details
        );
        assert_eq!(node.history().await[0].mode, "AUTO(REBOOT)");
        eventually(
            Duration::from_secs(10),
            "the staged config to activate",
            || async { node.store.current().config.apid_listen().port() == 50100 },
        )
        .await;
        let history = node.history().await;
        assert!(history[0].active && !history[0].staged);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn try_reverts_when_not_confirmed_in_time() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let reply = node
            .apply(
                &with_hostname("trial"),
                Mode::Try,
                false,
                Some(Duration::from_secs(1)),
            )
            .await
            .expect("try");
        assert_eq!(reply.mode, Mode::Try as i32);
        assert!(
            reply.mode_details.contains("reverted to version 1"),
            "{}",
            reply.mode_details
        );
        assert_eq!(node.active_yaml().await, with_hostname("trial"));
        let history = node.history().await;
        assert!(history[0].try_deadline.is_some());

        eventually(Duration::from_secs(10), "the revert", || async {
            let newest = node.history().await.remove(0);
            newest.mode == "REVERT" && newest.active
        })
        .await;
        assert_eq!(node.active_yaml().await, *BASE);
        let history = node.history().await;
        assert!(history[0].active);
        assert!(
            history[0].note.contains("version 2 was not confirmed"),
            "{}",
            history[0].note
        );
        assert_eq!(history[0].caller.as_ref().unwrap().address, "machined");
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn try_is_confirmed_by_applying_it_again_or_by_confirm() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let timeout = Some(Duration::from_secs(2));
        node.apply(&with_hostname("t1"), Mode::Try, false, timeout)
            .await
            .unwrap();
        let reply = node
            .apply(&with_hostname("t1"), Mode::NoReboot, false, None)
            .await
            .unwrap();
        assert!(
            reply.mode_details.starts_with("Confirmed"),
            "{}",
            reply.mode_details
        );
        assert_eq!(node.store.trial(), None);

        node.apply(&with_hostname("t2"), Mode::Try, false, timeout)
            .await
            .unwrap();
        let reply = node
            .configs()
            .await
            .confirm(with_roles(ConfirmRequest {}, &["os:admin"]))
            .await
            .expect("confirm");
        assert_eq!(reply.into_inner().messages[0].version, 3);
        let status = node
            .configs()
            .await
            .confirm(with_roles(ConfirmRequest {}, &["os:admin"]))
            .await
            .expect_err("nothing left to confirm");
        assert_eq!(status.code(), Code::FailedPrecondition);

        // Past both deadlines: nothing was reverted.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(node.active_yaml().await, with_hostname("t2"));
        assert!(node.history().await.iter().all(|e| e.mode != "REVERT"));
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn try_reverts_at_start_when_the_deadline_passed_while_machined_was_down() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        node.apply(
            &with_hostname("trial"),
            Mode::Try,
            false,
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
        node.stop().await;
        tokio::time::sleep(Duration::from_millis(1300)).await;

        let node = Node::start(dir.path(), 20).await;
        // Reverted while opening, before serving.
        assert_eq!(node.active_yaml().await, *BASE);
        let history = node.history().await;
        assert_eq!(history[0].mode, "REVERT");
        assert!(history[0].active);
        assert_eq!(node.store.trial(), None);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn try_is_rearmed_after_a_restart_and_reverts_when_the_deadline_passes() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        node.apply(
            &with_hostname("trial"),
            Mode::Try,
            false,
            Some(Duration::from_secs(3)),
        )
        .await
        .unwrap();
        node.stop().await;

        let node = Node::start(dir.path(), 20).await;
        assert_eq!(node.active_yaml().await, with_hostname("trial"));
        assert!(node.history().await[0].try_deadline.is_some());
        eventually(Duration::from_secs(10), "the re-armed revert", || async {
            let newest = node.history().await.remove(0);
            newest.mode == "REVERT" && newest.active
        })
        .await;
        assert_eq!(node.active_yaml().await, *BASE);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_concurrent_apply_is_refused() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        // Whoever holds the change lock (an apply, a reboot's activation) keeps others out.
        let guard = node.store.lock().await;
        let status = node
            .apply(&with_hostname("n2"), Mode::NoReboot, false, None)
            .await
            .expect_err("busy");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "another apply configuration is already in progress"
        );
        // A dry run only reads.
        node.apply(&with_hostname("n2"), Mode::NoReboot, true, None)
            .await
            .expect("dry run while busy");
        drop(guard);
        node.apply(&with_hostname("n2"), Mode::NoReboot, false, None)
            .await
            .expect("free again");
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn history_is_bounded_and_rollback_reapplies_a_version_as_a_new_entry() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 3).await;
        for i in 0..5 {
            node.apply(
                &with_hostname(&format!("n{i}")),
                Mode::NoReboot,
                false,
                None,
            )
            .await
            .unwrap();
        }
        let versions: Vec<u64> = node.history().await.iter().map(|e| e.version).collect();
        assert_eq!(versions, [6, 5, 4]);
        let files = std::fs::read_dir(dir.path().join("config/history"))
            .unwrap()
            .count();
        assert_eq!(files, 3);

        let mut request = with_roles(RollbackRequest { version: 4 }, &["os:admin"]);
        request
            .metadata_mut()
            .insert("basalt-caller", MetadataValue::from_static(ALICE));
        let reply = node
            .configs()
            .await
            .rollback(request)
            .await
            .expect("rollback")
            .into_inner()
            .messages
            .remove(0);
        assert_eq!(reply.version, 7);
        assert_eq!(reply.mode, "ROLLBACK(NO_REBOOT)");
        assert_eq!(node.active_yaml().await, with_hostname("n2"));
        let newest = node.history().await.remove(0);
        assert_eq!(newest.note, "restores version 4");
        assert_eq!(newest.caller.unwrap().common_name, "alice");

        let status = node
            .configs()
            .await
            .rollback(with_roles(RollbackRequest { version: 1 }, &["os:admin"]))
            .await
            .expect_err("pruned");
        assert_eq!(status.code(), Code::NotFound);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn only_admins_change_or_read_the_config_and_readers_see_history() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        for roles in [&["os:reader"][..], &["os:operator"][..]] {
            let request = with_roles(
                ApplyConfigurationRequest {
                    data: with_hostname("evil").into_bytes(),
                    mode: Mode::NoReboot as i32,
                    ..Default::default()
                },
                roles,
            );
            let status = node
                .machine()
                .await
                .apply_configuration(request)
                .await
                .expect_err("not an admin");
            assert_eq!(status.code(), Code::PermissionDenied);
        }
        // The reader passes the rules table (Talos's maintenance-mode row) and is refused by
        // the handler, which says why.
        let request = with_roles(
            ApplyConfigurationRequest {
                data: BASE.as_bytes().to_vec(),
                mode: Mode::NoReboot as i32,
                ..Default::default()
            },
            &["os:reader"],
        );
        let status = node
            .machine()
            .await
            .apply_configuration(request)
            .await
            .unwrap_err();
        assert!(
            status.message().contains("only os:admin"),
            "{}",
            status.message()
        );

        let mut configs = node.configs().await;
        for status in [
            configs
                .rollback(with_roles(RollbackRequest { version: 1 }, &["os:operator"]))
                .await
                .unwrap_err(),
            configs
                .get(with_roles(GetRequest { version: 0 }, &["os:reader"]))
                .await
                .unwrap_err(),
            configs
                .confirm(with_roles(ConfirmRequest {}, &["os:reader"]))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{}",
                status.message()
            );
        }
        assert_eq!(node.history().await.len(), 1);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_reset_wipes_the_history_and_the_reboot_seeds_the_store_again() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        node.apply(&with_hostname("n2"), Mode::NoReboot, false, None)
            .await
            .unwrap();
        assert_eq!(node.history().await.len(), 2);
        node.machine()
            .await
            .reset(with_roles(
                ResetRequest {
                    reboot: true,
                    ..Default::default()
                },
                &["os:admin"],
            ))
            .await
            .expect("reset");
        // The reboot after the wipe runs the store's boot hook: seeded from --config again.
        eventually(
            Duration::from_secs(10),
            "the store to be seeded again",
            || async {
                let history = node.store.history();
                history.len() == 1 && history[0].info.mode == "INITIAL" && history[0].active
            },
        )
        .await;
        assert_eq!(node.active_yaml().await, *BASE);
        assert!(dir.path().join("config/current.yaml").exists());
        // And it works as before.
        node.apply(&with_hostname("n3"), Mode::NoReboot, false, None)
            .await
            .expect("apply after reset");
        node.stop().await;
    })
    .await;
}

// === a full disk, and files that cannot be removed (in mount namespaces of their own) ===

/// Set for an inner test by its outer one: the state dir prepared in the namespace.
const NAMESPACE_STATE_DIR: &str = "BASALT_MACHINED_NAMESPACE_STATE";

/// Size of the full disk's tmpfs: the seed fits, the configs applied below do not (all or in
/// part).
const FULL_FS_BYTES: usize = 64 * 1024;

/// Runs this binary's ignored test `inner` again in a mount namespace of its own (root only),
/// after the shell command `setup` ran there with the state dir as `$1`, and checks that it
/// passed. Where `unshare --mount` is not available it says "skipped" and returns.
fn rerun_in_mount_namespace(inner: &str, state: &Path, setup: &str) {
    let probe = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .output();
    if !probe.as_ref().is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: `unshare --mount` is not available here ({probe:?})");
        return;
    }
    let exe = std::env::current_exe().expect("this test binary");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("{setup} && shift && exec \"$@\""))
        .arg("sh")
        .arg(state)
        .arg(exe)
        .args(["--exact", inner, "--ignored", "--nocapture"])
        .env(NAMESPACE_STATE_DIR, state)
        .output()
        .expect("run unshare");
    let text = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the inner test ran: {text}"
    );
}

/// The state dir an inner test was given, or `None` (said) when it runs on its own.
fn namespace_state_dir() -> Option<PathBuf> {
    let state = std::env::var_os(NAMESPACE_STATE_DIR).map(PathBuf::from);
    if state.is_none() {
        eprintln!("skipped: only meaningful inside the namespace the outer test makes");
    }
    state
}

/// A valid config of about `bytes`, padded with comment lines (the store keeps the YAML as is).
fn padded_config(hostname: &str, bytes: usize) -> String {
    let mut yaml = with_hostname(hostname);
    while yaml.len() < bytes {
        yaml.push_str("# padding to fill the disk: abcdefghijklmnopqrstuvwxyz0123456789\n");
    }
    yaml
}

#[test]
fn an_apply_that_does_not_fit_on_disk_changes_nothing() {
    let dir = state_dir();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    rerun_in_mount_namespace(
        "inside_a_mount_namespace_an_apply_that_does_not_fit_changes_nothing",
        dir.path(),
        &format!("mount -t tmpfs -o size={FULL_FS_BYTES},mode=0700 basalt-full \"$1/config\""),
    );
}

#[tokio::test]
#[ignore = "run inside a mount namespace by an_apply_that_does_not_fit_on_disk_changes_nothing"]
async fn inside_a_mount_namespace_an_apply_that_does_not_fit_changes_nothing() {
    let Some(state) = namespace_state_dir() else {
        return;
    };
    within_deadline(async {
        let node = Node::start(&state, 20).await;
        let before = node.history().await;
        assert_eq!(before.len(), 1, "{before:?}");

        // Larger than the whole filesystem: the history entry cannot be written. About half
        // of it: the history entry fits and the active copy after it does not (for TRY, after
        // its trial record).
        let minute = Some(Duration::from_secs(60));
        for (size, mode, timeout) in [
            (2 * FULL_FS_BYTES, Mode::NoReboot, None),
            (FULL_FS_BYTES / 2, Mode::NoReboot, None),
            (FULL_FS_BYTES / 2, Mode::Try, minute),
        ] {
            let case = format!("{size} bytes, {mode:?}");
            let status = node
                .apply(&padded_config("too-big", size), mode, false, timeout)
                .await
                .expect_err("no room on disk");
            assert_eq!(status.code(), Code::ResourceExhausted, "{case}: {status:?}");
            assert_eq!(
                status.message(),
                "no space left in machined's state directory: the configuration change was \
                 not stored; free some space and apply it again",
                "{case}"
            );
            assert_eq!(node.history().await, before, "history after {case}");
            assert_eq!(node.active_yaml().await, *BASE, "active after {case}");
            assert_eq!(node.store.trial(), None, "trial after {case}");
            let mut files: Vec<String> = walk(&state.join("config"));
            files.sort();
            assert_eq!(
                files,
                ["current.yaml", "history/00000001.yaml"],
                "files after {case}"
            );
        }

        // machined keeps serving, and an apply that fits goes through.
        node.apply(&with_hostname("fits"), Mode::NoReboot, false, None)
            .await
            .expect("a small apply");
        assert_eq!(node.history().await.len(), 2);
        assert!(node.active_yaml().await.contains("fits"));

        // A TRY that fits, then one that does not: the first trial and its record stay.
        node.apply(&with_hostname("on-trial"), Mode::Try, false, minute)
            .await
            .expect("a small TRY");
        let trial = node.store.trial().expect("a trial");
        let record = std::fs::read(state.join("config/try.yaml")).unwrap();
        let status = node
            .apply(
                &padded_config("too-big", FULL_FS_BYTES / 2),
                Mode::Try,
                false,
                minute,
            )
            .await
            .expect_err("no room on disk");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(node.store.trial(), Some(trial));
        assert_eq!(
            std::fs::read(state.join("config/try.yaml")).unwrap(),
            record
        );
        assert_eq!(node.history().await.len(), 3);
        node.stop().await;
    })
    .await;
}

#[test]
fn a_staged_config_takes_effect_at_boot_even_when_its_record_cannot_be_removed() {
    let dir = state_dir();
    rerun_in_mount_namespace(
        "inside_a_mount_namespace_a_staged_record_that_cannot_be_removed_is_left",
        dir.path(),
        "true",
    );
}

#[tokio::test]
#[ignore = "run inside a mount namespace by \
            a_staged_config_takes_effect_at_boot_even_when_its_record_cannot_be_removed"]
async fn inside_a_mount_namespace_a_staged_record_that_cannot_be_removed_is_left() {
    let Some(state) = namespace_state_dir() else {
        return;
    };
    within_deadline(async {
        let node = Node::start(&state, 20).await;
        node.apply(&with_hostname("staged"), Mode::Staged, false, None)
            .await
            .expect("stage a config");
        node.stop().await;
        // The record bound onto itself is a mount point: reading it works, and removing it
        // fails with EBUSY, as a removal on a failing disk would.
        let staged = state.join("config/staged.yaml");
        let bind = std::process::Command::new("mount")
            .arg("--bind")
            .args([&staged, &staged])
            .status()
            .expect("run mount");
        assert!(bind.success(), "bind-mount {}", staged.display());

        // The boot activates the staged config; the record it cannot remove is left, and the
        // next start, which finds it older than the active config, leaves it again.
        for start in ["the boot", "the next start"] {
            let node = Node::start(&state, 20).await;
            assert!(
                node.active_yaml().await.contains("staged"),
                "active after {start}"
            );
            assert_eq!(node.store.staged(), None, "staged after {start}");
            let history = node.history().await;
            assert_eq!(history.len(), 2, "history after {start}: {history:?}");
            assert!(history[0].active, "history after {start}: {history:?}");
            node.stop().await;
        }
        assert!(staged.exists(), "the record could not be removed");

        // Once it can be, the next start removes it.
        let unmount = std::process::Command::new("umount")
            .arg(&staged)
            .status()
            .expect("run umount");
        assert!(unmount.success(), "umount {}", staged.display());
        let node = Node::start(&state, 20).await;
        assert!(node.active_yaml().await.contains("staged"));
        assert!(!staged.exists(), "the stale record is gone");
        node.stop().await;
    })
    .await;
}

/// Every file under `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            found.extend(walk(&path).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            found.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    found
}

/// `machine.hostname` is a live change: the Hostname call answers the new name at once
/// (before 2026-12-08 it kept the name machined started with until the next start).
#[tokio::test]
async fn a_new_hostname_is_reported_at_once() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let hostname = |node: &Node| {
            let node = node.socket.clone();
            async move {
                let reply = MachineServiceClient::new(connect(&node).await)
                    .hostname(with_roles((), &["os:reader"]))
                    .await
                    .expect("Hostname");
                reply.into_inner().messages[0].hostname.clone()
            }
        };
        assert_eq!(hostname(&node).await, "node-1");
        node.apply(&with_hostname("renamed"), Mode::NoReboot, false, None)
            .await
            .expect("a hostname is applied live");
        let deadline = Instant::now() + Duration::from_secs(10);
        while hostname(&node).await != "renamed" {
            assert!(
                Instant::now() < deadline,
                "the Hostname call never followed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node.stop().await;
    })
    .await;
}

/// Requests are held to their method's limit, but a machine config keeps the whole 32 MiB
/// message (a config of some MiB, comments and all, is applied).
#[tokio::test]
async fn a_machine_config_of_several_mib_is_applied() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        let big = padded_config("big", 3 * 1024 * 1024);
        node.apply(&big, Mode::NoReboot, false, None)
            .await
            .expect("a 3 MiB config is applied");
        assert_eq!(node.active_yaml().await, big);
        node.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_tidying_failure_after_the_change_took_effect_does_not_fail_the_apply() {
    within_deadline(async {
        let dir = state_dir();
        let node = Node::start(dir.path(), 20).await;
        // A directory where the staged record would be: removing it as a file fails.
        let staged = dir.path().join("config/staged.yaml");
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join("keep"), "x").unwrap();

        let applied = node
            .apply(&with_hostname("tidy"), Mode::NoReboot, false, None)
            .await
            .expect("the change took effect, so the apply succeeded");
        assert_eq!(applied.mode, Mode::NoReboot as i32, "{applied:?}");
        assert!(node.active_yaml().await.contains("tidy"));
        let history = node.history().await;
        assert_eq!(history.len(), 2, "{history:?}");
        assert!(history[0].active, "{history:?}");
        node.stop().await;
    })
    .await;
}
