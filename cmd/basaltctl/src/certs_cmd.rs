//! `basaltctl certs`: every certificate that matters for reaching the nodes, with its expiry.
//!
//! One row per certificate: the client's own (from the client config, read locally), then per
//! node its CAs (issuing, accepted), apid's server and impersonator certificates and trustd's
//! server certificate (`basalt.v1.CertificateService/Status`). A certificate that expires within
//! [`EXPIRY_WARNING_DAYS`] days, or has expired, gets a WARN cell (a `warning` field in
//! json/yaml) and a line on stderr: an expired certificate otherwise looks like an unreachable
//! node (user-asks §1b rows 12–14).
//!
//! Node certificates are measured against the node's clock (the reply carries it), the client
//! certificate against the local one: each side checks validity with its own.
//!
//! The node's own leaf certificates (apid's and trustd's) live 24 h and machined renews them at
//! half-life, so the 30-day rule would flag each of them all the time. For those the warning
//! comes when less than a quarter of the lifetime is left, i.e. when a renewal is overdue; CAs
//! and the client certificate, which nobody renews automatically, get the 30-day rule.

use anyhow::Context as _;
use basalt_api::basalt::v1::certificate_service_client::CertificateServiceClient;
use basalt_api::basalt::v1::{CertificateInfo, CertificateStatus, CertificateStatusRequest};
use basalt_config::ClientConfig;
use basalt_pki::Identity;
use clap::Args;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Globals;
use crate::config_cmd::{EXPIRY_WARNING_DAYS, select_context};
use crate::connect::{connect, runtime};
use crate::duration;
use crate::node_cmd::{NodeArgs, Replies, replies};
use crate::output::{self, Render};
use crate::usage::OrUsage as _;

/// `certs`.
#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) fn run(args: CertsArgs, globals: &Globals) -> anyhow::Result<()> {
    let client = client_certificate(globals)?;
    let rt = runtime()?;
    let results = rt.block_on(async {
        anyhow::Ok(
            connect(globals, &args.node.target)
                .await?
                .each_node(CertificateStatusRequest {}, |client, request| async move {
                    CertificateServiceClient::new(client.channel())
                        .status(request)
                        .await
                })
                .await,
        )
    })?;
    let report = CertsReport {
        client,
        nodes: replies(results, |r| r.messages, NodeCerts::from),
    };
    for warning in report.warnings() {
        eprintln!("warning: {warning}");
    }
    output::print(args.node.output.format, &report)?;
    report.nodes.finish()
}

/// Everything `certs` prints.
#[derive(Debug, Serialize)]
struct CertsReport {
    /// The client's own certificate.
    client: CertView,
    /// Each node's certificates, or its error.
    nodes: Replies<NodeCerts>,
}

/// One node's certificates.
#[derive(Debug, Serialize)]
struct NodeCerts {
    certificates: Vec<CertView>,
}

/// One certificate as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CertView {
    /// `client`, `ca-issuing`, `ca-accepted`, `apid-server`, `apid-client`, `trustd-server`.
    pub(crate) role: String,
    /// Where it is kept (a file on the node, a config key, or the client context).
    pub(crate) source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) common_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) organizations: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) serial: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) fingerprint: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) issuer: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) issuer_common_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) issuer_fingerprint: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) not_before: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) not_after: String,
    /// `364d 23h`, or `expired`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) expires_in: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) sans: Vec<String>,
    /// Expires within [`EXPIRY_WARNING_DAYS`] days or has expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) warning: Option<String>,
    /// The node could not read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// The node certificates machined renews at half-life.
const AUTO_RENEWED: &[&str] = &["apid-server", "apid-client", "trustd-server"];

/// How long until `not_after`, and a warning when that is under `threshold` or already past.
pub(crate) fn expiry(
    what: &str,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    threshold: time::Duration,
) -> (String, Option<String>) {
    let remaining = not_after - now;
    if remaining.is_negative() {
        (
            "expired".to_owned(),
            Some(format!(
                "{what} expired {} ago",
                duration::human(-remaining)
            )),
        )
    } else if remaining < threshold {
        let left = duration::human(remaining);
        (left.clone(), Some(format!("{what} expires in {left}")))
    } else {
        (duration::human(remaining), None)
    }
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_else(|_| time.to_string())
}

/// The client certificate of the selected context.
fn client_certificate(globals: &Globals) -> anyhow::Result<CertView> {
    local_client_certificate(globals).or_usage()
}

/// [`client_certificate`], before its errors are marked as the caller's.
fn local_client_certificate(globals: &Globals) -> anyhow::Result<CertView> {
    let config = ClientConfig::load(&globals.config_path)
        .with_context(|| format!("load client config {}", globals.config_path.display()))?;
    let (name, context) = select_context(&config, globals.context.as_deref())?;
    let pem = context
        .crt
        .as_ref()
        .with_context(|| format!("context {name:?} has no client certificate (crt)"))?
        .as_str()
        .with_context(|| format!("context {name:?}: crt"))?;
    let identity = Identity::from_pem(pem)
        .with_context(|| format!("context {name:?}: read the client certificate"))?;
    // The signer, among the CAs the context trusts (during a CA rotation: old or new).
    let der = basalt_pki::certificates_from_pem(pem.as_bytes())
        .ok()
        .and_then(|certs| certs.into_iter().next());
    let issuer_fingerprint = context
        .ca
        .as_ref()
        .and_then(|bundle| basalt_pki::certificates_from_pem(bundle.as_bytes()).ok())
        .unwrap_or_default()
        .iter()
        .find(|ca| {
            der.as_ref().is_some_and(|der| {
                basalt_pki::is_issued_by(der.as_ref(), ca.as_ref()).unwrap_or(false)
            })
        })
        .and_then(|ca| Identity::from_der(ca.as_ref()).ok())
        .map(|ca| ca.fingerprint)
        .unwrap_or_default();
    let what = format!("the client certificate of context {name:?}");
    let (expires_in, warning) = expiry(
        &what,
        identity.not_after,
        OffsetDateTime::now_utc(),
        time::Duration::days(EXPIRY_WARNING_DAYS),
    );
    Ok(CertView {
        role: "client".to_owned(),
        source: format!("context {name}"),
        common_name: identity.common_name.unwrap_or_default(),
        organizations: identity.organizations,
        serial: identity.serial,
        fingerprint: identity.fingerprint,
        issuer: identity.issuer,
        issuer_common_name: String::new(),
        issuer_fingerprint,
        not_before: rfc3339(identity.not_before),
        not_after: rfc3339(identity.not_after),
        expires_in,
        sans: Vec::new(),
        warning,
        error: None,
    })
}

impl From<CertificateStatus> for NodeCerts {
    fn from(status: CertificateStatus) -> Self {
        // The node's clock when it answered; a node that did not say is measured locally.
        let now = OffsetDateTime::from_unix_timestamp(status.now)
            .ok()
            .filter(|_| status.now > 0)
            .unwrap_or_else(OffsetDateTime::now_utc);
        NodeCerts {
            certificates: status
                .certificates
                .into_iter()
                .map(|cert| CertView::from_node(cert, now))
                .collect(),
        }
    }
}

impl CertView {
    fn from_node(cert: CertificateInfo, now: OffsetDateTime) -> Self {
        let time = |secs: i64| OffsetDateTime::from_unix_timestamp(secs).ok();
        let readable = cert.error.is_empty();
        let not_after = time(cert.not_after).filter(|_| readable);
        // Renewed at half-life: a quarter left means the renewal is overdue.
        let threshold = if AUTO_RENEWED.contains(&cert.role.as_str()) {
            time::Duration::seconds(cert.not_after.saturating_sub(cert.not_before) / 4)
        } else {
            time::Duration::days(EXPIRY_WARNING_DAYS)
        };
        let (expires_in, warning) = match not_after {
            Some(not_after) => expiry(
                &format!("the {} certificate", cert.role),
                not_after,
                now,
                threshold,
            ),
            None => (String::new(), None),
        };
        CertView {
            not_before: time(cert.not_before)
                .filter(|_| readable)
                .map(rfc3339)
                .unwrap_or_default(),
            not_after: not_after.map(rfc3339).unwrap_or_default(),
            expires_in,
            sans: cert
                .dns_names
                .into_iter()
                .chain(cert.ip_addresses)
                .collect(),
            warning,
            error: (!readable).then_some(cert.error),
            role: cert.role,
            source: cert.source,
            common_name: cert.common_name,
            organizations: cert.organizations,
            serial: cert.serial,
            fingerprint: cert.fingerprint,
            issuer: cert.issuer,
            issuer_common_name: cert.issuer_common_name,
            issuer_fingerprint: cert.issuer_fingerprint,
        }
    }

    /// The table row after the NODE cell.
    fn row(&self) -> Vec<String> {
        let dash = |text: &str| {
            if text.is_empty() {
                "-".to_owned()
            } else {
                text.to_owned()
            }
        };
        let subject = if self.common_name.is_empty() {
            self.organizations
                .iter()
                .map(|o| format!("O={o}"))
                .collect::<Vec<_>>()
                .join(",")
        } else {
            format!("CN={}", self.common_name)
        };
        let warn = match (&self.error, &self.warning) {
            (Some(error), _) => format!("ERROR: {error}"),
            (None, Some(_)) if self.expires_in == "expired" => "EXPIRED".to_owned(),
            (None, Some(_)) => "EXPIRES SOON".to_owned(),
            (None, None) => String::new(),
        };
        vec![
            self.role.clone(),
            dash(&subject),
            dash(&short(&self.serial)),
            dash(&short(&self.issuer_fingerprint)),
            dash(&self.not_after),
            dash(&self.expires_in),
            warn,
        ]
    }
}

/// The first 16 hex digits: enough to tell certificates apart in a table.
fn short(hex: &str) -> String {
    hex.chars().take(16).collect()
}

impl CertsReport {
    /// One line per certificate that expires soon or has expired.
    fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.client.warning.iter().cloned().collect();
        for reply in &self.nodes.0 {
            let Some(data) = &reply.data else { continue };
            for cert in &data.certificates {
                if let Some(warning) = &cert.warning {
                    out.push(format!("node {}: {warning}", reply.node));
                }
            }
        }
        out
    }
}

impl Render for CertsReport {
    fn headers(&self) -> Vec<&'static str> {
        vec![
            "NODE",
            "ROLE",
            "SUBJECT",
            "SERIAL",
            "ISSUED BY",
            "NOT AFTER",
            "TIME LEFT",
            "WARN",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut client = vec!["(client)".to_owned()];
        client.extend(self.client.row());
        rows.push(client);
        for reply in &self.nodes.0 {
            match (&reply.data, &reply.error) {
                (Some(data), _) => {
                    for cert in &data.certificates {
                        let mut row = vec![reply.node.clone()];
                        row.extend(cert.row());
                        rows.push(row);
                    }
                }
                (None, Some(error)) => {
                    let mut row = vec![reply.node.clone()];
                    row.extend(["-"; 6].map(str::to_owned));
                    row.push(format!("ERROR: {}: {}", error.code, error.message));
                    rows.push(row);
                }
                (None, None) => {}
            }
        }
        rows
    }
}

output::with_metadata!(CertificateStatus);

#[cfg(test)]
mod tests {
    use super::*;

    fn info(role: &str, not_after: i64) -> CertificateInfo {
        CertificateInfo {
            role: role.to_owned(),
            source: "/state/apid/server.crt".to_owned(),
            common_name: "node-1".to_owned(),
            serial: "abcdef0123456789abcdef".to_owned(),
            fingerprint: "00".repeat(32),
            issuer: "O=talos".to_owned(),
            issuer_fingerprint: "11".repeat(32),
            not_before: 1_000,
            not_after,
            dns_names: vec!["node-1".to_owned()],
            ip_addresses: vec!["127.0.0.1".to_owned()],
            ..CertificateInfo::default()
        }
    }

    const DAY: i64 = 86_400;

    #[test]
    fn a_node_certificate_is_measured_against_the_nodes_clock() {
        let now = 100 * DAY;
        let status = CertificateStatus {
            metadata: None,
            certificates: vec![
                info("ca-issuing", now + 3650 * DAY),
                info("apid-server", now + DAY),
                info("apid-client", now - 2 * DAY),
            ],
            now,
        };
        let certs = NodeCerts::from(status).certificates;
        assert_eq!(certs[0].warning, None);
        assert_eq!(certs[0].expires_in, "3650d 0h");
        assert_eq!(certs[1].expires_in, "1d 0h");
        assert_eq!(
            certs[1].warning.as_deref(),
            Some("the apid-server certificate expires in 1d 0h")
        );
        assert_eq!(certs[2].expires_in, "expired");
        assert_eq!(
            certs[2].warning.as_deref(),
            Some("the apid-client certificate expired 2d 0h ago")
        );
        assert_eq!(certs[1].sans, ["node-1", "127.0.0.1"]);
        assert_eq!(certs[1].row()[6], "EXPIRES SOON");
        assert_eq!(certs[2].row()[6], "EXPIRED");
        assert_eq!(certs[0].row()[6], "");
        assert_eq!(certs[0].row()[2], "abcdef0123456789", "serial shortened");
    }

    #[test]
    fn an_unreadable_certificate_shows_its_error_and_no_dates() {
        let status = CertificateStatus {
            metadata: None,
            certificates: vec![CertificateInfo {
                role: "apid-server".to_owned(),
                source: "/state/apid/server.crt".to_owned(),
                error: "cannot read: No such file or directory".to_owned(),
                ..CertificateInfo::default()
            }],
            now: DAY,
        };
        let cert = &NodeCerts::from(status).certificates[0];
        assert_eq!(
            cert.error.as_deref(),
            Some("cannot read: No such file or directory")
        );
        assert!(cert.not_after.is_empty() && cert.warning.is_none());
        assert!(cert.row()[6].starts_with("ERROR: cannot read"));
    }

    #[test]
    fn expiry_warns_inside_the_threshold_only() {
        let now = OffsetDateTime::from_unix_timestamp(1_000 * DAY).expect("time");
        let month = time::Duration::days(EXPIRY_WARNING_DAYS);
        let (_, warning) = expiry("x", now + time::Duration::days(31), now, month);
        assert!(warning.is_none());
        let (_, warning) = expiry("x", now + time::Duration::days(29), now, month);
        assert!(warning.is_some());
    }

    #[test]
    fn a_renewed_server_certificate_warns_only_when_its_renewal_is_overdue() {
        let now = 100 * DAY;
        let leaf = |role: &str, left: i64| CertificateInfo {
            not_before: now + left - DAY,
            ..info(role, now + left)
        };
        let status = CertificateStatus {
            metadata: None,
            certificates: vec![
                // 24 h certificates: 20 h left is normal, 5 h left is overdue.
                leaf("apid-server", 20 * 3600),
                leaf("trustd-server", 5 * 3600),
                // A CA with 20 h left is a problem whatever its lifetime.
                leaf("ca-issuing", 20 * 3600),
            ],
            now,
        };
        let certs = NodeCerts::from(status).certificates;
        assert_eq!(certs[0].warning, None);
        assert!(certs[1].warning.is_some());
        assert!(certs[2].warning.is_some());
    }
}
