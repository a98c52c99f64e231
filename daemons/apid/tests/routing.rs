//! Node routing in one apid (no forwarding credentials, like a worker), against a fake
//! machined: the `proxyfrom` loop guard is honoured only from another apid, and `nodes`
//! naming this node is fanned out with per-node metadata, including a failing node.
//! Routing across real nodes is in `tests/tests/routing.rs`.

// Tests state their expectations with unwrap/expect: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use basalt_api::machine::{ApplyConfigurationRequest, ReadRequest};
use support::{Apid, Pki, seen_caller, seen_proxyfrom, seen_roles, with_metadata, within_deadline};
use tonic::Code;

/// What another apid sends along with a forwarded call, plus a `node` that is not this one.
const FORWARDED: &[(&str, &str)] = &[
    ("talos-role", "os:reader"),
    ("basalt-caller", "cn=alice;serial=1f"),
    ("proxyfrom", "10.0.0.1:50000"),
    ("node", "10.9.9.9"),
];

#[tokio::test]
async fn a_forwarded_call_is_served_here_and_only_another_apid_can_forward() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;

        // From an os:impersonator peer: served here (loop guard), as the reader it names.
        let mut impersonator = apid.machine(&pki, &pki.client(&["os:impersonator"]));
        let reply = impersonator
            .version(with_metadata((), FORWARDED))
            .await
            .expect("a forwarded call is served locally");
        assert_eq!(seen_roles(reply.metadata()), ["os:reader"]);
        assert_eq!(seen_caller(reply.metadata()), "cn=alice;serial=1f");
        // The loop guard ends here: machined never sees it.
        assert_eq!(seen_proxyfrom(reply.metadata()), "");

        // From anyone else `proxyfrom` is stripped, so `node` counts: this node does not
        // forward.
        let mut admin = apid.machine(&pki, &pki.client(&["os:admin"]));
        let status = admin
            .version(with_metadata((), FORWARDED))
            .await
            .expect_err("proxyfrom from a client is ignored");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().starts_with("no request forwarding"),
            "{status:?}"
        );

        // A target that is not a host: InvalidArgument, saying what is accepted.
        let status = admin
            .version(with_metadata((), &[("node", "http://x/y")]))
            .await
            .expect_err("not a host");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        // An empty target names no node: refused, not served here (which it was before
        // 2026-12-08, a reboot meant for another node running on this one).
        for (key, value) in [("node", ""), ("nodes", "127.0.0.1,")] {
            let status = admin
                .version(with_metadata((), &[(key, value)]))
                .await
                .expect_err("an empty target");
            assert_eq!(status.code(), Code::InvalidArgument, "{key}: {status:?}");
            assert!(
                status.message().starts_with("invalid target"),
                "{key}: {status:?}"
            );
        }

        backend.stop().await;
        let audit = apid.stop().await;
        let forwarded = audit
            .iter()
            .find(|r| r["impersonated"] == true)
            .expect("the forwarded call's record");
        assert_eq!(forwarded["via"], "10.0.0.1:50000", "{forwarded}");
        assert_eq!(forwarded["caller"], "cn=alice;serial=1f", "{forwarded}");
    })
    .await;
}

#[tokio::test]
async fn nodes_naming_this_node_get_metadata_and_a_failure_is_an_element() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));
        // This node twice, under two names: with and without apid's port.
        let with_port = apid.addr.to_string();
        let nodes = [("nodes", "127.0.0.1"), ("nodes", with_port.as_str())];

        let reply = client
            .version(with_metadata((), &nodes))
            .await
            .unwrap()
            .into_inner();
        let hosts: Vec<&str> = reply
            .messages
            .iter()
            .map(|m| m.metadata.as_ref().unwrap().hostname.as_str())
            .collect();
        assert_eq!(hosts, ["127.0.0.1", with_port.as_str()]);

        // A server stream: every node's messages, each with its metadata.
        let mut stream = client
            .read(with_metadata(
                ReadRequest {
                    path: "count:3".to_owned(),
                },
                &nodes,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Some(data) = stream.message().await.unwrap() {
            seen.push(data.metadata.unwrap().hostname);
        }
        assert_eq!(seen.len(), 6);
        for host in ["127.0.0.1", with_port.as_str()] {
            assert_eq!(seen.iter().filter(|h| *h == host).count(), 3, "{seen:?}");
        }

        // machined gone: each node is an error element, and the call is still OK.
        backend.stop().await;
        let reply = client
            .version(with_metadata((), &nodes))
            .await
            .expect("fan-out reports node failures in the reply")
            .into_inner();
        assert_eq!(reply.messages.len(), 2);
        for message in &reply.messages {
            let metadata = message.metadata.as_ref().unwrap();
            assert!(
                metadata.error.contains("machined is not reachable"),
                "{metadata:?}"
            );
            assert_eq!(
                metadata.status.as_ref().unwrap().code,
                Code::Unavailable as i32
            );
        }
        let audit = apid.stop().await;
        assert!(
            audit
                .iter()
                .any(|r| r["targets"] == serde_json::json!(["127.0.0.1", with_port])),
            "{audit:#?}"
        );
    })
    .await;
}

/// The replies of a fan-out are merged into one message, so together they may hold at most
/// its limit: a node whose reply does not fit becomes an error element, and apid never holds
/// more than about one message (before 2026-12-08 it held every node's reply, up to 32 MiB
/// each, before it found the merged one too large and failed the whole call).
#[tokio::test]
async fn fanned_out_replies_together_stay_within_one_message() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid
            .machine(&pki, &pki.client(&["os:admin"]))
            .max_decoding_message_size(support::CLIENT_MESSAGE_LIMIT);
        let twelve_mib = (12 * 1024 * 1024).to_string();
        let reply = client
            .version(with_metadata(
                (),
                &[
                    ("nodes", "127.0.0.1,127.0.0.1,127.0.0.1"),
                    ("test-reply-bytes", &twelve_mib),
                ],
            ))
            .await
            .expect("the fan-out answers")
            .into_inner();
        assert_eq!(reply.messages.len(), 3);
        let (fitted, refused): (Vec<_>, Vec<_>) = reply
            .messages
            .iter()
            .partition(|m| m.metadata.as_ref().is_some_and(|md| md.error.is_empty()));
        assert_eq!(fitted.len(), 2, "two 12 MiB replies fit in 32 MiB");
        for message in &fitted {
            let tag = &message.version.as_ref().expect("version").tag;
            assert_eq!(tag.len(), 12 * 1024 * 1024);
        }
        let error = &refused[0].metadata.as_ref().expect("metadata").error;
        assert!(
            error.contains("the replies of the nodes together exceed the limit"),
            "{error}"
        );
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

/// A fan-out reads the request whole (it goes to every node): a request over the message limit
/// is refused with ResourceExhausted before any node is called, and the next call is served.
#[tokio::test]
async fn a_fanned_out_request_over_the_limit_is_refused_before_any_node_is_called() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut client = apid
            .machine(&pki, &pki.client(&["os:admin"]))
            .max_encoding_message_size(support::CLIENT_MESSAGE_LIMIT);
        let status = client
            .apply_configuration(with_metadata(
                ApplyConfigurationRequest {
                    data: vec![b'#'; 33 * 1024 * 1024],
                    ..ApplyConfigurationRequest::default()
                },
                &[("nodes", "127.0.0.1")],
            ))
            .await
            .expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status
                .message()
                .contains("exceeds the limit of 33554432 bytes"),
            "{status:?}"
        );
        client
            .version(with_metadata((), &[("nodes", "127.0.0.1")]))
            .await
            .expect("the next fan-out is served");
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}
