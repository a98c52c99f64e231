//! From the client config (plus `-e/--endpoints` and `-n/--nodes`) to a connected
//! [`basalt_client::Client`].

use std::time::Duration;

use anyhow::Context as _;
use basalt_client::{Client, ConnectOptions, Target, parse_endpoints};
use basalt_config::ClientConfig;
use clap::Args;

use crate::Globals;
use crate::config_cmd::select_context;

/// Deadline of each call made by the node commands.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `-e/--endpoints` and `-n/--nodes`, for every command that talks to nodes.
#[derive(Debug, Clone, Args)]
pub(crate) struct TargetArgs {
    /// apid endpoints to dial (host or host:port, comma-separated), instead of the context's.
    #[arg(short = 'e', long, value_delimiter = ',', value_name = "HOST[:PORT]")]
    pub(crate) endpoints: Vec<String>,
    /// Nodes to run the command on (comma-separated), instead of the context's; without any,
    /// the endpoint itself answers.
    #[arg(short = 'n', long, value_delimiter = ',', value_name = "NODE")]
    pub(crate) nodes: Vec<String>,
}

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

/// Like [`connect`], with another per-call deadline (`None`: unbounded, for streams that
/// follow a node for as long as the user wants).
pub(crate) async fn connect_with_timeout(
    globals: &Globals,
    args: &TargetArgs,
    request_timeout: Option<Duration>,
) -> anyhow::Result<Client> {
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
    let options = ConnectOptions {
        request_timeout,
        ..ConnectOptions::default()
    };
    Client::connect(&target, &options)
        .await
        .context("connect to apid")
}
