//! Local rate limiting: Envoy's `local_ratelimit` token bucket, as a governor GCRA quota with
//! the same burst and the same average rate (refilled smoothly rather than in steps). The
//! bucket is per listener filter (or per route that configures its own), shared by every
//! connection; rejected requests get 429 `local_rate_limited` with the flag `RL`.

use std::sync::Arc;

use mesh_core::model::{LocalRateLimit, TokenBucket};

/// Envoy's body for a request over the limit.
pub(crate) const LIMITED: &str = "local_rate_limited";

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

    /// Whether a request is over the limit (and the limit is enforced for it); takes a token
    /// when it is not.
    pub(crate) fn limited(&self) -> bool {
        let Some(bucket) = self.bucket.as_ref() else {
            return false;
        };
        let c = &self.config;
        let sample = || fastrand::u32(0..1_000_000);
        c.enabled.hit(sample()) && bucket.check().is_err() && c.enforced.hit(sample())
    }

    /// The limit's configuration (status and headers of its answer).
    pub(crate) fn config(&self) -> &LocalRateLimit {
        &self.config
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Envoy's token bucket as a GCRA quota.
fn quota(b: &TokenBucket) -> Option<governor::Quota> {
    let per_token = b.fill_interval.checked_div(b.tokens_per_fill.max(1))?;
    let burst = std::num::NonZeroU32::new(b.max_tokens.max(1))?;
    Some(governor::Quota::with_period(per_token)?.allow_burst(burst))
}
