//! Shared helpers: PKI generated at test time, trustd in-process on 127.0.0.1:0 with its files
//! in a temp dir, and the generated tonic client over real TLS (optionally from another
//! loopback source address).

#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use basalt_api::securityapi::security_service_client::SecurityServiceClient;
use basalt_api::securityapi::{CertificateRequest, CertificateResponse};
use basalt_config::trustd::CertKeyFiles;
use basalt_config::{AcceptedToken, RateLimit, Token, TrustdConfig, TrustdPolicy};
use basalt_pki::{
    CaOptions, CertificateAuthority, KeyAlgorithm, ServerCertRequest, SubjectAltName, build_csr,
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tempfile::TempDir;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};
use trustd::{
    Bound, HandshakeFailure, HandshakeStatsHandle, JournalRecord, ReloadHandle, Server,
    TrustReloads,
};

/// Every test body runs under this deadline.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// The current join token of every test trustd.
pub const TOKEN: &str = "abcdef.0123456789abcdef";
/// A retired token that is still valid for an hour.
pub const RETIRED: &str = "ghijkl.0123456789abcdef";
/// A retired token whose expiry has passed.
pub const EXPIRED: &str = "mnopqr.0123456789abcdef";

/// Runs `body` under [`TEST_DEADLINE`].
pub async fn within_deadline<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, body)
        .await
        .expect("test exceeded its deadline")
}

/// Polls `check` every 20 ms until it is true, for at most 10 s (for effects that happen on
/// another task, such as handshake counters; never for readiness).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A short temp dir.
pub fn short_tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("bt")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

// === PKI ===

/// The OS CA and trustd's server certificate (SAN 127.0.0.1).
pub struct Pki {
    pub ca: CertificateAuthority,
    pub server_cert: String,
    pub server_key: String,
}

impl Pki {
    pub fn new() -> Self {
        Self::with_algorithm(KeyAlgorithm::Ed25519)
    }

    pub fn with_algorithm(algorithm: KeyAlgorithm) -> Self {
        basalt_pki::install_crypto_provider();
        let ca = CertificateAuthority::generate(&CaOptions {
            algorithm,
            ..CaOptions::talos_os()
        })
        .expect("ca");
        let server = ca
            .issue_server(&ServerCertRequest {
                common_name: Some("trustd".to_owned()),
                sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
                ttl: Duration::from_secs(3600),
            })
            .expect("server cert");
        Self {
            ca,
            server_cert: server.cert_pem,
            server_key: server.key_pem,
        }
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }
}

/// A CSR as a worker makes it: CN, DNS/IP SANs, a fresh key of `alg`.
pub fn worker_csr(cn: &str, sans: &[&str], alg: KeyAlgorithm) -> String {
    let sans: Vec<SubjectAltName> = sans.iter().map(|s| s.parse().expect("san")).collect();
    build_csr(cn, &sans, alg).expect("csr").0
}

/// Runs openssl in `dir`, asserts success, and returns stdout followed by stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl binary is needed for these tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

// === trustd in-process ===

/// trustd bound on 127.0.0.1:0 with its files in a temp dir.
pub struct Trustd {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub config: TrustdConfig,
    pub stats: HandshakeStatsHandle,
    pub reload: ReloadHandle,
    /// Reloads of tokens and CAs (counts, on-demand reload).
    pub trust: TrustReloads,
    /// `trustd.yaml` in `dir`: the config as a file, watched for token and CA changes.
    pub config_path: PathBuf,
    /// The bound Prometheus endpoint, when the config asked for one.
    pub metrics: Option<SocketAddr>,
    ca_pem: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), trustd::Error>>>,
}

impl Trustd {
    /// Starts trustd with the three test tokens and default limits.
    pub async fn start(pki: &Pki) -> Self {
        Self::start_with(pki, |_| {}).await
    }

    /// The config [`Trustd::start`] uses, with files under `dir`.
    pub fn config(pki: &Pki, dir: &Path) -> TrustdConfig {
        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).expect("write test file");
            path
        };
        let now = std::time::SystemTime::now();
        let token = |text: &str, expires| AcceptedToken {
            token: Token::parse(text).expect("token"),
            expires,
        };
        TrustdConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls: CertKeyFiles {
                cert: write("server.crt", &pki.server_cert),
                key: write("server.key", &pki.server_key),
            },
            ca: CertKeyFiles {
                cert: write("ca.crt", pki.ca.cert_pem()),
                key: write("ca.key", &pki.ca.key_pem()),
            },
            accepted_cas: None,
            tokens: vec![
                token(TOKEN, None),
                token(RETIRED, Some(now + Duration::from_secs(3600))),
                token(EXPIRED, Some(now - Duration::from_secs(1))),
            ],
            journal: dir.join("issued.jsonl"),
            policy: TrustdPolicy::default(),
            rate_limit: RateLimit::default(),
            handshake_timeout: Duration::from_secs(10),
            metrics: None,
        }
    }

    /// Starts trustd after `adjust` changed the config.
    pub async fn start_with(pki: &Pki, adjust: impl FnOnce(&mut TrustdConfig)) -> Self {
        let dir = short_tempdir();
        let mut config = Self::config(pki, dir.path());
        adjust(&mut config);
        let config_path = dir.path().join("trustd.yaml");
        write_config(&config_path, &config);
        let bound: Bound = Server::bind(config.clone())
            .await
            .expect("bind trustd")
            .watch_config_file(config_path.clone());
        let trust = bound.trust_reloads();
        let addr = bound.local_addr();
        let stats = bound.handshake_stats();
        let reload = bound.reload_handle();
        let metrics = bound.metrics_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = rx.await;
        }));
        Self {
            dir,
            addr,
            config,
            stats,
            reload,
            trust,
            config_path,
            metrics,
            ca_pem: pki.ca_pem().to_owned(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A client over TLS from 127.0.0.1.
    pub fn client(&self) -> SecurityServiceClient<Channel> {
        self.client_from(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// A client whose connections come from `source` (a loopback address).
    pub fn client_from(&self, source: IpAddr) -> SecurityServiceClient<Channel> {
        assert!(source.is_loopback(), "tests stay on loopback");
        SecurityServiceClient::new(channel(self.addr, &self.ca_pem, source))
    }

    /// The journal's records so far.
    pub fn journal(&self) -> Vec<JournalRecord> {
        read_journal(&self.config.journal)
    }

    /// Failed handshakes counted for `reason` so far.
    pub fn failed(&self, reason: HandshakeFailure) -> u64 {
        self.stats.snapshot().failed(reason)
    }

    /// Stops trustd, asserting a clean shutdown.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("trustd task").expect("trustd serve");
        }
    }
}

/// Writes `config` as YAML to `path` atomically (rename), as machined does.
pub fn write_config(path: &Path, config: &TrustdConfig) {
    let yaml = config.to_yaml().expect("render trustd config");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

pub fn read_journal(path: &Path) -> Vec<JournalRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("journal line is a record"))
        .collect()
}

/// A lazily connecting channel to trustd over TLS 1.3 + h2, no client certificate, with the
/// TCP socket bound to `source`.
pub fn channel(addr: SocketAddr, ca_pem: &str, source: IpAddr) -> Channel {
    let config = basalt_pki::client_config(ca_pem.as_bytes(), None).expect("client tls config");
    let connector = TlsConnector::from(Arc::new(config));
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let socket = match source {
                    IpAddr::V4(_) => TcpSocket::new_v4()?,
                    IpAddr::V6(_) => TcpSocket::new_v6()?,
                };
                socket.bind(SocketAddr::new(source, 0))?;
                let tcp = socket.connect(addr).await?;
                let tls = connector
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

/// A Certificate request for `csr`, with `token` in the `token` metadata when given.
pub fn request(csr: impl Into<Vec<u8>>, token: Option<&str>) -> Request<CertificateRequest> {
    let mut request = Request::new(CertificateRequest { csr: csr.into() });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "token",
            MetadataValue::try_from(token).expect("ascii token"),
        );
    }
    request
}

/// Sends a Certificate call.
pub async fn certificate(
    client: &mut SecurityServiceClient<Channel>,
    csr: impl Into<Vec<u8>>,
    token: Option<&str>,
) -> Result<Response<CertificateResponse>, Status> {
    client.certificate(request(csr, token)).await
}

/// A path in the test dir.
pub fn path_in(dir: &TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
