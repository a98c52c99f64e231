//! What to run for a service and how: built from a `machine.services` entry or, for the built-in
//! apid, from [`ApidLaunch`](crate::ApidLaunch).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use basalt_config::{HealthCheck, RestartPolicy, ServiceConfig};

use crate::config::Backoff;

/// `PATH` for configured services, whose environment is exactly their `env` plus this (unless
/// `env` sets `PATH` itself): the usual system directories, as a login shell would set them.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which operations the API may perform on a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiControl {
    /// `ServiceStart` is allowed.
    pub start: bool,
    /// `ServiceStop` is allowed.
    pub stop: bool,
    /// `ServiceRestart` is allowed.
    pub restart: bool,
}

impl ApiControl {
    /// Every operation allowed (configured services).
    pub const FULL: ApiControl = ApiControl {
        start: true,
        stop: true,
        restart: true,
    };

    /// Start only: services that carry the API itself (apid) cannot be stopped or restarted
    /// through it, or the caller would cut the branch it sits on.
    pub const START_ONLY: ApiControl = ApiControl {
        start: true,
        stop: false,
        restart: false,
    };
}

/// The environment a service's process gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Environment {
    /// machined's own environment (built-in services: apid reads `BASALT_LOG` from it).
    Inherit,
    /// Exactly these variables (plus [`DEFAULT_PATH`] when `PATH` is not among them).
    Exactly(BTreeMap<String, String>),
}

/// Everything the supervisor needs to run one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service id (`apid`, or a `machine.services` name).
    pub id: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its environment.
    pub env: Environment,
    /// When to start it again after it exits.
    pub restart: RestartPolicy,
    /// Ids of services that must be up before it starts.
    pub depends_on: Vec<String>,
    /// How to check its health, if at all.
    pub health: Option<HealthCheck>,
    /// How often to check it.
    pub health_interval: Duration,
    /// What the API may do to it.
    pub api: ApiControl,
    /// Restart pacing.
    pub backoff: Backoff,
    /// Whether the process leads its own process group, so stop signals reach everything it
    /// starts (configured services). The built-in apid stays in machined's group instead: it
    /// is a single process, and whoever kills machined's whole group as a last resort (the
    /// e2e harness, `basaltctl cluster stop`) must take apid down with it.
    pub own_process_group: bool,
}

impl ServiceSpec {
    /// The spec for a validated `machine.services` entry.
    pub fn from_config(config: &ServiceConfig, backoff: Backoff) -> Self {
        ServiceSpec {
            id: config.name().to_owned(),
            program: PathBuf::from(config.command()),
            args: config.args().iter().map(OsString::from).collect(),
            env: Environment::Exactly(config.env().clone()),
            restart: config.restart(),
            depends_on: config.depends_on().to_vec(),
            health: config.health().cloned(),
            health_interval: config.health_interval(),
            api: ApiControl::FULL,
            backoff,
            own_process_group: true,
        }
    }

    /// The built-in apid: always restarted, machined's environment, start-only API control.
    pub fn apid(program: PathBuf, config: PathBuf, backoff: Backoff) -> Self {
        ServiceSpec {
            id: "apid".to_owned(),
            program,
            args: vec!["--config".into(), config.into_os_string()],
            env: Environment::Inherit,
            restart: RestartPolicy::Always,
            depends_on: Vec::new(),
            health: None,
            health_interval: basalt_config::service::DEFAULT_HEALTH_INTERVAL,
            api: ApiControl::START_ONLY,
            backoff,
            own_process_group: false,
        }
    }

    /// The built-in trustd (control-plane nodes): always restarted, machined's environment,
    /// a single process in machined's group like apid; the API may stop and restart it (it
    /// does not carry the API).
    pub fn trustd(program: PathBuf, config: PathBuf, backoff: Backoff) -> Self {
        ServiceSpec {
            id: "trustd".to_owned(),
            api: ApiControl::FULL,
            ..ServiceSpec::apid(program, config, backoff)
        }
    }

    /// Applies the environment to a command about to be spawned.
    pub(crate) fn apply_env(&self, command: &mut tokio::process::Command) {
        if let Environment::Exactly(vars) = &self.env {
            command.env_clear();
            if !vars.contains_key("PATH") {
                command.env("PATH", DEFAULT_PATH);
            }
            command.envs(vars);
        }
    }
}
