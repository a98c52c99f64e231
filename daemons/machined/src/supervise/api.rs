//! The `MachineService` handlers for services and their logs; `services::machine` delegates
//! to these. Replies use Talos's envelope: exactly one element, `metadata` unset.

use basalt_api::machine;
use tonic::{Request, Response, Status};

use super::ServiceManager;
use crate::Error;
use crate::services::BoxStream;

/// The only `Logs` namespace machined serves: its own services (Talos's `system`). An empty
/// namespace means the same here (Talos rejects it; talosctl always sends one).
pub(crate) const SYSTEM_NAMESPACE: &str = "system";

/// `ServiceList`: every service sorted by id, with state, events and health.
pub(crate) fn service_list(
    services: &ServiceManager,
) -> Result<Response<machine::ServiceListResponse>, Status> {
    Ok(Response::new(machine::ServiceListResponse {
        messages: vec![machine::ServiceList {
            metadata: None,
            services: services.list(),
        }],
    }))
}

/// `ServiceStart`.
pub(crate) async fn service_start(
    services: &ServiceManager,
    request: Request<machine::ServiceStartRequest>,
) -> Result<Response<machine::ServiceStartResponse>, Status> {
    let resp = services.start(&request.into_inner().id).await?;
    Ok(Response::new(machine::ServiceStartResponse {
        messages: vec![machine::ServiceStart {
            metadata: None,
            resp,
        }],
    }))
}

/// `ServiceStop`: returns once the process is gone.
pub(crate) async fn service_stop(
    services: &ServiceManager,
    request: Request<machine::ServiceStopRequest>,
) -> Result<Response<machine::ServiceStopResponse>, Status> {
    let resp = services.stop(&request.into_inner().id).await?;
    Ok(Response::new(machine::ServiceStopResponse {
        messages: vec![machine::ServiceStop {
            metadata: None,
            resp,
        }],
    }))
}

/// `ServiceRestart`.
pub(crate) async fn service_restart(
    services: &ServiceManager,
    request: Request<machine::ServiceRestartRequest>,
) -> Result<Response<machine::ServiceRestartResponse>, Status> {
    let resp = services.restart(&request.into_inner().id).await?;
    Ok(Response::new(machine::ServiceRestartResponse {
        messages: vec![machine::ServiceRestart {
            metadata: None,
            resp,
        }],
    }))
}

/// `Logs`: one `common.Data` per chunk of whole lines; `tail_lines` -1 (any negative) for
/// everything kept, N ≥ 0 for the last N lines; `follow` keeps streaming new output.
pub(crate) fn logs(
    services: &ServiceManager,
    request: Request<machine::LogsRequest>,
) -> Result<Response<BoxStream<basalt_api::common::Data>>, Status> {
    let machine::LogsRequest {
        namespace,
        id,
        driver: _,
        follow,
        tail_lines,
    } = request.into_inner();
    if !namespace.is_empty() && namespace != SYSTEM_NAMESPACE {
        return Err(Error::InvalidArgument {
            reason: format!(
                "container logs are not supported (namespace {namespace:?}); use namespace \
                 {SYSTEM_NAMESPACE:?} for service logs"
            ),
        }
        .into());
    }
    let tail = usize::try_from(tail_lines).ok();
    Ok(Response::new(services.logs(&id, tail, follow)?))
}

/// `LogsContainers`: the ids of the log sources, one per service.
pub(crate) fn logs_containers(
    services: &ServiceManager,
) -> Result<Response<machine::LogsContainersResponse>, Status> {
    Ok(Response::new(machine::LogsContainersResponse {
        messages: vec![machine::LogsContainer {
            metadata: None,
            ids: services.log_ids(),
        }],
    }))
}
