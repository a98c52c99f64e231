//! The peer signer: `cfssl serve` (CloudFlare's CFSSL, Debian package `golang-cfssl`) with the
//! benchmark's CA, over TLS 1.3 like trustd, and a minimal HTTP/1.1 keep-alive client for its
//! `POST /api/v1/cfssl/sign` endpoint.
//!
//! cfssl has no Ed25519 support, so a comparison runs both signers with an ECDSA P-256 CA
//! (`--ca-algorithm ecdsa-p256`). cfssl authenticates nobody here (no auth key configured) while
//! trustd checks the join token: that only favours cfssl.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// How long cfssl gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest response accepted (a certificate in JSON is about 2 KiB).
const MAX_RESPONSE: usize = 1024 * 1024;
/// The sign endpoint.
const SIGN_PATH: &str = "/api/v1/cfssl/sign";

/// A running `cfssl serve`.
#[derive(Debug)]
pub(crate) struct Cfssl {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
}

impl Cfssl {
    /// Starts `binary serve` on a free loopback port with the CA and TLS files in `dir`
    /// (`ca.crt`, `ca.key`, `server.crt`, `server.key`) and waits until it accepts connections.
    pub(crate) fn start(binary: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new(binary)
            .arg("serve")
            .args(["-address", "127.0.0.1", "-port", &port.to_string()])
            .arg(format!("-ca={}", dir.join("ca.crt").display()))
            .arg(format!("-ca-key={}", dir.join("ca.key").display()))
            .arg(format!("-tls-cert={}", dir.join("server.crt").display()))
            .arg(format!("-tls-key={}", dir.join("server.key").display()))
            // Warnings only: at info it logs a line per certificate, like trustd at info.
            .arg("-loglevel=2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("start {} (apt-get install golang-cfssl)", binary.display())
            })?;
        let pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(Self { child, pid, addr });
            }
            if let Some(status) = child.try_wait().context("wait for cfssl")? {
                bail!("cfssl exited with {status} before listening");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("cfssl did not listen on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills cfssl (it has no state to save) and reaps it.
    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("kill cfssl")?;
        self.child.wait().context("wait for cfssl")?;
        Ok(())
    }
}

impl Drop for Cfssl {
    fn drop(&mut self) {
        // Never leave cfssl running, even when the benchmark fails half-way.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free loopback port (bound and released; cfssl takes a port number, not a listener).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr().context("local address")?.port())
}

/// One persistent HTTP/1.1 connection to cfssl (over TLS in the benchmark; any byte stream in
/// the tests).
#[derive(Debug)]
pub(crate) struct HttpConn<S> {
    stream: S,
    buf: Vec<u8>,
}

#[derive(Deserialize)]
struct SignResponse {
    success: bool,
    #[serde(default)]
    result: Option<SignResult>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct SignResult {
    #[serde(default)]
    certificate: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpConn<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Asks cfssl to sign `csr_pem`; succeeds when it answered with a certificate.
    pub(crate) async fn sign(&mut self, csr_pem: &[u8]) -> anyhow::Result<()> {
        let csr = std::str::from_utf8(csr_pem).context("the CSR is not PEM text")?;
        let body = serde_json::to_vec(&serde_json::json!({ "certificate_request": csr }))?;
        let head = format!(
            "POST {SIGN_PATH} HTTP/1.1\r\nHost: signbench\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        self.stream.write_all(&request).await.context("send")?;
        let (status, body) = self.response().await?;
        let answer: SignResponse = serde_json::from_slice(&body)
            .with_context(|| format!("HTTP {status}: the answer is not cfssl's JSON"))?;
        let certificate = answer.result.map(|r| r.certificate).unwrap_or_default();
        ensure!(
            status == 200 && answer.success && certificate.contains("BEGIN CERTIFICATE"),
            "HTTP {status}, success {}, errors {:?}",
            answer.success,
            answer.errors
        );
        Ok(())
    }

    /// Reads one response: status code and body (Content-Length or chunked).
    async fn response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .context("response head is not text")?
            .to_owned();
        self.buf.drain(..head_end + 4);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .context("no status code in the response")?;
        let header = |name: &str| {
            head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        if let Some(length) = header("content-length") {
            let length: usize = length.parse().context("bad Content-Length")?;
            ensure!(
                length <= MAX_RESPONSE,
                "response of {length} bytes is too large"
            );
            while self.buf.len() < length {
                self.fill().await?;
            }
            let body = self.buf.drain(..length).collect();
            return Ok((status, body));
        }
        ensure!(
            header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")),
            "response has neither Content-Length nor chunked encoding"
        );
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(&self.buf, b"\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end]).context("chunk size")?;
            let size_hex = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).context("bad chunk size")?;
            self.buf.drain(..line_end + 2);
            ensure!(body.len() + size <= MAX_RESPONSE, "response too large");
            // The chunk, then its CRLF (after the last, empty chunk: the final CRLF).
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok((status, body));
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        ensure!(self.buf.len() <= MAX_RESPONSE, "response too large");
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.context("read")?;
        ensure!(n > 0, "cfssl closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSR: &[u8] =
        b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
    const SIGNED: &str = r#"{"success":true,"result":{"certificate":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},"errors":[],"messages":[]}"#;

    /// Runs one `sign` against a fake server that reads the request and answers `response`
    /// (possibly in pieces); returns the result and the request the server saw.
    async fn sign_against(response: Vec<Vec<u8>>) -> (anyhow::Result<()>, String) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            // Head, then as many body bytes as Content-Length says.
            loop {
                let n = server.read(&mut chunk).await.expect("read request");
                request.extend_from_slice(&chunk[..n]);
                if let Some(at) = find(&request, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..at]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.parse().ok())
                        .expect("content length");
                    if request.len() >= at + 4 + length {
                        break;
                    }
                }
            }
            for piece in response {
                server.write_all(&piece).await.expect("write response");
                server.flush().await.expect("flush");
            }
            String::from_utf8(request).expect("utf-8 request")
        });
        let mut conn = HttpConn::new(client);
        let result = conn.sign(CSR).await;
        drop(conn);
        (result, serve.await.expect("server task"))
    }

    fn with_length(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn a_signed_certificate_with_content_length_is_success() {
        let (result, request) = sign_against(vec![with_length("200 OK", SIGNED)]).await;
        assert!(result.is_ok(), "{result:?}");
        assert!(request.starts_with("POST /api/v1/cfssl/sign HTTP/1.1\r\n"));
        assert!(request.contains(r#""certificate_request":"-----BEGIN CERTIFICATE REQUEST-----"#));
    }

    #[tokio::test]
    async fn a_chunked_answer_split_across_reads_is_reassembled() {
        let (a, b) = SIGNED.split_at(40);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .into_bytes();
        let pieces = chunked.chunks(7).map(<[u8]>::to_vec).collect();
        let (result, _) = sign_against(pieces).await;
        assert!(result.is_ok(), "{result:?}");
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_naming_it() {
        let body =
            r#"{"success":false,"result":null,"errors":[{"code":1002,"message":"bad CSR"}]}"#;
        let (result, _) = sign_against(vec![with_length("400 Bad Request", body)]).await;
        let err = format!("{:#}", result.expect_err("refused"));
        assert!(err.contains("HTTP 400") && err.contains("bad CSR"), "{err}");
    }

    #[tokio::test]
    async fn an_answer_that_is_not_json_or_is_cut_short_is_an_error() {
        let (result, _) = sign_against(vec![with_length("502 Bad Gateway", "<html>")]).await;
        assert!(format!("{:#}", result.expect_err("not json")).contains("HTTP 502"));
        let (result, _) = sign_against(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{".to_vec(),
        ])
        .await;
        assert!(format!("{:#}", result.expect_err("cut short")).contains("closed"));
        let (result, _) = sign_against(vec![b"HTTP/1.1 200 OK\r\n\r\n".to_vec()]).await;
        assert!(format!("{:#}", result.expect_err("no length")).contains("neither"));
    }

    #[test]
    fn find_locates_the_end_of_a_head() {
        assert_eq!(find(b"HTTP/1.1 200 OK\r\n\r\nbody", b"\r\n\r\n"), Some(15));
        assert_eq!(find(b"partial\r\n", b"\r\n\r\n"), None);
    }

    #[test]
    fn sign_responses_parse() {
        let ok: SignResponse = serde_json::from_str(
            r#"{"success":true,"result":{"certificate":"-----BEGIN CERTIFICATE-----"},"errors":[],"messages":[]}"#,
        )
        .expect("parse");
        assert!(ok.success);
        let failed: SignResponse = serde_json::from_str(
            r#"{"success":false,"result":null,"errors":[{"code":1000,"message":"bad"}]}"#,
        )
        .expect("parse");
        assert!(!failed.success && failed.result.is_none() && failed.errors.len() == 1);
    }
}
