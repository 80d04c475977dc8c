//! Istio's PassthroughCluster: with the `ALLOW_ANY` outbound traffic policy, requests for hosts
//! the mesh does not know go straight to the host named by the authority, with no mesh policy.
//!
//! Each destination becomes a synthetic cluster of one host (as Envoy's ORIGINAL_DST cluster
//! makes a host per destination), sent to by the same attempt path as any route's cluster:
//! the same request shaping, counting and errors, with no limits, no retries and no outlier
//! detection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use http_body::Body;

use super::attempt::{self, AttemptRoute, Try};
use super::cluster::ClusterRuntime;
use super::host::{ConnectSettings, Host, Protocol, Transport};
use crate::body::{BodySource, BoxError, RspBody};
use crate::flags::ResponseFlags;
use crate::respond::{self, RESET_BEFORE_HEADERS, ResponseInfo};

/// Istio's connect timeout for the passthrough cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster's name, as Istio calls it.
const NAME: &str = "PassthroughCluster";

/// Direct connections to hosts outside the mesh: one synthetic cluster (and pool) per
/// destination and protocol. An `https` request is sent over TLS verified against the
/// system's roots and for its host name: never in plaintext, never to a server that cannot
/// prove it is that host.
#[derive(Debug, Default)]
pub(crate) struct Passthrough {
    routes: ArcSwap<HashMap<Box<str>, Arc<AttemptRoute>>>,
}

impl Passthrough {
    pub(crate) async fn forward<B>(&self, authority: &str, req: Request<B>) -> Response<RspBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let grpc = respond::is_grpc(req.headers());
        let https = req.uri().scheme_str() == Some("https");
        let protocol = if req.version() == http::Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let mut rsp = match self.route(authority, https, protocol).await {
            Ok(route) => {
                let (parts, body) = req.into_parts();
                let mut body = BodySource::new(body, 0).await;
                let attempt = Try {
                    body: body.lend(),
                    hash: None,
                    avoid: Vec::new(),
                };
                let req = Request::from_parts(parts, attempt);
                attempt::one(&route, req, false).await.into_response(grpc)
            }
            Err(e) => {
                let info = ResponseInfo {
                    flags: ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                    ..ResponseInfo::default()
                };
                respond::local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{RESET_BEFORE_HEADERS}connection failure: resolving {authority}: {e}"),
                    grpc,
                    info,
                )
            }
        };
        ResponseInfo::of_mut(&mut rsp).cluster = Some(Arc::from(NAME));
        rsp
    }

    /// The synthetic cluster for `authority` (TLS and plaintext apart, and TLS per ALPN).
    async fn route(
        &self,
        authority: &str,
        https: bool,
        protocol: Protocol,
    ) -> std::io::Result<Arc<AttemptRoute>> {
        let key = match (https, protocol) {
            (false, _) => std::borrow::Cow::Borrowed(authority),
            (true, Protocol::Http1) => std::borrow::Cow::Owned(format!("https://{authority}")),
            (true, Protocol::Http2) => std::borrow::Cow::Owned(format!("h2://{authority}")),
        };
        if let Some(r) = self.routes.load().get(&*key) {
            return Ok(r.clone());
        }
        let addr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let settings = ConnectSettings {
            connect_timeout: CONNECT_TIMEOUT,
            max_requests_per_connection: None,
            idle_timeout: None,
            max_connection_duration: None,
            http2: Default::default(),
            transport: if https {
                tls(authority, protocol)
            } else {
                Transport::Plain
            },
        };
        let cluster = ClusterRuntime::single(Arc::from(NAME), Arc::new(Host::new(addr)), settings);
        let route = Arc::new(AttemptRoute {
            cluster: Arc::new(cluster),
            auto_host: false,
            per_try_timeout: None,
            host_selection_max_attempts: 1,
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
        });
        self.routes.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry((*key).into()).or_insert_with(|| route.clone());
            m
        });
        Ok(self.routes.load().get(&*key).cloned().unwrap_or(route))
    }
}

/// TLS to the authority's host, speaking `protocol` (ALPN); the reason it cannot be had (no
/// system roots) fails the connection.
fn tls(authority: &str, protocol: Protocol) -> Transport {
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(authority, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let alpn: &[u8] = match protocol {
        Protocol::Http2 => b"h2",
        Protocol::Http1 => b"http/1.1",
    };
    match super::tls::Origination::system(host, alpn) {
        Ok(o) => Transport::Tls(Arc::new(o)),
        Err(why) => Transport::Broken(format!("TLS to {host}: {why}").into()),
    }
}
