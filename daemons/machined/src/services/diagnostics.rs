//! `basalt.v1.DiagnosticsService`: moves bytes in every call shape, for transport tests and
//! benchmarks. It reads nothing from the node.

use basalt_api::basalt::v1::{
    CollectResponse, EchoRequest, EchoResponse, GenerateRequest,
    diagnostics_service_server::DiagnosticsService,
};
use basalt_api::common;
use tonic::{Request, Response, Status, Streaming};

use super::BoxStream;
use crate::Error;

/// The most chunks one `Generate` call may ask for.
pub const GENERATE_MAX_COUNT: u32 = 100_000;

/// The largest chunk one `Generate` call may ask for (4 MiB).
pub const GENERATE_MAX_SIZE: u32 = 4 * 1024 * 1024;

/// The `DiagnosticsService` implementation (stateless).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Diagnostics;

#[tonic::async_trait]
impl DiagnosticsService for Diagnostics {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let EchoRequest { payload } = request.into_inner();
        Ok(Response::new(EchoResponse { payload }))
    }

    type GenerateStream = BoxStream<common::Data>;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let GenerateRequest { count, size } = request.into_inner();
        if count > GENERATE_MAX_COUNT {
            return Err(Error::InvalidArgument {
                reason: format!("count is {count}; at most {GENERATE_MAX_COUNT} chunks"),
            }
            .into());
        }
        if size > GENERATE_MAX_SIZE {
            return Err(Error::InvalidArgument {
                reason: format!("size is {size}; at most {GENERATE_MAX_SIZE} bytes per chunk"),
            }
            .into());
        }
        // The bound above keeps this allocation at most 4 MiB.
        let chunk = vec![0xA5_u8; size as usize];
        // Lazy: one chunk is cloned each time the transport asks for the next message, so
        // memory stays at one chunk in flight whatever the count.
        let stream = tokio_stream::iter((0..count).map(move |_| {
            Ok(common::Data {
                metadata: None,
                bytes: chunk.clone(),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn collect(
        &self,
        request: Request<Streaming<common::Data>>,
    ) -> Result<Response<CollectResponse>, Status> {
        let mut stream = request.into_inner();
        let mut reply = CollectResponse::default();
        while let Some(data) = stream.message().await? {
            reply.messages += 1;
            reply.bytes += data.bytes.len() as u64;
        }
        Ok(Response::new(reply))
    }
}
