//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates:
//! - prost messages and tonic clients/servers (one `<package>.rs` per proto package),
//! - `basalt_descriptor.bin`, the encoded `FileDescriptorSet` including imported
//!   `google/protobuf` files, for gRPC reflection and descriptor-driven tests,
//! - `basalt_methods.rs`, the `METHODS` table of every RPC's full path and streaming kind.

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_root = manifest_dir.join("../../proto");

    // protox does not emit rerun-if-changed; Cargo scans a directory recursively.
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &proto_root, &mut files)?;
    // Sorted so the generated output does not depend on directory order.
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    // `compile` keeps source info (doc comments in the generated code) and includes imports, so
    // the descriptor set is self-contained for reflection.
    let fds = protox::compile(&files, [&proto_root])?;

    fs::write(out_dir.join("basalt_descriptor.bin"), fds.encode_to_vec())?;
    fs::write(out_dir.join("basalt_methods.rs"), methods_table(&fds))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Collects every `.proto` file below `dir`, as paths relative to `root` (the import root).
fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(root, &path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path.strip_prefix(root)?.to_path_buf());
        }
    }
    Ok(())
}

/// Renders `METHODS`: one `MethodInfo` per RPC of every service in the set, in file order.
fn methods_table(fds: &prost_types::FileDescriptorSet) -> String {
    let mut out = String::from(
        "/// Every RPC declared under `proto/`, with its full gRPC path and streaming kind.\n\
         pub const METHODS: &[MethodInfo] = &[\n",
    );
    for file in &fds.file {
        // gRPC paths are "/<package>.<Service>/<Method>", or "/<Service>/<Method>" without one.
        let prefix = match file.package() {
            "" => String::new(),
            package => format!("{package}."),
        };
        for service in &file.service {
            for method in &service.method {
                // Writing to a String cannot fail.
                let _ = writeln!(
                    out,
                    "    MethodInfo {{ path: \"/{}{}/{}\", client_streaming: {}, \
                     server_streaming: {} }},",
                    prefix,
                    service.name(),
                    method.name(),
                    method.client_streaming(),
                    method.server_streaming(),
                );
            }
        }
    }
    out.push_str("];\n");
    out
}
