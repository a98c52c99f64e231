//! Shared helpers: PKI generated at test time, apid in-process on 127.0.0.1:0, a tiny real
//! machined stand-in (a tonic `MachineService` on a unix socket that echoes the internal
//! metadata it received), and mTLS clients.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apid::{Bound, HandshakeFailure, HandshakeStatsHandle, ReloadHandle, Server};
use basalt_api::basalt::v1 as diagnostics;
use basalt_api::basalt::v1::diagnostics_service_server::{
    DiagnosticsService, DiagnosticsServiceServer,
};
use basalt_api::common;
use basalt_api::machine;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_api::machine::machine_service_server::{MachineService, MachineServiceServer};
use basalt_authz::RoleSet;
use basalt_config::{ApidConfig, ApidTls, AuditSink};
use basalt_pki::{
    CaOptions, CertificateAuthority, ClientCertRequest, ServerCertRequest, SubjectAltName,
};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls_pki_types::ServerName;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_stream::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

/// Every test body runs under this deadline.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Large enough for the 33 MiB over-limit tests, so that only apid enforces the limit.
pub const CLIENT_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;

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

/// A short temp dir, so socket paths stay under the kernel's 107-byte limit.
pub fn short_tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("bs")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

// === PKI ===

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert: String,
    pub key: String,
}

/// The cluster CA, apid's server certificate, and a way to make client certificates.
pub struct Pki {
    pub ca: CertificateAuthority,
    pub server: CertKey,
}

impl Pki {
    pub fn new() -> Self {
        basalt_pki::install_crypto_provider();
        let ca = CertificateAuthority::generate(&CaOptions::talos_os()).expect("ca");
        let server = server_cert(&ca);
        Self { ca, server }
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A client certificate with these roles (O values), EKU clientAuth only.
    pub fn client(&self, roles: &[&str]) -> CertKey {
        client_cert(&self.ca, roles)
    }

    /// An `O=<role>` leaf made with rcgen, for what basalt-pki refuses to issue. One role only:
    /// rcgen keeps one value per attribute type.
    pub fn rcgen_client(
        &self,
        role: &str,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> CertKey {
        let ca_key = KeyPair::from_pem(&self.ca.key_pem()).expect("ca key");
        let issuer = Issuer::from_ca_cert_pem(self.ca.cert_pem(), ca_key).expect("issuer");
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, role);
        params.distinguished_name.push(DnType::CommonName, "rcgen");
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = ekus;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &issuer).expect("sign");
        CertKey {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

pub fn server_cert(ca: &CertificateAuthority) -> CertKey {
    let issued = ca
        .issue_server(&ServerCertRequest {
            common_name: Some("node-1".to_owned()),
            sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
            ttl: Duration::from_secs(3600),
        })
        .expect("server cert");
    CertKey {
        cert: issued.cert_pem,
        key: issued.key_pem,
    }
}

pub fn client_cert(ca: &CertificateAuthority, roles: &[&str]) -> CertKey {
    let issued = ca
        .issue_client(&ClientCertRequest {
            common_name: Some("tester".to_owned()),
            roles: RoleSet::parse(roles.iter().copied()),
            ttl: Duration::from_secs(3600),
        })
        .expect("client cert");
    CertKey {
        cert: issued.cert_pem,
        key: issued.key_pem,
    }
}

// === the machined stand-in ===

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the backend saw, echoed in every response's metadata.
const SEEN_ROLES: &str = "x-seen-talos-role";
const SEEN_CALLER: &str = "x-seen-basalt-caller";
const SEEN_PROXYFROM: &str = "x-seen-proxyfrom";
const SEEN_TIMEOUT: &str = "x-seen-grpc-timeout";

/// A tiny real MachineService on a unix socket, standing in for machined.
///
/// - `Version`, `Reboot`: canned replies;
/// - `ApplyConfiguration`: replies with a warning `received <n> bytes`;
/// - `Read` by path: `count:N` streams N messages `chunk-<i>`; `big:N` one message of N bytes;
///   `slow` one message then nothing (for deadlines); `watch` one message then nothing, and
///   reports on [`Backend::cancelled`] when the stream is dropped.
///
/// Every response carries the `talos-role` values it received (joined with `|`),
/// `basalt-caller`, `proxyfrom` and `grpc-timeout` as `x-seen-*` metadata.
pub struct Backend {
    pub socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    cancelled: mpsc::UnboundedReceiver<()>,
}

impl Backend {
    pub async fn start(socket: &Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).expect("bind backend socket");
        let (cancel_tx, cancelled) = mpsc::unbounded_channel();
        let service = MachineServiceServer::new(FakeMachined { cancel_tx })
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT);
        let diagnostics = DiagnosticsServiceServer::new(FakeDiagnostics)
            .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
            .max_encoding_message_size(CLIENT_MESSAGE_LIMIT);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(diagnostics)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await
                .expect("backend serve");
        });
        Self {
            socket: socket.to_path_buf(),
            shutdown: Some(tx),
            task: Some(task),
            cancelled,
        }
    }

    /// Waits until a `watch` stream was dropped by the backend (the call was cancelled).
    pub async fn cancelled(&mut self) {
        self.cancelled.recv().await.expect("backend gone");
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // Streams left open by a test would hold a graceful shutdown forever.
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

struct FakeMachined {
    cancel_tx: mpsc::UnboundedSender<()>,
}

fn echo<T>(request_metadata: &MetadataMap, message: T) -> Response<T> {
    let mut response = Response::new(message);
    let joined = |key: &str| {
        request_metadata
            .get_all(key)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("|")
    };
    for (from, to) in [
        ("talos-role", SEEN_ROLES),
        ("basalt-caller", SEEN_CALLER),
        ("proxyfrom", SEEN_PROXYFROM),
        ("grpc-timeout", SEEN_TIMEOUT),
    ] {
        if let Ok(value) = MetadataValue::try_from(joined(from)) {
            response.metadata_mut().insert(to, value);
        }
    }
    response
}

fn unimplemented(name: &str) -> Status {
    Status::unimplemented(format!("test backend does not implement {name}"))
}

/// Sends on drop: tells the test the backend's stream was dropped.
struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

fn data(bytes: Vec<u8>) -> Result<common::Data, Status> {
    Ok(common::Data {
        metadata: None,
        bytes,
    })
}

#[tonic::async_trait]
impl MachineService for FakeMachined {
    type ReadStream = BoxStream<common::Data>;
    type LogsStream = BoxStream<common::Data>;
    type ListStream = BoxStream<machine::FileInfo>;
    type EventsStream = BoxStream<machine::Event>;
    type DmesgStream = BoxStream<common::Data>;
    type DiskUsageStream = BoxStream<machine::DiskUsageInfo>;
    type CopyStream = BoxStream<common::Data>;

    async fn version(
        &self,
        request: Request<()>,
    ) -> Result<Response<machine::VersionResponse>, Status> {
        // `test-reply-bytes: N` asks for a reply of about N bytes (fan-out's size limits).
        let tag = match request
            .metadata()
            .get("test-reply-bytes")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        {
            Some(bytes) => "x".repeat(bytes),
            None => "v0.1.0-test".to_owned(),
        };
        Ok(echo(
            request.metadata(),
            machine::VersionResponse {
                messages: vec![machine::Version {
                    metadata: None,
                    version: Some(machine::VersionInfo {
                        tag,
                        ..Default::default()
                    }),
                    platform: None,
                    features: None,
                }],
            },
        ))
    }

    async fn reboot(
        &self,
        request: Request<machine::RebootRequest>,
    ) -> Result<Response<machine::RebootResponse>, Status> {
        Ok(echo(
            request.metadata(),
            machine::RebootResponse {
                messages: vec![machine::Reboot {
                    metadata: None,
                    actor_id: "reboot-1".to_owned(),
                }],
            },
        ))
    }

    async fn apply_configuration(
        &self,
        request: Request<machine::ApplyConfigurationRequest>,
    ) -> Result<Response<machine::ApplyConfigurationResponse>, Status> {
        let len = request.get_ref().data.len();
        Ok(echo(
            request.metadata(),
            machine::ApplyConfigurationResponse {
                messages: vec![machine::ApplyConfiguration {
                    warnings: vec![format!("received {len} bytes")],
                    ..Default::default()
                }],
            },
        ))
    }

    async fn read(
        &self,
        request: Request<machine::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        use tokio_stream::StreamExt as _;
        let path = request.get_ref().path.clone();
        let stream: Self::ReadStream = if let Some(n) = path.strip_prefix("count:") {
            let n: usize = n.parse().map_err(|_| Status::invalid_argument("count"))?;
            Box::pin(tokio_stream::iter(
                (0..n).map(|i| data(format!("chunk-{i}").into_bytes())),
            ))
        } else if let Some(n) = path.strip_prefix("big:") {
            let n: usize = n.parse().map_err(|_| Status::invalid_argument("big"))?;
            Box::pin(tokio_stream::once(data(vec![0x5a; n])))
        } else if path == "slow" {
            Box::pin(tokio_stream::once(data(b"first".to_vec())).chain(tokio_stream::pending()))
        } else if path == "watch" {
            let signal = DropSignal(self.cancel_tx.clone());
            let pending = tokio_stream::pending().map(move |item: Result<common::Data, Status>| {
                let _keep = &signal;
                item
            });
            Box::pin(tokio_stream::once(data(b"first".to_vec())).chain(pending))
        } else {
            return Err(Status::not_found(format!("no such test path {path}")));
        };
        Ok(echo(request.metadata(), stream))
    }

    async fn copy(
        &self,
        _: Request<machine::CopyRequest>,
    ) -> Result<Response<Self::CopyStream>, Status> {
        Err(unimplemented("copy"))
    }
    async fn cpu_info(&self, _: Request<()>) -> Result<Response<machine::CpuInfoResponse>, Status> {
        Err(unimplemented("cpu_info"))
    }
    async fn disk_stats(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::DiskStatsResponse>, Status> {
        Err(unimplemented("disk_stats"))
    }
    async fn disk_usage(
        &self,
        _: Request<machine::DiskUsageRequest>,
    ) -> Result<Response<Self::DiskUsageStream>, Status> {
        Err(unimplemented("disk_usage"))
    }
    async fn dmesg(
        &self,
        _: Request<machine::DmesgRequest>,
    ) -> Result<Response<Self::DmesgStream>, Status> {
        Err(unimplemented("dmesg"))
    }
    async fn events(
        &self,
        _: Request<machine::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        Err(unimplemented("events"))
    }
    async fn generate_client_configuration(
        &self,
        _: Request<machine::GenerateClientConfigurationRequest>,
    ) -> Result<Response<machine::GenerateClientConfigurationResponse>, Status> {
        Err(unimplemented("generate_client_configuration"))
    }
    async fn hostname(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::HostnameResponse>, Status> {
        Err(unimplemented("hostname"))
    }
    async fn list(
        &self,
        _: Request<machine::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        Err(unimplemented("list"))
    }
    async fn load_avg(&self, _: Request<()>) -> Result<Response<machine::LoadAvgResponse>, Status> {
        Err(unimplemented("load_avg"))
    }
    async fn logs(
        &self,
        _: Request<machine::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        Err(unimplemented("logs"))
    }
    async fn logs_containers(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::LogsContainersResponse>, Status> {
        Err(unimplemented("logs_containers"))
    }
    async fn memory(&self, _: Request<()>) -> Result<Response<machine::MemoryResponse>, Status> {
        Err(unimplemented("memory"))
    }
    async fn mounts(&self, _: Request<()>) -> Result<Response<machine::MountsResponse>, Status> {
        Err(unimplemented("mounts"))
    }
    async fn network_device_stats(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::NetworkDeviceStatsResponse>, Status> {
        Err(unimplemented("network_device_stats"))
    }
    async fn processes(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::ProcessesResponse>, Status> {
        Err(unimplemented("processes"))
    }
    async fn reset(
        &self,
        _: Request<machine::ResetRequest>,
    ) -> Result<Response<machine::ResetResponse>, Status> {
        Err(unimplemented("reset"))
    }
    async fn service_list(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::ServiceListResponse>, Status> {
        Err(unimplemented("service_list"))
    }
    async fn service_restart(
        &self,
        _: Request<machine::ServiceRestartRequest>,
    ) -> Result<Response<machine::ServiceRestartResponse>, Status> {
        Err(unimplemented("service_restart"))
    }
    async fn service_start(
        &self,
        _: Request<machine::ServiceStartRequest>,
    ) -> Result<Response<machine::ServiceStartResponse>, Status> {
        Err(unimplemented("service_start"))
    }
    async fn service_stop(
        &self,
        _: Request<machine::ServiceStopRequest>,
    ) -> Result<Response<machine::ServiceStopResponse>, Status> {
        Err(unimplemented("service_stop"))
    }
    async fn shutdown(
        &self,
        _: Request<machine::ShutdownRequest>,
    ) -> Result<Response<machine::ShutdownResponse>, Status> {
        Err(unimplemented("shutdown"))
    }
    async fn system_stat(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::SystemStatResponse>, Status> {
        Err(unimplemented("system_stat"))
    }
    async fn upgrade(
        &self,
        _: Request<machine::UpgradeRequest>,
    ) -> Result<Response<machine::UpgradeResponse>, Status> {
        Err(unimplemented("upgrade"))
    }
}

/// `basalt.v1.DiagnosticsService`, for the client-streaming path.
struct FakeDiagnostics;

#[tonic::async_trait]
impl DiagnosticsService for FakeDiagnostics {
    type GenerateStream = BoxStream<common::Data>;

    async fn echo(
        &self,
        request: Request<diagnostics::EchoRequest>,
    ) -> Result<Response<diagnostics::EchoResponse>, Status> {
        let payload = request.get_ref().payload.clone();
        Ok(echo(
            request.metadata(),
            diagnostics::EchoResponse { payload },
        ))
    }

    async fn generate(
        &self,
        request: Request<diagnostics::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let diagnostics::GenerateRequest { count, size } = *request.get_ref();
        let stream = tokio_stream::iter((0..count).map(move |_| data(vec![1; size as usize])));
        Ok(echo(
            request.metadata(),
            Box::pin(stream) as Self::GenerateStream,
        ))
    }

    async fn collect(
        &self,
        request: Request<tonic::Streaming<common::Data>>,
    ) -> Result<Response<diagnostics::CollectResponse>, Status> {
        let metadata = request.metadata().clone();
        let mut stream = request.into_inner();
        let (mut messages, mut bytes) = (0, 0);
        while let Some(message) = stream.message().await? {
            messages += 1;
            bytes += message.bytes.len() as u64;
        }
        Ok(echo(
            &metadata,
            diagnostics::CollectResponse { messages, bytes },
        ))
    }
}

/// The `talos-role` values the backend received, as echoed in a response.
pub fn seen_roles(metadata: &MetadataMap) -> Vec<String> {
    seen(metadata, SEEN_ROLES)
        .split('|')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `basalt-caller` the backend received.
pub fn seen_caller(metadata: &MetadataMap) -> String {
    seen(metadata, SEEN_CALLER)
}

/// The `proxyfrom` values the backend received.
pub fn seen_proxyfrom(metadata: &MetadataMap) -> String {
    seen(metadata, SEEN_PROXYFROM)
}

/// The `grpc-timeout` the backend received.
pub fn seen_timeout(metadata: &MetadataMap) -> String {
    seen(metadata, SEEN_TIMEOUT)
}

fn seen(metadata: &MetadataMap, key: &str) -> String {
    metadata
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

// === apid in-process ===

/// apid bound on 127.0.0.1:0 with its files in a temp dir.
pub struct Apid {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub stats: HandshakeStatsHandle,
    pub reload: ReloadHandle,
    pub config: ApidConfig,
    /// The bound Prometheus endpoint, when the config asked for one.
    pub metrics: Option<SocketAddr>,
    /// What the per-client limits refused so far.
    pub limits: apid::LimitStatsHandle,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), apid::Error>>>,
}

impl Apid {
    /// Starts apid with the default handshake timeout, forwarding to `<dir>/machined.sock`.
    pub async fn start(pki: &Pki) -> Self {
        Self::start_with(pki, |_| {}).await
    }

    /// Starts apid after `adjust` changed the config.
    pub async fn start_with(pki: &Pki, adjust: impl FnOnce(&mut ApidConfig)) -> Self {
        let dir = short_tempdir();
        let tls = ApidTls {
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            ca: dir.path().join("ca.pem"),
        };
        std::fs::write(&tls.cert, &pki.server.cert).expect("write cert");
        std::fs::write(&tls.key, &pki.server.key).expect("write key");
        std::fs::write(&tls.ca, pki.ca_pem()).expect("write ca");
        let socket = dir.path().join("machined.sock");
        let mut config = ApidConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tls,
            machined_socket: socket.clone(),
            audit: AuditSink::File(dir.path().join("audit.log")),
            handshake_timeout: Duration::from_secs(10),
            forwarding: None,
            metrics: None,
            revocation: None,
            limits: basalt_config::ApidLimits::default(),
        };
        adjust(&mut config);
        let bound: Bound = Server::bind(config.clone()).await.expect("bind apid");
        let addr = bound.local_addr();
        let stats = bound.handshake_stats();
        let reload = bound.reload_handle();
        let metrics = bound.metrics_addr();
        let limits = bound.limit_stats();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = rx.await;
        }));
        Self {
            dir,
            addr,
            socket,
            stats,
            reload,
            config,
            metrics,
            limits,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A backend on this apid's machined socket.
    pub async fn backend(&self) -> Backend {
        Backend::start(&self.socket).await
    }

    /// Failed handshakes counted for `reason` so far.
    pub fn failed(&self, reason: HandshakeFailure) -> u64 {
        self.stats.snapshot().failed(reason)
    }

    /// Waits until exactly `n` handshakes have failed for `reason`.
    pub async fn expect_failed(&self, reason: HandshakeFailure, n: u64) {
        eventually(&format!("{n} handshake failure(s) {reason}"), || {
            self.failed(reason) == n
        })
        .await;
    }

    /// An mTLS channel with this client certificate (connection errors surface on first use).
    pub fn channel(&self, pki: &Pki, client: Option<&CertKey>) -> Channel {
        channel(self.addr, pki.ca_pem(), client)
    }

    /// A MachineService client with this certificate.
    pub fn machine(&self, pki: &Pki, client: &CertKey) -> MachineServiceClient<Channel> {
        machine_client(self.channel(pki, Some(client)))
    }

    /// Stops apid, asserting a clean shutdown, and returns the audit records written.
    pub async fn stop(mut self) -> Vec<serde_json::Value> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("apid task").expect("apid serve");
        }
        let path = self.dir.path().join("audit.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
            .collect()
    }
}

pub fn machine_client(channel: Channel) -> MachineServiceClient<Channel> {
    MachineServiceClient::new(channel)
        .max_decoding_message_size(CLIENT_MESSAGE_LIMIT)
        .max_encoding_message_size(CLIENT_MESSAGE_LIMIT)
}

/// A lazily connecting channel to apid over TLS 1.3 + h2 with an optional client certificate.
pub fn channel(addr: SocketAddr, ca_pem: &str, client: Option<&CertKey>) -> Channel {
    let connector = tls_connector(ca_pem, client);
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tls = tls_connect(addr, &connector).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

pub fn tls_connector(ca_pem: &str, client: Option<&CertKey>) -> TlsConnector {
    let config = basalt_pki::client_config(
        ca_pem.as_bytes(),
        client.map(|c| (c.cert.as_bytes(), c.key.as_bytes())),
    )
    .expect("client tls config");
    TlsConnector::from(Arc::new(config))
}

pub async fn tls_connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// Calls Version and returns the outcome (any connection-level failure is a `Status`).
pub async fn version(
    client: &mut MachineServiceClient<Channel>,
) -> Result<Response<machine::VersionResponse>, Status> {
    client.version(()).await
}

/// A request carrying one metadata entry per `(key, value)`.
pub fn with_metadata<T>(message: T, pairs: &[(&'static str, &str)]) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in pairs {
        request.metadata_mut().append(
            *key,
            MetadataValue::try_from(*value).expect("metadata value"),
        );
    }
    request
}

// === the metrics endpoint ===

/// Sends `request` raw to a metrics endpoint and returns the whole response (the server closes
/// the connection).
pub async fn http_exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to metrics");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    response
}

/// One scrape, as a collector makes it; returns the body.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    let response = http_exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the sample written exactly as `series` (name plus labels), or 0 if absent.
pub fn sample_value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("numeric sample"))
        .unwrap_or(0.0)
}
