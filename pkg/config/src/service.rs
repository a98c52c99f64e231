//! `machine.services`: the processes machined supervises besides its built-in ones (apid,
//! trustd).
//!
//! ```yaml
//! machine:
//!   services:
//!     - name: web                       # [a-z0-9-]{1,63}, unique; not apid/trustd/machined
//!       command: /usr/bin/web           # required, non-empty
//!       args: [--port, "8080"]          # optional
//!       env: {RUST_LOG: info}           # optional; the child gets only these variables
//!       restart: always                 # always (default) | on-failure | never
//!       dependsOn: [db]                 # optional: services that must be up first
//!       health:                         # optional: exactly one of
//!         exec: [/bin/check, --quick]   #   a command; exit status 0 = healthy
//!         # tcp: "127.0.0.1:8080"       #   a TCP connect to host:port
//!       healthInterval: 10s             # optional, default 10s (needs `health`)
//! ```
//!
//! Validation reports, with key paths such as `machine.services[2].dependsOn[0]`: bad or
//! duplicate names, reserved names, an empty command, unknown dependencies, dependency cycles,
//! bad health checks and intervals, and environment entries the kernel cannot pass.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apid::{format_duration, parse_duration};
use crate::error::Problems;
use crate::{Document, Error};

/// The interval between health checks when `healthInterval` is not set.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// The shortest allowed `healthInterval`: checks are processes or connections, not free.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// Longest service name (a DNS label: names end up in file names and log ids).
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// Most services `machine.services` may list. Far more than a node runs; it bounds what one
/// config makes machined validate, supervise and order (a dependency chain is walked one
/// level at a time, and a chain of thousands overflowed the validating thread's stack).
pub const MAX_SERVICES: usize = 256;

/// Names machined uses for its own services; a configured service may not take them.
pub const RESERVED_SERVICE_NAMES: &[&str] = &["apid", "machined", "trustd"];

/// When a supervised process is started again after it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Whatever its exit status (the default; Talos's `Forever`).
    #[default]
    Always,
    /// Never: the service stays Finished or Failed until started over the API.
    Never,
    /// Only after a failure (non-zero exit, death by a signal); a clean exit stays Finished.
    OnFailure,
}

impl RestartPolicy {
    /// The YAML spelling: `always`, `on-failure` or `never`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RestartPolicy {
    /// A lower-case reason, ready to be a validation problem's text.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "never" => Ok(RestartPolicy::Never),
            other => Err(format!(
                "{other:?} is not a restart policy: use always, on-failure or never"
            )),
        }
    }
}

/// How a service's health is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// Run this command (argv, non-empty); exit status 0 means healthy.
    Exec(Vec<String>),
    /// Open a TCP connection to `host:port`; success means healthy.
    Tcp(String),
}

/// One validated `machine.services` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    name: String,
    command: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    restart: RestartPolicy,
    depends_on: Vec<String>,
    health: Option<HealthCheck>,
    health_interval: Duration,
}

impl ServiceConfig {
    /// `name`: `[a-z0-9-]{1,63}`, unique, not reserved.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `command`: the executable (a path, or a name looked up in `PATH`).
    pub fn command(&self) -> &str {
        &self.command
    }

    /// `args`.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// `env`: the child's whole environment.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// `restart`, default [`RestartPolicy::Always`].
    pub fn restart(&self) -> RestartPolicy {
        self.restart
    }

    /// `dependsOn`: names of other configured services, without cycles.
    pub fn depends_on(&self) -> &[String] {
        &self.depends_on
    }

    /// `health`, if set.
    pub fn health(&self) -> Option<&HealthCheck> {
        self.health.as_ref()
    }

    /// `healthInterval`, default [`DEFAULT_HEALTH_INTERVAL`].
    pub fn health_interval(&self) -> Duration {
        self.health_interval
    }

    /// The serde form.
    pub fn to_raw(&self) -> RawService {
        RawService {
            name: Some(self.name.clone()),
            command: Some(self.command.clone()),
            args: self.args.clone(),
            env: self.env.clone(),
            restart: (self.restart != RestartPolicy::default())
                .then(|| self.restart.as_str().to_owned()),
            depends_on: self.depends_on.clone(),
            health: self.health.as_ref().map(|health| match health {
                HealthCheck::Exec(argv) => RawHealth {
                    exec: Some(argv.clone()),
                    tcp: None,
                },
                HealthCheck::Tcp(addr) => RawHealth {
                    exec: None,
                    tcp: Some(addr.clone()),
                },
            }),
            health_interval: (self.health_interval != DEFAULT_HEALTH_INTERVAL)
                .then(|| format_duration(self.health_interval)),
        }
    }
}

/// One `machine.services` entry as written in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a service mapping with name and command"
)]
pub struct RawService {
    /// `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `args`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty_strings"
    )]
    pub args: Vec<String>,
    /// `env`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "env_null_as_empty"
    )]
    pub env: BTreeMap<String, String>,
    /// `restart`: `always`, `on-failure` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// `dependsOn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// `health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RawHealth>,
    /// `healthInterval`: a duration such as `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_interval: Option<String>,
}

/// `health:` as written in YAML: exactly one of `exec` and `tcp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with exec or tcp")]
pub struct RawHealth {
    /// `exec`: argv of a check command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// `tcp`: `host:port` to connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
}

/// Parses and validates a `machine.services` list on its own (YAML sequence), with the same
/// rules and key paths as inside a machine config; every problem is reported at once.
pub fn services_from_yaml(text: &str) -> Result<Vec<ServiceConfig>, Error> {
    let raw: Vec<RawService> =
        crate::yaml::parse(Document::MachineConfig, text)?.unwrap_or_default();
    validate(raw)
}

/// A YAML `null` (`~`, `null`, nothing) where a string belongs is the empty string, as go-yaml
/// (and so Talos) reads it; serde alone would read the text "null" or "~".
fn null_as_empty_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let values = Option::<Vec<Option<String>>>::deserialize(d)?.unwrap_or_default();
    Ok(values.into_iter().map(Option::unwrap_or_default).collect())
}

/// [`null_as_empty_strings`] for `env`, whose keys must also be distinct.
fn env_null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(crate::yaml::unique_keys::<D, String, Option<String>>(d)?
        .into_iter()
        .map(|(key, value)| (key, value.unwrap_or_default()))
        .collect())
}

/// Validates a `machine.services` list on its own (see [`services_from_yaml`]).
pub fn validate(raw: Vec<RawService>) -> Result<Vec<ServiceConfig>, Error> {
    let mut problems = Problems::default();
    let services = validate_services(&mut problems, raw);
    problems.into_result(Document::MachineConfig)?;
    Ok(services)
}

/// Validates every entry of `machine.services`, recording problems under
/// `machine.services[i]…`; returns the entries that passed (all of them when `problems` gained
/// nothing).
pub(crate) fn validate_services(
    problems: &mut Problems,
    raw: Vec<RawService>,
) -> Vec<ServiceConfig> {
    if raw.len() > MAX_SERVICES {
        problems.push(
            "machine.services",
            format!(
                "lists {} services; at most {MAX_SERVICES} are allowed",
                raw.len()
            ),
        );
        return Vec::new();
    }
    // Names first, so dependencies can be checked against the full set.
    let names: Vec<Option<String>> = raw.iter().map(|service| service.name.clone()).collect();
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let key = format!("machine.services[{i}].name");
        let Some(name) = name else {
            problems.push(key, "is required");
            continue;
        };
        if let Some(reason) = service_name_problem(name) {
            problems.push(key, reason);
        } else if let Some(first) = first_index.get(name.as_str()) {
            problems.push(
                key,
                format!("{name:?} is already defined by machine.services[{first}]"),
            );
        } else {
            first_index.insert(name, i);
        }
    }

    let mut valid = Vec::new();
    for (i, service) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("machine.services[{i}].{field}");
        let before = problems.len();
        let RawService {
            name,
            command,
            args,
            env,
            restart,
            depends_on,
            health,
            health_interval,
        } = service;

        match command.as_deref() {
            None => problems.push(at("command"), "is required"),
            Some("") => problems.push(at("command"), "must not be empty"),
            Some(text) if text.contains('\0') => {
                problems.push(at("command"), "must not contain a NUL byte");
            }
            Some(_) => {}
        }
        for (j, arg) in args.iter().enumerate() {
            if arg.contains('\0') {
                problems.push(at(&format!("args[{j}]")), "must not contain a NUL byte");
            }
        }
        for (key, value) in &env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                problems.push(
                    at(&format!("env.{key}")),
                    "variable names must be non-empty and contain no '=' or NUL byte",
                );
            } else if value.contains('\0') {
                problems.push(at(&format!("env.{key}")), "must not contain a NUL byte");
            }
        }
        let restart = match restart {
            None => RestartPolicy::default(),
            Some(text) => text.parse().unwrap_or_else(|reason| {
                problems.push(at("restart"), reason);
                RestartPolicy::default()
            }),
        };
        for (j, dependency) in depends_on.iter().enumerate() {
            let key = at(&format!("dependsOn[{j}]"));
            if name.as_deref() == Some(dependency.as_str()) {
                problems.push(key, "a service cannot depend on itself");
            } else if RESERVED_SERVICE_NAMES.contains(&dependency.as_str()) {
                problems.push(
                    key,
                    format!("{dependency:?} is built in; only configured services can be named"),
                );
            } else if !first_index.contains_key(dependency.as_str()) {
                problems.push(
                    key,
                    format!("{dependency:?} is not defined in machine.services"),
                );
            } else if depends_on[..j].contains(dependency) {
                problems.push(key, format!("{dependency:?} is listed twice"));
            }
        }
        let health = health.and_then(|health| check_health(problems, &at("health"), health));
        let health_interval = match health_interval {
            None => DEFAULT_HEALTH_INTERVAL,
            Some(text) => match parse_duration(&text) {
                Err(reason) => {
                    problems.push(at("healthInterval"), reason);
                    DEFAULT_HEALTH_INTERVAL
                }
                Ok(interval) if interval < MIN_HEALTH_INTERVAL => {
                    problems.push(
                        at("healthInterval"),
                        format!("must be at least {}", format_duration(MIN_HEALTH_INTERVAL)),
                    );
                    DEFAULT_HEALTH_INTERVAL
                }
                Ok(_) if health.is_none() => {
                    problems.push(at("healthInterval"), "has no effect without health");
                    DEFAULT_HEALTH_INTERVAL
                }
                Ok(interval) => interval,
            },
        };

        if let (Some(name), Some(command)) = (name, command)
            && problems.len() == before
        {
            valid.push(ServiceConfig {
                name,
                command,
                args,
                env,
                restart,
                depends_on,
                health,
                health_interval,
            });
        }
    }

    check_cycles(problems, &valid, &first_index);
    valid
}

/// Why `name` cannot be a service name, if it cannot.
fn service_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME_LEN {
        Some(format!(
            "must be 1 to {MAX_SERVICE_NAME_LEN} characters long"
        ))
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some(format!(
            "{name:?} may contain only lowercase letters, digits and '-'"
        ))
    } else if RESERVED_SERVICE_NAMES.contains(&name) {
        Some(format!("{name:?} is a built-in service of machined"))
    } else {
        None
    }
}

fn check_health(problems: &mut Problems, key: &str, raw: RawHealth) -> Option<HealthCheck> {
    match (raw.exec, raw.tcp) {
        (Some(_), Some(_)) => {
            problems.push(key, "set exactly one of exec and tcp, not both");
            None
        }
        (None, None) => {
            problems.push(key, "set exactly one of exec and tcp");
            None
        }
        (Some(argv), None) => {
            if argv.first().is_none_or(String::is_empty) {
                problems.push(format!("{key}.exec"), "must name a command");
                None
            } else if argv.iter().any(|arg| arg.contains('\0')) {
                problems.push(format!("{key}.exec"), "must not contain a NUL byte");
                None
            } else {
                Some(HealthCheck::Exec(argv))
            }
        }
        (None, Some(addr)) => {
            let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0)
            });
            if valid {
                Some(HealthCheck::Tcp(addr))
            } else {
                problems.push(
                    format!("{key}.tcp"),
                    format!("{addr:?} is not host:port such as 127.0.0.1:8080"),
                );
                None
            }
        }
    }
}

/// Reports each dependency cycle once, at the `dependsOn` of the service where it was found,
/// spelled `a -> b -> a`.
fn check_cycles(problems: &mut Problems, services: &[ServiceConfig], index: &HashMap<&str, usize>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let by_name: HashMap<&str, &ServiceConfig> =
        services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut marks: HashMap<&str, Mark> = by_name.keys().map(|name| (*name, Mark::New)).collect();

    fn visit<'a>(
        name: &'a str,
        by_name: &HashMap<&'a str, &'a ServiceConfig>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        found: &mut Vec<Vec<&'a str>>,
    ) {
        marks.insert(name, Mark::Active);
        path.push(name);
        if let Some(service) = by_name.get(name) {
            for dependency in &service.depends_on {
                match marks.get(dependency.as_str()).copied() {
                    Some(Mark::New) => visit(dependency, by_name, marks, path, found),
                    Some(Mark::Active) => {
                        let start = path
                            .iter()
                            .position(|n| *n == dependency.as_str())
                            .unwrap_or(0);
                        let mut cycle = path[start..].to_vec();
                        cycle.push(dependency);
                        found.push(cycle);
                    }
                    Some(Mark::Done) | None => {}
                }
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
    }

    let mut found = Vec::new();
    for service in services {
        if marks.get(service.name.as_str()) == Some(&Mark::New) {
            visit(
                &service.name,
                &by_name,
                &mut marks,
                &mut Vec::new(),
                &mut found,
            );
        }
    }
    for cycle in found {
        let at = index.get(cycle[0]).copied().unwrap_or(0);
        problems.push(
            format!("machine.services[{at}].dependsOn"),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<ServiceConfig>, crate::Error> {
        services_from_yaml(yaml)
    }

    fn problems(yaml: &str) -> Vec<(String, String)> {
        parse(yaml)
            .unwrap_err()
            .problems()
            .iter()
            .map(|p| (p.key.clone(), p.reason.clone()))
            .collect()
    }

    fn keys(yaml: &str) -> Vec<String> {
        problems(yaml).into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn a_full_service_parses_with_defaults_filled_in() {
        let services = parse(
            "- name: db\n  command: /usr/bin/db\n\
             - name: web\n  command: sh\n  args: [-c, 'echo hi']\n  env: {A: '1'}\n  \
               restart: on-failure\n  dependsOn: [db]\n  health: {tcp: '127.0.0.1:8080'}\n  \
               healthInterval: 2s\n",
        )
        .unwrap();
        let db = &services[0];
        assert_eq!(db.name(), "db");
        assert_eq!(db.restart(), RestartPolicy::Always);
        assert_eq!(db.health(), None);
        assert_eq!(db.health_interval(), DEFAULT_HEALTH_INTERVAL);
        let web = &services[1];
        assert_eq!(web.args(), ["-c", "echo hi"]);
        assert_eq!(web.env().get("A").map(String::as_str), Some("1"));
        assert_eq!(web.restart(), RestartPolicy::OnFailure);
        assert_eq!(web.depends_on(), ["db"]);
        assert_eq!(
            web.health(),
            Some(&HealthCheck::Tcp("127.0.0.1:8080".to_owned()))
        );
        assert_eq!(web.health_interval(), Duration::from_secs(2));

        let again: Vec<RawService> = services.iter().map(ServiceConfig::to_raw).collect();
        let mut problems = Problems::default();
        assert_eq!(validate_services(&mut problems, again), services);
        assert!(problems.is_empty());
    }

    #[test]
    fn names_must_be_valid_unique_and_not_built_in() {
        assert_eq!(
            keys(
                "- {name: web, command: a}\n- {name: web, command: b}\n- {name: Web, command: c}\n\
                 - {name: apid, command: d}\n- {name: '', command: e}\n- {command: f}\n"
            ),
            [
                "machine.services[1].name",
                "machine.services[2].name",
                "machine.services[3].name",
                "machine.services[4].name",
                "machine.services[5].name",
            ]
        );
        let long = "a".repeat(64);
        assert_eq!(
            keys(&format!("- {{name: {long}, command: a}}\n")),
            ["machine.services[0].name"]
        );
    }

    #[test]
    fn every_field_is_checked() {
        let found = problems(
            "- name: web\n  command: ''\n  restart: sometimes\n  dependsOn: [web, nope, trustd]\n  \
               health: {exec: []}\n  healthInterval: 10\n  env: {'A=B': x}\n\
             - name: api\n  health: {exec: [a], tcp: 'x:1'}\n\
             - name: tcp\n  command: a\n  health: {tcp: 'localhost'}\n  healthInterval: 10ms\n\
             - name: interval\n  command: a\n  healthInterval: 5s\n",
        );
        let keys: Vec<&str> = found.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "machine.services[0].command",
                "machine.services[0].env.A=B",
                "machine.services[0].restart",
                "machine.services[0].dependsOn[0]",
                "machine.services[0].dependsOn[1]",
                "machine.services[0].dependsOn[2]",
                "machine.services[0].health.exec",
                "machine.services[0].healthInterval",
                "machine.services[1].command",
                "machine.services[1].health",
                "machine.services[2].health.tcp",
                "machine.services[2].healthInterval",
                "machine.services[3].healthInterval",
            ],
            "{found:#?}"
        );
        assert_eq!(found[0].1, "must not be empty");
        assert_eq!(found[3].1, "a service cannot depend on itself");
        assert_eq!(found[4].1, "\"nope\" is not defined in machine.services");
        assert_eq!(found[12].1, "has no effect without health");
    }

    #[test]
    fn dependency_cycles_are_reported_with_their_path() {
        let found = problems(
            "- {name: a, command: x, dependsOn: [b]}\n- {name: b, command: x, dependsOn: [c]}\n\
             - {name: c, command: x, dependsOn: [a]}\n- {name: d, command: x, dependsOn: [a]}\n",
        );
        assert_eq!(
            found,
            [(
                "machine.services[0].dependsOn".to_owned(),
                "dependency cycle: a -> b -> c -> a".to_owned()
            )]
        );
    }

    /// A chain of 10,000 dependencies overflowed the validating thread's stack (machined
    /// aborted, from one ApplyConfiguration); now the list is refused by its length, and the
    /// longest allowed chain validates on a small stack.
    #[test]
    fn too_many_services_are_refused_and_the_longest_chain_validates() {
        let chain = |n: usize| -> String {
            (0..n)
                .map(|i| {
                    let next = if i + 1 < n {
                        format!("[s{}]", i + 1)
                    } else {
                        "[]".to_owned()
                    };
                    format!("- {{name: s{i}, command: x, dependsOn: {next}}}\n")
                })
                .collect()
        };
        assert_eq!(
            problems(&chain(10_000)),
            [(
                "machine.services".to_owned(),
                "lists 10000 services; at most 256 are allowed".to_owned()
            )]
        );
        let longest = chain(MAX_SERVICES);
        let validated = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || services_from_yaml(&longest).map(|s| s.len()))
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert_eq!(validated.expect("valid"), MAX_SERVICES);
    }

    /// serde's maps kept the last of two equal keys; go-yaml, and so Talos, refuses them.
    #[test]
    fn an_env_variable_listed_twice_is_refused() {
        let err = services_from_yaml("- {name: a, command: x, env: {A: one, A: two}}\n")
            .expect_err("duplicate key");
        let text = anyhow_like(&err);
        assert!(text.contains("the key \"A\" is listed twice"), "{text}");
        let ok = services_from_yaml("- {name: a, command: x, env: {A: one, B: two}}\n")
            .expect("distinct keys");
        assert_eq!(ok[0].env.len(), 2);
    }

    /// YAML null became the text "null" or "~"; go-yaml, and so Talos, reads it as empty.
    #[test]
    fn null_env_values_and_args_are_empty_as_in_talos() {
        let services = services_from_yaml(
            "- {name: a, command: x, args: [one, ~, null], env: {A: ~, B: null}}\n",
        )
        .expect("valid");
        assert_eq!(services[0].args, ["one", "", ""]);
        assert_eq!(services[0].env["A"], "");
        assert_eq!(services[0].env["B"], "");
        let quoted = services_from_yaml(
            "- {name: a, command: x, args: ['~', 'null'], env: {A: '', B: '~'}}\n",
        )
        .expect("quoted text");
        assert_eq!(quoted[0].args, ["~", "null"]);
        assert_eq!(quoted[0].env["B"], "~");
    }

    /// The error and its sources, as one line.
    fn anyhow_like(err: &Error) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    #[test]
    fn restart_policy_spellings() {
        for policy in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            assert_eq!(policy.to_string().parse::<RestartPolicy>(), Ok(policy));
        }
        assert!("onfailure".parse::<RestartPolicy>().is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            serde_yaml::from_str::<Vec<RawService>>("- {name: a, command: b, restrat: never}")
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `restrat`"), "{err}");
    }
}
