//! `basaltctl config new FILE --roles … --cert-ttl …`: ask a control-plane node for a new
//! client certificate (`GenerateClientConfiguration`) and save the client config it returns,
//! as `talosctl config new` does.
//!
//! Unknown roles are refused here, before anything is sent (the server keeps them, as Talos's
//! does). The node returns the context with no endpoints; they are filled in from the current
//! context (or `-e`). The file is written atomically with mode 0600 and is never overwritten
//! without `--force`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use basalt_api::machine::GenerateClientConfigurationRequest;
use basalt_authz::RoleSet;
use basalt_config::ClientConfig;
use basalt_config::client::CLIENT_CONFIG_MODE;
use basalt_config::fs::{Overwrite, ensure_private_dir, write_atomic};
use basalt_pki::Identity;
use clap::Args;

use crate::Globals;
use crate::config_cmd::select_context;
use crate::connect::{TargetArgs, connect, runtime};
use crate::usage::OrUsage as _;

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// Where to write the new client config.
    file: PathBuf,
    /// The roles of the new certificate (comma-separated), e.g. os:reader or os:operator.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "os:admin",
        value_name = "ROLES"
    )]
    roles: Vec<String>,
    /// The certificate's lifetime (e.g. 8760h, 30d).
    #[arg(
        long = "cert-ttl",
        alias = "crt-ttl",
        value_name = "DURATION",
        default_value = "8760h",
        value_parser = crate::duration::parse
    )]
    cert_ttl: Duration,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn run(args: NewArgs, globals: &Globals) -> anyhow::Result<()> {
    let roles = RoleSet::parse(&args.roles);
    let unknown: Vec<&str> = roles.unknown().collect();
    if !unknown.is_empty() {
        bail!(
            "unknown roles: {} (known: os:admin, os:operator, os:reader, os:etcd:backup, \
             os:image:verifier, os:meta:writer)",
            unknown.join(", ")
        );
    }
    if roles.is_empty() {
        bail!("--roles must name at least one role");
    }
    if !args.force && std::fs::symlink_metadata(&args.file).is_ok() {
        bail!("{} exists; use --force to replace it", args.file.display());
    }
    if args.target.nodes.len() > 1 {
        bail!("config new asks exactly one node; give at most one --nodes value");
    }

    // The endpoints the new context gets: the same the caller reached the node through.
    let current = ClientConfig::load(&globals.config_path)
        .with_context(|| format!("load client config {}", globals.config_path.display()))
        .or_usage()?;
    let (_, context) = select_context(&current, globals.context.as_deref())?;
    let endpoints = if args.target.endpoints.is_empty() {
        context.endpoints.clone()
    } else {
        args.target.endpoints.clone()
    };

    let request = GenerateClientConfigurationRequest {
        roles: roles.strings(),
        crt_ttl: Some(prost_types::Duration {
            seconds: i64::try_from(args.cert_ttl.as_secs()).context("--cert-ttl is too long")?,
            nanos: 0,
        }),
    };
    let mut target = args.target.clone();
    if target.nodes.is_empty() {
        // Only the first default node: the certificate is the same whichever node signs it.
        target.nodes = context.nodes.iter().take(1).cloned().collect();
    }
    let results = runtime()?.block_on(async {
        let client = connect(globals, &target).await?;
        anyhow::Ok(
            client
                .each_node(request, |client, request| async move {
                    client
                        .machine()
                        .generate_client_configuration(request)
                        .await
                })
                .await,
        )
    })?;
    let Some(reply) = results.into_iter().next() else {
        bail!("no node to ask");
    };
    let response = reply.result.map_err(|status| {
        anyhow::anyhow!(
            "node {}: {:?}: {}",
            reply.node,
            status.code(),
            status.message()
        )
    })?;
    let Some(generated) = response.messages.into_iter().next() else {
        bail!("node {}: the node sent an empty reply", reply.node);
    };
    if let Some(metadata) = generated.metadata.as_ref().filter(|m| !m.error.is_empty()) {
        bail!("node {}: {}", reply.node, metadata.error);
    }

    let text = std::str::from_utf8(&generated.talosconfig)
        .context("the node's client config is not UTF-8")?;
    let mut config =
        ClientConfig::from_yaml(text).context("the node's client config does not parse")?;
    let name = config.context.clone();
    let new_context = config
        .context_mut(&name)
        .with_context(|| format!("the node's client config has no context {name:?}"))?;
    new_context.endpoints = endpoints;
    let yaml = config.to_yaml().context("render the client config")?;

    if let Some(dir) = args.file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        ensure_private_dir(dir)?;
    }
    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    };
    write_atomic(&args.file, yaml.as_bytes(), CLIENT_CONFIG_MODE, overwrite)
        .with_context(|| format!("write {}", args.file.display()))?;

    let expires = std::str::from_utf8(&generated.crt)
        .ok()
        .and_then(|pem| Identity::from_pem(pem).ok())
        .map(|identity| format!(", valid until {}", identity.not_after.date()))
        .unwrap_or_default();
    eprintln!(
        "wrote {} (context {name:?}, roles {}{expires})",
        args.file.display(),
        roles
    );
    Ok(())
}
