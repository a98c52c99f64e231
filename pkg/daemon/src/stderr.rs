//! The daemons' log lines reach stderr through one writer thread that batches them.
//!
//! A `write(2)` per line is a system call on the request path and, since a supervisor (machined,
//! or systemd) reads the other end of the pipe, a wake-up of that reader on another CPU: trustd
//! logs every certificate it issues, and that write cost it 8–15 µs per certificate at c=16
//! (docs/BENCHMARKS.md). Here the formatted line is moved into a channel; the thread writes
//! whatever has queued up in one go, then lingers [`LINGER`] before it sleeps on the channel
//! again, so under load senders find it awake and a burst of lines is one write. apid's audit
//! writer does the same for its records.
//!
//! Nothing is dropped: the channel is bounded and a sender waits when it is full, as it waited
//! on a full pipe before. A line waits at most [`LINGER`] plus the write of the batch ahead of
//! it. [`flush`] (called by [`LogFlush`] at the end of `main`, and before a reboot) returns once
//! everything logged before it is written. A panic flushes too, before the standard hook prints
//! its message straight to stderr, so the message comes after the lines that led up to it.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long the thread waits for more lines after writing a batch.
pub(crate) const LINGER: Duration = Duration::from_millis(2);

/// Lines queued before a sender waits for the thread.
const QUEUE: usize = 8 * 1024;

/// A batch larger than this is written in several system calls.
const BATCH: usize = 64 * 1024;

/// How long [`flush`] waits for the thread: a stderr nobody reads must not hang an exit.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The writer thread's name; a panic on it must not wait for itself.
const THREAD_NAME: &str = "log-writer";

enum Message {
    Line(Vec<u8>),
    /// Answered once every line sent before it is written.
    Flush(mpsc::Sender<()>),
}

/// The sender of the process's writer thread, once [`BatchedStderr::start`] ran.
static SENDER: OnceLock<SyncSender<Message>> = OnceLock::new();

/// The [`MakeWriter`] handed to tracing-subscriber: each event becomes one [`Message::Line`].
#[derive(Clone, Debug)]
pub(crate) struct BatchedStderr {
    tx: SyncSender<Message>,
}

impl BatchedStderr {
    /// Starts the writer thread (once per process; later calls share it).
    pub(crate) fn start() -> std::io::Result<Self> {
        if let Some(tx) = SENDER.get() {
            return Ok(Self { tx: tx.clone() });
        }
        let tx = spawn(std::io::stderr())?;
        let tx = SENDER.get_or_init(|| tx).clone();
        flush_before_panic_messages();
        Ok(Self { tx })
    }
}

/// Wraps the panic hook: the standard hook writes its message straight to stderr, ahead of any
/// lines still queued for the thread, which usually say what led up to the panic.
fn flush_before_panic_messages() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(THREAD_NAME) {
            flush();
        }
        print(info);
    }));
}

/// Starts a writer thread for `out`.
fn spawn<W: Write + Send + 'static>(out: W) -> std::io::Result<SyncSender<Message>> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || write_loop(rx, out))?;
    Ok(tx)
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            tx: &self.tx,
            line: Vec::new(),
        }
    }
}

/// Collects one event's bytes and sends them when dropped (tracing-subscriber drops the writer
/// after each event), so a line is never split between batches.
pub(crate) struct LineWriter<'a> {
    tx: &'a SyncSender<Message>,
    line: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        // The thread only ends with the process; if it is gone, write the line ourselves.
        if let Err(mpsc::SendError(Message::Line(line))) = self.tx.send(Message::Line(line)) {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// Waits (up to 2 s in all) until every line logged before this call is written. A no-op before
/// telemetry is set up.
pub fn flush() {
    if let Some(tx) = SENDER.get() {
        flush_through(tx);
    }
}

fn flush_through(tx: &SyncSender<Message>) {
    let deadline = Instant::now() + FLUSH_WAIT;
    let (ack, done) = mpsc::channel();
    let mut message = Message::Flush(ack);
    // Not `send`: a queue that stays full means the thread is stuck writing to a stderr nobody
    // reads, and `send` would wait for it for ever.
    loop {
        match tx.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                message = again;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

/// Flushes the log when dropped: `main` holds it, so lines logged just before the process exits
/// are written. Returned by [`crate::start_telemetry`].
#[derive(Debug)]
#[must_use = "dropping it at once flushes the log at once, not at exit"]
pub struct LogFlush(());

impl LogFlush {
    pub(crate) fn new() -> Self {
        LogFlush(())
    }
}

impl Drop for LogFlush {
    fn drop(&mut self) {
        flush();
    }
}

/// The thread's state: the batch being built, and the flushes waiting for it.
struct Lines<W> {
    out: W,
    batch: Vec<u8>,
    acks: Vec<mpsc::Sender<()>>,
}

impl<W: Write> crate::Batch<Message> for Lines<W> {
    fn add(&mut self, message: Message) {
        match message {
            Message::Line(line) => {
                if self.batch.len() + line.len() > BATCH {
                    write_batch(&mut self.out, &mut self.batch);
                }
                self.batch.extend_from_slice(&line);
            }
            Message::Flush(ack) => self.acks.push(ack),
        }
    }

    fn end(&mut self) {
        write_batch(&mut self.out, &mut self.batch);
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

fn write_loop<W: Write>(rx: Receiver<Message>, out: W) {
    let mut lines = Lines {
        out,
        batch: Vec::with_capacity(BATCH),
        acks: Vec::new(),
    };
    crate::drain_in_batches(&rx, LINGER, &mut lines);
}

/// A failed write of the log has nowhere to be reported; like tracing-subscriber's own stderr
/// writer, it is ignored and the next batch is tried.
fn write_batch<W: Write>(out: &mut W, batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        let _ = out.write_all(batch).and_then(|()| out.flush());
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records each `write` call, so the tests see batches, not just bytes.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("recorder").push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("recorder").concat()).expect("utf-8")
        }
        fn writes(&self) -> usize {
            self.0.lock().expect("recorder").len()
        }
    }

    fn log(tx: &SyncSender<Message>, text: &str) {
        let mut writer = LineWriter {
            tx,
            line: Vec::new(),
        };
        // As tracing-subscriber does: the event's text, in as many writes as it likes.
        let (a, b) = text.split_at(text.len() / 2);
        writer.write_all(a.as_bytes()).expect("write");
        writer.write_all(b.as_bytes()).expect("write");
    }

    #[test]
    fn a_flush_returns_after_every_earlier_line_is_written_in_order() {
        let out = Recorder::default();
        let tx = spawn(out.clone()).expect("spawn");
        let lines: Vec<String> = (0..1000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            log(&tx, line);
        }
        flush_through(&tx);
        assert_eq!(out.text(), lines.concat());
    }

    #[test]
    fn a_burst_is_written_in_few_writes_and_no_line_is_split() {
        let out = Recorder::default();
        let tx = spawn(out.clone()).expect("spawn");
        let line = format!("{}\n", "x".repeat(1000));
        // 200 KB queued faster than the thread lingers: batches, each capped at BATCH.
        for _ in 0..200 {
            log(&tx, &line);
        }
        flush_through(&tx);
        let writes = out.0.lock().expect("recorder").clone();
        assert!(writes.len() < 100, "{} writes for 200 lines", writes.len());
        for write in &writes {
            assert!(write.len() <= BATCH, "a write of {} bytes", write.len());
            assert_eq!(write.len() % line.len(), 0, "a line was split");
        }
        assert_eq!(out.text(), line.repeat(200));
    }

    #[test]
    fn lines_logged_while_the_thread_lingers_are_written_without_a_flush() {
        let out = Recorder::default();
        let tx = spawn(out.clone()).expect("spawn");
        log(&tx, "first\n");
        log(&tx, "second\n");
        // Bounded wait: the thread writes within LINGER of the last line, not only on flush.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.text() != "first\nsecond\n" {
            assert!(std::time::Instant::now() < deadline, "got {:?}", out.text());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(out.writes() <= 2);
    }

    /// A stderr nobody reads: every write waits until the test lets it go.
    struct Stuck(Arc<Mutex<()>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            drop(self.0.lock().expect("stuck"));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flush_gives_up_when_the_queue_stays_full() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().expect("gate");
        let tx = spawn(Stuck(Arc::clone(&gate))).expect("spawn");
        // The thread takes the first line and waits in its write; the rest fill the queue.
        let mut queued = 0;
        while tx.try_send(Message::Line(b"x\n".to_vec())).is_ok() {
            queued += 1;
            assert!(queued <= QUEUE + BATCH, "the queue never filled");
        }
        let (done_tx, done) = mpsc::channel();
        let flusher = tx.clone();
        std::thread::spawn(move || {
            flush_through(&flusher);
            let _ = done_tx.send(());
        });
        // Bounded: FLUSH_WAIT is 2 s; a flush stuck in `send` would never answer.
        let answered = done.recv_timeout(Duration::from_secs(30));
        drop(held);
        assert!(
            answered.is_ok(),
            "flush waited for a full queue past FLUSH_WAIT"
        );
    }

    #[test]
    fn an_empty_event_sends_nothing_and_a_flush_still_returns() {
        let out = Recorder::default();
        let tx = spawn(out.clone()).expect("spawn");
        drop(LineWriter {
            tx: &tx,
            line: Vec::new(),
        });
        flush_through(&tx);
        assert_eq!(out.writes(), 0);
    }
}
