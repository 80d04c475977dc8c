//! Trace context in headers: W3C Trace Context (`traceparent`, `tracestate`) and Zipkin's B3
//! (`x-b3-traceid`/`-spanid`/`-parentspanid`/`-sampled`/`-flags`, and the single `b3`),
//! read from requests and written into them; and `x-request-id`.
//!
//! Written here rather than taken from `opentelemetry-zipkin` (the B3 propagator's home, which
//! brings an HTTP client along): both formats are a few fixed-width hex fields.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Which header formats a request carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Formats {
    pub(crate) w3c: bool,
    pub(crate) b3_multi: bool,
    pub(crate) b3_single: bool,
}

/// The caller's span, from W3C headers first, then B3.
pub(crate) fn extract(h: &HeaderMap) -> (Option<SpanContext>, Formats) {
    let mut formats = Formats::default();
    let w3c = h
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|tp| {
            let state = h
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<TraceState>().ok())
                .unwrap_or_default();
            traceparent(tp, state)
        });
    formats.w3c = w3c.is_some();
    let single = h
        .get("b3")
        .and_then(|v| v.to_str().ok())
        .and_then(b3_single);
    formats.b3_single = single.is_some();
    let multi = b3_multi(h);
    formats.b3_multi = multi.is_some();
    (w3c.or(single).or(multi), formats)
}

/// `00-<trace id>-<span id>-<flags>`.
fn traceparent(v: &str, state: TraceState) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    context(trace, span, flags & 1 == 1, state)
}

fn context(trace: &str, span: &str, sampled: bool, state: TraceState) -> Option<SpanContext> {
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// A B3 trace id is 16 or 32 hex digits; the short form is the low half.
fn b3_trace_id(s: &str) -> Option<String> {
    match s.len() {
        32 => Some(s.to_owned()),
        16 => Some(format!("{:0>32}", s)),
        _ => None,
    }
}

/// `b3: {trace}-{span}[-{sampling}[-{parent}]]`.
fn b3_single(v: &str) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let trace = b3_trace_id(parts.next()?)?;
    let span = parts.next()?;
    let sampled = matches!(parts.next(), Some("1" | "d") | None);
    context(&trace, span, sampled, TraceState::default())
}

fn b3_multi(h: &HeaderMap) -> Option<SpanContext> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let trace = b3_trace_id(get("x-b3-traceid")?)?;
    let span = get("x-b3-spanid")?;
    let sampled =
        get("x-b3-flags") == Some("1") || matches!(get("x-b3-sampled"), Some("1" | "true") | None);
    context(&trace, span, sampled, TraceState::default())
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3: HeaderName = HeaderName::from_static("b3");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Lower-case hex of `bytes` into `out` (twice as long). Hand-rolled: this runs for every
/// traced request, and `fmt` machinery costs several times more.
fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

/// Writes `span` (with `parent` for B3's parent id) in the given formats, replacing what the
/// request carried.
pub(crate) fn inject(
    h: &mut HeaderMap,
    span: &SpanContext,
    parent: Option<SpanId>,
    formats: Formats,
) {
    let mut trace = [0u8; 32];
    hex(&span.trace_id().to_bytes(), &mut trace);
    let mut id = [0u8; 16];
    hex(&span.span_id().to_bytes(), &mut id);
    let sampled = span.is_sampled();
    if formats.w3c {
        // 00-<32>-<16>-<2>
        let mut tp = [0u8; 55];
        tp[..3].copy_from_slice(b"00-");
        tp[3..35].copy_from_slice(&trace);
        tp[35] = b'-';
        tp[36..52].copy_from_slice(&id);
        tp[52] = b'-';
        hex(&[span.trace_flags().to_u8()], &mut tp[53..55]);
        if let Some(v) = value(&tp) {
            h.insert(TRACEPARENT, v);
        }
        let state = span.trace_state().header();
        if !state.is_empty()
            && let Ok(v) = HeaderValue::from_str(&state)
        {
            h.insert(TRACESTATE, v);
        }
    }
    let flag = HeaderValue::from_static(if sampled { "1" } else { "0" });
    if formats.b3_multi {
        if let (Some(t), Some(s)) = (value(&trace), value(&id)) {
            h.insert(B3_TRACE_ID, t);
            h.insert(B3_SPAN_ID, s);
        }
        h.insert(B3_SAMPLED, flag.clone());
        match parent {
            Some(p) => {
                let mut pid = [0u8; 16];
                hex(&p.to_bytes(), &mut pid);
                if let Some(v) = value(&pid) {
                    h.insert(B3_PARENT_ID, v);
                }
            }
            None => {
                h.remove(B3_PARENT_ID);
            }
        }
    }
    if formats.b3_single {
        let mut b3 = [0u8; 51];
        b3[..32].copy_from_slice(&trace);
        b3[32] = b'-';
        b3[33..49].copy_from_slice(&id);
        b3[49] = b'-';
        b3[50] = if sampled { b'1' } else { b'0' };
        if let Some(v) = value(&b3) {
            h.insert(B3, v);
        }
    }
}

/// Sets `x-request-id` when the request has none (a random version 4 UUID, as Envoy makes).
pub(crate) fn ensure_request_id(h: &mut HeaderMap) {
    if h.contains_key(REQUEST_ID) {
        return;
    }
    let mut raw = fastrand::u128(..).to_be_bytes();
    raw[6] = (raw[6] & 0x0f) | 0x40; // version 4
    raw[8] = (raw[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut text = [0u8; 32];
    hex(&raw, &mut text);
    let mut id = [b'-'; 36];
    id[..8].copy_from_slice(&text[..8]);
    id[9..13].copy_from_slice(&text[8..12]);
    id[14..18].copy_from_slice(&text[12..16]);
    id[19..23].copy_from_slice(&text[16..20]);
    id[24..].copy_from_slice(&text[20..]);
    if let Some(v) = value(&id) {
        h.insert(REQUEST_ID, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn w3c_headers_are_read_and_written() {
        let h = headers(&[
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let (cx, formats) = extract(&h);
        let cx = cx.expect("a context");
        assert!(formats.w3c && !formats.b3_multi);
        assert_eq!(
            cx.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(cx.is_sampled() && cx.is_remote());
        let mut out = HeaderMap::new();
        inject(&mut out, &cx, None, formats);
        assert_eq!(out["traceparent"], h["traceparent"]);
        assert_eq!(out["tracestate"], "congo=t61rcWkgMzE");
        assert!(
            extract(&headers(&[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"
            )]))
            .0
            .is_none(),
            "an all-zero span id is invalid"
        );
    }

    #[test]
    fn b3_headers_are_read_in_both_forms() {
        let (cx, f) = extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]));
        let cx = cx.unwrap();
        assert!(f.b3_multi);
        assert_eq!(
            cx.trace_id().to_string(),
            "0000000000000000463ac35c9f6413ad"
        );
        assert!(!cx.is_sampled());
        let (cx, f) = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]));
        assert!(f.b3_single);
        assert_eq!(cx.unwrap().span_id().to_string(), "e457b5a2e4d86bd1");
    }

    #[test]
    fn request_ids_are_uuids_and_kept() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(id.matches('-').count(), 4);
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
    }
}
