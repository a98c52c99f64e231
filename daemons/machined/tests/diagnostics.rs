//! `basalt.v1.DiagnosticsService` over the real socket: large messages and both streaming
//! directions.

mod support;

use basalt_api::basalt::v1::{EchoRequest, GenerateRequest};
use basalt_api::common::Data;
use machined::diagnostics::{GENERATE_MAX_COUNT, GENERATE_MAX_SIZE};
use support::{Machined, with_roles, within_deadline};
use tonic::Code;

#[tokio::test]
async fn a_10_mb_echo_round_trips() {
    within_deadline(async {
        let machined = Machined::start().await;
        let payload: Vec<u8> = (0..10 * 1000 * 1000).map(|i| (i % 251) as u8).collect();
        let reply = machined
            .diagnostics()
            .await
            .echo(with_roles(
                EchoRequest {
                    payload: payload.clone(),
                },
                &["os:reader"],
            ))
            .await
            .expect("Echo")
            .into_inner();
        assert_eq!(reply.payload.len(), payload.len());
        assert!(reply.payload == payload, "payload changed in transit");
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn generate_streams_count_chunks_of_size_bytes() {
    within_deadline(async {
        let machined = Machined::start().await;
        let mut stream = machined
            .diagnostics()
            .await
            .generate(with_roles(
                GenerateRequest {
                    count: 100,
                    size: 70_000,
                },
                &["os:reader"],
            ))
            .await
            .expect("Generate")
            .into_inner();
        let mut chunks = 0;
        while let Some(data) = stream.message().await.expect("chunk") {
            assert_eq!(data.bytes.len(), 70_000);
            assert!(data.metadata.is_none());
            chunks += 1;
        }
        assert_eq!(chunks, 100);
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn generate_refuses_requests_beyond_its_bounds() {
    within_deadline(async {
        let machined = Machined::start().await;
        let mut client = machined.diagnostics().await;
        for (count, size) in [(GENERATE_MAX_COUNT + 1, 1), (1, GENERATE_MAX_SIZE + 1)] {
            let status = client
                .generate(with_roles(GenerateRequest { count, size }, &["os:reader"]))
                .await
                .expect_err("out of bounds");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn collect_counts_messages_and_bytes() {
    within_deadline(async {
        let machined = Machined::start().await;
        let chunks: Vec<Data> = (0..50_u8)
            .map(|i| Data {
                metadata: None,
                bytes: vec![i; 1000],
            })
            .collect();
        let reply = machined
            .diagnostics()
            .await
            .collect(with_roles(tokio_stream::iter(chunks), &["os:reader"]))
            .await
            .expect("Collect")
            .into_inner();
        assert_eq!(reply.messages, 50);
        assert_eq!(reply.bytes, 50_000);
        machined.stop().await;
    })
    .await;
}
