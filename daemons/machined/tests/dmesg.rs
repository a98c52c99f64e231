//! Dmesg over the real socket. Whether /dev/kmsg can be read depends on who runs the tests
//! (root, an unprivileged user, a container without it), so each test accepts either records in
//! Talos's format or FailedPrecondition saying why the log cannot be read.

mod support;

use std::time::Duration;

use basalt_api::machine::DmesgRequest;
use support::{Machined, with_roles, within_deadline};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Code, Status, Streaming};

const FACILITIES: &[&str] = &[
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const PRIORITIES: &[&str] = &[
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// Checks `status` is the refusal of a host where /dev/kmsg cannot be read.
fn assert_cannot_read_the_log(status: &Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("cannot read the kernel log: /dev/kmsg: "),
        "{}",
        status.message()
    );
}

/// `<facility>: <priority, width 7>: [<RFC 3339>]: <message>\n`.
fn assert_talos_format(line: &str) {
    let line = line
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline: {line:?}"));
    let (facility, rest) = line.split_once(": ").expect("facility");
    assert!(FACILITIES.contains(&facility), "{line:?}");
    let (priority, rest) = rest.split_at(7);
    assert!(PRIORITIES.contains(&priority.trim_start()), "{line:?}");
    let rest = rest.strip_prefix(": [").expect("timestamp");
    let (time, _message) = rest.split_once("]: ").expect("message");
    let time = OffsetDateTime::parse(time, &Rfc3339).expect("RFC 3339 time");
    assert!(time.year() >= 1970, "{line:?}");
}

async fn open(
    machined: &Machined,
    request: DmesgRequest,
) -> Result<Streaming<basalt_api::common::Data>, Status> {
    Ok(machined
        .machine()
        .await
        .dmesg(with_roles(request, &["os:reader"]))
        .await?
        .into_inner())
}

#[tokio::test]
async fn dmesg_returns_the_kernel_log_in_talos_format_or_says_why_it_cannot() {
    within_deadline(async {
        let machined = Machined::start().await;
        match open(&machined, DmesgRequest::default()).await {
            Err(status) => assert_cannot_read_the_log(&status),
            Ok(mut stream) => {
                let mut records = 0;
                while let Some(data) = stream.message().await.expect("record") {
                    if let Some(metadata) = &data.metadata {
                        panic!("unparsable record: {}", metadata.error);
                    }
                    assert_talos_format(std::str::from_utf8(&data.bytes).expect("UTF-8"));
                    records += 1;
                }
                // The stream ended by itself (no follow) after the whole buffer.
                assert!(records > 0, "a readable kernel log is never empty");
            }
        }
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dmesg_tail_without_follow_is_empty() {
    within_deadline(async {
        let machined = Machined::start().await;
        let request = DmesgRequest {
            follow: false,
            tail: true,
        };
        match open(&machined, request).await {
            Err(status) => assert_cannot_read_the_log(&status),
            Ok(mut stream) => {
                // Only records logged in the instant since the open could arrive.
                let mut records = 0;
                while stream.message().await.expect("record").is_some() {
                    records += 1;
                }
                assert!(records < 5, "{records} records after seeking to the end");
            }
        }
        machined.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dmesg_follow_waits_for_new_records_and_stops_when_the_client_leaves() {
    within_deadline(async {
        let machined = Machined::start().await;
        let request = DmesgRequest {
            follow: true,
            tail: true,
        };
        match open(&machined, request).await {
            Err(status) => assert_cannot_read_the_log(&status),
            Ok(mut stream) => {
                // Following from the end: the stream stays open (no end, no error) while the
                // kernel is quiet.
                let waited =
                    tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
                if let Ok(next) = waited {
                    let data = next.expect("no error").expect("no end of stream");
                    assert_talos_format(std::str::from_utf8(&data.bytes).expect("UTF-8"));
                }
                drop(stream);
            }
        }
        let started = std::time::Instant::now();
        machined.stop().await;
        assert!(
            started.elapsed() < machined::DRAIN_TIMEOUT,
            "shutdown waited for an abandoned follower"
        );
    })
    .await;
}
