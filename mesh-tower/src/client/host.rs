//! Upstream hosts and their connection pools.
//!
//! A [`Host`] is one endpoint address of one cluster. It outlives snapshots: a new endpoint
//! list reuses the `Host` of every address it still names, so pools, outstanding-request counts
//! and outlier state carry over.
//!
//! Why our own pool rather than `hyper_util`'s legacy client: that client keys its pool by the
//! request URI's authority and connects to it, so to pin a request to the endpoint the balancer
//! chose, the URI would have to carry the endpoint's address, and HTTP/2 would then send that
//! address as `:authority` instead of the service's name. Envoy sends the service's name; so do
//! we. The pool is small: HTTP/2 shares one connection per host; HTTP/1 keeps idle connections
//! in a lock-free queue and opens more up to the cluster's `max_connections`, after which
//! requests wait as pending (bounded by `max_pending_requests`), like Envoy's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::model::{CircuitBreakers, Http2Limits};

use super::tls::{Io, Origination};
use crate::body::ReqBody;
use crate::counters::{Counters, HostActive};
use crate::rules::outlier::HostOutlier;

/// Idle HTTP/1 connections kept per host; more are closed when they become idle.
const MAX_IDLE_PER_HOST: usize = 256;

/// One upstream endpoint.
#[derive(Debug)]
pub(crate) struct Host {
    /// Where to connect.
    pub(crate) addr: SocketAddr,
    /// `addr` as text (`10.0.0.1:9080`, `[::1]:80`): the key for hashing and the value of
    /// `host_rewrite` "auto".
    pub(crate) addr_text: Box<str>,
    /// Requests in flight (least-request balancing).
    pub(crate) active: AtomicU32,
    /// Passive health.
    pub(crate) outlier: HostOutlier,
    pool: Pool,
}

impl HostActive for Host {
    fn active(&self) -> &AtomicU32 {
        &self.active
    }
}

#[derive(Debug)]
struct Pool {
    idle: ArrayQueue<H1Conn>,
    h2: ArcSwapOption<H2Conn>,
}

#[derive(Debug)]
struct H1Conn {
    tx: http1::SendRequest<ReqBody>,
    used: u32,
    opened: Instant,
    /// When it went back to the pool (kept only when an idle timeout applies).
    idle_since: Option<Instant>,
}

impl H1Conn {
    /// Whether the cluster's connection lifetime is over: idle or open too long (Envoy's
    /// `idle_timeout` and `max_connection_duration`, checked when the connection would be
    /// reused, so no timer runs per connection).
    fn expired(&self, s: &ConnectSettings) -> bool {
        s.idle_timeout
            .zip(self.idle_since)
            .is_some_and(|(t, since)| since.elapsed() >= t)
            || s.max_connection_duration
                .is_some_and(|d| self.opened.elapsed() >= d)
    }
}

/// The shared HTTP/2 connection to a host, with what its lifetime limits need.
#[derive(Debug)]
struct H2Conn {
    tx: http2::SendRequest<ReqBody>,
    opened: Instant,
    /// Streams started on it (counted only under `max_requests_per_connection`).
    streams: AtomicU32,
    /// Milliseconds after `opened` when it last carried a stream (kept only under an idle
    /// timeout).
    last_used_ms: AtomicU64,
}

impl H2Conn {
    /// Whether new streams should go to a new connection: this one is closed, idle or open
    /// too long, or has carried its share of requests. It is not closed here: streams in
    /// flight finish, and it closes when the last of them drops it.
    fn spent(&self, s: &ConnectSettings) -> bool {
        if self.tx.is_closed() {
            return true;
        }
        let age = || self.opened.elapsed();
        s.max_connection_duration.is_some_and(|d| age() >= d)
            || s.max_requests_per_connection
                .is_some_and(|max| self.streams.load(Ordering::Relaxed) >= max)
            || s.idle_timeout.is_some_and(|t| {
                let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
                age().saturating_sub(last) >= t
            })
    }

    /// Records a stream starting.
    fn used(&self, s: &ConnectSettings) {
        if s.max_requests_per_connection.is_some() {
            self.streams.fetch_add(1, Ordering::Relaxed);
        }
        if s.idle_timeout.is_some() {
            let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_used_ms.store(ms, Ordering::Relaxed);
        }
    }
}

/// Which HTTP version an attempt speaks upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// How connections to a cluster's hosts are made.
#[derive(Clone, Debug)]
pub(crate) struct ConnectSettings {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_requests_per_connection: Option<u32>,
    /// Connections idle this long are not reused (`idle_timeout`).
    pub(crate) idle_timeout: Option<Duration>,
    /// Connections open this long take no new requests (`max_connection_duration`).
    pub(crate) max_connection_duration: Option<Duration>,
    /// Windows and PING keepalive of HTTP/2 connections.
    pub(crate) http2: Http2Limits,
    pub(crate) transport: Transport,
}

/// Plaintext, TLS, or TLS settings that cannot be honoured (every connect fails with why).
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    Plain,
    Tls(Arc<Origination>),
    Broken(Arc<str>),
}

impl PartialEq for ConnectSettings {
    fn eq(&self, other: &Self) -> bool {
        self.connect_timeout == other.connect_timeout
            && self.max_requests_per_connection == other.max_requests_per_connection
            && self.idle_timeout == other.idle_timeout
            && self.max_connection_duration == other.max_connection_duration
            && self.http2 == other.http2
            && match (&self.transport, &other.transport) {
                (Transport::Plain, Transport::Plain) => true,
                (Transport::Tls(a), Transport::Tls(b)) => Arc::ptr_eq(a, b),
                (Transport::Broken(a), Transport::Broken(b)) => a == b,
                _ => false,
            }
    }
}

/// Why an attempt got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Connecting failed or timed out.
    Connect(std::io::Error),
    /// `max_pending_requests` were already waiting for a connection.
    Overflow,
    /// The connection closed before the response.
    ConnectionTerminated(hyper::Error),
    /// The upstream reset the stream; `refused` when it refused it before processing
    /// (HTTP/2 `REFUSED_STREAM`), which is always safe to retry.
    Reset { refused: bool, error: hyper::Error },
    /// The upstream's answer was not valid HTTP.
    Protocol(hyper::Error),
    /// The request body failed.
    Body(hyper::Error),
}

/// Envoy's reset reasons, as its local replies word them.
impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                f.write_str("connection timeout")
            }
            // Envoy 1.40's wording; the OS error is this error's source (and logged).
            Self::Connect(_) => f.write_str("remote connection failure"),
            Self::Overflow => f.write_str("overflow"),
            Self::ConnectionTerminated(_) => f.write_str("connection termination"),
            Self::Reset { refused: true, .. } => f.write_str("remote refused stream reset"),
            Self::Reset { .. } => f.write_str("remote reset"),
            Self::Protocol(_) => f.write_str("protocol error"),
            Self::Body(_) => f.write_str("local reset"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Overflow => None,
            Self::ConnectionTerminated(e)
            | Self::Reset { error: e, .. }
            | Self::Protocol(e)
            | Self::Body(e) => Some(e),
        }
    }
}

impl SendError {
    fn classify(e: hyper::Error) -> Self {
        if e.is_parse() || e.is_parse_status() {
            return Self::Protocol(e);
        }
        if e.is_body_write_aborted() || e.is_user() {
            return Self::Body(e);
        }
        // hyper does not expose h2's reason codes; its message is stable ("refused stream").
        let text = format!("{e:?}");
        if text.contains("REFUSED_STREAM") || text.contains("refused stream") {
            return Self::Reset {
                refused: true,
                error: e,
            };
        }
        if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
            return Self::ConnectionTerminated(e);
        }
        Self::Reset {
            refused: false,
            error: e,
        }
    }
}

impl Host {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            addr_text: addr.to_string().into(),
            active: AtomicU32::new(0),
            outlier: HostOutlier::default(),
            pool: Pool {
                idle: ArrayQueue::new(MAX_IDLE_PER_HOST),
                h2: ArcSwapOption::empty(),
            },
        }
    }

    /// Sends `req` (its URI already in the form `protocol` needs) on a pooled or new connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<ReqBody>,
        protocol: Protocol,
        settings: &ConnectSettings,
        counters: &Arc<Counters>,
        limits: &CircuitBreakers,
    ) -> Result<Response<Incoming>, SendError> {
        match protocol {
            Protocol::Http1 => self.send_h1(req, settings, counters, limits).await,
            Protocol::Http2 => self.send_h2(req, settings, counters, limits).await,
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        req: Request<ReqBody>,
        settings: &ConnectSettings,
        counters: &Arc<Counters>,
        limits: &CircuitBreakers,
    ) -> Result<Response<Incoming>, SendError> {
        let mut conn = self.checkout_h1(settings, counters, limits).await?;
        conn.used += 1;
        let last = settings
            .max_requests_per_connection
            .is_some_and(|max| conn.used >= max);
        let mut req = req;
        if last {
            // The connection's last request: ask the server to close it when it answers, as
            // Envoy does, so the connection (and its `max_connections` slot) ends with the
            // response rather than whenever the idle connection is noticed.
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let rsp = conn.tx.send_request(req).await;
        // The connection is free again once the response body has been read; a task waits for
        // that and puts it back (hyper's own pooled client does the same).
        let host = self.clone();
        let counters = counters.clone();
        let reusable = settings
            .max_requests_per_connection
            .is_none_or(|max| conn.used < max);
        let idle_timeout = settings.idle_timeout.is_some();
        if rsp.is_ok() && reusable {
            // Always through the task, never `is_ready()` first (tried: it saved a task per
            // request): hyper's HTTP/1 client is ready for the next request as soon as this
            // response's head is in, so a request taken then would be pipelined behind a body
            // the caller may still drop unread, which closes the connection under it.
            tokio::spawn(async move {
                if conn.tx.ready().await.is_ok() {
                    conn.idle_since = idle_timeout.then(Instant::now);
                    host.release(conn, &counters);
                }
            });
        }
        rsp.map_err(SendError::classify)
    }

    /// Puts an idle HTTP/1 connection back and wakes a request waiting for one.
    fn release(&self, conn: H1Conn, counters: &Counters) {
        let _ = self.pool.idle.push(conn);
        counters.freed.notify_waiters();
    }

    async fn checkout_h1(
        &self,
        settings: &ConnectSettings,
        counters: &Arc<Counters>,
        limits: &CircuitBreakers,
    ) -> Result<H1Conn, SendError> {
        // The common case, without registering for a wake-up (which takes Notify's lock).
        while let Some(c) = self.pool.idle.pop() {
            if c.tx.is_ready() && !c.expired(settings) {
                return Ok(c);
            }
        }
        let mut pending = None;
        loop {
            // Register for a wake-up before looking, so a connection freed in between is seen.
            let freed = counters.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            while let Some(c) = self.pool.idle.pop() {
                if c.tx.is_ready() && !c.expired(settings) {
                    return Ok(c);
                }
            }
            if counters.try_connection(limits) {
                // Boxed: connecting is rare, and its future (TCP, TLS and HTTP/1 handshakes)
                // would otherwise be part of every request's future, which is moved as a
                // whole (perf showed the copies).
                return Box::pin(self.open_h1(settings, counters)).await;
            }
            if pending.is_none() {
                pending = Some(counters.try_pending(limits).ok_or(SendError::Overflow)?);
            }
            freed.await;
        }
    }

    /// Opens a new HTTP/1 connection (its slot is already reserved).
    async fn open_h1(
        &self,
        settings: &ConnectSettings,
        counters: &Arc<Counters>,
    ) -> Result<H1Conn, SendError> {
        let tx = open(self.addr, settings, counters, http1::handshake).await?;
        Ok(H1Conn {
            tx,
            used: 0,
            opened: Instant::now(),
            idle_since: None,
        })
    }

    async fn send_h2(
        &self,
        req: Request<ReqBody>,
        settings: &ConnectSettings,
        counters: &Arc<Counters>,
        limits: &CircuitBreakers,
    ) -> Result<Response<Incoming>, SendError> {
        let conn = match self.pool.h2.load_full() {
            Some(c) if !c.spent(settings) => c,
            // Boxed for the same reason as `open_h1`: only the first request connects.
            _ => Box::pin(self.connect_h2(settings, counters, limits)).await?,
        };
        conn.used(settings);
        let mut tx = http2::SendRequest::clone(&conn.tx);
        drop(conn);
        // Waits for stream capacity (the server's SETTINGS_MAX_CONCURRENT_STREAMS).
        tx.ready().await.map_err(SendError::classify)?;
        tx.send_request(req).await.map_err(SendError::classify)
    }

    async fn connect_h2(
        &self,
        settings: &ConnectSettings,
        counters: &Arc<Counters>,
        limits: &CircuitBreakers,
    ) -> Result<Arc<H2Conn>, SendError> {
        loop {
            let freed = counters.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.pool.h2.load_full() {
                Some(c) if !c.spent(settings) => return Ok(c),
                // Out of the pool, so it closes once its last stream ends and gives its
                // connection slot back (kept, it would hold the slot a replacement waits for).
                Some(spent) => {
                    self.pool.h2.compare_and_swap(&spent, None);
                }
                None => {}
            }
            if counters.try_connection(limits) {
                let tx = open(self.addr, settings, counters, |io| {
                    http2_builder(&settings.http2).handshake(io)
                })
                .await?;
                // Concurrent first requests may each connect; the last one stored is shared and
                // the others close when their request ends.
                let conn = Arc::new(H2Conn {
                    tx,
                    opened: Instant::now(),
                    streams: AtomicU32::new(0),
                    last_used_ms: AtomicU64::new(0),
                });
                self.pool.h2.store(Some(conn.clone()));
                return Ok(conn);
            }
            let _pending = counters.try_pending(limits).ok_or(SendError::Overflow)?;
            freed.await;
        }
    }
}

/// Connects and runs the HTTP `handshake` on the connection, whose task then runs until it
/// closes. The connection's slot (reserved by the caller) is released when it closes, or at
/// once if connecting or the handshake fails.
async fn open<S, C, H>(
    addr: SocketAddr,
    settings: &ConnectSettings,
    counters: &Arc<Counters>,
    handshake: impl FnOnce(TokioIo<Io>) -> H,
) -> Result<S, SendError>
where
    H: std::future::Future<Output = hyper::Result<(S, C)>>,
    C: std::future::Future + Send + 'static,
{
    let io = connect(addr, settings).await.map_err(|e| {
        counters.connection_closed();
        SendError::Connect(e)
    })?;
    let (tx, conn) = handshake(io).await.map_err(|e| {
        counters.connection_closed();
        SendError::Connect(std::io::Error::other(e))
    })?;
    let counters = counters.clone();
    tokio::spawn(async move {
        let _ = conn.await;
        counters.connection_closed();
    });
    Ok(tx)
}

/// Opens a connection: TCP, then TLS when the cluster originates it, both within the
/// cluster's connect timeout.
async fn connect(
    addr: SocketAddr,
    settings: &ConnectSettings,
) -> Result<TokioIo<Io>, std::io::Error> {
    let timeout = settings.connect_timeout;
    let open = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        match &settings.transport {
            Transport::Plain => Ok(Io::Plain(tcp)),
            Transport::Tls(tls) => tls.connect(tcp).await,
            Transport::Broken(why) => Err(std::io::Error::other(format!("TLS settings: {why}"))),
        }
    };
    let io = tokio::time::timeout(timeout, open).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect timeout after {timeout:?}"),
        )
    })??;
    Ok(TokioIo::new(io))
}

impl Host {
    /// Drops pooled connections (used when the cluster's connection settings change).
    pub(crate) fn clear_pool(&self) {
        while self.pool.idle.pop().is_some() {}
        self.pool.h2.store(None);
    }
}

/// Counts a host's in-flight requests for tests and dumps.
impl Host {
    pub(crate) fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }
}

/// What the cluster's balancer table reads from a host.
impl crate::rules::balance::Balanced for Arc<Host> {
    fn ring_key(&self) -> &str {
        &self.addr_text
    }

    fn active_requests(&self) -> u32 {
        Host::active_requests(self)
    }

    fn is_ejected(&self) -> bool {
        self.outlier.is_ejected()
    }
}

/// An HTTP/2 client connection with the cluster's settings: windows (hyper's when unset) and,
/// when configured, a PING every `interval` that closes the connection when unanswered for
/// `timeout`, as Envoy's `connection_keepalive`.
fn http2_builder(limits: &Http2Limits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new());
    if let Some(n) = limits.initial_stream_window_size {
        b.initial_stream_window_size(n);
    }
    if let Some(n) = limits.initial_connection_window_size {
        b.initial_connection_window_size(n);
    }
    if let (Some(interval), Some(timeout)) = (limits.keepalive_interval, limits.keepalive_timeout) {
        b.keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
    }
    b
}
