//! The rows of the bad-input matrix (docs/SECURITY.md) about what a hostile client can send
//! apid below the gRPC layer: certificates nobody should accept (self-signed, a chain too long,
//! a huge one), bytes that are not TLS, HTTP/2 frames written by hand (oversized header blocks,
//! CONTINUATION floods, more streams than allowed, rapid reset), and load (1,000 idle
//! connections, more silent handshakes than the accept loop takes at once, no file descriptor
//! left).
//!
//! Every test ends by showing apid still serves a normal call.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use apid::HandshakeFailure;
use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use support::{Apid, CertKey, Pki, machine_client, tls_connector, version, within_deadline};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// === helpers: certificates ===

/// A CA-capable intermediate (or root) signed by `issuer`.
fn intermediate(name: &str, issuer: &Issuer<'_, KeyPair>) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.signed_by(&key, issuer).expect("sign intermediate");
    (cert.pem(), key)
}

/// A clientAuth leaf with O=os:admin, signed by `issuer`.
fn admin_leaf(issuer: &Issuer<'_, KeyPair>) -> (String, KeyPair) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "os:admin");
    params
        .distinguished_name
        .push(DnType::CommonName, "hostile");
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key)
}

/// A client certificate chain: leaf first, then `depth` intermediates under the cluster CA.
fn chain_with_intermediates(pki: &Pki, depth: usize) -> CertKey {
    let ca_key = KeyPair::from_pem(&pki.ca.key_pem()).expect("ca key");
    let mut issuer = Issuer::from_ca_cert_pem(pki.ca.cert_pem(), ca_key).expect("ca issuer");
    let mut intermediates = Vec::new();
    for i in 0..depth {
        let (pem, key) = intermediate(&format!("intermediate-{i}"), &issuer);
        issuer = Issuer::from_ca_cert_pem(&pem, key).expect("intermediate issuer");
        intermediates.push(pem);
    }
    let (leaf_pem, leaf_key) = admin_leaf(&issuer);
    // The chain is sent leaf first, then each issuer up towards the root.
    let mut cert = leaf_pem;
    for pem in intermediates.iter().rev() {
        cert.push_str(pem);
    }
    CertKey {
        cert,
        key: leaf_key.serialize_pem(),
    }
}

/// Connects with `client`, expects the handshake or the first call to fail, and waits until
/// the failure is counted (one more than `before`).
async fn refused_at_handshake(apid: &Apid, pki: &Pki, client: &CertKey) -> u64 {
    let before = apid.stats.snapshot().total_failed();
    let mut machine = machine_client(apid.channel(pki, Some(client)));
    let err = version(&mut machine)
        .await
        .expect_err("the handshake must fail");
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        "{err:?}"
    );
    support::eventually("the refusal is counted", || {
        apid.stats.snapshot().total_failed() == before + 1
    })
    .await;
    before + 1
}

/// A normal admin call on a fresh connection: the daemon kept serving.
async fn still_serves(apid: &Apid, pki: &Pki) {
    let mut admin = apid.machine(pki, &pki.client(&["os:admin"]));
    version(&mut admin)
        .await
        .expect("apid still serves a normal call");
}

// === certificates ===

#[tokio::test]
async fn a_self_signed_client_certificate_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        // Same subject shape as a real admin cert, O=os:admin, clientAuth, but its own issuer.
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "os:admin");
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).expect("self-signed");
        let client = CertKey {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        refused_at_handshake(&apid, &pki, &client).await;
        assert_eq!(apid.failed(HandshakeFailure::UnknownCa), 1);
        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

/// Presents `der` as the client certificate, whatever it holds: rustls's own client would
/// refuse to load a certificate it cannot parse.
#[derive(Debug)]
struct RawClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for RawClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// One handshake presenting `der` with `key`; returns whether apid accepted it (a call's worth
/// of bytes could be read back instead of an alert).
async fn handshake_with_raw_cert(
    apid: &Apid,
    pki: &Pki,
    der: Vec<u8>,
    key: &Arc<dyn rustls::sign::SigningKey>,
) -> bool {
    let mut config = basalt_pki::client_config(pki.ca_pem().as_bytes(), None).expect("config");
    config.client_auth_cert_resolver = Arc::new(RawClientCert(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(der)],
        key.clone(),
    ))));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let Ok(mut tls) = support::tls_connect(apid.addr, &connector).await else {
        return false;
    };
    // TLS 1.3: the client finishes first; a refusal arrives as an alert on the first read.
    exchange_prefaces_if_accepted(&mut tls).await
}

/// Sends the HTTP/2 preface; true if apid answers with its SETTINGS rather than an alert.
async fn exchange_prefaces_if_accepted<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S) -> bool {
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    if tls.write_all(&hello).await.is_err() {
        return false;
    }
    matches!(read_frame(tls).await, Some(f) if f.kind == SETTINGS)
}

#[tokio::test]
async fn mangled_client_certificates_are_refused_at_the_handshake() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let admin = pki.client(&["os:admin"]);
        let der = basalt_pki::certificates_from_pem(admin.cert.as_bytes())
            .expect("pem")
            .remove(0)
            .to_vec();
        let key = PrivateKeyDer::from_pem_slice(admin.key.as_bytes()).expect("key");
        let key = rustls::crypto::ring::sign::any_supported_type(&key).expect("signing key");

        // The control: the same certificate and key, unmangled, are accepted.
        assert!(handshake_with_raw_cert(&apid, &pki, der.clone(), &key).await);

        // Truncated at a spread of lengths, and one bit flipped at every 5th byte (a different
        // bit each time): inside the outer header, the signed part, the algorithm and the
        // signature alike.
        let mut mangled: Vec<Vec<u8>> = [0, 1, 2, 4, 10, der.len() / 2, der.len() - 1]
            .into_iter()
            .map(|len| der[..len].to_vec())
            .collect();
        for at in (0..der.len()).step_by(5) {
            let mut flipped = der.clone();
            flipped[at] ^= 1 << (at % 8);
            mangled.push(flipped);
        }
        let before = apid.stats.snapshot().total_failed();
        for (i, cert) in mangled.iter().enumerate() {
            assert!(
                !handshake_with_raw_cert(&apid, &pki, cert.clone(), &key).await,
                "mangled certificate {i} was accepted"
            );
        }
        let refused = u64::try_from(mangled.len()).expect("count");
        support::eventually("every refusal is counted", || {
            apid.stats.snapshot().total_failed() == before + refused
        })
        .await;

        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_chain_longer_than_six_intermediates_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        // Control: the same construction with two intermediates is accepted, so the length
        // alone is what the refusal below is about.
        let short = chain_with_intermediates(&pki, 2);
        let mut machine = machine_client(apid.channel(&pki, Some(&short)));
        version(&mut machine)
            .await
            .expect("a chain with 2 intermediates is accepted");

        // webpki allows at most 6 intermediates.
        let long = chain_with_intermediates(&pki, 7);
        refused_at_handshake(&apid, &pki, &long).await;
        let stats = apid.stats.snapshot();
        assert_eq!(
            stats.failed(HandshakeFailure::UnknownCa) + stats.failed(HandshakeFailure::Other),
            1,
            "{stats:?}"
        );
        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_certificate_message_over_64_kib_is_refused() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        // A valid admin leaf followed by 30 padding certificates of about 3 KB each: a
        // Certificate message over 64 KiB, which rustls refuses before parsing it. (A single
        // certificate over 64 KiB cannot even be loaded by a rustls client: webpki's DER reader
        // stops at 64 KiB lengths.)
        let ca_key = KeyPair::from_pem(&pki.ca.key_pem()).expect("ca key");
        let issuer = Issuer::from_ca_cert_pem(pki.ca.cert_pem(), ca_key).expect("issuer");
        let (leaf_pem, leaf_key) = admin_leaf(&issuer);
        let pad_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "padding");
        // An OCTET STRING of 3,000 bytes (DER: 04 82 0b b8, content).
        let mut content = vec![0x04, 0x82, 0x0b, 0xb8];
        content.resize(content.len() + 3000, 0x41);
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 55555, 1],
                content,
            ));
        let padding = params.self_signed(&pad_key).expect("padding cert");
        let mut cert = leaf_pem;
        for _ in 0..30 {
            cert.push_str(&padding.pem());
        }
        let total: usize = basalt_pki::certificates_from_pem(cert.as_bytes())
            .expect("pem")
            .iter()
            .map(|der| der.len())
            .sum();
        assert!(total > 64 * 1024, "{total}");
        let client = CertKey {
            cert,
            key: leaf_key.serialize_pem(),
        };
        refused_at_handshake(&apid, &pki, &client).await;
        assert_eq!(apid.failed(HandshakeFailure::Other), 1);
        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

// === bytes that are not TLS ===

/// Writes `bytes`, half-closes, and reads until apid closes: apid must close (the read ends)
/// and may send at most a TLS alert.
async fn send_and_expect_close(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // apid may close before it read everything; a failed write is fine.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    answer
}

#[tokio::test]
async fn garbage_bytes_are_refused_and_apid_keeps_serving() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        // Deterministic noise (xorshift), so a failure can be replayed.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        // A handshake record whose ClientHello body is garbage.
        let mut bad_hello = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
        bad_hello.extend_from_slice(&noise[..60]);
        // A record header promising 65,535 bytes, then nothing more.
        let promise = [0x16, 0x03, 0x01, 0xff, 0xff];
        let inputs: [&[u8]; 4] = [&noise, &bad_hello, &promise, b"\x00\x00\x00\x00\x00"];
        for input in inputs {
            let answer = send_and_expect_close(apid.addr, input).await;
            // At most an alert record (content type 21), never a ServerHello or SETTINGS.
            assert!(
                answer.is_empty() || answer[0] == 0x15,
                "unexpected answer {answer:02x?}"
            );
        }
        support::eventually("every garbage connection is counted", || {
            apid.stats.snapshot().total_failed() == inputs.len() as u64
        })
        .await;
        assert_eq!(apid.stats.snapshot().completed, 0);
        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

// === raw HTTP/2 ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with a 7-bit prefix (string lengths, Huffman bit clear).
fn hpack_length(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// "Literal header field without indexing — new name" (RFC 7541 §6.2.2), no Huffman.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_length(out, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_length(out, value.len());
    out.extend_from_slice(value);
}

/// The header block of a gRPC call to `path`, plus `extra` headers.
fn request_block(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", b"POST".as_slice()),
        (":scheme", b"https"),
        (":path", path.as_bytes()),
        (":authority", b"127.0.0.1"),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
    ] {
        hpack_literal(&mut block, name, value);
    }
    for (name, value) in extra {
        hpack_literal(&mut block, name, value);
    }
    block
}

const VERSION_PATH: &str = "/machine.MachineService/Version";

/// An empty gRPC message (VersionRequest is `google.protobuf.Empty`), ending the stream.
fn empty_message(stream: u32) -> Vec<u8> {
    frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0])
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        self.payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(u32::MAX)
    }
}

/// The next frame, or `None` when the connection ended.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Frame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// An mTLS connection as admin with the HTTP/2 preface exchanged: our SETTINGS sent, the
/// server's read and acknowledged, so its limits (streams, header list) are in force.
async fn h2_connection(apid: &Apid, pki: &Pki) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tls_connector(pki.ca_pem(), Some(&pki.client(&["os:admin"])));
    let mut tls = support::tls_connect(apid.addr, &connector)
        .await
        .expect("mTLS connect");
    exchange_prefaces(&mut tls).await;
    tls
}

/// Sends our preface and empty SETTINGS, reads the server's SETTINGS and acknowledges them.
async fn exchange_prefaces<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S) {
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    tls.write_all(&hello).await.expect("preface");
    loop {
        let frame = read_frame(tls).await.expect("server SETTINGS");
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            break;
        }
    }
    tls.write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .expect("settings ack");
}

/// Reads frames until `done` says so or the connection ends; returns whether it ended.
async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut done: impl FnMut(&Frame) -> bool,
) -> bool {
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        while let Some(frame) = read_frame(stream).await {
            if done(&frame) {
                return false;
            }
        }
        true
    })
    .await
    .expect("apid answered in time")
}

async fn write_ignoring_close<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> bool {
    stream.write_all(bytes).await.is_ok()
}

#[tokio::test]
async fn a_header_block_over_64_kib_refuses_the_stream_and_the_connection_keeps_serving() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut conn = h2_connection(&apid, &pki).await;

        // One 66 KiB header value: HEADERS + CONTINUATION frames of at most 16 KiB.
        let big = vec![b'a'; 66 * 1024];
        let block = request_block(VERSION_PATH, &[("x-flood", &big)]);
        let mut bytes = Vec::new();
        let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i + 1 == chunks.len() {
                END_HEADERS
            } else {
                0
            };
            bytes.extend(frame(kind, flags, 1, chunk));
        }
        bytes.extend(empty_message(1));
        conn.write_all(&bytes)
            .await
            .expect("send oversized headers");
        // h2 answers HTTP 431 (a HEADERS frame ending the stream) and resets the stream;
        // the connection itself stays up.
        let (mut answered_431, mut reset) = (false, false);
        let ended = read_until(&mut conn, |f| {
            assert_ne!(
                f.kind, GOAWAY,
                "the connection must survive an oversized block"
            );
            if f.stream == 1 && f.kind == HEADERS {
                answered_431 = f.flags & END_STREAM != 0;
            }
            reset |= f.stream == 1 && f.kind == RST_STREAM;
            reset
        })
        .await;
        assert!(!ended && answered_431 && reset, "stream 1 must be refused");

        // The same connection serves the next call.
        let mut next = frame(HEADERS, END_HEADERS, 3, &request_block(VERSION_PATH, &[]));
        next.extend(empty_message(3));
        conn.write_all(&next).await.expect("send next call");
        let ended = read_until(&mut conn, |f| f.stream == 3 && f.kind == HEADERS).await;
        assert!(!ended, "stream 3 must be answered on the same connection");
        drop(conn);

        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

/// The gRPC status of a response, from its headers (trailers-only) or from its trailers;
/// tonic decodes the percent-encoded `grpc-message`.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> tonic::Status {
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.expect("response body");
    }
    let trailers = body
        .trailers()
        .await
        .expect("response trailers")
        .expect("a gRPC response ends with trailers");
    tonic::Status::from_header_map(&trailers).expect("the trailers carry grpc-status")
}

#[tokio::test]
async fn a_message_declaring_4_gib_split_across_frames_is_refused_at_its_header() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let connector = tls_connector(pki.ca_pem(), Some(&pki.client(&["os:admin"])));
        let tls = support::tls_connect(apid.addr, &connector)
            .await
            .expect("mTLS connect");
        let (client, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("h2 ready");

        let call = |path: &str| {
            http::Request::post(format!("https://127.0.0.1{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request")
        };
        let (response, mut body) = client
            .send_request(call("/machine.MachineService/ApplyConfiguration"), false)
            .expect("send headers");
        // The 5-byte message header in two DATA frames: the flag and three length bytes, a
        // pause so apid reads them alone, then the last length byte. The length is u32::MAX,
        // and no payload follows: apid must answer from the header, not wait for 4 GiB.
        body.send_data(Bytes::from_static(&[0, 0xff, 0xff, 0xff]), false)
            .expect("first part of the header");
        tokio::time::sleep(Duration::from_millis(50)).await;
        body.send_data(Bytes::from_static(&[0xff]), false)
            .expect("last byte of the header");
        let response = response.await.expect("apid answers");
        let status = grpc_status(response).await;
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            format!(
                "request message of {} bytes exceeds the limit of {} bytes",
                u32::MAX,
                32 * 1024 * 1024
            )
        );
        drop(body);

        // The same connection serves the next call.
        let mut client = client.ready().await.expect("connection still usable");
        let (response, mut body) = client
            .send_request(call(VERSION_PATH), false)
            .expect("send the next call");
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("empty message");
        let status = grpc_status(response.await.expect("Version answered")).await;
        assert_eq!(
            status.code(),
            tonic::Code::Ok,
            "Version on the same connection: {status:?}"
        );

        still_serves(&apid, &pki).await;
        backend.stop().await;
        let records = apid.stop().await;
        assert!(
            records.iter().any(
                |r| r["method"] == "/machine.MachineService/ApplyConfiguration"
                    && r["code"] == "RESOURCE_EXHAUSTED"
            ),
            "the refusal is audited: {records:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_continuation_flood_ends_the_connection_with_enhance_your_calm() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start(&pki).await;
        let backend = apid.backend().await;
        let mut conn = h2_connection(&apid, &pki).await;

        // A header block that never ends: HEADERS without END_HEADERS, then empty
        // CONTINUATION frames. Stop writing as soon as apid hangs up.
        let block = request_block(VERSION_PATH, &[]);
        let mut sent = 0;
        let mut open = write_ignoring_close(&mut conn, &frame(HEADERS, 0, 1, &block)).await;
        let batch: Vec<u8> = (0..100)
            .flat_map(|_| frame(CONTINUATION, 0, 1, &[]))
            .collect();
        while open && sent < 100_000 {
            open = write_ignoring_close(&mut conn, &batch).await;
            sent += 100;
            if sent % 1000 == 0 {
                // Give apid's GOAWAY a chance to arrive before writing more.
                tokio::task::yield_now().await;
            }
        }
        let mut goaway = None;
        let ended = read_until(&mut conn, |f| {
            if f.kind == GOAWAY {
                goaway = Some(f.error_code());
            }
            false
        })
        .await;
        assert!(ended, "apid must close the connection");
        assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "sent {sent} frames");

        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn streams_beyond_the_concurrency_limit_are_refused_and_open_ones_continue() {
    within_deadline(async {
        let pki = Pki::new();
        // Per-certificate limits (rate, in-flight) are tested elsewhere; raise them so that
        // only the per-connection stream limit is in play here.
        let apid = Apid::start_with(&pki, |config| {
            config.limits.requests_per_second = 100_000;
            config.limits.burst = 100_000;
            config.limits.max_in_flight = 100_000;
        })
        .await;
        let backend = apid.backend().await;
        let mut conn = h2_connection(&apid, &pki).await;

        // 300 calls whose request bodies never end: they stay open.
        let limit = basalt_config::limits::DEFAULT_MAX_STREAMS_PER_CONNECTION as usize;
        let total = limit + 44;
        let block = request_block(VERSION_PATH, &[]);
        let bytes: Vec<u8> = (0..total)
            .flat_map(|i| frame(HEADERS, END_HEADERS, 2 * i as u32 + 1, &block))
            .collect();
        conn.write_all(&bytes).await.expect("open streams");
        let mut refused = std::collections::BTreeSet::new();
        let ended = read_until(&mut conn, |f| {
            assert_ne!(f.kind, GOAWAY, "the connection must survive");
            if f.kind == RST_STREAM && f.error_code() == REFUSED_STREAM {
                refused.insert(f.stream);
            }
            refused.len() == total - limit
        })
        .await;
        assert!(!ended);
        // The refused ones are the last opened.
        let first_refused = 2 * limit as u32 + 1;
        assert!(refused.iter().all(|&s| s >= first_refused), "{refused:?}");

        // An open stream still completes: end stream 1's body and get its response.
        conn.write_all(&empty_message(1))
            .await
            .expect("end stream 1");
        let ended = read_until(&mut conn, |f| f.stream == 1 && f.kind == HEADERS).await;
        assert!(!ended, "stream 1 must be answered");

        still_serves(&apid, &pki).await;
        drop(conn);
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

#[tokio::test]
async fn rapid_reset_ends_the_connection_and_others_are_unaffected() {
    within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.limits.requests_per_second = 100_000;
            config.limits.burst = 100_000;
            config.limits.max_in_flight = 100_000;
        })
        .await;
        let backend = apid.backend().await;
        // Another client, connected before the attack, must keep working during and after.
        let mut bystander = apid.machine(&pki, &pki.client(&["os:reader"]));
        version(&mut bystander).await.expect("bystander before");

        let mut conn = h2_connection(&apid, &pki).await;
        let block = request_block(VERSION_PATH, &[]);
        let cancel = CANCEL.to_be_bytes();
        let mut stream_id = 1u32;
        let mut open = true;
        while open && stream_id < 2 * 20_000 {
            let mut batch = Vec::new();
            for _ in 0..100 {
                batch.extend(frame(HEADERS, END_HEADERS, stream_id, &block));
                batch.extend(frame(RST_STREAM, 0, stream_id, &cancel));
                stream_id += 2;
            }
            open = write_ignoring_close(&mut conn, &batch).await;
        }
        let mut goaway = None;
        let ended = read_until(&mut conn, |f| {
            if f.kind == GOAWAY {
                goaway = Some(f.error_code());
            }
            false
        })
        .await;
        assert!(ended, "apid must close the connection");
        assert_eq!(
            goaway,
            Some(ENHANCE_YOUR_CALM),
            "opened and reset {} streams",
            stream_id / 2
        );

        version(&mut bystander).await.expect("bystander after");
        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}

// === load ===

/// A TCP connection to `addr` from `source` (a loopback address), so that per-address limits
/// see many peers.
async fn connect_from(addr: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Polls `check` every 20 ms until it is true, for at most `limit`.
async fn eventually_within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 127.0.0.(2 + i % spread): spreads connections over `spread` loopback addresses.
fn loopback(i: usize, spread: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % spread) as u8))
}

#[tokio::test]
async fn more_silent_handshakes_than_the_accept_loop_takes_all_time_out_and_clients_are_served() {
    // Longer than the default test deadline: 1,100 sockets time out in two waves.
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.handshake_timeout = Duration::from_secs(2);
        })
        .await;
        let backend = apid.backend().await;
        // 1,100 > 1,024 sockets that never send a byte, spread over 20 source addresses
        // (55 each, under any per-address limit).
        let silent_count = 1100;
        let mut silent = Vec::with_capacity(silent_count);
        for i in 0..silent_count {
            silent.push(
                connect_from(apid.addr, loopback(i, 20))
                    .await
                    .expect("connect silent socket"),
            );
        }
        // A real client behind all of them gets served once slots free up (one timeout).
        let started = tokio::time::Instant::now();
        still_serves(&apid, &pki).await;
        let waited = started.elapsed();
        // Every silent socket ends at the handshake timeout, including those that waited in
        // the backlog; none is left hanging.
        eventually_within(
            Duration::from_secs(30),
            "every silent socket timed out",
            || apid.failed(HandshakeFailure::Timeout) == silent_count as u64,
        )
        .await;
        let total_failed = apid.stats.snapshot().total_failed();
        assert_eq!(total_failed, silent_count as u64);
        eprintln!("admin call served after {waited:?} behind {silent_count} silent sockets");
        drop(silent);
        still_serves(&apid, &pki).await;
        backend.stop().await;
        apid.stop().await;
    })
    .await
    .expect("test exceeded its deadline");
}

/// The real apid binary as a child process (so its RSS is its own), killed when dropped.
struct ApidProcess {
    child: std::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl ApidProcess {
    /// apid with its backend, as a node runs it.
    async fn start(pki: &Pki) -> (Self, support::Backend) {
        let dir = support::short_tempdir();
        let backend = support::Backend::start(&dir.path().join("machined.sock")).await;
        (Self::spawn(pki, dir, None, "").await, backend)
    }

    /// apid alone (machined's socket is `<dir>/machined.sock`), with `extra_config` appended to
    /// its apid.yaml and, if given, at most `max_open_files` descriptors (`ulimit -n`). Its
    /// warnings go to [`Self::log`].
    async fn spawn(
        pki: &Pki,
        dir: tempfile::TempDir,
        max_open_files: Option<u32>,
        extra_config: &str,
    ) -> Self {
        let d = dir.path();
        std::fs::write(d.join("server.crt"), &pki.server.cert).expect("write cert");
        std::fs::write(d.join("server.key"), &pki.server.key).expect("write key");
        std::fs::write(d.join("ca.pem"), pki.ca_pem()).expect("write ca");
        // Learn a free port, then let apid bind it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = d.join("apid.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 tls: {{cert: {d}/server.crt, key: {d}/server.key, ca: {d}/ca.pem}}\n\
                 machinedSocket: {d}/machined.sock\n\
                 audit: {{path: {d}/audit.log}}\n\
                 {extra_config}",
                d = d.display()
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(d.join("apid.log")).expect("create apid.log");
        // The shell sets the limit and then becomes apid (same pid), so the limit is apid's.
        let limit = max_open_files.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"[ "$1" = unlimited ] || ulimit -n "$1" || exit 97; shift; exec "$@""#)
            .arg("sh")
            .arg(limit)
            .arg(env!("CARGO_BIN_EXE_apid"))
            .arg("--config")
            .arg(&config)
            .env("BASALT_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn apid");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let process = Self { child, addr, dir };
        // Readiness: the port accepts connections (bounded poll).
        for _ in 0..500 {
            if TcpStream::connect(addr).await.is_ok() {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("apid did not start listening on {addr}");
    }

    /// What apid has logged so far (warnings and errors).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("apid.log")).expect("read apid.log")
    }

    /// VmRSS of the apid process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<apid>/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS line")
    }

    async fn version(&self, pki: &Pki) -> Result<(), tonic::Status> {
        let mut client = machine_client(support::channel(
            self.addr,
            pki.ca_pem(),
            Some(&pki.client(&["os:admin"])),
        ));
        version(&mut client).await.map(drop)
    }
}

impl Drop for ApidProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An idle HTTP/2 connection over mTLS from `source`: handshake done, prefaces exchanged.
async fn idle_connection(
    addr: SocketAddr,
    source: IpAddr,
    connector: tokio_rustls::TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = connect_from(addr, source).await.expect("connect");
    let server_name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(server_name, tcp).await.expect("mTLS");
    exchange_prefaces(&mut tls).await;
    tls
}

/// Most apid may grow (VmRSS) while holding 1,000 idle connections: 64 KiB each.
const IDLE_RSS_BUDGET_KIB: u64 = 1000 * 64;

#[tokio::test]
async fn a_thousand_idle_connections_keep_apid_memory_bounded_and_new_clients_served() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let pki = Pki::new();
        let (apid, backend) = ApidProcess::start(&pki).await;
        apid.version(&pki).await.expect("first call");
        let before = apid.rss_kib();

        // 1,000 connections from 20 loopback addresses (50 each, under the default
        // per-address limit), opened 50 at a time.
        let connector = tls_connector(pki.ca_pem(), Some(&pki.client(&["os:reader"])));
        let mut idle = Vec::with_capacity(1000);
        for wave in 0..20 {
            let mut opening = tokio::task::JoinSet::new();
            for i in 0..50 {
                let connector = connector.clone();
                let source = loopback(wave * 50 + i, 20);
                opening.spawn(idle_connection(apid.addr, source, connector));
            }
            while let Some(conn) = opening.join_next().await {
                idle.push(conn.expect("open idle connection"));
            }
        }
        assert_eq!(idle.len(), 1000);
        let during = apid.rss_kib();
        apid.version(&pki)
            .await
            .expect("a new client is served with 1,000 idle connections open");
        let growth = during.saturating_sub(before);
        eprintln!(
            "apid VmRSS: {before} KiB before, {during} KiB with 1,000 idle connections \
             (+{growth} KiB, {} KiB each)",
            growth / 1000
        );
        assert!(
            growth < IDLE_RSS_BUDGET_KIB,
            "apid grew by {growth} KiB for 1,000 idle connections"
        );
        drop(idle);
        apid.version(&pki).await.expect("served after they close");
        drop(apid);
        backend.stop().await;
    })
    .await
    .expect("test exceeded its deadline");
}

/// Descriptors apid may use in the exhaustion test: a few dozen above what it needs to start.
const SCARCE_DESCRIPTORS: u32 = 64;

#[tokio::test]
async fn out_of_descriptors_apid_backs_off_reports_the_cause_and_recovers() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let pki = Pki::new();
        let dir = support::short_tempdir();
        let socket = dir.path().join("machined.sock");
        // Silent sockets must keep their descriptors for the whole test.
        let apid = ApidProcess::spawn(
            &pki,
            dir,
            Some(SCARCE_DESCRIPTORS),
            "handshakeTimeout: 60s\n",
        )
        .await;
        let admin = pki.client(&["os:admin"]);
        let mut held = machine_client(support::channel(apid.addr, pki.ca_pem(), Some(&admin)));
        // This opens the client's connection; machined is not running yet.
        let status = version(&mut held).await.expect_err("no machined yet");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

        // More silent TCP connections than apid has descriptors for: the rest wait in the
        // kernel's backlog, and every accept apid tries fails with EMFILE.
        let mut silent = Vec::new();
        for _ in 0..2 * SCARCE_DESCRIPTORS {
            silent.push(TcpStream::connect(apid.addr).await.expect("connect"));
        }
        eventually_within(Duration::from_secs(10), "accept fails with EMFILE", || {
            apid.log().contains("Too many open files")
        })
        .await;

        // A call on the held connection that needs a new connection to machined gets the
        // cause, not a hang.
        let backend = support::Backend::start(&socket).await;
        let status = version(&mut held)
            .await
            .expect_err("no descriptor for machined");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("machined is not reachable at")
                && status.message().contains("Too many open files"),
            "{status:?}"
        );

        // The accept loop backs off between failures instead of spinning: about ten a second.
        let failures = || apid.log().matches("TCP accept failed").count();
        let before = failures();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let during = failures() - before;
        assert!(
            during <= 30,
            "{during} failed accepts logged in one second: the loop spins"
        );

        // Descriptors freed: the held connection reaches machined, and new clients are served.
        drop(silent);
        let mut recovered = false;
        for _ in 0..100 {
            if version(&mut held).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(recovered, "held connection never reached machined again");
        apid.version(&pki).await.expect("a new client is served");
        drop(apid);
        backend.stop().await;
    })
    .await
    .expect("test exceeded its deadline");
}
