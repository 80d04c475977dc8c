//! Telemetry: what every request through the mesh reports, on both sides.
//!
//! One [`Telemetry`] per mesh (kept with the [`Mesh`], so every `MeshClient` and every
//! `serve` of a mesh report to the same place). A request is observed from its start to
//! the end of its response body (or until the body is dropped): its status, gRPC status,
//! response flags and body sizes become Istio's standard metrics.
//!
//! ```no_run
//! # async fn run(mesh: mesh_core::Mesh) {
//! let text = mesh_tower::telemetry::Telemetry::of(&mesh).prometheus();
//! assert!(text.contains("# TYPE istio_requests_total counter"));
//! # }
//! ```

mod access_log;
pub(crate) mod exchange;
pub(crate) mod metrics;
mod metrics_export;
pub(crate) mod propagation;
mod tracing;
mod watch;
pub(crate) mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use mesh_core::Mesh;
use mesh_core::model::{ServiceRef, authority_of};

pub use access_log::AccessLog;
pub(crate) use access_log::Entry as LogEntry;
pub(crate) use exchange::Exchange;
use metrics::{Labels, Metrics, Reporter};
pub use metrics_export::{MetricsExport, MetricsExportError};
use tracing::Tracer;
pub(crate) use tracing::{RequestSpan, Side, SpanEnd};
pub use tracing::{Tracing, TracingError};
pub(crate) use watch::Watch;
use workload::{Peer, UNKNOWN};

/// A mesh's telemetry: the metrics registry and what it knows about this workload.
pub struct Telemetry {
    pub(crate) metrics: Metrics,
    pub(crate) local: Peer,
    /// Set by [`Tracing::install`].
    pub(crate) tracer: ArcSwapOption<Tracer>,
    pub(crate) dropped_spans: Arc<AtomicU64>,
    pub(crate) failed_metric_pushes: AtomicU64,
    /// Set by [`AccessLog::install`].
    pub(crate) access_log: ArcSwapOption<access_log::Logger>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("workload", &self.local.workload)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The mesh's telemetry (made on first use, from the bootstrap's node metadata).
    pub fn of(mesh: &Mesh) -> Arc<Self> {
        mesh.extension(|| Self {
            metrics: Metrics::new(metrics::DEFAULT_MAX_SERIES),
            local: Peer::local(mesh),
            tracer: ArcSwapOption::empty(),
            dropped_spans: Arc::default(),
            access_log: ArcSwapOption::empty(),
            failed_metric_pushes: AtomicU64::new(0),
        })
    }

    /// Metric pushes ([`MetricsExport`]) the receiver did not take.
    pub fn failed_metric_pushes(&self) -> u64 {
        self.failed_metric_pushes.load(Ordering::Relaxed)
    }

    /// Access log lines dropped because the writer fell behind.
    pub fn dropped_log_lines(&self) -> u64 {
        self.access_log
            .load()
            .as_ref()
            .map_or(0, |l| l.dropped.load(Ordering::Relaxed))
    }

    /// The access log's capture of a request starting now, when the log is on (`downstream`
    /// names the caller; it is only asked for then).
    pub(crate) fn log_entry<B>(
        &self,
        req: &http::Request<B>,
        outbound: bool,
        downstream: impl FnOnce() -> Option<String>,
    ) -> Option<(Arc<access_log::Logger>, Box<LogEntry>)> {
        let logger = self.access_log.load_full()?;
        Some((logger, Box::new(LogEntry::of(req, outbound, downstream()))))
    }

    /// Spans dropped because the OTLP receiver did not take them.
    pub fn dropped_spans(&self) -> u64 {
        self.dropped_spans.load(Ordering::Relaxed)
    }

    /// Every metric in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.metrics.encode(&mut out);
        out
    }

    /// The label set of requests this process sends to `cluster` (istiod's
    /// `outbound|PORT|SUBSET|HOST`, or another name), reaching `authority`.
    pub(crate) fn outbound_labels(&self, cluster: Option<&str>, authority: &str) -> Arc<Labels> {
        let host = cluster
            .and_then(|c| {
                let mut parts = c.split('|');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some("outbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => {
                        Some(host)
                    }
                    _ => None,
                }
            })
            .unwrap_or_else(|| host_of(authority));
        let (name, namespace) = service_parts(host, None);
        self.metrics.intern(Labels {
            reporter: Reporter::Source,
            source: self.local.clone(),
            destination: Peer::unknown(),
            destination_service: host.into(),
            destination_service_name: match cluster {
                Some(c @ ("PassthroughCluster" | "BlackHoleCluster")) => c.into(),
                _ => name.into(),
            },
            destination_service_namespace: namespace.into(),
        })
    }

    /// The label set of requests this process serves, from `caller`, for `authority`.
    ///
    /// The destination service is one the configuration names, never the authority itself (a
    /// caller would add a series with each `Host` it invents): among the workload's
    /// `services` (the listener's Istio metadata), the one the authority names, else the
    /// first, as Istio's stats take the first service of the inbound cluster; with none, the
    /// workload's canonical service in its namespace (Istio's sidecars, whose inbound clusters
    /// always name their services, say `unknown` there: they disable the host header fallback
    /// for the same reason).
    pub(crate) fn inbound_labels(
        &self,
        caller: Peer,
        services: &[ServiceRef],
        authority: &str,
    ) -> Arc<Labels> {
        let host = host_of(authority);
        let (fqdn, name, namespace): (Arc<str>, Arc<str>, Arc<str>) = match services
            .iter()
            .find(|s| names(s, host))
            .or(services.first())
        {
            Some(s) => (s.host.clone(), s.name.clone(), s.namespace.clone()),
            None if &*self.local.canonical_service == UNKNOWN => {
                (UNKNOWN.into(), UNKNOWN.into(), self.local.namespace.clone())
            }
            None => (
                format!(
                    "{}.{}.svc.cluster.local",
                    self.local.canonical_service, self.local.namespace
                )
                .into(),
                self.local.canonical_service.clone(),
                self.local.namespace.clone(),
            ),
        };
        self.metrics.intern(Labels {
            reporter: Reporter::Destination,
            source: caller,
            destination: self.local.clone(),
            destination_service: fqdn,
            destination_service_name: name,
            destination_service_namespace: namespace,
        })
    }
}

/// Whether `host` (an authority's host) names `service`: its host, or its name alone, with
/// its namespace, or with `.svc` after that, as Kubernetes' search domains resolve them.
fn names(service: &ServiceRef, host: &str) -> bool {
    if host.eq_ignore_ascii_case(&service.host) {
        return true;
    }
    let Some(rest) = host.strip_prefix(&*service.name) else {
        return false;
    };
    match rest.strip_prefix('.') {
        None => rest.is_empty(),
        Some(ns) => {
            ns == &*service.namespace || ns.strip_suffix(".svc") == Some(&service.namespace)
        }
    }
}

/// A span's name, as Istio's default decorator names it: `<authority>/*`.
pub(crate) fn span_name<B>(req: &http::Request<B>) -> String {
    format!("{}/*", authority_of(req))
}

/// A header as text, or `default`.
pub(crate) fn header_text<B>(req: &http::Request<B>, name: &str, default: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default)
        .to_owned()
}

/// A span's opening attributes, as Envoy's tracer sets them.
pub(crate) fn span_attributes<B>(
    req: &http::Request<B>,
    t: &Telemetry,
) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    let header = |k: &str| header_text(req, k, "-");
    let authority = authority_of(req);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    vec![
        KeyValue::new("http.method", req.method().to_string()),
        KeyValue::new("http.url", format!("http://{authority}{path}")),
        KeyValue::new("http.protocol", format!("{:?}", req.version())),
        KeyValue::new("user_agent", header("user-agent")),
        KeyValue::new("guid:x-request-id", header("x-request-id")),
        KeyValue::new("component", "proxy"),
        KeyValue::new(
            "istio.canonical_service",
            t.local.canonical_service.to_string(),
        ),
        KeyValue::new("istio.namespace", t.local.namespace.to_string()),
    ]
}

/// The host of an authority (no port, no brackets), or `unknown`.
fn host_of(authority: &str) -> &str {
    let a = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match a.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => a,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() { UNKNOWN } else { host }
}

/// `name.namespace.svc…` → (name, namespace); a short name is in `local_ns`.
fn service_parts<'a>(host: &'a str, local_ns: Option<&'a str>) -> (&'a str, &'a str) {
    let mut labels = host.split('.');
    let name = labels.next().unwrap_or(host);
    let ns = match (labels.next(), labels.next()) {
        (Some(ns), Some("svc")) | (Some(ns), None) => ns,
        _ => local_ns.unwrap_or(UNKNOWN),
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return (host, local_ns.unwrap_or(UNKNOWN));
    }
    (name, ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_names_a_service_in_each_kubernetes_spelling_and_no_other() {
        let svc = ServiceRef {
            host: "reviews.default.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "default".into(),
        };
        for host in [
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local",
            "Reviews.Default.svc.cluster.local",
        ] {
            assert!(names(&svc, host), "{host}");
        }
        for host in [
            "reviewsx",
            "reviews.other",
            "reviews.default.svcx",
            "ratings",
            "",
        ] {
            assert!(!names(&svc, host), "{host}");
        }
    }

    #[test]
    fn services_are_named_as_istio_names_them() {
        assert_eq!(
            service_parts("reviews.default.svc.cluster.local", None),
            ("reviews", "default")
        );
        assert_eq!(service_parts("reviews", Some("foo")), ("reviews", "foo"));
        assert_eq!(service_parts("httpbin.foo", None), ("httpbin", "foo"));
        assert_eq!(host_of("details:9080"), "details");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of(""), "unknown");
    }
}
