//! A route's rewrites of the upstream request: the path (`prefix_rewrite`, `regex_rewrite`)
//! and the host (`host_rewrite_literal`, `host_rewrite_header`), applied where Envoy's router
//! applies them, after the route's header mutations.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri};
use mesh_core::model::{HostRewrite, PathMatch, RegexRewrite};

/// Rewrites each request's path and host before the inner service sends it.
///
/// `HostRewrite::Auto` (`auto_host_rewrite`) is the connection's business, since only it knows
/// the endpoint chosen: this layer leaves the host alone for it.
///
/// ```
/// # async fn run() {
/// use mesh_core::model::{HostRewrite, PathMatch};
/// use mesh_tower::layer::RewriteLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// // Istio's `rewrite: {uri: /api/, authority: backend.internal}` on a `prefix: /v1/` match.
/// let rewrite = RewriteLayer::new()
///     .prefix(PathMatch::Prefix("/v1/".into()), "/api/")
///     .host(HostRewrite::Literal("backend.internal".into()));
/// let svc = ServiceBuilder::new()
///     .layer(rewrite)
///     .service(service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(req.uri().to_string())
///     }));
/// let req = http::Request::get("http://shop/v1/items?page=2").body(()).unwrap();
/// let sent = svc.oneshot(req).await.unwrap();
/// assert_eq!(sent, "http://backend.internal/api/items?page=2");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug, Default)]
pub struct RewriteLayer {
    rewrites: Rewrites,
}

#[derive(Clone, Debug, Default)]
struct Rewrites {
    path: Option<PathRewrite>,
    host: Option<HostRewrite>,
}

#[derive(Clone, Debug)]
enum PathRewrite {
    /// The part of the path `matched` matched becomes `to`.
    Prefix {
        matched: PathMatch,
        to: Box<str>,
    },
    Regex(RegexRewrite),
}

impl RewriteLayer {
    /// A layer that rewrites nothing (yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the part of the path the route's `matched` path match matched (a prefix, or
    /// the whole path for an exact match) with `to`, keeping the query.
    pub fn prefix(mut self, matched: PathMatch, to: impl Into<Box<str>>) -> Self {
        self.rewrites.path = Some(PathRewrite::Prefix {
            matched,
            to: to.into(),
        });
        self
    }

    /// Rewrites the path (not the query) with a regex substitution.
    pub fn regex(mut self, rewrite: RegexRewrite) -> Self {
        self.rewrites.path = Some(PathRewrite::Regex(rewrite));
        self
    }

    /// Rewrites the authority (and `Host`): to a literal, or to a request header's value when
    /// the request has it.
    pub fn host(mut self, host: HostRewrite) -> Self {
        self.rewrites.host = Some(host).filter(|h| !matches!(h, HostRewrite::Auto));
        self
    }

    /// Whether the layer changes nothing.
    fn is_noop(&self) -> bool {
        self.rewrites.path.is_none() && self.rewrites.host.is_none()
    }
}

impl<S> tower::Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;

    fn layer(&self, inner: S) -> Rewrite<S> {
        Rewrite {
            inner,
            rewrites: (!self.is_noop()).then(|| Arc::new(self.rewrites.clone())),
        }
    }
}

/// The service of [`RewriteLayer`].
#[derive(Clone, Debug)]
pub struct Rewrite<S> {
    inner: S,
    rewrites: Option<Arc<Rewrites>>,
}

impl<S, B> tower::Service<Request<B>> for Rewrite<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        if let Some(r) = &self.rewrites {
            r.apply(&mut req);
        }
        self.inner.call(req)
    }
}

impl Rewrites {
    fn apply<B>(&self, req: &mut Request<B>) {
        let pq = self.path.as_ref().and_then(|p| {
            let current = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            match p {
                PathRewrite::Prefix { matched, to } => {
                    rewrite_path(&current, matched, Some(to), None)
                }
                PathRewrite::Regex(r) => {
                    rewrite_path(&current, &PathMatch::Prefix("/".into()), None, Some(r))
                }
            }
        });
        let authority: Option<Authority> = match &self.host {
            Some(HostRewrite::Literal(h)) => h.parse().ok(),
            Some(HostRewrite::Header(name)) => req
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            Some(HostRewrite::Auto) | None => None,
        };
        if pq.is_none() && authority.is_none() {
            return;
        }
        let mut parts = req.uri().clone().into_parts();
        if let Some(pq) = pq {
            parts.path_and_query = Some(pq);
        }
        if let Some(a) = authority {
            if let Some(host) = req.headers_mut().get_mut(HOST)
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                *host = v;
            }
            parts.scheme.get_or_insert(Scheme::HTTP);
            parts
                .path_and_query
                .get_or_insert(PathAndQuery::from_static("/"));
            parts.authority = Some(a);
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The rewritten path and query, if the route rewrites the path.
pub(crate) fn rewrite_path(
    pq: &PathAndQuery,
    matcher: &PathMatch,
    prefix: Option<&str>,
    regex: Option<&RegexRewrite>,
) -> Option<PathAndQuery> {
    let path = pq.path();
    let new_path: String = if let Some(p) = prefix {
        let matched = match matcher {
            PathMatch::Prefix(m) | PathMatch::SeparatedPrefix(m) => m.len(),
            PathMatch::Exact(_) => path.len(),
            _ => 0,
        };
        let rest = path.get(matched.min(path.len())..).unwrap_or("");
        let mut s = String::with_capacity(p.len() + rest.len());
        s.push_str(p);
        s.push_str(rest);
        if s.is_empty() || !s.starts_with('/') {
            s.insert(0, '/');
        }
        s
    } else if let Some(r) = regex {
        r.pattern.replace_all(path, &*r.substitution).into_owned()
    } else {
        return None;
    };
    let full = match pq.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    full.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_regex_rewrites() {
        let pq = PathAndQuery::from_static("/v1/items/7?x=1");
        let m = PathMatch::Prefix("/v1/".into());
        assert_eq!(
            rewrite_path(&pq, &m, Some("/api/"), None).unwrap().as_str(),
            "/api/items/7?x=1"
        );
        let re = RegexRewrite {
            pattern: regex::Regex::new("^/v1/items/([0-9]+)$").unwrap(),
            substitution: "/items?id=${1}".into(),
        };
        let any = PathMatch::Prefix("/".into());
        assert_eq!(
            rewrite_path(
                &PathAndQuery::from_static("/v1/items/7"),
                &any,
                None,
                Some(&re)
            )
            .unwrap()
            .as_str(),
            "/items?id=7"
        );
        assert!(rewrite_path(&pq, &m, None, None).is_none());
    }

    fn sent(layer: RewriteLayer, req: Request<()>) -> Request<()> {
        let svc = tower::Layer::layer(
            &layer,
            tower::service_fn(
                |req: Request<()>| async move { Ok::<_, std::convert::Infallible>(req) },
            ),
        );
        futures_util::FutureExt::now_or_never(tower::ServiceExt::oneshot(svc, req))
            .expect("ready at once")
            .unwrap()
    }

    #[test]
    fn hosts_are_rewritten_in_the_uri_and_the_host_header() {
        let layer = RewriteLayer::new().host(HostRewrite::Header("x-to".parse().unwrap()));
        let req = Request::get("/a?b")
            .header(HOST, "shop:80")
            .header("x-to", "inventory:9080")
            .body(())
            .unwrap();
        let out = sent(layer.clone(), req);
        assert_eq!(out.uri(), "http://inventory:9080/a?b");
        assert_eq!(out.headers()[HOST], "inventory:9080");
        let without = sent(layer, Request::get("http://shop/a").body(()).unwrap());
        assert_eq!(without.uri(), "http://shop/a", "no header, no rewrite");
        let auto = RewriteLayer::new().host(HostRewrite::Auto);
        assert!(auto.is_noop(), "the connection rewrites to the endpoint");
    }
}
