//! Binding and serving: the two phases of a machined run.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use basalt_api::basalt::v1::certificate_service_server::CertificateServiceServer;
use basalt_api::basalt::v1::config_service_server::ConfigServiceServer;
use basalt_api::basalt::v1::diagnostics_service_server::DiagnosticsServiceServer;
use basalt_api::basalt::v1::revocation_service_server::RevocationServiceServer;
use basalt_api::machine::machine_service_server::MachineServiceServer;
use basalt_grpc::UnixIncoming;
use basalt_sys::Host;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::Error;
use crate::apid::{self, ApidFiles};
use crate::boot_id::BootId;
use crate::bootstrap::{self, RetryBackoff};
use crate::clientconfig::ClientConfigs;
use crate::config::{
    AllowedUids, ApidLaunch, Config, DRAIN_TIMEOUT, MAX_MESSAGE_SIZE, SOCKET_DIR_MODE, SOCKET_MODE,
    TrustdLaunch,
};
use crate::config_store::ConfigStore;
use crate::events::EventBus;
use crate::files::Files;
use crate::layers::Stack;
use crate::lifecycle::{Lifecycle, LifecycleParts, StateLayout};
use crate::pki_reconcile::{self, ConfigFeed};
use crate::procfs::{ProcFs, ProcessUnits};
use crate::revocation::{self, APID_REVOCATION_FILE, ProtectedCert, RevocationStore};
use crate::services::RevocationApi;
use crate::services::{CertificateApi, ConfigApi, Diagnostics, MachineApi, VersionFacts};
use crate::supervise::{ServiceManager, ServiceSpec};
use crate::trustd::{self as trustd_files, TrustdFiles};

/// Entry point of the two-phase API: [`Server::bind`], then [`Bound::serve`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Prepares and binds everything, so that failures surface before serving starts:
    ///
    /// 1. creates the socket's directory (mode 0750) if missing; an existing one keeps its mode
    ///    (a warning is logged if others may enter it);
    /// 2. removes a stale socket left by an earlier run; anything else at the path (a regular
    ///    file, a live server's socket) is refused with [`Error::PrepareSocket`];
    /// 3. binds the socket and sets its mode to 0660;
    /// 4. reads the host facts the handlers need (uname, clock ticks, page size);
    /// 5. with [`Config::apid`]: writes apid's config and, on a control plane, issues apid's
    ///    server certificate (a worker gets it from trustd once serving starts); with
    ///    [`Config::trustd`] on a control plane: issues trustd's certificate and writes its
    ///    files and config;
    /// 6. registers the services (apid, trustd and `machine.services`) and opens their log
    ///    files.
    ///
    /// Once this returns, clients can connect (the kernel queues them until
    /// [`Bound::serve`] accepts).
    pub async fn bind(config: Config) -> Result<Bound, Error> {
        let Config {
            socket,
            allowed_uids,
            mode,
            host,
            apid,
            trustd,
            services,
            files,
            state_dir,
            machine: machine_config,
            machine_config_file,
            boot_ready_patience,
            config_store,
        } = config;
        // The file API never serves machined's own secrets, whatever policy was configured.
        let files = files.protecting(state_dir.as_deref(), machine_config_file.as_deref());

        let prepare = |source| Error::PrepareSocket {
            path: socket.clone(),
            source,
        };
        if let Some(dir) = socket.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            let state = basalt_sys::prepare_socket_dir(dir, SOCKET_DIR_MODE).map_err(prepare)?;
            if state.is_open_to_others() {
                tracing::warn!(
                    dir = %dir.display(),
                    "Socket directory is accessible to other users; only the socket's mode \
                     protects it"
                );
            }
        }
        if basalt_sys::remove_stale_socket(&socket).map_err(prepare)? {
            tracing::info!(socket = %socket.display(), "Removed a stale socket");
        }
        let listener = UnixListener::bind(&socket).map_err(|source| Error::BindSocket {
            path: socket.clone(),
            source,
        })?;
        basalt_sys::set_mode(&socket, SOCKET_MODE).map_err(prepare)?;

        let host_err = |source| Error::Host { source };
        let units = ProcessUnits {
            clock_ticks: basalt_sys::clock_ticks().map_err(host_err)?,
            page_size: basalt_sys::page_size().map_err(host_err)?,
        };
        let apid = match apid {
            None => None,
            Some(launch) => Some(prepare_apid(launch, host.as_ref(), &socket)?),
        };
        let trustd = match (&apid, trustd) {
            (Some((launch, _, hostname)), Some(trustd)) if launch.machine.ca_key().is_some() => {
                Some(prepare_trustd(launch, trustd, hostname)?)
            }
            _ => None,
        };
        let mut builtin: Vec<ServiceSpec> = apid
            .iter()
            .map(|(launch, files, _)| {
                ServiceSpec::apid(launch.binary.clone(), files.config.clone(), launch.backoff)
            })
            .collect();
        builtin.extend(trustd.iter().map(|(launch, files)| {
            ServiceSpec::trustd(launch.binary.clone(), files.config.clone(), launch.backoff)
        }));
        let supervised = ServiceManager::new(&services, builtin, EventBus::new())?;
        let lifecycle = Lifecycle::new(LifecycleParts {
            mode,
            host: Arc::clone(&host),
            services: supervised.clone(),
            boot_id: BootId::start(mode, state_dir.as_deref())?,
            state: state_dir.as_deref().map(|dir| {
                // What survives a reset: see the `lifecycle` module docs.
                let keep = [
                    Some(socket.clone()),
                    machine_config_file,
                    Some(dir.join(revocation::STORE_FILE)),
                ]
                .into_iter()
                .flatten()
                .chain(apid.iter().map(|(_, files, _)| files.dir.clone()))
                .chain(trustd.iter().map(|(_, files)| files.dir.clone()));
                StateLayout::new(dir, keep, services.log_dir.clone())
            }),
            ready_patience: boot_ready_patience,
        });

        if let Some(store) = &config_store {
            // Every container-mode reboot reloads the store before services start: a staged
            // config becomes active, a wiped (Reset) store is seeded again.
            let store = store.clone();
            lifecycle.on_boot(
                "activateStagedConfig",
                Arc::new(move || store.boot().map_err(|err| basalt_daemon::error_chain(&err))),
            );
        }
        if let (Some(store), Some((launch, _, hostname))) = (&config_store, &apid) {
            // apid and trustd read their settings (listen addresses, handshake timeouts,
            // limits, metrics: the keys that need a reboot) from files written at bind time;
            // write them again from the now active config before the services start again.
            let store = store.clone();
            let state_dir = launch.state_dir.clone();
            let hostname = hostname.clone();
            let socket = socket.clone();
            let runs_trustd = trustd.is_some();
            lifecycle.on_boot(
                "writeDaemonConfigs",
                Arc::new(move || {
                    let machine = store.current().config.clone();
                    apid::prepare(&machine, &state_dir, &hostname, &socket)
                        .map_err(|err| format!("apid: {}", basalt_daemon::error_chain(&err)))?;
                    if runs_trustd && machine.ca_key().is_some() {
                        trustd_files::prepare(&machine, &state_dir, &hostname).map_err(|err| {
                            format!("trustd: {}", basalt_daemon::error_chain(&err))
                        })?;
                    }
                    Ok(())
                }),
            );
        }
        // Without a store, ApplyConfiguration and ConfigService answer FailedPrecondition.
        let config_api = ConfigApi::new(
            config_store.clone(),
            supervised.events().clone(),
            Some(lifecycle.clone()),
        );

        // The certificate status reports the active config's CAs, like the signer below.
        let certificates = CertificateApi::new(
            {
                let store = config_store.clone();
                let fixed = machine_config.clone();
                move || match &store {
                    Some(store) => Some(store.current().config.clone()),
                    None => fixed.clone(),
                }
            },
            apid.as_ref().map(|(_, files, _)| files.clone()),
            trustd.as_ref().map(|(_, files)| files.clone()),
        );
        // The deny list apid enforces; opened (and apid's copy written) before apid starts.
        let revocation = RevocationApi::new(
            match &state_dir {
                Some(dir) => Some(
                    RevocationStore::open(
                        dir,
                        apid.as_ref()
                            .map(|(_, files, _)| files.dir.join(APID_REVOCATION_FILE)),
                    )
                    .map_err(|source| Error::Revocation { source })?,
                ),
                None => None,
            },
            {
                // The CAs of the active config can never be revoked (followed across applies).
                let store = config_store.clone();
                let fixed = machine_config.clone();
                Arc::new(move || {
                    let config = match &store {
                        Some(store) => Some(store.current().config.clone()),
                        None => fixed.clone(),
                    };
                    config
                        .map(|config| {
                            std::iter::once(config.ca_crt())
                                .chain(config.accepted_cas())
                                .filter_map(|pem| pem.as_str().ok())
                                .flat_map(ProtectedCert::from_pem_bundle)
                                .collect()
                        })
                        .unwrap_or_default()
                })
            },
        );
        // GenerateClientConfiguration signs with the active config's CA (followed across
        // applies when there is a store).
        let client_configs = match &config_store {
            Some(store) => {
                let store = store.clone();
                ClientConfigs::from_source(move || Some(store.current().config.clone()))
            }
            None => ClientConfigs::new(machine_config),
        };
        let machine = MachineApi::new(
            Arc::clone(&host),
            ProcFs::new("/proc"),
            units,
            VersionFacts::detect(mode)?,
            supervised.clone(),
        )
        .with_files(Files::new(files))
        .with_lifecycle(lifecycle.clone(), client_configs)
        .with_config(config_api.clone());

        tracing::info!(
            socket = %socket.display(),
            mode = %mode,
            allowed_uids = ?allowed_uids.iter().collect::<Vec<_>>(),
            "Listening"
        );
        Ok(Bound {
            listener,
            socket,
            allowed_uids,
            machine,
            apid,
            trustd: trustd.map(|(_, files)| files),
            host,
            supervised,
            lifecycle,
            config_api,
            config_store,
            revocation,
            certificates,
        })
    }
}

/// A bound machined, ready to [`serve`](Bound::serve).
#[derive(Debug)]
pub struct Bound {
    listener: UnixListener,
    socket: PathBuf,
    allowed_uids: AllowedUids,
    machine: MachineApi,
    apid: Option<(ApidLaunch, ApidFiles, String)>,
    trustd: Option<TrustdFiles>,
    host: Arc<dyn Host>,
    supervised: ServiceManager,
    lifecycle: Lifecycle,
    config_api: ConfigApi,
    config_store: Option<ConfigStore>,
    revocation: RevocationApi,
    certificates: CertificateApi,
}

impl Bound {
    /// The machine-config store, when machined has one.
    pub fn config_store(&self) -> Option<&ConfigStore> {
        self.config_store.as_ref()
    }

    /// The unix socket machined serves on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The paths of apid's credentials and config, when machined runs apid.
    pub fn apid_files(&self) -> Option<&ApidFiles> {
        self.apid.as_ref().map(|(_, files, _)| files)
    }

    /// The paths of trustd's credentials and config, when machined runs trustd.
    pub fn trustd_files(&self) -> Option<&TrustdFiles> {
        self.trustd.as_ref()
    }

    /// The node's event bus (service state changes are published on it from bind on).
    pub fn events(&self) -> EventBus {
        self.supervised.events().clone()
    }

    /// The node's boot id (renewed by every container-mode reboot).
    pub fn boot_id(&self) -> BootId {
        self.lifecycle.boot_id().clone()
    }

    /// Serves until `shutdown` completes (or a Shutdown, or a Reset without reboot, asks
    /// machined to stop: then this returns `Ok` as well), then ends `Logs` and `Events` follow
    /// streams, drains in-flight
    /// calls for at most [`DRAIN_TIMEOUT`], stops every service (dependents first; SIGTERM,
    /// then SIGKILL) and removes the socket file.
    ///
    /// Services (apid, trustd and `machine.services`) are started first; on a control plane
    /// apid's and trustd's server certificates are re-issued at half-life and whenever the
    /// active config changes what they depend on (`crate::pki_reconcile`).
    /// On a worker apid starts once its certificate came from trustd, and is renewed at
    /// half-life ([`bootstrap::run`]).
    pub async fn serve<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: Future<Output = ()> + Send,
    {
        let Bound {
            listener,
            socket,
            allowed_uids,
            machine,
            apid,
            trustd,
            host,
            supervised,
            lifecycle,
            config_api,
            config_store,
            revocation,
            certificates,
        } = self;

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut children = tokio::task::JoinSet::new();
        // What a config without `machine.hostname` names the node (the certificates follow the
        // active config's hostname).
        let kernel_hostname =
            |started_as: &str| basalt_sys::hostname().unwrap_or_else(|_| started_as.to_owned());
        match apid {
            Some((launch, files, hostname)) if launch.machine.ca_key().is_none() => {
                // A worker: apid waits for its certificate from trustd.
                supervised.launch_except(&["apid"]);
                let services = supervised.clone();
                children.spawn(bootstrap::run(
                    ConfigFeed::new(launch.machine, config_store.as_ref()),
                    files,
                    kernel_hostname(&hostname),
                    RetryBackoff::default(),
                    supervised.events().clone(),
                    move || services.launch_service("apid"),
                    stop_rx.clone(),
                ));
            }
            Some((launch, files, hostname)) => {
                supervised.launch();
                // Renewal at half-life and live CA/SAN/token changes (`crate::pki_reconcile`).
                children.spawn(pki_reconcile::run_control_plane(
                    ConfigFeed::new(launch.machine, config_store.as_ref()),
                    files,
                    trustd,
                    kernel_hostname(&hostname),
                    stop_rx.clone(),
                    pki_reconcile::RETRY_AFTER_FAILURE,
                ));
            }
            None => supervised.launch(),
        }
        lifecycle.start_boot();
        if let Some(store) = &config_store {
            // `machine.hostname` is a live change: the Hostname call follows the active config.
            children.spawn(pki_reconcile::follow_hostname(
                ConfigFeed::new(store.current().config.clone(), Some(store)),
                Arc::clone(&host),
                stop_rx.clone(),
            ));
        }
        if let Some(store) = config_store {
            // Reverts a TRY apply not confirmed in time (re-armed from disk at every start).
            children.spawn(
                store
                    .clone()
                    .run_try_watchdog(supervised.events().clone(), stop_rx.clone()),
            );
            // Adds, removes and restarts `machine.services` as the active config changes.
            children.spawn(supervised.clone().follow_config(store, stop_rx.clone()));
        }

        let router = tonic::transport::Server::builder()
            .layer(Stack::new(allowed_uids))
            .add_service(
                MachineServiceServer::new(machine)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            )
            .add_service(
                DiagnosticsServiceServer::new(Diagnostics)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            )
            .add_service(
                ConfigServiceServer::new(config_api)
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            )
            .add_service(RevocationServiceServer::new(revocation))
            .add_service(CertificateServiceServer::new(certificates));

        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        // Registered for reads only: apid reading a reply would otherwise wake machined. A
        // failed accept (EMFILE) pauses the loop instead of spinning on it.
        let incoming = UnixIncoming::new(listener);
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            // Either a send or the sender being dropped starts the drain.
            let _ = drain_rx.await;
        });
        tokio::pin!(serve);
        // A container-mode Shutdown (or Reset without reboot) ends machined like the signal.
        let halted = lifecycle.halted();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                () = halted => {}
            }
        };
        tokio::pin!(shutdown);

        let result = tokio::select! {
            result = &mut serve => result,
            () = &mut shutdown => {
                tracing::info!("Shutting down");
                // Follow streams would otherwise hold the drain open until its timeout.
                supervised.begin_shutdown();
                lifecycle.begin_shutdown();
                let _ = drain_tx.send(());
                match tokio::time::timeout(DRAIN_TIMEOUT, &mut serve).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            timeout_s = DRAIN_TIMEOUT.as_secs(),
                            "Calls still running after the drain timeout; closing them"
                        );
                        Ok(())
                    }
                }
            }
        };

        // Stop the children whatever ended the server.
        supervised.shutdown().await;
        let _ = stop_tx.send(true);
        while children.join_next().await.is_some() {}
        if let Err(err) = std::fs::remove_file(&socket) {
            tracing::debug!(
                socket = %socket.display(),
                error = &err as &dyn std::error::Error,
                "Cannot remove the socket"
            );
        }
        tracing::info!("Stopped");
        result.map_err(|source| Error::Serve { source })
    }
}

/// Issues apid's credentials (control plane) and writes its config at bind time; returns the
/// hostname the certificates are issued for.
fn prepare_apid(
    launch: ApidLaunch,
    host: &dyn Host,
    socket: &Path,
) -> Result<(ApidLaunch, ApidFiles, String), Error> {
    let hostname = host.hostname().map_err(|source| Error::Host { source })?;
    let files = apid::prepare(&launch.machine, &launch.state_dir, &hostname, socket)
        .map_err(|source| Error::Apid { source })?;
    if launch.machine.ca_key().is_some() {
        tracing::info!(
            config = %files.config.display(),
            listen = %launch.machine.apid_listen(),
            valid_for_h = apid::SERVER_CERT_TTL.as_secs() / 3600,
            "Issued apid's server certificate"
        );
    } else {
        tracing::info!(
            config = %files.config.display(),
            listen = %launch.machine.apid_listen(),
            trustd = ?bootstrap::targets(&launch.machine)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            "Worker: apid starts once trustd issued its server certificate"
        );
    }
    Ok((launch, files, hostname))
}

/// Issues trustd's credentials and writes its config at bind time (control planes).
fn prepare_trustd(
    apid: &ApidLaunch,
    launch: TrustdLaunch,
    hostname: &str,
) -> Result<(TrustdLaunch, TrustdFiles), Error> {
    let files = trustd_files::prepare(&apid.machine, &apid.state_dir, hostname)
        .map_err(|source| Error::Trustd { source })?;
    tracing::info!(
        config = %files.config.display(),
        listen = %apid.machine.trustd_listen(),
        "Issued trustd's server certificate"
    );
    Ok((launch, files))
}
