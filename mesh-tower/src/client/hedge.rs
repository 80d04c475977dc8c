//! Hedging on per-try timeout (`HedgePolicy.hedge_on_per_try_timeout`): when an attempt's
//! per-try timeout fires, another attempt starts while the first stays in flight, and the
//! first good answer wins; the others are cancelled by being dropped.
//!
//! Concurrent attempts each need the whole request body, so hedging applies only to requests
//! whose body is known in full (empty, or small and of known length); others are retried the
//! ordinary way, one attempt after another.

use std::pin::Pin;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, Response};

use super::attempt::{self, Attempt, AttemptCtx};
use super::retry;
use crate::body::{BodySource, CompleteBody, RspBody};
use crate::flags::ResponseFlags;
use crate::respond::ResponseInfo;

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

/// Runs attempts, starting another whenever the newest one's per-try timeout fires.
pub(super) async fn run(
    ctx: &AttemptCtx,
    headers: HeaderMap,
    body: Copies,
    info: &mut ResponseInfo,
) -> Response<RspBody> {
    let policy = ctx.retry.as_deref().expect("hedging needs a retry policy");
    let per_try = policy
        .per_try_timeout
        .expect("hedging needs a per-try timeout");
    let max = 1 + policy.num_retries;
    let mut tried: Vec<u32> = Vec::new();
    let mut started = 0u32;
    let mut in_flight: InFlight<'_> = FuturesUnordered::new();
    let mut last: Option<Attempt> = None;
    let launch = |n: u32, tried: &[u32], slot| {
        let tried = tried.to_vec();
        let headers = headers.clone();
        let body = body.next();
        Box::pin(async move { attempt::one(ctx, n, headers, body, &tried, slot, false).await })
            as Pin<Box<dyn std::future::Future<Output = Attempt> + Send + '_>>
    };
    started += 1;
    in_flight.push(launch(started, &tried, None));
    let mut timer = Box::pin(tokio::time::sleep(per_try));
    loop {
        tokio::select! {
            Some(a) = in_flight.next() => {
                info.attempts = started;
                if let Some((index, addr)) = a.host {
                    info.upstream = Some(addr);
                    tried.push(index);
                }
                let retriable = a.retry_outcome().is_some_and(|o| retry::retriable(policy, o));
                if !retriable {
                    return a.into_response(ctx, info);
                }
                last = Some(a);
                if !in_flight.is_empty() {
                    // Another attempt may still answer well.
                    continue;
                }
                if started >= max {
                    info.flags |= ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
                    return last.take().expect("just set").into_response(ctx, info);
                }
                tokio::time::sleep(retry::backoff(policy, started)).await;
                let state = ctx.cluster.state();
                let Some(slot) = ctx.cluster.counters.try_retry(&state.config.circuit_breakers, ctx.retry_budget.as_ref()) else {
                    info.flags |= ResponseFlags::UPSTREAM_OVERFLOW;
                    return last.take().expect("just set").into_response(ctx, info);
                };
                started += 1;
                in_flight.push(launch(started, &tried, Some(slot)));
                timer.as_mut().reset(tokio::time::Instant::now() + per_try);
            }
            _ = &mut timer, if started < max => {
                let state = ctx.cluster.state();
                if let Some(slot) = ctx.cluster.counters.try_retry(&state.config.circuit_breakers, ctx.retry_budget.as_ref()) {
                    started += 1;
                    in_flight.push(launch(started, &tried, Some(slot)));
                }
                timer.as_mut().reset(tokio::time::Instant::now() + per_try);
            }
            else => {
                // Nothing in flight and nothing more to start.
                info.flags |= ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
                return match last.take() {
                    Some(a) => a.into_response(ctx, info),
                    None => unreachable!("an attempt always finishes before the loop ends"),
                };
            }
        }
    }
}
