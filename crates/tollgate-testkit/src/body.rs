//! The response body: pieces sent with optional gaps, ending cleanly or by dropping the
//! connection. Every delay ends early when the upstream shuts down.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;

/// How long a body that ends by dropping the connection waits after its last piece, so the
/// piece is flushed to the socket before the connection goes.
const FLUSH_GRACE: Duration = Duration::from_millis(20);

type Delay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A future sleeping `d`, or less if the upstream shuts down.
pub(crate) fn delay(
    shutdown: &watch::Receiver<bool>,
    d: Duration,
) -> impl Future<Output = ()> + Send + use<> {
    let mut rx = shutdown.clone();
    async move {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stopped(&mut rx) => {}
        }
    }
}

/// Resolves when the upstream shuts down (or its handle is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopping| *stopping).await;
}

/// How a [`ReplyBody`] ends after its last piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The body is complete.
    Complete,
    /// The connection is dropped (HTTP/1) or the stream reset (HTTP/2).
    Abort,
}

/// A response body made of pieces.
pub(crate) struct ReplyBody {
    pieces: VecDeque<Bytes>,
    gap: Duration,
    ending: Ending,
    exact_len: Option<u64>,
    pending: Option<Delay>,
    flushed: bool,
    shutdown: watch::Receiver<bool>,
}

impl ReplyBody {
    /// One piece, complete; its length is announced.
    pub(crate) fn full(bytes: impl Into<Bytes>, shutdown: &watch::Receiver<bool>) -> ReplyBody {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        ReplyBody::pieces(vec![bytes], Duration::ZERO, Ending::Complete, shutdown)
            .with_exact_len(len)
    }

    /// Pieces with `gap` between them, then `ending`.
    pub(crate) fn pieces(
        pieces: Vec<Bytes>,
        gap: Duration,
        ending: Ending,
        shutdown: &watch::Receiver<bool>,
    ) -> ReplyBody {
        ReplyBody {
            pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
            gap,
            ending,
            exact_len: None,
            pending: None,
            flushed: false,
            shutdown: shutdown.clone(),
        }
    }

    /// Announces `len` bytes (sets `content-length` on HTTP/1), even when fewer are sent.
    pub(crate) fn with_exact_len(mut self, len: u64) -> ReplyBody {
        self.exact_len = Some(len);
        self
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = this.pending.as_mut() {
                ready!(pending.as_mut().poll(cx));
                this.pending = None;
            }
            if let Some(piece) = this.pieces.pop_front() {
                if !this.pieces.is_empty() && !this.gap.is_zero() {
                    this.pending = Some(Box::pin(delay(&this.shutdown, this.gap)));
                }
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            match this.ending {
                Ending::Complete => return Poll::Ready(None),
                Ending::Abort if !this.flushed => {
                    this.flushed = true;
                    this.pending = Some(Box::pin(delay(&this.shutdown, FLUSH_GRACE)));
                }
                Ending::Abort => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "testkit: connection dropped mid-body by a scripted fault",
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty() && self.pending.is_none() && self.ending == Ending::Complete
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
