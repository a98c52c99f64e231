//! `GenerateClientConfiguration`: mint a client certificate with the node's CA and wrap it in a
//! client config (talosconfig layout), as Talos's handler does (talos-facts.md §4.2).
//!
//! - Control-plane nodes only (they hold `machine.ca`'s key); elsewhere Unimplemented
//!   "GenerateClientConfiguration is only available on control plane nodes".
//! - `roles` are read with Talos's `role.Parse` rules ([`RoleSet::parse`]): trimmed, empty
//!   values skipped, **unknown roles kept** (the client decides whether to refuse them, as
//!   talosctl does). No role at all is InvalidArgument.
//! - `os:impersonator` is refused (InvalidArgument): it lets its holder assert any roles through
//!   `talos-role`, so it belongs only to apid's own node certificate. Talos mints it on request;
//!   basalt does not, so a stolen admin certificate cannot mint an all-powerful replacement.
//! - `crt_ttl` must be positive: InvalidArgument "crt_ttl should be positive" otherwise. It
//!   may not exceed [`MAX_CLIENT_CERT_TTL`] (Talos has no cap): a leaked admin certificate
//!   must not be able to mint a replacement that outlives every rotation.
//! - The certificate: O = one value per role, no CN, EKU clientAuth only, signed by the issuing
//!   CA ([`CertificateAuthority::issue_client`]).
//! - The reply: `ca` (the CA certificate PEM), `crt`, `key` (PEM) and `talosconfig`: one
//!   context named `<role without "os:">@<cluster>` for a single role, else `<cluster>`, with
//!   **empty endpoints** (the client fills them in, as talosctl does).

use std::sync::Arc;
use std::time::Duration;

use basalt_api::machine;
use basalt_authz::{Role, RoleSet};
use basalt_config::client::{ClientConfig, Context};
use basalt_config::{Base64Pem, MachineConfig, MachineType};
use basalt_pki::{CertificateAuthority, ClientCertRequest};

use crate::Error;

/// The method name used in errors.
const METHOD: &str = "GenerateClientConfiguration";

/// The longest `crt_ttl` issued: 87600h, the default of `talosctl config new --crt-ttl`, so
/// Talos clients keep working.
const MAX_CLIENT_CERT_TTL: Duration = Duration::from_secs(87_600 * 3600);

/// Where the machine config comes from at each request.
type Source = Arc<dyn Fn() -> Option<MachineConfig> + Send + Sync>;

/// Issues client configurations from the machine config's CA.
#[derive(Clone)]
pub(crate) struct ClientConfigs {
    /// The machine config machined runs with, read at each request (so a config apply that
    /// rotates the CA is followed); `None` (machined without one, as in tests) behaves like a
    /// worker.
    source: Source,
}

impl ClientConfigs {
    /// Signs with `machine`'s CA, for the life of the process.
    pub(crate) fn new(machine: Option<MachineConfig>) -> Self {
        ClientConfigs {
            source: Arc::new(move || machine.clone()),
        }
    }

    /// Signs with the CA of whatever `source` returns at the time of each request (the
    /// config store's active config).
    pub(crate) fn from_source(
        source: impl Fn() -> Option<MachineConfig> + Send + Sync + 'static,
    ) -> Self {
        ClientConfigs {
            source: Arc::new(source),
        }
    }

    /// Handles one request (blocking: key generation and signing).
    pub(crate) fn generate(
        &self,
        request: machine::GenerateClientConfigurationRequest,
    ) -> Result<machine::GenerateClientConfiguration, Error> {
        let machine = (self.source)()
            .filter(|machine| machine.machine_type() == MachineType::ControlPlane)
            .ok_or(Error::ControlPlaneOnly { method: METHOD })?;
        let ca_key = machine
            .ca_key()
            .ok_or(Error::ControlPlaneOnly { method: METHOD })?;

        let ttl = positive_ttl(request.crt_ttl.as_ref()).ok_or_else(|| Error::InvalidArgument {
            reason: "crt_ttl should be positive".to_owned(),
        })?;
        if ttl > MAX_CLIENT_CERT_TTL {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "crt_ttl of {}h is longer than the maximum of {}h",
                    ttl.as_secs() / 3600,
                    MAX_CLIENT_CERT_TTL.as_secs() / 3600
                ),
            });
        }
        let roles = RoleSet::parse(&request.roles);
        if roles.is_empty() {
            return Err(Error::InvalidArgument {
                reason: "roles should not be empty".to_owned(),
            });
        }
        if roles.contains(&Role::Impersonator) {
            return Err(Error::InvalidArgument {
                reason: "os:impersonator is reserved for node certificates and cannot be requested"
                    .to_owned(),
            });
        }

        let pem_text = |pem: &Base64Pem| {
            pem.as_str()
                .map(str::to_owned)
                .map_err(|source| Error::ReadMachineCa { source })
        };
        let ca_crt = pem_text(machine.ca_crt())?;
        let ca = CertificateAuthority::from_pem(&ca_crt, &pem_text(ca_key)?)
            .map_err(|source| Error::IssueClientCert { source })?;
        let issued = ca
            .issue_client(&ClientCertRequest {
                common_name: None,
                roles: roles.clone(),
                ttl,
            })
            .map_err(|source| match source {
                // Caller's fault: an absurd role string or lifetime.
                basalt_pki::Error::InvalidOrganization { .. }
                | basalt_pki::Error::InvalidTtl { .. } => Error::InvalidArgument {
                    reason: source.to_string(),
                },
                source => Error::IssueClientCert { source },
            })?;

        let context = Context {
            endpoints: Vec::new(),
            ca: Some(Base64Pem::from_pem(ca_crt.clone())),
            crt: Some(Base64Pem::from_pem(issued.cert_pem.clone())),
            key: Some(Base64Pem::from_pem(issued.key_pem.clone())),
            ..Context::default()
        };
        let talosconfig =
            ClientConfig::with_context(context_name(&roles, machine.cluster_name()), context)
                .to_yaml()
                .map_err(|source| Error::RenderClientConfig { source })?;
        tracing::info!(
            roles = %roles,
            ttl_s = ttl.as_secs(),
            "Issued a client configuration"
        );
        Ok(machine::GenerateClientConfiguration {
            metadata: None,
            ca: ca_crt.into_bytes(),
            crt: issued.cert_pem.into_bytes(),
            key: issued.key_pem.into_bytes(),
            talosconfig: talosconfig.into_bytes(),
        })
    }
}

impl Default for ClientConfigs {
    /// No machine config: every request is refused as on a worker.
    fn default() -> Self {
        ClientConfigs::new(None)
    }
}

impl std::fmt::Debug for ClientConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the CA key: show nothing of it.
        f.debug_struct("ClientConfigs").finish_non_exhaustive()
    }
}

/// Talos's context name: `<role without "os:">@<cluster>` for exactly one role, else the
/// cluster name.
fn context_name(roles: &RoleSet, cluster: &str) -> String {
    match roles.strings().as_slice() {
        [role] => format!("{}@{cluster}", role.strip_prefix("os:").unwrap_or(role)),
        _ => cluster.to_owned(),
    }
}

/// A strictly positive `google.protobuf.Duration` as a std duration.
fn positive_ttl(ttl: Option<&prost_types::Duration>) -> Option<Duration> {
    let ttl = ttl?;
    let seconds = u64::try_from(ttl.seconds).ok()?;
    let nanos = u32::try_from(ttl.nanos).ok()?;
    let ttl = Duration::new(seconds, nanos);
    (!ttl.is_zero()).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_follow_talos() {
        let one = RoleSet::parse(["os:reader"]);
        assert_eq!(context_name(&one, "prod"), "reader@prod");
        let unknown = RoleSet::parse(["custom"]);
        assert_eq!(context_name(&unknown, "prod"), "custom@prod");
        let two = RoleSet::parse(["os:reader", "os:operator"]);
        assert_eq!(context_name(&two, "prod"), "prod");
    }

    #[test]
    fn only_positive_lifetimes_are_accepted() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(positive_ttl(None), None);
        assert_eq!(positive_ttl(Some(&d(0, 0))), None);
        assert_eq!(positive_ttl(Some(&d(-5, 0))), None);
        assert_eq!(positive_ttl(Some(&d(0, -1))), None);
        assert_eq!(positive_ttl(Some(&d(0, 1))), Some(Duration::from_nanos(1)));
        assert_eq!(
            positive_ttl(Some(&d(3600, 0))),
            Some(Duration::from_secs(3600))
        );
    }
}
