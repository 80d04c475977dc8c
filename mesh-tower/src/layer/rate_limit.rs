//! Local rate limiting: Envoy's `local_ratelimit` filter (a token bucket shared by every
//! clone of the service) as a layer.

use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use mesh_core::model::LocalRateLimit;

use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, ResponseInfo};
use crate::rules::rate_limit::{LIMITED, RateLimiter};

/// Answers Envoy's 429 `local_rate_limited` (flag `RL`, with the filter's response headers)
/// to requests over the token bucket's rate; lets the others through. Every service the
/// layer makes, and their clones, share one bucket, which starts full.
///
/// ```
/// # async fn run() {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mesh_core::model::{LocalRateLimit, TokenBucket};
/// use mesh_tower::layer::RateLimitLayer;
/// use mesh_tower::{ResponseInfo, RspBody};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// // Two requests, then one more every second.
/// let limit = LocalRateLimit::new(TokenBucket {
///     max_tokens: 2,
///     tokens_per_fill: 1,
///     fill_interval: Duration::from_secs(1),
/// });
/// let app = service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
/// });
/// let svc = RateLimitLayer::new(Arc::new(limit)).layer(app);
/// let get = || http::Request::get("/").body(()).unwrap();
/// assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
/// assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
/// let third = svc.oneshot(get()).await.unwrap();
/// assert_eq!(third.status(), 429);
/// assert_eq!(ResponseInfo::of(&third).unwrap().flags.to_string(), "RL");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    /// Limits by `config`.
    pub fn new(config: Arc<LocalRateLimit>) -> Self {
        Self {
            limiter: Arc::new(RateLimiter::new(config)),
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S, B, RB> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: LocalBody,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<RB>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !self.limiter.limited() {
            return Either::Right(self.inner.call(req));
        }
        let config = self.limiter.config();
        let info = ResponseInfo {
            flags: ResponseFlags::RATE_LIMITED,
            ..ResponseInfo::default()
        };
        let grpc = respond::is_grpc(req.headers());
        let mut rsp = respond::local(config.status, LIMITED, grpc, info);
        for (k, v) in config.response_headers.iter() {
            rsp.headers_mut().append(k.clone(), v.clone());
        }
        Either::Left(std::future::ready(Ok(rsp)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use mesh_core::model::TokenBucket;
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::body::RspBody;

    #[tokio::test]
    async fn one_bucket_for_every_service_and_clone_with_envoys_answer() {
        let mut limit = LocalRateLimit::new(TokenBucket {
            max_tokens: 3,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(3600),
        });
        limit.response_headers = Box::new([(
            http::HeaderName::from_static("x-local-rate-limit"),
            http::HeaderValue::from_static("true"),
        )]);
        let layer = RateLimitLayer::new(Arc::new(limit));
        let app = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(RspBody::empty()))
        });
        // Two services from one layer (two connections) and a clone of one.
        let a = layer.layer(app);
        let b = layer.layer(app);
        let get = || Request::get("/").body(()).unwrap();
        for svc in [a.clone(), b.clone(), a.clone()] {
            assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
        }
        let over = b.oneshot(get()).await.unwrap();
        assert_eq!(over.status(), 429);
        assert_eq!(over.headers()["x-local-rate-limit"], "true");
        assert_eq!(ResponseInfo::of(&over).unwrap().flags.to_string(), "RL");
        let grpc = Request::post("/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let over = a.oneshot(grpc).await.unwrap();
        assert_eq!(
            over.headers()["grpc-status"],
            "14",
            "UNAVAILABLE, as Envoy maps 429"
        );
    }
}
