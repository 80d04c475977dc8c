//! One inbound request: its header bounds, telemetry (metrics, span, access log), the
//! chain's HTTP filters, then the application within the stream's timers, its answer bounded
//! by the stream's body timers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh_core::model::RequestView;
use opentelemetry::KeyValue;

use super::filters::{HttpFilters, Verdict};
use super::http_connection::Connection;
use super::{App, Caller, PeerIdentity, Reply, limits};
use crate::body::BoxError;
use crate::flags::ResponseFlags;
use crate::respond::{self, ResponseInfo};
use crate::telemetry::exchange::Observed;
use crate::telemetry::metrics::Security;
use crate::telemetry::{Side, Watch};

type ServerBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A response body that ends its stream (for the connection's idle and stream timers) when
/// it is done or dropped, and fails (resetting the stream) when its own timers pass.
pub(super) struct StreamBody {
    body: ServerBody,
    timers: Option<limits::BodyTimers>,
    _stream: limits::StreamGuard,
}

impl StreamBody {
    fn new(
        body: ServerBody,
        stream: limits::StreamGuard,
        limits: &limits::Limits,
        started: Instant,
    ) -> Self {
        Self {
            body,
            timers: limits::BodyTimers::new(limits, tokio::time::Instant::from_std(started)),
            _stream: stream,
        }
    }
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = &mut this.timers {
                    t.frame_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.timers.as_mut().map(|t| t.poll_expired(cx)) {
                Some(Poll::Ready(why)) => {
                    tracing::debug!(?why, "response stream timed out; resetting it");
                    Poll::Ready(Some(Err(limits::BodyTimedOut(why).into())))
                }
                _ => Poll::Pending,
            },
            done => done,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What a connection's requests share.
pub(super) struct RequestContext {
    pub(super) identity: PeerIdentity,
    pub(super) sni: Option<Arc<str>>,
    pub(super) conn: Connection,
    pub(super) activity: Arc<limits::Activity>,
    pub(super) limits: limits::Limits,
    pub(super) security: Security,
}

/// One request: its header bounds, telemetry, the chain's HTTP filters, then the
/// application within the stream's timers; every answer, the application's or a local one,
/// observed and bounded by the stream's body timers.
pub(super) async fn handle<S: App>(
    mut req: Request<Incoming>,
    ctx: Arc<RequestContext>,
    mut app: S,
    start: Instant,
    stream: limits::StreamGuard,
    current: Arc<HttpFilters>,
) -> Result<Response<StreamBody>, Infallible> {
    let RequestContext {
        identity,
        sni,
        conn,
        activity,
        limits,
        security,
    } = &*ctx;
    let security = *security;
    let too_many =
        req.version() == http::Version::HTTP_2 && limits::too_many_headers(req.headers(), limits);
    if too_many || limits::small_headers_exceeded(&req, limits) {
        // hyper answers HTTP/1 with 431 itself (but for bounds under its 8 KiB
        // floor); Envoy resets an HTTP/2 stream, which a service cannot ask hyper
        // for, so it gets the same 431.
        let rsp = Reply::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            if too_many {
                "too many request headers"
            } else {
                "request headers too large"
            },
            respond::is_grpc(req.headers()),
            ResponseFlags::NONE,
        )
        .0;
        return Ok(rsp.map(|b| {
            StreamBody::new(b.map_err(Into::into).boxed_unsync(), stream, limits, start)
        }));
    }
    let labels = conn.labels(identity, RequestView::from_request(&req).authority);
    let mut watch = Watch::begin(
        &conn.telemetry,
        Side::Server,
        &mut req,
        start,
        |attributes| {
            attributes.push(KeyValue::new("peer.address", identity.addr.to_string()));
            if let Some(id) = &identity.spiffe_id {
                attributes.push(KeyValue::new("downstream_principal", id.to_string()));
            }
        },
        || {
            Some(
                identity
                    .spiffe_id
                    .as_ref()
                    .map_or_else(|| identity.addr.to_string(), |id| id.to_string()),
            )
        },
    );
    let grpc = watch.grpc();
    let mut observe = |status, headers: &http::HeaderMap, flags| {
        watch.answer(labels.clone(), status, headers, flags, security, None)
    };
    let mut extra = Vec::new();
    if !current.is_empty() {
        let caller = Caller {
            peer: identity,
            local: conn.local,
            sni: sni.as_deref(),
        };
        match current.run(&mut req, &caller).await {
            Verdict::Reply(reply) => {
                let mut rsp = reply.0;
                let flags = ResponseInfo::of(&rsp).map_or(ResponseFlags::NONE, |i| i.flags);
                let x = observe(rsp.status(), rsp.headers(), flags);
                rsp.body_mut().observe(x);
                return Ok(rsp.map(|b| {
                    let body = b.map_err(Into::into).boxed_unsync();
                    StreamBody::new(body, stream, limits, start)
                }));
            }
            Verdict::Continue(headers) => extra = headers,
        }
    }
    req.extensions_mut().insert(identity.clone());
    // 408 while the request may still be arriving, 504 once it has (Envoy decides on
    // whether the request has ended; a request without a body has at its start).
    let timeout_status = if http_body::Body::is_end_stream(req.body()) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::REQUEST_TIMEOUT
    };
    let answer = async {
        match tower::ServiceExt::ready(&mut app).await {
            Ok(app) => app.call(req).await,
            Err(e) => Err(e),
        }
    };
    // A panic in the application answers 500 and is counted, as a reset would tell
    // the caller nothing (and, on HTTP/1, lose the connection).
    let answer = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(answer));
    let mut local = |status, body: &'static str, flags| {
        let mut rsp = Reply::new(status, body, grpc, flags).0;
        let x = observe(rsp.status(), rsp.headers(), flags);
        rsp.body_mut().observe(x);
        rsp.map(|b| b.map_err(Into::into).boxed_unsync())
    };
    let mut rsp: Response<ServerBody> = match limits::bounded(
        answer,
        activity,
        limits,
        tokio::time::Instant::from_std(start),
    )
    .await
    {
        Ok(Ok(Ok(rsp))) => {
            let x = observe(rsp.status(), rsp.headers(), ResponseFlags::NONE);
            rsp.map(|b| Observed::new(b.map_err(Into::into), Some(x)).boxed_unsync())
        }
        Ok(Ok(Err(e))) => {
            let e: BoxError = e.into();
            tracing::warn!(error = %e, "application error");
            local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application error",
                ResponseFlags::NONE,
            )
        }
        Ok(Err(_panic)) => {
            tracing::error!("the application panicked; answered 500");
            conn.telemetry.metrics.application_panicked();
            local(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application panicked",
                ResponseFlags::NONE,
            )
        }
        Err(limits::StreamTimeout::Idle) => local(
            timeout_status,
            "stream timeout",
            ResponseFlags::STREAM_IDLE_TIMEOUT,
        ),
        Err(limits::StreamTimeout::Duration) => local(
            timeout_status,
            "downstream duration timeout",
            ResponseFlags::DURATION_TIMEOUT,
        ),
    };
    for (name, value, append) in extra {
        if append {
            rsp.headers_mut().append(name, value);
        } else {
            rsp.headers_mut().insert(name, value);
        }
    }
    Ok(rsp.map(|body| StreamBody::new(body, stream, limits, start)))
}
