//! The route timeout: one deadline over all attempts, from the route's `timeout`, the request's
//! `grpc-timeout` (when `max_stream_duration.grpc_timeout_header_max` is set) and the route's
//! `max_stream_duration`.
//!
//! The deadline covers the wait for the response headers, across every attempt and backoff;
//! a response body then streams without it, so long gRPC streams are not cut (Envoy applies its
//! route timeout to the body too, which is why Istio turns it off for streaming services).
//! The server side bounds bodies with its own stream timers.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use mesh_core::model::ForwardAction;
use tokio::time::Sleep;

use crate::flags::ResponseFlags;
use crate::respond::{self, LocalBody, ResponseInfo};

/// `grpc-timeout`, as a name (a lookup by `&str` parses it on every request).
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// A route's timeouts, as Envoy's `RouteAction` sets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteTimeout {
    /// `timeout`: the deadline for the response headers, over every attempt. `None` for none.
    pub timeout: Option<Duration>,
    /// `max_stream_duration.max_stream_duration`: a deadline of its own, answered with flag
    /// `UMSDR` and 408.
    pub max_stream_duration: Option<Duration>,
    /// `max_stream_duration.grpc_timeout_header_max`: when set, a request's `grpc-timeout`
    /// replaces `timeout`, capped at this (zero: uncapped).
    pub grpc_timeout_header_max: Option<Duration>,
    /// `max_stream_duration.grpc_timeout_header_offset`: taken off the `grpc-timeout`.
    pub grpc_timeout_header_offset: Duration,
}

impl RouteTimeout {
    /// A route's timeouts.
    pub(crate) fn of_route(fwd: &ForwardAction) -> Self {
        let msd = fwd.max_stream_duration.unwrap_or_default();
        Self {
            timeout: fwd.timeout,
            max_stream_duration: msd.max.filter(|d| !d.is_zero()),
            grpc_timeout_header_max: msd.grpc_timeout_header_max,
            grpc_timeout_header_offset: msd.grpc_timeout_header_offset.unwrap_or_default(),
        }
    }

    /// Whether no request can have a deadline.
    fn is_none(&self) -> bool {
        self.timeout.is_none()
            && self.max_stream_duration.is_none()
            && self.grpc_timeout_header_max.is_none()
    }

    /// The deadline of a request with `headers`, or `None` for no limit.
    pub(crate) fn deadline(&self, headers: &HeaderMap) -> Option<Deadline> {
        let mut timeout = self.timeout;
        if let Some(cap) = self.grpc_timeout_header_max
            && let Some(grpc) = headers
                .get(GRPC_TIMEOUT)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout)
        {
            let mut t = grpc.saturating_sub(self.grpc_timeout_header_offset);
            if !cap.is_zero() {
                t = t.min(cap);
            }
            // A zero result means "no deadline" only for the header-less case; an expired
            // grpc-timeout still times out at once.
            timeout = Some(t);
        }
        let route = timeout.map(|after| Deadline {
            after,
            flag: ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        });
        let stream = self.max_stream_duration.map(|after| Deadline {
            after,
            flag: ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED,
        });
        match (route, stream) {
            (Some(r), Some(s)) => Some(if s.after < r.after { s } else { r }),
            (r, s) => r.or(s),
        }
    }
}

/// The deadline of a request and the flag it ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) after: Duration,
    pub(crate) flag: ResponseFlags,
}

/// Answers 504 `upstream request timeout` (flag `UT`) when the inner service has not answered
/// by the route's deadline, as Envoy's router does; 408 with flag `UMSDR` when
/// `max_stream_duration` ends first. gRPC requests get `UNAVAILABLE` in a trailers-only
/// answer. Only the wait for the response headers is timed.
///
/// ```
/// # async fn run() {
/// use std::time::Duration;
/// use mesh_tower::layer::RouteTimeoutLayer;
/// use mesh_tower::{ResponseInfo, RspBody};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let slow = service_fn(|_req: http::Request<()>| async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, std::convert::Infallible>(http::Response::new(RspBody::empty()))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(RouteTimeoutLayer::new(Duration::from_millis(20)))
///     .service(slow);
/// let rsp = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(rsp.status(), 504);
/// assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "UT");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteTimeoutLayer {
    config: RouteTimeout,
}

impl RouteTimeoutLayer {
    /// A route timeout of `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::from_config(RouteTimeout {
            timeout: Some(timeout),
            ..RouteTimeout::default()
        })
    }

    /// The timeouts of `config`.
    pub fn from_config(config: RouteTimeout) -> Self {
        Self { config }
    }
}

impl<S> tower::Layer<S> for RouteTimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            config: self.config,
        }
    }
}

/// The service of [`RouteTimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    config: RouteTimeout,
}

impl<S, B, RB> tower::Service<Request<B>> for Timeout<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    RB: LocalBody,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deadline = if self.config.is_none() {
            None
        } else {
            self.config.deadline(req.headers())
        };
        let grpc = deadline.is_some() && respond::is_grpc(req.headers());
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: deadline.map(|d| tokio::time::sleep(d.after)),
            flag: deadline.map_or(ResponseFlags::NONE, |d| d.flag),
            grpc,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Timeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        flag: ResponseFlags,
        grpc: bool,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: LocalBody,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => {
                let status = if *this.flag == ResponseFlags::UPSTREAM_REQUEST_TIMEOUT {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::REQUEST_TIMEOUT
                };
                let info = ResponseInfo {
                    flags: *this.flag,
                    ..ResponseInfo::default()
                };
                Poll::Ready(Ok(respond::local(
                    status,
                    "upstream request timeout",
                    *this.grpc,
                    info,
                )))
            }
            _ => Poll::Pending,
        }
    }
}

/// Parses gRPC's `grpc-timeout` (`<digits><unit>`, at most 8 digits).
pub(crate) fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::{ClusterSpecifier, MaxStreamDuration};

    fn fwd(timeout: Option<Duration>, msd: Option<MaxStreamDuration>) -> ForwardAction {
        ForwardAction {
            cluster: ClusterSpecifier::Cluster("c".into()),
            timeout,
            idle_timeout: None,
            retry: None,
            hedge: None,
            hash_policies: Box::new([]),
            mirrors: Box::new([]),
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            max_stream_duration: msd,
            cluster_not_found_status: http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn deadline(fwd: &ForwardAction, headers: &HeaderMap) -> Option<Deadline> {
        RouteTimeout::of_route(fwd).deadline(headers)
    }

    #[test]
    fn grpc_timeout_syntax() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None, "at most 8 digits");
    }

    #[test]
    fn route_timeout_applies_without_grpc_settings() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "50m".parse().unwrap());
        let d = deadline(&fwd(Some(Duration::from_secs(3)), None), &h).unwrap();
        assert_eq!(
            d.after,
            Duration::from_secs(3),
            "grpc-timeout ignored unless enabled"
        );
        assert!(deadline(&fwd(None, None), &h).is_none());
    }

    #[test]
    fn grpc_timeout_is_honoured_capped_and_offset() {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "500m".parse().unwrap());
        let msd = |max: u64, off: u64| MaxStreamDuration {
            max: None,
            grpc_timeout_header_max: Some(Duration::from_millis(max)),
            grpc_timeout_header_offset: Some(Duration::from_millis(off)),
        };
        let d = |m| {
            deadline(&fwd(Some(Duration::from_secs(15)), Some(m)), &h)
                .unwrap()
                .after
        };
        assert_eq!(d(msd(0, 0)), Duration::from_millis(500));
        assert_eq!(d(msd(200, 0)), Duration::from_millis(200));
        assert_eq!(d(msd(0, 100)), Duration::from_millis(400));
    }

    #[test]
    fn max_stream_duration_caps_with_its_own_flag() {
        let m = MaxStreamDuration {
            max: Some(Duration::from_millis(100)),
            ..MaxStreamDuration::default()
        };
        let d = deadline(
            &fwd(Some(Duration::from_secs(1)), Some(m)),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(d.after, Duration::from_millis(100));
        assert_eq!(d.flag, ResponseFlags::UPSTREAM_MAX_STREAM_DURATION_REACHED);
    }

    mod layer {
        use super::*;
        use crate::{ResponseInfo, RspBody};
        use tower::{Layer, ServiceExt, service_fn};

        fn answering_after(
            d: Duration,
        ) -> impl tower::Service<
            Request<()>,
            Response = Response<RspBody>,
            Error = std::convert::Infallible,
            Future = impl Send,
        > + Clone {
            service_fn(move |_req: Request<()>| async move {
                tokio::time::sleep(d).await;
                Ok(Response::new(RspBody::empty()))
            })
        }

        #[tokio::test(start_paused = true)]
        async fn an_answer_in_time_passes_untouched() {
            let svc = RouteTimeoutLayer::new(Duration::from_secs(1))
                .layer(answering_after(Duration::from_millis(999)));
            let rsp = svc.oneshot(Request::new(())).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
            assert!(ResponseInfo::of(&rsp).is_none(), "nothing to report");
        }

        #[tokio::test(start_paused = true)]
        async fn grpc_requests_time_out_with_their_own_deadline_as_unavailable() {
            let config = RouteTimeout {
                timeout: Some(Duration::from_secs(10)),
                grpc_timeout_header_max: Some(Duration::ZERO),
                ..RouteTimeout::default()
            };
            let svc = RouteTimeoutLayer::from_config(config)
                .layer(answering_after(Duration::from_secs(5)));
            let req = Request::post("/pkg.Svc/Call")
                .header("content-type", "application/grpc")
                .header("grpc-timeout", "200m")
                .body(())
                .unwrap();
            let start = tokio::time::Instant::now();
            let rsp = svc.oneshot(req).await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_millis(200));
            assert_eq!(rsp.status(), StatusCode::OK, "trailers-only");
            assert_eq!(rsp.headers()["grpc-status"], "14");
            assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "UT");
        }

        #[tokio::test(start_paused = true)]
        async fn max_stream_duration_answers_408() {
            let config = RouteTimeout {
                timeout: Some(Duration::from_secs(10)),
                max_stream_duration: Some(Duration::from_millis(100)),
                ..RouteTimeout::default()
            };
            let svc = RouteTimeoutLayer::from_config(config)
                .layer(answering_after(Duration::from_secs(5)));
            let rsp = svc.oneshot(Request::new(())).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::REQUEST_TIMEOUT);
            assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "UMSDR");
        }
    }
}
