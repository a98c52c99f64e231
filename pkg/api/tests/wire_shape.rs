//! The wire shape Talos clients rely on, checked against the embedded descriptor set
//! (Talos `TestAPIIdiosyncrasies`, talos-facts.md section 1.6) and against prost encodings.

use basalt_api::{FILE_DESCRIPTOR_SET, METHODS, common, machine, securityapi};
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

/// Finds a message by its fully qualified name with a leading dot, e.g. `.machine.Version`.
/// Nested messages are not searched: every envelope and element type is top-level.
fn message<'a>(fds: &'a FileDescriptorSet, full_name: &str) -> &'a DescriptorProto {
    fds.file
        .iter()
        .flat_map(|file| {
            file.message_type
                .iter()
                .map(move |msg| (format!(".{}.{}", file.package(), msg.name()), msg))
        })
        .find(|(name, _)| name == full_name)
        .map(|(_, msg)| msg)
        .unwrap_or_else(|| panic!("message {full_name} is not in the descriptor set"))
}

/// Asserts that `msg`'s field number 1 is `common.Metadata metadata = 1`.
fn assert_metadata_first(msg: &DescriptorProto, context: &str) {
    let first = msg
        .field
        .iter()
        .find(|field| field.number() == 1)
        .unwrap_or_else(|| panic!("{context}: {} has no field 1", msg.name()));
    assert_eq!(
        first.name(),
        "metadata",
        "{context}: field 1 of {}",
        msg.name()
    );
    assert_eq!(
        first.r#type(),
        Type::Message,
        "{context}: field 1 of {}",
        msg.name()
    );
    assert_eq!(
        first.type_name(),
        ".common.Metadata",
        "{context}: field 1 of {}",
        msg.name()
    );
    assert_eq!(
        first.label(),
        Label::Optional,
        "{context}: field 1 of {}",
        msg.name()
    );
}

#[test]
fn descriptor_set_decodes_and_is_self_contained() {
    let fds = descriptor_set();
    let names: Vec<&str> = fds.file.iter().map(|file| file.name()).collect();
    for expected in [
        "google/rpc/status.proto",
        "common/common.proto",
        "machine/machine.proto",
        "security/security.proto",
        // Imports are included so reflection clients can resolve every type.
        "google/protobuf/any.proto",
        "google/protobuf/duration.proto",
        "google/protobuf/empty.proto",
        "google/protobuf/timestamp.proto",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn methods_list_matches_the_descriptor_set() {
    let fds = descriptor_set();
    let mut from_descriptors = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                from_descriptors.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    method.client_streaming(),
                    method.server_streaming(),
                ));
            }
        }
    }
    let listed: Vec<_> = METHODS
        .iter()
        .map(|m| (m.path.to_owned(), m.client_streaming, m.server_streaming))
        .collect();
    assert_eq!(listed, from_descriptors);
    assert!(
        METHODS
            .iter()
            .any(|m| m.path == "/machine.MachineService/Version" && !m.server_streaming)
    );
    assert!(
        METHODS
            .iter()
            .any(|m| m.path == "/machine.MachineService/Logs" && m.server_streaming)
    );
    assert!(
        METHODS
            .iter()
            .any(|m| m.path == "/securityapi.SecurityService/Certificate")
    );
}

#[test]
fn every_machine_service_reply_has_the_talos_envelope() {
    let fds = descriptor_set();
    let service = fds
        .file
        .iter()
        .filter(|file| file.package() == "machine")
        .flat_map(|file| file.service.iter())
        .find(|service| service.name() == "MachineService")
        .expect("machine.MachineService is declared");
    assert!(!service.method.is_empty());

    for method in &service.method {
        let context = format!("/machine.MachineService/{}", method.name());
        let output = message(&fds, method.output_type());
        if method.server_streaming() {
            // Stream elements carry the metadata directly.
            assert_metadata_first(output, &context);
            continue;
        }
        // Unary: exactly one field, `repeated Xxx messages = 1`, and Xxx starts with metadata.
        assert_eq!(
            output.field.len(),
            1,
            "{context}: {} must have exactly one field",
            output.name()
        );
        let messages = &output.field[0];
        assert_eq!(messages.name(), "messages", "{context}");
        assert_eq!(messages.number(), 1, "{context}");
        assert_eq!(messages.label(), Label::Repeated, "{context}");
        assert_eq!(messages.r#type(), Type::Message, "{context}");
        assert_metadata_first(message(&fds, messages.type_name()), &context);
    }
}

#[test]
fn parameterless_requests_use_the_protobuf_empty() {
    let fds = descriptor_set();
    let machine = fds
        .file
        .iter()
        .find(|file| file.name() == "machine/machine.proto")
        .expect("machine.proto is in the set");
    let service = &machine.service[0];
    for name in [
        "Version",
        "Hostname",
        "ServiceList",
        "Memory",
        "LogsContainers",
    ] {
        let method = service
            .method
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("{name} is declared"));
        assert_eq!(method.input_type(), ".google.protobuf.Empty", "{name}");
    }
}

#[test]
fn version_response_encodes_messages_as_field_one() {
    let reply = machine::VersionResponse {
        messages: vec![machine::Version {
            metadata: None,
            version: Some(machine::VersionInfo {
                tag: "v0.1.0".to_owned(),
                ..Default::default()
            }),
            platform: None,
            features: Some(machine::FeaturesInfo { rbac: true }),
        }],
    };
    let bytes = reply.encode_to_vec();
    // Field 1, wire type 2 (length-delimited): the envelope apid's fan-out rewrites.
    assert_eq!(bytes[0], 0x0a);
    // Inside: version = 2 (0x12) holding tag = 1 (0x0a), then features = 4 (0x22) holding
    // rbac = 1 varint true (0x08 0x01).
    assert_eq!(
        &bytes[2..],
        &[
            0x12, 0x08, 0x0a, 0x06, b'v', b'0', b'.', b'1', b'.', b'0', 0x22, 0x02, 0x08, 0x01
        ]
    );
    assert_eq!(
        machine::VersionResponse::decode(&bytes[..]).expect("decodes"),
        reply
    );
}

#[test]
fn metadata_appended_to_a_reply_merges_into_field_one() {
    // apid's fan-out appends `common.Empty{metadata}` bytes to each element; decoding the
    // concatenation as the element type must yield the hostname in `metadata`.
    let element = machine::Hostname {
        metadata: None,
        hostname: "node-a".to_owned(),
    };
    let mut bytes = element.encode_to_vec();
    common::Empty {
        metadata: Some(common::Metadata {
            hostname: "10.0.0.1".to_owned(),
            ..Default::default()
        }),
    }
    .encode(&mut bytes)
    .expect("encode into a Vec cannot run out of space");
    let merged = machine::Hostname::decode(&bytes[..]).expect("decodes");
    assert_eq!(merged.hostname, "node-a");
    assert_eq!(merged.metadata.expect("metadata set").hostname, "10.0.0.1");
}

#[test]
fn field_numbers_match_talos() {
    // Reboot.actor_id = 2, Data.bytes = 2, CertificateResponse {ca = 1, crt = 2},
    // ApplyConfigurationRequest.mode = 4 (fields 2 and 3 are unused).
    let reboot = machine::Reboot {
        metadata: None,
        actor_id: "a".to_owned(),
    };
    assert_eq!(reboot.encode_to_vec(), [0x12, 0x01, b'a']);

    let data = common::Data {
        metadata: None,
        bytes: vec![7],
    };
    assert_eq!(data.encode_to_vec(), [0x12, 0x01, 7]);

    let cert = securityapi::CertificateResponse {
        ca: vec![1],
        crt: vec![2],
    };
    assert_eq!(cert.encode_to_vec(), [0x0a, 0x01, 1, 0x12, 0x01, 2]);

    let apply = machine::ApplyConfigurationRequest {
        mode: machine::apply_configuration_request::Mode::Try as i32,
        ..Default::default()
    };
    assert_eq!(apply.encode_to_vec(), [0x20, 0x04]);

    let status = common::Metadata {
        status: Some(basalt_api::google::rpc::Status {
            code: 7,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(status.encode_to_vec(), [0x1a, 0x02, 0x08, 0x07]);
}
