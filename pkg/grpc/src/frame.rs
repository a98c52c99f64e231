//! gRPC message framing seen as bytes stream past, for a proxy that never decodes payloads.
//!
//! A gRPC body is a sequence of messages, each prefixed by 5 bytes: a compression flag and a
//! big-endian `u32` length. [`FrameScanner`] follows those headers across arbitrary chunk
//! boundaries and reports the first message longer than the limit, so a proxy can refuse it
//! while holding at most one chunk (no buffering, no memory growth).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The largest gRPC message basalt accepts or sends: 32 MiB, Talos's `GRPCMaxMessageSize`
/// (tonic's default of 4 MiB is too small for Talos's own tests, which move ~11 MB).
pub const MAX_MESSAGE_SIZE: usize = 32 * 1024 * 1024;

/// Length of the gRPC message prefix: 1 flag byte and a 4-byte length.
const HEADER_LEN: usize = 5;

/// A gRPC message whose declared length exceeds the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("gRPC message of {size} bytes exceeds the limit of {limit} bytes")]
pub struct FrameTooLarge {
    /// The declared length of the message.
    pub size: u64,
    /// The limit in force.
    pub limit: usize,
    /// Where, in the chunk being scanned, the offending message's prefix starts (0 when it
    /// started in an earlier chunk). Bytes before it belong to earlier, acceptable messages.
    pub offset: usize,
}

/// Follows gRPC message prefixes through a byte stream; see the module docs.
#[derive(Clone, Debug)]
pub struct FrameScanner {
    limit: usize,
    /// Payload bytes of the current message still to come.
    remaining: u64,
    header: [u8; HEADER_LEN],
    header_len: usize,
}

impl FrameScanner {
    /// A scanner that refuses messages longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            remaining: 0,
            header: [0; HEADER_LEN],
            header_len: 0,
        }
    }

    /// Scans the next chunk of the stream. After an error the scanner must not be used again.
    pub fn scan(&mut self, chunk: &[u8]) -> Result<(), FrameTooLarge> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let available = (chunk.len() - pos) as u64;
                let step = available.min(self.remaining);
                self.remaining -= step;
                // `step` is at most `available`, which came from a usize.
                pos += step as usize;
                continue;
            }
            let header_start = pos.saturating_sub(self.header_len);
            let take = (HEADER_LEN - self.header_len).min(chunk.len() - pos);
            self.header[self.header_len..self.header_len + take]
                .copy_from_slice(&chunk[pos..pos + take]);
            self.header_len += take;
            pos += take;
            if self.header_len == HEADER_LEN {
                self.header_len = 0;
                let size = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                if size > self.limit as u64 {
                    return Err(FrameTooLarge {
                        size,
                        limit: self.limit,
                        offset: header_start,
                    });
                }
                self.remaining = size;
            }
        }
        Ok(())
    }
}

/// A request or response body that fails with [`FrameTooLarge`] at the first oversized
/// message, and stops reading the inner body from then on.
///
/// The error is returned instead of the chunk that declared the oversized message, so none of
/// that message is passed on.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: B,
    scanner: FrameScanner,
    failed: bool,
    report: Option<Arc<OnceLock<FrameTooLarge>>>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`, refusing messages longer than `limit` bytes.
    pub fn new(inner: B, limit: usize) -> Self {
        Self {
            inner,
            scanner: FrameScanner::new(limit),
            failed: false,
            report: None,
        }
    }

    /// Also records the violation in `report`, for whoever produces the response: a proxy
    /// whose upstream only sees a reset stream can still answer `ResourceExhausted`.
    pub fn with_report(mut self, report: Arc<OnceLock<FrameTooLarge>>) -> Self {
        self.report = Some(report);
        self
    }
}

/// The error of a [`LimitedBody`]: the inner body's, or an oversized message.
#[derive(Debug, thiserror::Error)]
pub enum LimitedBodyError<E> {
    /// The inner body failed.
    #[error(transparent)]
    Inner(E),
    /// A message exceeded the limit.
    #[error(transparent)]
    TooLarge(FrameTooLarge),
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = LimitedBodyError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(LimitedBodyError::Inner(err)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(too_large) = this.scanner.scan(data)
                {
                    this.failed = true;
                    if let Some(report) = &this.report {
                        let _ = report.set(too_large);
                    }
                    return Poll::Ready(Some(Err(LimitedBodyError::TooLarge(too_large))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(0xab, len));
        out
    }

    #[test]
    fn messages_within_the_limit_pass_in_any_chunking() {
        let stream: Vec<u8> = [message(0), message(10), message(100), message(3)].concat();
        for chunk_size in [1, 2, 4, 5, 6, 7, 64, 1000] {
            let mut scanner = FrameScanner::new(100);
            for chunk in stream.chunks(chunk_size) {
                scanner.scan(chunk).expect("within limit");
            }
            assert_eq!(scanner.remaining, 0);
            assert_eq!(scanner.header_len, 0);
        }
    }

    #[test]
    fn an_oversized_message_is_found_wherever_its_header_falls() {
        let stream: Vec<u8> = [message(10), message(101)].concat();
        for chunk_size in [1, 3, 5, 8, 15, 16, 200] {
            let mut scanner = FrameScanner::new(100);
            let mut found = None;
            for (i, chunk) in stream.chunks(chunk_size).enumerate() {
                if let Err(err) = scanner.scan(chunk) {
                    found = Some((i * chunk_size + err.offset, err));
                    break;
                }
            }
            let (at, err) = found.expect("oversized message found");
            assert_eq!(err.size, 101);
            assert_eq!(err.limit, 100);
            // The offset points at the prefix when the whole prefix is in the failing chunk;
            // otherwise the prefix began in an earlier chunk and the offset is 0.
            let prefix_in_one_chunk = 15 % chunk_size + HEADER_LEN <= chunk_size;
            if prefix_in_one_chunk {
                assert_eq!(at, 15, "chunk size {chunk_size}");
            } else {
                assert_eq!(err.offset, 0, "chunk size {chunk_size}");
            }
        }
    }

    #[test]
    fn the_largest_declared_length_does_not_overflow() {
        let mut scanner = FrameScanner::new(MAX_MESSAGE_SIZE);
        let err = scanner.scan(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.size, u64::from(u32::MAX));
    }

    /// A body that yields the given chunks, then ends.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    #[tokio::test]
    async fn limited_body_fails_at_the_oversized_message() {
        let chunks = [message(4), message(50), message(4)]
            .into_iter()
            .map(Bytes::from)
            .collect();
        let report = Arc::new(OnceLock::new());
        let mut body = LimitedBody::new(Chunks(chunks), 10).with_report(report.clone());
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data").len(), 9);
        let err = body.frame().await.expect("frame").unwrap_err();
        assert!(matches!(
            err,
            LimitedBodyError::TooLarge(FrameTooLarge { size: 50, .. })
        ));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(report.get().map(|r| r.size), Some(50));
    }
}
