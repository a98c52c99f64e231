//! Other nodes' apids: one pooled HTTP/2 connection per target over mTLS with this node's
//! `os:impersonator` client certificate (talos-facts.md §1.5, §4.4).
//!
//! - The server certificate of the target is verified against apid's accepted CA bundle
//!   (`tls.ca`, the same bundle clients are checked against) with the target's host as the
//!   server name: an IP target must be an IP SAN, a name a DNS SAN.
//! - The credentials (`forwarding.cert` / `forwarding.key`, re-issued by machined every 12 h
//!   and on CA changes) and the CA bundle are checked for changes at most once per
//!   [`RECHECK_INTERVAL`], on the path of a forwarded call; a change rebuilds the client
//!   config and drops every pooled connection, so no call rides on a connection made with
//!   credentials or trust that are no longer current. A rebuild that fails keeps the previous
//!   config (and says why in the log).
//! - A connection that died is made again by the next call to its target; a failed connect
//!   is not cached, so a node that comes back is reached at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use basalt_grpc::FileStamp;
use bytes::Bytes;
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use crate::audit::AuditGuard;
use crate::body::ResponseBody;
use crate::error::{BoxError, Error};
use crate::forward::{Connection, ConnectionSlot, forward_streaming, handshake};
use crate::peer::CallIdentity;
use crate::routing::Target;

/// How often, at most, the credential files are checked for changes.
pub(crate) const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// TCP connect plus TLS and HTTP/2 handshakes to another apid.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pooled targets kept before closed entries are swept out (targets come from client
/// metadata, so the map must not grow without bound).
const MAX_POOLED: usize = 1024;

/// The files of the forwarding credentials.
#[derive(Clone, Debug)]
pub(crate) struct ForwardingFiles {
    /// The `os:impersonator` client certificate (PEM).
    pub(crate) cert: PathBuf,
    /// Its key (PEM).
    pub(crate) key: PathBuf,
    /// The accepted CA bundle, also the roots for other apids' server certificates.
    pub(crate) ca: PathBuf,
}

/// Client side of apid → apid; see the module docs.
#[derive(Debug)]
pub(crate) struct RemoteApids {
    files: ForwardingFiles,
    /// The port a target without one is dialled on (this apid's own).
    default_port: u16,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The current client config, if one could be built.
    config: Option<Arc<ClientConfig>>,
    /// File stamps the config was built from.
    stamps: [Option<FileStamp>; 3],
    /// When the files were last checked.
    checked: Option<Instant>,
    /// Why the last load failed, while there is no config.
    load_error: Option<String>,
    /// One connection slot per `host:port`.
    pool: HashMap<(crate::routing::Host, u16), Arc<ConnectionSlot>>,
}

impl RemoteApids {
    /// A client for `files`; tries to load them now so a problem shows in the log at start,
    /// but a node whose forwarding credentials are broken still serves its own calls.
    pub(crate) fn new(files: ForwardingFiles, default_port: u16) -> Self {
        let remote = Self {
            files,
            default_port,
            state: Mutex::new(State {
                config: None,
                stamps: [None; 3],
                checked: None,
                load_error: None,
                pool: HashMap::new(),
            }),
        };
        if let Err(err) = remote.client_config() {
            warn!(
                error = err.as_ref() as &dyn std::error::Error,
                "Forwarding credentials not usable yet; calls to other nodes fail until they are"
            );
        }
        remote
    }

    /// Forwards one call to `target`'s apid, streaming both ways (one-to-one).
    pub(crate) async fn forward(
        &self,
        request: Request<Incoming>,
        call: &CallIdentity,
        target: &Target,
        audit: AuditGuard,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let head = match self.head(parts, call, target) {
            Ok(head) => head,
            Err(err) => return ResponseBody::error(err, Some(audit)),
        };
        forward_streaming(
            self.sender(target),
            head,
            body,
            audit,
            "remote apid",
            |source| self.unreachable(target, source),
        )
        .await
    }

    /// The request head for `target`: the client's, with the URI pointing at the target,
    /// the caller's roles and identity, and `proxyfrom` (this node as the client addressed it,
    /// as Talos) so the target serves it locally.
    pub(crate) fn head(
        &self,
        mut parts: http::request::Parts,
        call: &CallIdentity,
        target: &Target,
    ) -> Result<Request<()>, Error> {
        let proxy_from = parts
            .uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("unknown"));
        parts.uri = self.uri(parts.uri, target)?;
        call.apply(&mut parts.headers);
        parts
            .headers
            .insert(basalt_authz::metadata::PROXY_FROM, proxy_from);
        Ok(Request::from_parts(parts, ()))
    }

    /// `https://<host>:<port>/<path>` for `target`.
    fn uri(&self, uri: Uri, target: &Target) -> Result<Uri, Error> {
        let port = target.port.unwrap_or(self.default_port);
        let invalid = || {
            Error::Route(crate::routing::RouteError::InvalidTarget {
                target: target.name.clone(),
            })
        };
        let authority: Authority = format!("{}:{port}", target.host)
            .parse()
            .map_err(|_| invalid())?;
        let mut parts = uri.into_parts();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        Uri::from_parts(parts).map_err(|_| invalid())
    }

    /// The error a client gets when `target` cannot be reached.
    pub(crate) fn unreachable(&self, target: &Target, source: BoxError) -> Error {
        Error::NodeUnreachable {
            target: target.name.clone(),
            addr: format!(
                "{}:{}",
                target.host,
                target.port.unwrap_or(self.default_port)
            ),
            source,
        }
    }

    /// The pooled connection's sender for `target`, connecting first if needed.
    pub(crate) async fn sender(&self, target: &Target) -> Result<SendRequest<Bytes>, BoxError> {
        let config = self.client_config()?;
        let port = target.port.unwrap_or(self.default_port);
        let slot = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.pool.len() >= MAX_POOLED {
                state.pool.retain(|_, slot| slot.is_open());
            }
            Arc::clone(state.pool.entry((target.host.clone(), port)).or_default())
        };
        slot.sender(|| connect(config, target, port)).await
    }

    /// The current client config, rebuilt (and the pool emptied) when the files changed.
    fn client_config(&self) -> Result<Arc<ClientConfig>, BoxError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = state
            .checked
            .is_none_or(|checked| checked.elapsed() >= RECHECK_INTERVAL);
        if due {
            state.checked = Some(Instant::now());
            let stamps = self.stamps();
            if state.config.is_none() || stamps != state.stamps {
                match self.build() {
                    Ok(config) => {
                        let replaced = state.config.replace(Arc::new(config)).is_some();
                        state.stamps = stamps;
                        state.load_error = None;
                        // Connections made with the old credentials or trust go; calls
                        // already on them finish there.
                        state.pool.clear();
                        if replaced {
                            info!(
                                cert = %self.files.cert.display(),
                                "Forwarding credentials reloaded; pooled connections dropped"
                            );
                        }
                    }
                    Err(err) => {
                        warn!(
                            error = err.as_ref() as &dyn std::error::Error,
                            "Cannot load the forwarding credentials; keeping the previous ones"
                        );
                        if state.config.is_none() {
                            state.load_error = Some(basalt_daemon::error_chain(err.as_ref()));
                            return Err(err);
                        }
                    }
                }
            }
        }
        match (&state.config, &state.load_error) {
            (Some(config), _) => Ok(Arc::clone(config)),
            (None, Some(why)) => {
                Err(format!("forwarding credentials are not loaded: {why}").into())
            }
            (None, None) => Err("forwarding credentials are not loaded".into()),
        }
    }

    fn stamps(&self) -> [Option<FileStamp>; 3] {
        [&self.files.cert, &self.files.key, &self.files.ca].map(|path| FileStamp::of(path))
    }

    fn build(&self) -> Result<ClientConfig, BoxError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|err| -> BoxError { format!("read {}: {err}", path.display()).into() })
        };
        let (cert, key, ca) = (
            read(&self.files.cert)?,
            read(&self.files.key)?,
            read(&self.files.ca)?,
        );
        Ok(basalt_pki::tls::client_config(&ca, Some((&cert, &key)))?)
    }
}

/// TCP, TLS (server name = the target's host) and HTTP/2 to `target`, all under
/// [`CONNECT_TIMEOUT`].
async fn connect(
    config: Arc<ClientConfig>,
    target: &Target,
    port: u16,
) -> Result<Connection, BoxError> {
    let server_name = match &target.host {
        crate::routing::Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        crate::routing::Host::Dns(name) => ServerName::try_from(name.clone())?,
    };
    let connecting = async {
        let tcp = match &target.host {
            crate::routing::Host::Ip(ip) => TcpStream::connect((*ip, port)).await?,
            crate::routing::Host::Dns(name) => TcpStream::connect((name.as_str(), port)).await?,
        };
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
        handshake(tls, "remote apid").await
    };
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| -> BoxError {
            format!("no connection within {CONNECT_TIMEOUT:?}").into()
        })??;
    debug!(target = %target.name, port, "Connected to a remote apid");
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> RemoteApids {
        let files = ForwardingFiles {
            cert: "/nonexistent/c".into(),
            key: "/nonexistent/k".into(),
            ca: "/nonexistent/ca".into(),
        };
        RemoteApids::new(files, 50000)
    }

    #[test]
    fn uris_point_at_the_target() {
        let remote = remote();
        let uri = Uri::from_static("https://cp:50000/machine.MachineService/Version");
        let target = Target::parse("fd00::2").unwrap();
        assert_eq!(
            remote.uri(uri.clone(), &target).unwrap(),
            "https://[fd00::2]:50000/machine.MachineService/Version"
        );
        let target = Target::parse("worker-1:50001").unwrap();
        assert_eq!(
            remote.uri(uri, &target).unwrap(),
            "https://worker-1:50001/machine.MachineService/Version"
        );
    }

    /// Writes an impersonator certificate from a fresh CA into `dir`, with that CA as bundle.
    fn write_credentials(dir: &Path) -> ForwardingFiles {
        use basalt_authz::{Role, RoleSet};
        use basalt_pki::{CaOptions, CertificateAuthority, ClientCertRequest};
        let ca = CertificateAuthority::generate(&CaOptions::default()).unwrap();
        let issued = ca
            .issue_client(&ClientCertRequest {
                common_name: Some("apid@test".to_owned()),
                roles: RoleSet::from_iter([Role::Impersonator]),
                ttl: Duration::from_secs(3600),
            })
            .unwrap();
        let files = ForwardingFiles {
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
            ca: dir.join("ca.pem"),
        };
        // Written under new names and renamed, as machined's atomic writes do.
        for (path, text) in [
            (&files.key, &issued.key_pem),
            (&files.cert, &issued.cert_pem),
            (&files.ca, &ca.cert_pem().to_owned()),
        ] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        files
    }

    #[test]
    fn changed_credentials_rebuild_the_config_and_empty_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let remote = RemoteApids::new(write_credentials(dir.path()), 50000);
        let first = remote.client_config().unwrap();
        let key = (crate::routing::Host::Dns("worker-1".to_owned()), 50000);
        remote
            .state
            .lock()
            .unwrap()
            .pool
            .insert(key.clone(), Arc::default());

        // Unchanged files: the same config, the pool kept (even when the check is due).
        remote.state.lock().unwrap().checked = None;
        assert!(Arc::ptr_eq(&first, &remote.client_config().unwrap()));
        assert!(remote.state.lock().unwrap().pool.contains_key(&key));

        // Re-issued credentials and CA (a rotation): a new config, no pooled connection left.
        write_credentials(dir.path());
        remote.state.lock().unwrap().checked = None;
        let second = remote.client_config().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(remote.state.lock().unwrap().pool.is_empty());

        // Broken files later: the last good config stays in use.
        std::fs::write(dir.path().join("client.crt"), "not a certificate").unwrap();
        remote.state.lock().unwrap().checked = None;
        assert!(Arc::ptr_eq(&second, &remote.client_config().unwrap()));
    }

    #[tokio::test]
    async fn missing_credentials_fail_the_call_not_the_node() {
        let remote = remote();
        let target = Target::parse("127.0.0.1:1").unwrap();
        let err = remote.sender(&target).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c"), "{err}");
    }
}
