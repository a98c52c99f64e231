//! Scraping a daemon's Prometheus endpoint as a collector would: `GET /metrics` over plain
//! HTTP/1.1, one connection per scrape.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`scrape_until`] waits for a sample to get there.
pub const SCRAPE_PATIENCE: Duration = Duration::from_secs(10);

/// One scrape's body; `None` while nothing listens yet (the endpoint comes up with its daemon).
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send the scrape request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the scrape response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    Some(body.to_owned())
}

/// The value of the sample written exactly as `series` (name plus labels), if present.
pub fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("numeric sample"))
}

/// Scrapes until `series` has at least `min`, for at most [`SCRAPE_PATIENCE`] (a call is
/// counted when its response has ended, just after the client sees it).
pub async fn scrape_until(addr: SocketAddr, series: &str, min: f64) -> String {
    let deadline = tokio::time::Instant::now() + SCRAPE_PATIENCE;
    loop {
        if let Some(body) = scrape(addr).await
            && value(&body, series).is_some_and(|v| v >= min)
        {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {min} at {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
