//! Generated protobuf and gRPC code for basalt's wire contract.
//!
//! This crate owns the Rust side of `proto/`: prost messages and tonic clients and servers for
//! the Talos-compatible packages `common`, `machine` and `securityapi` (and the `google.rpc`
//! status message they embed), the encoded file-descriptor set for gRPC reflection, and the list
//! of every RPC's full path ([`METHODS`]).
//!
//! Everything here is produced by `build.rs` (protox, no system protoc) from the `.proto` files;
//! the crate holds no hand-written logic beyond [`MethodInfo`]. Package, service, message and
//! field names and numbers are Talos's and are a compatibility contract: change them only with the
//! facts in `reference/talos-facts.md` section 6 in hand.
//!
//! It must not depend on any other basalt crate.

/// The `common` package: `Metadata`, `Data`, the `Empty` envelope and shared enums.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod common {
    tonic::include_proto!("common");
}

/// The `machine` package: `MachineService` (client and server) and its messages.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod machine {
    tonic::include_proto!("machine");
}

/// The `securityapi` package: trustd's `SecurityService` (client and server).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod securityapi {
    tonic::include_proto!("securityapi");
}

/// basalt's own additions, which Talos does not have (proto package `basalt.v1`).
pub mod basalt {
    /// The `basalt.v1` package: `DiagnosticsService` (Echo, Generate, Collect) for tests and
    /// benchmarks, and `ConfigService` (`proto/basalt/v1/config.proto`: machine-config
    /// history, rollback, TRY confirmation) and `CertificateService`
    /// (`proto/basalt/v1/certs.proto`: the node's CAs and certificates with their expiry), and
    /// `RevocationService` (`proto/basalt/v1/revocation.proto`: the client-certificate deny
    /// list). One proto package, so one generated module.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("basalt.v1");
    }
}

/// Google's API packages that the Talos protos embed.
pub mod google {
    /// The `google.rpc` package: `Status`, carried in `common.Metadata.status`.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every file under `proto/`, including the
/// imported `google/protobuf` well-known types, so it is self-contained for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/basalt_descriptor.bin"));

/// One RPC as declared in `proto/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodInfo {
    /// The full gRPC path, e.g. `/machine.MachineService/Version`; the key of the authz table.
    pub path: &'static str,
    /// The client sends a stream of requests.
    pub client_streaming: bool,
    /// The server replies with a stream of messages.
    pub server_streaming: bool,
}

include!(concat!(env!("OUT_DIR"), "/basalt_methods.rs"));
