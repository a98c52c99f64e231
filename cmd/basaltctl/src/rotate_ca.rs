//! `basaltctl rotate-ca`: replaces the OS CA without downtime, the Talos way (talos#8440: add
//! the new CA as accepted, switch issuing to it, then drop the old one), driven entirely from
//! the client by applying machine configs (mode NO_REBOOT).
//!
//! # Steps
//!
//! 0. **Preflight** (changes nothing): the caller's certificate must hold `os:admin`; every
//!    node is reached and its active config read (`ConfigService/Get`, admin-only: it holds
//!    the CA key); all nodes must share one `machine.ca` and at least one must be a control
//!    plane (the only place the new CA key is kept). The new CA is generated and every
//!    config of every step is built and validated now, so a bad input stops here.
//! 1. **Accept**: every node gets the new CA certificate in `machine.acceptedCAs`; then wait
//!    until every node accepts a client certificate issued by the new CA.
//! 2. **Client config**: the selected context gets that new client certificate (same CN and
//!    roles as the caller's) and a CA bundle of old + new; with `--with-secrets` the bundle's
//!    `certs.os` becomes the new CA, so its key is saved before any node signs with it.
//! 3. **Switch issuing**: control planes get `machine.ca` = the new CA with its key; once their
//!    apid and trustd certificates come from it (so trustd signs with it), workers get its
//!    certificate only, and ask trustd for a new one. The old CA moves to
//!    `machine.acceptedCAs`, so old-CA clients keep working.
//! 4. **Wait**: until every node serves an apid certificate issued by the new CA (checked with
//!    a client that trusts only the new CA, and by the node's certificate status).
//! 5. **Drop**: the old CA leaves `machine.acceptedCAs` everywhere; the context then trusts
//!    only the new CA. From here a client holding an old-CA certificate is refused.
//!
//! Nodes are the context's (or `-n`) nodes, addressed through its endpoints; without nodes,
//! each endpoint is a node of its own. `--dry-run` runs the preflight and prints the plan.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use basalt_api::basalt::v1::certificate_service_client::CertificateServiceClient;
use basalt_api::basalt::v1::config_service_client::ConfigServiceClient;
use basalt_api::basalt::v1::{
    CertificateStatus, CertificateStatusRequest, GetRequest, GetResponse,
};
use basalt_api::machine::ApplyConfigurationRequest;
use basalt_api::machine::apply_configuration_request::Mode;
use basalt_authz::Role;
use basalt_client::{ApidEndpoint, Client, ConnectOptions, Credentials, Target, parse_endpoints};
use basalt_config::client::Context;
use basalt_config::fs::{Overwrite, write_atomic};
use basalt_config::machine::{RawCa, RawCertificate};
use basalt_config::{Base64Pem, CertAndKey, ClientConfig, MachineConfig, MachineType, secrets_age};
use basalt_pki::{
    CLOCK_SKEW_ALLOWANCE, CaOptions, CertificateAuthority, ClientCertRequest, Identity,
    KeyAlgorithm,
};
use clap::{Args, ValueEnum};
use tonic::{Request, Response, Status};

use crate::Globals;
use crate::config_cmd::select_context;
use crate::connect::{TargetArgs, runtime};
use crate::duration;
use crate::usage::OrUsage as _;

/// Deadline of each call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit of each connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval of the bounded waits.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Shortest lifetime given to the new client certificate (when the caller's is shorter).
const MIN_CLIENT_TTL: Duration = Duration::from_secs(3600);
/// Mode of the secrets bundle written with `--with-secrets`.
const PRIVATE_FILE_MODE: u32 = 0o600;

/// `rotate-ca`.
#[derive(Debug, Args)]
pub(crate) struct RotateCaArgs {
    /// Print the plan (nodes, steps, old and new CA fingerprints) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Key type of the new CA (default: the current CA's).
    #[arg(long, value_enum, value_name = "ALG")]
    algorithm: Option<CaAlgorithm>,
    /// How long to wait for every node to take up the new CA, at each waiting step.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "2m")]
    wait: Duration,
    /// Also save the new CA (certificate and key) as `certs.os` of this secrets bundle, before
    /// any node signs with it.
    #[arg(long, value_name = "FILE")]
    with_secrets: Option<PathBuf>,
    /// age identity file (age-keygen format) that decrypts an encrypted --with-secrets bundle;
    /// the bundle is saved encrypted again, to this file's identities.
    #[arg(long, value_name = "FILE", requires = "with_secrets")]
    identity: Option<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
}

/// `--algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CaAlgorithm {
    Ed25519,
    #[value(alias = "ecdsa-p256")]
    P256,
}

impl From<CaAlgorithm> for KeyAlgorithm {
    fn from(algorithm: CaAlgorithm) -> Self {
        match algorithm {
            CaAlgorithm::Ed25519 => KeyAlgorithm::Ed25519,
            CaAlgorithm::P256 => KeyAlgorithm::EcdsaP256,
        }
    }
}

pub(crate) fn run(args: RotateCaArgs, globals: &Globals) -> anyhow::Result<()> {
    runtime()?.block_on(rotate(args, globals))
}

async fn rotate(args: RotateCaArgs, globals: &Globals) -> anyhow::Result<()> {
    let mut client_config = ClientConfig::load(&globals.config_path)
        .with_context(|| format!("load client config {}", globals.config_path.display()))
        .or_usage()?;
    let (context_name, context) = select_context(&client_config, globals.context.as_deref())?;
    let (context_name, context) = (context_name.to_owned(), context.clone());
    let old_credentials =
        Credentials::from_context(&context).with_context(|| format!("context {context_name:?}"))?;
    require_admin(old_credentials.identity(), &context_name)?;
    let nodes = Nodes::from_context(&context, &args.target)?;
    if let Some(path) = &args.with_secrets {
        // Found unreadable now rather than after the nodes changed.
        secrets_age::load_bundle_to_rewrite(path, args.identity.as_deref())
            .with_context(|| {
                format!(
                    "load secrets bundle {}; nothing was changed",
                    path.display()
                )
            })
            .or_usage()?;
    }

    // Preflight: nothing below changes anything until every node has answered.
    eprintln!(
        "Reading the machine config of {} node(s)",
        nodes.names().len()
    );
    let old = nodes.connect(&old_credentials).await.map_err(|failures| {
        unreachable_error(&failures).context("cannot reach every node; nothing was changed")
    })?;
    let mut current = Vec::new();
    let mut failures = Vec::new();
    for node in &old {
        match read_config(node).await {
            Ok(config) => current.push((node.name.clone(), config)),
            Err(err) => failures.push((node.name.clone(), format!("{err:#}"))),
        }
    }
    if !failures.is_empty() {
        return Err(unreachable_error(&failures)
            .context("cannot read every node's machine config; nothing was changed"));
    }
    let plan = Plan::new(
        current,
        args.algorithm.map(KeyAlgorithm::from),
        old_credentials.identity(),
    )?;
    let steps = plan.steps(&context_name);
    if args.dry_run {
        print!("{}", plan.describe(&context_name, &steps, true));
        return Ok(());
    }
    eprint!("{}", plan.describe(&context_name, &steps, false));

    let new_client = plan.issue_client_cert(old_credentials.identity())?;
    let window_ca = format!(
        "{}{}",
        ensure_newline(context.ca.as_ref().map(pem_text).unwrap_or_default()),
        plan.new_ca.cert_pem()
    );
    let window_credentials = Credentials::from_pem(
        window_ca.clone(),
        new_client.cert_pem.clone(),
        new_client.key_pem.clone(),
    )
    .context("the new client credentials")?;
    let final_credentials = Credentials::from_pem(
        plan.new_ca.cert_pem().to_owned(),
        new_client.cert_pem.clone(),
        new_client.key_pem.clone(),
    )
    .context("the new client credentials")?;

    // 1. Accept the new CA everywhere.
    eprintln!("[1/5] {}", steps[0]);
    apply_all(&old, &plan, |node| &node.accepting)
        .await
        .context("step 1 (accept the new CA) failed; the old CA still works everywhere")?;
    wait_for(
        "every node accepts a client certificate from the new CA",
        args.wait,
        || async {
            let conns = nodes
                .connect(&window_credentials)
                .await
                .map_err(|failures| describe_failures(&failures))?;
            for node in &conns {
                certificate_status(node)
                    .await
                    .map_err(|err| format!("{}: {err:#}", node.name))?;
            }
            Ok(())
        },
    )
    .await
    .context("step 1 (accept the new CA) did not complete; the old CA still works everywhere")?;

    // 2. The new client credentials are saved before any node signs with the new CA.
    eprintln!("[2/5] {}", steps[1]);
    if let Some(path) = &args.with_secrets {
        let encrypted = save_ca_in_bundle(path, args.identity.as_deref(), &plan.new_ca)?;
        let form = if encrypted { " (age-encrypted)" } else { "" };
        eprintln!("      saved the new CA in {}{form}", path.display());
    }
    save_context(
        &mut client_config,
        globals,
        &context_name,
        &window_ca,
        &new_client,
    )?;
    eprintln!(
        "      wrote context {context_name:?} to {}",
        globals.config_path.display()
    );

    // 3. Switch issuing: control planes first, so trustd signs with the new CA before a worker
    //    asks it for a new certificate.
    eprintln!("[3/5] {}", steps[2]);
    let window = nodes
        .connect(&window_credentials)
        .await
        .map_err(|failures| unreachable_error(&failures))
        .context("step 3 (switch issuing): cannot reach every node with the new client config")?;
    let (control_planes, workers): (Vec<&NodeConn>, Vec<&NodeConn>) =
        window.iter().partition(|node| {
            plan.node(&node.name).map(|n| n.machine_type) == Some(MachineType::ControlPlane)
        });
    for node in &control_planes {
        switch_issuing(node, &plan).await?;
    }
    if !workers.is_empty() {
        // A worker asks a control plane's trustd for its new certificate as soon as its config
        // changes: trustd must sign with the new CA by then.
        let new_fingerprint = plan.new_fingerprint.clone();
        wait_for(
            "the control planes' apid and trustd certificates come from the new CA",
            args.wait,
            || async {
                for node in &control_planes {
                    let status = certificate_status(node)
                        .await
                        .map_err(|err| format!("{}: {err:#}", node.name))?;
                    issued_by(&status, &[APID_SERVER, TRUSTD_SERVER], &new_fingerprint)
                        .map_err(|reason| format!("{}: {reason}", node.name))?;
                }
                Ok(())
            },
        )
        .await
        .context("step 3 (switch issuing) did not complete; both CAs are still accepted")?;
    }
    for node in &workers {
        switch_issuing(node, &plan).await?;
    }

    // 4. Wait until every node serves a certificate from the new CA.
    eprintln!("[4/5] {}", steps[3]);
    let new_fingerprint = plan.new_fingerprint.clone();
    wait_for(
        "every node serves an apid certificate issued by the new CA",
        args.wait,
        || async {
            // Connecting with only the new CA trusted proves the endpoint's certificate; the
            // status proves it for nodes reached through an endpoint.
            let conns = nodes
                .connect(&final_credentials)
                .await
                .map_err(|failures| describe_failures(&failures))?;
            for node in &conns {
                let status = certificate_status(node)
                    .await
                    .map_err(|err| format!("{}: {err:#}", node.name))?;
                issued_by(&status, &[APID_SERVER], &new_fingerprint)
                    .map_err(|reason| format!("{}: {reason}", node.name))?;
            }
            Ok(())
        },
    )
    .await
    .context(
        "step 4 (wait for the new certificates) did not complete; both CAs are still accepted",
    )?;

    // 5. Drop the old CA.
    eprintln!("[5/5] {}", steps[4]);
    let last = nodes
        .connect(&final_credentials)
        .await
        .map_err(|failures| unreachable_error(&failures))
        .context("step 5 (drop the old CA): cannot reach every node")?;
    apply_all(&last, &plan, |node| &node.finished)
        .await
        .context("step 5 (drop the old CA) failed; the old CA is still accepted there")?;
    save_context(
        &mut client_config,
        globals,
        &context_name,
        plan.new_ca.cert_pem(),
        &new_client,
    )?;
    eprintln!(
        "      wrote context {context_name:?} to {} (trusts only the new CA)",
        globals.config_path.display()
    );
    println!(
        "CA rotated: old sha256:{} -> new sha256:{}",
        plan.old_fingerprint, plan.new_fingerprint
    );
    Ok(())
}

// === planning (pure, unit-tested) ===

/// One node's configs for every step.
#[derive(Debug)]
struct NodePlan {
    name: String,
    machine_type: MachineType,
    /// Step 1: the new CA added to `acceptedCAs`.
    accepting: MachineConfig,
    /// Step 3: issuing with the new CA, the old one accepted.
    switched: MachineConfig,
    /// Step 5: the old CA gone.
    finished: MachineConfig,
}

/// Everything decided before the first change.
#[derive(Debug)]
struct Plan {
    nodes: Vec<NodePlan>,
    old_fingerprint: String,
    old_algorithm: KeyAlgorithm,
    new_ca: CertificateAuthority,
    new_fingerprint: String,
    /// The caller's roles and CN, which the new client certificate repeats.
    client_summary: String,
}

impl Plan {
    /// Checks the nodes' configs, generates the new CA and builds every step's config.
    fn new(
        current: Vec<(String, MachineConfig)>,
        algorithm: Option<KeyAlgorithm>,
        caller: &Identity,
    ) -> anyhow::Result<Self> {
        let Some((_, first)) = current.first() else {
            bail!("no nodes to rotate");
        };
        let old_pem = first.ca_crt().clone();
        let old_fingerprint = fingerprint(&old_pem).context("machine.ca.crt")?;
        for (name, config) in &current {
            let theirs = fingerprint(config.ca_crt())
                .with_context(|| format!("node {name}: machine.ca.crt"))?;
            if theirs != old_fingerprint {
                bail!(
                    "nodes disagree on machine.ca: {} has sha256:{old_fingerprint}, {name} has \
                     sha256:{theirs} (an unfinished rotation?); nothing was changed",
                    current[0].0
                );
            }
        }
        if !current
            .iter()
            .any(|(_, config)| config.machine_type() == MachineType::ControlPlane)
        {
            bail!(
                "none of the nodes is a control plane: the new CA key would be kept nowhere; \
                 include a control-plane node (--nodes/--endpoints); nothing was changed"
            );
        }
        let old_algorithm = KeyAlgorithm::of_certificate_pem(
            old_pem.as_str().context("machine.ca.crt is not text")?,
        )
        .context("the current CA's key type")?;
        let new_ca = CertificateAuthority::generate(&CaOptions {
            algorithm: algorithm.unwrap_or(old_algorithm),
            ..CaOptions::talos_os()
        })
        .context("generate the new CA")?;
        let new_fingerprint = Identity::from_der(new_ca.cert_der())
            .context("read the new CA")?
            .fingerprint;
        let nodes = current
            .into_iter()
            .map(|(name, config)| {
                node_plan(name.clone(), &config, &old_fingerprint, &new_ca)
                    .with_context(|| format!("node {name}: build the rotation configs"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Plan {
            nodes,
            old_fingerprint,
            old_algorithm,
            new_ca,
            new_fingerprint,
            client_summary: format!(
                "CN={}, {}",
                caller.common_name.as_deref().unwrap_or("(none)"),
                caller.roles.strings().join(",")
            ),
        })
    }

    fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// A client certificate from the new CA with the caller's CN and roles and lifetime.
    fn issue_client_cert(&self, caller: &Identity) -> anyhow::Result<basalt_pki::IssuedCert> {
        let lifetime = (caller.not_after - caller.not_before)
            .try_into()
            .unwrap_or(MIN_CLIENT_TTL);
        let ttl = lifetime
            .checked_sub(CLOCK_SKEW_ALLOWANCE)
            .unwrap_or(MIN_CLIENT_TTL)
            .max(MIN_CLIENT_TTL);
        self.new_ca
            .issue_client(&ClientCertRequest {
                common_name: caller.common_name.clone(),
                roles: caller.roles.clone(),
                ttl,
            })
            .context("issue the new client certificate")
    }

    /// The five steps, in words.
    fn steps(&self, context: &str) -> [String; 5] {
        [
            "add the new CA to machine.acceptedCAs on every node (NO_REBOOT), wait until every \
             node accepts it"
                .to_owned(),
            format!(
                "issue a client certificate ({}) from the new CA; write it to context \
                 {context:?}, trusting the old and the new CA",
                self.client_summary
            ),
            "switch issuing: control planes get machine.ca = the new CA (with its key), workers \
             its certificate; the old CA moves to machine.acceptedCAs"
                .to_owned(),
            "wait until every node serves an apid certificate issued by the new CA".to_owned(),
            format!(
                "drop the old CA from machine.acceptedCAs on every node; context {context:?} \
                 trusts only the new CA (old-CA clients are refused from here)"
            ),
        ]
    }

    /// The plan as printed (stdout for `--dry-run`, stderr before a real run).
    fn describe(&self, context: &str, steps: &[String; 5], dry_run: bool) -> String {
        let mut text = String::new();
        text.push_str(if dry_run {
            "rotate-ca plan (dry run: nothing is changed)\n"
        } else {
            "rotate-ca plan\n"
        });
        text.push_str(&format!("  context: {context}\n"));
        text.push_str(&format!(
            "  old CA:  sha256:{} ({})\n",
            self.old_fingerprint,
            self.old_algorithm.as_str()
        ));
        text.push_str(&format!(
            "  new CA:  sha256:{} ({}{})\n",
            self.new_fingerprint,
            self.new_ca.algorithm().as_str(),
            if dry_run {
                ", generated for this plan and discarded"
            } else {
                ""
            }
        ));
        text.push_str("  nodes:\n");
        let width = self.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for node in &self.nodes {
            text.push_str(&format!(
                "    {:<width$}  {}\n",
                node.name,
                node.machine_type.as_str()
            ));
        }
        text.push_str("  steps:\n");
        for (i, step) in steps.iter().enumerate() {
            text.push_str(&format!("    {}. {step}\n", i + 1));
        }
        text
    }
}

/// The three configs of one node. Workers never get a CA key.
fn node_plan(
    name: String,
    config: &MachineConfig,
    old_fingerprint: &str,
    new_ca: &CertificateAuthority,
) -> anyhow::Result<NodePlan> {
    let new_crt = Base64Pem::from_pem(new_ca.cert_pem().to_owned());
    let new_fingerprint = fingerprint(&new_crt)?;
    let machine_type = config.machine_type();
    let old_crt = config.ca_crt().clone();

    let mut raw = config.to_raw();
    let others: Vec<Base64Pem> = config
        .accepted_cas()
        .iter()
        .filter(|crt| {
            fingerprint(crt).is_ok_and(|fp| fp != old_fingerprint && fp != new_fingerprint)
        })
        .cloned()
        .collect();
    let accepted = |list: Vec<Base64Pem>| -> Vec<RawCertificate> {
        list.into_iter()
            .map(|crt| RawCertificate { crt: Some(crt) })
            .collect()
    };

    // Step 1: the old CA keeps issuing; the new one is accepted.
    raw.machine.accepted_cas = accepted(others.iter().cloned().chain([new_crt.clone()]).collect());
    let accepting = MachineConfig::try_from(raw.clone()).context("step 1 config")?;

    // Step 3: the new CA issues; the old one is accepted.
    raw.machine.ca = Some(RawCa {
        crt: Some(new_crt),
        key: (machine_type == MachineType::ControlPlane)
            .then(|| Base64Pem::from_pem(new_ca.key_pem())),
    });
    raw.machine.accepted_cas = accepted(others.iter().cloned().chain([old_crt]).collect());
    let switched = MachineConfig::try_from(raw.clone()).context("step 3 config")?;

    // Step 5: only the new CA (and whatever else was accepted before).
    raw.machine.accepted_cas = accepted(others);
    let finished = MachineConfig::try_from(raw).context("step 5 config")?;

    Ok(NodePlan {
        name,
        machine_type,
        accepting,
        switched,
        finished,
    })
}

/// SHA-256 of a PEM certificate's DER, lower-case hex.
fn fingerprint(pem: &Base64Pem) -> anyhow::Result<String> {
    let text = pem.as_str().context("not text")?;
    Ok(Identity::from_pem(text)
        .context("not a certificate")?
        .fingerprint)
}

/// Refuses callers without `os:admin`: the configs hold the CA key and only admins may apply.
fn require_admin(identity: &Identity, context: &str) -> anyhow::Result<()> {
    if identity.roles.contains(&Role::Admin) {
        return Ok(());
    }
    let held = identity.roles.strings();
    bail!(
        "rotate-ca needs an os:admin client certificate; context {context:?} holds {}; nothing \
         was changed",
        if held.is_empty() {
            "no role".to_owned()
        } else {
            held.join(", ")
        }
    )
}

/// `role` of apid's server certificate in the certificate status.
const APID_SERVER: &str = "apid-server";
/// `role` of trustd's server certificate in the certificate status.
const TRUSTD_SERVER: &str = "trustd-server";

/// Whether the status lists a certificate for each of `roles`, each issued by the CA with
/// `fingerprint`.
fn issued_by(status: &CertificateStatus, roles: &[&str], fingerprint: &str) -> Result<(), String> {
    for role in roles {
        let cert = status
            .certificates
            .iter()
            .find(|cert| cert.role == *role)
            .ok_or_else(|| format!("no {role} certificate in the node's status"))?;
        if !cert.error.is_empty() {
            return Err(format!("{role} certificate: {}", cert.error));
        }
        if cert.issuer_fingerprint != fingerprint {
            return Err(format!(
                "{role} certificate (serial {}) is not issued by the new CA yet",
                cert.serial
            ));
        }
    }
    Ok(())
}

fn pem_text(pem: &Base64Pem) -> String {
    String::from_utf8_lossy(pem.as_bytes()).into_owned()
}

fn ensure_newline(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

// === talking to nodes ===

/// How nodes are reached.
#[derive(Debug)]
enum Nodes {
    /// Each endpoint is a node, dialed directly.
    Direct(Vec<ApidEndpoint>),
    /// Named nodes, addressed through the endpoints with `node` metadata.
    Routed {
        endpoints: Vec<ApidEndpoint>,
        nodes: Vec<String>,
    },
}

/// A connection that addresses one node.
#[derive(Debug)]
struct NodeConn {
    name: String,
    client: Client,
}

impl Nodes {
    /// `-e`/`-n` when given, else the context's endpoints and nodes.
    fn from_context(context: &Context, args: &TargetArgs) -> anyhow::Result<Self> {
        let endpoints = if args.endpoints.is_empty() {
            &context.endpoints
        } else {
            &args.endpoints
        };
        let endpoints = parse_endpoints(endpoints).context("endpoints")?;
        if endpoints.is_empty() {
            bail!("the context has no endpoints; pass --endpoints");
        }
        let nodes = if args.nodes.is_empty() {
            context.nodes.clone()
        } else {
            args.nodes.clone()
        };
        Ok(if nodes.is_empty() {
            Nodes::Direct(endpoints)
        } else {
            Nodes::Routed { endpoints, nodes }
        })
    }

    fn names(&self) -> Vec<String> {
        match self {
            Nodes::Direct(endpoints) => endpoints.iter().map(ToString::to_string).collect(),
            Nodes::Routed { nodes, .. } => nodes.clone(),
        }
    }

    /// Connects as `credentials`; every node that cannot be reached is listed.
    async fn connect(
        &self,
        credentials: &Credentials,
    ) -> Result<Vec<NodeConn>, Vec<(String, String)>> {
        let options = ConnectOptions {
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: Some(REQUEST_TIMEOUT),
        };
        let dial = |endpoints: Vec<ApidEndpoint>| {
            let options = options.clone();
            async move {
                let target = Target::new(endpoints, credentials.clone())?;
                Client::connect(&target, &options).await
            }
        };
        match self {
            Nodes::Direct(endpoints) => {
                let mut conns = Vec::new();
                let mut failures = Vec::new();
                for endpoint in endpoints {
                    match dial(vec![endpoint.clone()]).await {
                        Ok(client) => conns.push(NodeConn {
                            name: endpoint.to_string(),
                            client,
                        }),
                        Err(err) => failures.push((endpoint.to_string(), err.to_string())),
                    }
                }
                if failures.is_empty() {
                    Ok(conns)
                } else {
                    Err(failures)
                }
            }
            Nodes::Routed { endpoints, nodes } => match dial(endpoints.clone()).await {
                Ok(client) => Ok(nodes
                    .iter()
                    .map(|node| NodeConn {
                        name: node.clone(),
                        client: client.clone().with_nodes(vec![node.clone()]),
                    })
                    .collect()),
                Err(err) => Err(endpoints
                    .iter()
                    .map(|endpoint| (endpoint.to_string(), err.to_string()))
                    .collect()),
            },
        }
    }
}

/// One call on one node (the connection's `node` metadata, if any, is set by `each_node`).
async fn call<M, T, F, Fut>(node: &NodeConn, message: M, rpc: F) -> Result<T, Status>
where
    M: Clone,
    T: Send + 'static,
    F: Fn(Client, Request<M>) -> Fut,
    Fut: Future<Output = Result<Response<T>, Status>> + Send + 'static,
{
    node.client
        .each_node(message, rpc)
        .await
        .into_iter()
        .next()
        .map_or_else(|| Err(Status::internal("no reply")), |reply| reply.result)
}

/// The node's active machine config.
async fn read_config(node: &NodeConn) -> anyhow::Result<MachineConfig> {
    let reply = call(
        node,
        GetRequest { version: 0 },
        |client, request| async move {
            ConfigServiceClient::new(client.channel())
                .get(request)
                .await
        },
    )
    .await
    .map_err(status_error)
    .context("ConfigService/Get")?;
    active_config(reply)
}

/// The machine config in a `ConfigService/Get` reply: its one document, which must carry no
/// per-node error, be UTF-8 and validate. Shared with `rotate-token`.
pub(crate) fn active_config(reply: GetResponse) -> anyhow::Result<MachineConfig> {
    let document = reply
        .messages
        .into_iter()
        .next()
        .context("ConfigService/Get: empty reply")?;
    if let Some(error) = document.metadata.as_ref().filter(|m| !m.error.is_empty()) {
        bail!("ConfigService/Get: {}", error.error);
    }
    let yaml = String::from_utf8(document.data).context("the machine config is not UTF-8")?;
    MachineConfig::from_yaml(&yaml).context("the node's machine config does not validate")
}

/// The node's certificate status.
async fn certificate_status(node: &NodeConn) -> anyhow::Result<CertificateStatus> {
    let reply = call(
        node,
        CertificateStatusRequest {},
        |client, request| async move {
            CertificateServiceClient::new(client.channel())
                .status(request)
                .await
        },
    )
    .await
    .map_err(status_error)
    .context("CertificateService/Status")?;
    let status = reply
        .messages
        .into_iter()
        .next()
        .context("CertificateService/Status: empty reply")?;
    if let Some(error) = status.metadata.as_ref().filter(|m| !m.error.is_empty()) {
        bail!("CertificateService/Status: {}", error.error);
    }
    Ok(status)
}

/// Applies the config `pick` chooses for `node` (NO_REBOOT: a rotation never reboots).
async fn apply_one(
    node: &NodeConn,
    plan: &Plan,
    pick: impl Fn(&NodePlan) -> &MachineConfig,
) -> anyhow::Result<()> {
    let node_plan = plan
        .node(&node.name)
        .with_context(|| format!("node {} is not in the plan", node.name))?;
    let yaml = pick(node_plan)
        .to_yaml()
        .context("render the machine config")?;
    let request = ApplyConfigurationRequest {
        data: yaml.into_bytes(),
        mode: Mode::NoReboot as i32,
        dry_run: false,
        try_mode_timeout: None,
    };
    let reply = call(node, request, |client, request| async move {
        client.machine().apply_configuration(request).await
    })
    .await
    .map_err(status_error)
    .with_context(|| format!("node {}: ApplyConfiguration", node.name))?;
    for message in &reply.messages {
        if let Some(error) = message.metadata.as_ref().filter(|m| !m.error.is_empty()) {
            bail!("node {}: ApplyConfiguration: {}", node.name, error.error);
        }
    }
    eprintln!("      {}: applied", node.name);
    Ok(())
}

/// Step 3 on one node.
async fn switch_issuing(node: &NodeConn, plan: &Plan) -> anyhow::Result<()> {
    apply_one(node, plan, |node| &node.switched)
        .await
        .with_context(|| {
            format!(
                "step 3 (switch issuing) failed on node {}; both CAs are still accepted \
                 everywhere; roll the nodes back with config-rollback",
                node.name
            )
        })
}

/// [`apply_one`] on every node, in order; stops at the first failure.
async fn apply_all(
    nodes: &[NodeConn],
    plan: &Plan,
    pick: impl Fn(&NodePlan) -> &MachineConfig + Copy,
) -> anyhow::Result<()> {
    for node in nodes {
        apply_one(node, plan, pick).await?;
    }
    Ok(())
}

/// Polls `check` until it passes or `patience` is over (then fails with its last reason).
async fn wait_for<F, Fut>(what: &str, patience: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + patience;
    eprintln!("      waiting until {what}");
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(reason) if Instant::now() >= deadline => {
                bail!(
                    "gave up waiting after {} until {what}: {reason}",
                    duration::human(time::Duration::seconds(
                        i64::try_from(patience.as_secs()).unwrap_or(i64::MAX)
                    ))
                );
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// A gRPC status as an error a person can read (code and message).
fn status_error(status: Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn describe_failures(failures: &[(String, String)]) -> String {
    failures
        .iter()
        .map(|(node, err)| format!("{node}: {err}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn unreachable_error(failures: &[(String, String)]) -> anyhow::Error {
    anyhow::anyhow!("{}", describe_failures(failures))
}

// === files ===

/// Replaces the context's CA bundle and client certificate and saves the client config.
fn save_context(
    config: &mut ClientConfig,
    globals: &Globals,
    name: &str,
    ca_pem: &str,
    client: &basalt_pki::IssuedCert,
) -> anyhow::Result<()> {
    let context = config
        .contexts
        .get_mut(name)
        .with_context(|| format!("context {name:?} disappeared from the client config"))?;
    context.ca = Some(Base64Pem::from_pem(ca_pem.to_owned()));
    context.crt = Some(Base64Pem::from_pem(client.cert_pem.clone()));
    context.key = Some(Base64Pem::from_pem(client.key_pem.clone()));
    config
        .save(&globals.config_path)
        .with_context(|| format!("save client config {}", globals.config_path.display()))
}

/// Makes `ca` the bundle's `certs.os`, keeping the file encrypted if it was (replaced
/// atomically, mode 0600). Returns whether it is encrypted.
fn save_ca_in_bundle(
    path: &std::path::Path,
    identity: Option<&std::path::Path>,
    ca: &CertificateAuthority,
) -> anyhow::Result<bool> {
    let (mut bundle, form) = secrets_age::load_bundle_to_rewrite(path, identity)
        .with_context(|| format!("load secrets bundle {}", path.display()))?;
    bundle.certs.os = CertAndKey::from_pem(ca.cert_pem().to_owned(), ca.key_pem());
    let bytes = secrets_age::render_bundle(&bundle, &form).context("render the secrets bundle")?;
    write_atomic(path, &bytes, PRIVATE_FILE_MODE, Overwrite::Allow)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(matches!(form, secrets_age::BundleForm::Encrypted(_)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use age::secrecy::ExposeSecret as _;
    use basalt_authz::RoleSet;
    use basalt_config::{BundleCerts, SecretsBundle};

    use super::*;

    fn ca(algorithm: KeyAlgorithm) -> CertificateAuthority {
        CertificateAuthority::generate(&CaOptions {
            algorithm,
            ..CaOptions::talos_os()
        })
        .expect("ca")
    }

    fn config(ca: &CertificateAuthority, machine_type: MachineType) -> MachineConfig {
        let os = CertAndKey::from_pem(ca.cert_pem().to_owned(), ca.key_pem());
        let bundle = SecretsBundle::new(BundleCerts::os_only(os)).expect("bundle");
        MachineConfig::generate(&bundle, "dev", "127.0.0.1", machine_type).expect("config")
    }

    fn caller(roles: &[&str]) -> Identity {
        let issued = ca(KeyAlgorithm::Ed25519)
            .issue_client(&ClientCertRequest {
                common_name: Some("alice".to_owned()),
                roles: RoleSet::parse(roles.iter().copied()),
                ttl: Duration::from_secs(48 * 3600),
            })
            .expect("client");
        Identity::from_pem(&issued.cert_pem).expect("identity")
    }

    fn fp_list(crts: &[Base64Pem]) -> Vec<String> {
        crts.iter()
            .map(|crt| fingerprint(crt).expect("fp"))
            .collect()
    }

    #[test]
    fn each_step_moves_the_cas_and_workers_never_get_the_key() {
        let old = ca(KeyAlgorithm::Ed25519);
        let plan = Plan::new(
            vec![
                ("cp".to_owned(), config(&old, MachineType::ControlPlane)),
                ("w".to_owned(), config(&old, MachineType::Worker)),
            ],
            None,
            &caller(&["os:admin"]),
        )
        .expect("plan");
        let old_fp = plan.old_fingerprint.clone();
        let new_fp = plan.new_fingerprint.clone();
        assert_ne!(old_fp, new_fp);
        assert_eq!(plan.new_ca.algorithm(), KeyAlgorithm::Ed25519);

        for node in &plan.nodes {
            let is_cp = node.machine_type == MachineType::ControlPlane;
            // Step 1: old issues, new accepted.
            assert_eq!(fingerprint(node.accepting.ca_crt()).expect("fp"), old_fp);
            assert_eq!(fp_list(node.accepting.accepted_cas()), vec![new_fp.clone()]);
            assert_eq!(node.accepting.ca_key().is_some(), is_cp);
            // Step 3: new issues (key only on the control plane), old accepted.
            assert_eq!(fingerprint(node.switched.ca_crt()).expect("fp"), new_fp);
            assert_eq!(fp_list(node.switched.accepted_cas()), vec![old_fp.clone()]);
            assert_eq!(node.switched.ca_key().is_some(), is_cp, "{}", node.name);
            if is_cp {
                let key = node.switched.ca_key().expect("key").as_str().expect("text");
                CertificateAuthority::from_pem(node.switched.ca_crt().as_str().expect("crt"), key)
                    .expect("the new key belongs to the new certificate");
            }
            // Step 5: only the new CA.
            assert_eq!(fingerprint(node.finished.ca_crt()).expect("fp"), new_fp);
            assert!(node.finished.accepted_cas().is_empty());
            // Nothing else changes.
            assert_eq!(node.finished.token(), node.accepting.token());
            assert_eq!(node.finished.machine_type(), node.machine_type);
        }
    }

    #[test]
    fn other_accepted_cas_are_kept_and_the_algorithm_can_change() {
        let old = ca(KeyAlgorithm::Ed25519);
        let extra = ca(KeyAlgorithm::Ed25519);
        let mut raw = config(&old, MachineType::ControlPlane).to_raw();
        raw.machine.accepted_cas = vec![
            RawCertificate {
                crt: Some(Base64Pem::from_pem(extra.cert_pem().to_owned())),
            },
            // The issuing CA listed again: not carried over twice.
            RawCertificate {
                crt: Some(Base64Pem::from_pem(old.cert_pem().to_owned())),
            },
        ];
        let current = MachineConfig::try_from(raw).expect("config");
        let plan = Plan::new(
            vec![("cp".to_owned(), current)],
            Some(KeyAlgorithm::EcdsaP256),
            &caller(&["os:admin"]),
        )
        .expect("plan");
        assert_eq!(plan.new_ca.algorithm(), KeyAlgorithm::EcdsaP256);
        let extra_fp = Identity::from_der(extra.cert_der())
            .expect("id")
            .fingerprint;
        let node = &plan.nodes[0];
        assert_eq!(
            fp_list(node.accepting.accepted_cas()),
            [extra_fp.clone(), plan.new_fingerprint.clone()]
        );
        assert_eq!(
            fp_list(node.switched.accepted_cas()),
            [extra_fp.clone(), plan.old_fingerprint.clone()]
        );
        assert_eq!(fp_list(node.finished.accepted_cas()), [extra_fp]);
    }

    #[test]
    fn nodes_with_different_cas_or_no_control_plane_are_refused() {
        let one = ca(KeyAlgorithm::Ed25519);
        let two = ca(KeyAlgorithm::Ed25519);
        let err = Plan::new(
            vec![
                ("a".to_owned(), config(&one, MachineType::ControlPlane)),
                ("b".to_owned(), config(&two, MachineType::ControlPlane)),
            ],
            None,
            &caller(&["os:admin"]),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("disagree on machine.ca"), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");

        let err = Plan::new(
            vec![("w".to_owned(), config(&one, MachineType::Worker))],
            None,
            &caller(&["os:admin"]),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("none of the nodes is a control plane"),
            "{err:#}"
        );
    }

    #[test]
    fn only_admins_may_rotate() {
        assert!(require_admin(&caller(&["os:admin"]), "dev").is_ok());
        let err = require_admin(&caller(&["os:reader", "os:operator"]), "dev").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("needs an os:admin"), "{text}");
        assert!(text.contains("os:operator, os:reader"), "{text}");
        assert!(text.contains("nothing was changed"), "{text}");
    }

    #[test]
    fn the_new_client_certificate_repeats_the_callers_name_roles_and_lifetime() {
        let old = ca(KeyAlgorithm::Ed25519);
        let me = caller(&["os:admin", "os:reader"]);
        let plan = Plan::new(
            vec![("cp".to_owned(), config(&old, MachineType::ControlPlane))],
            None,
            &me,
        )
        .expect("plan");
        let issued = plan.issue_client_cert(&me).expect("issue");
        let id = Identity::from_pem(&issued.cert_pem).expect("identity");
        assert_eq!(id.common_name.as_deref(), Some("alice"));
        assert_eq!(id.roles.strings(), me.roles.strings());
        assert!(id.is_client_auth_only());
        assert_eq!(id.not_after - id.not_before, me.not_after - me.not_before);
        let der = basalt_pki::certificates_from_pem(issued.cert_pem.as_bytes()).expect("pem");
        assert!(basalt_pki::is_issued_by(der[0].as_ref(), plan.new_ca.cert_der()).expect("check"));
    }

    #[test]
    fn the_dry_run_plan_names_nodes_steps_and_both_fingerprints() {
        let old = ca(KeyAlgorithm::Ed25519);
        let plan = Plan::new(
            vec![
                (
                    "10.0.0.1".to_owned(),
                    config(&old, MachineType::ControlPlane),
                ),
                ("10.0.0.2".to_owned(), config(&old, MachineType::Worker)),
            ],
            None,
            &caller(&["os:admin"]),
        )
        .expect("plan");
        let steps = plan.steps("admin@dev");
        let text = plan.describe("admin@dev", &steps, true);
        assert!(text.starts_with("rotate-ca plan (dry run: nothing is changed)"));
        assert!(text.contains(&format!("old CA:  sha256:{}", plan.old_fingerprint)));
        assert!(text.contains(&format!("new CA:  sha256:{}", plan.new_fingerprint)));
        assert!(text.contains("10.0.0.1  controlplane"), "{text}");
        assert!(text.contains("10.0.0.2  worker"), "{text}");
        assert!(text.contains("5. drop the old CA"), "{text}");
    }

    #[test]
    fn an_encrypted_bundle_is_saved_encrypted_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, key) = (dir.path().join("secrets.age"), dir.path().join("key.txt"));
        let identity = age::x25519::Identity::generate();
        std::fs::write(&key, identity.to_string().expose_secret()).expect("write identity");
        let old = ca(KeyAlgorithm::Ed25519);
        let bundle = SecretsBundle::new(BundleCerts::os_only(CertAndKey::from_pem(
            old.cert_pem().to_owned(),
            old.key_pem(),
        )))
        .expect("bundle");
        let encrypted =
            secrets_age::encrypt_bundle(&bundle, &identity.to_public()).expect("encrypt");
        std::fs::write(&path, encrypted).expect("write");

        // Without the identity: refused, the file untouched.
        let new = ca(KeyAlgorithm::Ed25519);
        let err = save_ca_in_bundle(&path, None, &new).expect_err("no identity");
        assert!(format!("{err:#}").contains("--identity"), "{err:#}");

        assert!(
            save_ca_in_bundle(&path, Some(&key), &new).expect("save"),
            "encrypted"
        );
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            secrets_age::is_age_encrypted(&bytes),
            "still encrypted at rest"
        );
        let saved = secrets_age::load_bundle(&path, Some(&key)).expect("decrypt");
        assert_eq!(saved.certs.os.crt.as_bytes(), new.cert_pem().as_bytes());
        assert_eq!(saved.trustdinfo, bundle.trustdinfo, "the rest is kept");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn with_secrets_replaces_only_the_os_ca_of_the_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.yaml");
        let old = ca(KeyAlgorithm::Ed25519);
        let bundle = SecretsBundle::new(BundleCerts::os_only(CertAndKey::from_pem(
            old.cert_pem().to_owned(),
            old.key_pem(),
        )))
        .expect("bundle");
        std::fs::write(&path, bundle.to_yaml().expect("yaml")).expect("write");
        let new = ca(KeyAlgorithm::EcdsaP256);
        assert!(
            !save_ca_in_bundle(&path, None, &new).expect("save"),
            "plain"
        );
        let saved = SecretsBundle::load(&path).expect("load");
        assert_eq!(
            saved.certs.os.crt.as_bytes(),
            new.cert_pem().as_bytes(),
            "the new CA certificate"
        );
        CertificateAuthority::from_pem(
            saved.certs.os.crt.as_str().expect("crt"),
            saved.certs.os.key.as_str().expect("key"),
        )
        .expect("the saved key belongs to the saved certificate");
        assert_eq!(saved.trustdinfo, bundle.trustdinfo, "the rest is kept");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_named_certificates_must_come_from_the_new_ca() {
        use basalt_api::basalt::v1::CertificateInfo;
        let status = |issuer: &str, error: &str| CertificateStatus {
            metadata: None,
            certificates: vec![CertificateInfo {
                role: "apid-server".to_owned(),
                serial: "1f".to_owned(),
                issuer_fingerprint: issuer.to_owned(),
                error: error.to_owned(),
                ..CertificateInfo::default()
            }],
            now: 0,
        };
        assert!(issued_by(&status("new", ""), &[APID_SERVER], "new").is_ok());
        let err = issued_by(&status("old", ""), &[APID_SERVER], "new").unwrap_err();
        assert!(err.contains("serial 1f"), "{err}");
        assert!(issued_by(&status("", "cannot read"), &[APID_SERVER], "new").is_err());
        let err = issued_by(&status("new", ""), &[APID_SERVER, TRUSTD_SERVER], "new").unwrap_err();
        assert!(err.contains("no trustd-server certificate"), "{err}");
        assert!(
            issued_by(
                &CertificateStatus {
                    metadata: None,
                    certificates: Vec::new(),
                    now: 0
                },
                &[APID_SERVER],
                "new"
            )
            .is_err()
        );
    }
}
