//! Hot reload of a TLS server config from its certificate, key and CA files.
//!
//! [`ServerConfigReloader::load`] reads the files and builds the first config (so a daemon fails
//! at startup, not at its first handshake). [`ServerConfigReloader::run`] then polls the files'
//! metadata (length, mtime, inode) and rebuilds when any of them changed, and rebuilds on demand
//! through a [`ReloadHandle`] (the binaries wire SIGHUP to it). A rebuild that fails keeps the
//! previous config and logs why; connections already open are never affected, because a config
//! is only read when a handshake starts.
//!
//! Polling instead of inotify: one `stat` per file per second is nothing, it needs no extra
//! crate, and it sees atomic replacements (rename over the file) as well as in-place writes.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use basalt_pki::tls::TlsError;
use rustls::ServerConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info};

/// How often the credential files are checked for changes.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The files a server's TLS config is built from.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Accepted client CA bundle (PEM).
    pub ca: PathBuf,
}

impl fmt::Debug for CredentialFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialFiles")
            .field("cert", &self.cert)
            .field("key", &"<redacted>")
            .field("ca", &self.ca)
            .finish()
    }
}

/// The contents of [`CredentialFiles`], handed to the config builder.
#[derive(Clone)]
pub struct CredentialPem {
    /// Certificate chain PEM.
    pub cert: Vec<u8>,
    /// Private key PEM.
    pub key: Vec<u8>,
    /// CA bundle PEM.
    pub ca: Vec<u8>,
}

impl fmt::Debug for CredentialPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialPem")
            .field("cert_bytes", &self.cert.len())
            .field("key", &"<redacted>")
            .field("ca_bytes", &self.ca.len())
            .finish()
    }
}

/// Builds a server config from credential PEM (for apid:
/// [`basalt_pki::server_config_for_apid`]).
pub type BuildConfig = dyn Fn(&CredentialPem) -> Result<ServerConfig, TlsError> + Send + Sync;

/// Why credentials could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// A credential file could not be read.
    #[error("read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The files were read but do not make a usable TLS config.
    #[error("build TLS config from {}, {} and {}", .files.cert.display(), .files.key.display(), .files.ca.display())]
    Build {
        /// The files involved.
        files: Box<CredentialFiles>,
        /// What was wrong.
        #[source]
        source: TlsError,
    },
    /// The reloader task is gone (the server is shutting down).
    #[error("the certificate reloader has stopped")]
    Stopped,
}

/// Asks the reloader to rebuild the config now, whether or not the files changed.
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    tx: mpsc::Sender<oneshot::Sender<Result<(), ReloadError>>>,
}

impl ReloadHandle {
    /// Rebuilds the config from the files now and waits for the result. On error the previous
    /// config stays in use (and the error has been logged).
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let (done, result) = oneshot::channel();
        self.tx.send(done).await.map_err(|_| ReloadError::Stopped)?;
        result.await.map_err(|_| ReloadError::Stopped)?
    }
}

/// Owns the `watch` sender of the current server config; see the module docs.
pub struct ServerConfigReloader {
    files: CredentialFiles,
    build: Arc<BuildConfig>,
    config: watch::Sender<Arc<ServerConfig>>,
    stamps: [Option<FileStamp>; 3],
    requests: mpsc::Receiver<oneshot::Sender<Result<(), ReloadError>>>,
}

impl fmt::Debug for ServerConfigReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfigReloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerConfigReloader {
    /// Reads the files and builds the first config. Returns the reloader (to be `run`), the
    /// receiver every handshake reads from, and a handle for on-demand reloads.
    pub fn load(
        files: CredentialFiles,
        build: Arc<BuildConfig>,
    ) -> Result<(Self, watch::Receiver<Arc<ServerConfig>>, ReloadHandle), ReloadError> {
        let stamps = stamps(&files);
        let pem = read_all(&files)?;
        let config = build(&pem).map_err(|source| ReloadError::Build {
            files: Box::new(files.clone()),
            source,
        })?;
        log_loaded(&files, &pem, "Loaded TLS credentials");
        let (tx, rx) = watch::channel(Arc::new(config));
        let (req_tx, req_rx) = mpsc::channel(4);
        Ok((
            Self {
                files,
                build,
                config: tx,
                stamps,
                requests: req_rx,
            },
            rx,
            ReloadHandle { tx: req_tx },
        ))
    }

    /// Polls the files every `interval` and serves [`ReloadHandle::reload`] requests until every
    /// receiver of the config is gone.
    pub async fn run(mut self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handles_alive = true;
        loop {
            tokio::select! {
                () = self.config.closed() => break,
                _ = ticker.tick() => {
                    let now = stamps(&self.files);
                    if now != self.stamps {
                        self.stamps = now;
                        let _ = self.rebuild("files changed");
                    }
                }
                request = self.requests.recv(), if handles_alive => match request {
                    Some(done) => {
                        self.stamps = stamps(&self.files);
                        let _ = done.send(self.rebuild("reload requested"));
                    }
                    // Every handle is gone: keep polling the files only.
                    None => handles_alive = false,
                },
            }
        }
    }

    /// Rebuilds from the files; on success the new config is published.
    fn rebuild(&mut self, why: &'static str) -> Result<(), ReloadError> {
        let result = read_all(&self.files).and_then(|pem| {
            let config = (self.build)(&pem).map_err(|source| ReloadError::Build {
                files: Box::new(self.files.clone()),
                source,
            })?;
            Ok((pem, config))
        });
        match result {
            Ok((pem, config)) => {
                self.config.send_replace(Arc::new(config));
                log_loaded(&self.files, &pem, why);
                Ok(())
            }
            Err(err) => {
                error!(
                    trigger = why,
                    error = &err as &dyn std::error::Error,
                    "TLS credentials not reloaded; keeping the previous ones"
                );
                Err(err)
            }
        }
    }
}

/// What identifies one version of a file without reading it: length, mtime, inode and device.
/// Any change (an in-place write, or a new file renamed over it) means "read it again". Used by
/// every poller of files in the daemons (TLS credentials here; apid's forwarding credentials and
/// revocation list; trustd's tokens and CAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    dev: u64,
}

impl FileStamp {
    /// The file's stamp now; `None` when it cannot be stat'ed (missing, no permission).
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
            dev: meta.dev(),
        })
    }
}

fn stamps(files: &CredentialFiles) -> [Option<FileStamp>; 3] {
    [
        FileStamp::of(&files.cert),
        FileStamp::of(&files.key),
        FileStamp::of(&files.ca),
    ]
}

fn read_all(files: &CredentialFiles) -> Result<CredentialPem, ReloadError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ReloadError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok(CredentialPem {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        ca: read(&files.ca)?,
    })
}

/// Logs which certificate is now in use and until when it is valid (STYLE §6: cert loaded or
/// rotated, with expiry).
fn log_loaded(files: &CredentialFiles, pem: &CredentialPem, why: &str) {
    let cert = String::from_utf8_lossy(&pem.cert);
    match basalt_pki::Identity::from_pem(&cert) {
        Ok(id) => info!(
            cert.path = %files.cert.display(),
            cert.subject = %id.subject,
            cert.serial = %id.serial,
            cert.not_after = %id.not_after,
            ca.path = %files.ca.display(),
            trigger = why,
            "TLS credentials in use"
        ),
        Err(_) => info!(cert.path = %files.cert.display(), trigger = why, "TLS credentials in use"),
    }
}
