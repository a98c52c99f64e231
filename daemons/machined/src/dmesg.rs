//! `Dmesg`: the kernel log, read from `/dev/kmsg`.
//!
//! Each `read(2)` of `/dev/kmsg` returns one record, `PRI,SEQ,MICROS,FLAGS;message\n` followed
//! by optional ` KEY=VALUE` dictionary lines. The device is opened with `O_NONBLOCK`
//! (through basalt-sys), so the end of the buffer is `EAGAIN`: without `follow` the stream ends
//! there; with `follow` the reader (on the blocking pool, like the file methods) waits in
//! `poll(2)` for the next record, waking every [`FOLLOW_POLL`] to stop once the client has gone
//! away. (tokio's `AsyncFd` would avoid the thread, but its constructors are `unsafe` or
//! deprecated since tokio 1.54, and machined forbids `unsafe`.) `EPIPE` means records were overwritten while we read;
//! reading simply goes on with the oldest one left (as Talos's reader does).
//!
//! Each record is one `common.Data` message formatted as Talos does:
//! `"<facility>: <priority, right-aligned in 7>: [<RFC 3339 time, nanoseconds>]: <message>\n"`,
//! where the time is the boot time (`btime` from `/proc/stat`) plus the record's microseconds
//! since boot, in UTC. Dictionary lines are left out (as `dmesg(1)` does). `tail` starts at the
//! end of the buffer (Talos: "only new messages", useful with `follow`). A record that cannot be
//! parsed becomes a message with `metadata.error`, as in Talos.
//!
//! Facility names follow `<syslog.h>`; Talos's reader names codes 11–18 `local0`–`local7`
//! (off by five), basalt uses the real names (`ftp`, `ntp`, …, `local0` = 16). The kernel's
//! own records are all `kern`.
//!
//! Opening fails without the right to read the log (unprivileged, `dmesg_restrict`, a
//! container without `/dev/kmsg`): the call answers FailedPrecondition saying why. A device that
//! reads as end of file (a container with `/dev/null` mounted over it) gives an empty log, and a
//! follow of it FailedPrecondition: `poll(2)` reports end of file as readable, so a follower
//! would spin.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::Path;

use basalt_api::common;
use basalt_api::machine::DmesgRequest;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Error;
use crate::files::{Sink, io_text, produce};
use crate::services::BoxStream;

/// The kernel log device.
pub(crate) const KMSG: &str = "/dev/kmsg";

/// Where the boot time (`btime`, Unix seconds) comes from.
const PROC_STAT: &str = "/proc/stat";

/// Read buffer: larger than any record (the kernel caps one at 8 KiB and fails a smaller read
/// with EINVAL).
const RECORD_BUFFER: usize = 16 * 1024;

/// How often a follower waiting for the next record checks whether its client is still there.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Opens the kernel log and streams it as the request asks.
pub(crate) fn dmesg(request: DmesgRequest) -> Result<BoxStream<common::Data>, Error> {
    stream(Path::new(KMSG), Path::new(PROC_STAT), request)
}

fn stream(
    kmsg: &Path,
    proc_stat: &Path,
    request: DmesgRequest,
) -> Result<BoxStream<common::Data>, Error> {
    let boot = boot_time(proc_stat)?;
    let mut file = basalt_sys::open_nonblocking(kmsg).map_err(|err| match err {
        basalt_sys::Error::Open { path, source } => Error::KernelLog {
            reason: format!("{}: {}", path.display(), io_text(&source)),
        },
        other => Error::KernelLog {
            reason: other.to_string(),
        },
    })?;
    if request.tail {
        file.seek(SeekFrom::End(0)).map_err(|source| Error::File {
            op: "seek to the end of",
            path: kmsg.to_owned(),
            source,
        })?;
    }
    Ok(produce(move |sink| pump(&file, boot, request.follow, sink)))
}

/// What one `read(2)` gave.
enum Read {
    /// A record to send.
    Record(common::Data),
    /// Nothing more for now (`EAGAIN`).
    Empty,
    /// End of file. `/dev/kmsg` never returns it, so the path is not the kernel log device
    /// (containers sometimes mount `/dev/null` over it); there is nothing to follow.
    End,
    /// Try again (`EPIPE`: records were overwritten; `EINTR`).
    Retry,
    /// A read error that ends the stream.
    Failed(io::Error),
}

fn read_one(file: &File, buf: &mut [u8], boot: i64) -> Read {
    let mut reader = file;
    match reader.read(buf) {
        Ok(0) => Read::End,
        Ok(n) => Read::Record(record_data(&buf[..n], boot)),
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock => Read::Empty,
            io::ErrorKind::BrokenPipe | io::ErrorKind::Interrupted => Read::Retry,
            _ => Read::Failed(err),
        },
    }
}

/// Sends records until the end of the buffer (without `follow`) or until the client goes away
/// (with it). Runs on the blocking pool.
fn pump(file: &File, boot: i64, follow: bool, sink: &Sink<common::Data>) {
    let mut buf = vec![0_u8; RECORD_BUFFER];
    loop {
        match read_one(file, &mut buf, boot) {
            Read::Record(data) => {
                if !sink.send(data) {
                    return;
                }
            }
            Read::Retry => {}
            Read::Failed(source) => return fail(sink, "read", source),
            Read::Empty | Read::End if !follow => return,
            // poll(2) reports end of file as readable, so waiting for more would spin.
            Read::End => {
                return sink.fail(
                    Error::KernelLog {
                        reason: format!(
                            "{KMSG}: end of file, which the kernel log device never returns \
                             (is something else mounted over it?); nothing to follow"
                        ),
                    }
                    .into(),
                );
            }
            Read::Empty => loop {
                if sink.is_closed() {
                    tracing::debug!("Dmesg follow stopped: the client went away");
                    return;
                }
                match basalt_sys::wait_readable(file, FOLLOW_POLL) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(err) => return fail(sink, "wait for", io::Error::other(err)),
                }
            },
        }
    }
}

fn fail(sink: &Sink<common::Data>, op: &'static str, source: io::Error) {
    sink.fail(
        Error::File {
            op,
            path: KMSG.into(),
            source,
        }
        .into(),
    );
}

/// One record as Talos sends it: the formatted line, or a `metadata.error` when it cannot be
/// parsed.
fn record_data(record: &[u8], boot: i64) -> common::Data {
    match parse(record).and_then(|record| record.format(boot)) {
        Ok(line) => common::Data {
            metadata: None,
            bytes: line.into_bytes(),
        },
        Err(reason) => common::Data {
            metadata: Some(common::Metadata {
                error: format!("parse a kernel log record: {reason}"),
                ..common::Metadata::default()
            }),
            bytes: Vec::new(),
        },
    }
}

/// A parsed `/dev/kmsg` record.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    facility: u32,
    priority: u32,
    micros: u64,
    message: String,
}

impl Record {
    /// `kern:    info: [2024-05-01T10:00:00.123456Z]: message\n`.
    fn format(&self, boot: i64) -> Result<String, String> {
        let nanos = i128::from(boot) * 1_000_000_000 + i128::from(self.micros) * 1_000;
        let time = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|err| err.to_string())?
            .format(&Rfc3339)
            .map_err(|err| err.to_string())?;
        Ok(format!(
            "{}: {:>7}: [{time}]: {}\n",
            facility_name(self.facility),
            PRIORITIES[self.priority as usize & 7],
            self.message
        ))
    }
}

/// Parses `PRI,SEQ,MICROS,FLAGS[,…];message\n[ KEY=VALUE\n]*`.
fn parse(record: &[u8]) -> Result<Record, String> {
    let semicolon = record
        .iter()
        .position(|b| *b == b';')
        .ok_or("no ';' after the prefix")?;
    let prefix = std::str::from_utf8(&record[..semicolon]).map_err(|_| "prefix is not UTF-8")?;
    let mut fields = prefix.split(',');
    let mut number = |what: &str| -> Result<u64, String> {
        fields
            .next()
            .ok_or_else(|| format!("no {what} in {prefix:?}"))?
            .parse::<u64>()
            .map_err(|_| format!("bad {what} in {prefix:?}"))
    };
    let syslog = number("priority")?;
    let _sequence = number("sequence number")?;
    let micros = number("timestamp")?;
    let text = &record[semicolon + 1..];
    let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(Record {
        facility: u32::try_from(syslog >> 3).map_err(|_| "facility out of range")?,
        priority: (syslog & 7) as u32,
        micros,
        message: String::from_utf8_lossy(line).into_owned(),
    })
}

const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The `<syslog.h>` name of a facility code; unknown codes print as numbers.
fn facility_name(code: u32) -> String {
    const NAMES: [&str; 24] = [
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
    NAMES
        .get(code as usize)
        .map_or_else(|| code.to_string(), |name| (*name).to_owned())
}

/// `btime` from `/proc/stat`: when the machine booted, in Unix seconds.
fn boot_time(proc_stat: &Path) -> Result<i64, Error> {
    let text = std::fs::read_to_string(proc_stat).map_err(|source| Error::ReadProc {
        path: proc_stat.to_owned(),
        source,
    })?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| Error::ParseProc {
            path: proc_stat.to_owned(),
            reason: "no btime line".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_formatted_as_talos_does() {
        let record = parse(b"6,339,5140900,-;NET: Registered protocol family 10\n").expect("parse");
        assert_eq!(
            record,
            Record {
                facility: 0,
                priority: 6,
                micros: 5_140_900,
                message: "NET: Registered protocol family 10".to_owned(),
            }
        );
        // Boot at 2024-05-01T10:00:00Z.
        assert_eq!(
            record.format(1_714_557_600).expect("format"),
            "kern:    info: [2024-05-01T10:00:05.1409Z]: NET: Registered protocol family 10\n"
        );
    }

    #[test]
    fn dictionary_lines_are_dropped_and_whole_seconds_have_no_fraction() {
        let record = parse(
            b"7,160,3000000,-;pci_root PNP0A03:00: host bridge window\n SUBSYSTEM=acpi\n DEVICE=+acpi:PNP0A03:00\n",
        )
        .expect("parse");
        assert_eq!(
            record.format(0).expect("format"),
            "kern:   debug: [1970-01-01T00:00:03Z]: pci_root PNP0A03:00: host bridge window\n"
        );
    }

    #[test]
    fn facility_and_priority_come_from_the_syslog_prefix() {
        // 30 = daemon (3) << 3 | info (6); 12 = user (1) << 3 | warning (4).
        let record = parse(b"30,1,0,-;started\n").expect("parse");
        assert_eq!((record.facility, record.priority), (3, 6));
        assert!(
            record
                .format(0)
                .expect("format")
                .starts_with("daemon:    info: ")
        );
        let record = parse(b"12,2,0,c;hello").expect("parse");
        assert!(
            record
                .format(0)
                .expect("format")
                .starts_with("user: warning: ")
        );
        assert_eq!(facility_name(16), "local0");
        assert_eq!(facility_name(99), "99");
    }

    #[test]
    fn a_malformed_record_becomes_a_metadata_error() {
        for bad in [&b"no prefix at all"[..], b"x,1,2,-;msg", b"6,1;msg"] {
            let data = record_data(bad, 0);
            assert!(data.bytes.is_empty());
            let error = data.metadata.expect("metadata").error;
            assert!(error.starts_with("parse a kernel log record: "), "{error}");
        }
    }

    #[test]
    fn boot_time_comes_from_btime() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stat = dir.path().join("stat");
        std::fs::write(&stat, "cpu  1 2 3\nbtime 1714557600\nprocesses 5\n").expect("write");
        assert_eq!(boot_time(&stat).expect("btime"), 1_714_557_600);
        std::fs::write(&stat, "cpu  1 2 3\n").expect("write");
        assert!(boot_time(&stat).is_err());
        assert!(boot_time(Path::new("/proc/stat")).expect("real btime") > 0);
    }

    #[tokio::test]
    async fn a_device_at_end_of_file_ends_the_stream_or_fails_a_follow_instead_of_spinning() {
        use tokio_stream::StreamExt as _;

        // /dev/null mounted over /dev/kmsg reads as end of file at once.
        let request = DmesgRequest::default();
        let mut plain =
            stream(Path::new("/dev/null"), Path::new(PROC_STAT), request).expect("open /dev/null");
        assert!(
            plain.next().await.is_none(),
            "no records, and the stream ends"
        );

        let request = DmesgRequest {
            follow: true,
            ..DmesgRequest::default()
        };
        let mut followed =
            stream(Path::new("/dev/null"), Path::new(PROC_STAT), request).expect("open /dev/null");
        let answer = tokio::time::timeout(Duration::from_secs(10), followed.next())
            .await
            .expect("the follower answers instead of waiting on end of file");
        let status = answer.expect("an item").expect_err("a refusal");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "cannot read the kernel log: /dev/kmsg: end of file, which the kernel log device \
             never returns (is something else mounted over it?); nothing to follow"
        );
        assert!(
            followed.next().await.is_none(),
            "the stream ends after the refusal"
        );
    }

    #[tokio::test]
    async fn a_missing_device_is_a_failed_precondition_that_says_why() {
        let Err(err) = stream(
            Path::new("/definitely/not/kmsg"),
            Path::new(PROC_STAT),
            DmesgRequest::default(),
        ) else {
            panic!("opened a missing device");
        };
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "cannot read the kernel log: /definitely/not/kmsg: no such file or directory"
        );
    }
}
