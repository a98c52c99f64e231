//! `basaltctl rotate-token`: replaces the trustd join token without a restart.
//!
//! For each target node (the context's or `-n` nodes; without nodes, the endpoint): read its
//! active config (`ConfigService/Get`, admin-only), make a freshly generated token
//! `machine.token`, move the old one to `machine.acceptedTokens` with an expiry
//! (`--keep-old-for`, default 24 h; retired entries that already expired are dropped) and apply
//! the result with ApplyConfiguration `NO_REBOOT`. machined rewrites trustd's config and trustd
//! reloads it: new workers join with the new token, and the old one keeps working until its
//! expiry. Every node gets the same new token. The new token is printed on stdout.
//!
//! `--dry-run` reads the configs and asks each node for a dry-run apply (the node validates the
//! change and nothing is stored); it prints the plan, not the token.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use basalt_api::basalt::v1::GetRequest;
use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::machine::ApplyConfigurationRequest;
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_client::{Client, targeted_request};
use basalt_config::machine::RawMachineToken;
use basalt_config::{AcceptedToken, MachineConfig, Token, generate_token};
use clap::Args;

use crate::Globals;
use crate::connect::{TargetArgs, connect, runtime};
use crate::duration;

/// How long the old token stays accepted when `--keep-old-for` is not given.
const DEFAULT_KEEP_OLD_FOR: Duration = Duration::from_secs(24 * 3600);

/// The largest config reply accepted (a config with its services fits easily).
const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

#[derive(Debug, Args)]
pub(crate) struct RotateTokenArgs {
    /// How long the old token stays accepted (e.g. 30m, 24h; default 24h); 0s refuses it at
    /// once (a leaked token).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_or_zero)]
    keep_old_for: Option<Duration>,
    /// Validate the change on every node and print the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    target: TargetArgs,
}

pub(crate) fn run(args: RotateTokenArgs, globals: &Globals) -> anyhow::Result<()> {
    runtime()?.block_on(rotate(args, globals))
}

async fn rotate(args: RotateTokenArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = connect(globals, &args.target).await?;
    let keep_old_for = args.keep_old_for.unwrap_or(DEFAULT_KEEP_OLD_FOR);
    let new_token = generate_token().context("generate a token")?;
    let now = SystemTime::now();
    let expires = now + keep_old_for;

    // Every config is read and rebuilt before anything is applied, so a node that cannot be
    // read or whose config does not validate stops the rotation before it starts.
    let mut plans = Vec::new();
    for (name, node) in client.targets() {
        let current = read_config(&client, node.as_deref())
            .await
            .with_context(|| format!("node {name}"))?;
        let next = rotated(&current, &new_token, expires, now)
            .with_context(|| format!("node {name}: build the rotated config"))?;
        plans.push((name, node, next));
    }

    for (name, node, next) in &plans {
        let yaml = next
            .to_yaml()
            .with_context(|| format!("node {name}: render the rotated config"))?;
        let request = targeted_request(
            node.as_deref(),
            ApplyConfigurationRequest {
                data: yaml.into_bytes(),
                mode: Mode::NoReboot as i32,
                dry_run: args.dry_run,
                try_mode_timeout: None,
            },
        )?;
        let reply = client
            .machine()
            .apply_configuration(request)
            .await
            .map_err(|status| {
                anyhow::anyhow!("{}: {}", status.code().description(), status.message())
            })
            .with_context(|| format!("node {name}: ApplyConfiguration"))?
            .into_inner();
        let mode = reply
            .messages
            .first()
            .and_then(|m| Mode::try_from(m.mode).ok())
            .map_or("?", |m| m.as_str_name());
        eprintln!(
            "{name}: {} (mode {mode})",
            if args.dry_run {
                "the rotated config validates"
            } else {
                "new token applied"
            }
        );
    }
    let until = time::OffsetDateTime::from(expires);
    if args.dry_run {
        eprintln!(
            "dry run: {} node(s) would get a new machine.token; the old one would stay accepted \
             until {until}",
            plans.len()
        );
        return Ok(());
    }
    eprintln!(
        "The old token stays accepted until {until}; give the new one to nodes that join from now on."
    );
    println!("{}", new_token.as_str());
    Ok(())
}

/// `current` with `new_token` as `machine.token` and its old token retired until `expires`;
/// retired tokens already expired at `now` are dropped, and the new token is never also
/// listed as retired.
fn rotated(
    current: &MachineConfig,
    new_token: &Token,
    expires: SystemTime,
    now: SystemTime,
) -> anyhow::Result<MachineConfig> {
    if current.token() == new_token {
        bail!("the generated token is already the node's token");
    }
    let mut raw = current.to_raw();
    raw.machine.token = Some(new_token.as_str().to_owned());
    let retired = AcceptedToken {
        token: current.token().clone(),
        expires: Some(expires),
    };
    raw.machine.accepted_tokens = std::iter::once(retired)
        .chain(
            current
                .accepted_tokens()
                .iter()
                .filter(|t| t.expires.is_none_or(|at| at > now))
                .filter(|t| t.token != *new_token && t.token != *current.token())
                .cloned(),
        )
        .map(|t| RawMachineToken::from_accepted(&t))
        .collect();
    MachineConfig::try_from(raw).context("the rotated config does not validate")
}

/// The node's active machine config.
async fn read_config(client: &Client, node: Option<&str>) -> anyhow::Result<MachineConfig> {
    let request = targeted_request(node, GetRequest { version: 0 })?;
    let reply = ConfigServiceClient::new(client.channel())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .get(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}: {}", status.code().description(), status.message()))
        .context("ConfigService/Get")?
        .into_inner();
    crate::rotate_ca::active_config(reply)
}

#[cfg(test)]
mod tests {
    use basalt_config::{BundleCerts, CertAndKey, MachineType, SecretsBundle};
    use basalt_pki::{CaOptions, CertificateAuthority};

    use super::*;

    fn config() -> MachineConfig {
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("CA");
        let os = CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
        let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
        MachineConfig::generate(&bundle, "dev", "127.0.0.1", MachineType::ControlPlane)
            .expect("config")
    }

    #[test]
    fn the_old_token_is_retired_with_its_expiry_and_stale_ones_dropped() {
        let now = SystemTime::now();
        let first = config();
        let second_token = generate_token().expect("token");
        let expires = now + Duration::from_secs(60);
        let second = rotated(&first, &second_token, expires, now).expect("rotate");
        assert_eq!(second.token(), &second_token);
        assert_eq!(second.accepted_tokens().len(), 1);
        assert_eq!(&second.accepted_tokens()[0].token, first.token());
        // RFC 3339 keeps whole seconds at least; the expiry round-trips through YAML.
        let kept = second.accepted_tokens()[0].expires.expect("expiry");
        let drift = kept
            .duration_since(expires)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .expect("drift");
        assert!(drift < Duration::from_secs(1), "{drift:?}");

        // A second rotation long after the first expiry drops it.
        let later = expires + Duration::from_secs(1);
        let third_token = generate_token().expect("token");
        let third = rotated(
            &second,
            &third_token,
            later + Duration::from_secs(60),
            later,
        )
        .expect("rotate");
        let retired: Vec<&Token> = third.accepted_tokens().iter().map(|t| &t.token).collect();
        assert_eq!(retired, vec![second.token()]);
        // The YAML round-trip keeps it valid.
        let yaml = third.to_yaml().expect("yaml");
        assert_eq!(MachineConfig::from_yaml(&yaml).expect("reparse"), third);
    }

    #[test]
    fn rotating_to_the_same_token_is_refused() {
        let now = SystemTime::now();
        let first = config();
        let err = rotated(&first, &first.token().clone(), now, now).unwrap_err();
        assert!(err.to_string().contains("already"), "{err}");
    }
}
