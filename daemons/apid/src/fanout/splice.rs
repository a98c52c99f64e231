//! Byte-level splicing of per-node `common.Metadata` into fan-out replies (talos-facts.md
//! §1.6), without decoding the payloads.
//!
//! Every unary `machine.MachineService` reply is `XxxResponse { repeated Xxx messages = 1; }`
//! and every element (and every server-stream message) has `common.Metadata metadata = 1`.
//! Appending the bytes of field 1 holding a `Metadata` to an element is, by protobuf merge
//! semantics, the same as merging that metadata into the element's own: `hostname` is
//! replaced, an `error` or `status` the element already had is kept. That is what Talos's
//! `AppendInfo` does, and concatenating the spliced replies of several nodes decodes as one
//! reply whose `messages` hold every node's elements.
//!
//! Unlike Talos, which assumes exactly one element and fails the call on an empty reply, every
//! element of field 1 gets the metadata and a reply with none gets one element holding only
//! the metadata, so the node still shows up. Other top-level fields are copied unchanged.
//!
//! These functions are pure and never panic on any input (a fuzz target drives them); a
//! malformed reply is a [`SpliceError`].

/// Field number of `messages` in a reply and of `metadata` in an element.
const FIELD_ONE_LEN: u8 = (1 << 3) | WIRE_LEN as u8;

const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_START_GROUP: u64 = 3;
const WIRE_END_GROUP: u64 = 4;
const WIRE_I32: u64 = 5;

/// A varint is at most 10 bytes long.
const MAX_VARINT_LEN: usize = 10;

/// Why a reply could not be spliced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpliceError {
    /// A varint (tag or length) runs past the end or over 10 bytes.
    #[error("malformed varint at byte {offset}")]
    Varint {
        /// Where it starts.
        offset: usize,
    },
    /// A field's value runs past the end of the reply.
    #[error("field {field} at byte {offset} needs {needed} bytes, {available} are left")]
    Truncated {
        /// The field number.
        field: u64,
        /// Where the field's tag starts.
        offset: usize,
        /// Bytes the value needs.
        needed: u64,
        /// Bytes left in the reply.
        available: usize,
    },
    /// Field number 0 is never valid.
    #[error("field number 0 at byte {offset}")]
    FieldZero {
        /// Where the tag starts.
        offset: usize,
    },
    /// Groups (deprecated) and wire types 6 and 7 do not occur in these replies.
    #[error("unsupported wire type {wire_type} at byte {offset}")]
    WireType {
        /// The wire type.
        wire_type: u64,
        /// Where the tag starts.
        offset: usize,
    },
    /// Field 1 (`messages`) is not length-delimited, so this is not a reply envelope.
    #[error("field 1 at byte {offset} has wire type {wire_type}, not a message")]
    NotAnEnvelope {
        /// The wire type found.
        wire_type: u64,
        /// Where the tag starts.
        offset: usize,
    },
}

/// Why a node has no reply: a gRPC status code and message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeFailure<'a> {
    /// The gRPC status code (`google.rpc.Status.code`).
    pub code: i32,
    /// The status message, also used as `Metadata.error`.
    pub message: &'a str,
}

/// Encodes `common.Metadata { hostname, error, status }`; `failure` sets `error` and
/// `status` (`google.rpc.Status { code = 1, message = 2 }`).
pub fn metadata(hostname: &str, failure: Option<NodeFailure<'_>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(hostname.len() + 8);
    put_bytes_field(&mut out, 1, hostname.as_bytes());
    if let Some(failure) = failure {
        put_bytes_field(&mut out, 2, failure.message.as_bytes());
        let mut status = Vec::with_capacity(failure.message.len() + 12);
        if failure.code != 0 {
            put_varint(&mut status, 1 << 3 | WIRE_VARINT);
            // int32 is encoded as the sign-extended 64-bit value.
            put_varint(&mut status, i64::from(failure.code) as u64);
        }
        put_bytes_field(&mut status, 2, failure.message.as_bytes());
        put_bytes_field(&mut out, 3, &status);
    }
    out
}

/// Adds `metadata` (an encoded `common.Metadata`) to every element of a unary reply's
/// `messages`; see the module docs.
pub fn splice_unary(reply: &[u8], metadata: &[u8]) -> Result<Vec<u8>, SpliceError> {
    let mut out = Vec::with_capacity(reply.len() + metadata.len() + 16);
    let mut elements = 0usize;
    let mut pos = 0;
    while pos < reply.len() {
        let start = pos;
        let tag = read_varint(reply, &mut pos)?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 0 {
            return Err(SpliceError::FieldZero { offset: start });
        }
        let value_len = match wire_type {
            WIRE_VARINT => {
                read_varint(reply, &mut pos)?;
                0
            }
            WIRE_I64 => 8,
            WIRE_I32 => 4,
            WIRE_LEN => read_varint(reply, &mut pos)?,
            WIRE_START_GROUP | WIRE_END_GROUP | 6.. => {
                return Err(SpliceError::WireType {
                    wire_type,
                    offset: start,
                });
            }
        };
        let available = reply.len() - pos;
        let value_end = usize::try_from(value_len)
            .ok()
            .filter(|len| *len <= available)
            .map(|len| pos + len)
            .ok_or(SpliceError::Truncated {
                field,
                offset: start,
                needed: value_len,
                available,
            })?;
        if field == 1 {
            if wire_type != WIRE_LEN {
                return Err(SpliceError::NotAnEnvelope {
                    wire_type,
                    offset: start,
                });
            }
            put_element(&mut out, &reply[pos..value_end], metadata);
            elements += 1;
        } else {
            out.extend_from_slice(&reply[start..value_end]);
        }
        pos = value_end;
    }
    if elements == 0 {
        put_element(&mut out, &[], metadata);
    }
    Ok(out)
}

/// Adds `metadata` to one server-stream message (its field 1 is `metadata`). Appending is
/// always valid protobuf if the message was, so nothing is checked (as Talos).
pub fn splice_stream(message: &[u8], metadata: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + metadata.len() + 1 + MAX_VARINT_LEN);
    out.extend_from_slice(message);
    put_bytes_field(&mut out, 1, metadata);
    out
}

/// A unary reply whose one element holds only `metadata`: what a failed node contributes
/// (`common.EmptyResponse { messages: [Empty { metadata }] }`; decoded as any reply type it is
/// an element with only `metadata` set).
pub fn error_reply(metadata: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(metadata.len() + 2 * (1 + MAX_VARINT_LEN));
    put_element(&mut out, &[], metadata);
    out
}

/// A server-stream message holding only `metadata` (`common.Empty { metadata }`).
pub fn error_message(metadata: &[u8]) -> Vec<u8> {
    splice_stream(&[], metadata)
}

/// Writes `messages` element `element` with `metadata` appended as its field 1.
fn put_element(out: &mut Vec<u8>, element: &[u8], metadata: &[u8]) {
    let inner_len = element.len() + 1 + varint_len(metadata.len() as u64) + metadata.len();
    out.push(FIELD_ONE_LEN);
    put_varint(out, inner_len as u64);
    out.extend_from_slice(element);
    put_bytes_field(out, 1, metadata);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads a varint at `*pos`, advancing it.
fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, SpliceError> {
    let start = *pos;
    let mut value = 0u64;
    for i in 0..MAX_VARINT_LEN {
        let Some(&byte) = bytes.get(start + i) else {
            break;
        };
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *pos = start + i + 1;
            return Ok(value);
        }
    }
    Err(SpliceError::Varint { offset: start })
}

#[cfg(test)]
mod tests {
    use basalt_api::common::{Data, DataResponse, Empty, EmptyResponse, Metadata};
    use basalt_api::machine::{Version, VersionInfo, VersionResponse};
    use prost::Message as _;

    use super::*;

    fn version_reply(tag: &str, metadata: Option<Metadata>) -> Vec<u8> {
        VersionResponse {
            messages: vec![Version {
                metadata,
                version: Some(VersionInfo {
                    tag: tag.to_owned(),
                    ..VersionInfo::default()
                }),
                ..Version::default()
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn metadata_encodes_as_common_metadata() {
        let decoded = Metadata::decode(&metadata("node-1", None)[..]).unwrap();
        assert_eq!(decoded.hostname, "node-1");
        assert!(decoded.error.is_empty() && decoded.status.is_none());

        let failure = NodeFailure {
            code: 14,
            message: "apid at 10.0.0.2:50000 is not reachable",
        };
        let decoded = Metadata::decode(&metadata("10.0.0.2", Some(failure))[..]).unwrap();
        assert_eq!(decoded.error, failure.message);
        let status = decoded.status.unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (14, failure.message)
        );
    }

    #[test]
    fn unary_replies_get_hostnames_and_concatenate() {
        let mut merged = Vec::new();
        for (tag, host) in [("v1.0.0", "a"), ("v2.0.0", "b")] {
            let spliced = splice_unary(&version_reply(tag, None), &metadata(host, None)).unwrap();
            merged.extend_from_slice(&spliced);
        }
        let failure = NodeFailure {
            code: 4,
            message: "deadline",
        };
        merged.extend_from_slice(&error_reply(&metadata("c", Some(failure))));

        let reply = VersionResponse::decode(&merged[..]).unwrap();
        let hosts: Vec<&str> = reply
            .messages
            .iter()
            .map(|m| m.metadata.as_ref().unwrap().hostname.as_str())
            .collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(reply.messages[1].version.as_ref().unwrap().tag, "v2.0.0");
        let failed = reply.messages[2].metadata.as_ref().unwrap();
        assert_eq!(failed.error, "deadline");
        assert_eq!(failed.status.as_ref().unwrap().code, 4);
        assert!(reply.messages[2].version.is_none());
        // The error element is an EmptyResponse too.
        let empty = EmptyResponse::decode(&error_reply(&metadata("c", None))[..]).unwrap();
        assert_eq!(empty.messages.len(), 1);
    }

    #[test]
    fn existing_metadata_is_merged_not_lost() {
        let existing = Metadata {
            hostname: "old".to_owned(),
            error: "kept".to_owned(),
            status: None,
        };
        let reply = version_reply("v1", Some(existing));
        let spliced = splice_unary(&reply, &metadata("new", None)).unwrap();
        let decoded = VersionResponse::decode(&spliced[..]).unwrap();
        let metadata = decoded.messages[0].metadata.as_ref().unwrap();
        assert_eq!(metadata.hostname, "new");
        assert_eq!(metadata.error, "kept");
    }

    #[test]
    fn every_element_is_spliced_and_an_empty_reply_gets_one() {
        let reply = DataResponse {
            messages: vec![
                Data {
                    bytes: b"one".to_vec(),
                    ..Data::default()
                },
                Data {
                    bytes: b"two".to_vec(),
                    ..Data::default()
                },
            ],
        }
        .encode_to_vec();
        let spliced = splice_unary(&reply, &metadata("n", None)).unwrap();
        let decoded = DataResponse::decode(&spliced[..]).unwrap();
        assert_eq!(decoded.messages.len(), 2);
        assert!(
            decoded
                .messages
                .iter()
                .all(|m| m.metadata.as_ref().unwrap().hostname == "n")
        );
        assert_eq!(decoded.messages[1].bytes, b"two");

        let spliced = splice_unary(&[], &metadata("n", None)).unwrap();
        let decoded = EmptyResponse::decode(&spliced[..]).unwrap();
        assert_eq!(decoded.messages.len(), 1);
        assert_eq!(decoded.messages[0].metadata.as_ref().unwrap().hostname, "n");
    }

    #[test]
    fn other_fields_are_copied() {
        // field 2 varint 7, field 3 fixed64, field 4 fixed32, then one element.
        let mut reply = vec![0x10, 7, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4];
        reply.extend_from_slice(&version_reply("v", None));
        let spliced = splice_unary(&reply, &metadata("n", None)).unwrap();
        assert_eq!(&spliced[..16], &reply[..16]);
        assert_eq!(
            VersionResponse::decode(&spliced[..])
                .unwrap()
                .messages
                .len(),
            1
        );
    }

    #[test]
    fn stream_messages_get_metadata() {
        let data = Data {
            metadata: None,
            bytes: b"log line".to_vec(),
        }
        .encode_to_vec();
        let decoded = Data::decode(&splice_stream(&data, &metadata("w1", None))[..]).unwrap();
        assert_eq!(decoded.metadata.unwrap().hostname, "w1");
        assert_eq!(decoded.bytes, b"log line");
        let failure = NodeFailure {
            code: 7,
            message: "denied",
        };
        let decoded = Empty::decode(&error_message(&metadata("w2", Some(failure)))[..]).unwrap();
        assert_eq!(decoded.metadata.unwrap().error, "denied");
    }

    #[test]
    fn malformed_replies_are_errors() {
        let meta = metadata("n", None);
        let cases: &[(&[u8], SpliceError)] = &[
            (&[0x0a], SpliceError::Varint { offset: 1 }),
            (
                &[0x0a, 5, 1],
                SpliceError::Truncated {
                    field: 1,
                    offset: 0,
                    needed: 5,
                    available: 1,
                },
            ),
            (&[0x80], SpliceError::Varint { offset: 0 }),
            (&[0x00], SpliceError::FieldZero { offset: 0 }),
            (
                &[0x08, 1],
                SpliceError::NotAnEnvelope {
                    wire_type: 0,
                    offset: 0,
                },
            ),
            (
                &[0x0b],
                SpliceError::WireType {
                    wire_type: 3,
                    offset: 0,
                },
            ),
            (
                &[0x0f],
                SpliceError::WireType {
                    wire_type: 7,
                    offset: 0,
                },
            ),
            (
                &[0x19, 1, 2],
                SpliceError::Truncated {
                    field: 3,
                    offset: 0,
                    needed: 8,
                    available: 2,
                },
            ),
            (&[0xff; 11], SpliceError::Varint { offset: 0 }),
        ];
        for (reply, expected) in cases {
            assert_eq!(
                splice_unary(reply, &meta).as_ref(),
                Err(expected),
                "{reply:?}"
            );
        }
        // A length near u64::MAX must not overflow.
        let mut huge = vec![0x0a];
        put_varint(&mut huge, u64::MAX);
        assert!(matches!(
            splice_unary(&huge, &meta),
            Err(SpliceError::Truncated { .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: no extra crates, same inputs every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let meta = metadata("n", None);
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if let Ok(out) = splice_unary(&bytes, &meta) {
                // Whatever is accepted stays parseable.
                assert!(splice_unary(&out, &meta).is_ok());
            }
            let _ = splice_stream(&bytes, &meta);
        }
    }

    #[test]
    fn varint_lengths() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Ok(value));
        }
    }
}
