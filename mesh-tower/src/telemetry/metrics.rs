//! Istio's standard HTTP metrics, kept without locks and exposed as Prometheus text:
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes`, with Istio's labels, on both sides (`reporter="source"` for
//! `MeshClient`, `"destination"` for `mesh_tower::serve`).
//!
//! Why not prometheus-client's `Family`: it finds a label set's series under a `RwLock` and
//! its histograms take a lock per observation, and the request path here takes no locks
//! (DESIGN.md). So series live in a copy-on-write map read through `arc-swap`, keyed by a
//! few integers: the interned label set of the two workloads (built once per cluster or
//! connection) plus the response code, gRPC status, flags and protocol. Recording a request
//! whose label set was seen before is a hash lookup and a few atomic adds, with no
//! allocation; a new label set copies the map once. The number of series is capped: past the
//! cap, requests are counted in one overflow series whose labels say `overflow`.

use crate::FastMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::workload::Peer;
use crate::flags::ResponseFlags;

/// Who reports a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Reporter {
    /// The caller's side (`MeshClient`).
    Source,
    /// The server's side (`mesh_tower::serve`).
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// `connection_security_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Security {
    /// Not known to this side (what Istio's source reporter says).
    Unknown,
    /// Plaintext.
    None,
    /// Istio mutual TLS.
    MutualTls,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::None => "none",
            Self::MutualTls => "mutual_tls",
        }
    }
}

/// The labels that stay the same for many requests: the reporter, both workloads and the
/// destination service. Interned: equal label sets share one allocation, whose address is
/// part of a series key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Labels {
    pub(crate) reporter: Reporter,
    pub(crate) source: Peer,
    pub(crate) destination: Peer,
    pub(crate) destination_service: Arc<str>,
    pub(crate) destination_service_name: Arc<str>,
    pub(crate) destination_service_namespace: Arc<str>,
}

/// What varies per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Outcome {
    pub(crate) code: u16,
    /// `None` for plain HTTP.
    pub(crate) grpc_status: Option<u16>,
    pub(crate) grpc: bool,
    pub(crate) flags: ResponseFlags,
    pub(crate) security: Security,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    labels: usize,
    outcome: Option<Outcome>,
}

struct Series {
    labels: Arc<Labels>,
    /// `None`: the overflow series.
    outcome: Option<Outcome>,
    requests: AtomicU64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Istio's (and Envoy's) default duration buckets, in milliseconds.
const DURATION_BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's size buckets, in bytes.
const BYTES_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1e6, 1e7];

/// A fixed-bucket histogram of atomics. The sum is kept in integer units (`unit` of the
/// exposed value: microseconds for milliseconds, bytes for bytes).
struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    units_per_value: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], units_per_value: f64) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            units_per_value,
        }
    }

    fn observe(&self, units: u64) {
        let value = units as f64 / self.units_per_value;
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(units, Ordering::Relaxed);
    }
}

/// One request to record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observation {
    pub(crate) outcome: Outcome,
    pub(crate) duration: Duration,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
}

/// The registry.
pub(crate) struct Metrics {
    series: ArcSwap<FastMap<Key, Arc<Series>>>,
    interned: ArcSwap<FastMap<Arc<Labels>, ()>>,
    count: AtomicUsize,
    cap: usize,
    overflowed: AtomicU64,
    panics: AtomicU64,
}

/// Default cap on the number of series.
pub(crate) const DEFAULT_MAX_SERIES: usize = 10_000;

impl Metrics {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            series: ArcSwap::default(),
            interned: ArcSwap::default(),
            count: AtomicUsize::new(0),
            cap,
            overflowed: AtomicU64::new(0),
            panics: AtomicU64::new(0),
        }
    }

    /// The shared copy of a label set (built off the request path: per cluster, per
    /// connection). At most `cap` sets are kept: past that, every new set is the overflow
    /// set, so a flood of new label values (a new `Host` per request) cannot grow memory, nor
    /// the cost of the copy each new set makes.
    pub(crate) fn intern(&self, labels: Labels) -> Arc<Labels> {
        let interned = self.interned.load();
        if let Some((found, _)) = interned.get_key_value(&labels) {
            return found.clone();
        }
        let labels = if interned.len() >= self.cap {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            let overflow = overflow_labels(labels.reporter);
            if let Some((found, _)) = interned.get_key_value(&overflow) {
                return found.clone();
            }
            overflow
        } else {
            labels
        };
        drop(interned);
        let made = Arc::new(labels);
        self.interned.rcu(|map| {
            let mut map = FastMap::clone(map);
            map.entry(made.clone()).or_insert(());
            map
        });
        self.interned
            .load()
            .get_key_value(&*made)
            .map_or(made, |(k, _)| k.clone())
    }

    /// Label sets interned (for tests of the cap).
    #[cfg(test)]
    pub(crate) fn interned(&self) -> usize {
        self.interned.load().len()
    }

    /// Counts an application that panicked while answering (it was answered 500).
    pub(crate) fn application_panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one request.
    pub(crate) fn record(&self, labels: &Arc<Labels>, o: &Observation) {
        let key = Key {
            labels: Arc::as_ptr(labels) as usize,
            outcome: Some(o.outcome),
        };
        let series = match self.series.load().get(&key) {
            Some(s) => s.clone(),
            None => self.create(key, labels),
        };
        series.requests.fetch_add(1, Ordering::Relaxed);
        series
            .duration
            .observe(o.duration.as_micros().min(u128::from(u64::MAX)) as u64);
        series.request_bytes.observe(o.request_bytes);
        series.response_bytes.observe(o.response_bytes);
    }

    #[cold]
    fn create(&self, key: Key, labels: &Arc<Labels>) -> Arc<Series> {
        let key = if self.count.load(Ordering::Relaxed) >= self.cap {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            Key {
                labels: labels.reporter as usize,
                outcome: None,
            }
        } else {
            key
        };
        let mut made = None;
        self.series.rcu(|map| {
            if let Some(s) = map.get(&key) {
                made = Some(s.clone());
                return Arc::clone(map);
            }
            let mut map = FastMap::clone(map);
            let s = Arc::new(Series {
                labels: if key.outcome.is_none() {
                    Arc::new(overflow_labels(labels.reporter))
                } else {
                    labels.clone()
                },
                outcome: key.outcome,
                requests: AtomicU64::new(0),
                duration: Histogram::new(DURATION_BUCKETS_MS, 1000.0),
                request_bytes: Histogram::new(BYTES_BUCKETS, 1.0),
                response_bytes: Histogram::new(BYTES_BUCKETS, 1.0),
            });
            map.insert(key, s.clone());
            made = Some(s);
            Arc::new(map)
        });
        self.count
            .store(self.series.load().len(), Ordering::Relaxed);
        made.expect("rcu ran")
    }

    /// Requests counted in the overflow series because the cap was reached.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Every series as it stands now, sorted by labels.
    pub(crate) fn snapshot(&self) -> Vec<SeriesView> {
        let map = self.series.load();
        let mut out: Vec<SeriesView> = map
            .values()
            .map(|s| SeriesView {
                labels: label_pairs(s),
                requests: s.requests.load(Ordering::Relaxed),
                histograms: [
                    s.duration.view(),
                    s.request_bytes.view(),
                    s.response_bytes.view(),
                ],
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Prometheus text exposition (format 0.0.4).
    pub(crate) fn encode(&self, out: &mut String) {
        let series: Vec<(String, SeriesView)> = self
            .snapshot()
            .into_iter()
            .map(|v| (label_text(&v.labels), v))
            .collect();
        let _ = writeln!(
            out,
            "# HELP {REQUESTS} {REQUESTS_HELP}\n# TYPE {REQUESTS} counter"
        );
        for (l, s) in &series {
            let _ = writeln!(out, "{REQUESTS}{{{l}}} {}", s.requests);
        }
        for (i, (name, help)) in HISTOGRAMS.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (l, s) in &series {
                let h = &s.histograms[i];
                let mut cumulative = 0;
                for (j, c) in h.counts.iter().enumerate() {
                    cumulative += c;
                    let le = h
                        .bounds
                        .get(j)
                        .map_or("+Inf".to_owned(), |b| format_bound(*b));
                    let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{l}}} {cumulative}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP mesh_metrics_overflow_total Requests counted in the overflow series (too many label sets).\n# TYPE mesh_metrics_overflow_total counter\nmesh_metrics_overflow_total {}",
            self.overflowed()
        );
        let _ = writeln!(
            out,
            "# HELP mesh_application_panics_total Requests whose application panicked (answered 500).\n# TYPE mesh_application_panics_total counter\nmesh_application_panics_total {}",
            self.panics.load(Ordering::Relaxed)
        );
    }
}

/// The request counter's name.
pub(crate) const REQUESTS: &str = "istio_requests_total";
/// Its description.
pub(crate) const REQUESTS_HELP: &str = "Requests, counted when their response ends.";
/// The histograms, by name and description, in [`SeriesView::histograms`] order.
pub(crate) const HISTOGRAMS: [(&str, &str); 3] = [
    (
        "istio_request_duration_milliseconds",
        "Request duration, from the request's start to its response's end.",
    ),
    ("istio_request_bytes", "Request body sizes."),
    ("istio_response_bytes", "Response body sizes."),
];

/// One series, read.
pub(crate) struct SeriesView {
    /// Label names and values, in Istio's order.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) requests: u64,
    pub(crate) histograms: [HistogramView; 3],
}

/// One histogram, read.
pub(crate) struct HistogramView {
    pub(crate) bounds: &'static [f64],
    /// Per bucket (not cumulative), the last one above every bound.
    pub(crate) counts: Vec<u64>,
    pub(crate) sum: f64,
}

impl Histogram {
    fn view(&self) -> HistogramView {
        HistogramView {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.units_per_value,
        }
    }
}

fn format_bound(b: f64) -> String {
    if b.fract() == 0.0 && b.abs() < 1e15 {
        format!("{}", b as i64)
    } else {
        format!("{b}")
    }
}

fn overflow_labels(reporter: Reporter) -> Labels {
    let o: Arc<str> = "overflow".into();
    let peer = Peer {
        workload: o.clone(),
        namespace: o.clone(),
        principal: o.clone(),
        app: o.clone(),
        version: o.clone(),
        canonical_service: o.clone(),
        canonical_revision: o.clone(),
        cluster: o.clone(),
    };
    Labels {
        reporter,
        source: peer.clone(),
        destination: peer,
        destination_service: o.clone(),
        destination_service_name: o.clone(),
        destination_service_namespace: o,
    }
}

/// A series' labels in Istio's order.
fn label_pairs(s: &Series) -> Vec<(String, String)> {
    let l = &s.labels;
    let mut out: Vec<(String, String)> = Vec::with_capacity(28);
    let mut put = |k: &str, v: &str| out.push((k.to_owned(), v.to_owned()));
    put("reporter", l.reporter.as_str());
    for (side, p) in [("source", &l.source), ("destination", &l.destination)] {
        put(&format!("{side}_workload"), &p.workload);
        put(&format!("{side}_workload_namespace"), &p.namespace);
        put(&format!("{side}_principal"), &p.principal);
        put(&format!("{side}_app"), &p.app);
        put(&format!("{side}_version"), &p.version);
        put(&format!("{side}_canonical_service"), &p.canonical_service);
        put(&format!("{side}_canonical_revision"), &p.canonical_revision);
        put(&format!("{side}_cluster"), &p.cluster);
    }
    put("destination_service", &l.destination_service);
    put("destination_service_name", &l.destination_service_name);
    put(
        "destination_service_namespace",
        &l.destination_service_namespace,
    );
    match &s.outcome {
        Some(o) => {
            put("request_protocol", if o.grpc { "grpc" } else { "http" });
            put("response_code", &o.code.to_string());
            put(
                "grpc_response_status",
                &o.grpc_status.map(|c| c.to_string()).unwrap_or_default(),
            );
            put("response_flags", &o.flags.to_string());
            put("connection_security_policy", o.security.as_str());
        }
        None => {
            for k in [
                "request_protocol",
                "response_code",
                "grpc_response_status",
                "response_flags",
                "connection_security_policy",
            ] {
                put(k, "overflow");
            }
        }
    }
    out
}

/// Labels escaped for the text format.
fn label_text(pairs: &[(String, String)]) -> String {
    let mut out = String::with_capacity(512);
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(m: &Metrics, service: &str) -> Arc<Labels> {
        m.intern(Labels {
            reporter: Reporter::Source,
            source: Peer::unknown(),
            destination: Peer::unknown(),
            destination_service: service.into(),
            destination_service_name: service.into(),
            destination_service_namespace: "default".into(),
        })
    }

    fn obs(code: u16, ms: u64) -> Observation {
        Observation {
            outcome: Outcome {
                code,
                grpc_status: None,
                grpc: false,
                flags: ResponseFlags::NONE,
                security: Security::Unknown,
            },
            duration: Duration::from_millis(ms),
            request_bytes: 0,
            response_bytes: 120,
        }
    }

    #[test]
    fn equal_label_sets_share_one_series() {
        let m = Metrics::new(100);
        let a = labels(&m, "reviews");
        let b = labels(&m, "reviews");
        assert!(Arc::ptr_eq(&a, &b), "interned");
        m.record(&a, &obs(200, 3));
        m.record(&b, &obs(200, 30));
        m.record(&a, &obs(503, 1));
        let mut text = String::new();
        m.encode(&mut text);
        let line = |code: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains(&format!("response_code=\"{code}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        assert_eq!(line("200").as_deref(), Some("2"));
        assert_eq!(line("503").as_deref(), Some("1"));
        assert!(
            text.contains("le=\"5\"} 1"),
            "3 ms falls in the 5 ms bucket:\n{text}"
        );
        assert!(text.contains("response_flags=\"-\""));
        assert!(text.contains("istio_response_bytes_sum{"), "{text}");
    }

    #[test]
    fn past_the_cap_requests_go_to_the_overflow_series() {
        let m = Metrics::new(2);
        for code in [200, 201, 202, 203] {
            m.record(&labels(&m, "reviews"), &obs(code, 1));
        }
        assert_eq!(m.overflowed(), 2);
        let mut text = String::new();
        m.encode(&mut text);
        assert!(text.contains("response_code=\"overflow\""), "{text}");
        assert!(text.contains("mesh_metrics_overflow_total 2"));
    }

    #[test]
    fn label_sets_past_the_cap_share_the_overflow_set() {
        let m = Metrics::new(3);
        let kept = labels(&m, "reviews");
        let flood: Vec<_> = (0..1000)
            .map(|i| labels(&m, &format!("host-{i}")))
            .collect();
        assert!(m.interned() <= 3 + 1, "{} label sets kept", m.interned());
        assert!(Arc::ptr_eq(&flood[500], &flood[999]), "one overflow set");
        assert_eq!(&*flood[999].destination_service_name, "overflow");
        assert!(
            Arc::ptr_eq(&kept, &labels(&m, "reviews")),
            "known sets stay"
        );
        let mut text = String::new();
        m.application_panicked();
        m.encode(&mut text);
        assert!(text.contains("mesh_application_panics_total 1"), "{text}");
    }
}
