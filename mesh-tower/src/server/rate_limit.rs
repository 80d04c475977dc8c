//! Local rate limiting: Envoy's `local_ratelimit` token bucket, as a governor GCRA quota with
//! the same burst and the same average rate (refilled smoothly rather than in steps). The
//! bucket is per listener filter (or per route that configures its own), shared by every
//! connection; rejected requests get 429 `local_rate_limited` with the flag `RL`.

use std::sync::Arc;

use mesh_core::model::{LocalRateLimit, TokenBucket};

use super::Reply;
use crate::flags::ResponseFlags;

/// A configured limit. Its bucket starts full.
pub(crate) struct RateLimiter {
    config: Arc<LocalRateLimit>,
    bucket: Option<governor::DefaultDirectRateLimiter>,
}

impl RateLimiter {
    pub(crate) fn new(config: Arc<LocalRateLimit>) -> Self {
        let bucket = config
            .bucket
            .as_ref()
            .and_then(quota)
            .map(governor::RateLimiter::direct);
        Self { config, bucket }
    }

    /// `Some` answer when the request is over the limit (and the limit is enforced for it).
    pub(crate) fn check(&self, grpc: bool) -> Option<Reply> {
        let bucket = self.bucket.as_ref()?;
        let c = &self.config;
        let sample = || fastrand::u32(0..1_000_000);
        if !c.enabled.hit(sample()) || bucket.check().is_ok() || !c.enforced.hit(sample()) {
            return None;
        }
        let mut reply = Reply::new(
            c.status,
            "local_rate_limited",
            grpc,
            ResponseFlags::RATE_LIMITED,
        );
        for (k, v) in c.response_headers.iter() {
            reply.header(k.clone(), v.clone(), true);
        }
        Some(reply)
    }
}

/// Envoy's token bucket as a GCRA quota.
fn quota(b: &TokenBucket) -> Option<governor::Quota> {
    let per_token = b.fill_interval.checked_div(b.tokens_per_fill.max(1))?;
    let burst = std::num::NonZeroU32::new(b.max_tokens.max(1))?;
    Some(governor::Quota::with_period(per_token)?.allow_burst(burst))
}
