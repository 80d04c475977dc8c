//! Envoy's request-path checks and normalization, before any filter and before routing: what
//! the HTTP connection manager does with `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action` (see [`mesh_core::model::PathNormalization`]).
//!
//! The inbound side runs it on every request of a chain that has an HTTP connection manager,
//! and [`MeshClient`](crate::MeshClient) runs it when its listener asks for it; the
//! application and the upstream then see the normalized path, as they would behind Envoy.
//! [`NormalizePathLayer`] offers the same in front of any service.
//!
//! Answers, as Envoy's:
//! - a path with a byte outside visible ASCII: 400 (Envoy's codecs refuse it);
//! - a path that does not start with `/`: 404 for `*`, 400 otherwise;
//! - a path normalization refuses (`%00`, or an escaped slash with `RejectRequest`): 400;
//! - an escaped slash with `UnescapeAndRedirect`: 307 to the normalized path (400 for gRPC).
//!
//! gRPC callers get these as gRPC statuses (400 is INTERNAL), as Envoy's local replies do.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use mesh_core::model::{PathAction, PathNormalization};

/// Why a request's path was refused, and how to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRejection {
    /// 400: the path cannot be normalized, or has bytes no HTTP codec of Envoy's accepts.
    BadRequest,
    /// 404: not a path (`*`).
    NotFound,
    /// 307 to this location (the normalized path and query).
    Redirect(String),
}

impl PathRejection {
    /// The status Envoy answers with (gRPC requests: 400 in place of a redirect).
    pub fn status(&self, grpc: bool) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Redirect(_) if grpc => StatusCode::BAD_REQUEST,
            Self::Redirect(_) => StatusCode::TEMPORARY_REDIRECT,
        }
    }

    /// The `location` header of a redirect.
    pub fn location(&self) -> Option<HeaderValue> {
        match self {
            Self::Redirect(to) => HeaderValue::from_str(to).ok(),
            _ => None,
        }
    }
}

/// Checks `req`'s path as Envoy's connection manager does and normalizes it in place; the
/// request's URI keeps its scheme and authority. Allocates only when the path changes.
///
/// ```
/// use mesh_core::model::PathNormalization;
/// let base = PathNormalization { normalize: true, ..Default::default() };
/// let mut req = http::Request::get("/public/../admin/%61").body(()).unwrap();
/// mesh_tower::normalize::normalize_request(&base, &mut req).unwrap();
/// assert_eq!(req.uri(), "/admin/a");
/// ```
pub fn normalize_request<B>(
    config: &PathNormalization,
    req: &mut Request<B>,
) -> Result<(), PathRejection> {
    let pq = req.uri().path_and_query().map_or("", PathAndQuery::as_str);
    if !pq.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(PathRejection::BadRequest);
    }
    if !pq.starts_with('/') {
        return Err(if pq == "*" {
            PathRejection::NotFound
        } else {
            PathRejection::BadRequest
        });
    }
    match config.apply(pq) {
        PathAction::Keep => Ok(()),
        PathAction::Reject => Err(PathRejection::BadRequest),
        PathAction::Redirect(to) => Err(PathRejection::Redirect(to)),
        PathAction::Forward(path) => set_path(req, path),
    }
}

fn set_path<B>(req: &mut Request<B>, path: String) -> Result<(), PathRejection> {
    let pq = PathAndQuery::try_from(path).map_err(|_| PathRejection::BadRequest)?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| PathRejection::BadRequest)?;
    Ok(())
}

/// A [`tower::Layer`] that applies [`normalize_request`] before its service, answering the
/// requests it refuses itself (with an empty body).
///
/// ```
/// use mesh_core::model::{EscapedSlashes, PathNormalization};
/// use tower::{Layer, ServiceExt, service_fn};
/// # tokio_test_block(async {
/// let istio_base = PathNormalization { normalize: true, ..Default::default() };
/// let svc = mesh_tower::normalize::NormalizePathLayer::new(istio_base).layer(service_fn(
///     |req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().path().to_owned()))
///     },
/// ));
/// let rsp = svc.oneshot(http::Request::get("/a/./b/../c").body(()).unwrap()).await.unwrap();
/// assert_eq!(rsp.body(), "/a/c");
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct NormalizePathLayer {
    config: PathNormalization,
}

impl NormalizePathLayer {
    /// Normalizes as `config` says.
    pub fn new(config: PathNormalization) -> Self {
        Self { config }
    }
}

impl<S> tower::Layer<S> for NormalizePathLayer {
    type Service = NormalizePath<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NormalizePath {
            inner,
            config: self.config,
        }
    }
}

/// The service [`NormalizePathLayer`] makes.
#[derive(Clone, Debug)]
pub struct NormalizePath<S> {
    inner: S,
    config: PathNormalization,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for NormalizePath<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ResBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        match normalize_request(&self.config, &mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(rejection) => {
                let grpc = crate::respond::is_grpc(req.headers());
                let mut rsp = Response::new(ResBody::default());
                *rsp.status_mut() = rejection.status(grpc);
                if grpc {
                    // A gRPC status in a trailers-only answer, as `respond::local` writes one.
                    let code = crate::respond::grpc_status_for(rejection.status(true));
                    rsp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/grpc"),
                    );
                    rsp.headers_mut()
                        .insert("grpc-status", HeaderValue::from(code));
                    *rsp.status_mut() = StatusCode::OK;
                } else if let Some(location) = rejection.location() {
                    rsp.headers_mut().insert(http::header::LOCATION, location);
                }
                Either::Left(ready(Ok(rsp)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh_core::model::EscapedSlashes;

    use super::*;

    fn check(config: PathNormalization, uri: &str) -> Result<String, PathRejection> {
        let mut req = Request::get(uri).body(()).unwrap();
        normalize_request(&config, &mut req).map(|()| req.uri().to_string())
    }

    const BASE: PathNormalization = PathNormalization {
        normalize: true,
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::KeepUnchanged,
    };

    #[test]
    fn the_uri_keeps_its_scheme_and_authority() {
        assert_eq!(
            check(BASE, "http://details:9080/a/../b?x=1").unwrap(),
            "http://details:9080/b?x=1"
        );
    }

    #[test]
    fn request_lines_envoy_refuses() {
        assert_eq!(check(BASE, "*"), Err(PathRejection::NotFound));
        assert_eq!(
            check(PathNormalization::default(), "/caf\u{e9}"),
            Err(PathRejection::BadRequest),
            "non-ASCII is refused even without normalization, as Envoy's codecs do"
        );
        assert_eq!(check(BASE, "/a%00"), Err(PathRejection::BadRequest));
    }

    mod deny_every_spelling {
        use mesh_core::model::{
            Permission, Principal, RbacAction, RbacFilter, RbacPolicies, RbacPolicy, RequestView,
            StringMatch, StringMatcher,
        };
        use proptest::prelude::*;

        use super::*;
        use crate::rules::metadata::Metadata;
        use crate::rules::rbac;

        /// A spelling of `/admin/<segments>`: each separator `/` or `\`, characters
        /// percent-encoded in either case, and dot segments (`./`, `x/../`, `x/..;p/`,
        /// encoded dots) inserted after a slash.
        fn spelling() -> impl Strategy<Value = (String, String)> {
            let segment = "[a-z0-9_~-]{1,6}";
            (
                prop::collection::vec(segment, 1..4),
                prop::collection::vec(any::<(u8, u8, bool)>(), 0..24),
            )
                .prop_map(|(segments, choices)| {
                    let canonical = format!("/admin/{}", segments.join("/"));
                    let mut choice = choices.into_iter().cycle();
                    let mut next = || choice.next().unwrap_or((0, 0, false));
                    let mut out = String::from("/");
                    for (i, seg) in std::iter::once("admin".to_owned())
                        .chain(segments)
                        .enumerate()
                    {
                        if i > 0 {
                            let (how, _, _) = next();
                            out.push(if how % 4 == 0 { '\\' } else { '/' });
                        }
                        let (dots, _, _) = next();
                        out.push_str(match dots % 6 {
                            0 => "./",
                            1 => "x/../",
                            2 => "x/..;p=1/",
                            3 => "%2e/",
                            4 => "x/%2E%2e/",
                            _ => "",
                        });
                        for c in seg.chars() {
                            let (encode, _, upper) = next();
                            if encode % 3 == 0 {
                                let hex = format!("%{:02x}", c as u32);
                                out.push_str(&if upper { hex.to_uppercase() } else { hex });
                            } else {
                                out.push(c);
                            }
                        }
                    }
                    (canonical, out)
                })
        }

        fn deny_admin() -> RbacFilter {
            RbacFilter {
                rules: Some(RbacPolicies {
                    action: RbacAction::Deny,
                    policies: Box::new([(
                        "admin".into(),
                        RbacPolicy {
                            permissions: Box::new([Permission::UrlPath(StringMatcher {
                                kind: StringMatch::Prefix("/admin/".into()),
                                ignore_case: false,
                            })]),
                            principals: Box::new([Principal::Any]),
                        },
                    )]),
                }),
                shadow_rules: None,
                stat_prefix: "".into(),
                shadow_stat_prefix: "".into(),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// A DENY that matches a path matches every spelling that normalizes to it.
            #[test]
            fn a_deny_on_a_path_denies_its_every_spelling((canonical, spelled) in spelling()) {
                let mut req = Request::get(spelled.as_str()).body(()).unwrap();
                normalize_request(&BASE, &mut req).unwrap();
                prop_assert_eq!(req.uri().path(), canonical.as_str(), "from {}", spelled);
                let conn = rbac::Connection {
                    peer: "10.0.0.1:5000".parse().unwrap(),
                    client: "10.0.0.1".parse().unwrap(),
                    local: "10.0.0.2:80".parse().unwrap(),
                    spiffe_id: None,
                    certificate: None,
                    sni: None,
                    metadata: &Metadata::default(),
                };
                let filter = deny_admin();
                let verdict = rbac::evaluate(&filter, &RequestView::from_request(&req), &conn);
                prop_assert_eq!(verdict, rbac::Verdict::Deny(Some("admin")));
            }
        }
    }

    #[test]
    fn redirects_carry_the_normalized_path() {
        let redirect = PathNormalization {
            escaped_slashes: EscapedSlashes::UnescapeAndRedirect,
            ..BASE
        };
        let r = check(redirect, "/a%2Fb/../c?q").unwrap_err();
        assert_eq!(r, PathRejection::Redirect("/a/c?q".into()));
        assert_eq!(r.status(false), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.status(true), StatusCode::BAD_REQUEST);
    }
}
