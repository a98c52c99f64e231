//! The services apid answers itself: `grpc.health.v1.Health` and gRPC server reflection (v1 and
//! v1alpha) over basalt's descriptor set.
//!
//! Authorization decision: these need a valid client certificate (the TLS handshake already
//! required one) but **no role**. They are matched here by service name and never looked up in
//! the machine rules table, which therefore stays exactly Talos's table (its every-method test
//! walks basalt's own descriptor set, which does not contain these services). They reveal
//! nothing beyond the public proto files and whether apid is up.

use http::{Request, Response};
use hyper::body::Incoming;
use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceExt;

/// Path prefixes of the services apid serves itself.
const LOCAL_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Whether `path` belongs to a service apid answers itself.
pub(crate) fn is_local(path: &str) -> bool {
    LOCAL_SERVICES.iter().any(|prefix| path.starts_with(prefix))
}

/// The router for the local services.
#[derive(Clone, Debug)]
pub(crate) struct LocalServices {
    routes: Routes,
}

impl LocalServices {
    /// Health (overall status SERVING) and reflection listing basalt's API and health.
    pub(crate) fn new() -> Result<Self, tonic_reflection::server::Error> {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(basalt_api::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let routes = Routes::new(health)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .prepare();
        Ok(Self { routes })
    }

    /// Serves one call.
    pub(crate) async fn call(&self, request: Request<Incoming>) -> Response<Body> {
        match self.routes.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}
