//! The audit log when its sink stalls (docs/SECURITY.md #79): the file is a FIFO nobody reads,
//! as a hung disk would be. Calls must go on. Once the writer is 16,384 records behind (its
//! queue), new records are dropped and counted; when the sink comes back every call is either
//! written or counted as dropped, and records are written again.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use basalt_config::{ApidLimits, AuditSink};
use support::{Apid, Pki, machine_client, sample_value, scrape_metrics, version};
use tokio::task::JoinSet;

/// The writer's queue (`audit::QUEUE`).
const QUEUE: u64 = 16 * 1024;

/// Calls per batch, and at most how many batches: enough to fill the queue, the writer's 64 KiB
/// buffer and the pipe, with room to spare.
const BATCH: u64 = 1000;
const MAX_BATCHES: u64 = 20;

/// Calls in flight at once.
const CONCURRENCY: u64 = 32;

/// The sample `basalt_apid_audit_dropped_total`.
async fn dropped(metrics: SocketAddr) -> u64 {
    let body = scrape_metrics(metrics).await;
    assert!(
        body.contains("\nbasalt_apid_audit_dropped_total "),
        "the dropped counter is exported: {body}"
    );
    sample_value(&body, "basalt_apid_audit_dropped_total") as u64
}

/// Makes a FIFO at `path` and opens its read end on a thread, which reads nothing until told
/// to, then counts each record it reads into the returned counter until EOF.
fn stalled_reader(path: &Path) -> (mpsc::Sender<()>, Arc<AtomicU64>) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
    let (drain, drain_rx) = mpsc::channel::<()>();
    let written = Arc::new(AtomicU64::new(0));
    let (path, count) = (path.to_path_buf(), Arc::clone(&written));
    std::thread::spawn(move || {
        // Blocks until apid opens the write end.
        let fifo = std::fs::File::open(&path).expect("open the FIFO for reading");
        let _ = drain_rx.recv();
        for line in BufReader::new(fifo).lines() {
            line.expect("read a record");
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    (drain, written)
}

/// Polls until `check(written, dropped)` holds, for at most 10 s.
async fn until(
    what: &str,
    metrics: SocketAddr,
    written: &AtomicU64,
    mut check: impl FnMut(u64, u64) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (w, d) = (written.load(Ordering::Relaxed), dropped(metrics).await);
        if check(w, d) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what} (written {w}, dropped {d})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_sink_drops_and_counts_records_and_calls_go_on() {
    // About 17,000 calls: 7 s in a debug build on 2 cores, so more room than the usual deadline.
    tokio::time::timeout(Duration::from_secs(90), async {
        let pki = Pki::new();
        let fifo_dir = support::short_tempdir();
        let fifo = fifo_dir.path().join("audit.fifo");
        let (drain, written) = stalled_reader(&fifo);
        let apid = Apid::start_with(&pki, |config| {
            config.audit = AuditSink::File(fifo.clone());
            config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
            // Every call comes from one certificate.
            config.limits = ApidLimits {
                requests_per_second: 1_000_000,
                burst: 1_000_000,
                max_in_flight: 1024,
                ..ApidLimits::default()
            };
        })
        .await;
        let metrics = apid.metrics.expect("metrics endpoint bound");
        let backend = apid.backend().await;
        let client = apid.machine(&pki, &pki.client(&["os:admin"]));

        // Batches of calls until records are dropped: every call is answered meanwhile.
        let mut calls = 0;
        while dropped(metrics).await == 0 {
            assert!(
                calls < BATCH * MAX_BATCHES,
                "{calls} calls and nothing dropped"
            );
            let mut batch = JoinSet::new();
            for worker in 0..CONCURRENCY {
                let mut client = client.clone();
                let share = BATCH / CONCURRENCY + u64::from(worker < BATCH % CONCURRENCY);
                batch.spawn(async move {
                    for _ in 0..share {
                        version(&mut client)
                            .await
                            .expect("a call while audit stalls");
                    }
                });
            }
            while let Some(done) = batch.join_next().await {
                done.expect("worker");
            }
            calls += BATCH;
        }
        assert!(calls > QUEUE, "{calls} calls");
        assert_eq!(written.load(Ordering::Relaxed), 0, "the sink was stalled");

        // The sink comes back: the writer drains its queue, and every call is accounted for,
        // written or counted as dropped.
        let _ = drain.send(());
        until(
            "every record written or dropped",
            metrics,
            &written,
            |w, d| w + d == calls,
        )
        .await;
        let (before, dropped_before) = (written.load(Ordering::Relaxed), dropped(metrics).await);
        assert!(before >= QUEUE, "the queue was written out: {before}");

        // Records are written again after the stall.
        let mut admin = machine_client(apid.channel(&pki, Some(&pki.client(&["os:admin"]))));
        version(&mut admin).await.expect("served after the stall");
        until("the next record is written", metrics, &written, |w, d| {
            w == before + 1 && d == dropped_before
        })
        .await;

        drop((client, admin));
        backend.stop().await;
        apid.stop().await;
    })
    .await
    .expect("the test finished within 90 s");
}

/// The sample `basalt_apid_audit_write_failed_total`.
async fn write_failed(metrics: SocketAddr) -> u64 {
    let body = scrape_metrics(metrics).await;
    assert!(
        body.contains("\nbasalt_apid_audit_write_failed_total "),
        "the write-failure counter is exported: {body}"
    );
    sample_value(&body, "basalt_apid_audit_write_failed_total") as u64
}

/// A full disk (docs/SECURITY.md #86): every write to `/dev/full` fails with ENOSPC. Calls are
/// served; once the writer's buffer is full, the records it cannot take are counted as lost
/// (they are not "dropped": the writer was not behind), and apid still shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_audit_records_counted_and_calls_go_on() {
    support::within_deadline(async {
        let pki = Pki::new();
        let apid = Apid::start_with(&pki, |config| {
            config.audit = AuditSink::File("/dev/full".into());
            config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
            config.limits = ApidLimits {
                requests_per_second: 1_000_000,
                burst: 1_000_000,
                ..ApidLimits::default()
            };
        })
        .await;
        let metrics = apid.metrics.expect("metrics endpoint bound");
        let backend = apid.backend().await;
        let mut client = apid.machine(&pki, &pki.client(&["os:admin"]));

        // The writer holds what fits in its 64 KiB buffer (a few hundred records); past that,
        // records are lost and counted.
        let mut calls = 0u64;
        while write_failed(metrics).await == 0 {
            assert!(calls < 5_000, "{calls} calls and no lost record counted");
            for _ in 0..100 {
                version(&mut client)
                    .await
                    .expect("a call while the disk is full");
            }
            calls += 100;
        }
        // Counted only for records that are really gone: the buffer still holds some.
        let lost = write_failed(metrics).await;
        assert!(
            lost < calls,
            "lost {lost} of {calls}: some records are held"
        );
        assert_eq!(dropped(metrics).await, 0, "the writer was never behind");
        version(&mut client)
            .await
            .expect("served after records were lost");

        drop(client);
        backend.stop().await;
        apid.stop().await;
    })
    .await;
}
