//! `basaltctl cert revoke (--serial S | --cert FILE) --reason TEXT` and `basaltctl cert
//! revoked`: the client-certificate deny list (`basalt.v1.RevocationService`).
//!
//! Like the other node commands they make one call per target node (`-n a,b,c` revokes on
//! every node named), print one block per node (NODE column, `-o json|yaml`), list failed nodes
//! on stderr and exit non-zero when any failed.

use std::path::PathBuf;

use anyhow::Context as _;
use basalt_api::basalt::v1::revocation_service_client::RevocationServiceClient;
use basalt_api::basalt::v1::{
    ListRevokedRequest, Revoke, RevokeRequest, RevokedCertificate, RevokedList,
};
use basalt_api::common::Metadata;
use clap::{Args, Subcommand};
use serde::Serialize;
use tonic::transport::Channel;

use crate::Globals;
use crate::connect::{connect, runtime};
use crate::node_cmd::{NodeArgs, NodeTable, WithMetadata, or_dash, replies, show};
use crate::usage::OrUsage as _;

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Revoke a client certificate: apid refuses it from now on and closes its open
    /// connections.
    Revoke(RevokeArgs),
    /// Show the certificates each node has revoked, oldest first.
    Revoked(NodeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The certificate's serial number, hex (as `basaltctl config info` prints it).
    #[arg(long, value_name = "HEX", required_unless_present = "cert")]
    serial: Option<String>,
    /// The certificate itself (PEM): revoked by its SHA-256 fingerprint.
    #[arg(long, value_name = "FILE", conflicts_with = "serial")]
    cert: Option<PathBuf>,
    /// Why (recorded with the entry, shown by `cert revoked`).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    #[command(flatten)]
    node: NodeArgs,
}

pub(crate) fn run(cmd: CertCommand, globals: &Globals) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        CertCommand::Revoke(args) => {
            let request = revoke_request(&args)?;
            let results = rt.block_on(async {
                anyhow::Ok(
                    connect(globals, &args.node.target)
                        .await?
                        .each_node(request, |client, request| async move {
                            revocations(client.channel()).revoke(request).await
                        })
                        .await,
                )
            })?;
            show(
                &args.node,
                replies(results, |r| r.messages, RevokeView::from),
            )
        }
        CertCommand::Revoked(args) => {
            let results = rt.block_on(async {
                anyhow::Ok(
                    connect(globals, &args.target)
                        .await?
                        .each_node(ListRevokedRequest {}, |client, request| async move {
                            revocations(client.channel()).list_revoked(request).await
                        })
                        .await,
                )
            })?;
            show(&args, replies(results, |r| r.messages, RevokedView::from))
        }
    }
}

/// The request for `--serial` as given, or for `--cert`'s fingerprint. A CA certificate is
/// refused here already (the node refuses it too): revoking a CA is done by rotating it.
fn revoke_request(args: &RevokeArgs) -> anyhow::Result<RevokeRequest> {
    local_revoke_request(args).or_usage()
}

/// [`revoke_request`], before its errors are marked as the caller's.
fn local_revoke_request(args: &RevokeArgs) -> anyhow::Result<RevokeRequest> {
    let (serial, fingerprint) = match (&args.serial, &args.cert) {
        (Some(serial), _) => (serial.clone(), String::new()),
        (None, Some(path)) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            let identity = basalt_pki::Identity::from_pem(&pem)
                .with_context(|| format!("read the certificate in {}", path.display()))?;
            if identity.is_ca {
                anyhow::bail!(
                    "{} is a CA certificate; a CA cannot be revoked (rotate it instead)",
                    path.display()
                );
            }
            (String::new(), identity.fingerprint)
        }
        // clap requires one of the two.
        (None, None) => anyhow::bail!("give --serial or --cert"),
    };
    Ok(RevokeRequest {
        serial,
        fingerprint,
        reason: args.reason.clone(),
    })
}

fn revocations(channel: Channel) -> RevocationServiceClient<Channel> {
    RevocationServiceClient::new(channel)
}

impl WithMetadata for Revoke {
    fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }
}

impl WithMetadata for RevokedList {
    fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }
}

/// One deny-list entry, as printed.
#[derive(Debug, Serialize)]
struct EntryView {
    #[serde(skip_serializing_if = "String::is_empty")]
    serial: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    fingerprint: String,
    reason: String,
    time: String,
    revoked_by: String,
}

impl From<RevokedCertificate> for EntryView {
    fn from(entry: RevokedCertificate) -> Self {
        let time = entry
            .time
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let revoked_by = entry.caller.map_or_else(String::new, |caller| {
            let mut who = caller.common_name;
            if !caller.roles.is_empty() {
                who = format!("{who} ({})", caller.roles.join(","))
                    .trim()
                    .to_owned();
            }
            if !caller.address.is_empty() {
                who = format!("{who} from {}", caller.address).trim().to_owned();
            }
            who
        });
        EntryView {
            serial: entry.serial,
            fingerprint: entry.fingerprint,
            reason: entry.reason,
            time,
            revoked_by,
        }
    }
}

impl EntryView {
    /// `serial 1f3a` or `sha256 ab12…` (the fingerprint shortened for the table).
    fn certificate(&self) -> String {
        if self.serial.is_empty() {
            let short: String = self.fingerprint.chars().take(16).collect();
            format!("sha256 {short}…")
        } else {
            format!("serial {}", self.serial)
        }
    }
}

/// `cert revoke`: the entry and whether it was already there.
#[derive(Debug, Serialize)]
struct RevokeView {
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<EntryView>,
    already_revoked: bool,
}

impl From<Revoke> for RevokeView {
    fn from(reply: Revoke) -> Self {
        RevokeView {
            entry: reply.entry.map(EntryView::from),
            already_revoked: reply.already_revoked,
        }
    }
}

impl NodeTable for RevokeView {
    fn headers() -> Vec<&'static str> {
        vec!["CERTIFICATE", "STATE", "REASON"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let state = if self.already_revoked {
            "already revoked"
        } else {
            "revoked"
        };
        match &self.entry {
            Some(entry) => vec![vec![
                entry.certificate(),
                state.to_owned(),
                or_dash(&entry.reason),
            ]],
            None => vec![vec!["-".to_owned(), state.to_owned(), "-".to_owned()]],
        }
    }
}

/// `cert revoked`: every entry.
#[derive(Debug, Serialize)]
struct RevokedView {
    revoked: Vec<EntryView>,
}

impl From<RevokedList> for RevokedView {
    fn from(list: RevokedList) -> Self {
        RevokedView {
            revoked: list.entries.into_iter().map(EntryView::from).collect(),
        }
    }
}

impl NodeTable for RevokedView {
    fn headers() -> Vec<&'static str> {
        vec!["CERTIFICATE", "REVOKED", "BY", "REASON"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.revoked
            .iter()
            .map(|entry| {
                vec![
                    entry.certificate(),
                    or_dash(&entry.time),
                    or_dash(&entry.revoked_by),
                    or_dash(&entry.reason),
                ]
            })
            .collect()
    }
}
