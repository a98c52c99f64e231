//! Shared helpers: run the real machined in-process on a temp unix socket and talk to it over
//! that socket with tonic clients.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use basalt_api::basalt::v1::diagnostics_service_client::DiagnosticsServiceClient;
use basalt_api::machine::machine_service_client::MachineServiceClient;
use hyper_util::rt::TokioIo;
use machined::{Config, MAX_MESSAGE_SIZE, Server};
use tempfile::TempDir;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

/// Every test body runs under this deadline.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `body` under [`TEST_DEADLINE`].
pub async fn within_deadline<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, body)
        .await
        .expect("test exceeded its deadline")
}

/// A short temp dir, so socket paths stay under the kernel's 107-byte limit.
pub fn short_tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("bs")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

/// A machined serving on `<tmp>/run/machined.sock`.
pub struct Machined {
    pub dir: TempDir,
    pub socket: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), machined::Error>>>,
}

impl Machined {
    /// Starts machined with the default config (container mode, default uid allow-list).
    pub async fn start() -> Self {
        Self::start_with(|_, _| {}).await
    }

    /// Starts machined after `adjust` has changed the default config; it also gets the temp
    /// dir, for state files.
    pub async fn start_with(adjust: impl FnOnce(&mut Config, &Path)) -> Self {
        let dir = short_tempdir();
        let socket = dir.path().join("run/machined.sock");
        let host = Arc::new(basalt_sys::ContainerHost::new(Some("node-1".to_owned())));
        let mut config = Config::new(&socket, host);
        adjust(&mut config, dir.path());
        let bound = Server::bind(config).await.expect("bind machined");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        Machined {
            dir,
            socket,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// A channel to the socket.
    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    /// A machine-service client with 32 MiB limits.
    pub async fn machine(&self) -> MachineServiceClient<Channel> {
        MachineServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// A diagnostics client with 32 MiB limits.
    pub async fn diagnostics(&self) -> DiagnosticsServiceClient<Channel> {
        DiagnosticsServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Fires the shutdown signal and asserts that serving ended cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("serve task did not panic")
                .expect("serve ended cleanly");
        }
    }
}

/// Connects a tonic channel to a unix socket (the URI is a placeholder tonic requires).
pub async fn connect(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect to machined")
}

/// A request carrying `talos-role` metadata, one value per role.
pub fn with_roles<T>(message: T, roles: &[&str]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for role in roles {
        request.metadata_mut().append(
            basalt_authz::metadata::ROLE,
            MetadataValue::try_from(*role).expect("ascii role"),
        );
    }
    request
}
