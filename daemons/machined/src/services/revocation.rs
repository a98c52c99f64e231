//! `basalt.v1.RevocationService`: Revoke and ListRevoked on machined's
//! [`RevocationStore`](crate::revocation::RevocationStore).
//!
//! The rules table already lets only `os:admin` call Revoke (machined's Authorize layer); the
//! handler checks again so the store is never written on a weaker path. The caller recorded
//! with an entry comes from apid's `basalt-caller` metadata (the certificate apid verified), or
//! from the unix peer for a local caller.

use std::sync::Arc;

use basalt_api::basalt::v1::{
    ConfigCaller, ListRevokedRequest, ListRevokedResponse, Revoke, RevokeRequest, RevokeResponse,
    RevokedCertificate, RevokedList, revocation_service_server::RevocationService,
};
use basalt_authz::Role;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::config_store::Caller;
use crate::layers::CallerRoles;
use crate::revocation::{ProtectedCert, RevocationError, RevocationStore, RevokedEntry, Target};

/// Lists the certificates that must never be revoked (the node's CAs, as configured now).
pub(crate) type ProtectedCerts = Arc<dyn Fn() -> Vec<ProtectedCert> + Send + Sync>;

/// The service; `store` is `None` when machined has no state directory.
#[derive(Clone)]
pub(crate) struct RevocationApi {
    store: Option<RevocationStore>,
    protected: ProtectedCerts,
}

impl RevocationApi {
    pub(crate) fn new(store: Option<RevocationStore>, protected: ProtectedCerts) -> Self {
        RevocationApi { store, protected }
    }

    fn store(&self) -> Result<&RevocationStore, Status> {
        self.store
            .as_ref()
            .ok_or_else(|| RevocationError::NoStore.into())
    }
}

impl std::fmt::Debug for RevocationApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationApi")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl RevocationService for RevocationApi {
    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let roles = request
            .extensions()
            .get::<CallerRoles>()
            .map(|roles| roles.0.clone())
            .unwrap_or_default();
        if !roles.contains(&Role::Admin) {
            return Err(Status::permission_denied(
                "only os:admin may revoke a certificate",
            ));
        }
        let basalt_caller = request
            .metadata()
            .get(basalt_authz::metadata::CALLER)
            .and_then(|value| value.to_str().ok());
        let uid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid());
        let caller = Caller::from_metadata(basalt_caller, &roles, uid);
        let RevokeRequest {
            serial,
            fingerprint,
            reason,
        } = request.into_inner();
        let target = Target::parse(&serial, &fingerprint)?;
        let store = self.store()?.clone();
        let protected = (self.protected)();
        let described = caller.to_string();
        // Two fsynced writes: off the async workers.
        let (entry, already_revoked) =
            tokio::task::spawn_blocking(move || store.revoke(&target, &reason, caller, &protected))
                .await
                .map_err(|err| crate::error::internal(&err))??;
        tracing::warn!(
            cert.serial = %entry.serial,
            cert.fingerprint = %entry.fingerprint,
            reason = %entry.reason,
            caller = %described,
            already_revoked,
            "Certificate revoked"
        );
        Ok(Response::new(RevokeResponse {
            messages: vec![Revoke {
                metadata: None,
                entry: Some(to_proto(entry)),
                already_revoked,
            }],
        }))
    }

    async fn list_revoked(
        &self,
        _request: Request<ListRevokedRequest>,
    ) -> Result<Response<ListRevokedResponse>, Status> {
        let entries = self.store()?.list().into_iter().map(to_proto).collect();
        Ok(Response::new(ListRevokedResponse {
            messages: vec![RevokedList {
                metadata: None,
                entries,
            }],
        }))
    }
}

fn to_proto(entry: RevokedEntry) -> RevokedCertificate {
    let time =
        time::OffsetDateTime::parse(&entry.time, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| prost_types::Timestamp {
                seconds: t.unix_timestamp(),
                // Below one billion: always fits.
                nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
            });
    RevokedCertificate {
        serial: entry.serial,
        fingerprint: entry.fingerprint,
        reason: entry.reason,
        time,
        caller: Some(ConfigCaller {
            common_name: entry.caller.common_name,
            serial: entry.caller.serial,
            fingerprint: entry.caller.fingerprint,
            roles: entry.caller.roles,
            address: entry.caller.address,
        }),
    }
}
