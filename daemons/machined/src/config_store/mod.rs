//! The machine-config store: the node's active config, its history, a staged config and a TRY
//! trial, all on disk under `<state>/config/` and every write atomic (see [`disk`] for the
//! layout). `ApplyConfiguration` and `basalt.v1.ConfigService` are built on it; the service
//! supervisor and the lifecycle use it through the seams below.
//!
//! # Source of truth
//!
//! - `current.yaml` is the active config. It is seeded from machined's `--config` the first
//!   time a state directory is used; **from then on the state copy wins** and `--config` is only
//!   read for `--check-config` and for seeding a fresh state directory. Change the config with
//!   `basaltctl apply-config`; to start over from `--config`, remove `<state>/config/`.
//! - Every change first writes a history entry (`history/NNNNNNNN.yaml`: version, time, mode,
//!   caller, SHA-256, the YAML), then the file that makes it effective (`current.yaml`, or
//!   `staged.yaml`). The active version is the newest entry whose SHA-256 matches
//!   `current.yaml`. An entry newer than the active one that is not staged belongs to an apply
//!   that was interrupted (crash) before it took effect; [`ConfigStore::open`] notes that in it.
//!   A write that fails before the change takes effect (a full disk) removes the entry again,
//!   and puts back the trial record a TRY overwrote, so only a crash leaves such an entry. A
//!   failure of the tidying after it (removing a trial or staged record, pruning the history)
//!   is logged and does not fail the change, which has taken effect. `open` tidies again, and
//!   what it cannot tidy it logs too: a start never fails over a file it could not remove.
//! - History keeps the newest [`ConfigStoreOptions::history_limit`] entries (default
//!   [`DEFAULT_HISTORY_LIMIT`]) plus the active and the staged one.
//!
//! # Changes
//!
//! All changes are serialized by one lock ([`ConfigStore::lock`] / [`ConfigStore::try_lock`]);
//! `ApplyConfiguration` uses `try_lock` and answers "another apply configuration is already in
//! progress" when it is held.
//!
//! - **Live** (NO_REBOOT, AUTO without a reboot, rollback, TRY revert): entry, then
//!   `current.yaml`; ends a TRY trial and discards a staged config (the newest change wins).
//! - **Staged** (STAGED, AUTO when a reboot is needed): entry, then `staged.yaml`. It becomes
//!   active at the next boot: when machined starts ([`ConfigStore::open`]) or when the lifecycle
//!   reboots the node in container mode ([`ConfigStore::boot`], registered as a boot hook).
//! - **TRY**: entry, `try.yaml` (the deadline and the YAML to restore), then `current.yaml`. The
//!   trial ends when it is confirmed — by any later non-TRY apply (applying the same config
//!   again with mode NO_REBOOT or AUTO is the Talos way) or by `basalt.v1.ConfigService/Confirm`
//!   — or when the deadline passes: [`ConfigStore::run_try_watchdog`] then restores the last
//!   confirmed config as a new `REVERT` entry. The deadline is on disk, so a machined that
//!   restarts meanwhile reverts at once if it passed and re-arms the timer if not. A TRY during
//!   a trial keeps the original revert target and takes the new deadline.
//!
//! # Seams
//!
//! - Service supervisor: [`ConfigStore::subscribe`] is a `watch` of the [`ActiveConfig`]; it
//!   changes on every live change, revert and staged activation.
//! - Lifecycle: [`ConfigStore::boot`] runs as the `activateStagedConfig` boot hook of every
//!   container-mode reboot (before services start again): it reloads the store from disk,
//!   which activates a staged config, reverts a trial whose deadline passed, and re-seeds from
//!   `--config` after a Reset wiped `<state>/config/`. An AUTO apply that needs a reboot asks
//!   the lifecycle for one (`services::config`).
//! - Anyone who must keep the config still for a while: [`ConfigStore::lock`].

mod caller;
mod change;
mod disk;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use basalt_api::machine;
use basalt_config::MachineConfig;
use tokio::sync::{OwnedMutexGuard, watch};

pub use self::caller::Caller;
pub(crate) use self::change::unified_diff;
pub use self::change::{Change, REBOOT_KEYS};
use self::disk::{EntryFile, Paths, StagedRecord, TrialRecord};
pub(crate) use self::disk::{format_time, sha256_hex};
use crate::events::{EventBus, EventPayload};
use crate::supervise::stopped;

/// How many history entries are kept by default (besides the active and the staged one).
pub const DEFAULT_HISTORY_LIMIT: usize = 20;

/// How long a TRY apply runs before it is reverted when the request does not say (Talos's
/// `constants.ConfigTryTimeout`).
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `try_mode_timeout` ApplyConfiguration accepts.
pub const MAX_TRY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long the watchdog waits before it retries a revert that failed (e.g. a full disk).
const REVERT_RETRY: Duration = Duration::from_secs(5);

/// Where the store lives and how much history it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigStoreOptions {
    /// The store's directory, `<state>/config` (created 0700 if missing).
    pub dir: PathBuf,
    /// How many history entries to keep (at least 1); the active and the staged entry are kept
    /// beyond it.
    pub history_limit: usize,
}

impl ConfigStoreOptions {
    /// `<state_dir>/config` with [`DEFAULT_HISTORY_LIMIT`].
    pub fn new(state_dir: &Path) -> Self {
        ConfigStoreOptions {
            dir: state_dir.join("config"),
            history_limit: DEFAULT_HISTORY_LIMIT,
        }
    }
}

/// The active machine config, as [`ConfigStore::subscribe`] publishes it. `Debug` leaves the
/// YAML out (it holds the join token and the CA key).
#[derive(Clone)]
pub struct ActiveConfig {
    /// Its history version.
    pub version: u64,
    /// SHA-256 (hex) of `yaml`.
    pub sha256: String,
    /// The validated config.
    pub config: MachineConfig,
    /// The YAML exactly as applied (holds secrets: never log it).
    pub yaml: Arc<str>,
}

impl fmt::Debug for ActiveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveConfig")
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .field("config", &self.config)
            .field("yaml", &format_args!("<{} bytes>", self.yaml.len()))
            .finish()
    }
}

/// One stored version, without its YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version number.
    pub version: u64,
    /// When it was recorded.
    pub time: SystemTime,
    /// How it came to be (`NO_REBOOT`, `AUTO(NO_REBOOT)`, `STAGED`, `TRY`, `ROLLBACK(...)`,
    /// `REVERT`, `INITIAL`, `RECOVERED`, …).
    pub mode: String,
    /// Who asked for it.
    pub caller: Caller,
    /// SHA-256 (hex) of its YAML.
    pub sha256: String,
    /// A human-readable note (`restores version 3`, …); may be empty.
    pub note: String,
}

/// A history entry with its current role, as `ConfigService/History` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The stored version.
    pub info: VersionInfo,
    /// It is the active config.
    pub active: bool,
    /// It is staged for the next boot.
    pub staged: bool,
    /// It runs in TRY mode and is reverted at this time unless confirmed.
    pub try_deadline: Option<SystemTime>,
}

/// A TRY apply waiting for confirmation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialInfo {
    /// The version on trial.
    pub version: u64,
    /// When it is reverted unless confirmed.
    pub deadline: SystemTime,
    /// The version restored on revert.
    pub revert_to: u64,
}

/// Held while a change runs; see [`ConfigStore::lock`].
#[derive(Debug)]
pub struct ApplyGuard {
    _guard: OwnedMutexGuard<()>,
}

/// Failures of the store's files. Messages name the file; none of them is the caller's fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A directory of the store could not be created.
    #[error("create the config store directory")]
    CreateDir {
        /// What basalt-config reported (it names the path).
        #[source]
        source: basalt_config::Error,
    },
    /// A file or directory could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A record did not decode.
    #[error("decode {path}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// serde_yaml's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A record did not encode.
    #[error("encode {path}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// serde_yaml's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A file could not be written atomically.
    #[error("write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What basalt-config reported.
        #[source]
        source: basalt_config::Error,
    },
    /// A file could not be removed (or the removal not synced).
    #[error("remove {path}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A record decoded but holds an impossible value.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A stored config no longer validates (hand-edited, or validation became stricter).
    #[error(
        "the machine config in {path} is not valid; fix it, or remove {path} to seed the \
             store from --config again"
    )]
    InvalidStoredConfig {
        /// The file.
        path: PathBuf,
        /// The validation problems.
        #[source]
        source: basalt_config::Error,
    },
    /// The seed (`--config`) is not a valid machine config.
    #[error("the seed machine config is not valid")]
    InvalidSeed {
        /// The validation problems.
        #[source]
        source: basalt_config::Error,
    },
    /// No such version is stored.
    #[error("no stored machine config version {version}")]
    UnknownVersion {
        /// The version asked for.
        version: u64,
    },
    /// A blocking store operation panicked or was cancelled.
    #[error("run a blocking config store operation")]
    Blocking {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The config store; cheap to clone (all clones share one state).
#[derive(Clone)]
pub struct ConfigStore {
    shared: Arc<Shared>,
}

struct Shared {
    paths: Paths,
    history_limit: usize,
    /// `--config`, for seeding an empty (new or reset) store.
    seed_yaml: Arc<str>,
    seed_note: String,
    /// Serializes every change.
    apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// The in-memory view of the files; only changed while `apply_lock` is held (or in
    /// `open`, before anyone else has the store).
    state: Mutex<State>,
    active: watch::Sender<Arc<ActiveConfig>>,
    trial: watch::Sender<Option<TrialInfo>>,
}

#[derive(Clone)]
struct State {
    entries: BTreeMap<u64, VersionInfo>,
    active: Arc<ActiveConfig>,
    staged: Option<u64>,
    trial: Option<Trial>,
}

/// A TRY trial with what its revert restores.
#[derive(Clone)]
struct Trial {
    info: TrialInfo,
    revert_sha256: String,
    revert_yaml: Arc<str>,
}

/// One change, as [`ConfigStore::commit`] performs it (no `Debug`: the YAML holds secrets).
#[derive(Clone)]
pub(crate) struct Commit {
    pub(crate) yaml: Arc<str>,
    pub(crate) config: MachineConfig,
    pub(crate) mode: String,
    pub(crate) caller: Caller,
    pub(crate) note: String,
    pub(crate) kind: CommitKind,
}

/// What a [`Commit`] makes of its config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitKind {
    /// Active now.
    Live,
    /// Active now, reverted at the deadline unless confirmed.
    Try {
        /// The deadline.
        deadline: SystemTime,
    },
    /// Active at the next boot.
    Staged,
}

impl ConfigStore {
    /// Opens (or creates) the store and brings it to a consistent state, in this order:
    ///
    /// 1. creates `dir` and `dir/history` (0700) and removes temp files a crash left;
    /// 2. without `current.yaml`, seeds it from `seed_yaml` (history entry `INITIAL` with
    ///    `seed_note`); otherwise the state copy wins and `seed_yaml` is not used;
    /// 3. activates a staged config newer than the active one: starting machined is a boot;
    /// 4. resolves a TRY trial: reverts at once if its deadline passed, keeps it (for
    ///    [`ConfigStore::run_try_watchdog`]) if not;
    /// 5. records a `current.yaml` that matches no entry as `RECOVERED`, notes interrupted
    ///    entries, prunes history.
    ///
    /// Blocking (file I/O and fsync); call it before the runtime starts or from a blocking
    /// context.
    pub fn open(
        options: &ConfigStoreOptions,
        seed_yaml: &str,
        seed_note: &str,
    ) -> Result<Self, Error> {
        let seed =
            MachineConfig::from_yaml(seed_yaml).map_err(|source| Error::InvalidSeed { source })?;
        let placeholder = Arc::new(ActiveConfig {
            version: 0,
            sha256: disk::sha256_hex(seed_yaml.as_bytes()),
            config: seed,
            yaml: Arc::from(seed_yaml),
        });
        let (active_tx, _) = watch::channel(Arc::clone(&placeholder));
        let (trial_tx, _) = watch::channel(None);
        let store = ConfigStore {
            shared: Arc::new(Shared {
                paths: Paths::new(&options.dir),
                history_limit: options.history_limit.max(1),
                seed_yaml: Arc::from(seed_yaml),
                seed_note: seed_note.to_owned(),
                apply_lock: Arc::new(tokio::sync::Mutex::new(())),
                state: Mutex::new(State {
                    entries: BTreeMap::new(),
                    active: placeholder,
                    staged: None,
                    trial: None,
                }),
                active: active_tx,
                trial: trial_tx,
            }),
        };
        store.shared.reload()?;
        Ok(store)
    }

    /// The boot hook of a container-mode reboot (the lifecycle's `activateStagedConfig`):
    /// waits for the change lock, then reloads the store from disk like [`ConfigStore::open`]
    /// does — a staged config becomes active, a trial past its deadline is reverted, and a
    /// store wiped by Reset is seeded from `--config` again. Subscribers see the result.
    ///
    /// Blocking: call it from a blocking context (boot hooks run on the blocking pool).
    ///
    /// If the reload fails (a staged config that no longer validates, a full disk), nothing it
    /// found on disk took effect, and the store keeps what it had: the active config, the
    /// staged one and a trial, whose revert timer keeps running.
    pub fn boot(&self) -> Result<(), Error> {
        let _guard = self.shared.apply_lock.blocking_lock();
        let before = self.shared.state().clone();
        self.shared
            .reload()
            .inspect_err(|_| self.shared.restore(before))
    }

    /// The active config.
    pub fn current(&self) -> Arc<ActiveConfig> {
        Arc::clone(&self.shared.state().active)
    }

    /// A receiver of the active config: it changes on every live apply, rollback, TRY revert
    /// and staged activation. This is the seam for the service supervisor.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ActiveConfig>> {
        self.shared.active.subscribe()
    }

    /// The pending TRY trial, if any.
    pub fn trial(&self) -> Option<TrialInfo> {
        self.shared
            .state()
            .trial
            .as_ref()
            .map(|trial| trial.info.clone())
    }

    /// The staged version, if any.
    pub fn staged(&self) -> Option<u64> {
        self.shared.state().staged
    }

    /// Every stored version, newest first, with its current role.
    pub fn history(&self) -> Vec<HistoryEntry> {
        let state = self.shared.state();
        state
            .entries
            .values()
            .rev()
            .map(|info| HistoryEntry {
                info: info.clone(),
                active: info.version == state.active.version,
                staged: state.staged == Some(info.version),
                try_deadline: state
                    .trial
                    .as_ref()
                    .filter(|trial| trial.info.version == info.version)
                    .map(|trial| trial.info.deadline),
            })
            .collect()
    }

    /// Waits for the change lock. Whoever holds it is the only one changing the config. A
    /// container-mode reboot takes it only in its `activateStagedConfig` hook ([`Self::boot`]),
    /// so an apply or a TRY revert may land while the reboot has the services stopped; the
    /// service reconciler then starts what it adds before the reboot starts the rest.
    pub async fn lock(&self) -> ApplyGuard {
        ApplyGuard {
            _guard: Arc::clone(&self.shared.apply_lock).lock_owned().await,
        }
    }

    /// The change lock if it is free (`ApplyConfiguration` refuses to wait).
    pub fn try_lock(&self) -> Option<ApplyGuard> {
        Arc::clone(&self.shared.apply_lock)
            .try_lock_owned()
            .ok()
            .map(|guard| ApplyGuard { _guard: guard })
    }

    /// Performs one change; the caller holds `guard`. Returns the new version.
    pub(crate) async fn commit(&self, guard: &ApplyGuard, commit: Commit) -> Result<u64, Error> {
        let _ = guard;
        let shared = Arc::clone(&self.shared);
        blocking(move || shared.commit(commit)).await
    }

    /// Confirms the pending TRY trial; `None` when there is none.
    pub(crate) async fn confirm(&self, guard: &ApplyGuard) -> Result<Option<u64>, Error> {
        let _ = guard;
        let shared = Arc::clone(&self.shared);
        blocking(move || shared.confirm()).await
    }

    /// The YAML of a stored version (the active one for `None`).
    pub(crate) async fn read_version(
        &self,
        version: Option<u64>,
    ) -> Result<(u64, Arc<str>), Error> {
        let active = self.current();
        let version = match version {
            None => return Ok((active.version, Arc::clone(&active.yaml))),
            Some(version) if version == active.version => {
                return Ok((active.version, Arc::clone(&active.yaml)));
            }
            Some(version) => version,
        };
        if !self.shared.state().entries.contains_key(&version) {
            return Err(Error::UnknownVersion { version });
        }
        let path = self.shared.paths.entry(version);
        let entry: EntryFile =
            blocking(move || disk::read_record(&path)?.ok_or(Error::UnknownVersion { version }))
                .await?;
        Ok((version, Arc::from(entry.config)))
    }

    /// Reverts TRY trials whose deadline passes, until `stop` turns true: sleeps until the
    /// pending trial's deadline, re-checks under the change lock (a confirmation may have won
    /// the race), and restores the last confirmed config as a `REVERT` entry. Publishes
    /// `TaskEvent`s `revertConfiguration` START/STOP on `events`.
    pub async fn run_try_watchdog(self, events: EventBus, mut stop: watch::Receiver<bool>) {
        let mut trials = self.shared.trial.subscribe();
        loop {
            let pending = trials.borrow_and_update().clone();
            let due = async {
                match &pending {
                    Some(trial) => {
                        let wait = trial
                            .deadline
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = due => {
                    if let Some(trial) = pending
                        && let Err(err) = self.revert_due(&trial, &events).await
                    {
                        tracing::error!(
                            version = trial.version,
                            error = &err as &dyn std::error::Error,
                            "Cannot revert the configuration on trial; retrying"
                        );
                        tokio::select! {
                            () = tokio::time::sleep(REVERT_RETRY) => {}
                            () = stopped(&mut stop) => return,
                        }
                    }
                }
                changed = trials.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = stopped(&mut stop) => return,
            }
        }
    }

    async fn revert_due(&self, trial: &TrialInfo, events: &EventBus) -> Result<(), Error> {
        let guard = self.lock().await;
        let shared = Arc::clone(&self.shared);
        let version = trial.version;
        let task = |action| {
            EventPayload::Task(machine::TaskEvent {
                task: "revertConfiguration".to_owned(),
                action: action as i32,
            })
        };
        events.publish(task(machine::task_event::Action::Start), None);
        let result = blocking(move || shared.revert_if_due(version, SystemTime::now())).await;
        events.publish(task(machine::task_event::Action::Stop), None);
        drop(guard);
        result.map(drop)
    }
}

impl fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state();
        f.debug_struct("ConfigStore")
            .field("dir", &self.shared.paths.dir)
            .field("active", &state.active.version)
            .field("staged", &state.staged)
            .field("trial", &state.trial.as_ref().map(|trial| &trial.info))
            .finish_non_exhaustive()
    }
}

// === impl Shared: the blocking operations ===

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Reads the store from disk and brings it to a consistent state: the steps of
    /// [`ConfigStore::open`]. The caller holds the change lock (or is `open`).
    fn reload(&self) -> Result<(), Error> {
        let paths = &self.paths;
        basalt_config::fs::ensure_private_dir(&paths.history)
            .map_err(|source| Error::CreateDir { source })?;
        for dir in [&paths.dir, &paths.history] {
            let removed = disk::remove_temp_files(dir)?;
            if removed > 0 {
                tracing::info!(
                    dir = %dir.display(),
                    removed,
                    "Removed temporary files of an interrupted config write"
                );
            }
        }
        let entries = load_entries(paths)?;
        // The state copy, or (new or wiped store) the seed.
        let (yaml, config) = match disk::read_text(&paths.current)? {
            Some(text) => {
                let config = MachineConfig::from_yaml(&text).map_err(|source| {
                    Error::InvalidStoredConfig {
                        path: paths.current.clone(),
                        source,
                    }
                })?;
                (Arc::<str>::from(text), config)
            }
            None => {
                let config = MachineConfig::from_yaml(&self.seed_yaml)
                    .map_err(|source| Error::InvalidSeed { source })?;
                (Arc::clone(&self.seed_yaml), config)
            }
        };
        {
            let mut state = self.state();
            state.entries = entries;
            state.active = Arc::new(ActiveConfig {
                version: 0,
                sha256: disk::sha256_hex(yaml.as_bytes()),
                config,
                yaml,
            });
            state.staged = None;
            state.trial = None;
        }
        self.trial.send_replace(None);
        self.recover()?;
        let state = self.state();
        tracing::info!(
            version = state.active.version,
            sha256 = %state.active.sha256,
            trial_version = state.trial.as_ref().map(|trial| trial.info.version),
            "Machine config loaded from the state directory"
        );
        Ok(())
    }

    /// Steps 2–5 of [`ConfigStore::open`], on the freshly loaded state.
    fn recover(&self) -> Result<(), Error> {
        let paths = &self.paths;
        if !paths.current.exists() {
            let active = Arc::clone(&self.state().active);
            self.commit(Commit {
                yaml: Arc::clone(&active.yaml),
                config: active.config.clone(),
                mode: "INITIAL".to_owned(),
                caller: Caller::machined(),
                note: self.seed_note.clone(),
                kind: CommitKind::Live,
            })?;
            tracing::info!(
                current = %paths.current.display(),
                "Seeded the machine config store from --config"
            );
        }
        self.find_active()?;

        // 3. A staged config newer than the active one takes effect: this start is a boot.
        // An older one lost to a later change whose cleanup a crash interrupted.
        if let Some(record) = disk::read_record::<StagedRecord>(&paths.staged)? {
            let active = self.state().active.version;
            if record.version > active {
                self.activate_record(record)?;
            } else {
                tidy(
                    "remove a staged record older than the active configuration",
                    disk::remove_durably(&paths.staged),
                );
            }
        }

        // 4. A trial: over, due or still running.
        if let Some(record) = disk::read_record::<TrialRecord>(&paths.trial)? {
            let deadline = disk::parse_time(&paths.trial, &record.deadline)?;
            let active = Arc::clone(&self.state().active);
            if active.sha256 == record.revert_to_sha256 || active.version > record.version {
                // Reverted or confirmed/superseded, with the record's removal interrupted.
                tidy(
                    "remove the record of a trial that is over",
                    disk::remove_durably(&paths.trial),
                );
            } else {
                let trial = Trial {
                    info: TrialInfo {
                        version: record.version,
                        deadline,
                        revert_to: record.revert_to_version,
                    },
                    revert_sha256: record.revert_to_sha256,
                    revert_yaml: Arc::from(record.revert_to_config),
                };
                self.state().trial = Some(trial.clone());
                self.trial.send_replace(Some(trial.info.clone()));
                if self.revert_if_due(trial.info.version, SystemTime::now())? {
                    tracing::info!(
                        version = trial.info.version,
                        restored = trial.info.revert_to,
                        "Reverted the configuration on trial: its deadline passed while \
                         machined was down"
                    );
                } else {
                    tracing::info!(
                        version = trial.info.version,
                        deadline = %disk::format_time(deadline),
                        "A configuration is on trial; it is reverted at the deadline unless \
                         confirmed"
                    );
                }
            }
        }

        // 5. Entries newer than the active one never took effect.
        let (active, interrupted): (u64, Vec<u64>) = {
            let state = self.state();
            let active = state.active.version;
            let interrupted = state
                .entries
                .range(active + 1..)
                .filter(|(version, info)| {
                    state.staged != Some(**version) && info.note != INTERRUPTED
                })
                .map(|(version, _)| *version)
                .collect();
            (active, interrupted)
        };
        for version in interrupted {
            let path = paths.entry(version);
            if let Some(mut entry) = disk::read_record::<EntryFile>(&path)? {
                tracing::warn!(
                    version,
                    active,
                    "A config apply was interrupted before it took effect"
                );
                entry.note = INTERRUPTED.to_owned();
                let noted = disk::write_record(&path, &entry);
                if noted.is_ok()
                    && let Some(info) = self.state().entries.get_mut(&version)
                {
                    info.note = INTERRUPTED.to_owned();
                }
                tidy("note the interrupted apply in its history entry", noted);
            }
        }
        tidy("prune the history", self.prune());
        Ok(())
    }

    /// Sets the active version from `current.yaml`'s hash: the newest entry with that hash,
    /// or a new `RECOVERED` entry when there is none (e.g. the history was removed).
    fn find_active(&self) -> Result<(), Error> {
        let mut state = self.state();
        let sha256 = state.active.sha256.clone();
        let found = state
            .entries
            .values()
            .rev()
            .find(|info| info.sha256 == sha256)
            .map(|info| info.version);
        match found {
            Some(version) => {
                let mut active = (*state.active).clone();
                active.version = version;
                let active = Arc::new(active);
                state.active = Arc::clone(&active);
                drop(state);
                self.active.send_replace(active);
                Ok(())
            }
            None => {
                let active = Arc::clone(&state.active);
                drop(state);
                tracing::warn!(
                    current = %self.paths.current.display(),
                    "The active machine config has no history entry; recording it"
                );
                self.commit(Commit {
                    yaml: Arc::clone(&active.yaml),
                    config: active.config.clone(),
                    mode: "RECOVERED".to_owned(),
                    caller: Caller::machined(),
                    note: "found in current.yaml without a history entry".to_owned(),
                    kind: CommitKind::Live,
                })
                .map(drop)
            }
        }
    }

    /// Writes a history entry and makes it effective (see the module docs for the order).
    fn commit(&self, commit: Commit) -> Result<u64, Error> {
        let Commit {
            yaml,
            config,
            mode,
            caller,
            note,
            kind,
        } = commit;
        let version = self
            .state()
            .entries
            .last_key_value()
            .map_or(1, |(version, _)| version + 1);
        let time = SystemTime::now();
        let sha256 = disk::sha256_hex(yaml.as_bytes());
        let entry = EntryFile {
            version,
            time: disk::format_time(time),
            mode: mode.clone(),
            caller: caller.clone(),
            sha256: sha256.clone(),
            note: note.clone(),
            config: yaml.to_string(),
        };
        disk::write_record(&self.paths.entry(version), &entry)?;
        // Listed once the version is staged or active; a write that fails before then takes
        // the entry back, so history never shows a version that never took effect.
        let info = VersionInfo {
            version,
            time,
            mode,
            caller,
            sha256: sha256.clone(),
            note,
        };
        let undo = |err: Error| self.discard_entry(version, err);

        match kind {
            CommitKind::Staged => {
                disk::write_record(
                    &self.paths.staged,
                    &StagedRecord {
                        version,
                        sha256,
                        config: yaml.to_string(),
                    },
                )
                .map_err(undo)?;
                let mut state = self.state();
                state.entries.insert(version, info);
                state.staged = Some(version);
            }
            CommitKind::Live | CommitKind::Try { .. } => {
                let trial = match kind {
                    CommitKind::Try { deadline } => {
                        // A TRY during a trial keeps the original revert target.
                        let (revert_to, revert_sha256, revert_yaml) = {
                            let state = self.state();
                            match &state.trial {
                                Some(trial) => (
                                    trial.info.revert_to,
                                    trial.revert_sha256.clone(),
                                    Arc::clone(&trial.revert_yaml),
                                ),
                                None => (
                                    state.active.version,
                                    state.active.sha256.clone(),
                                    Arc::clone(&state.active.yaml),
                                ),
                            }
                        };
                        disk::write_record(
                            &self.paths.trial,
                            &TrialRecord {
                                version,
                                deadline: disk::format_time(deadline),
                                revert_to_version: revert_to,
                                revert_to_sha256: revert_sha256.clone(),
                                revert_to_config: revert_yaml.to_string(),
                            },
                        )
                        .map_err(undo)?;
                        Some(Trial {
                            info: TrialInfo {
                                version,
                                deadline,
                                revert_to,
                            },
                            revert_sha256,
                            revert_yaml,
                        })
                    }
                    CommitKind::Live | CommitKind::Staged => None,
                };
                // The commit point: from here on the new config is the active one.
                disk::write_file(&self.paths.current, yaml.as_bytes()).map_err(|err| {
                    if trial.is_some() {
                        self.restore_trial_record();
                    }
                    undo(err)
                })?;
                self.state().entries.insert(version, info);
                if trial.is_none() {
                    tidy(
                        "remove the trial record",
                        disk::remove_durably(&self.paths.trial),
                    );
                }
                let discarded = self.state().staged.take();
                tidy(
                    "remove the staged record",
                    disk::remove_durably(&self.paths.staged),
                );
                if let Some(staged) = discarded {
                    tracing::warn!(
                        staged,
                        version,
                        "A newer configuration change discarded the staged configuration"
                    );
                }
                self.set_active(
                    ActiveConfig {
                        version,
                        sha256,
                        config,
                        yaml,
                    },
                    trial,
                );
            }
        }
        tidy("prune the history", self.prune());
        Ok(version)
    }

    /// Puts back the trial record of the trial in force (or removes it, with none), after a
    /// TRY that wrote its own record failed before its commit point.
    fn restore_trial_record(&self) {
        let record = self.state().trial.as_ref().map(|trial| TrialRecord {
            version: trial.info.version,
            deadline: disk::format_time(trial.info.deadline),
            revert_to_version: trial.info.revert_to,
            revert_to_sha256: trial.revert_sha256.clone(),
            revert_to_config: trial.revert_yaml.to_string(),
        });
        let restored = match record {
            Some(record) => disk::write_record(&self.paths.trial, &record),
            None => disk::remove_durably(&self.paths.trial),
        };
        if let Err(err) = restored {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "Could not restore the trial record after a failed configuration change"
            );
        }
    }

    /// Removes the history entry of a commit that failed before it took effect, and returns
    /// that failure.
    fn discard_entry(&self, version: u64, failure: Error) -> Error {
        if let Err(err) = disk::remove_durably(&self.paths.entry(version)) {
            tracing::warn!(
                version,
                error = &err as &dyn std::error::Error,
                "Could not remove the history entry of a failed configuration change"
            );
        }
        failure
    }

    /// Publishes a new active config and trial state.
    /// Puts back the state of before a failed [`ConfigStore::boot`], and publishes it.
    fn restore(&self, before: State) {
        let active = Arc::clone(&before.active);
        let trial_info = before.trial.as_ref().map(|trial| trial.info.clone());
        *self.state() = before;
        self.active.send_replace(active);
        self.trial.send_replace(trial_info);
    }

    fn set_active(&self, active: ActiveConfig, trial: Option<Trial>) {
        let active = Arc::new(active);
        let trial_info = trial.as_ref().map(|trial| trial.info.clone());
        {
            let mut state = self.state();
            state.active = Arc::clone(&active);
            state.trial = trial;
        }
        self.active.send_replace(active);
        self.trial.send_if_modified(|current| {
            let modified = *current != trial_info;
            *current = trial_info;
            modified
        });
    }

    /// Makes a staged record the active config: `current.yaml`, then the trial and staged
    /// records go.
    fn activate_record(&self, record: StagedRecord) -> Result<u64, Error> {
        let config = MachineConfig::from_yaml(&record.config).map_err(|source| {
            Error::InvalidStoredConfig {
                path: self.paths.staged.clone(),
                source,
            }
        })?;
        let sha256 = disk::sha256_hex(record.config.as_bytes());
        disk::write_file(&self.paths.current, record.config.as_bytes())?;
        // The commit point: what follows is tidying (see `tidy`).
        tidy(
            "remove the trial record",
            disk::remove_durably(&self.paths.trial),
        );
        tidy(
            "remove the staged record",
            disk::remove_durably(&self.paths.staged),
        );
        self.state().staged = None;
        self.set_active(
            ActiveConfig {
                version: record.version,
                sha256,
                config,
                yaml: Arc::from(record.config),
            },
            None,
        );
        tracing::info!(
            version = record.version,
            "Activated the staged machine config"
        );
        Ok(record.version)
    }

    fn confirm(&self) -> Result<Option<u64>, Error> {
        let Some(trial) = self.state().trial.clone() else {
            return Ok(None);
        };
        disk::remove_durably(&self.paths.trial)?;
        self.state().trial = None;
        self.trial.send_replace(None);
        tracing::info!(
            version = trial.info.version,
            "Configuration on trial confirmed"
        );
        Ok(Some(trial.info.version))
    }

    /// Restores the trial's revert target when `version` is still on trial and its deadline
    /// is at or before `now`. Returns whether it reverted.
    fn revert_if_due(&self, version: u64, now: SystemTime) -> Result<bool, Error> {
        let trial = match &self.state().trial {
            Some(trial) if trial.info.version == version && trial.info.deadline <= now => {
                trial.clone()
            }
            _ => return Ok(false),
        };
        let config = match MachineConfig::from_yaml(&trial.revert_yaml) {
            Ok(config) => config,
            Err(err) => {
                // It was valid when it was applied; validation became stricter since. Keeping
                // the config on trial is the only safe choice.
                tracing::error!(
                    version,
                    restore = trial.info.revert_to,
                    error = &err as &dyn std::error::Error,
                    "The configuration to restore no longer validates; keeping the one on trial"
                );
                return self.confirm().map(|_| false);
            }
        };
        self.commit(Commit {
            yaml: Arc::clone(&trial.revert_yaml),
            config,
            mode: "REVERT".to_owned(),
            caller: Caller::machined(),
            note: format!(
                "version {version} was not confirmed by {}; restores version {}",
                disk::format_time(trial.info.deadline),
                trial.info.revert_to
            ),
            kind: CommitKind::Live,
        })?;
        tracing::warn!(
            version,
            restored = trial.info.revert_to,
            "Configuration on trial was not confirmed in time; reverted"
        );
        Ok(true)
    }

    /// Removes the oldest entries beyond the limit, never the active or the staged one.
    fn prune(&self) -> Result<(), Error> {
        let doomed: Vec<u64> = {
            let state = self.state();
            let keep =
                |version: &u64| *version == state.active.version || state.staged == Some(*version);
            state
                .entries
                .keys()
                .rev()
                .skip(self.history_limit)
                .filter(|version| !keep(version))
                .copied()
                .collect()
        };
        for version in doomed {
            disk::remove_durably(&self.paths.entry(version))?;
            self.state().entries.remove(&version);
        }
        Ok(())
    }
}

/// The note of an entry whose apply was interrupted before it took effect.
const INTERRUPTED: &str = "interrupted before it took effect";

/// Reads every history entry's metadata. An entry that does not decode (hand-edited; writes
/// are atomic, so never torn) is skipped with a warning rather than failing the boot.
fn load_entries(paths: &Paths) -> Result<BTreeMap<u64, VersionInfo>, Error> {
    let mut entries = BTreeMap::new();
    for version in disk::entry_versions(&paths.history)? {
        let path = paths.entry(version);
        let entry = match disk::read_record::<EntryFile>(&path) {
            Ok(Some(entry)) if entry.version == version => entry,
            Ok(Some(_)) | Ok(None) => {
                tracing::warn!(path = %path.display(), "Skipping a history entry with the wrong version");
                continue;
            }
            Err(err) => {
                tracing::warn!(
                    path = %path.display(),
                    error = &err as &dyn std::error::Error,
                    "Skipping a history entry that does not decode"
                );
                continue;
            }
        };
        let time = disk::parse_time(&path, &entry.time)?;
        entries.insert(
            version,
            VersionInfo {
                version,
                time,
                mode: entry.mode,
                caller: entry.caller,
                sha256: entry.sha256,
                note: entry.note,
            },
        );
    }
    Ok(entries)
}

/// Runs blocking store I/O off the async worker threads.
async fn blocking<T, F>(work: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Error::Blocking { source })?
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few field assignments; a panic cannot leave them half done.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Logs a failure of tidying: what follows a commit point (the change has taken effect, so it
/// is not reported as failed) and what [`ConfigStore::open`] clears up. What is left (a stale
/// trial or staged record, history beyond its limit, an entry not yet noted as interrupted) is
/// harmless, since `open` reads the active config from `current.yaml`, and `open` tries again
/// at the next start.
fn tidy(what: &str, result: Result<(), Error>) {
    if let Err(err) = result {
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            "Could not {what}; the configuration in effect is not affected, and machined \
             tries again at its next start"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "version: v1alpha1
machine:
  type: worker
  token: abcdef.0123456789abcdef
  ca:
    crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJQekNCOHFBREFnRUNBaEVBCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
cluster:
  name: dev
  endpoints: [127.0.0.1]
";

    fn with_hostname(name: &str) -> String {
        CONFIG.replace("type: worker", &format!("type: worker\n  hostname: {name}"))
    }

    fn open(dir: &Path, limit: usize) -> ConfigStore {
        let options = ConfigStoreOptions {
            dir: dir.join("config"),
            history_limit: limit,
        };
        ConfigStore::open(&options, CONFIG, "seeded by a test").expect("open store")
    }

    fn commit(yaml: &str, kind: CommitKind) -> Commit {
        Commit {
            yaml: Arc::from(yaml),
            config: MachineConfig::from_yaml(yaml).expect("valid"),
            mode: "NO_REBOOT".to_owned(),
            caller: Caller::machined(),
            note: String::new(),
            kind,
        }
    }

    #[test]
    fn seeding_writes_current_and_an_initial_entry_and_the_state_copy_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 20);
        assert_eq!(store.current().version, 1);
        let history = store.history();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].info.mode, "INITIAL");
        assert!(history[0].active);
        store
            .shared
            .commit(commit(&with_hostname("n2"), CommitKind::Live))
            .unwrap();
        drop(store);

        // Reopened with the original seed: the state copy wins.
        let store = open(dir.path(), 20);
        assert_eq!(store.current().version, 2);
        assert_eq!(store.current().config.hostname(), Some("n2"));
    }

    #[test]
    fn staged_becomes_active_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 20);
        store
            .shared
            .commit(commit(&with_hostname("n3"), CommitKind::Staged))
            .unwrap();
        assert_eq!(store.current().version, 1);
        assert_eq!(store.staged(), Some(2));
        drop(store);
        let store = open(dir.path(), 20);
        assert_eq!(store.current().version, 2);
        assert_eq!(store.staged(), None);
    }

    #[test]
    fn an_entry_written_without_its_current_is_noted_as_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 20);
        // Simulate a crash after the entry write: put the old current back.
        store
            .shared
            .commit(commit(&with_hostname("n2"), CommitKind::Live))
            .unwrap();
        std::fs::write(dir.path().join("config/current.yaml"), CONFIG).unwrap();
        drop(store);
        let store = open(dir.path(), 20);
        assert_eq!(store.current().version, 1);
        let history = store.history();
        assert_eq!(history[0].info.version, 2);
        assert_eq!(history[0].info.note, INTERRUPTED);
    }

    #[test]
    fn history_is_pruned_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 3);
        for i in 0..6 {
            store
                .shared
                .commit(commit(&with_hostname(&format!("n{i}")), CommitKind::Live))
                .unwrap();
        }
        let versions: Vec<u64> = store.history().iter().map(|e| e.info.version).collect();
        assert_eq!(versions, [7, 6, 5]);
        assert_eq!(
            disk::entry_versions(&dir.path().join("config/history")).unwrap(),
            [5, 6, 7]
        );
    }

    /// A reboot whose staged config no longer validates keeps the store as it was, the trial
    /// and its revert timer included (before 2026-12-08 the trial was cleared from memory and
    /// never reverted until machined restarted).
    #[test]
    fn a_failed_boot_keeps_the_trial_and_the_staged_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 20);
        let later = SystemTime::now() + Duration::from_secs(600);
        store
            .shared
            .commit(commit(
                &with_hostname("t1"),
                CommitKind::Try { deadline: later },
            ))
            .unwrap();
        store
            .shared
            .commit(commit(&with_hostname("s1"), CommitKind::Staged))
            .unwrap();
        let (trial, staged, active) = (store.trial(), store.staged(), store.current());
        assert!(trial.is_some() && staged.is_some());

        // The staged record's config is no longer valid.
        let path = dir.path().join("config/staged.yaml");
        let mut record: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        record["config"] = serde_yaml::Value::from("version: v1alpha1\nmachine: {}\n");
        std::fs::write(&path, serde_yaml::to_string(&record).unwrap()).unwrap();

        assert!(
            store.boot().is_err(),
            "the staged config cannot be activated"
        );
        assert_eq!(store.trial(), trial);
        assert_eq!(
            *store.shared.trial.borrow(),
            trial,
            "the watchdog still sees it"
        );
        assert_eq!(store.staged(), staged);
        assert_eq!(store.current().version, active.version);
    }

    #[test]
    fn a_due_trial_is_reverted_at_open_and_a_future_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 20);
        let past = SystemTime::now() - Duration::from_secs(1);
        store
            .shared
            .commit(commit(
                &with_hostname("t1"),
                CommitKind::Try { deadline: past },
            ))
            .unwrap();
        assert_eq!(store.trial().map(|t| t.version), Some(2));
        drop(store);
        let store = open(dir.path(), 20);
        assert_eq!(store.trial(), None);
        let current = store.current();
        assert_eq!(current.version, 3);
        assert_eq!(current.config.hostname(), None);
        assert_eq!(store.history()[0].info.mode, "REVERT");

        let future = SystemTime::now() + Duration::from_secs(3600);
        store
            .shared
            .commit(commit(
                &with_hostname("t2"),
                CommitKind::Try { deadline: future },
            ))
            .unwrap();
        drop(store);
        let store = open(dir.path(), 20);
        assert_eq!(
            store.trial().map(|t| (t.version, t.revert_to)),
            Some((4, 3))
        );
        assert_eq!(store.current().config.hostname(), Some("t2"));
    }
}
