//! The real `basaltctl cp` against a hostile node: an mTLS endpoint with the node's PKI that
//! answers `Copy` with archives a real machined never makes. A compromised node must not be
//! able to write outside the destination on the operator's machine (docs/SECURITY.md #71).
//!
//! The node is a small HTTP/2 server in the test, behind real TLS that verifies basaltctl's
//! client certificate; basaltctl is the real binary, configured by `gen client-config`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use basalt_api::common::Data;
use basalt_api::machine::CopyRequest;
use basalt_e2e::cli::{basaltctl, gen_client_config, text};
use basalt_e2e::{TestPki, within_test_deadline};
use basalt_pki::{KeyAlgorithm, ServerCertRequest, SubjectAltName};
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::net::TcpListener;

/// A gzipped tar built by `build`.
fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    let tar = builder.into_inner().expect("finish the tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

fn file_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header
}

/// A file whose name is written into the header by hand: tar's Builder refuses `..` and
/// absolute names, which is the point.
fn raw_named_file(builder: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]) {
    let mut header = file_header(body.len() as u64);
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_cksum();
    builder.append(&header, body).expect("append");
}

/// The archive the hostile node sends for `root_path`; `outside` is a directory outside every
/// destination.
fn hostile_archive(root_path: &str, outside: &Path) -> Vec<u8> {
    match root_path {
        // A good file first, so the refusal comes mid-stream.
        "dot-dot" => archive(|b| {
            b.append_data(&mut file_header(3), "ok.txt", &b"ok\n"[..])
                .expect("append");
            raw_named_file(b, "../evil", b"evil");
        }),
        "absolute" => archive(|b| {
            let target = outside.join("absolute-evil");
            raw_named_file(b, &target.display().to_string(), b"evil");
        }),
        "symlink" => archive(|b| {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            b.append_link(&mut link, "escape", outside).expect("link");
            b.append_data(&mut file_header(4), "escape/pwned", &b"evil"[..])
                .expect("append");
        }),
        other => panic!("the test asked for an unknown archive {other:?}"),
    }
}

/// One gRPC message frame: flag, big-endian length, body.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

type Body = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, hyper::Error>>>>;

/// Answers every call as `Copy`: the request's `root_path` picks the archive.
async fn answer(request: http::Request<Incoming>, outside: Arc<Path>) -> http::Response<Body> {
    assert_eq!(request.uri().path(), "/machine.MachineService/Copy");
    let body = request
        .into_body()
        .collect()
        .await
        .expect("read the request")
        .to_bytes();
    let copy = CopyRequest::decode(body.get(5..).expect("a gRPC frame")).expect("CopyRequest");
    let data = Data {
        metadata: None,
        bytes: hostile_archive(&copy.root_path, &outside),
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(grpc_frame(&data.encode_to_vec()))),
        Ok(Frame::trailers(trailers)),
    ];
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(tokio_stream::iter(frames)))
        .expect("response")
}

/// Serves the hostile node on a loopback port with a server certificate from `pki`'s CA.
async fn start_hostile_node(pki: &TestPki, outside: &Path) -> SocketAddr {
    let server = pki
        .ca()
        .issue_server(&ServerCertRequest {
            common_name: Some("hostile".to_owned()),
            sans: vec![SubjectAltName::Ip([127, 0, 0, 1].into())],
            ttl: Duration::from_secs(3600),
        })
        .expect("server cert");
    let tls = basalt_pki::server_config_for_apid(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        pki.ca_pem().as_bytes(),
    )
    .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let outside: Arc<Path> = Arc::from(outside);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, outside) = (acceptor.clone(), outside.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let outside = outside.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(request, outside).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// Every entry under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            out.push(path.strip_prefix(dir).expect("below").display().to_string());
            // Not into symlinks: a link out of `dir` is what we look for, not what we follow.
            if path.symlink_metadata().expect("stat").is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basaltctl_cp_refuses_entries_that_would_land_outside_the_destination() {
    within_test_deadline(async {
        let work = tempfile::Builder::new()
            .prefix("bs")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let pki = TestPki::generate(&work.path().join("pki"), KeyAlgorithm::Ed25519);
        let outside = work.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir outside");
        let addr = start_hostile_node(&pki, &outside).await;
        let config =
            gen_client_config(work.path(), &pki, "admin.config", "os:admin", "1h", &[addr]).await;

        for (root_path, entry) in [
            ("dot-dot", "../evil".to_owned()),
            (
                "absolute",
                outside.join("absolute-evil").display().to_string(),
            ),
            ("symlink", "escape/pwned".to_owned()),
        ] {
            let dest = work.path().join(format!("dest-{root_path}"));
            let dest_arg = dest.display().to_string();
            let out = basaltctl(work.path(), &config, &["cp", root_path, &dest_arg]).await;
            assert_eq!(out.status.code(), Some(1), "{root_path}: {}", text(&out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(&format!(
                    "refusing archive entry {entry}: it would land outside"
                )),
                "{root_path}: {}",
                text(&out)
            );
            assert!(
                listing(&outside).is_empty(),
                "{root_path} wrote outside the destination: {:?}",
                listing(&outside)
            );
            assert!(
                !work.path().join("evil").exists(),
                "{root_path}: ../evil was written"
            );
        }
        // What was allowed stayed inside: the good file before `../evil`, the link itself.
        assert_eq!(listing(&work.path().join("dest-dot-dot")), ["ok.txt"]);
        assert_eq!(listing(&work.path().join("dest-symlink")), ["escape"]);
    })
    .await;
}
