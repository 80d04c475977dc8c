//! A closed-loop load generator: `concurrency` workers send back to back until a count or a
//! deadline is reached, recording each request's latency and success.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests sent.
    pub requests: usize,
    /// Requests that succeeded.
    pub ok: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Every latency, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    /// Share of requests that succeeded.
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.ok as f64 / self.requests as f64
    }

    /// The latency at quantile `q` (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }

    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `send` from `concurrency` workers until `total` requests have been sent or
/// `deadline` has passed, whichever comes first. `send` returns whether the request succeeded.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    total: usize,
    deadline: Duration,
    send: F,
) -> LoadReport
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let end = started + deadline;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (send, next) = (send.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < end {
                    let t = Instant::now();
                    let ok = send().await;
                    out.push((t.elapsed(), ok));
                }
                out
            })
        })
        .collect();
    let mut report = LoadReport::default();
    for w in workers {
        for (latency, ok) in w.await.expect("worker") {
            report.requests += 1;
            report.ok += ok as usize;
            report.latencies.push(latency);
        }
    }
    report.elapsed = started.elapsed();
    report.latencies.sort_unstable();
    report
}
