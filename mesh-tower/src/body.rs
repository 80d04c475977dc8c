//! Request and response bodies on the data path.
//!
//! Requests: retries and mirrors need the body again after the first attempt has sent it, but
//! HTTP bodies are streams that can be read once. [`ReqBody`] streams the caller's body to the
//! first attempt while recording it, up to a cap (64 KiB by default, like linkerd2-proxy). When
//! an attempt ends, the body's state travels back to the retry loop over a oneshot channel (no
//! lock is shared between attempts), and the next attempt replays the recording before reading
//! on. A body larger than the cap is streamed without recording, and the request is then not
//! retried: the answer of its only attempt is returned.
//!
//! Responses: [`RspBody`] is either the upstream's body (holding the request's in-flight
//! accounting until it is dropped, as Envoy counts a request active until its stream ends) or a
//! local reply.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::oneshot;

use crate::counters::Inflight;

/// A boxed error, as bodies and hyper report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Stream = UnsyncBoxBody<Bytes, BoxError>;

/// Default cap on the request bytes kept for retries and mirrors.
pub const DEFAULT_REPLAY_CAP: usize = 64 * 1024;

/// What an attempt hands back when its body is dropped.
#[derive(Debug)]
pub(crate) struct ReplayState {
    recorded: Vec<Bytes>,
    recorded_len: usize,
    trailers: Option<HeaderMap>,
    /// The rest of the caller's body; `None` once it has ended (or failed).
    rest: Option<Stream>,
    /// More than the cap was read: the recording is gone and cannot be replayed.
    overflowed: bool,
    /// The caller's body failed.
    failed: bool,
}

impl ReplayState {
    fn complete(&self) -> bool {
        self.rest.is_none() && !self.overflowed && !self.failed
    }
}

/// The body of a request sent upstream.
#[derive(Debug)]
pub struct ReqBody {
    kind: ReqKind,
}

#[derive(Debug)]
enum ReqKind {
    Empty,
    /// Boxed: a request body is moved with its request through every layer, and an empty
    /// body (most requests) should not carry a replay's size.
    Replay(Box<Replay>),
}

#[derive(Debug)]
struct Replay {
    /// `Some` until dropped.
    state: Option<Box<ReplayState>>,
    /// Next recorded frame to replay.
    pos: usize,
    trailers_sent: bool,
    cap: usize,
    back: Option<oneshot::Sender<Box<ReplayState>>>,
}

impl ReqBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: ReqKind::Empty,
        }
    }
}

impl Default for ReqBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = match &mut self.get_mut().kind {
            ReqKind::Empty => return Poll::Ready(None),
            ReqKind::Replay(r) => r,
        };
        let st = r.state.as_mut().expect("state is present until drop");
        if r.pos < st.recorded.len() {
            r.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(st.recorded[r.pos - 1].clone()))));
        }
        if let Some(rest) = st.rest.as_mut() {
            match ready!(Pin::new(rest).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if !st.overflowed {
                            if st.recorded_len + data.len() > r.cap {
                                st.overflowed = true;
                                st.recorded = Vec::new();
                                st.recorded_len = 0;
                            } else {
                                st.recorded_len += data.len();
                                st.recorded.push(data.clone());
                            }
                        }
                        r.pos = st.recorded.len();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref() {
                            st.trailers = Some(t.clone());
                            r.trailers_sent = true;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Some(Err(e)) => {
                    st.failed = true;
                    st.rest = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => st.rest = None,
            }
        }
        if !r.trailers_sent
            && let Some(t) = st.trailers.clone()
        {
            r.trailers_sent = true;
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ReqKind::Empty => true,
            ReqKind::Replay(r) => {
                let st = r.state.as_ref().expect("state is present until drop");
                r.pos >= st.recorded.len()
                    && st.rest.is_none()
                    && (r.trailers_sent || st.trailers.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReqKind::Empty => SizeHint::with_exact(0),
            ReqKind::Replay(r) => {
                let st = r.state.as_ref().expect("state is present until drop");
                let replay: u64 = st.recorded[r.pos.min(st.recorded.len())..]
                    .iter()
                    .map(|b| b.len() as u64)
                    .sum();
                match &st.rest {
                    None => SizeHint::with_exact(replay),
                    Some(rest) => {
                        let h = rest.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(h.lower() + replay);
                        if let Some(u) = h.upper() {
                            out.set_upper(u + replay);
                        }
                        out
                    }
                }
            }
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let (Some(tx), Some(st)) = (self.back.take(), self.state.take()) {
            let _ = tx.send(st);
        }
    }
}

/// The caller's body, as the retry loop holds it between attempts.
#[derive(Debug)]
pub(crate) enum BodySource {
    /// No body: every attempt gets an empty one.
    Empty,
    /// A body, not yet (or no longer) lent to an attempt.
    Held { state: Box<ReplayState>, cap: usize },
    /// Lent to an attempt; it comes back on this channel when the attempt drops it.
    Lent {
        rx: oneshot::Receiver<Box<ReplayState>>,
        cap: usize,
    },
    /// Cannot be sent again.
    Gone,
}

impl BodySource {
    /// Takes the caller's body. A small body of known length (at most `cap`) is read at once so
    /// that every attempt and mirror can have it; others are recorded as they stream. A `cap`
    /// of zero records nothing (used when neither retries nor mirrors can happen).
    pub(crate) async fn new<B>(body: B, cap: usize) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let known_small = body.size_hint().exact().is_some_and(|n| n as usize <= cap);
        let mut source = Self::streaming(body, cap);
        if let Self::Held { state, .. } = &mut source
            && known_small
        {
            let mut stream = state.rest.take().expect("just set");
            loop {
                match stream.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(d) => {
                            state.recorded_len += d.len();
                            state.recorded.push(d);
                        }
                        Err(frame) => state.trailers = frame.into_trailers().ok(),
                    },
                    Some(Err(_)) => {
                        // Sent as far as it went; the attempt sees the body end early.
                        state.failed = true;
                        break;
                    }
                    None => break,
                }
            }
        }
        source
    }

    /// Takes the caller's body without reading any of it: it is recorded as the first
    /// attempt streams it (up to `cap`).
    pub(crate) fn streaming<B>(body: B, cap: usize) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Self::Empty;
        }
        let stream: Stream = body
            .map_frame(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(Into::into)
            .boxed_unsync();
        let state = ReplayState {
            recorded: Vec::new(),
            recorded_len: 0,
            trailers: None,
            rest: Some(stream),
            overflowed: false,
            failed: false,
        };
        Self::Held {
            state: Box::new(state),
            cap,
        }
    }

    /// A copy for a mirror, when the whole body is known (empty, or read in full).
    pub(crate) fn duplicate(&self) -> Option<BodySource> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Held { state, .. } if state.complete() => Some(Self::Held {
                state: Box::new(ReplayState {
                    recorded: state.recorded.clone(),
                    recorded_len: state.recorded_len,
                    trailers: state.trailers.clone(),
                    rest: None,
                    overflowed: false,
                    failed: false,
                }),
                cap: 0,
            }),
            _ => None,
        }
    }

    /// The whole body, when it is known in full (for concurrent hedged attempts).
    pub(crate) fn complete(&self) -> Option<CompleteBody> {
        match self {
            Self::Empty => Some(CompleteBody::default()),
            Self::Held { state, .. } if state.complete() => Some(CompleteBody {
                chunks: state.recorded.clone(),
                trailers: state.trailers.clone(),
            }),
            _ => None,
        }
    }

    /// The body for the next attempt, or `None` when it cannot be sent again.
    pub(crate) fn lend(&mut self) -> Option<ReqBody> {
        match std::mem::replace(self, Self::Gone) {
            Self::Empty => {
                *self = Self::Empty;
                Some(ReqBody::empty())
            }
            Self::Held { state, cap } => {
                if state.overflowed || state.failed {
                    return None;
                }
                let (tx, rx) = oneshot::channel();
                *self = Self::Lent { rx, cap };
                Some(ReqBody {
                    kind: ReqKind::Replay(Box::new(Replay {
                        state: Some(state),
                        pos: 0,
                        trailers_sent: false,
                        cap,
                        back: Some(tx),
                    })),
                })
            }
            Self::Lent { .. } | Self::Gone => None,
        }
    }

    /// Waits (at most `wait`) for the last attempt to give the body back. After this,
    /// [`lend`](Self::lend) can replay it, unless it was too large or failed.
    #[cfg(test)]
    pub(crate) async fn reclaim(&mut self, wait: std::time::Duration) {
        let back = std::future::poll_fn(|cx| self.poll_reclaim(cx));
        if tokio::time::timeout(wait, back).await.is_err() {
            self.abandon();
        }
    }

    /// Polls for the last attempt's body to come back (ready at once when it is not lent).
    pub(crate) fn poll_reclaim(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Self::Lent { rx, cap } = self {
            let cap = *cap;
            *self = match ready!(Pin::new(rx).poll(cx)) {
                Ok(state) => Self::Held { state, cap },
                Err(_) => Self::Gone,
            };
        }
        Poll::Ready(())
    }

    /// Stops waiting for a lent body: it will not be sent again.
    pub(crate) fn abandon(&mut self) {
        if let Self::Lent { .. } = self {
            *self = Self::Gone;
        }
    }

    /// Whether a later attempt could still get the body (before reclaiming it).
    pub(crate) fn replayable(&self) -> bool {
        match self {
            Self::Empty | Self::Lent { .. } => true,
            Self::Held { state, .. } => !state.overflowed && !state.failed,
            Self::Gone => false,
        }
    }
}

/// A request body known in full; each attempt gets its own copy.
#[derive(Clone, Debug, Default)]
pub(crate) struct CompleteBody {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl CompleteBody {
    /// A body for one attempt.
    pub(crate) fn to_body(&self) -> ReqBody {
        if self.chunks.is_empty() && self.trailers.is_none() {
            return ReqBody::empty();
        }
        ReqBody {
            kind: ReqKind::Replay(Box::new(Replay {
                state: Some(Box::new(ReplayState {
                    recorded_len: self.chunks.iter().map(Bytes::len).sum(),
                    recorded: self.chunks.clone(),
                    trailers: self.trailers.clone(),
                    rest: None,
                    overflowed: false,
                    failed: false,
                })),
                pos: 0,
                trailers_sent: false,
                cap: 0,
                back: None,
            })),
        }
    }
}

/// The body of a response returned by the mesh client.
#[derive(Debug)]
pub struct RspBody {
    kind: RspKind,
    /// Telemetry for the request, recorded when this body ends or is dropped.
    exchange: Option<crate::telemetry::Exchange>,
}

#[derive(Debug)]
enum RspKind {
    Upstream {
        body: hyper::body::Incoming,
        /// Keeps the request counted as active (circuit breakers, least request) until the
        /// response has been read or dropped.
        _inflight: Option<Inflight>,
    },
    Full(Option<Bytes>),
}

impl RspBody {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Self {
            kind: RspKind::Full((!b.is_empty()).then_some(b)),
            exchange: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: RspKind::Full(None),
            exchange: None,
        }
    }

    pub(crate) fn upstream(body: hyper::body::Incoming, inflight: Option<Inflight>) -> Self {
        Self {
            kind: RspKind::Upstream {
                body,
                _inflight: inflight,
            },
            exchange: None,
        }
    }

    /// Has telemetry observe this body: the request is recorded when it ends.
    pub(crate) fn observe(&mut self, x: crate::telemetry::Exchange) {
        if self.is_end_stream() {
            // Nothing to read (a local reply with no body): record now.
            drop(x);
        } else {
            self.exchange = Some(x);
        }
    }
}

impl crate::respond::LocalBody for RspBody {
    fn local(text: Bytes) -> Self {
        RspBody::full(text)
    }
}

impl Default for RspBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl Body for RspBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            RspKind::Upstream { body, .. } => Pin::new(body)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
            RspKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        if this.exchange.is_some() {
            let ended = this.is_end_stream();
            crate::telemetry::exchange::observe_frame(&mut this.exchange, &polled, ended);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RspKind::Upstream { body, .. } => body.is_end_stream(),
            RspKind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RspKind::Upstream { body, .. } => body.size_hint(),
            RspKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use std::time::Duration;

    async fn read(b: ReqBody) -> Vec<u8> {
        b.collect().await.expect("body").to_bytes().to_vec()
    }

    #[tokio::test]
    async fn small_known_bodies_are_read_once_and_replayed() {
        let mut src = BodySource::new(Full::new(Bytes::from_static(b"hello")), 1024).await;
        assert!(src.duplicate().is_some(), "a complete body can be mirrored");
        let first = src.lend().expect("first attempt");
        assert_eq!(first.size_hint().exact(), Some(5));
        assert_eq!(read(first).await, b"hello");
        src.reclaim(Duration::from_secs(1)).await;
        assert_eq!(read(src.lend().expect("second attempt")).await, b"hello");
    }

    fn stream(chunks: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BoxError> + Send {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn streamed_bodies_are_recorded_while_sent() {
        let mut src = BodySource::new(stream(&[b"ab", b"cd"]), 1024).await;
        assert!(src.duplicate().is_none(), "unknown until streamed");
        assert_eq!(read(src.lend().unwrap()).await, b"abcd");
        src.reclaim(Duration::from_secs(1)).await;
        assert_eq!(read(src.lend().unwrap()).await, b"abcd");
    }

    #[tokio::test]
    async fn a_partly_sent_body_is_replayed_then_continued() {
        let mut src = BodySource::new(stream(&[b"ab", b"cd", b"ef"]), 1024).await;
        let mut first = src.lend().unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        drop(first);
        src.reclaim(Duration::from_secs(1)).await;
        assert_eq!(read(src.lend().unwrap()).await, b"abcdef");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_not_replayed() {
        let mut src = BodySource::new(stream(&[b"abcd", b"efgh"]), 6).await;
        assert_eq!(read(src.lend().unwrap()).await, b"abcdefgh");
        src.reclaim(Duration::from_secs(1)).await;
        assert!(!src.replayable());
        assert!(src.lend().is_none());
    }

    #[tokio::test]
    async fn empty_bodies_need_no_recording() {
        let mut src = BodySource::new(http_body_util::Empty::<Bytes>::new(), 0).await;
        assert!(matches!(src, BodySource::Empty));
        assert!(src.lend().unwrap().is_end_stream());
        assert!(src.lend().unwrap().is_end_stream());
    }
}
