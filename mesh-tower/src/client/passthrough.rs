//! Istio's PassthroughCluster: with the `ALLOW_ANY` outbound traffic policy, requests for hosts
//! the mesh does not know go straight to the host named by the authority, with no mesh policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use http_body::Body;
use mesh_core::model::CircuitBreakers;

use super::attempt::{UpstreamTarget, upstream_request};
use super::host::{ConnectSettings, Host, Protocol, Transport};
use super::route;
use crate::body::{BodySource, BoxError, RspBody};
use crate::counters::{Counters, Inflight};
use crate::flags::ResponseFlags;
use crate::respond::{self, RESET_BEFORE_HEADERS, ResponseInfo};

/// Istio's connect timeout for the passthrough cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Direct connections to hosts outside the mesh, pooled per resolved address. An `https`
/// request is sent over TLS verified against the system's roots and for its host name:
/// never in plaintext, never to a server that cannot prove it is that host.
#[derive(Debug, Default)]
pub(crate) struct Passthrough {
    hosts: ArcSwap<HashMap<Box<str>, Arc<Host>>>,
    /// TLS settings per `host|alpn`, made once.
    tls: ArcSwap<HashMap<Box<str>, Transport>>,
    counters: Arc<Counters>,
}

impl Passthrough {
    pub(crate) async fn forward<B>(&self, authority: &str, req: Request<B>) -> Response<RspBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let grpc = respond::is_grpc(req.headers());
        let mut info = ResponseInfo {
            cluster: Some(Arc::from("PassthroughCluster")),
            ..ResponseInfo::default()
        };
        let https = req.uri().scheme_str() == Some("https");
        let host = match self.host(authority, https).await {
            Ok(h) => h,
            Err(e) => {
                info.flags |= ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
                return respond::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{RESET_BEFORE_HEADERS}connection failure: resolving {authority}: {e}"),
                    grpc,
                    info,
                );
            }
        };
        info.upstream = Some(host.addr);
        info.attempts = 1;
        let limits = CircuitBreakers {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: 0,
            retry_budget: None,
        };
        self.counters.try_request(&limits);
        let mut inflight = Inflight::new(self.counters.clone());
        inflight.on_host(host.clone());
        let protocol = if req.version() == http::Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let (parts, body) = req.into_parts();
        let mut body = BodySource::new(body, 0).await;
        let Some(body) = body.lend() else {
            info.flags |= ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            return respond::local(
                StatusCode::BAD_REQUEST,
                "request body could not be read",
                grpc,
                info,
            );
        };
        // The authority as the caller wrote it (without the default port the lookup added).
        let Some(target_authority) = route::upstream_authority(&parts.uri, &parts.headers) else {
            info.flags |= ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            return respond::local(StatusCode::BAD_REQUEST, "invalid authority", grpc, info);
        };
        let target = UpstreamTarget {
            method: parts.method,
            pq: route::path_and_query(&parts.uri),
            authority: target_authority,
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
        };
        let req = upstream_request(target, parts.headers, body, protocol);
        let transport = if https {
            self.tls(authority, protocol)
        } else {
            Transport::Plain
        };
        let settings = ConnectSettings {
            connect_timeout: CONNECT_TIMEOUT,
            max_requests_per_connection: None,
            transport,
        };
        match host
            .send(req, protocol, &settings, &self.counters, &limits)
            .await
        {
            Ok(rsp) => {
                let mut rsp = rsp.map(|b| RspBody::upstream(b, Some(inflight)));
                rsp.extensions_mut().insert(info);
                rsp
            }
            Err(e) => {
                info.flags |= ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
                respond::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{RESET_BEFORE_HEADERS}{e}"),
                    grpc,
                    info,
                )
            }
        }
    }

    /// TLS to the authority's host, speaking `protocol` (ALPN); the reason it cannot be
    /// had (no system roots) fails the connection.
    fn tls(&self, authority: &str, protocol: Protocol) -> Transport {
        let host = authority
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(authority, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let alpn: &[u8] = match protocol {
            Protocol::Http2 => b"h2",
            Protocol::Http1 => b"http/1.1",
        };
        let key = format!("{host}|{}", String::from_utf8_lossy(alpn));
        if let Some(t) = self.tls.load().get(key.as_str()) {
            return t.clone();
        }
        let made = match super::tls::Origination::system(host, alpn) {
            Ok(o) => Transport::Tls(Arc::new(o)),
            Err(why) => Transport::Broken(format!("TLS to {host}: {why}").into()),
        };
        self.tls.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(key.as_str().into()).or_insert_with(|| made.clone());
            m
        });
        made
    }

    /// The pool for `authority` (TLS and plaintext connections apart).
    async fn host(&self, authority: &str, https: bool) -> std::io::Result<Arc<Host>> {
        let key = if https {
            std::borrow::Cow::Owned(format!("https://{authority}"))
        } else {
            std::borrow::Cow::Borrowed(authority)
        };
        if let Some(h) = self.hosts.load().get(&*key) {
            return Ok(h.clone());
        }
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let host = Arc::new(Host::new(addr));
        self.hosts.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry((*key).into()).or_insert_with(|| host.clone());
            m
        });
        Ok(self.hosts.load().get(&*key).cloned().unwrap_or(host))
    }
}
