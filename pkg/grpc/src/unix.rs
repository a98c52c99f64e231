//! A unix stream registered with the reactor for reads only: the link between apid and machined.
//!
//! A tokio `UnixStream` is registered for both reads and writes. On a unix socket that costs
//! a wake-up per message. Whenever the peer reads, the kernel's `unix_write_space` signals
//! "writable" to everyone registered on the writer's side. It does so unconditionally, where
//! TCP only signals a writer that earlier ran out of room. So every request machined read woke
//! apid, and every reply apid read woke machined, with nothing for the woken side to do.
//! (perf at one call in flight: 7% of apid's samples were that wake-up of machined.)
//!
//! [`ReadInterestUnixStream`] registers the socket for reads only. Writes go straight to the
//! socket, which almost always has room. Only a write that finds it full registers a clone of
//! the socket for writes, and drops it once that write has gone through. That clone is one
//! descriptor more: with none left, the write fails with EMFILE, having written nothing, and
//! the stream stays usable (apid's HTTP/2 link on it ends, and the next call connects again).
//!
//! machined's listener hands tonic its connections through [`UnixIncoming`], which wraps each
//! in a [`ReadInterestUnixStream`] and pauses after a failed accept instead of spinning.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future as _;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tracing::warn;

/// The most one read takes from the socket: an HTTP/2 frame of the default 16 KiB and its header
/// fit. Reads go into this thread's scratch buffer and are copied out. A read straight into the
/// caller's buffer would first have to zero it, and without `unsafe` that is the whole unfilled
/// part, on every read: h2 hands 8 KiB, for replies of a few hundred bytes. The copy touches only
/// what arrived. One buffer per thread, not per stream: machined may hold dozens of connections.
const READ_SCRATCH: usize = 16 * 1024 + 9;

thread_local! {
    /// Zeroed once per thread. A read and its copy run without an `.await` between them, so no
    /// other stream on the thread can use the buffer meanwhile.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SCRATCH].into_boxed_slice());
}

/// A connected unix stream whose reactor registration is for reads only; see the module docs.
#[derive(Debug)]
pub struct ReadInterestUnixStream {
    socket: AsyncFd<StdUnixStream>,
    /// A clone of the socket registered for writes; only while a write waits for room.
    write_waiter: Option<AsyncFd<StdUnixStream>>,
    /// What tonic hands a server's handlers, read while the stream was still tokio's.
    connect_info: UdsConnectInfo,
}

impl ReadInterestUnixStream {
    /// Takes over a connected stream (from `UnixStream::connect` or `UnixListener::accept`).
    /// Must run inside a tokio runtime.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        let connect_info = stream.connect_info();
        // `into_std` leaves the descriptor non-blocking.
        let socket = register(stream.into_std()?, Interest::READABLE)?;
        Ok(Self {
            socket,
            write_waiter: None,
            connect_info,
        })
    }

    /// Runs `write` on the socket, waiting for room only when it is full.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&StdUnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if self.write_waiter.is_none() {
            match write(self.socket.get_ref()) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let clone = self.socket.get_ref().try_clone()?;
                    self.write_waiter = Some(register(clone, Interest::WRITABLE)?);
                }
                written => return Poll::Ready(written),
            }
        }
        let Some(waiter) = &self.write_waiter else {
            unreachable!("a write that found the socket full registered the waiter")
        };
        let written = loop {
            let mut ready = ready!(waiter.poll_write_ready(cx))?;
            if let Ok(written) = ready.try_io(|socket| write(socket.get_ref())) {
                break written;
            }
        };
        // Room again: stop hearing about it.
        self.write_waiter = None;
        Poll::Ready(written)
    }
}

/// Registers `socket` with the current runtime's reactor for `interest` only.
//
// tokio deprecated the safe `AsyncFd::with_interest`, which is unsound for a type whose
// descriptor can be closed or replaced while it is registered. Its replacement is `unsafe`,
// and the workspace forbids `unsafe`. A std `UnixStream` owns its descriptor until it is
// dropped, so that contract holds here and the safe call is sound.
#[allow(deprecated)]
fn register(socket: StdUnixStream, interest: Interest) -> io::Result<AsyncFd<StdUnixStream>> {
    AsyncFd::with_interest(socket, interest)
}

impl Connected for ReadInterestUnixStream {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.connect_info.clone()
    }
}

impl AsyncRead for ReadInterestUnixStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &self.get_mut().socket;
        loop {
            let mut ready = ready!(socket.poll_read_ready(cx))?;
            let attempt = READ_BUFFER.with_borrow_mut(|scratch| {
                let wanted = buf.remaining().min(scratch.len());
                let scratch = &mut scratch[..wanted];
                let attempt = ready.try_io(|socket| socket.get_ref().read(scratch));
                if let Ok(Ok(read)) = attempt {
                    // A short read emptied the socket: skip the read that would only say so
                    // (tokio's own streams do the same). The next message is a new edge.
                    if read > 0 && read < wanted {
                        ready.clear_ready();
                    }
                    buf.put_slice(&scratch[..read]);
                }
                attempt
            });
            // Otherwise the read would have blocked: readiness is cleared, so wait again.
            if let Ok(read) = attempt {
                return Poll::Ready(read.map(drop));
            }
        }
    }
}

impl AsyncWrite for ReadInterestUnixStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut socket| socket.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |mut socket| socket.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(Shutdown::Write))
    }
}

/// The connections a unix listener accepts, as tonic's `serve_with_incoming` takes them,
/// each a [`ReadInterestUnixStream`].
///
/// A failed accept (out of descriptors, most often) is logged, and the next waits
/// [`ACCEPT_ERROR_BACKOFF`](crate::ACCEPT_ERROR_BACKOFF). tonic retries at once after an
/// error of its incoming stream, and the listener stays readable while connections wait in
/// the backlog, so without the pause the server would spin on EMFILE. A connection that
/// cannot be registered with the reactor is logged and closed. The stream never ends and
/// never yields an error.
#[derive(Debug)]
pub struct UnixIncoming {
    listener: UnixListener,
    /// Set after a failed accept; no accept is tried until it fires.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl UnixIncoming {
    /// The connections `listener` accepts from now on.
    pub fn new(listener: UnixListener) -> Self {
        Self {
            listener,
            backoff: None,
        }
    }
}

impl Stream for UnixIncoming {
    type Item = Result<ReadInterestUnixStream, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(backoff) = &mut this.backoff {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => match ReadInterestUnixStream::new(stream) {
                    Ok(stream) => return Poll::Ready(Some(Ok(stream))),
                    Err(err) => warn!(
                        error = &err as &dyn std::error::Error,
                        "Cannot register an accepted connection with the reactor; closed it"
                    ),
                },
                Err(err) => {
                    warn!(
                        error = &err as &dyn std::error::Error,
                        "Unix socket accept failed"
                    );
                    this.backoff = Some(Box::pin(tokio::time::sleep(crate::ACCEPT_ERROR_BACKOFF)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_go_both_ways_and_shutdown_is_end_of_file() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let mut ours = ReadInterestUnixStream::new(ours).expect("register");
        let mut theirs = theirs;

        ours.write_all(b"request").await.expect("write");
        let mut got = [0; 7];
        theirs.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"request");

        theirs.write_all(b"reply").await.expect("write");
        theirs.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.expect("read to the end");
        assert_eq!(got, b"reply");

        ours.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.expect("end of file");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_message_after_a_short_read_still_wakes_the_reader() {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let mut ours = ReadInterestUnixStream::new(ours).expect("register");
        let mut buf = [0; 64];
        theirs.write_all(b"first").await.expect("write");
        // Shorter than the buffer: readiness is cleared without a read that finds nothing.
        assert_eq!(ours.read(&mut buf).await.expect("read"), 5);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            theirs.write_all(b"second").await.expect("write");
            theirs
        });
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), ours.read(&mut buf))
            .await
            .expect("the second message woke the reader")
            .expect("read");
        assert_eq!(&buf[..read], b"second");
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_room_and_arrives_whole() {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let mut ours = ReadInterestUnixStream::new(ours).expect("register");
        // Far more than a unix socket buffers, so writes find it full and must wait.
        let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = sent.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.expect("read");
            got
        });
        ours.write_all(&sent).await.expect("write");
        assert!(
            ours.write_waiter.is_none(),
            "the write registration is dropped once there is room"
        );
        ours.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader");
        assert!(
            got == expected,
            "{} of {} bytes, or out of order",
            got.len(),
            expected.len()
        );
    }

    /// Set in the child that runs under a low descriptor limit.
    const LOW_FD_CHILD: &str = "BASALT_GRPC_TEST_LOW_FD_CHILD";
    const LOW_FD_TEST: &str =
        "unix::tests::a_full_socket_with_no_descriptor_left_is_an_error_not_a_hang";

    /// A write that finds the socket full needs one descriptor more: the clone it waits on.
    /// With none left, that write fails with EMFILE at once, having written nothing. Once a
    /// descriptor is free again, the same stream writes and the peer reads every byte. The test
    /// runs in a child under `ulimit -n`, because running out of descriptors here would break
    /// the tests beside it.
    #[test]
    fn a_full_socket_with_no_descriptor_left_is_an_error_not_a_hang() {
        if std::env::var_os(LOW_FD_CHILD).is_some() {
            run_out_of_descriptors();
            return;
        }
        let exe = std::env::current_exe().expect("this test binary");
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
            .arg(exe)
            .args(["--exact", LOW_FD_TEST, "--nocapture", "--test-threads=1"])
            .env(LOW_FD_CHILD, "1")
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run_out_of_descriptors() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (ours, mut theirs) = UnixStream::pair().expect("pair");
            let mut ours = ReadInterestUnixStream::new(ours).expect("register");
            // Fill the socket behind the stream's back, so no write of its own has waited yet.
            let mut queued = 0;
            loop {
                match ours.socket.get_ref().write(&[7; 4096]) {
                    Ok(n) => queued += n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => panic!("filling the socket: {err}"),
                }
            }
            let mut held = Vec::new();
            let exhausted = loop {
                match std::fs::File::open("/dev/null") {
                    Ok(file) => held.push(file),
                    Err(err) => break err,
                }
            };
            assert_eq!(exhausted.raw_os_error(), Some(24), "{exhausted}"); // EMFILE

            let failed = tokio::time::timeout(Duration::from_secs(10), ours.write(b"more"))
                .await
                .expect("the write answered at once");
            let err = failed.expect_err("no descriptor for the clone");
            assert_eq!(err.raw_os_error(), Some(24), "{err}");
            assert!(ours.write_waiter.is_none());

            drop(held.pop());
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                theirs.read_to_end(&mut got).await.expect("read");
                got
            });
            tokio::time::timeout(Duration::from_secs(10), ours.write_all(b"more"))
                .await
                .expect("the write went through once the peer read")
                .expect("write");
            ours.shutdown().await.expect("shutdown");
            let got = reader.await.expect("reader");
            assert_eq!(got.len(), queued + 4, "the failed write wrote nothing");
            assert!(got.ends_with(b"more"));
        });
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_is_an_error() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let mut ours = ReadInterestUnixStream::new(ours).expect("register");
        drop(theirs);
        let err = ours.write_all(b"x").await.expect_err("peer is gone");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    }

    #[tokio::test]
    async fn the_peer_credentials_are_kept_for_tonic() {
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        let ours = ReadInterestUnixStream::new(ours).expect("register");
        let cred = ours.connect_info().peer_cred.expect("peer credentials");
        // Both ends are this process.
        assert_eq!(cred.pid(), i32::try_from(std::process::id()).ok());
    }
}
