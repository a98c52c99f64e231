//! The per-call pipeline: the one function that decides what happens to a request.

use std::sync::Arc;

use basalt_authz::{Decision, authorize};
use http::{Request, Response};
use hyper::body::Incoming;
use tracing::warn;

use crate::audit::AuditLog;
use crate::body::{Enforce, ResponseBody};
use crate::error::Error;
use crate::forward::Machined;
use crate::limits::Limiter;
use crate::local::{self, LocalServices};
use crate::peer::{CallIdentity, Peer, strip_internal_metadata};
use crate::remote::RemoteApids;
use crate::revocation::RevocationList;
use crate::routing::{LocalNames, Route, route};

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) audit: AuditLog,
    pub(crate) local: LocalServices,
    pub(crate) machined: Machined,
    /// The names in apid's own server certificate: a `node` naming one of them is this node.
    pub(crate) local_names: LocalNames,
    /// Per-certificate request rate and in-flight limits.
    pub(crate) limiter: Limiter,
    /// The deny list, for the original callers of forwarded calls.
    pub(crate) revocation: RevocationList,
    /// Other nodes' apids, reached with this node's `os:impersonator` certificate; `None`
    /// without forwarding credentials (a worker), which then refuses calls for other nodes.
    pub(crate) remote: Option<Arc<RemoteApids>>,
}

/// Handles one call from an authenticated connection. Never fails: every outcome is a gRPC
/// response (STYLE §3: rejections are `Status` responses, never transport errors).
///
/// The order of the steps is security-relevant; each carries its reason.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    peer: Option<&Arc<Peer>>,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    // 0. The handshake verified the chain; a leaf we cannot read gets nothing (defence in depth).
    let Some(peer) = peer else {
        return ResponseBody::error(Error::NoPeerCertificate, None);
    };

    // 1. Internal metadata is attacker-controlled: remove every `talos-role`, `basalt-caller`
    //    and `proxyfrom` value first, so nothing below can read a forged one; an
    //    `os:impersonator` peer (another apid) is the only one whose asserted roles count.
    let stripped = strip_internal_metadata(request.headers_mut());
    let call = CallIdentity::resolve(peer, stripped);
    let method = request.uri().path().to_owned();
    let method = method.as_str();
    // `node`/`nodes` are read (and removed) now, while the headers can be borrowed mutably;
    // the verdict is acted on in step 5, after authorization. A call another apid forwarded
    // (`proxyfrom` from an impersonator) is served here whatever it names: the loop guard.
    let route = route(
        request.headers_mut(),
        &shared.local_names,
        method,
        call.forwarded_from.is_some(),
        shared.remote.is_some(),
    );

    // 2. Audit from here on: every call that reached this point gets exactly one record, written
    //    when its response ends (so it carries the final status and the full duration).
    let mut audit = shared.audit.start(peer, &call, method.to_owned());
    if let Ok(route) = &route {
        audit.set_targets(route.target_names());
    }

    // 2b. Per-client limits, keyed by the verified certificate, before any work is spent on
    //     the call (and so before authorization, which a flood must not get to exercise). The
    //     in-flight slot is held by the audit record, which lives as long as the response.
    //     Another apid (`os:impersonator`) is exempt: its callers met the limits there.
    if !peer.is_impersonator() {
        match shared.limiter.admit(&peer.fingerprint) {
            Ok(permit) => audit.hold(permit),
            Err(exceeded) => {
                warn!(
                    grpc.method = %method,
                    peer.addr = %peer.addr,
                    peer.cn = peer.common_name.as_deref().unwrap_or(""),
                    reason = %exceeded,
                    "Call refused by a limit"
                );
                audit.deny(exceeded.to_string());
                return ResponseBody::error(Error::LimitExceeded(exceeded), Some(audit));
            }
        }
    }

    // 2c. The handshake checked the connection's certificate; a call forwarded by another apid
    //     also names its original caller's, which this node may have revoked even if the
    //     entry node has not.
    if call.impersonated && shared.revocation.is_caller_revoked(&call.caller) {
        warn!(
            grpc.method = %method,
            peer.addr = %peer.addr,
            caller = %call.caller,
            "Forwarded call of a revoked certificate refused"
        );
        audit.deny("the original caller's certificate is revoked".to_owned());
        return ResponseBody::error(Error::CallerRevoked, Some(audit));
    }

    // 3. Authorize before spending a hop on machined, with the same rules table machined
    //    applies again. Health and reflection are apid's own, need no role, and are
    //    deliberately kept out of the rules table (see `local`).
    let is_local = local::is_local(method);
    if !is_local && let Decision::Deny(denial) = authorize(method, &call.roles) {
        warn!(
            grpc.method = %method,
            peer.addr = %peer.addr,
            peer.cn = peer.common_name.as_deref().unwrap_or(""),
            reason = %denial,
            "Call denied"
        );
        audit.deny(denial.to_string());
        return ResponseBody::error(Error::PermissionDenied(denial), Some(audit));
    }

    // 4. apid's own services answer locally.
    if is_local {
        let response = shared.local.call(request).await;
        return ResponseBody::wrap(response, Some(audit), Enforce::default());
    }

    // 5. A call that cannot be routed (bad `node`/`nodes`, or another node named on a node
    //    that does not forward) is refused rather than silently answered by this one.
    let route = match route {
        Ok(route) => route,
        Err(err) => {
            warn!(grpc.method = %method, peer.addr = %peer.addr, reason = %err, "Call refused");
            audit.deny(err.to_string());
            return ResponseBody::error(Error::Route(err), Some(audit));
        }
    };

    // 6. To machined, bytes untouched, or to other nodes' apids, always with our `talos-role`
    //    and `basalt-caller` (the target authorizes the caller's roles again), under the
    //    message limit and the call's deadline.
    match (route, shared.remote.as_deref()) {
        (Route::Local, _) => shared.machined.forward(request, &call, audit).await,
        (Route::One(target), Some(remote)) => remote.forward(request, &call, &target, audit).await,
        (Route::Many(targets), _) => {
            crate::fanout::handle(shared, request, &call, targets, audit).await
        }
        // `route` never forwards without credentials; refuse rather than serve it here.
        (Route::One(target), None) => {
            let err = crate::routing::RouteError::NoForwarding {
                target: target.name,
            };
            audit.deny(err.to_string());
            ResponseBody::error(Error::Route(err), Some(audit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `call` would return, without calling it.
    fn future_size<F: std::future::Future>(_call: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper copies every call's future into the heap, whole, so its size is paid per call.
    /// Connecting to machined or another apid is kept out of it (`ConnectionSlot::sender`);
    /// inline, the TLS connect to another node made it 15 KiB.
    #[test]
    #[allow(unreachable_code)]
    fn a_calls_future_stays_a_few_kib() {
        let size = future_size(|| handle(unreachable!(), None, unreachable!()));
        println!("pipeline::handle's future: {size} bytes");
        assert!(
            size <= 8 * 1024,
            "pipeline::handle's future is {size} bytes"
        );
    }
}
