//! apid as a transparent proxy to machined: streams and large messages pass through it, and
//! machined decides who may use its socket.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use basalt_api::basalt::v1::{EchoRequest, GenerateRequest};
use basalt_api::machine::machine_service_client::MachineServiceClient;
use basalt_e2e::{Cert, Node, net, within_test_deadline};
use tokio_stream::StreamExt as _;
use tonic::Code;

/// A uid that is neither root nor ours: the only one machined will accept in the last test.
const FOREIGN_UID: u32 = 12345;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_flows_through_apid() {
    within_test_deadline(async {
        let node = Node::start().await;
        // 200 × 32 KiB = 6.25 MiB: more than every HTTP/2 window on the way, so flow control
        // and backpressure in apid are exercised, not just buffering.
        let (count, size) = (200u32, 32 * 1024u32);
        let mut stream = node
            .diagnostics(Cert::Reader)
            .await
            .generate(GenerateRequest { count, size })
            .await
            .unwrap_or_else(|status| panic!("Generate: {status:?}{}", node.log_tail()))
            .into_inner();
        let mut received = 0u32;
        while let Some(item) = stream.next().await {
            let data = item
                .unwrap_or_else(|status| panic!("chunk {received}: {status:?}{}", node.log_tail()));
            assert_eq!(data.bytes.len(), size as usize, "chunk {received} size");
            received += 1;
        }
        assert_eq!(received, count, "every chunk arrives, then the stream ends");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_message_passes_through_apid() {
    within_test_deadline(async {
        let node = Node::start().await;
        // Above tonic's 4 MiB default, below Talos's 32 MiB limit; a pattern, so a reordered
        // or truncated frame cannot compare equal.
        let payload: Vec<u8> = (0..10 * 1000 * 1000u32).map(|i| (i % 251) as u8).collect();
        let reply = node
            .diagnostics(Cert::Reader)
            .await
            .echo(EchoRequest {
                payload: payload.clone(),
            })
            .await
            .unwrap_or_else(|status| panic!("Echo of 10 MB: {status:?}{}", node.log_tail()))
            .into_inner();
        assert_eq!(reply.payload.len(), payload.len(), "echoed length");
        assert!(reply.payload == payload, "the echoed bytes differ");
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machined_refuses_peers_whose_uid_is_not_allowed() {
    within_test_deadline(async {
        // apid runs as machined's child under our uid, which this node does not allow.
        let node = Node::builder().allow_uid(FOREIGN_UID).start().await;
        let our_uid = basalt_sys::current_uid();
        assert_ne!(our_uid, FOREIGN_UID, "the test needs a uid other than ours");

        let through_apid = node
            .client(Cert::Admin)
            .await
            .version(())
            .await
            .expect_err("machined must refuse apid's uid");
        assert_eq!(
            through_apid.code(),
            Code::PermissionDenied,
            "{through_apid:?}{}",
            node.log_tail()
        );
        assert!(
            through_apid.message().contains(&format!("uid {our_uid}")),
            "the refusal should come from machined's peer check and name the uid: {:?}",
            through_apid.message()
        );

        // The same for any local process that dials the socket directly, roles or not.
        let channel = net::connect_unix(node.socket_path())
            .await
            .unwrap_or_else(|err| panic!("connect to machined's socket: {err:?}"));
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("talos-role", "os:admin".parse().unwrap());
        let direct = MachineServiceClient::new(channel)
            .version(request)
            .await
            .expect_err("machined must refuse our uid");
        assert_eq!(direct.code(), Code::PermissionDenied, "{direct:?}");
        node.shutdown().await;
    })
    .await;
}
