//! `machine.MachineService/ApplyConfiguration` (Talos's modes on basalt's config store) and
//! `basalt.v1.ConfigService` (history, rollback, TRY confirmation, reading a version back).
//!
//! # ApplyConfiguration
//!
//! 1. Only `os:admin` may apply (the rules table also lets `os:reader` in, for Talos's
//!    maintenance mode, which basalt does not have): PermissionDenied otherwise.
//! 2. Mode `REBOOT` is deprecated: Unimplemented, pointing to AUTO (Talos outside maintenance
//!    mode).
//! 3. The YAML is parsed and validated; every problem goes back in one InvalidArgument with its
//!    key path, and a `ConfigValidationErrorEvent` is published.
//! 4. Unless `dry_run`: the store's change lock is taken without waiting; a concurrent apply
//!    gets FailedPrecondition "another apply configuration is already in progress".
//! 5. The change is classified ([`Change`]): services, certSANs, hostname, tokens, ca,
//!    acceptedCAs, cluster apply live (`crate::pki_reconcile` reissues certificates and
//!    rewrites trustd's files); `machine.type` and listen addresses need a reboot. Then per mode:
//!    - `AUTO`: live → `NO_REBOOT` (history `AUTO(NO_REBOOT)`); needs a reboot → staged, then
//!      the lifecycle's reboot sequence starts (`REBOOT`, history `AUTO(REBOOT)`; its boot
//!      activates the staged config). Without a lifecycle the config stays staged (`STAGED`,
//!      history `AUTO(STAGED)`) and the details say so.
//!    - `NO_REBOOT`: live, or FailedPrecondition naming the keys that need a reboot.
//!    - `STAGED`: active at the next reboot.
//!    - `TRY`: live for `try_mode_timeout` (default 1 min), then reverted unless confirmed;
//!      refused like NO_REBOOT when the change needs a reboot.
//! 6. `dry_run` changes nothing and returns Talos's "Dry run summary" with the changed keys and
//!    a unified diff of the current and the new YAML in `mode_details`.
//!
//! A non-TRY apply of exactly the active YAML while a TRY waits confirms it (the Talos way);
//! any other non-TRY change ends the trial too, by replacing the config on trial.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use basalt_api::basalt::v1::{
    ConfigCaller, ConfigDocument, ConfigHistory, ConfigVersion, Confirm, ConfirmRequest,
    ConfirmResponse, GetRequest, GetResponse, HistoryRequest, HistoryResponse, Rollback,
    RollbackRequest, RollbackResponse, config_service_server::ConfigService,
};
use basalt_api::machine::{self, apply_configuration_request::Mode};
use basalt_authz::{Role, RoleSet};
use basalt_config::MachineConfig;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::config_store::{
    Caller, Change, Commit, CommitKind, ConfigStore, DEFAULT_TRY_TIMEOUT, HistoryEntry,
    MAX_TRY_TIMEOUT, format_time, sha256_hex, unified_diff,
};
use crate::events::{EventBus, EventPayload};
use crate::layers::CallerRoles;
use crate::lifecycle::Lifecycle;

/// Talos's texts for what happened.
const APPLIED_LIVE: &str = "Applied configuration without a reboot";
const APPLIED_STAGED: &str = "Staged configuration to be applied after a reboot";

/// The config API: the ApplyConfiguration handler and `basalt.v1.ConfigService`.
#[derive(Clone, Debug)]
pub(crate) struct ConfigApi {
    /// `None` (machined without a state directory) answers every call FailedPrecondition.
    store: Option<ConfigStore>,
    events: EventBus,
    /// Reboots for AUTO applies that need one; `None` stages them instead.
    lifecycle: Option<Lifecycle>,
}

/// What the caller asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requested {
    Auto,
    NoReboot,
    Staged,
    Try(Duration),
}

/// What an apply does, decided before anything is written.
#[derive(Clone, Debug)]
struct Plan {
    action: Action,
    /// The mode actually chosen, for the response.
    mode: Mode,
    /// As history records it: `AUTO(NO_REBOOT)`, `STAGED`, `ROLLBACK(REBOOT)`, …
    history_mode: String,
    /// Talos-style text of what happens.
    details: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Live,
    Try(Duration),
    Stage,
    StageAndReboot,
}

/// The outcome of an apply or rollback.
#[derive(Clone, Debug)]
struct Outcome {
    mode: Mode,
    history_mode: String,
    details: String,
    /// The history version written, if any.
    version: Option<u64>,
}

impl ConfigApi {
    pub(crate) fn new(
        store: Option<ConfigStore>,
        events: EventBus,
        lifecycle: Option<Lifecycle>,
    ) -> Self {
        ConfigApi {
            store,
            events,
            lifecycle,
        }
    }

    fn store(&self) -> Result<&ConfigStore, Error> {
        self.store.as_ref().ok_or(Error::NoConfigStore)
    }

    /// `ApplyConfiguration`.
    pub(crate) async fn apply(
        &self,
        request: Request<machine::ApplyConfigurationRequest>,
    ) -> Result<machine::ApplyConfiguration, Error> {
        let (roles, caller) = identity(&request);
        require_admin(&roles, "apply a machine configuration")?;
        self.store()?;
        let machine::ApplyConfigurationRequest {
            data,
            mode,
            dry_run,
            try_mode_timeout,
        } = request.into_inner();
        let requested = match Mode::try_from(mode) {
            Ok(Mode::Auto) => Requested::Auto,
            Ok(Mode::NoReboot) => Requested::NoReboot,
            Ok(Mode::Staged) => Requested::Staged,
            Ok(Mode::Try) => Requested::Try(try_timeout(try_mode_timeout)?),
            Ok(Mode::Reboot) => {
                return Err(Error::Unsupported {
                    reason: "apply mode REBOOT is deprecated (Talos removes it in v2.0): use \
                             mode AUTO, which reboots when the change needs it"
                        .to_owned(),
                });
            }
            Err(_) => {
                return Err(Error::InvalidArgument {
                    reason: format!("unknown apply mode {mode}"),
                });
            }
        };
        let yaml = String::from_utf8(data).map_err(|_| Error::InvalidArgument {
            reason: "the machine configuration is not UTF-8 text".to_owned(),
        })?;
        let config = self.validate(&yaml)?;
        let outcome = self
            .execute(caller, yaml, config, requested, dry_run, Origin::Apply)
            .await?;
        Ok(machine::ApplyConfiguration {
            metadata: None,
            warnings: Vec::new(),
            mode: outcome.mode as i32,
            mode_details: outcome.details,
        })
    }

    /// Parses and validates; every problem in one InvalidArgument, also published as a
    /// `ConfigValidationErrorEvent`.
    fn validate(&self, yaml: &str) -> Result<MachineConfig, Error> {
        MachineConfig::from_yaml(yaml)
            .map_err(|err| basalt_daemon::error_chain(&err))
            // A CA machined cannot issue from would leave the node's certificates unrenewable.
            .and_then(|config| crate::pki_reconcile::check_trust_material(&config).map(|()| config))
            .map_err(|reason| {
                self.events.publish(
                    EventPayload::ConfigValidationError(machine::ConfigValidationErrorEvent {
                        error: reason.clone(),
                    }),
                    None,
                );
                Error::InvalidArgument { reason }
            })
    }

    async fn execute(
        &self,
        caller: Caller,
        yaml: String,
        config: MachineConfig,
        requested: Requested,
        dry_run: bool,
        origin: Origin,
    ) -> Result<Outcome, Error> {
        // A dry run reads a snapshot and needs no lock.
        let guard = if dry_run {
            None
        } else {
            Some(self.store()?.try_lock().ok_or(Error::ApplyInProgress)?)
        };
        let current = self.store()?.current();
        let change = Change::between(&current.config, &config);
        let can_reboot = self.lifecycle.is_some();
        let plan = plan(requested, &change, origin, can_reboot)?;

        let Some(guard) = guard else {
            let mut details = format!("Dry run summary:\n{} (skipped in dry-run).\n", plan.details);
            if !change.is_empty() {
                details.push_str(&format!("Changed keys: {}\n", change.changed.join(", ")));
            }
            details.push_str("\nConfig diff:\n\n");
            match unified_diff(&current.yaml, &yaml) {
                Some(diff) => details.push_str(&diff),
                None => details.push_str("No changes.\n"),
            }
            return Ok(Outcome {
                mode: plan.mode,
                history_mode: plan.history_mode,
                details,
                version: None,
            });
        };

        let identical = *current.yaml == *yaml;
        let trial = self.store()?.trial();
        let staged = self.store()?.staged();
        if identical && plan.action != Action::Stage {
            // Applying the active YAML again: confirms a trial (non-TRY modes), else a no-op.
            if let (Some(trial), false) = (&trial, matches!(plan.action, Action::Try(_))) {
                let version = self
                    .store()?
                    .confirm(&guard)
                    .await
                    .map_err(|source| Error::ConfigStore { source })?;
                return Ok(Outcome {
                    mode: plan.mode,
                    history_mode: plan.history_mode,
                    details: format!(
                        "Confirmed configuration version {}: it will not be reverted",
                        version.unwrap_or(trial.version)
                    ),
                    version,
                });
            }
            if trial.is_none() && staged.is_none() {
                return Ok(Outcome {
                    mode: plan.mode,
                    history_mode: plan.history_mode,
                    details: format!(
                        "No changes: this configuration is already active (version {})",
                        current.version
                    ),
                    version: None,
                });
            }
        }

        let (kind, deadline) = match plan.action {
            Action::Live => (CommitKind::Live, None),
            Action::Try(timeout) => {
                let deadline = SystemTime::now() + timeout;
                (CommitKind::Try { deadline }, Some(deadline))
            }
            Action::Stage | Action::StageAndReboot => (CommitKind::Staged, None),
        };
        let note = match origin {
            Origin::Apply => String::new(),
            Origin::Rollback(version) => format!("restores version {version}"),
        };
        self.task("applyConfiguration", machine::task_event::Action::Start);
        let committed = self
            .store()?
            .commit(
                &guard,
                Commit {
                    yaml: Arc::from(yaml),
                    config,
                    mode: plan.history_mode.clone(),
                    caller: caller.clone(),
                    note,
                    kind,
                },
            )
            .await;
        self.task("applyConfiguration", machine::task_event::Action::Stop);
        let version = committed.map_err(|source| Error::ConfigStore { source })?;
        // Certificates, CA bundles and trustd's tokens follow the new active config through
        // `ConfigStore::subscribe` (`crate::pki_reconcile`).
        // The reboot sequence takes the lock itself to activate the staged config.
        drop(guard);
        tracing::info!(
            version,
            mode = %plan.history_mode,
            caller = %caller,
            changed = ?change.changed,
            "Machine configuration applied"
        );

        let mut details = plan.details;
        if let Some(deadline) = deadline {
            let trial = self.store()?.trial();
            details = format!(
                "{details}; it is reverted to version {} at {} unless confirmed (apply it again \
                 with mode no-reboot or auto, or call ConfigService/Confirm)",
                trial.map_or(current.version, |trial| trial.revert_to),
                format_time(whole_seconds(deadline))
            );
        }
        if plan.action == Action::StageAndReboot {
            let rebooted = self
                .lifecycle
                .as_ref()
                .map(|lifecycle| lifecycle.reboot(machine::reboot_request::Mode::Default));
            details = match rebooted {
                Some(Ok(actor)) => format!("{details} (reboot actor id {actor})"),
                Some(Err(err)) => {
                    tracing::warn!(
                        version,
                        error = &err as &dyn std::error::Error,
                        "Cannot start the reboot a configuration change needs"
                    );
                    format!(
                        "Staged configuration; the reboot it needs could not be started ({err}): \
                         it becomes active at the next reboot"
                    )
                }
                None => "Staged configuration; it becomes active at the next reboot".to_owned(),
            };
        }
        Ok(Outcome {
            mode: plan.mode,
            history_mode: plan.history_mode,
            details,
            version: Some(version),
        })
    }

    fn task(&self, task: &str, action: machine::task_event::Action) {
        self.events.publish(
            EventPayload::Task(machine::TaskEvent {
                task: task.to_owned(),
                action: action as i32,
            }),
            None,
        );
    }
}

/// Why a config is being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// `ApplyConfiguration`.
    Apply,
    /// `ConfigService/Rollback` of this version.
    Rollback(u64),
}

/// Decides what an apply does, or refuses it.
fn plan(
    requested: Requested,
    change: &Change,
    origin: Origin,
    can_reboot: bool,
) -> Result<Plan, Error> {
    let prefix = match origin {
        Origin::Apply => "AUTO",
        Origin::Rollback(_) => "ROLLBACK",
    };
    let reboot_keys = change.needs_reboot.join(", ");
    let refuse = |mode: &str| Error::ApplyRefused {
        reason: format!(
            "the change to {reboot_keys} needs a reboot, which mode {mode} does not allow: apply \
             with mode AUTO (reboots) or STAGED (takes effect at the next reboot)"
        ),
    };
    let needs_reboot = !change.needs_reboot.is_empty();
    Ok(match requested {
        Requested::Auto if !needs_reboot => Plan {
            action: Action::Live,
            mode: Mode::NoReboot,
            history_mode: format!("{prefix}(NO_REBOOT)"),
            details: APPLIED_LIVE.to_owned(),
        },
        Requested::Auto if can_reboot => Plan {
            action: Action::StageAndReboot,
            mode: Mode::Reboot,
            history_mode: format!("{prefix}(REBOOT)"),
            details: format!("Applied configuration with a reboot: {reboot_keys} changed"),
        },
        Requested::Auto => Plan {
            action: Action::Stage,
            mode: Mode::Staged,
            history_mode: format!("{prefix}(STAGED)"),
            details: format!(
                "The change to {reboot_keys} needs a reboot, and this machined cannot start one \
                 on its own: the configuration is staged and becomes active at the next reboot"
            ),
        },
        Requested::NoReboot if needs_reboot => return Err(refuse("NO_REBOOT")),
        Requested::NoReboot => Plan {
            action: Action::Live,
            mode: Mode::NoReboot,
            history_mode: "NO_REBOOT".to_owned(),
            details: APPLIED_LIVE.to_owned(),
        },
        Requested::Staged => Plan {
            action: Action::Stage,
            mode: Mode::Staged,
            history_mode: "STAGED".to_owned(),
            details: APPLIED_STAGED.to_owned(),
        },
        Requested::Try(_) if needs_reboot => return Err(refuse("TRY")),
        Requested::Try(timeout) => Plan {
            action: Action::Try(timeout),
            mode: Mode::Try,
            history_mode: "TRY".to_owned(),
            details: format!(
                "Applied configuration in a try mode for {}",
                human_duration(timeout)
            ),
        },
    })
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let limit = request.into_inner().limit as usize;
        let mut entries = self.store()?.history();
        if limit > 0 {
            entries.truncate(limit);
        }
        Ok(Response::new(HistoryResponse {
            messages: vec![ConfigHistory {
                metadata: None,
                entries: entries.into_iter().map(config_version).collect(),
            }],
        }))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        let (roles, caller) = identity(&request);
        require_admin(&roles, "roll the machine configuration back")?;
        let version = request.into_inner().version;
        let (_, yaml) = self
            .store()?
            .read_version(Some(version))
            .await
            .map_err(store_error)?;
        let config = MachineConfig::from_yaml(&yaml).map_err(|err| Error::InvalidArgument {
            reason: format!(
                "stored version {version} no longer validates: {}",
                basalt_daemon::error_chain(&err)
            ),
        })?;
        let outcome = self
            .execute(
                caller,
                yaml.to_string(),
                config,
                Requested::Auto,
                false,
                Origin::Rollback(version),
            )
            .await?;
        Ok(Response::new(RollbackResponse {
            messages: vec![Rollback {
                metadata: None,
                version: outcome.version.unwrap_or_default(),
                mode: outcome.history_mode,
                mode_details: outcome.details,
            }],
        }))
    }

    async fn confirm(
        &self,
        request: Request<ConfirmRequest>,
    ) -> Result<Response<ConfirmResponse>, Status> {
        let (roles, _) = identity(&request);
        require_admin(&roles, "confirm a machine configuration")?;
        let guard = self.store()?.try_lock().ok_or(Error::ApplyInProgress)?;
        let version = self.store()?.confirm(&guard).await.map_err(store_error)?;
        let Some(version) = version else {
            return Err(Error::ApplyRefused {
                reason: "no configuration is waiting for confirmation (none was applied in TRY \
                         mode, or it was already confirmed or reverted)"
                    .to_owned(),
            }
            .into());
        };
        Ok(Response::new(ConfirmResponse {
            messages: vec![Confirm {
                metadata: None,
                version,
            }],
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (roles, _) = identity(&request);
        require_admin(&roles, "read the machine configuration")?;
        let version = request.into_inner().version;
        let (version, yaml) = self
            .store()?
            .read_version((version != 0).then_some(version))
            .await
            .map_err(store_error)?;
        Ok(Response::new(GetResponse {
            messages: vec![ConfigDocument {
                metadata: None,
                version,
                sha256: sha256_hex(yaml.as_bytes()),
                data: yaml.as_bytes().to_vec(),
            }],
        }))
    }
}

/// The caller's roles (from `talos-role`, set by the layers) and identity for history.
fn identity<T>(request: &Request<T>) -> (RoleSet, Caller) {
    let roles = request
        .extensions()
        .get::<CallerRoles>()
        .map(|roles| roles.0.clone())
        .unwrap_or_default();
    let basalt_caller = request
        .metadata()
        .get(basalt_authz::metadata::CALLER)
        .and_then(|value| value.to_str().ok());
    let uid = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    let caller = Caller::from_metadata(basalt_caller, &roles, uid);
    (roles, caller)
}

/// Talos's handler check on top of the rules table: writing (or reading) the whole machine
/// config, secrets included, is for `os:admin` only outside maintenance mode.
fn require_admin(roles: &RoleSet, what: &str) -> Result<(), Error> {
    if roles.contains(&Role::Admin) {
        return Ok(());
    }
    let held = if roles.is_empty() {
        "no roles".to_owned()
    } else {
        roles.strings().join(", ")
    };
    Err(Error::AdminOnly {
        reason: format!(
            "only os:admin may {what} (the caller holds {held}; Talos lets os:reader apply only \
             in maintenance mode, which basalt does not have)"
        ),
    })
}

/// `try_mode_timeout`: absent or zero → [`DEFAULT_TRY_TIMEOUT`]; negative or above
/// [`MAX_TRY_TIMEOUT`] → InvalidArgument.
fn try_timeout(timeout: Option<prost_types::Duration>) -> Result<Duration, Error> {
    let Some(timeout) = timeout else {
        return Ok(DEFAULT_TRY_TIMEOUT);
    };
    let invalid = || Error::InvalidArgument {
        reason: format!(
            "try_mode_timeout must be between 0 and {} (0 means the default, {})",
            human_duration(MAX_TRY_TIMEOUT),
            human_duration(DEFAULT_TRY_TIMEOUT)
        ),
    };
    let seconds = u64::try_from(timeout.seconds).map_err(|_| invalid())?;
    let nanos = u32::try_from(timeout.nanos).map_err(|_| invalid())?;
    let timeout = Duration::new(seconds, nanos);
    if timeout.is_zero() {
        return Ok(DEFAULT_TRY_TIMEOUT);
    }
    if timeout > MAX_TRY_TIMEOUT {
        return Err(invalid());
    }
    Ok(timeout)
}

/// A store failure at the edge: an unknown version is the caller's fault, the rest is ours.
fn store_error(source: crate::config_store::Error) -> Error {
    match source {
        crate::config_store::Error::UnknownVersion { version } => {
            Error::ConfigVersionNotFound { version }
        }
        source => Error::ConfigStore { source },
    }
}

fn config_version(entry: HistoryEntry) -> ConfigVersion {
    let HistoryEntry {
        info,
        active,
        staged,
        try_deadline,
    } = entry;
    ConfigVersion {
        version: info.version,
        time: Some(prost_types::Timestamp::from(info.time)),
        mode: info.mode,
        caller: Some(ConfigCaller {
            common_name: info.caller.common_name,
            serial: info.caller.serial,
            fingerprint: info.caller.fingerprint,
            roles: info.caller.roles,
            address: info.caller.address,
        }),
        sha256: info.sha256,
        active,
        staged,
        try_deadline: try_deadline.map(prost_types::Timestamp::from),
        note: info.note,
    }
}

/// `time` without its fraction of a second, for messages.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs())
}

/// `1m0s`-style, as Go prints durations (Talos's messages do).
fn human_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let millis = duration.subsec_millis();
    let seconds = if millis == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{millis:03}s")
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(keys: &[&str], reboot: &[&str]) -> Change {
        Change {
            changed: keys.iter().map(|k| (*k).to_owned()).collect(),
            needs_reboot: reboot.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn auto_is_no_reboot_for_live_changes_and_reports_auto_no_reboot() {
        let plan = plan(
            Requested::Auto,
            &change(&["machine.hostname"], &[]),
            Origin::Apply,
            false,
        )
        .unwrap();
        assert_eq!(plan.mode, Mode::NoReboot);
        assert_eq!(plan.history_mode, "AUTO(NO_REBOOT)");
        assert_eq!(plan.details, "Applied configuration without a reboot");
    }

    #[test]
    fn auto_with_a_reboot_key_reboots_or_stages() {
        let ca = change(&["machine.ca.crt"], &["machine.ca.crt"]);
        let plan_r = plan(Requested::Auto, &ca, Origin::Apply, true).unwrap();
        assert_eq!(
            (plan_r.mode, plan_r.history_mode.as_str()),
            (Mode::Reboot, "AUTO(REBOOT)")
        );
        let plan_s = plan(Requested::Auto, &ca, Origin::Rollback(3), false).unwrap();
        assert_eq!(
            (plan_s.mode, plan_s.history_mode.as_str()),
            (Mode::Staged, "ROLLBACK(STAGED)")
        );
        assert!(
            plan_s.details.contains("machine.ca.crt"),
            "{}",
            plan_s.details
        );
    }

    #[test]
    fn no_reboot_and_try_refuse_reboot_keys_naming_them() {
        let listen = change(&["machine.apid.listen"], &["machine.apid.listen"]);
        for requested in [Requested::NoReboot, Requested::Try(DEFAULT_TRY_TIMEOUT)] {
            let err = plan(requested, &listen, Origin::Apply, true).unwrap_err();
            let status = Status::from(err);
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(
                status.message().contains("machine.apid.listen"),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn try_timeout_defaults_and_bounds() {
        assert_eq!(try_timeout(None).unwrap(), DEFAULT_TRY_TIMEOUT);
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(try_timeout(d(0, 0)).unwrap(), DEFAULT_TRY_TIMEOUT);
        assert_eq!(
            try_timeout(d(2, 500_000_000)).unwrap(),
            Duration::from_millis(2500)
        );
        assert!(try_timeout(d(-1, 0)).is_err());
        assert!(try_timeout(d(24 * 3600 + 1, 0)).is_err());
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(human_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(human_duration(Duration::from_secs(3725)), "1h2m5s");
    }

    #[test]
    fn non_admins_are_told_why() {
        let err = require_admin(
            &RoleSet::from([Role::Reader]),
            "apply a machine configuration",
        )
        .unwrap_err();
        let status = Status::from(err);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("os:reader"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("maintenance mode"),
            "{}",
            status.message()
        );
    }
}
