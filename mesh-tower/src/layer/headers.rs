//! Header mutations: a route's `request_headers_to_add` and `request_headers_to_remove` on the
//! way in, `response_headers_to_add` and `response_headers_to_remove` on the way out.
//!
//! A route's mutations come in levels, most specific first (the weighted cluster, the route,
//! the virtual host, the route configuration), applied in that order as Envoy does by default,
//! so a less specific level's overwrite wins. Within a level, removals run before additions.

use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue, Request, Response};
use mesh_core::model::{AppendAction, HeaderMutations};

/// Applies header mutations to requests and their responses.
///
/// ```
/// # async fn run() {
/// use mesh_core::model::{AppendAction, HeaderAdd, HeaderMutations};
/// use mesh_tower::layer::HeaderMutationLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let served_by = HeaderMutations {
///     response_add: Box::new([HeaderAdd {
///         name: http::HeaderName::from_static("x-served-by"),
///         value: http::HeaderValue::from_static("mesh"),
///         append: AppendAction::OverwriteIfExistsOrAdd,
///     }]),
///     request_remove: Box::new([http::HeaderName::from_static("cookie")]),
///     ..HeaderMutations::default()
/// };
/// let svc = ServiceBuilder::new()
///     .layer(HeaderMutationLayer::new([served_by]))
///     .service(service_fn(|req: http::Request<()>| async move {
///         assert!(!req.headers().contains_key("cookie"));
///         Ok::<_, std::convert::Infallible>(http::Response::new(()))
///     }));
/// let req = http::Request::get("/").header("cookie", "a=b").body(()).unwrap();
/// let rsp = svc.oneshot(req).await.unwrap();
/// assert_eq!(rsp.headers()["x-served-by"], "mesh");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug, Default)]
pub struct HeaderMutationLayer {
    levels: Option<Arc<[HeaderMutations]>>,
}

impl HeaderMutationLayer {
    /// Mutations in levels, most specific first. Empty levels are dropped; with none left the
    /// layer passes requests through untouched.
    pub fn new(levels: impl IntoIterator<Item = HeaderMutations>) -> Self {
        let levels: Arc<[HeaderMutations]> = levels.into_iter().filter(|m| !m.is_empty()).collect();
        Self {
            levels: (!levels.is_empty()).then_some(levels),
        }
    }
}

impl<S> tower::Layer<S> for HeaderMutationLayer {
    type Service = HeaderMutation<S>;

    fn layer(&self, inner: S) -> HeaderMutation<S> {
        HeaderMutation {
            inner,
            levels: self.levels.clone(),
        }
    }
}

/// The service of [`HeaderMutationLayer`].
#[derive(Clone, Debug)]
pub struct HeaderMutation<S> {
    inner: S,
    levels: Option<Arc<[HeaderMutations]>>,
}

impl<S, B, RB> tower::Service<Request<B>> for HeaderMutation<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(levels) = &self.levels {
            mutate_request(req.headers_mut(), levels.iter());
        }
        ResponseFuture {
            inner: self.inner.call(req),
            levels: self.levels.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`HeaderMutation`]: mutates the response's headers.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        levels: Option<Arc<[HeaderMutations]>>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        if let Some(levels) = this.levels.take() {
            mutate_response(rsp.headers_mut(), levels.iter());
        }
        Poll::Ready(Ok(rsp))
    }
}

/// Applies request mutations, level by level (most specific first).
pub(crate) fn mutate_request<'a>(
    headers: &mut HeaderMap,
    levels: impl IntoIterator<Item = &'a HeaderMutations>,
) {
    for m in levels {
        for name in m.request_remove.iter() {
            headers.remove(name);
        }
        for add in m.request_add.iter() {
            apply_add(headers, &add.name, &add.value, add.append);
        }
    }
}

/// The response counterpart of [`mutate_request`].
pub(crate) fn mutate_response<'a>(
    headers: &mut HeaderMap,
    levels: impl IntoIterator<Item = &'a HeaderMutations>,
) {
    for m in levels {
        for name in m.response_remove.iter() {
            headers.remove(name);
        }
        for add in m.response_add.iter() {
            apply_add(headers, &add.name, &add.value, add.append);
        }
    }
}

fn apply_add(
    headers: &mut HeaderMap,
    name: &http::HeaderName,
    value: &HeaderValue,
    how: AppendAction,
) {
    match how {
        AppendAction::AppendIfExistsOrAdd => {
            headers.append(name.clone(), value.clone());
        }
        AppendAction::AddIfAbsent => {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        AppendAction::OverwriteIfExistsOrAdd => {
            headers.insert(name.clone(), value.clone());
        }
        AppendAction::OverwriteIfExists => {
            if headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::HeaderAdd;

    fn add(name: &str, value: &str, append: AppendAction) -> HeaderAdd {
        HeaderAdd {
            name: name.parse().unwrap(),
            value: value.parse().unwrap(),
            append,
        }
    }

    #[test]
    fn header_mutations_follow_envoy_append_actions() {
        let mut h = HeaderMap::new();
        h.insert("a", "1".parse().unwrap());
        h.insert("gone", "x".parse().unwrap());
        let m = HeaderMutations {
            request_add: Box::new([
                add("a", "2", AppendAction::AppendIfExistsOrAdd),
                add("b", "1", AppendAction::AddIfAbsent),
                add("c", "1", AppendAction::OverwriteIfExists),
                add("d", "1", AppendAction::OverwriteIfExistsOrAdd),
            ]),
            request_remove: Box::new([http::HeaderName::from_static("gone")]),
            ..HeaderMutations::default()
        };
        mutate_request(&mut h, [&m]);
        assert_eq!(h.get_all("a").iter().count(), 2);
        assert_eq!(h["b"], "1");
        assert!(!h.contains_key("c"));
        assert_eq!(h["d"], "1");
        assert!(!h.contains_key("gone"));
    }
}
