//! One accepted connection, served: its chain opened ([`connection`](super::connection)),
//! then hyper over it, with its watchdog (idle, age and header bounds), its drain when the
//! server drains or its chain changes, and each request handed to
//! [`request`](super::request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::filters::HttpFilters;
use super::listener::Inbound;
use super::request::{self, RequestContext};
use super::{App, PeerIdentity, connection, limits};
use crate::body::BoxError;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::{Labels, Security};
use crate::telemetry::workload::Peer;

/// A connection just accepted, and what it is served with.
pub(super) struct Accepted {
    pub(super) inbound: Arc<Inbound>,
    pub(super) live: Arc<ArcSwapOption<Inbound>>,
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) drained: tokio::sync::watch::Receiver<u64>,
}

pub(super) async fn connection<S: App>(accepted: Accepted, tcp: TcpStream, app: S) {
    let peer = accepted.peer;
    if let Err(e) = serve_connection(accepted, tcp, app).await {
        tracing::debug!(%peer, error = %e, "inbound connection ended");
    }
}

async fn serve_connection<S: App>(
    accepted: Accepted,
    tcp: TcpStream,
    app: S,
) -> Result<(), BoxError> {
    let Accepted {
        inbound,
        live,
        telemetry,
        peer,
        local,
        drained,
    } = accepted;
    // The connection's own destination: with a wildcard bind (0.0.0.0), the listener's
    // address says nothing of it, and chains and `destination_ip` rules need it.
    let local = tcp.local_addr().unwrap_or(local);
    let opened = connection::open(&inbound, tcp, peer, local).await?;
    let filters = LiveFilters {
        live,
        fingerprint: opened.chain.fingerprint,
        last: arc_swap::ArcSwap::new(opened.chain.filters.clone()),
        closing: Arc::new(tokio::sync::Notify::new()),
    };
    let conn = Connection {
        local,
        filters,
        telemetry,
        services: inbound.services.clone(),
        labels: ArcSwapOption::empty(),
    };
    let (identity, sni, _slots) = (opened.identity, opened.sni, opened.slots);
    let limits = opened.chain.limits.clone();
    match opened.io {
        connection::Io::Plain(tcp) => {
            let activity = limits::Activity::new(false);
            let io = TokioIo::new(limits::Watched::new(tcp, activity.clone()));
            serve_http(io, identity, sni, conn, app, drained, (limits, activity)).await
        }
        connection::Io::Tls(tls) => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = limits::Activity::new(h2);
            let io = TokioIo::new(limits::Watched::new(*tls, activity.clone()));
            serve_http(io, identity, sni, conn, app, drained, (limits, activity)).await
        }
    }
}

/// What a connection's requests share.
pub(super) struct Connection {
    pub(super) local: SocketAddr,
    pub(super) filters: LiveFilters,
    pub(super) telemetry: Arc<Telemetry>,
    /// The services the workload serves, as its listener names them (metric labels).
    services: Arc<[mesh_core::model::ServiceRef]>,
    /// The metric labels of the authority this connection's requests used last (a
    /// connection almost always serves one).
    labels: ArcSwapOption<(Box<str>, Arc<Labels>)>,
}

impl Connection {
    pub(super) fn labels(&self, identity: &PeerIdentity, authority: &str) -> Arc<Labels> {
        if let Some(cached) = &*self.labels.load()
            && &*cached.0 == authority
        {
            return cached.1.clone();
        }
        let caller = identity
            .spiffe_id
            .as_ref()
            .map_or_else(Peer::unknown, Peer::from_principal);
        let labels = self
            .telemetry
            .inbound_labels(caller, &self.services, authority);
        self.labels
            .store(Some(Arc::new((authority.into(), labels.clone()))));
        labels
    }
}

async fn serve_http<I, S: App>(
    io: I,
    identity: PeerIdentity,
    sni: Option<Arc<str>>,
    conn: Connection,
    app: S,
    mut drained: tokio::sync::watch::Receiver<u64>,
    (limits, activity): (limits::Limits, Arc<limits::Activity>),
) -> Result<(), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let security = if identity.spiffe_id.is_some() {
        Security::MutualTls
    } else {
        Security::None
    };
    let closing = conn.filters.closing.clone();
    let http = limits.http_builder();
    let mut watchdog = limits::Watchdog::new(activity.clone(), &limits);
    let ctx = Arc::new(RequestContext {
        identity,
        sni,
        conn,
        activity: activity.clone(),
        limits,
        security,
    });
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let start = Instant::now();
        let stream = ctx.activity.stream_started();
        // Policy is read per request: an AuthorizationPolicy change applies to open
        // connections too (unless the chain itself changed: then the connection drains).
        let current = ctx.conn.filters.current();
        request::handle(req, ctx.clone(), app.clone(), start, stream, current)
    });
    let served = http.serve_connection(io, svc);
    let mut served = std::pin::pin!(served);
    let mut draining = false;
    loop {
        let drain = tokio::select! {
            // In this order: the watchdog reads what the connection's I/O just did.
            biased;
            done = served.as_mut() => return done,
            // Also when the server is gone: a connection does not outlive its server's drain.
            _ = drained.changed(), if !draining => "the server drains",
            // Its filter chain changed or went away: finish what was started, then close, as
            // Envoy drains the connections of a chain it replaces.
            () = closing.notified(), if !draining => "its filter chain changed",
            expired = std::future::poll_fn(|cx| watchdog.poll_expired(cx)) => match expired {
                limits::Expired::Drain(why) => why,
                limits::Expired::Close(why) => return Err(BoxError::from(why)),
            },
        };
        if !draining {
            tracing::debug!(why = drain, "connection draining");
            draining = true;
            watchdog.draining();
            served.as_mut().graceful_shutdown();
        }
    }
}

/// A connection's HTTP filters, looked up in the current listener.
pub(super) struct LiveFilters {
    live: Arc<ArcSwapOption<Inbound>>,
    /// What the chain was when the connection was accepted (its match, TLS, network filters
    /// and whether it serves): a policy update keeps it, a different chain does not.
    fingerprint: u64,
    /// The filters the connection served its last request with: kept while it drains, so
    /// a drain never goes back to an older, weaker policy.
    last: arc_swap::ArcSwap<HttpFilters>,
    /// Asks the connection to drain.
    pub(super) closing: Arc<tokio::sync::Notify>,
}

impl LiveFilters {
    /// The chain's filters now: a policy update applies to open connections. When the
    /// listener no longer has the same chain (it went, or its match, TLS or network filters
    /// changed, or it no longer serves), the connection keeps the filters it last had for
    /// what is in flight, and drains, as Envoy drains the connections of a chain it replaces.
    pub(super) fn current(&self) -> Arc<HttpFilters> {
        let live = self.live.load();
        match live.as_ref().and_then(|i| i.chain_like(self.fingerprint)) {
            Some(c) => {
                if !Arc::ptr_eq(&self.last.load(), &c.filters) {
                    self.last.store(c.filters.clone());
                }
                c.filters.clone()
            }
            None => {
                self.closing.notify_one();
                self.last.load_full()
            }
        }
    }
}
