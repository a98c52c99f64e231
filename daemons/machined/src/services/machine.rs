//! `machine.MachineService`: the Talos machine API. Ten read-only methods are served with real
//! data from /proc and the host; every other method answers Unimplemented (the
//! `NotImplemented` layer answers first; the stubs here repeat it as defence in depth).

use std::path::Path;
use std::sync::Arc;

use basalt_api::common;
use basalt_api::machine::{self, machine_service_server::MachineService};
use basalt_sys::{FsStats, Host};
use tonic::{Request, Response, Status};

use super::{BoxStream, ConfigApi, blocking};
use crate::Error;
use crate::clientconfig::ClientConfigs;
use crate::config::Mode;
use crate::files::{Files, FilesPolicy};
use crate::layers::not_implemented_message;
use crate::lifecycle::Lifecycle;
use crate::procfs::{MountEntry, ProcFs, ProcessUnits};
use crate::supervise::{self, ServiceManager};

/// What `Version` reports; fixed for the life of the process, so computed once at bind time.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct VersionFacts {
    reply: machine::Version,
}

impl VersionFacts {
    /// Reads the architecture from `uname(2)` and fills in the build facts:
    /// - `tag`: `v` + the crate version (semver, which talosctl requires);
    /// - `sha`: `BASALT_GIT_SHA` at build time, else `unknown`;
    /// - `built`: `BASALT_BUILD_TIME` at build time, else empty;
    /// - `go_version` (Talos's field name): `BASALT_RUSTC_VERSION` at build time, else `rust`;
    /// - `os`: `linux`; `arch`: uname's machine in Go's spelling (`amd64`, `arm64`, …), the
    ///   names Talos clients know;
    /// - `platform`: name and mode `container` in container mode, `metal` on PID 1;
    /// - `features.rbac`: always true.
    pub(crate) fn detect(mode: Mode) -> Result<Self, Error> {
        let uts = basalt_sys::uname().map_err(|source| Error::Host { source })?;
        Ok(VersionFacts::new(mode, go_arch(&uts.machine)))
    }

    fn new(mode: Mode, arch: &str) -> Self {
        VersionFacts {
            reply: machine::Version {
                metadata: None,
                version: Some(machine::VersionInfo {
                    tag: format!("v{}", env!("CARGO_PKG_VERSION")),
                    sha: option_env!("BASALT_GIT_SHA")
                        .unwrap_or("unknown")
                        .to_owned(),
                    built: option_env!("BASALT_BUILD_TIME")
                        .unwrap_or_default()
                        .to_owned(),
                    go_version: option_env!("BASALT_RUSTC_VERSION")
                        .unwrap_or("rust")
                        .to_owned(),
                    os: "linux".to_owned(),
                    arch: arch.to_owned(),
                }),
                platform: Some(machine::PlatformInfo {
                    name: mode.as_str().to_owned(),
                    mode: mode.as_str().to_owned(),
                }),
                features: Some(machine::FeaturesInfo { rbac: true }),
            },
        }
    }
}

/// Go's `GOARCH` for a `uname -m` value; unknown values pass through unchanged.
fn go_arch(machine: &str) -> &str {
    match machine {
        "x86_64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "i386" | "i486" | "i586" | "i686" => "386",
        "armv6l" | "armv7l" | "armv8l" => "arm",
        "ppc64le" => "ppc64le",
        other => other,
    }
}

/// The `MachineService` implementation.
#[derive(Clone, Debug)]
pub(crate) struct MachineApi {
    host: Arc<dyn Host>,
    proc: ProcFs,
    units: ProcessUnits,
    version: Arc<VersionFacts>,
    services: ServiceManager,
    files: Files,
    /// Reboot, Shutdown, Reset, Events and the boot id; `None` answers them Unimplemented.
    lifecycle: Option<Lifecycle>,
    client_configs: ClientConfigs,
    /// ApplyConfiguration on the config store (which answers FailedPrecondition when machined
    /// has none); `None` only before [`MachineApi::with_config`].
    config: Option<ConfigApi>,
}

impl MachineApi {
    pub(crate) fn new(
        host: Arc<dyn Host>,
        proc: ProcFs,
        units: ProcessUnits,
        version: VersionFacts,
        services: ServiceManager,
    ) -> Self {
        MachineApi {
            host,
            proc,
            units,
            version: Arc::new(version),
            services,
            files: Files::new(FilesPolicy::default()),
            lifecycle: None,
            client_configs: ClientConfigs::default(),
            config: None,
        }
    }

    /// The same API with ApplyConfiguration served by `config`.
    pub(crate) fn with_config(mut self, config: ConfigApi) -> Self {
        self.config = Some(config);
        self
    }

    /// The same API with the file methods under `files`' policy.
    pub(crate) fn with_files(mut self, files: Files) -> Self {
        self.files = files;
        self
    }

    /// The same API with the lifecycle methods (and the boot id for `Read`) served by
    /// `lifecycle`, and GenerateClientConfiguration by `client_configs`.
    pub(crate) fn with_lifecycle(
        mut self,
        lifecycle: Lifecycle,
        client_configs: ClientConfigs,
    ) -> Self {
        self.lifecycle = Some(lifecycle);
        self.client_configs = client_configs;
        self
    }

    fn lifecycle(&self, path: &str) -> Result<&Lifecycle, Status> {
        self.lifecycle.as_ref().ok_or_else(|| unimplemented(path))
    }
}

/// Unimplemented, with the same message the `NotImplemented` layer sends.
fn unimplemented(path: &str) -> Status {
    Status::unimplemented(not_implemented_message(path))
}

/// Mount stats with sizes from `statfs`. A mount whose statfs fails is still listed, with
/// size and available 0 (Talos returns the same list plus an error, which gRPC then drops);
/// the failures go to the debug log.
fn mount_stats(
    entries: Vec<MountEntry>,
    statfs: impl Fn(&Path) -> Result<FsStats, basalt_sys::Error>,
) -> Vec<machine::MountStat> {
    entries
        .into_iter()
        .map(|entry| {
            let stats = statfs(Path::new(&entry.mounted_on)).unwrap_or_else(|err| {
                tracing::debug!(
                    mount = %entry.mounted_on,
                    error = &err as &dyn std::error::Error,
                    "Cannot measure mount"
                );
                FsStats {
                    size: 0,
                    available: 0,
                }
            });
            machine::MountStat {
                filesystem: entry.filesystem,
                size: stats.size,
                available: stats.available,
                mounted_on: entry.mounted_on,
            }
        })
        .collect()
}

#[tonic::async_trait]
impl MachineService for MachineApi {
    async fn apply_configuration(
        &self,
        request: Request<machine::ApplyConfigurationRequest>,
    ) -> Result<Response<machine::ApplyConfigurationResponse>, Status> {
        let config = self.config.as_ref().ok_or(Error::NoConfigStore)?;
        let reply = config.apply(request).await?;
        Ok(Response::new(machine::ApplyConfigurationResponse {
            messages: vec![reply],
        }))
    }

    type CopyStream = BoxStream<common::Data>;

    async fn copy(
        &self,
        request: Request<machine::CopyRequest>,
    ) -> Result<Response<Self::CopyStream>, Status> {
        Ok(Response::new(self.files.copy(request.into_inner()).await?))
    }

    async fn cpu_info(&self, _: Request<()>) -> Result<Response<machine::CpuInfoResponse>, Status> {
        let cpu_info = self.proc.cpuinfo()?;
        Ok(Response::new(machine::CpuInfoResponse {
            messages: vec![machine::CpUsInfo {
                metadata: None,
                cpu_info,
            }],
        }))
    }

    async fn disk_stats(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::DiskStatsResponse>, Status> {
        let stats = self.proc.diskstats()?;
        Ok(Response::new(machine::DiskStatsResponse {
            messages: vec![stats],
        }))
    }

    type DiskUsageStream = BoxStream<machine::DiskUsageInfo>;

    async fn disk_usage(
        &self,
        request: Request<machine::DiskUsageRequest>,
    ) -> Result<Response<Self::DiskUsageStream>, Status> {
        Ok(Response::new(
            self.files.disk_usage(request.into_inner()).await?,
        ))
    }

    type DmesgStream = BoxStream<common::Data>;

    async fn dmesg(
        &self,
        request: Request<machine::DmesgRequest>,
    ) -> Result<Response<Self::DmesgStream>, Status> {
        Ok(Response::new(crate::dmesg::dmesg(request.into_inner())?))
    }

    type EventsStream = BoxStream<machine::Event>;

    async fn events(
        &self,
        request: Request<machine::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let lifecycle = self.lifecycle("/machine.MachineService/Events")?;
        Ok(Response::new(lifecycle.events(request.into_inner())?))
    }

    async fn generate_client_configuration(
        &self,
        request: Request<machine::GenerateClientConfigurationRequest>,
    ) -> Result<Response<machine::GenerateClientConfigurationResponse>, Status> {
        let configs = self.client_configs.clone();
        let request = request.into_inner();
        // Key generation and signing are CPU work: off the async workers.
        let message = blocking(move || configs.generate(request)).await?;
        Ok(Response::new(
            machine::GenerateClientConfigurationResponse {
                messages: vec![message],
            },
        ))
    }

    async fn hostname(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::HostnameResponse>, Status> {
        let hostname = self
            .host
            .hostname()
            .map_err(|source| Error::Host { source })?;
        Ok(Response::new(machine::HostnameResponse {
            messages: vec![machine::Hostname {
                metadata: None,
                hostname,
            }],
        }))
    }

    type ListStream = BoxStream<machine::FileInfo>;

    async fn list(
        &self,
        request: Request<machine::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        Ok(Response::new(self.files.list(request.into_inner()).await?))
    }

    async fn load_avg(&self, _: Request<()>) -> Result<Response<machine::LoadAvgResponse>, Status> {
        let (load1, load5, load15) = self.proc.loadavg()?;
        Ok(Response::new(machine::LoadAvgResponse {
            messages: vec![machine::LoadAvg {
                metadata: None,
                load1,
                load5,
                load15,
            }],
        }))
    }

    type LogsStream = BoxStream<common::Data>;

    async fn logs(
        &self,
        request: Request<machine::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        supervise::api::logs(&self.services, request)
    }

    async fn logs_containers(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::LogsContainersResponse>, Status> {
        supervise::api::logs_containers(&self.services)
    }

    async fn memory(&self, _: Request<()>) -> Result<Response<machine::MemoryResponse>, Status> {
        let meminfo = self.proc.meminfo()?;
        Ok(Response::new(machine::MemoryResponse {
            messages: vec![machine::Memory {
                metadata: None,
                meminfo: Some(meminfo),
            }],
        }))
    }

    async fn mounts(&self, _: Request<()>) -> Result<Response<machine::MountsResponse>, Status> {
        let entries = self.proc.mounts()?;
        let stats = blocking(move || Ok(mount_stats(entries, basalt_sys::statfs))).await?;
        Ok(Response::new(machine::MountsResponse {
            messages: vec![machine::Mounts {
                metadata: None,
                stats,
            }],
        }))
    }

    async fn network_device_stats(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::NetworkDeviceStatsResponse>, Status> {
        let stats = self.proc.netdev()?;
        Ok(Response::new(machine::NetworkDeviceStatsResponse {
            messages: vec![stats],
        }))
    }

    async fn processes(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::ProcessesResponse>, Status> {
        let proc = self.proc.clone();
        let units = self.units;
        let processes = blocking(move || proc.processes(units)).await?;
        Ok(Response::new(machine::ProcessesResponse {
            messages: vec![machine::Process {
                metadata: None,
                processes,
            }],
        }))
    }

    type ReadStream = BoxStream<common::Data>;

    async fn read(
        &self,
        request: Request<machine::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        // The node's boot id, not the host's (container mode): talosctl's --wait reads it.
        if let Some(lifecycle) = &self.lifecycle
            && let Some(boot_id) = lifecycle.boot_id().read_override(&request.get_ref().path)
        {
            return Ok(Response::new(boot_id?));
        }
        Ok(Response::new(self.files.read(request.into_inner()).await?))
    }

    async fn reboot(
        &self,
        request: Request<machine::RebootRequest>,
    ) -> Result<Response<machine::RebootResponse>, Status> {
        let lifecycle = self.lifecycle("/machine.MachineService/Reboot")?;
        let mode = request.get_ref().mode;
        let mode =
            machine::reboot_request::Mode::try_from(mode).map_err(|_| Error::InvalidArgument {
                reason: format!("unknown reboot mode {mode}"),
            })?;
        let actor_id = lifecycle.reboot(mode)?;
        Ok(Response::new(machine::RebootResponse {
            messages: vec![machine::Reboot {
                metadata: None,
                actor_id,
            }],
        }))
    }

    async fn reset(
        &self,
        request: Request<machine::ResetRequest>,
    ) -> Result<Response<machine::ResetResponse>, Status> {
        let lifecycle = self.lifecycle("/machine.MachineService/Reset")?;
        let actor_id = lifecycle.reset(request.get_ref())?;
        Ok(Response::new(machine::ResetResponse {
            messages: vec![machine::Reset {
                metadata: None,
                actor_id,
            }],
        }))
    }

    async fn service_list(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::ServiceListResponse>, Status> {
        supervise::api::service_list(&self.services)
    }

    async fn service_restart(
        &self,
        request: Request<machine::ServiceRestartRequest>,
    ) -> Result<Response<machine::ServiceRestartResponse>, Status> {
        supervise::api::service_restart(&self.services, request).await
    }

    async fn service_start(
        &self,
        request: Request<machine::ServiceStartRequest>,
    ) -> Result<Response<machine::ServiceStartResponse>, Status> {
        supervise::api::service_start(&self.services, request).await
    }

    async fn service_stop(
        &self,
        request: Request<machine::ServiceStopRequest>,
    ) -> Result<Response<machine::ServiceStopResponse>, Status> {
        supervise::api::service_stop(&self.services, request).await
    }

    async fn shutdown(
        &self,
        request: Request<machine::ShutdownRequest>,
    ) -> Result<Response<machine::ShutdownResponse>, Status> {
        let lifecycle = self.lifecycle("/machine.MachineService/Shutdown")?;
        let actor_id = lifecycle.shutdown(request.get_ref().force)?;
        Ok(Response::new(machine::ShutdownResponse {
            messages: vec![machine::Shutdown {
                metadata: None,
                actor_id,
            }],
        }))
    }

    async fn system_stat(
        &self,
        _: Request<()>,
    ) -> Result<Response<machine::SystemStatResponse>, Status> {
        let stat = self.proc.stat(self.units.clock_ticks)?;
        Ok(Response::new(machine::SystemStatResponse {
            messages: vec![stat],
        }))
    }

    async fn upgrade(
        &self,
        _: Request<machine::UpgradeRequest>,
    ) -> Result<Response<machine::UpgradeResponse>, Status> {
        Err(unimplemented("/machine.MachineService/Upgrade"))
    }

    async fn version(&self, _: Request<()>) -> Result<Response<machine::VersionResponse>, Status> {
        Ok(Response::new(machine::VersionResponse {
            messages: vec![self.version.reply.clone()],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tag_is_semver_with_a_v_and_platform_follows_the_mode() {
        let facts = VersionFacts::new(Mode::Container, "amd64");
        let version = facts.reply.version.as_ref().expect("version");
        assert_eq!(version.tag, format!("v{}", env!("CARGO_PKG_VERSION")));
        assert_eq!(version.os, "linux");
        let platform = facts.reply.platform.as_ref().expect("platform");
        assert_eq!(
            (platform.name.as_str(), platform.mode.as_str()),
            ("container", "container")
        );
        assert_eq!(
            facts.reply.features,
            Some(machine::FeaturesInfo { rbac: true })
        );
        assert!(facts.reply.metadata.is_none());
        let metal = VersionFacts::new(Mode::Metal, "arm64");
        assert_eq!(metal.reply.platform.expect("platform").mode, "metal");
    }

    #[test]
    fn arch_uses_go_names() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("riscv64"), "riscv64");
    }

    #[test]
    fn a_mount_that_cannot_be_measured_is_listed_with_zero_sizes() {
        let entries = vec![
            MountEntry {
                filesystem: "/dev/sda1".to_owned(),
                mounted_on: "/".to_owned(),
            },
            MountEntry {
                filesystem: "nfs:/x".to_owned(),
                mounted_on: "/gone".to_owned(),
            },
        ];
        let stats = mount_stats(entries, |path| {
            if path == Path::new("/") {
                Ok(FsStats {
                    size: 100,
                    available: 40,
                })
            } else {
                Err(basalt_sys::statfs(Path::new("/definitely/not/here")).expect_err("fails"))
            }
        });
        assert_eq!(stats.len(), 2);
        assert_eq!((stats[0].size, stats[0].available), (100, 40));
        assert_eq!(stats[1].filesystem, "nfs:/x");
        assert_eq!((stats[1].size, stats[1].available), (0, 0));
    }
}
