//! The gRPC services machined serves, and the list of methods they implement.

mod certs;
mod config;
mod diagnostics;
mod machine;
mod revocation;

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::Status;

pub(crate) use self::certs::CertificateApi;
pub(crate) use self::config::ConfigApi;
pub(crate) use self::diagnostics::Diagnostics;
pub use self::diagnostics::{GENERATE_MAX_COUNT, GENERATE_MAX_SIZE};
pub(crate) use self::machine::{MachineApi, VersionFacts};
pub(crate) use self::revocation::RevocationApi;

/// Every method machined implements. Any other path is answered Unimplemented by the
/// `NotImplemented` layer before its request is decoded.
pub(crate) const SERVED: &[&str] = &[
    "/machine.MachineService/ApplyConfiguration",
    "/machine.MachineService/CPUInfo",
    "/machine.MachineService/Copy",
    "/machine.MachineService/DiskStats",
    "/machine.MachineService/DiskUsage",
    "/machine.MachineService/Dmesg",
    "/machine.MachineService/Events",
    "/machine.MachineService/GenerateClientConfiguration",
    "/machine.MachineService/Hostname",
    "/machine.MachineService/List",
    "/machine.MachineService/LoadAvg",
    "/machine.MachineService/Logs",
    "/machine.MachineService/LogsContainers",
    "/machine.MachineService/Memory",
    "/machine.MachineService/Mounts",
    "/machine.MachineService/NetworkDeviceStats",
    "/machine.MachineService/Processes",
    "/machine.MachineService/Read",
    "/machine.MachineService/Reboot",
    "/machine.MachineService/Reset",
    "/machine.MachineService/ServiceList",
    "/machine.MachineService/ServiceRestart",
    "/machine.MachineService/ServiceStart",
    "/machine.MachineService/ServiceStop",
    "/machine.MachineService/Shutdown",
    "/machine.MachineService/SystemStat",
    "/machine.MachineService/Version",
    "/basalt.v1.DiagnosticsService/Echo",
    "/basalt.v1.DiagnosticsService/Generate",
    "/basalt.v1.DiagnosticsService/Collect",
    "/basalt.v1.ConfigService/History",
    "/basalt.v1.ConfigService/Rollback",
    "/basalt.v1.ConfigService/Confirm",
    "/basalt.v1.ConfigService/Get",
    "/basalt.v1.RevocationService/Revoke",
    "/basalt.v1.RevocationService/ListRevoked",
    "/basalt.v1.CertificateService/Status",
];

/// A boxed response stream, the type of every server-streaming method.
pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Runs a blocking /proc scan (or statfs calls, which can hang on network filesystems) off the
/// async worker threads.
async fn blocking<T, F>(work: F) -> Result<T, crate::Error>
where
    F: FnOnce() -> Result<T, crate::Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| crate::Error::BlockingTask { source })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_declared_in_the_protos() {
        for path in SERVED {
            assert!(
                basalt_api::METHODS.iter().any(|m| m.path == *path),
                "{path} is not in proto/"
            );
        }
    }
}
