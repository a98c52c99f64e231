//! From the client config (plus `-e/--endpoints` and `-n/--nodes`) to a connected
//! [`basalt_client::Client`].

use std::time::Duration;

use anyhow::Context as _;
use basalt_client::{Client, ConnectOptions, Target, parse_endpoints};
use basalt_config::ClientConfig;
use clap::Args;

use crate::Globals;
use crate::config_cmd::select_context;
use crate::usage::OrUsage as _;

/// Deadline of each call made by the node commands.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `-e/--endpoints` and `-n/--nodes`, for every command that talks to nodes.
#[derive(Debug, Clone, Args)]
pub(crate) struct TargetArgs {
    /// apid endpoints to dial (host or host:port, comma-separated), instead of the context's.
    #[arg(short = 'e', long, value_delimiter = ',', value_name = "HOST[:PORT]", value_parser = parse_endpoint)]
    pub(crate) endpoints: Vec<String>,
    /// Nodes to run the command on (comma-separated), instead of the context's; without any,
    /// the endpoint itself answers.
    #[arg(short = 'n', long, value_delimiter = ',', value_name = "NODE", value_parser = parse_node)]
    pub(crate) nodes: Vec<String>,
    /// How many nodes are called at once when several are targeted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = basalt_client::DEFAULT_CONCURRENCY,
        value_parser = parse_parallel
    )]
    pub(crate) parallel: usize,
}

/// An endpoint as `-e` and `config endpoints` take it, checked when it is given: a bad one
/// saved in a context would fail every later command.
pub(crate) fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    text.parse::<basalt_client::ApidEndpoint>()
        .map_err(|err| err.to_string())?;
    Ok(text.to_owned())
}

/// A node as `-n` and `config nodes` take it: an empty one names no node (apid refuses it as
/// an invalid target).
pub(crate) fn parse_node(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty node name; name a node by IP address or host name".to_owned());
    }
    Ok(text.to_owned())
}

/// `--parallel`: at least 1 (0 would never call anything), at most [`MAX_PARALLEL`].
fn parse_parallel(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_PARALLEL).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_PARALLEL}")),
    }
}

/// Upper bound of `--parallel`: each call in flight is one HTTP/2 stream on the endpoint's
/// one connection, and apid caps concurrent streams per connection (256).
const MAX_PARALLEL: usize = 100;

/// A runtime for one command: the CLI makes a handful of calls, one thread is plenty.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// The selected context with the flags applied, connected; every call is bounded by
/// [`REQUEST_TIMEOUT`].
pub(crate) async fn connect(globals: &Globals, args: &TargetArgs) -> anyhow::Result<Client> {
    connect_with_timeout(globals, args, Some(REQUEST_TIMEOUT)).await
}

/// The selected context with the flags applied, not connected yet (e.g. to confirm a
/// destructive verb on its nodes first).
pub(crate) fn target(globals: &Globals, args: &TargetArgs) -> anyhow::Result<Target> {
    local_target(globals, args).or_usage()
}

/// [`target`], before its errors are marked as the caller's: everything here is local input.
fn local_target(globals: &Globals, args: &TargetArgs) -> anyhow::Result<Target> {
    let config = ClientConfig::load(&globals.config_path)
        .with_context(|| format!("load client config {}", globals.config_path.display()))?;
    let (name, context) = select_context(&config, globals.context.as_deref())?;
    let mut target = Target::from_context(context).with_context(|| format!("context {name:?}"))?;
    if !args.endpoints.is_empty() {
        target = target.with_endpoints(parse_endpoints(&args.endpoints)?)?;
    }
    if !args.nodes.is_empty() {
        target = target.with_nodes(args.nodes.clone());
    }
    Ok(target)
}

/// Like [`connect`], with another per-call deadline (`None`: unbounded, for streams that
/// follow a node for as long as the user wants).
pub(crate) async fn connect_with_timeout(
    globals: &Globals,
    args: &TargetArgs,
    request_timeout: Option<Duration>,
) -> anyhow::Result<Client> {
    let target = target(globals, args)?;
    let options = ConnectOptions {
        request_timeout,
        ..ConnectOptions::default()
    };
    let client = Client::connect(&target, &options)
        .await
        .context("connect to apid")?;
    Ok(client.with_concurrency(args.parallel))
}
