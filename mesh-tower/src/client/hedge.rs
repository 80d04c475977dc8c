//! Hedging on per-try timeout (`HedgePolicy.hedge_on_per_try_timeout`): when an attempt's
//! per-try timeout fires, another attempt starts while the first stays in flight, and the
//! first good answer wins; the others are cancelled by being dropped.
//!
//! Concurrent attempts each need the whole request body, so hedging applies only to requests
//! whose body is known in full (empty, or small and of known length); others are retried the
//! ordinary way, one attempt after another.

use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::request::Parts;
use http::{Request, Response};
use mesh_core::model::RetryPolicy;

use super::attempt::{self, Attempt, AttemptRoute, ClusterAdmission, Try};
use crate::body::{BodySource, CompleteBody, RspBody};
use crate::flags::ResponseFlags;
use crate::layer::retry::{self, Admission};
use crate::respond::{self, ResponseInfo};

/// A complete body, copied once per attempt.
pub(super) struct Copies(CompleteBody);

impl Copies {
    /// `None` when the body is not known in full.
    pub(super) fn new(body: &BodySource) -> Option<Self> {
        body.complete().map(Self)
    }

    fn next(&self) -> crate::body::ReqBody {
        self.0.to_body()
    }
}

type InFlight<'a> =
    FuturesUnordered<Pin<Box<dyn std::future::Future<Output = Attempt> + Send + 'a>>>;

/// What a hedged request is sent with.
pub(super) struct Hedged<'a> {
    pub(super) route: &'a AttemptRoute,
    pub(super) policy: &'a RetryPolicy,
    pub(super) admission: &'a ClusterAdmission,
    pub(super) attempt_count_header: bool,
}

/// Runs attempts, starting another whenever the newest one's per-try timeout fires.
pub(super) async fn run(
    hedged: Hedged<'_>,
    head: Parts,
    body: Copies,
    hash: Option<u64>,
) -> Response<RspBody> {
    let Hedged {
        route,
        policy,
        admission,
        attempt_count_header,
    } = hedged;
    let per_try = policy
        .per_try_timeout
        .expect("hedging needs a per-try timeout");
    let grpc = respond::is_grpc(&head.headers);
    let max = 1 + policy.num_retries;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut started = 0u32;
    let mut in_flight: InFlight<'_> = FuturesUnordered::new();
    let mut last: Option<Attempt> = None;
    let head = &head;
    let body = &body;
    let launch = |n: u32, tried: &[SocketAddr], slot| {
        let mut req = Request::new(Try {
            body: Some(body.next()),
            hash,
            avoid: if policy.avoid_previous_hosts {
                tried.to_vec()
            } else {
                Vec::new()
            },
        });
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = head.uri.clone();
        *req.version_mut() = head.version;
        let headers = req.headers_mut();
        *headers = head.headers.clone();
        retry::mark_attempt(headers, n, grpc, attempt_count_header);
        Box::pin(async move {
            // A retry counts against the budget while it is in flight.
            let _slot = slot;
            attempt::one(route, req, false).await
        }) as Pin<Box<dyn std::future::Future<Output = Attempt> + Send + '_>>
    };
    let answer = |a: Attempt, started: u32, flags: ResponseFlags| {
        let mut rsp = a.into_response(grpc);
        let info = ResponseInfo::of_mut(&mut rsp);
        info.attempts = started;
        info.flags |= flags;
        rsp
    };
    started += 1;
    in_flight.push(launch(started, &tried, None));
    let mut timer = Box::pin(tokio::time::sleep(per_try));
    loop {
        tokio::select! {
            Some(a) = in_flight.next() => {
                if let Some(addr) = a.host {
                    tried.push(addr);
                }
                let retriable = match a.failure() {
                    Some(f) => retry::failure_retriable(policy, f),
                    None => a.result.as_ref().is_ok_and(|(rsp, _)| {
                        retry::status_retriable(policy, rsp.status().as_u16(), rsp.headers())
                    }),
                };
                if !retriable {
                    return answer(a, started, ResponseFlags::NONE);
                }
                last = Some(a);
                if !in_flight.is_empty() {
                    // Another attempt may still answer well.
                    continue;
                }
                if started >= max {
                    let a = last.take().expect("just set");
                    return answer(a, started, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                }
                tokio::time::sleep(retry::backoff(policy, started)).await;
                let Some(slot) = admission.admit() else {
                    let a = last.take().expect("just set");
                    return answer(a, started, ResponseFlags::UPSTREAM_OVERFLOW);
                };
                started += 1;
                in_flight.push(launch(started, &tried, Some(slot)));
                timer.as_mut().reset(tokio::time::Instant::now() + per_try);
            }
            _ = &mut timer, if started < max => {
                if let Some(slot) = admission.admit() {
                    started += 1;
                    in_flight.push(launch(started, &tried, Some(slot)));
                }
                timer.as_mut().reset(tokio::time::Instant::now() + per_try);
            }
            else => {
                // Nothing in flight and nothing more to start.
                return match last.take() {
                    Some(a) => answer(a, started, ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
                    None => unreachable!("an attempt always finishes before the loop ends"),
                };
            }
        }
    }
}
