//! Services through apid with the real binaries: machined supervises apid like any service, so
//! ServiceList, Logs and the service controls reach it over mTLS, with the roles apid enforces.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use basalt_api::machine::{LogsRequest, ServiceStartRequest, ServiceStopRequest};
use basalt_e2e::{Cert, Node, within_test_deadline};
use tonic::Code;

fn apid_logs(tail_lines: i32, follow: bool) -> LogsRequest {
    LogsRequest {
        namespace: "system".to_owned(),
        id: "apid".to_owned(),
        driver: 0,
        follow,
        tail_lines,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apid_is_listed_running_and_its_logs_are_readable_through_itself() {
    within_test_deadline(async {
        let node = Node::start().await;
        let mut reader = node.client(Cert::Reader).await;

        let list = reader
            .service_list(())
            .await
            .unwrap_or_else(|status| panic!("ServiceList: {status:?}{}", node.log_tail()))
            .into_inner();
        let apid = list.messages[0]
            .services
            .iter()
            .find(|s| s.id == "apid")
            .expect("apid is listed");
        assert_eq!(apid.state, "Running");
        let events = &apid.events.as_ref().expect("events").events;
        assert!(
            events
                .iter()
                .any(|e| e.state == "Running" && e.msg.starts_with("Started process")),
            "{events:?}"
        );
        let pid = node.apid_pid().expect("apid's pid");
        assert!(
            events
                .iter()
                .any(|e| e.msg == format!("Started process (PID {pid})")),
            "{events:?}"
        );

        // apid's own output, captured by machined, read back through apid.
        let mut stream = reader
            .logs(apid_logs(-1, false))
            .await
            .unwrap_or_else(|status| panic!("Logs: {status:?}{}", node.log_tail()))
            .into_inner();
        let mut text = Vec::new();
        while let Some(data) = stream.message().await.unwrap() {
            text.extend_from_slice(&data.bytes);
        }
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("Listening"), "{text}");

        // Follow: the kept lines arrive first and the stream stays open.
        let mut follow = reader.logs(apid_logs(5, true)).await.unwrap().into_inner();
        let first = follow.message().await.unwrap().expect("a chunk");
        assert!(!first.bytes.is_empty());
        drop(follow);

        let sources = reader.logs_containers(()).await.unwrap().into_inner();
        assert!(sources.messages[0].ids.iter().any(|id| id == "apid"));
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_controls_are_authorized_and_apid_refuses_to_stop_itself() {
    within_test_deadline(async {
        let node = Node::start().await;
        let stop = |id: &str| ServiceStopRequest { id: id.to_owned() };

        let err = node
            .client(Cert::Reader)
            .await
            .service_start(ServiceStartRequest {
                id: "apid".to_owned(),
            })
            .await
            .expect_err("a reader cannot control services");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

        let mut admin = node.client(Cert::Admin).await;
        let err = admin
            .service_stop(stop("apid"))
            .await
            .expect_err("apid cannot be stopped through itself");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            err.message(),
            "service \"apid\" doesn't support stop operation via API"
        );

        let err = admin
            .service_stop(stop("nope"))
            .await
            .expect_err("unknown service");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "service \"nope\" not defined");

        let err = admin
            .logs(LogsRequest {
                id: "nope".to_owned(),
                ..apid_logs(-1, false)
            })
            .await
            .expect_err("unknown log");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "log \"nope\" was not registered");

        // Still up and answering after all that.
        admin.version(()).await.unwrap();
        node.shutdown().await;
    })
    .await;
}
