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
use crate::local::{self, LocalServices};
use crate::peer::{CallIdentity, Peer, strip_internal_metadata};
use crate::routing::{LocalNames, route_locally};

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) audit: AuditLog,
    pub(crate) local: LocalServices,
    pub(crate) machined: Machined,
    /// The names in apid's own server certificate: a `node` naming one of them is this node.
    pub(crate) local_names: LocalNames,
}

/// Handles one call from an authenticated connection. Never fails: every outcome is a gRPC
/// response (STYLE §3: rejections are `Status` responses, never transport errors).
///
/// The order of the steps is security-relevant; each carries its reason.
pub(crate) async fn handle(
    shared: &Shared,
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
    // `node`/`nodes` are read (and removed when they name this node) now, while the headers
    // can be borrowed mutably; the verdict is acted on in step 5, after authorization.
    let route = route_locally(request.headers_mut(), &shared.local_names);
    let call = CallIdentity::resolve(peer, stripped);
    let method = request.uri().path();

    // 2. Audit from here on: every call that reached this point gets exactly one record, written
    //    when its response ends (so it carries the final status and the full duration).
    let mut audit = shared.audit.start(peer, &call, method.to_owned());

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

    // 5. basalt does not forward to other nodes yet: a call naming another node is refused
    //    rather than silently answered by this one.
    if let Err(err) = route {
        warn!(grpc.method = %method, peer.addr = %peer.addr, reason = %err, "Call refused");
        audit.deny(err.to_string());
        return ResponseBody::error(Error::Route(err), Some(audit));
    }

    // 6. Everything else goes to machined, bytes untouched, with our `talos-role` and
    //    `basalt-caller`, under the message limit and the call's deadline.
    shared.machined.forward(request, &call, audit).await
}
