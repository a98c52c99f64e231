//! Roles from the client certificate decide what a caller may do, through apid and machined.
//!
//! Every call goes client → apid (mTLS, roles from the certificate's Organization values,
//! authorization) → machined (unix socket, authorization again) and back, with real processes.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use basalt_api::basalt::v1::EchoRequest;
use basalt_api::machine::{RebootRequest, ServiceRestartRequest};
use basalt_e2e::{Cert, Node, Outcome, net, within_test_deadline};
use tonic::{Code, Request, Status};

const REBOOT: &str = "/machine.MachineService/Reboot";
const SERVICE_RESTART: &str = "/machine.MachineService/ServiceRestart";

/// A ServiceRestart for a service that does not exist: safe to send with any role, and answered
/// by machined with something other than PermissionDenied once authorization lets it through.
fn restart_nothing() -> ServiceRestartRequest {
    ServiceRestartRequest {
        id: "e2e-no-such-service".to_owned(),
    }
}

/// Asserts `status` is the PermissionDenied a reader gets for `method` (which needs admin or
/// operator), and that its message explains it.
fn assert_reader_denied(node: &Node, status: &Status, method: &str) {
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{method} as a reader: {status:?}{}",
        node.log_tail()
    );
    let message = status.message();
    for needle in [method, "os:admin", "os:operator", "os:reader"] {
        assert!(
            message.contains(needle),
            "the denial of {method} should name {needle:?}: {message:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_gets_a_semver_version() {
    within_test_deadline(async {
        let node = Node::start().await;
        let reply = node
            .client(Cert::Admin)
            .await
            .version(())
            .await
            .unwrap_or_else(|status| panic!("Version as admin: {status:?}{}", node.log_tail()))
            .into_inner();
        assert_eq!(reply.messages.len(), 1, "one node, one message: {reply:?}");
        let tag = &reply.messages[0]
            .version
            .as_ref()
            .expect("version info")
            .tag;
        let parsed = semver::Version::parse(tag.trim_start_matches('v'));
        assert!(
            tag.starts_with('v') && parsed.is_ok(),
            "talosctl parses Version.tag as semver; got {tag:?} ({parsed:?})"
        );
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_reads_version_and_memory_but_cannot_reboot() {
    within_test_deadline(async {
        let node = Node::start().await;
        let mut reader = node.client(Cert::Reader).await;

        reader
            .version(())
            .await
            .unwrap_or_else(|status| panic!("Version as reader: {status:?}{}", node.log_tail()));
        let memory = reader
            .memory(())
            .await
            .unwrap_or_else(|status| panic!("Memory as reader: {status:?}{}", node.log_tail()))
            .into_inner();
        let meminfo = memory.messages[0].meminfo.as_ref().expect("meminfo");
        assert!(
            meminfo.memtotal > 0,
            "Memory comes from /proc/meminfo: {meminfo:?}"
        );

        let denied = reader
            .reboot(RebootRequest::default())
            .await
            .expect_err("a reader must not reboot the node");
        assert_reader_denied(&node, &denied, REBOOT);
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_passes_authorization_where_reader_is_refused() {
    within_test_deadline(async {
        let node = Node::start().await;

        // Authorization lets the operator through: whatever machined then answers (the service
        // does not exist, or the method is not implemented yet), it is not PermissionDenied.
        let operator = node
            .client(Cert::Operator)
            .await
            .service_restart(restart_nothing())
            .await;
        if let Err(status) = &operator {
            assert_ne!(
                status.code(),
                Code::PermissionDenied,
                "ServiceRestart needs os:admin or os:operator; the operator was refused: \
                 {status:?}{}",
                node.log_tail()
            );
        }

        let reader = node
            .client(Cert::Reader)
            .await
            .service_restart(restart_nothing())
            .await
            .expect_err("a reader must not restart services");
        assert_reader_denied(&node, &reader, SERVICE_RESTART);
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_claiming_admin_in_metadata_stays_a_reader() {
    within_test_deadline(async {
        let node = Node::start().await;
        let mut reader = node.client(Cert::Reader).await;
        for method in [REBOOT, SERVICE_RESTART] {
            let status = if method == REBOOT {
                let mut request = Request::new(RebootRequest::default());
                forge_roles(&mut request);
                reader.reboot(request).await.map(drop)
            } else {
                let mut request = Request::new(restart_nothing());
                forge_roles(&mut request);
                reader.service_restart(request).await.map(drop)
            }
            .expect_err("talos-role from a client certificate without os:impersonator");
            assert_reader_denied(&node, &status, method);
        }
        node.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_without_organization_connects_but_is_denied() {
    within_test_deadline(async {
        let node = Node::start().await;
        let outcome = net::probe_tls(node.apid_addr(), node.tls(Some(Cert::NoOrganization))).await;
        assert_eq!(
            outcome,
            Outcome::Accepted,
            "a valid certificate without roles still authenticates{}",
            node.log_tail()
        );

        let mut client = node.client(Cert::NoOrganization).await;
        let version = client
            .version(())
            .await
            .expect_err("no roles: even Version is denied");
        assert_eq!(version.code(), Code::PermissionDenied, "{version:?}");
        let memory = client
            .memory(())
            .await
            .expect_err("no roles: Memory is denied");
        assert_eq!(memory.code(), Code::PermissionDenied, "{memory:?}");
        // Even basalt's diagnostics, open to every role, need *a* role.
        let echo = node
            .diagnostics(Cert::NoOrganization)
            .await
            .echo(EchoRequest::default())
            .await
            .expect_err("no roles: Echo is denied");
        assert_eq!(echo.code(), Code::PermissionDenied, "{echo:?}");
        node.shutdown().await;
    })
    .await;
}

/// Adds what a forging client would send: admin roles and a caller name.
fn forge_roles<T>(request: &mut Request<T>) {
    let metadata = request.metadata_mut();
    metadata.insert("talos-role", "os:admin".parse().unwrap());
    metadata.append("talos-role", "os:operator".parse().unwrap());
    metadata.insert("basalt-caller", "forged".parse().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_unknown_roles_connect_but_grant_nothing() {
    within_test_deadline(async {
        let node = Node::start().await;
        let outcome = net::probe_tls(node.apid_addr(), node.tls(Some(Cert::UnknownRoles))).await;
        assert_eq!(
            outcome,
            Outcome::Accepted,
            "a valid certificate with unknown roles still authenticates{}",
            node.log_tail()
        );

        let denied = node
            .client(Cert::UnknownRoles)
            .await
            .version(())
            .await
            .expect_err("os:future and admin are no roles: Version is denied");
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        // The denial names what the certificate holds, so its owner sees why.
        for needle in ["os:future", "admin"] {
            assert!(
                denied.message().contains(needle),
                "the denial should name {needle:?}: {:?}",
                denied.message()
            );
        }
        // apid keeps serving the known roles.
        node.client(Cert::Reader)
            .await
            .version(())
            .await
            .unwrap_or_else(|status| panic!("Version as reader: {status:?}{}", node.log_tail()));
        node.shutdown().await;
    })
    .await;
}

/// Calls `path`, which no service defines, with an empty message as `cert`.
async fn call_unknown_method(node: &Node, cert: Cert, path: &'static str) -> Status {
    let mut grpc = tonic::client::Grpc::new(node.channel(cert).await);
    grpc.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(
        Request::new(()),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("nothing serves an unknown method")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_admin_only_and_then_unimplemented() {
    within_test_deadline(async {
        let node = Node::start().await;
        const UNKNOWN: &str = "/foo.Bar/Baz";

        // Methods outside the rule table fall back to admin-only (Talos's default).
        let reader = call_unknown_method(&node, Cert::Reader, UNKNOWN).await;
        assert_eq!(reader.code(), Code::PermissionDenied, "{reader:?}");
        assert!(
            reader.message().contains(UNKNOWN) && reader.message().contains("os:admin"),
            "{:?}",
            reader.message()
        );

        // An admin gets through apid, and machined says it does not serve the method.
        let admin = call_unknown_method(&node, Cert::Admin, UNKNOWN).await;
        assert_eq!(
            admin.code(),
            Code::Unimplemented,
            "{admin:?}{}",
            node.log_tail()
        );
        assert!(
            admin.message().contains(UNKNOWN),
            "the answer should name the method: {:?}",
            admin.message()
        );

        // Both answers were gRPC statuses on a working connection: Version still answers.
        node.client(Cert::Admin)
            .await
            .version(())
            .await
            .unwrap_or_else(|status| panic!("Version as admin: {status:?}{}", node.log_tail()));
        node.shutdown().await;
    })
    .await;
}
