//! Roles from the certificate, the role-header rules, authorization at the edge, the audit
//! record, and apid's own health and reflection services.

mod support;

use basalt_api::machine::RebootRequest;
use support::{
    Apid, Pki, seen_caller, seen_proxyfrom, seen_roles, version, with_metadata, within_deadline,
};
use tonic::Code;

#[tokio::test]
async fn admin_gets_version_and_machined_sees_admin() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        let reply = version(&mut client).await.expect("admin may call Version");
        let tag = &reply.get_ref().messages[0].version.as_ref().unwrap().tag;
        assert_eq!(tag, "v0.1.0-test");
        assert_eq!(seen_roles(reply.metadata()), ["os:admin"]);
        let caller = seen_caller(reply.metadata());
        assert!(caller.starts_with("cn=tester;serial="), "{caller}");
        assert!(
            caller.contains(";roles=os:admin;addr=127.0.0.1:"),
            "{caller}"
        );

        backend.stop().await;
        let audit = apid.stop().await;
        assert_eq!(audit.len(), 1);
        let record = &audit[0];
        assert_eq!(record["method"], "/machine.MachineService/Version");
        assert_eq!(record["decision"], "allow");
        assert_eq!(record["code"], "OK");
        assert_eq!(record["cn"], "tester");
        assert_eq!(record["roles"], serde_json::json!(["os:admin"]));
        assert!(record["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(record["serial"].as_str().is_some_and(|s| !s.is_empty()));
    })
    .await;
}

#[tokio::test]
async fn reader_gets_version_but_cannot_reboot_and_is_told_why() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:reader"]));

        let reply = version(&mut client).await.expect("reader may call Version");
        assert_eq!(seen_roles(reply.metadata()), ["os:reader"]);

        let err = client
            .reboot(RebootRequest::default())
            .await
            .expect_err("reader may not reboot");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "/machine.MachineService/Reboot needs one of os:admin, os:operator; \
             the certificate holds os:reader"
        );

        // An operator may reboot.
        let mut operator = apid.machine(&pki, &pki.client(&["os:operator"]));
        let reply = operator
            .reboot(RebootRequest::default())
            .await
            .expect("operator may reboot");
        assert_eq!(reply.get_ref().messages[0].actor_id, "reboot-1");

        backend.stop().await;
        let audit = apid.stop().await;
        let denied: Vec<_> = audit.iter().filter(|r| r["decision"] == "deny").collect();
        assert_eq!(denied.len(), 1, "{audit:?}");
        assert_eq!(denied[0]["code"], "PERMISSION_DENIED");
        assert_eq!(denied[0]["method"], "/machine.MachineService/Reboot");
        assert_eq!(denied[0]["roles"], serde_json::json!(["os:reader"]));
        assert!(
            denied[0]["reason"]
                .as_str()
                .unwrap()
                .contains("needs one of os:admin, os:operator")
        );
    })
    .await;
}

#[tokio::test]
async fn a_reader_sending_admin_roles_stays_a_reader() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:reader"]));

        let forged = [
            ("talos-role", "os:admin"),
            ("talos-role", "os:impersonator"),
            ("basalt-caller", "cn=root;serial=1"),
            ("proxyfrom", "10.0.0.1"),
        ];
        let reply = client
            .version(with_metadata((), &forged))
            .await
            .expect("reader may call Version");
        assert_eq!(seen_roles(reply.metadata()), ["os:reader"]);
        assert!(seen_caller(reply.metadata()).starts_with("cn=tester;"));
        assert_eq!(seen_proxyfrom(reply.metadata()), "");

        let err = client
            .reboot(with_metadata(RebootRequest::default(), &forged))
            .await
            .expect_err("a forged role header grants nothing");
        assert_eq!(err.code(), Code::PermissionDenied);

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_impersonators_role_header_is_honoured() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:impersonator"]));

        // Another node's apid forwarding a reader's call.
        let asserted = [
            ("talos-role", "os:reader"),
            ("basalt-caller", "cn=alice;serial=2a"),
        ];
        let reply = client
            .version(with_metadata((), &asserted))
            .await
            .expect("asserted reader may call Version");
        assert_eq!(seen_roles(reply.metadata()), ["os:reader"]);
        assert_eq!(seen_caller(reply.metadata()), "cn=alice;serial=2a");
        let err = client
            .reboot(with_metadata(RebootRequest::default(), &asserted))
            .await
            .expect_err("asserted reader may not reboot");
        assert_eq!(err.code(), Code::PermissionDenied);

        // Several roles, as grpc-go sends them: one header value each.
        let reply = client
            .reboot(with_metadata(
                RebootRequest::default(),
                &[("talos-role", "os:reader"), ("talos-role", "os:operator")],
            ))
            .await
            .expect("asserted operator may reboot");
        assert_eq!(seen_roles(reply.metadata()), ["os:operator", "os:reader"]);

        // Without a role header an impersonator holds only os:impersonator: denied everywhere.
        let err = version(&mut client).await.expect_err("bare impersonator");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(
            err.message()
                .ends_with("the certificate holds os:impersonator")
        );

        backend.stop().await;
        let audit = apid.stop().await;
        let first = &audit[0];
        assert_eq!(first["impersonated"], true);
        assert_eq!(first["cert_roles"], serde_json::json!(["os:impersonator"]));
        assert_eq!(first["caller"], "cn=alice;serial=2a");
    })
    .await;
}

#[tokio::test]
async fn a_certificate_without_roles_connects_but_every_method_is_denied() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let nobody = pki.client(&[]);
        let mut client = apid.machine(&pki, &nobody);

        let err = version(&mut client).await.expect_err("no roles");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(
            err.message().ends_with("the certificate holds no roles"),
            "{}",
            err.message()
        );
        for method in basalt_api::METHODS {
            let decision = basalt_authz::authorize(method.path, &basalt_authz::RoleSet::default());
            assert!(!decision.is_allowed(), "{}", method.path);
        }
        // The connection itself is fine: health answers.
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(apid.channel(&pki, Some(&nobody)));
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health needs no role");

        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn health_and_reflection_answer_without_machined() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    within_deadline(async {
        let pki = Pki::new();
        // No backend: these are apid's own.
        let apid = Apid::start(&pki).await;
        let reader = pki.client(&["os:reader"]);

        let mut health =
            tonic_health::pb::health_client::HealthClient::new(apid.channel(&pki, Some(&reader)));
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health");
        assert_eq!(
            status.get_ref().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        let mut reflection = ServerReflectionClient::new(apid.channel(&pki, Some(&reader)));
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = reflection
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("reflection")
            .into_inner();
        let reply = replies.message().await.expect("reply").expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for expected in ["machine.MachineService", "grpc.health.v1.Health"] {
            assert!(names.contains(&expected), "{names:?}");
        }

        // v1alpha too (grpcurl and older tools).
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
        let mut alpha = Alpha::new(apid.channel(&pki, Some(&reader)));
        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let mut replies = alpha
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("v1alpha reflection")
            .into_inner();
        assert!(replies.message().await.expect("reply").is_some());

        let audit = apid.stop().await;
        assert!(
            audit
                .iter()
                .any(|r| r["method"] == "/grpc.health.v1.Health/Check" && r["code"] == "OK"),
            "{audit:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_call_naming_another_node_is_refused_and_this_node_is_served() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        // apid's certificate names 127.0.0.1: that is this node, served here.
        client
            .version(with_metadata((), &[("node", "127.0.0.1")]))
            .await
            .expect("node naming this node is local");
        client
            .version(with_metadata((), &[("nodes", "127.0.0.1")]))
            .await
            .expect("nodes naming only this node is local");

        // Any other node: refused, never silently answered by this one.
        let err = client
            .version(with_metadata((), &[("node", "10.9.9.9")]))
            .await
            .expect_err("no forwarding yet");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(
            err.message().contains("no request forwarding"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("10.9.9.9"), "{}", err.message());
        let err = client
            .version(with_metadata(
                (),
                &[("nodes", "127.0.0.1"), ("nodes", "worker-2")],
            ))
            .await
            .expect_err("fan-out to another node");
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = client
            .version(with_metadata(
                (),
                &[("node", "127.0.0.1"), ("node", "127.0.0.1")],
            ))
            .await
            .expect_err("two node values");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "node metadata must be single-valued");

        backend.stop().await;
        let audit = apid.stop().await;
        let denied = audit.iter().filter(|r| r["decision"] == "deny").count();
        assert_eq!(denied, 3, "every refusal is audited");
    })
    .await;
}
