//! One request observed from its start to the end of its response body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use opentelemetry::KeyValue;

use super::access_log::{Ending, Entry, Logger};
use super::metrics::{Labels, Observation, Outcome, Security};
use super::{RequestSpan, SpanEnd, Telemetry};
use crate::flags::ResponseFlags;
use crate::respond::grpc_status;

/// A request in flight; recorded when the response body ends or is dropped.
pub(crate) struct Exchange {
    telemetry: Arc<Telemetry>,
    labels: Arc<Labels>,
    start: Instant,
    outcome: Outcome,
    request_bytes: u64,
    response_bytes: u64,
    /// Boxed, so an exchange stays small when tracing is off (it travels in every response).
    span: Option<Box<(RequestSpan, SpanEnd)>>,
    log: Option<(Arc<Logger>, Box<Entry>)>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    /// Starts observing a response (`headers` may already carry a trailers-only gRPC status).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        telemetry: Arc<Telemetry>,
        labels: Arc<Labels>,
        start: Instant,
        status: http::StatusCode,
        headers: &HeaderMap,
        grpc: bool,
        flags: ResponseFlags,
        security: Security,
        request_bytes: u64,
    ) -> Self {
        Self {
            telemetry,
            labels,
            start,
            outcome: Outcome {
                code: status.as_u16(),
                grpc_status: if grpc { grpc_status(headers) } else { None },
                grpc,
                flags,
                security,
            },
            request_bytes,
            response_bytes: 0,
            span: None,
            log: None,
        }
    }

    /// Writes an access log line for the request when it ends.
    pub(crate) fn with_log(mut self, log: Option<(Arc<Logger>, Box<Entry>)>) -> Self {
        self.log = log;
        self
    }

    /// Ends `span` with the response and what `end` says of it.
    pub(crate) fn with_span(mut self, span: Option<RequestSpan>, end: SpanEnd) -> Self {
        self.span = span.map(|s| Box::new((s, end)));
        self
    }

    fn frame(&mut self, f: &Frame<Bytes>) {
        if let Some(data) = f.data_ref() {
            self.response_bytes += data.len() as u64;
        } else if let Some(trailers) = f.trailers_ref()
            && self.outcome.grpc
            && let Some(s) = grpc_status(trailers)
        {
            self.outcome.grpc_status = Some(s);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some((logger, entry)) = self.log.take() {
            logger.write(
                &entry,
                &Ending {
                    code: self.outcome.code,
                    grpc_status: self.outcome.grpc_status,
                    flags: self.outcome.flags,
                    bytes_received: self.request_bytes,
                    bytes_sent: self.response_bytes,
                    duration: self.start.elapsed(),
                },
            );
        }
        if let Some(boxed) = self.span.take() {
            let (span, end) = *boxed;
            span.end(
                self.outcome.code,
                self.outcome.grpc_status,
                &end,
                [
                    KeyValue::new("response_flags", self.outcome.flags.to_string()),
                    KeyValue::new("response_size", self.response_bytes as i64),
                    KeyValue::new("request_size", self.request_bytes as i64),
                ],
            );
        }
        self.telemetry.metrics.record(
            &self.labels,
            &Observation {
                outcome: self.outcome,
                duration: self.start.elapsed(),
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
            },
        );
    }
}

/// Counts a response body's frames for an [`Exchange`], which records when the body ends
/// or is dropped. `ended` says whether the body has nothing more after this frame: hyper
/// stops polling a body that says so, and may keep it (and so the exchange) until the
/// connection's next request, so the end is recorded with the last frame.
pub(crate) fn observe_frame<E>(
    exchange: &mut Option<Exchange>,
    polled: &Poll<Option<Result<Frame<Bytes>, E>>>,
    ended: bool,
) {
    match polled {
        Poll::Ready(Some(Ok(f))) => {
            if let Some(x) = exchange {
                x.frame(f);
            }
            if ended {
                drop(exchange.take());
            }
        }
        // The end, or an error: record now rather than when the body is dropped.
        Poll::Ready(_) => drop(exchange.take()),
        Poll::Pending => {}
    }
}

pin_project_lite::pin_project! {
    /// A response body observed by an [`Exchange`].
    pub(crate) struct Observed<B> {
        #[pin]
        inner: B,
        exchange: Option<Exchange>,
    }
}

impl<B> Observed<B> {
    pub(crate) fn new(inner: B, exchange: Option<Exchange>) -> Self {
        Self { inner, exchange }
    }
}

impl<B: Body<Data = Bytes>> Body for Observed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = this.inner.is_end_stream();
        observe_frame(this.exchange, &polled, ended);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_exchange_is_small_enough_to_travel_in_every_response() {
        let size = std::mem::size_of::<super::Exchange>();
        assert!(size <= 128, "Exchange is {size} bytes");
    }
}
