//! One request through the outbound path, in Envoy's order (DESIGN §4):
//!
//! ```text
//! path normalization (when the listener asks for it)
//!  → route (virtual host by authority, first matching route, and its policy as the plan
//!    resolved it: retry, hedge, mirrors, clusters; see [`policy`](super::policy))
//!  → split (weighted cluster, chosen once)
//!  → fault (delay, then abort)
//!  → rewrites and header mutations
//!  → mirror (shadow copies, fire and forget)
//!  → timeout (route deadline over all attempts)
//!  → retry → [per attempt] circuit breaker → balance → per-try timeout → connection
//! ```
//!
//! Why one function and not a stack of generic Tower layers: every step's policy comes from the
//! route just matched, so a layer per step would either be rebuilt per route and boxed per
//! request, or read its policy back out of request extensions. Envoy's router filter owns
//! timeout, retry, balancing and circuit breaking for the same reason. Each step's logic lives
//! in its own module ([`fault`], [`timeout`], [`retry`], [`balance`](super::balance),
//! [`circuit_breaker`](super::circuit_breaker), [`outlier`](super::outlier)) with its own tests;
//! this function only sequences them, with one boxed future per request in all.

use std::sync::Arc;

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use mesh_core::model::{
    Action, ClusterSpecifier, ClusterWeight, HeaderMutations, HostRewrite, RequestView,
};

use super::Outbound;
use super::attempt::{self, AttemptCtx};
use super::balance::RequestHasher;
use super::cluster::ClusterRuntime;
use super::fault::{self, Abort};
use super::route::{self, mutate_request, mutate_response};
use super::target::{RoutePlan, TargetRuntime};
use super::timeout;
use crate::body::{BodySource, BoxError, RspBody};
use crate::flags::ResponseFlags;
use crate::respond::{self, ResponseInfo};

/// Forwards `req` by `plan`.
pub(crate) async fn forward<B>(
    ob: &Outbound,
    rt: &TargetRuntime,
    plan: &RoutePlan,
    mut req: Request<B>,
) -> Response<RspBody>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let grpc = respond::is_grpc(req.headers());
    let mut info = ResponseInfo::default();
    let table = &plan.snapshot.routes;

    // Path normalization, when the listener's connection manager asks for it (as istiod's
    // do for sidecars): the route is chosen on, and the upstream sees, the normalized path.
    let paths = &plan.snapshot.http.path_normalization;
    if !paths.is_noop()
        && let Err(rejection) = crate::normalize::normalize_request(paths, &mut req)
    {
        let mut rsp = respond::local(rejection.status(grpc), "", grpc, info);
        if let Some(location) = rejection.location().filter(|_| !grpc) {
            rsp.headers_mut().insert(http::header::LOCATION, location);
        }
        return rsp;
    }

    // Route: the virtual host by authority, then the first route that matches.
    let view = RequestView::from_request(&req);
    let Some(found) = table.find_indexed(&view, fastrand::u32(0..1_000_000)) else {
        info.flags |= ResponseFlags::NO_ROUTE_FOUND;
        return respond::local(StatusCode::NOT_FOUND, "", grpc, info);
    };
    let (vh, route) = (found.host, found.route);
    let policy = plan.policies.get(found.host_index, found.route_index);
    if !route.name.is_empty() {
        info.route = Some(route.name.clone());
    }
    let fwd = match &route.action {
        Action::Forward(f) => f,
        Action::DirectResponse { status, body } => {
            let mut rsp = route::direct(*status, body);
            mutate_response(
                rsp.headers_mut(),
                &[&route.headers, &vh.headers, &table.headers],
            );
            rsp.extensions_mut().insert(info);
            return rsp;
        }
        Action::Redirect(r) => {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            let mut rsp = route::redirect(r, view.scheme, view.authority, &pq, &route.matcher.path);
            mutate_response(
                rsp.headers_mut(),
                &[&route.headers, &vh.headers, &table.headers],
            );
            rsp.extensions_mut().insert(info);
            return rsp;
        }
        Action::NonForwarding => {
            info.flags |= ResponseFlags::NO_ROUTE_FOUND;
            return respond::local(StatusCode::NOT_FOUND, "", grpc, info);
        }
    };

    // Split: the cluster is chosen once per request; retries stay in it. Named clusters
    // were resolved with the plan; only `cluster_header` is looked up per request.
    let (resolved, weight): (
        Result<&Arc<ClusterRuntime>, Arc<str>>,
        Option<&ClusterWeight>,
    ) = match &fwd.cluster {
        ClusterSpecifier::Cluster(c) => (resolved_or(&policy.clusters, 0, c), None),
        ClusterSpecifier::Weighted(w) => {
            let i = w.pick_index(fastrand::u32(0..w.total));
            let c = &w.clusters[i];
            (resolved_or(&policy.clusters, i, &c.name), Some(c))
        }
        ClusterSpecifier::Header(h) => match view.headers.get(h).and_then(|v| v.to_str().ok()) {
            Some(name) => (plan.clusters.get(name).ok_or_else(|| name.into()), None),
            None => {
                info.flags |= ResponseFlags::NO_CLUSTER_FOUND;
                return respond::local(fwd.cluster_not_found_status, "", grpc, info);
            }
        },
    };
    let cluster = match resolved {
        Ok(c) => c,
        Err(name) => {
            info.cluster = Some(name);
            info.flags |= ResponseFlags::NO_CLUSTER_FOUND;
            return respond::local(fwd.cluster_not_found_status, "", grpc, info);
        }
    };
    info.cluster = Some(cluster.name.clone());
    if req.extensions().get::<super::RequireTls>().is_some() && cluster.state().config.tls.is_none()
    {
        // The mesh's own `https` fetch (a JWKS) must not go out in plaintext.
        info.flags |= ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        return respond::local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "an https request was routed to cluster {}, which has no TLS",
                cluster.name
            ),
            grpc,
            info,
        );
    }

    let hasher = if fwd.hash_policies.is_empty() {
        RequestHasher::default()
    } else {
        RequestHasher::compute(&fwd.hash_policies, &view, ob.config.source_ip)
    };
    let injection = if plan.faults.is_empty() {
        fault::Injection::default()
    } else {
        let none = mesh_core::model::FilterOverrides::default();
        let overrides = [
            weight.map_or(&none, |w| &w.filter_overrides),
            &route.filter_overrides,
            &vh.filter_overrides,
        ];
        fault::evaluate(
            &plan.faults,
            &overrides,
            &cluster.name,
            &view,
            &rt.active_faults,
        )
    };
    let retry = policy
        .retry
        .as_ref()
        .filter(|p| super::retry::request_allows(p, &view))
        .cloned();
    let mirrors = &policy.mirrors;
    let deadline = timeout::deadline(fwd, view.headers);
    let raw_authority = view.authority;
    let host_rewrite = weight
        .and_then(|w| w.host_rewrite.as_ref())
        .or(fwd.host_rewrite.as_ref());
    let (authority, auto_host) = match host_rewrite {
        Some(HostRewrite::Literal(h)) => (h.parse::<Authority>().ok(), false),
        Some(HostRewrite::Header(name)) => (
            view.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            false,
        ),
        Some(HostRewrite::Auto) => (None, true),
        None => (None, false),
    };
    // The URI's own authority is reused as is (a reference count, no copy).
    let authority = match authority
        .or_else(|| req.uri().authority().cloned())
        .or_else(|| raw_authority.parse().ok())
    {
        Some(a) => a,
        None => {
            info.flags |= ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR;
            return respond::local(StatusCode::BAD_REQUEST, "invalid authority", grpc, info);
        }
    };

    // Fault: the delay first (it does not count against the route timeout), then the abort.
    if let Some(d) = injection.delay {
        info.flags |= ResponseFlags::DELAY_INJECTED;
        info.fault_delay = Some(d);
        tokio::time::sleep(d).await;
    }
    if let Some(abort) = injection.abort {
        info.flags |= ResponseFlags::FAULT_INJECTED;
        return match abort {
            Abort::Http(status) => respond::local(status, "fault filter abort", grpc, info),
            Abort::Grpc(code) => {
                let mut rsp = respond::local(StatusCode::OK, "fault filter abort", true, info);
                rsp.headers_mut()
                    .insert("grpc-status", HeaderValue::from(code));
                rsp
            }
        };
    }
    drop(injection);

    // Rewrites and header mutations, most specific level first.
    let (mut parts, body) = req.into_parts();
    let levels: [&HeaderMutations; 4] = [
        weight.map_or(&EMPTY_MUTATIONS, |w| &w.headers),
        &route.headers,
        &vh.headers,
        &table.headers,
    ];
    mutate_request(&mut parts.headers, &levels);
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let pq = route::rewrite_path(
        &pq,
        &route.matcher.path,
        fwd.prefix_rewrite.as_deref(),
        fwd.regex_rewrite.as_ref(),
    )
    .unwrap_or(pq);

    // The body: recorded for replay only when a retry or a mirror may need it.
    let cap = if retry.is_some() || !mirrors.is_empty() {
        ob.config.replay_cap
    } else {
        0
    };
    let mut body = BodySource::new(body, cap).await;
    let ctx = AttemptCtx {
        cluster: cluster.clone(),
        method: parts.method,
        pq,
        authority,
        auto_host,
        version: parts.version,
        hedge_on_per_try_timeout: policy.hedge_on_per_try_timeout,
        retry,
        hash: hasher.hash(),
        attempt_count_header: vh.include_attempt_count,
        grpc,
        retry_budget: ob.config.retry_budget,
    };

    // Mirror: copies go out on their own, and never affect this request's answer.
    for m in mirrors.iter() {
        if !m.policy.fraction.hit(fastrand::u32(0..1_000_000)) {
            continue;
        }
        let (Some(target), Some(copy)) = (&m.cluster, body.duplicate()) else {
            continue;
        };
        let authority = if m.policy.disable_shadow_host_suffix {
            ctx.authority.clone()
        } else {
            match route::shadow_authority(ctx.authority.as_str()).parse() {
                Ok(a) => a,
                Err(_) => continue,
            }
        };
        let shadow = AttemptCtx {
            cluster: target.clone(),
            authority,
            retry: None,
            ..ctx.clone()
        };
        let headers = parts.headers.clone();
        tokio::spawn(async move {
            let mut info = ResponseInfo::default();
            let mut src = copy;
            let rsp = attempt::run(&shadow, headers, &mut src, &mut info).await;
            // Read the answer so the connection can be reused, then drop it.
            let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
        });
    }

    // Timeout over all attempts, then the attempts themselves.
    let run = attempt::run(&ctx, parts.headers, &mut body, &mut info);
    let mut rsp = match deadline {
        Some(d) => match tokio::time::timeout(d.after, run).await {
            Ok(rsp) => rsp,
            Err(_) => {
                info.flags |= d.flag;
                let status = if d.flag == ResponseFlags::UPSTREAM_REQUEST_TIMEOUT {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::REQUEST_TIMEOUT
                };
                respond::local(status, "upstream request timeout", grpc, info.clone())
            }
        },
        None => run.await,
    };

    mutate_response(rsp.headers_mut(), &levels);
    if let Some(cookie) = hasher
        .set_cookie
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        rsp.headers_mut().append(http::header::SET_COOKIE, cookie);
    }
    rsp.extensions_mut().insert(info);
    rsp
}

/// The runtime the plan resolved for the `i`th cluster a route names, or that cluster's name
/// when it does not exist.
fn resolved_or<'a>(
    resolved: &'a [Option<Arc<ClusterRuntime>>],
    i: usize,
    name: &Arc<str>,
) -> Result<&'a Arc<ClusterRuntime>, Arc<str>> {
    resolved
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| name.clone())
}

static EMPTY_MUTATIONS: std::sync::LazyLock<HeaderMutations> =
    std::sync::LazyLock::new(HeaderMutations::default);
