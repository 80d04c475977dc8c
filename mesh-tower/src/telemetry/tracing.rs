//! Distributed tracing: a span per request on each side, exported over OTLP (gRPC) with the
//! OpenTelemetry SDK, as Envoy's OpenTelemetry tracer does for a sidecar.
//!
//! The server side continues the caller's trace (W3C or B3 headers), makes a `SERVER` span
//! and rewrites the request's trace headers to it, so an application that copies them onto
//! its outbound calls (as Bookinfo's services do) parents the client side's `CLIENT` span
//! on it; that span is written into the outgoing request the same way (W3C always, B3 when
//! the request carried B3). Spans end
//! when their response ends, with Envoy's attributes (`upstream_cluster`, `http.status_code`,
//! `response_flags`, the peer's identity…). Sampling is the caller's decision when there is
//! one, else a ratio of new traces (Istio's default: 1 %).
//!
//! A telemetry backend's failure never reaches traffic: spans are batched and exported in the
//! background; a batch the receiver does not take is dropped, counted
//! ([`Telemetry::dropped_spans`](super::Telemetry::dropped_spans)) and logged at most once a
//! minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};

use super::Telemetry;
use super::propagation::{self, Formats};

/// How to trace: where spans go and how many traces to start.
///
/// ```no_run
/// # async fn run(mesh: mesh_core::Mesh) -> Result<(), Box<dyn std::error::Error>> {
/// mesh_tower::telemetry::Tracing::otlp("http://otel-collector:4317")
///     .sampling(0.01)
///     .install(&mesh)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "tracing is off until `install` is called"]
pub struct Tracing {
    endpoint: String,
    sampling: f64,
    service_name: Option<String>,
    export_timeout: Duration,
    batch_delay: Duration,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("tracing: {0}")]
pub struct TracingError(String);

impl Tracing {
    /// Export to an OTLP/gRPC receiver (`http://host:4317`).
    pub fn otlp(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            sampling: 0.01,
            service_name: None,
            export_timeout: Duration::from_secs(5),
            batch_delay: Duration::from_secs(5),
        }
    }

    /// The share of new traces sampled, 0 to 1. Requests that arrive with a sampling
    /// decision keep it. Default: 0.01 (Istio's default).
    pub fn sampling(mut self, ratio: f64) -> Self {
        self.sampling = ratio.clamp(0.0, 1.0);
        self
    }

    /// `service.name` of the spans. Default: `<canonical service>.<namespace>`, as Istio
    /// names a workload's spans.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// How long one export may take before its batch is dropped. Default: 5 s.
    pub fn export_timeout(mut self, d: Duration) -> Self {
        self.export_timeout = d;
        self
    }

    /// How long finished spans wait to be exported together. Default: 5 s (the SDK's).
    pub fn batch_delay(mut self, d: Duration) -> Self {
        self.batch_delay = d;
        self
    }

    /// Turns tracing on for every client and server of `mesh`. Must run inside a Tokio
    /// runtime (the exporter's connection lives on it).
    pub fn install(self, mesh: &mesh_core::Mesh) -> Result<(), TracingError> {
        use opentelemetry_otlp::WithExportConfig;
        let telemetry = Telemetry::of(mesh);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&self.endpoint)
            .with_timeout(self.export_timeout)
            .build()
            .map_err(|e| TracingError(format!("OTLP exporter for {}: {e}", self.endpoint)))?;
        let local = &telemetry.local;
        let service = self
            .service_name
            .unwrap_or_else(|| format!("{}.{}", local.canonical_service, local.namespace));
        let processor = BatchSpanProcessor::builder(CountingExporter {
            inner: exporter,
            dropped: telemetry.dropped_spans.clone(),
            endpoint: self.endpoint.clone(),
            last_log: AtomicU64::new(0),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(self.batch_delay)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                self.sampling,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .with_attributes([
                        KeyValue::new("k8s.namespace.name", local.namespace.to_string()),
                        KeyValue::new("service.version", local.canonical_revision.to_string()),
                    ])
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "mesh");
        telemetry
            .tracer
            .store(Some(Arc::new(Tracer { tracer, provider })));
        Ok(())
    }
}

/// The installed tracer.
pub(crate) struct Tracer {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Passes batches to the OTLP exporter and counts the ones it could not deliver.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    dropped: Arc<AtomicU64>,
    endpoint: String,
    /// Seconds since the epoch of the last "dropped" log line.
    last_log: AtomicU64,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.last_log.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .last_log
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(endpoint = %self.endpoint, error = %e, dropped_total = total, "spans dropped: the OTLP receiver did not take them");
            }
        }
        // Failures are counted here; the SDK need not log each one again.
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// A request's span, ended when its response ends.
pub(crate) struct RequestSpan {
    span: opentelemetry_sdk::trace::Span,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan")
            .field("context", self.span.span_context())
            .finish()
    }
}

/// Which side a span is for. Either way the span continues the request's context and is
/// written back into it in W3C form and in the B3 forms the request carried.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    /// `MeshClient`: a `CLIENT` span.
    Client,
    /// `serve`: a `SERVER` span.
    Server,
}

impl Tracer {
    /// Starts a request's span from (and into) its headers. `None` when the trace is not
    /// sampled: the headers still carry the context (and the decision) on, but nothing else
    /// is built, so unsampled requests cost little more than the header rewrite.
    pub(crate) fn start<B>(
        &self,
        side: Side,
        req: &mut http::Request<B>,
        describe: impl FnOnce(&http::Request<B>) -> (String, Vec<KeyValue>),
    ) -> Option<RequestSpan> {
        let (parent, seen) = propagation::extract(req.headers());
        let cx = match &parent {
            Some(p) => Context::new().with_remote_span_context(p.clone()),
            None => Context::new(),
        };
        let kind = match side {
            Side::Client => SpanKind::Client,
            Side::Server => SpanKind::Server,
        };
        let mut span = self
            .tracer
            .build_with_context(SpanBuilder::from_name("").with_kind(kind), &cx);
        // The formats the caller used, and W3C always.
        let formats = Formats { w3c: true, ..seen };
        propagation::inject(
            req.headers_mut(),
            span.span_context(),
            parent.map(|p| p.span_id()),
            formats,
        );
        if !span.is_recording() {
            return None;
        }
        let (name, attributes) = describe(req);
        span.update_name(name);
        span.set_attributes(attributes);
        Some(RequestSpan { span })
    }
}

/// What a span learns when its response ends.
#[derive(Debug, Default)]
pub(crate) struct SpanEnd {
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) upstream: Option<std::net::SocketAddr>,
}

impl RequestSpan {
    /// Ends the span with the response's facts.
    pub(crate) fn end(
        mut self,
        status: u16,
        grpc_status: Option<u16>,
        end: &SpanEnd,
        attributes: impl IntoIterator<Item = KeyValue>,
    ) {
        self.span
            .set_attribute(KeyValue::new("http.status_code", i64::from(status)));
        if let Some(g) = grpc_status {
            self.span
                .set_attribute(KeyValue::new("grpc.status_code", i64::from(g)));
        }
        if let Some(c) = &end.cluster {
            self.span
                .set_attribute(KeyValue::new("upstream_cluster", c.to_string()));
        }
        if let Some(u) = end.upstream {
            self.span
                .set_attribute(KeyValue::new("upstream_address", u.to_string()));
        }
        self.span.set_attributes(attributes);
        if status >= 500 || grpc_status.is_some_and(|g| g != 0) {
            self.span.set_status(Status::error(""));
        }
        self.span.end();
    }
}
