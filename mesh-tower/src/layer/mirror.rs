//! Request mirroring (Envoy's `request_mirror_policies`, Istio's `mirror`): a copy of some
//! requests goes to another service, fire and forget. The copy's answer is read and dropped;
//! it never affects the request's own answer, its latency or its retries.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use mesh_core::model::Fraction;

/// A request body a mirror can have a copy of: the whole body, when it is known in full (a
/// streamed body is not copied, and that request is not mirrored).
pub trait MirrorBody: Sized {
    /// A copy of the whole body, or `None` when it cannot be had without waiting for it.
    fn duplicate(&self) -> Option<Self>;
}

impl MirrorBody for Full<Bytes> {
    fn duplicate(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl MirrorBody for Empty<Bytes> {
    fn duplicate(&self) -> Option<Self> {
        Some(Self::new())
    }
}

/// A request without a body.
impl MirrorBody for () {
    fn duplicate(&self) -> Option<Self> {
        Some(())
    }
}

impl MirrorBody for String {
    fn duplicate(&self) -> Option<Self> {
        Some(self.clone())
    }
}

/// Where copies go, and how many.
#[derive(Clone, Debug)]
pub struct MirrorTarget<M> {
    /// The service that receives the copies.
    pub service: M,
    /// The share of requests copied.
    pub fraction: Fraction,
    /// Append `-shadow` to the copy's host (`reviews:9080` → `reviews-shadow:9080`), as
    /// Envoy does unless `disable_shadow_host_suffix_append` is set.
    pub shadow_host_suffix: bool,
}

/// Sends copies of requests to [`MirrorTarget`]s.
///
/// ```
/// # async fn run() {
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use mesh_core::model::Fraction;
/// use mesh_tower::layer::{MirrorLayer, MirrorTarget};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let (seen, mut copies) = tokio::sync::mpsc::unbounded_channel();
/// let shadow = service_fn(move |req: http::Request<Full<Bytes>>| {
///     let _ = seen.send(req.uri().to_string());
///     async { Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default())) }
/// });
/// let svc = ServiceBuilder::new()
///     .layer(MirrorLayer::new([MirrorTarget {
///         service: shadow,
///         fraction: Fraction::ALWAYS,
///         shadow_host_suffix: true,
///     }]))
///     .service(service_fn(|_req: http::Request<Full<Bytes>>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
///     }));
/// let req = http::Request::get("http://reviews:9080/r/1").body(Full::default()).unwrap();
/// svc.oneshot(req).await.unwrap();
/// assert_eq!(copies.recv().await.unwrap(), "http://reviews-shadow:9080/r/1");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug)]
pub struct MirrorLayer<M> {
    targets: Arc<[MirrorTarget<M>]>,
}

impl<M> MirrorLayer<M> {
    /// Mirrors to `targets`.
    pub fn new(targets: impl IntoIterator<Item = MirrorTarget<M>>) -> Self {
        Self {
            targets: targets.into_iter().collect(),
        }
    }

    /// How many targets get copies.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no request is ever copied.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

impl<M> Default for MirrorLayer<M> {
    fn default() -> Self {
        Self {
            targets: Arc::new([]),
        }
    }
}

impl<S, M> tower::Layer<S> for MirrorLayer<M> {
    type Service = Mirror<S, M>;

    fn layer(&self, inner: S) -> Mirror<S, M> {
        Mirror {
            inner,
            targets: self.targets.clone(),
        }
    }
}

/// The service of [`MirrorLayer`].
#[derive(Clone, Debug)]
pub struct Mirror<S, M> {
    inner: S,
    targets: Arc<[MirrorTarget<M>]>,
}

impl<S, M, B, MB> tower::Service<Request<B>> for Mirror<S, M>
where
    S: tower::Service<Request<B>>,
    M: tower::Service<Request<B>, Response = Response<MB>> + Clone + Send + 'static,
    M::Future: Send,
    MB: http_body::Body + Send + 'static,
    MB::Data: Send,
    B: MirrorBody + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        for target in self.targets.iter() {
            if !target.fraction.hit(fastrand::u32(0..1_000_000)) {
                continue;
            }
            let Some(copy) = copy_of(&req, target.shadow_host_suffix) else {
                continue;
            };
            let service = target.service.clone();
            tokio::spawn(async move {
                let Ok(rsp) = tower::ServiceExt::oneshot(service, copy).await else {
                    return;
                };
                // Read the answer so the connection can be reused, then drop it.
                let _ = rsp.into_body().collect().await;
            });
        }
        self.inner.call(req)
    }
}

/// A copy of `req` for a mirror (its extensions are not copied), or `None` when its body
/// cannot be copied.
fn copy_of<B: MirrorBody>(req: &Request<B>, shadow: bool) -> Option<Request<B>> {
    let body = req.body().duplicate()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.uri_mut() = req.uri().clone();
    if shadow {
        let host = mesh_core::model::authority_of(req);
        let shadowed: Authority = shadow_authority(host).parse().ok()?;
        if let Some(h) = copy.headers_mut().get_mut(HOST) {
            *h = HeaderValue::from_str(shadowed.as_str()).ok()?;
        }
        if req.uri().authority().is_some() {
            let mut parts = req.uri().clone().into_parts();
            parts.authority = Some(shadowed);
            *copy.uri_mut() = http::Uri::from_parts(parts).ok()?;
        }
    }
    Some(copy)
}

/// `host-shadow:port` for a mirrored request (Envoy's shadow host suffix).
pub(crate) fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_host_keeps_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }

    #[test]
    fn copies_carry_the_shadow_host_and_a_body_copy() {
        let req = Request::post("/r")
            .header(HOST, "reviews:9080")
            .header("x-user", "jason")
            .body(Full::new(Bytes::from_static(b"body")))
            .unwrap();
        let copy = copy_of(&req, true).unwrap();
        assert_eq!(copy.headers()[HOST], "reviews-shadow:9080");
        assert_eq!(copy.headers()["x-user"], "jason");
        assert_eq!(copy.method(), http::Method::POST);
        let plain = copy_of(&req, false).unwrap();
        assert_eq!(plain.headers()[HOST], "reviews:9080");
    }

    /// A body that cannot be copied.
    struct Streamed;

    impl MirrorBody for Streamed {
        fn duplicate(&self) -> Option<Self> {
            None
        }
    }

    #[test]
    fn streamed_bodies_are_not_mirrored() {
        assert!(copy_of(&Request::new(Streamed), true).is_none());
    }
}
