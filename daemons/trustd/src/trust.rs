//! The reloadable trust material: the accepted join tokens, the issuing CA and the CA bundle
//! sent back with every certificate.
//!
//! `Server::bind` loads it once; [`TrustReloader::run`] then polls (length, mtime, inode, as
//! `basalt_grpc::reload` does for the TLS files) the config file (when trustd was given one
//! with `Bound::watch_config_file`), the CA certificate and key and the accepted-CA bundle, and
//! publishes new material when any of them changed and everything loads. A bad or half-written
//! file keeps the previous material (logged and counted in [`TrustReloads`]), so a rotation
//! that goes wrong never leaves trustd refusing every node. machined rewrites these files when
//! the machine config's tokens or CAs change (CA and token rotation without a restart).
//!
//! Only `tokens`, `ca` and `acceptedCas` are reloaded; a change to anything else in the config
//! file (listen address, journal, policy, limits) is logged as needing a restart. A call in
//! flight finishes with the material it started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use basalt_config::TrustdConfig;
use basalt_grpc::FileStamp;
use basalt_pki::{CertificateAuthority, Identity};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::error::Error;
use crate::tokens::TokenSet;

/// The CA that signs and the bundle returned with each certificate.
#[derive(Debug)]
pub(crate) struct SigningCa {
    pub(crate) ca: CertificateAuthority,
    /// The response's `ca`: the issuing CA followed by the other accepted CAs, as PEM.
    pub(crate) bundle: Vec<u8>,
}

/// Counts of reloads of the trust material, and on-demand reloads (SIGHUP, tests).
#[derive(Clone, Debug)]
pub struct TrustReloads {
    counters: Arc<Counters>,
    requests: mpsc::Sender<oneshot::Sender<Result<(), Error>>>,
}

#[derive(Debug, Default)]
struct Counters {
    reloaded: AtomicU64,
    failed: AtomicU64,
}

impl TrustReloads {
    /// How many times new material was loaded since start.
    pub fn reloaded(&self) -> u64 {
        self.counters.reloaded.load(Ordering::Relaxed)
    }

    /// How many reloads failed (the previous material stayed in use).
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Reloads now, whether or not the files changed, and waits for the result. On error the
    /// previous material stays in use.
    pub async fn reload(&self) -> Result<(), Error> {
        let (done, result) = oneshot::channel();
        self.requests
            .send(done)
            .await
            .map_err(|_| Error::ReloaderStopped)?;
        result.await.map_err(|_| Error::ReloaderStopped)?
    }
}

/// Owns the senders of the current material; see the module docs.
#[derive(Debug)]
pub(crate) struct TrustReloader {
    config: TrustdConfig,
    config_path: Option<PathBuf>,
    stamps: Vec<Option<FileStamp>>,
    tokens: watch::Sender<Arc<TokenSet>>,
    signing: watch::Sender<Arc<SigningCa>>,
    requests: mpsc::Receiver<oneshot::Sender<Result<(), Error>>>,
    counters: Arc<Counters>,
}

/// What [`TrustReloader::load`] hands out: the reloader, the receivers every call reads and
/// the public handle.
pub(crate) type TrustParts = (
    TrustReloader,
    watch::Receiver<Arc<TokenSet>>,
    watch::Receiver<Arc<SigningCa>>,
    TrustReloads,
);

impl TrustReloader {
    /// Loads the material named by `config`; fails like `Server::bind` on a bad CA or bundle.
    pub(crate) fn load(config: &TrustdConfig) -> Result<TrustParts, Error> {
        let signing = load_ca(config)?;
        let tokens = TokenSet::new(&config.tokens);
        let (tokens_tx, tokens_rx) = watch::channel(Arc::new(tokens));
        let (signing_tx, signing_rx) = watch::channel(Arc::new(signing));
        let (req_tx, req_rx) = mpsc::channel(4);
        let counters = Arc::new(Counters::default());
        let reloader = TrustReloader {
            config: config.clone(),
            config_path: None,
            stamps: Vec::new(),
            tokens: tokens_tx,
            signing: signing_tx,
            requests: req_rx,
            counters: Arc::clone(&counters),
        };
        let reloader = reloader.with_stamps();
        let handle = TrustReloads {
            counters,
            requests: req_tx,
        };
        Ok((reloader, tokens_rx, signing_rx, handle))
    }

    /// Also watches `path`, the file `config` was read from, and re-reads tokens and CA paths
    /// from it on change.
    pub(crate) fn watch_config_file(&mut self, path: PathBuf) {
        self.config_path = Some(path);
        self.stamps = self.current_stamps();
    }

    fn with_stamps(mut self) -> Self {
        self.stamps = self.current_stamps();
        self
    }

    /// Polls every `interval` and serves [`TrustReloads::reload`] requests until every
    /// receiver is gone.
    pub(crate) async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handles_alive = true;
        loop {
            tokio::select! {
                () = self.tokens.closed() => break,
                _ = ticker.tick() => {
                    let now = self.current_stamps();
                    if now != self.stamps {
                        self.stamps = now;
                        let _ = self.reload("files changed");
                    }
                }
                request = self.requests.recv(), if handles_alive => match request {
                    Some(done) => {
                        self.stamps = self.current_stamps();
                        let _ = done.send(self.reload("reload requested"));
                    }
                    None => handles_alive = false,
                },
            }
        }
    }

    fn watched(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = Vec::with_capacity(4);
        if let Some(path) = &self.config_path {
            paths.push(path);
        }
        paths.push(&self.config.ca.cert);
        paths.push(&self.config.ca.key);
        if let Some(path) = &self.config.accepted_cas {
            paths.push(path);
        }
        paths
    }

    fn current_stamps(&self) -> Vec<Option<FileStamp>> {
        self.watched().into_iter().map(FileStamp::of).collect()
    }

    fn reload(&mut self, why: &'static str) -> Result<(), Error> {
        match self.try_reload() {
            Ok((config, signing, tokens)) => {
                let valid = tokens.valid_count(SystemTime::now());
                if valid == 0 {
                    warn!("Every configured token has expired; every call will be refused");
                }
                info!(
                    trigger = why,
                    ca.algorithm = %signing.ca.algorithm(),
                    ca.bundle_bytes = signing.bundle.len(),
                    tokens.configured = config.tokens.len(),
                    tokens.valid = valid,
                    "Reloaded tokens and CAs"
                );
                self.signing.send_replace(Arc::new(signing));
                self.tokens.send_replace(Arc::new(tokens));
                self.config = config;
                // The CA paths may have changed with the config: watch the new ones.
                self.stamps = self.current_stamps();
                self.counters.reloaded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                error!(
                    trigger = why,
                    error = &err as &dyn std::error::Error,
                    "Tokens and CAs not reloaded; keeping the previous ones"
                );
                Err(err)
            }
        }
    }

    fn try_reload(&self) -> Result<(TrustdConfig, SigningCa, TokenSet), Error> {
        let config = match &self.config_path {
            Some(path) => TrustdConfig::load(path).map_err(|source| Error::ReloadConfig {
                path: path.clone(),
                source: Box::new(source),
            })?,
            None => self.config.clone(),
        };
        warn_about_restart_only_changes(&self.config, &config);
        let signing = load_ca(&config)?;
        let tokens = TokenSet::new(&config.tokens);
        Ok((config, signing, tokens))
    }
}

/// Logs the settings that changed in the file but only take effect after a restart.
fn warn_about_restart_only_changes(old: &TrustdConfig, new: &TrustdConfig) {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.tls != new.tls {
        changed.push("tls");
    }
    if old.journal != new.journal {
        changed.push("journal");
    }
    if old.policy != new.policy {
        changed.push("policy");
    }
    if old.rate_limit != new.rate_limit {
        changed.push("rateLimit");
    }
    if old.handshake_timeout != new.handshake_timeout {
        changed.push("handshakeTimeout");
    }
    if old.metrics != new.metrics {
        changed.push("metrics");
    }
    if !changed.is_empty() {
        warn!(
            settings = ?changed,
            "Config settings changed that only take effect after a restart"
        );
    }
}

/// The issuing CA and the response bundle: the issuing CA first, then each accepted CA not
/// already listed, re-encoded from the parsed certificates so that nothing else in the bundle
/// file (a key block, comments) is ever sent.
pub(crate) fn load_ca(config: &TrustdConfig) -> Result<SigningCa, Error> {
    let cert = read_text(&config.ca.cert)?;
    let key = read_text(&config.ca.key)?;
    let ca = CertificateAuthority::from_pem(&cert, &key).map_err(|source| Error::LoadCa {
        path: config.ca.cert.clone(),
        source,
    })?;
    let mut certs: Vec<CertificateDer<'static>> =
        vec![CertificateDer::from(ca.cert_der().to_vec())];
    if let Some(path) = &config.accepted_cas {
        let bytes = std::fs::read(path).map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })?;
        let bad = |source| Error::LoadAcceptedCas {
            path: path.clone(),
            source,
        };
        for (index, der) in basalt_pki::certificates_from_pem(&bytes)
            .map_err(bad)?
            .into_iter()
            .enumerate()
        {
            if !Identity::from_der(&der).map_err(bad)?.is_ca {
                return Err(Error::AcceptedCaNotACa {
                    path: path.clone(),
                    index,
                });
            }
            if !certs.contains(&der) {
                certs.push(der);
            }
        }
    }
    Ok(SigningCa {
        ca,
        bundle: basalt_pki::certificates_to_pem(&certs).into_bytes(),
    })
}

fn read_text(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}
