//! Memory stays bounded while a client follows the logs of a service that writes fast.
//!
//! Alone in its own test binary on purpose: it measures this process's RSS (machined runs
//! in-process), which other tests running in parallel threads would disturb (a panicking
//! test that symbolizes its backtrace alone adds tens of MiB).

mod support;

use std::time::{Duration, Instant};

use basalt_api::machine::{LogsRequest, machine_service_client::MachineServiceClient};
use machined::ServicesConfig;
use support::{Machined, with_roles, within_deadline};
use tonic::transport::Channel;

fn logs_request(id: &str, tail_lines: i32, follow: bool) -> tonic::Request<LogsRequest> {
    with_roles(
        LogsRequest {
            namespace: "system".to_owned(),
            id: id.to_owned(),
            driver: 0,
            follow,
            tail_lines,
        },
        &["os:admin"],
    )
}

/// Everything a non-follow Logs call returns, as text.
async fn read_logs(client: &mut MachineServiceClient<Channel>, id: &str, tail: i32) -> String {
    let mut stream = client
        .logs(logs_request(id, tail, false))
        .await
        .expect("Logs")
        .into_inner();
    let mut text = Vec::new();
    while let Some(data) = stream.message().await.expect("log chunk") {
        text.extend_from_slice(&data.bytes);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// VmRSS of this process (machined runs in-process), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

#[tokio::test]
async fn memory_stays_bounded_while_a_slow_client_follows_a_fast_writer() {
    within_deadline(async {
        const WRITTEN: u64 = 50_000_000;
        // Generous: 50 MB passes through; capture is bounded at ~1 MiB ring + 8 MiB of
        // follower backlog + transport buffers.
        const BOUND: u64 = 40 * 1024 * 1024;
        let baseline = rss();
        let services = basalt_config::service::services_from_yaml(&format!(
            "- name: flood\n  command: sh\n  restart: never\n  \
             args: ['-c', 'yes 0123456789012345678901234567890123456789012345678901234567890123456789 \
             | head -c {WRITTEN}; echo; echo done-writing; exec sleep 30']\n"
        ))
        .expect("valid services");
        let machined = Machined::start_with(|config, dir| {
            config.services = ServicesConfig {
                services,
                log_dir: Some(dir.join("logs")),
                stop_grace: Duration::from_secs(2),
                ..ServicesConfig::default()
            };
        })
        .await;
        let mut client = machined.machine().await;

        // A follower that reads one chunk every 20 ms (at most ~3 MB/s).
        let mut follow = client
            .logs(logs_request("flood", 0, true))
            .await
            .expect("Logs follow")
            .into_inner();
        let reader = tokio::spawn(async move {
            let mut notices = 0;
            while let Ok(Some(data)) = follow.message().await {
                if data.bytes.starts_with(b"[machined: skipped ") {
                    notices += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            notices
        });

        let mut peak = rss();
        let deadline = Instant::now() + Duration::from_secs(25);
        while !read_logs(&mut client, "flood", 1).await.contains("done-writing") {
            peak = peak.max(rss());
            assert!(Instant::now() < deadline, "the writer did not finish in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak = peak.max(rss());
        assert!(
            peak.saturating_sub(baseline) < BOUND,
            "RSS grew by {} MiB while {} MB passed through",
            peak.saturating_sub(baseline) / (1024 * 1024),
            WRITTEN / 1_000_000
        );

        // The file was rotated: at most the limit, plus one old generation.
        let logs = machined.dir.path().join("logs");
        let current = std::fs::metadata(logs.join("flood.log")).expect("log").len();
        let old = std::fs::metadata(logs.join("flood.log.1")).expect("rotated log").len();
        assert!(current <= 10 * 1024 * 1024 && old <= 10 * 1024 * 1024);

        machined.stop().await;
        let notices = reader.await.expect("reader");
        assert!(notices > 0, "the slow follower was never told it skipped output");
    })
    .await;
}
