//! Istio's PassthroughCluster: with the `ALLOW_ANY` outbound traffic policy, requests for hosts
//! the mesh does not know go straight to the host named by the authority, with no mesh policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use http_body::Body;
use mesh_core::model::CircuitBreakers;

use super::circuit_breaker::{Counters, Inflight};
use super::host::{ConnectSettings, Host, Protocol, Transport};
use super::route;
use crate::body::{BodySource, BoxError, RspBody};
use crate::flags::ResponseFlags;
use crate::respond::{self, RESET_BEFORE_HEADERS, ResponseInfo};

/// Istio's connect timeout for the passthrough cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Direct connections to hosts outside the mesh, pooled per resolved address.
#[derive(Debug, Default)]
pub(crate) struct Passthrough {
    hosts: ArcSwap<HashMap<Box<str>, Arc<Host>>>,
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
        let host = match self.host(authority).await {
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
        let mut inflight = Inflight::new(self.counters.clone(), None);
        inflight.on_host(host.clone());
        let protocol = if req.version() == http::Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let (mut parts, body) = req.into_parts();
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
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| "/".parse().expect("valid"));
        parts.uri = match protocol {
            Protocol::Http1 => {
                if let Ok(v) = authority.parse() {
                    parts.headers.entry(http::header::HOST).or_insert(v);
                }
                http::Uri::from(pq)
            }
            Protocol::Http2 => {
                let a = route::authority_host(&parts.uri, &parts.headers).unwrap_or(authority);
                match http::Uri::builder()
                    .scheme("http")
                    .authority(a)
                    .path_and_query(pq)
                    .build()
                {
                    Ok(u) => u,
                    Err(_) => {
                        info.flags |= ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
                        return respond::local(
                            StatusCode::BAD_REQUEST,
                            "invalid authority",
                            grpc,
                            info,
                        );
                    }
                }
            }
        };
        let req = Request::from_parts(parts, body);
        let settings = ConnectSettings {
            connect_timeout: CONNECT_TIMEOUT,
            max_requests_per_connection: None,
            transport: Transport::Plain,
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

    async fn host(&self, authority: &str) -> std::io::Result<Arc<Host>> {
        if let Some(h) = self.hosts.load().get(authority) {
            return Ok(h.clone());
        }
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let host = Arc::new(Host::new(addr));
        self.hosts.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(authority.into()).or_insert_with(|| host.clone());
            m
        });
        Ok(self.hosts.load().get(authority).cloned().unwrap_or(host))
    }
}
