//! Istio's metrics pushed over OTLP/gRPC (`opentelemetry.proto.collector.metrics.v1`), for
//! operators whose collector takes OTLP rather than scraping `/stats/prometheus`.
//!
//! Every interval, each series goes out as it stands (cumulative temporality, as Prometheus
//! counts): `istio_requests_total` as a monotonic sum, the three histograms with Istio's
//! bucket bounds, each data point with the series' Istio labels as attributes. A receiver
//! that does not answer costs traffic nothing: the push runs in its own task, a failed push
//! is counted ([`Telemetry::failed_metric_pushes`]) and logged at most once a minute, and the
//! next push carries the cumulative values again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as pb;
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::Telemetry;
use super::metrics::{HISTOGRAMS, REQUESTS, REQUESTS_HELP, SeriesView};

/// Where and how often to push metrics.
///
/// ```no_run
/// # async fn run(mesh: mesh_core::Mesh) -> Result<(), Box<dyn std::error::Error>> {
/// mesh_tower::telemetry::MetricsExport::otlp("http://otel-collector:4317")
///     .interval(std::time::Duration::from_secs(15))
///     .install(&mesh)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use = "nothing is pushed until `install` is called"]
pub struct MetricsExport {
    endpoint: String,
    interval: Duration,
    timeout: Duration,
}

/// Why the export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("metrics export: {0}")]
pub struct MetricsExportError(String);

impl MetricsExport {
    /// Push to an OTLP/gRPC receiver (`http://host:4317`).
    pub fn otlp(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
        }
    }

    /// Time between pushes. Default: 15 s (Prometheus's default scrape interval).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// How long one push may take. Default: 5 s.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Starts pushing the metrics of every client and server of `mesh`. Must run inside a
    /// Tokio runtime.
    pub fn install(self, mesh: &mesh_core::Mesh) -> Result<(), MetricsExportError> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| MetricsExportError(format!("{}: {e}", self.endpoint)))?
            .timeout(self.timeout)
            .connect_lazy();
        let telemetry = Telemetry::of(mesh);
        let weak = Arc::downgrade(&telemetry);
        let started = SystemTime::now();
        let (endpoint, interval) = (self.endpoint, self.interval);
        tokio::spawn(async move {
            let mut client = MetricsServiceClient::new(channel);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let last_log = AtomicU64::new(0);
            loop {
                tick.tick().await;
                // The mesh is gone: stop.
                let Some(telemetry) = weak.upgrade() else {
                    return;
                };
                let request = export_request(&telemetry, started, SystemTime::now());
                if let Err(e) = client.export(request).await {
                    let failed = telemetry
                        .failed_metric_pushes
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    let now = unix_secs(SystemTime::now());
                    let last = last_log.load(Ordering::Relaxed);
                    if now >= last + 60 {
                        last_log.store(now, Ordering::Relaxed);
                        tracing::warn!(%endpoint, error = %e, failed_total = failed, "metrics push failed");
                    }
                }
            }
        });
        Ok(())
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn text(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
        }),
        ..Default::default()
    }
}

/// The OTLP form of every series now.
pub(crate) fn export_request(
    telemetry: &Telemetry,
    started: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let series = telemetry.metrics.snapshot();
    let (start, time) = (unix_nanos(started), unix_nanos(now));
    let attributes =
        |s: &SeriesView| -> Vec<KeyValue> { s.labels.iter().map(|(k, v)| text(k, v)).collect() };
    let cumulative = pb::AggregationTemporality::Cumulative as i32;
    let mut metrics = vec![pb::Metric {
        name: REQUESTS.to_owned(),
        description: REQUESTS_HELP.to_owned(),
        unit: "1".to_owned(),
        data: Some(pb::metric::Data::Sum(pb::Sum {
            data_points: series
                .iter()
                .map(|s| pb::NumberDataPoint {
                    attributes: attributes(s),
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    value: Some(pb::number_data_point::Value::AsInt(s.requests as i64)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        })),
        ..Default::default()
    }];
    for (i, (name, help)) in HISTOGRAMS.iter().enumerate() {
        metrics.push(pb::Metric {
            name: (*name).to_owned(),
            description: (*help).to_owned(),
            unit: if i == 0 { "ms" } else { "By" }.to_owned(),
            data: Some(pb::metric::Data::Histogram(pb::Histogram {
                data_points: series
                    .iter()
                    .map(|s| {
                        let h = &s.histograms[i];
                        pb::HistogramDataPoint {
                            attributes: attributes(s),
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            count: h.counts.iter().sum(),
                            sum: Some(h.sum),
                            bucket_counts: h.counts.clone(),
                            explicit_bounds: h.bounds.to_vec(),
                            ..Default::default()
                        }
                    })
                    .collect(),
                aggregation_temporality: cumulative,
            })),
            ..Default::default()
        });
    }
    let local = &telemetry.local;
    ExportMetricsServiceRequest {
        resource_metrics: vec![pb::ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    text(
                        "service.name",
                        &format!("{}.{}", local.canonical_service, local.namespace),
                    ),
                    text("k8s.namespace.name", &local.namespace),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![pb::ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "mesh".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
