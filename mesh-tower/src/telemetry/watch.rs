//! One request watched by telemetry, on either side: the same observer for what
//! [`MeshClient`](crate::MeshClient) sends and what [`serve`](crate::serve) answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Request, StatusCode};
use http_body::Body;
use opentelemetry::KeyValue;

use super::access_log::{Entry as LogEntry, Logger};
use super::exchange::Exchange;
use super::metrics::{Labels, Security};
use super::{RequestSpan, Side, SpanEnd, Telemetry, propagation, span_attributes, span_name};
use crate::flags::ResponseFlags;
use crate::respond;

/// A request from its headers to its answer: its request id and span (when tracing), its
/// access-log entry (when logging), then the [`Exchange`] that records its metrics, span and
/// log line when the response body ends.
pub(crate) struct Watch {
    telemetry: Arc<Telemetry>,
    start: Instant,
    grpc: bool,
    request_bytes: u64,
    span: Option<RequestSpan>,
    log: Option<(Arc<Logger>, Box<LogEntry>)>,
}

impl Watch {
    /// Starts watching `req`, which arrived (or was handed over) at `start`. `attributes` adds
    /// the side's own span attributes (asked only when tracing); `downstream` names the caller
    /// for the access log (asked only when the log is on).
    pub(crate) fn begin<B: Body>(
        telemetry: &Arc<Telemetry>,
        side: Side,
        req: &mut Request<B>,
        start: Instant,
        attributes: impl FnOnce(&mut Vec<KeyValue>),
        downstream: impl FnOnce() -> Option<String>,
    ) -> Self {
        let span = telemetry.tracer.load().as_ref().and_then(|t| {
            propagation::ensure_request_id(req.headers_mut());
            t.start(side, req, |req| {
                let mut all = span_attributes(req, telemetry);
                attributes(&mut all);
                (span_name(req), all)
            })
        });
        let log = telemetry.log_entry(req, matches!(side, Side::Client), downstream);
        let size = req.body().size_hint();
        Self {
            telemetry: telemetry.clone(),
            start,
            grpc: respond::is_grpc(req.headers()),
            request_bytes: size.exact().unwrap_or(size.lower()),
            span,
            log,
        }
    }

    /// Whether the request is gRPC.
    pub(crate) fn grpc(&self) -> bool {
        self.grpc
    }

    /// The answer's exchange, counted under `labels`: what `upstream` (the cluster and host
    /// that answered, on the client side) says goes to the span and the log line too.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn answer(
        &mut self,
        labels: Arc<Labels>,
        status: StatusCode,
        headers: &HeaderMap,
        flags: ResponseFlags,
        security: Security,
        upstream: Option<(Option<Arc<str>>, Option<SocketAddr>)>,
    ) -> Exchange {
        let end = match upstream {
            Some((cluster, host)) => {
                if let Some((_, entry)) = &mut self.log {
                    entry.upstream_cluster = cluster.clone();
                    entry.upstream_host = host;
                }
                SpanEnd {
                    cluster,
                    upstream: host,
                }
            }
            None => SpanEnd::default(),
        };
        Exchange::new(
            self.telemetry.clone(),
            labels,
            self.start,
            status,
            headers,
            self.grpc,
            flags,
            security,
            self.request_bytes,
        )
        .with_span(self.span.take(), end)
        .with_log(self.log.take())
    }
}
