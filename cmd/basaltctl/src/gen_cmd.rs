//! `basaltctl gen …`: local generation of secrets, node configs and client configs.
//!
//! Nothing here talks to a node. The secrets bundle holds the OS CA key, so every file written
//! here is 0600 and an existing file is only replaced with `--force`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use basalt_authz::{Role, RoleSet};
use basalt_config::fs::{Overwrite, write_atomic};
use basalt_config::secrets_age;
use basalt_config::{
    Base64Pem, BundleCerts, CertAndKey, ClientConfig, Context, KeyOnly, MachineConfig, MachineType,
    SecretsBundle,
};
use basalt_pki::{CaOptions, CertificateAuthority, ClientCertRequest, KeyAlgorithm, PrivateKey};
use clap::{Args, Subcommand};

use crate::usage::OrUsage as _;
use crate::{Globals, duration};

/// Default client certificate lifetime: one year, as Talos.
const DEFAULT_CERT_TTL: &str = "8760h";
/// Validity of the etcd and Kubernetes CAs kept in the bundle for Talos compatibility.
const AUX_CA_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);
/// Files holding keys or tokens.
const PRIVATE_FILE_MODE: u32 = 0o600;

#[derive(Debug, Subcommand)]
pub(crate) enum GenCommand {
    /// Generate a secrets bundle (CAs and tokens) in Talos's secrets.yaml layout.
    Secrets(SecretsArgs),
    /// Generate controlplane.yaml, worker.yaml and an admin client config for a cluster.
    Config(ConfigArgs),
    /// Generate a client config with a certificate for the given roles.
    ClientConfig(ClientConfigArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SecretsArgs {
    /// Where to write the bundle.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "secrets.yaml"
    )]
    output: PathBuf,
    /// Key algorithm of the OS CA.
    #[arg(long, value_name = "ALG", default_value = "ed25519")]
    ca_algorithm: KeyAlgorithm,
    /// Encrypt the bundle at rest to this age x25519 recipient (age1…); commands that read it
    /// then need --identity with the matching key.
    #[arg(long, value_name = "AGE_RECIPIENT")]
    encrypt_to: Option<String>,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// Cluster name; also the name of the client config's context.
    name: String,
    /// Control-plane endpoint (host or host:port) that clients and workers dial.
    endpoint: String,
    /// Use this secrets bundle; without it a new one is generated and written to DIR/secrets.yaml.
    #[arg(long, value_name = "FILE")]
    with_secrets: Option<PathBuf>,
    /// age identity file (age-keygen format) that decrypts an encrypted --with-secrets bundle.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Roles of the client certificate in DIR/basaltconfig.
    #[arg(long, value_delimiter = ',', default_value = "os:admin")]
    roles: Vec<String>,
    /// Lifetime of the client certificate (e.g. 8760h, 30d).
    #[arg(long, default_value = DEFAULT_CERT_TTL, value_parser = duration::parse)]
    cert_ttl: Duration,
    /// Directory to write into.
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClientConfigArgs {
    /// Secrets bundle holding the OS CA.
    #[arg(long, value_name = "FILE")]
    with_secrets: PathBuf,
    /// age identity file (age-keygen format) that decrypts an encrypted --with-secrets bundle.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Roles of the certificate, comma-separated (e.g. os:reader or os:operator,os:etcd:backup).
    #[arg(long, value_delimiter = ',', required = true)]
    roles: Vec<String>,
    /// Lifetime of the certificate (e.g. 24h, 30d).
    #[arg(long, default_value = DEFAULT_CERT_TTL, value_parser = duration::parse)]
    cert_ttl: Duration,
    /// Context name; default `<role>@<cluster>` for one role, else `<cluster>` (as Talos).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Cluster name used in the default context name.
    #[arg(long, default_value = "basalt")]
    cluster: String,
    /// Endpoints to put into the context.
    #[arg(short = 'e', long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Where to write the client config.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(cmd: GenCommand, _globals: &Globals) -> anyhow::Result<()> {
    match cmd {
        GenCommand::Secrets(args) => gen_secrets(&args),
        GenCommand::Config(args) => gen_config(&args),
        GenCommand::ClientConfig(args) => gen_client_config(&args),
    }
}

fn gen_secrets(args: &SecretsArgs) -> anyhow::Result<()> {
    // Parse the recipient before generating anything, so a typo costs nothing.
    let recipient = args
        .encrypt_to
        .as_deref()
        .map(secrets_age::parse_recipient)
        .transpose()?;
    let bundle = new_bundle(args.ca_algorithm)?;
    match recipient {
        Some(recipient) => {
            let encrypted = secrets_age::encrypt_bundle(&bundle, &recipient)?;
            write_private(&args.output, &encrypted, args.force)?;
            eprintln!("wrote {} (age-encrypted)", args.output.display());
        }
        None => {
            write_private(&args.output, bundle.to_yaml()?.as_bytes(), args.force)?;
            eprintln!("wrote {}", args.output.display());
        }
    }
    Ok(())
}

fn gen_config(args: &ConfigArgs) -> anyhow::Result<()> {
    let roles = known_roles(&args.roles)?;
    // Everything is made before anything is written, and no file is replaced without --force:
    // a failure (a certificate that would outlive year 9999, a file in the way) leaves the
    // directory as it was.
    let mut files: Vec<(PathBuf, Vec<u8>, &str)> = Vec::new();
    let bundle = match &args.with_secrets {
        Some(path) => load_bundle(path, args.identity.as_deref())?,
        None => {
            let bundle = new_bundle(KeyAlgorithm::Ed25519)?;
            files.push((
                args.output.join("secrets.yaml"),
                bundle.to_yaml()?.into_bytes(),
                " (keep it: it holds the CA key)",
            ));
            bundle
        }
    };
    for (kind, file) in [
        (MachineType::ControlPlane, "controlplane.yaml"),
        (MachineType::Worker, "worker.yaml"),
    ] {
        let config = MachineConfig::generate(&bundle, &args.name, &args.endpoint, kind)
            .with_context(|| format!("generate {file}"))?;
        // Both files carry the join token; the control-plane one also the CA key.
        files.push((args.output.join(file), config.to_yaml()?.into_bytes(), ""));
    }
    // Talos names the generated context after the cluster; the certificate's CN says who holds
    // it (`admin@dev`) so audit records read well.
    let client = client_config(
        &bundle,
        &roles,
        args.cert_ttl,
        &args.name,
        &default_context_name(&roles, &args.name),
        vec![args.endpoint.clone()],
    )?;
    files.push((
        args.output.join("basaltconfig"),
        client.to_yaml()?.into_bytes(),
        "",
    ));

    if !args.force
        && let Some((path, _, _)) = files.iter().find(|(path, _, _)| path.exists())
    {
        anyhow::bail!(
            "{} exists; pass --force to replace it (nothing was written)",
            path.display()
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("create directory {}", args.output.display()))?;
    for (path, bytes, note) in &files {
        write_private(path, bytes, args.force)?;
        eprintln!("wrote {}{note}", path.display());
    }
    Ok(())
}

fn gen_client_config(args: &ClientConfigArgs) -> anyhow::Result<()> {
    let roles = known_roles(&args.roles)?;
    let bundle = load_bundle(&args.with_secrets, args.identity.as_deref())?;
    let context_name = args
        .context
        .clone()
        .unwrap_or_else(|| default_context_name(&roles, &args.cluster));
    let client = client_config(
        &bundle,
        &roles,
        args.cert_ttl,
        &context_name,
        &context_name,
        args.endpoints.clone(),
    )?;
    write_private(&args.output, client.to_yaml()?.as_bytes(), args.force)?;
    eprintln!("wrote {} (context {context_name:?})", args.output.display());
    Ok(())
}

/// A new bundle: the OS CA (Ed25519 unless asked otherwise) plus the etcd and Kubernetes CAs
/// Talos tooling expects to find in a secrets.yaml.
pub(crate) fn new_bundle(os_algorithm: KeyAlgorithm) -> anyhow::Result<SecretsBundle> {
    let os = CertificateAuthority::generate(&CaOptions {
        algorithm: os_algorithm,
        ..CaOptions::talos_os()
    })
    .context("generate the OS CA")?;
    let aux = |organization: Option<&str>, common_name: Option<&str>| {
        CertificateAuthority::generate(&CaOptions {
            algorithm: KeyAlgorithm::EcdsaP256,
            organization: organization.map(str::to_owned),
            common_name: common_name.map(str::to_owned),
            validity: AUX_CA_VALIDITY,
        })
    };
    let etcd = aux(Some("etcd"), None).context("generate the etcd CA")?;
    let k8s = aux(Some("kubernetes"), None).context("generate the Kubernetes CA")?;
    let aggregator = aux(None, Some("front-proxy")).context("generate the aggregator CA")?;
    let service_account = PrivateKey::generate(KeyAlgorithm::EcdsaP256)
        .context("generate the service account key")?;

    let pair = |ca: &CertificateAuthority| CertAndKey::from_pem(ca.cert_pem(), ca.key_pem());
    SecretsBundle::new(BundleCerts {
        os: pair(&os),
        etcd: Some(pair(&etcd)),
        k8s: Some(pair(&k8s)),
        k8saggregator: Some(pair(&aggregator)),
        k8sserviceaccount: Some(KeyOnly {
            key: Base64Pem::from_pem(service_account.to_pem()),
        }),
    })
    .context("assemble the secrets bundle")
}

/// A plain or age-encrypted bundle (`identity` decrypts the latter; see `secrets_age`).
fn load_bundle(path: &Path, identity: Option<&Path>) -> anyhow::Result<SecretsBundle> {
    secrets_age::load_bundle(path, identity)
        .with_context(|| format!("load secrets bundle {}", path.display()))
        .or_usage()
}

/// Issues a client certificate from the bundle's OS CA and wraps it in a one-context config.
pub(crate) fn client_config(
    bundle: &SecretsBundle,
    roles: &RoleSet,
    ttl: Duration,
    context_name: &str,
    common_name: &str,
    endpoints: Vec<String>,
) -> anyhow::Result<ClientConfig> {
    let ca = os_ca(bundle)?;
    let issued = ca
        .issue_client(&ClientCertRequest {
            common_name: Some(common_name.to_owned()),
            roles: roles.clone(),
            ttl,
        })
        .context("issue the client certificate")?;
    let context = Context {
        endpoints,
        ca: Some(Base64Pem::from_pem(ca.cert_pem().to_owned())),
        crt: Some(Base64Pem::from_pem(issued.cert_pem.clone())),
        key: Some(Base64Pem::from_pem(issued.key_pem.clone())),
        ..Context::default()
    };
    Ok(ClientConfig::with_context(context_name, context))
}

fn os_ca(bundle: &SecretsBundle) -> anyhow::Result<CertificateAuthority> {
    let os = &bundle.certs.os;
    let crt = os.crt.as_str().context("secrets bundle certs.os.crt")?;
    let key = os.key.as_str().context("secrets bundle certs.os.key")?;
    CertificateAuthority::from_pem(crt, key).context("load the OS CA from the secrets bundle")
}

/// Parses role flags the Talos way, then refuses roles nobody knows: a typo would otherwise mint
/// a certificate that is denied everywhere.
fn known_roles(values: &[String]) -> anyhow::Result<RoleSet> {
    let roles = RoleSet::parse(values);
    if roles.is_empty() {
        bail!("no roles given; known roles: {}", known_role_list());
    }
    let unknown: Vec<&str> = roles.unknown().collect();
    if !unknown.is_empty() {
        bail!(
            "unknown role{} {}; known roles: {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
            known_role_list()
        );
    }
    Ok(roles)
}

fn known_role_list() -> String {
    Role::KNOWN
        .iter()
        .map(Role::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Talos: `<role without "os:">@<cluster>` for exactly one role, otherwise `<cluster>`.
pub(crate) fn default_context_name(roles: &RoleSet, cluster: &str) -> String {
    let names = roles.strings();
    match names.as_slice() {
        [one] => format!("{}@{cluster}", one.strip_prefix("os:").unwrap_or(one)),
        _ => cluster.to_owned(),
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    let overwrite = if force {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    };
    write_atomic(path, bytes, PRIVATE_FILE_MODE, overwrite).with_context(|| {
        if !force && path.exists() {
            format!("{} exists; pass --force to replace it", path.display())
        } else {
            format!("write {}", path.display())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_context_name_follows_talos() {
        let reader = RoleSet::parse(["os:reader"]);
        assert_eq!(default_context_name(&reader, "dev"), "reader@dev");
        let two = RoleSet::parse(["os:reader", "os:etcd:backup"]);
        assert_eq!(default_context_name(&two, "dev"), "dev");
    }

    #[test]
    fn unknown_roles_are_refused_with_the_known_list() {
        let err = known_roles(&["os:reader".into(), "os:root".into()]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("unknown role os:root"), "{text}");
        assert!(text.contains("os:admin, "), "{text}");
    }
}
