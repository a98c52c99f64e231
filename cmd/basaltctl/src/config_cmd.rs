//! `basaltctl config …`: inspect and edit the client config (talosconfig layout).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use basalt_config::client::{ClientConfig, Context};
use basalt_pki::Identity;
use clap::Subcommand;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::output::{self, OutputArgs, Render};
use crate::usage::OrUsage as _;
use crate::{Globals, duration};

/// Warn when the client certificate expires within this many days: an expired client cert
/// otherwise looks like an unreachable node (user-asks §1b rows 12–14).
pub(crate) const EXPIRY_WARNING_DAYS: i64 = 30;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Show the current context: endpoints, nodes, and the certificate's roles and expiry.
    Info(OutputArgs),
    /// List the contexts.
    Contexts(OutputArgs),
    /// Make NAME the current context.
    UseContext { name: String },
    /// Merge the contexts of FILE into the client config (clashing names get -1, -2, …).
    Merge { file: PathBuf },
    /// Set the endpoints of the current context.
    Endpoints {
        #[arg(required = true, value_parser = crate::connect::parse_endpoint)]
        endpoints: Vec<String>,
    },
    /// Set the default target nodes of the current context.
    Nodes {
        #[arg(value_parser = crate::connect::parse_node)]
        nodes: Vec<String>,
    },
    /// Ask a control-plane node for a new client certificate and save it as a client config.
    New(crate::config_new::NewArgs),
}

pub(crate) fn run(cmd: ConfigCommand, globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Info(out) => {
            let config = load(globals)?;
            let info = context_info(&config, globals.context.as_deref())?;
            if let Some(warning) = &info.warning {
                eprintln!("warning: {warning}");
            }
            output::print(out.format, &info)
        }
        ConfigCommand::Contexts(out) => {
            let config = load(globals)?;
            output::print(out.format, &ContextList::from(&config))
        }
        ConfigCommand::UseContext { name } => {
            let mut config = load(globals)?;
            if !config.contexts.contains_key(&name) {
                bail!(
                    "no context {name:?} in {}; known: {}",
                    globals.config_path.display(),
                    context_names(&config)
                );
            }
            config.context = name;
            save(&config, globals)
        }
        ConfigCommand::Merge { file } => {
            let incoming = ClientConfig::load(&file)
                .with_context(|| format!("load client config {}", file.display()))?;
            let mut config = ClientConfig::load_or_default(&globals.config_path)
                .with_context(|| format!("load client config {}", globals.config_path.display()))?;
            let renames = config.merge(incoming);
            for rename in &renames {
                eprintln!("renamed context {:?} to {:?}", rename.from, rename.to);
            }
            save(&config, globals)?;
            eprintln!("current context: {}", config.context);
            Ok(())
        }
        ConfigCommand::Endpoints { endpoints } => {
            edit_context(globals, |context| context.endpoints = endpoints)
        }
        ConfigCommand::Nodes { nodes } => edit_context(globals, |context| context.nodes = nodes),
        ConfigCommand::New(args) => crate::config_new::run(args, globals),
    }
}

fn load(globals: &Globals) -> anyhow::Result<ClientConfig> {
    ClientConfig::load(&globals.config_path)
        .with_context(|| format!("load client config {}", globals.config_path.display()))
        .or_usage()
}

fn save(config: &ClientConfig, globals: &Globals) -> anyhow::Result<()> {
    config
        .save(&globals.config_path)
        .with_context(|| format!("save client config {}", globals.config_path.display()))
}

fn context_names(config: &ClientConfig) -> String {
    let names: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn edit_context(
    globals: &Globals,
    edit: impl FnOnce(&mut basalt_config::client::Context),
) -> anyhow::Result<()> {
    let mut config = load(globals)?;
    let name = match &globals.context {
        Some(name) => name.clone(),
        None => config.current().map(|(name, _)| name.to_owned())?,
    };
    let Some(context) = config.contexts.get_mut(&name) else {
        bail!("no context {name:?}; known: {}", context_names(&config));
    };
    edit(context);
    save(&config, globals)
}

/// The context named by `--context`, else the current one.
pub(crate) fn select_context<'a>(
    config: &'a ClientConfig,
    name: Option<&'a str>,
) -> anyhow::Result<(&'a str, &'a Context)> {
    match name {
        Some(name) => {
            let context = config.contexts.get(name).with_context(|| {
                format!("no context {name:?}; known: {}", context_names(config))
            })?;
            Ok((name, context))
        }
        None => Ok(config.current()?),
    }
}

/// What `config info` shows.
#[derive(Debug, Serialize)]
struct ContextInfo {
    context: String,
    endpoints: Vec<String>,
    nodes: Vec<String>,
    common_name: Option<String>,
    serial: String,
    roles: Vec<String>,
    not_after: String,
    expires_in: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

fn context_info(config: &ClientConfig, name: Option<&str>) -> anyhow::Result<ContextInfo> {
    let (name, context) = select_context(config, name)?;
    let crt = context
        .crt
        .as_ref()
        .with_context(|| format!("context {name:?} has no client certificate (crt)"))?;
    let pem = crt
        .as_str()
        .with_context(|| format!("context {name:?}: crt"))?;
    let identity = Identity::from_pem(pem)
        .with_context(|| format!("context {name:?}: read the client certificate"))?;

    let now = OffsetDateTime::now_utc();
    let remaining = identity.not_after - now;
    let warning = if remaining.is_negative() {
        Some(format!(
            "the client certificate of context {name:?} expired {} ago; generate a new one",
            duration::human(-remaining)
        ))
    } else if remaining.whole_days() < EXPIRY_WARNING_DAYS {
        Some(format!(
            "the client certificate of context {name:?} expires in {}",
            duration::human(remaining)
        ))
    } else {
        None
    };
    Ok(ContextInfo {
        context: name.to_owned(),
        endpoints: context.endpoints.clone(),
        nodes: context.nodes.clone(),
        common_name: identity.common_name.clone(),
        serial: identity.serial.clone(),
        roles: identity.roles.strings(),
        not_after: identity
            .not_after
            .format(&Rfc3339)
            .unwrap_or_else(|_| identity.not_after.to_string()),
        expires_in: if remaining.is_negative() {
            "expired".to_owned()
        } else {
            duration::human(remaining)
        },
        warning,
    })
}

impl Render for ContextInfo {
    fn headers(&self) -> Vec<&'static str> {
        vec!["FIELD", "VALUE"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let or_none = |list: &[String]| {
            if list.is_empty() {
                "(none)".to_owned()
            } else {
                list.join(", ")
            }
        };
        vec![
            vec!["Context".into(), self.context.clone()],
            vec!["Endpoints".into(), or_none(&self.endpoints)],
            vec!["Nodes".into(), or_none(&self.nodes)],
            vec![
                "Common name".into(),
                self.common_name.clone().unwrap_or_else(|| "(none)".into()),
            ],
            vec!["Serial".into(), self.serial.clone()],
            vec!["Roles".into(), or_none(&self.roles)],
            vec![
                "Certificate expires".into(),
                format!("{} ({})", self.not_after, self.expires_in),
            ],
        ]
    }
}

/// What `config contexts` shows.
#[derive(Debug, Serialize)]
struct ContextList {
    current: String,
    contexts: Vec<ContextRow>,
}

#[derive(Debug, Serialize)]
struct ContextRow {
    name: String,
    current: bool,
    endpoints: Vec<String>,
    nodes: Vec<String>,
}

impl From<&ClientConfig> for ContextList {
    fn from(config: &ClientConfig) -> Self {
        let contexts = config
            .contexts
            .iter()
            .map(|(name, context)| ContextRow {
                name: name.clone(),
                current: *name == config.context,
                endpoints: context.endpoints.clone(),
                nodes: context.nodes.clone(),
            })
            .collect();
        Self {
            current: config.context.clone(),
            contexts,
        }
    }
}

impl Render for ContextList {
    fn headers(&self) -> Vec<&'static str> {
        vec!["CURRENT", "NAME", "ENDPOINTS", "NODES"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.contexts
            .iter()
            .map(|row| {
                vec![
                    if row.current { "*" } else { "" }.to_owned(),
                    row.name.clone(),
                    row.endpoints.join(","),
                    row.nodes.join(","),
                ]
            })
            .collect()
    }
}
