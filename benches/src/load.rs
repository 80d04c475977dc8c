//! The one load generator every scenario uses: closed loop (workers back to back) or open loop
//! (a pacer thread sends at fixed intended times), latencies in an HDR histogram.
//!
//! Open-loop latency runs from each request's *intended* send time, so a stalled server
//! shows up in the percentiles instead of slowing the sender down (no coordinated omission).
//! The pacer is a plain thread sleeping with 1 µs timer slack: Tokio's timer wheel ticks in
//! milliseconds, which at 4000 req/s would bunch four sends into each tick and add up to a
//! millisecond to every latency.

use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

/// A request that has not finished after this long counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The application client of a scenario: what sends one request.
// A few long-lived callers, cloned once per request in the open loop: boxing the large
// variant would add an allocation to every clone.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Caller {
    /// hyper-util's pooled client, to the server or to the first Envoy.
    Hyper {
        client: Client<HttpConnector, Empty<Bytes>>,
        uri: http::Uri,
        host: http::HeaderValue,
    },
    /// The mesh's outbound side.
    Mesh {
        client: mesh_tower::MeshClient,
        uri: http::Uri,
    },
    /// A tonic channel, to the server or to the first Envoy.
    Grpc(AuthorizationClient<tonic::transport::Channel>),
    /// A tonic client on an `xds:///` channel.
    MeshGrpc(AuthorizationClient<mesh_grpc::MeshChannel>),
}

impl Caller {
    /// Sends one request; whether it succeeded (200 and the whole body, or gRPC OK).
    pub(crate) async fn call(&self) -> bool {
        let sent = async {
            match self {
                Self::Hyper { client, uri, host } => {
                    let mut req = http::Request::get(uri.clone())
                        .header("user-agent", "mesh-bench")
                        .body(Empty::new())
                        .expect("request");
                    req.headers_mut().insert(http::header::HOST, host.clone());
                    match client.request(req).await {
                        Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    }
                }
                Self::Mesh { client, uri } => {
                    let req = http::Request::get(uri.clone())
                        .header("user-agent", "mesh-bench")
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    match client.send(req).await {
                        Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    }
                }
                Self::Grpc(c) => c.clone().check(CheckRequest::default()).await.is_ok(),
                Self::MeshGrpc(c) => c.clone().check(CheckRequest::default()).await.is_ok(),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, sent)
            .await
            .unwrap_or(false)
    }
}

/// What one load phase saw.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// Latencies in microseconds.
    pub(crate) latency: Histogram<u64>,
}

impl Outcome {
    fn new() -> Self {
        Self {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        }
    }

    fn record(&mut self, latency: Duration, ok: bool) {
        self.requests += 1;
        self.errors += u64::from(!ok);
        self.latency.saturating_record(latency.as_micros() as u64);
    }

    /// The latency at quantile `q`, in microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }
}

/// `per_caller` workers on each of `callers` send back to back for `d`.
pub(crate) async fn closed_loop(callers: &[Caller], per_caller: usize, d: Duration) -> Outcome {
    let started = Instant::now();
    let end = started + d;
    let workers: Vec<_> = callers
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, per_caller))
        .map(|caller| {
            let caller = caller.clone();
            tokio::spawn(async move {
                let mut out = Outcome::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let ok = caller.call().await;
                    out.record(t.elapsed(), ok);
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::new();
    for w in workers {
        let w = w.await.expect("load worker");
        total.requests += w.requests;
        total.errors += w.errors;
        total.latency.add(&w.latency).expect("same bounds");
    }
    total.elapsed = started.elapsed();
    total
}

/// Sends `rate` requests a second for `d` through `caller` on `runtime`, from the calling
/// thread (which it occupies: call it from a blocking task). Requests still in flight at the
/// end are waited for, up to [`REQUEST_TIMEOUT`]. Each request's outcome comes back over a
/// channel, so the runtime's tasks share nothing but the channel.
// The pacer sleeps on its own thread, never on the runtime's (see the module doc).
#[allow(clippy::disallowed_methods)]
pub(crate) fn open_loop(
    runtime: &tokio::runtime::Handle,
    caller: &Caller,
    rate: u32,
    d: Duration,
) -> Outcome {
    crate::sys::precise_timers();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, bool)>();
    let mut out = Outcome::new();
    let period = Duration::from_secs(1) / rate;
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let intended = started + period * sent as u32;
        if intended >= started + d {
            break;
        }
        if let Some(wait) = intended.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (caller, tx) = (caller.clone(), tx.clone());
        runtime.spawn(async move {
            let ok = caller.call().await;
            let _ = tx.send((intended.elapsed(), ok));
        });
        sent += 1;
        // Drain as we go, so the channel stays short.
        while let Ok((latency, ok)) = rx.try_recv() {
            out.record(latency, ok);
        }
    }
    let elapsed = started.elapsed();
    let deadline = Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(1);
    while out.requests < sent && Instant::now() < deadline {
        match rx.try_recv() {
            Ok((latency, ok)) => out.record(latency, ok),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    // Requests that never finished are errors too.
    out.errors += sent - out.requests;
    out.requests = sent;
    out.elapsed = elapsed;
    out
}
