//! What bounds an inbound connection, from its HTTP connection manager, so that a slow, idle
//! or flooding peer cannot hold the server's resources:
//!
//! | bound | Envoy field | here |
//! |---|---|---|
//! | TLS handshake | `transport_socket_connect_timeout` | [`super::connection`] |
//! | a request's headers, from their first byte | `request_headers_timeout` | [`Watchdog`]: closed |
//! | no stream open | `common_http_protocol_options.idle_timeout` | [`Watchdog`]: drained |
//! | connection age | `common_http_protocol_options.max_connection_duration` | [`Watchdog`]: drained |
//! | a drain the peer does not finish | `drain_timeout` | [`Watchdog`]: closed once no stream is left |
//! | no activity on a stream | `stream_idle_timeout` | before the response: [`bounded`] (408/504); during its body: [`BodyTimers`] (stream reset); a peer that reads nothing: [`Watchdog`] (closed) |
//! | stream age | `common_http_protocol_options.max_stream_duration` | before the response: [`bounded`] (408/504); during its body: [`BodyTimers`] (stream reset) |
//! | header count and size | `max_headers_count`, `max_request_headers_kb` | hyper (HTTP/1: 431; HTTP/2 header size: reset), [`too_many_headers`] (HTTP/2 count: 431), [`small_headers_exceeded`] (HTTP/1 size under 8 KiB: 431) |
//! | HTTP/2 streams, windows, keepalive | `http2_protocol_options` | hyper's HTTP/2 settings |
//!
//! One timer per connection does the connection's bounds ([`Watchdog`]): it is polled with the
//! connection itself, reads the connection's [`Activity`] (a few atomics the I/O and the
//! requests update) and sleeps until the earliest deadline they give. A request's own timer is
//! armed only if its response is not ready at once.
//!
//! Where the bounds differ from Envoy's, they are never looser for a peer that does nothing:
//! - On HTTP/2, until a stream's response starts, its idle timer is reset by any activity on
//!   its connection (the application reads hyper's request body, which this library cannot
//!   observe per stream); the response body's idle timer is the stream's own.
//! - An HTTP/1 request head that arrives while the previous request is still being answered
//!   (pipelining) is bounded by the idle timeout, not the request-headers timeout.
//! - The 408/504 choice is made on whether the request had a body when it started (Envoy: on
//!   whether the request had ended by then).
//! - Too many headers on HTTP/2 get 431 (Envoy resets the stream; a service cannot ask hyper
//!   to).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use mesh_core::model::ConnectionLimits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The bounds of one connection, as its chain's connection manager gives them.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) connection: ConnectionLimits,
    pub(crate) stream_idle_timeout: Option<Duration>,
    pub(crate) max_stream_duration: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connection: ConnectionLimits::default(),
            stream_idle_timeout: Some(Duration::from_secs(300)),
            max_stream_duration: None,
        }
    }
}

impl Limits {
    /// hyper's server, set up with these bounds.
    pub(crate) fn http_builder(
        &self,
    ) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
        use hyper_util::rt::{TokioExecutor, TokioTimer};
        let c = &self.connection;
        let header_bytes = c.max_request_headers_kb as usize * 1024;
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        {
            let mut h1 = b.http1();
            // The request-headers timeout is the watchdog's (hyper's would also run while an
            // idle keep-alive connection waits, which Envoy's does not).
            h1.timer(TokioTimer::new()).header_read_timeout(None);
            // hyper answers 431 when a request head does not fit its read buffer (the request
            // line counts, as in Envoy); the buffer cannot be smaller than 8 KiB, so smaller
            // bounds are checked per request (`small_headers_exceeded`).
            h1.max_buf_size(header_bytes.max(8192));
            // hyper's own limit is Envoy's default (100); setting it moves hyper's header
            // array from the stack to the heap, so only a different value is set.
            // hyper allocates room for that many headers on every parse: no more than the
            // header bytes can hold (a header line takes at least 4), whatever is configured.
            if c.max_headers_count != 100 {
                h1.max_headers((c.max_headers_count as usize).min(header_bytes / 4));
            }
        }
        {
            let h2 = &c.http2;
            let mut b2 = b.http2();
            b2.timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
                // Envoy's default since 1.36 (hyper's is 200).
                .max_concurrent_streams(h2.max_concurrent_streams.unwrap_or(1024));
            if let Some(n) = h2.initial_stream_window_size {
                b2.initial_stream_window_size(n);
            }
            if let Some(n) = h2.initial_connection_window_size {
                b2.initial_connection_window_size(n);
            }
            if let (Some(interval), Some(timeout)) = (h2.keepalive_interval, h2.keepalive_timeout) {
                b2.keep_alive_interval(interval).keep_alive_timeout(timeout);
            }
        }
        b
    }
}

/// What a connection is doing, updated by its I/O ([`Watched`]) and its requests
/// ([`Activity::stream_started`]), read by its [`Watchdog`]. Times are milliseconds since the
/// connection opened.
pub(crate) struct Activity {
    opened: Instant,
    /// Last read or write of at least one byte.
    last_io: AtomicU64,
    /// When the last stream ended (or the connection opened).
    idle_since: AtomicU64,
    /// One more than when the first byte of a request head arrived; 0 when no head is
    /// being read.
    head_since: AtomicU64,
    in_flight: AtomicU32,
    /// HTTP/2 has no request heads to time on the connection: its streams' headers come in
    /// frames, bounded by the stream and keepalive timers.
    http2: AtomicBool,
    /// How many bytes of HTTP/2's preface the connection has sent so far; [`NOT_HTTP2`]
    /// once a byte differs. The connection is HTTP/2 only once all of it has come (as
    /// hyper decides), so a client cannot dodge the head timer by starting with `PRI`.
    preface: AtomicU8,
    /// The watchdog, woken when the last stream ends: that can happen outside the
    /// connection's task (HTTP/2 streams run in their own), and it may bring the idle
    /// deadline forward.
    watchdog: AtomicWaker,
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// [`Activity::preface`] once the connection's bytes are not HTTP/2's preface.
const NOT_HTTP2: u8 = u8::MAX;

impl Activity {
    /// A connection opened now; `http2` when ALPN already said so.
    pub(crate) fn new(http2: bool) -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last_io: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            http2: AtomicBool::new(http2),
            preface: AtomicU8::new(if http2 { H2_PREFACE.len() as u8 } else { 0 }),
            watchdog: AtomicWaker::new(),
        })
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn read(&self, bytes: &[u8]) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        // Reads are the connection task's alone: a plain load and store suffice.
        let matched = self.preface.load(Ordering::Relaxed);
        if (matched as usize) < H2_PREFACE.len() {
            let rest = &H2_PREFACE[matched as usize..];
            let n = bytes.len().min(rest.len());
            if bytes[..n] == rest[..n] {
                let matched = matched as usize + n;
                self.preface.store(matched as u8, Ordering::Relaxed);
                if matched == H2_PREFACE.len() {
                    self.http2.store(true, Ordering::Relaxed);
                    self.head_since.store(0, Ordering::Relaxed);
                    return;
                }
            } else {
                self.preface.store(NOT_HTTP2, Ordering::Relaxed);
            }
        }
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
        {
            self.head_since.store(now + 1, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// A request's head has been read: it is a stream until the guard is dropped (with its
    /// response body).
    pub(crate) fn stream_started(self: &Arc<Self>) -> StreamGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// When nothing was last read or written on the connection.
    pub(crate) fn last_io(&self) -> Instant {
        self.at(self.last_io.load(Ordering::Relaxed))
    }
}

/// An open stream; dropping it ends the stream.
pub(crate) struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now(), Ordering::Relaxed);
            self.0.watchdog.wake();
        }
    }
}

/// A connection's bytes, with their [`Activity`] noted as they move.
pub(crate) struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(crate) fn new(io: T, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What a connection's watchdog asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Finish what is in flight, then close (HTTP/2 GOAWAY; HTTP/1 closes after the
    /// current response): `idle_timeout`, `max_connection_duration`.
    Drain(&'static str),
    /// Close now: a request head or a stream that stalled.
    Close(&'static str),
}

/// The connection's timer: see the module's table.
pub(crate) struct Watchdog {
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    stream_idle: Option<Duration>,
    /// When the connection began to drain: the idle and age bounds no longer apply, but
    /// with no stream left it is closed `drain_timeout` later, even if the peer never
    /// acknowledges the drain (an HTTP/2 peer that does not answer the final PING).
    draining: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
}

/// How long after a stalled stream's own timer (which answers it) the watchdog closes its
/// connection: the answer gets that long to be written.
const STALLED_GRACE: Duration = Duration::from_secs(1);

impl Watchdog {
    pub(crate) fn new(activity: Arc<Activity>, limits: &Limits) -> Self {
        let sleep = Box::pin(tokio::time::sleep_until(activity.opened));
        Self {
            activity,
            limits: limits.connection.clone(),
            stream_idle: limits.stream_idle_timeout,
            draining: None,
            sleep,
        }
    }

    /// The connection has begun to drain for another reason (shutdown, a changed chain).
    pub(crate) fn draining(&mut self) {
        self.draining.get_or_insert_with(Instant::now);
    }

    /// The earliest bound, and what it asks for.
    fn next(&self) -> Option<(Instant, Expired)> {
        let a = &*self.activity;
        let l = &self.limits;
        let mut next: Option<(Instant, Expired)> = None;
        let mut consider = |at: Instant, e: Expired| {
            if next.is_none_or(|(n, _)| at < n) {
                next = Some((at, e));
            }
        };
        let head = a.head_since.load(Ordering::Relaxed);
        let in_flight = a.in_flight.load(Ordering::Relaxed);
        if head != 0 {
            // A head on its way: its own timeout; without one, the stream's idle timeout
            // (Envoy's stream exists from the head's first byte), else the idle timeout, so
            // a head trickled in byte by byte is always bounded.
            if let Some(t) = l.request_headers_timeout {
                consider(
                    a.at(head - 1) + t,
                    Expired::Close("request headers timeout"),
                );
            } else if let Some(t) = self.stream_idle {
                consider(a.last_io() + t, Expired::Close("stream idle timeout"));
            } else if let Some(t) = l.idle_timeout {
                consider(a.at(head - 1) + t, Expired::Close("idle timeout"));
            }
        }
        if in_flight > 0 {
            if let Some(t) = self.stream_idle {
                consider(
                    a.last_io() + t + STALLED_GRACE,
                    Expired::Close("stream idle timeout"),
                );
            }
        } else if let Some(since) = self.draining {
            consider(since + l.drain_timeout, Expired::Close("drain timeout"));
        } else if head == 0
            && let Some(t) = l.idle_timeout
        {
            consider(
                a.at(a.idle_since.load(Ordering::Relaxed)) + t,
                Expired::Drain("idle timeout"),
            );
        }
        if let (None, Some(t)) = (self.draining, l.max_connection_duration) {
            consider(a.opened + t, Expired::Drain("max connection duration"));
        }
        next
    }

    /// Ready when a bound is reached. Polled with the connection, after it (so what its
    /// I/O just changed is seen), and woken when its last stream ends; the timer is only
    /// moved earlier (a later deadline is found when the earlier one fires), so busy
    /// connections do not reset it on every poll.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        self.activity.watchdog.register(cx.waker());
        loop {
            let Some((at, why)) = self.next() else {
                return Poll::Pending;
            };
            if at <= Instant::now() {
                if matches!(why, Expired::Drain(_)) {
                    self.draining();
                }
                return Poll::Ready(why);
            }
            if at < self.sleep.deadline() || self.sleep.is_elapsed() {
                self.sleep.as_mut().reset(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// Why a request's own timer answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamTimeout {
    /// `stream_idle_timeout`.
    Idle,
    /// `max_stream_duration`.
    Duration,
}

/// `response`, unless the stream reaches its idle timeout (no activity on the connection) or
/// its max duration first. No timer is armed when the response is ready at once.
pub(crate) async fn bounded<F: Future>(
    response: F,
    activity: &Activity,
    limits: &Limits,
    started: Instant,
) -> Result<F::Output, StreamTimeout> {
    let deadline = || {
        let idle = limits.stream_idle_timeout.map(|t| {
            // The stream's own activity counts from its start.
            (activity.last_io().max(started) + t, StreamTimeout::Idle)
        });
        let age = limits
            .max_stream_duration
            .map(|t| (started + t, StreamTimeout::Duration));
        match (idle, age) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    };
    let Some((mut at, _)) = deadline() else {
        return Ok(response.await);
    };
    let mut response = std::pin::pin!(response);
    let sleep = tokio::time::sleep_until(at);
    let mut sleep = std::pin::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            done = response.as_mut() => return Ok(done),
            () = sleep.as_mut() => {
                let Some((next, why)) = deadline() else { unreachable!("limits do not change") };
                if next <= Instant::now() {
                    return Err(why);
                }
                at = next;
                sleep.as_mut().reset(at);
            }
        }
    }
}

/// A response body's own timers, once its headers are sent: the stream's max duration
/// (counted from the request's start) and its idle timeout (reset by each frame the body
/// yields). When one passes, the body fails and hyper resets the stream (HTTP/2) or closes the
/// connection (HTTP/1), as Envoy resets a stream whose response stalls or outlives
/// `max_stream_duration`. The sleep is allocated only once the body has to wait.
///
/// A peer that stops reading stops hyper from polling the body, and so these timers; the
/// connection's [`Watchdog`] closes such a connection, as it sees no I/O.
pub(crate) struct BodyTimers {
    idle: Option<Duration>,
    ends_at: Option<Instant>,
    /// When the stream was last seen active; `None` when it was active just before the
    /// current wait (set then, so a body that never waits never reads the clock).
    last_frame: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl BodyTimers {
    /// The timers of a response to a request that started at `started`; `None` when the
    /// connection manager sets neither.
    pub(crate) fn new(limits: &Limits, started: Instant) -> Option<Self> {
        if limits.stream_idle_timeout.is_none() && limits.max_stream_duration.is_none() {
            return None;
        }
        Some(Self {
            idle: limits.stream_idle_timeout,
            ends_at: limits.max_stream_duration.map(|d| started + d),
            last_frame: None,
            sleep: None,
        })
    }

    fn deadline(&mut self) -> Option<(Instant, StreamTimeout)> {
        let idle = self.idle.map(|t| {
            let last = *self.last_frame.get_or_insert_with(Instant::now);
            (last + t, StreamTimeout::Idle)
        });
        let age = self.ends_at.map(|t| (t, StreamTimeout::Duration));
        match (idle, age) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The body yielded a frame (or its headers went): the stream is not idle.
    pub(crate) fn frame_sent(&mut self) {
        self.last_frame = None;
    }

    /// Called while the body waits: ready with the reason once a bound has passed.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<StreamTimeout> {
        let Some((at, why)) = self.deadline() else {
            return Poll::Pending;
        };
        match &mut self.sleep {
            Some(sleep) if sleep.deadline() != at => sleep.as_mut().reset(at),
            Some(_) => {}
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        let sleep = self.sleep.as_mut().expect("just set");
        sleep.as_mut().poll(cx).map(|()| why)
    }
}

/// The error a response body fails with when one of its [`BodyTimers`] passes.
#[derive(Debug)]
pub(crate) struct BodyTimedOut(pub(crate) StreamTimeout);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            StreamTimeout::Idle => "the response stream was idle for stream_idle_timeout",
            StreamTimeout::Duration => "the stream reached max_stream_duration",
        })
    }
}

impl std::error::Error for BodyTimedOut {}

/// Whether an HTTP/1 request's headers exceed a `max_request_headers_kb` under 8 KiB, which
/// hyper cannot hold to (its read buffer has an 8 KiB floor). Counted as Envoy sizes a header
/// map: the method, the path and every header's name and value. Larger bounds are hyper's.
pub(crate) fn small_headers_exceeded<B>(req: &http::Request<B>, limits: &Limits) -> bool {
    let kb = limits.connection.max_request_headers_kb as usize;
    if kb >= 8 || req.version() == http::Version::HTTP_2 {
        return false;
    }
    let size = req.method().as_str().len()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum::<usize>();
    size > kb * 1024
}

/// Whether an HTTP/2 request carries more headers than `max_headers_count` (hyper enforces
/// it on HTTP/1 itself, answering 431).
pub(crate) fn too_many_headers(headers: &http::HeaderMap, limits: &Limits) -> bool {
    headers.len() > limits.connection.max_headers_count as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
        let mut l = Limits::default();
        f(&mut l);
        l
    }

    fn expiry(w: &mut Watchdog) -> Poll<Expired> {
        let waker = futures_util::task::noop_waker();
        w.poll_expired(&mut Context::from_waker(&waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_head_is_timed_from_its_first_byte() {
        let a = Activity::new(false);
        let l = limits(|l| l.connection.request_headers_timeout = Some(Duration::from_secs(10)));
        let mut w = Watchdog::new(a.clone(), &l);
        // Idle for longer than the headers timeout: nothing, the idle timeout is an hour.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(expiry(&mut w), Poll::Pending);
        a.read(b"GET / HT");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(expiry(&mut w), Poll::Pending);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            expiry(&mut w),
            Poll::Ready(Expired::Close("request headers timeout"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_head_stops_the_headers_timer_and_http2_never_starts_it() {
        let a = Activity::new(false);
        let mut w = Watchdog::new(a.clone(), &Limits::default());
        a.read(b"GET / HTTP/1.1\r\n\r\n");
        let stream = a.stream_started();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(
            expiry(&mut w),
            Poll::Pending,
            "a stream is open, and active"
        );
        drop(stream);

        let h2 = Activity::new(false);
        let mut w = Watchdog::new(h2.clone(), &Limits::default());
        h2.read(H2_PREFACE);
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(expiry(&mut w), Poll::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_drains_after_the_idle_timeout_counted_from_its_last_stream() {
        let a = Activity::new(false);
        let l = limits(|l| l.connection.idle_timeout = Some(Duration::from_secs(60)));
        let mut w = Watchdog::new(a.clone(), &l);
        tokio::time::advance(Duration::from_secs(50)).await;
        a.read(b"GET / HTTP/1.1\r\n\r\n");
        let stream = a.stream_started();
        tokio::time::advance(Duration::from_secs(20)).await;
        drop(stream);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(expiry(&mut w), Poll::Pending);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(expiry(&mut w), Poll::Ready(Expired::Drain("idle timeout")));
        assert_eq!(expiry(&mut w), Poll::Pending, "a drain is asked for once");
        // A peer that never finishes the drain (an HTTP/2 peer silent to the final PING).
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(expiry(&mut w), Poll::Ready(Expired::Close("drain timeout")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_starting_like_the_http2_preface_is_still_timed() {
        let a = Activity::new(false);
        let l = limits(|l| l.connection.request_headers_timeout = Some(Duration::from_secs(10)));
        let mut w = Watchdog::new(a.clone(), &l);
        a.read(b"PRI");
        a.read(b" / HTTP/1.1\r\nhost: a");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            expiry(&mut w),
            Poll::Ready(Expired::Close("request headers timeout"))
        );
        // The preface in pieces is HTTP/2 once whole: its later frames start no head timer.
        let h2 = Activity::new(false);
        let mut w = Watchdog::new(h2.clone(), &l);
        h2.read(&H2_PREFACE[..2]);
        h2.read(&H2_PREFACE[2..]);
        h2.read(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(expiry(&mut w), Poll::Pending);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_headers_timeout_a_trickled_head_is_bounded_by_the_stream_idle_timeout() {
        let a = Activity::new(false);
        let l = limits(|l| {
            l.connection.request_headers_timeout = None;
            l.stream_idle_timeout = Some(Duration::from_secs(20));
        });
        let mut w = Watchdog::new(a.clone(), &l);
        a.read(b"GET / HTTP/1.1\r\n");
        tokio::time::advance(Duration::from_secs(19)).await;
        a.read(b"x");
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(expiry(&mut w), Poll::Pending, "each byte is activity");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            expiry(&mut w),
            Poll::Ready(Expired::Close("stream idle timeout"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_drains_at_its_max_duration_even_when_busy() {
        let a = Activity::new(true);
        let l = limits(|l| l.connection.max_connection_duration = Some(Duration::from_secs(5)));
        let mut w = Watchdog::new(a.clone(), &l);
        let _stream = a.stream_started();
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            a.wrote();
            assert_eq!(expiry(&mut w), Poll::Pending);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            expiry(&mut w),
            Poll::Ready(Expired::Drain("max connection duration"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_closes_its_connection_after_its_answer_had_time_to_go() {
        let a = Activity::new(true);
        let l = limits(|l| l.stream_idle_timeout = Some(Duration::from_secs(10)));
        let mut w = Watchdog::new(a.clone(), &l);
        let _stream = a.stream_started();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(expiry(&mut w), Poll::Pending);
        tokio::time::advance(STALLED_GRACE).await;
        assert_eq!(
            expiry(&mut w),
            Poll::Ready(Expired::Close("stream idle timeout"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_response_is_answered_by_the_first_of_idle_and_max_duration() {
        let a = Activity::new(false);
        let slow = tokio::time::sleep(Duration::from_secs(3600));
        let l = limits(|l| {
            l.stream_idle_timeout = Some(Duration::from_secs(10));
            l.max_stream_duration = Some(Duration::from_secs(25));
        });
        let started = Instant::now();
        // Activity on the connection keeps the stream from idling, not from ageing.
        let keep_busy = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                a.wrote();
            }
        };
        let r = tokio::select! {
            r = bounded(slow, &a, &l, started) => r,
            () = keep_busy => unreachable!(),
        };
        assert_eq!(r, Err(StreamTimeout::Duration));
        assert_eq!(started.elapsed(), Duration::from_secs(25));

        let idle = bounded(
            tokio::time::sleep(Duration::from_secs(3600)),
            &a,
            &l,
            Instant::now(),
        )
        .await;
        assert_eq!(idle, Err(StreamTimeout::Idle));
        assert_eq!(
            bounded(async { 7 }, &a, &l, Instant::now()).await,
            Ok(7),
            "a ready response arms no timer"
        );
    }

    fn body_expiry(t: &mut BodyTimers) -> Poll<StreamTimeout> {
        let waker = futures_util::task::noop_waker();
        t.poll_expired(&mut Context::from_waker(&waker))
    }

    /// A response body's idle timer restarts with each frame; its max duration counts from
    /// the request's start, whatever the frames.
    #[tokio::test(start_paused = true)]
    async fn a_response_body_times_out_when_idle_or_too_old() {
        let idle = limits(|l| l.stream_idle_timeout = Some(Duration::from_millis(300)));
        let mut t = BodyTimers::new(&idle, Instant::now()).expect("armed");
        assert_eq!(body_expiry(&mut t), Poll::Pending, "the first wait");
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(250)).await;
            t.frame_sent();
            assert_eq!(body_expiry(&mut t), Poll::Pending, "a wait after a frame");
        }
        tokio::time::advance(Duration::from_millis(299)).await;
        assert_eq!(body_expiry(&mut t), Poll::Pending);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(body_expiry(&mut t), Poll::Ready(StreamTimeout::Idle));

        let aged = limits(|l| {
            l.stream_idle_timeout = Some(Duration::from_millis(300));
            l.max_stream_duration = Some(Duration::from_secs(1));
        });
        let started = Instant::now();
        tokio::time::advance(Duration::from_millis(400)).await;
        let mut t = BodyTimers::new(&aged, started).expect("armed");
        for _ in 0..2 {
            tokio::time::advance(Duration::from_millis(250)).await;
            t.frame_sent();
            assert_eq!(body_expiry(&mut t), Poll::Pending);
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(body_expiry(&mut t), Poll::Ready(StreamTimeout::Duration));

        let none = limits(|l| l.stream_idle_timeout = None);
        assert!(
            BodyTimers::new(&none, Instant::now()).is_none(),
            "nothing to time"
        );
    }
}
