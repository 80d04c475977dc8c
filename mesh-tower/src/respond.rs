//! The one place failures become responses, the way Envoy words and codes them.
//!
//! Every response the mesh makes itself carries a [`ResponseInfo`] with its flags. For gRPC
//! requests, local replies are trailers-only gRPC responses (HTTP 200 with `grpc-status`), the
//! status mapped from the HTTP code as Envoy maps it, so gRPC clients see `UNAVAILABLE` rather
//! than a protocol error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full};

use crate::flags::ResponseFlags;

/// `grpc-status` (a name, not a string: a lookup by `&str` parses the name each time).
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// What the mesh did with a request, attached to every response's extensions.
///
/// ```
/// # fn f(rsp: http::Response<mesh_tower::RspBody>) {
/// if let Some(info) = mesh_tower::ResponseInfo::of(&rsp) {
///     println!("{} via {:?} @ {:?}, {} attempt(s)", info.flags, info.cluster, info.upstream, info.attempts);
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ResponseInfo {
    /// Envoy response flags.
    pub flags: ResponseFlags,
    /// The route's name, when it has one.
    pub route: Option<Arc<str>>,
    /// The cluster the request was sent to.
    pub cluster: Option<Arc<str>>,
    /// The host that gave the response (of the last attempt).
    pub upstream: Option<SocketAddr>,
    /// Upstream attempts made (0 when answered locally before any).
    pub attempts: u32,
    /// Injected fault delay, if any.
    pub fault_delay: Option<Duration>,
    /// How the last attempt failed, when this response is the mesh's reply for a failed
    /// attempt: what a retry policy reads (`connect-failure`, `reset`, `refused-stream`), and
    /// what tells such a reply from an upstream's answer of the same status.
    pub failure: Option<UpstreamFailure>,
}

/// How an upstream attempt failed without a response, as Envoy's retry conditions tell
/// failures apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamFailure {
    /// No connection could be made (`connect-failure`).
    ConnectFailure,
    /// The stream was reset or the connection closed before a response (`reset`).
    Reset,
    /// HTTP/2 `REFUSED_STREAM`: the server did not process the request (`refused-stream`).
    RefusedStream,
    /// The per-try timeout fired (retried under `5xx`, `gateway-error` and `reset`).
    PerTryTimeout,
    /// A circuit breaker refused the attempt (`UO`); never retried.
    Overflow,
    /// No host could take the attempt (`UH`); never retried.
    NoHealthyUpstream,
    /// The request could not be sent as it is (no authority, an unreadable body); never
    /// retried.
    NotSent,
}

impl ResponseInfo {
    /// The info of a response made by the mesh client.
    pub fn of<B>(rsp: &Response<B>) -> Option<&ResponseInfo> {
        rsp.extensions().get::<ResponseInfo>()
    }

    /// The info of `rsp`, inserted empty when a service that is not the mesh's answered (a
    /// layer around a user's own client).
    pub fn of_mut<B>(rsp: &mut Response<B>) -> &mut ResponseInfo {
        rsp.extensions_mut().get_or_insert_default::<ResponseInfo>()
    }
}

/// Envoy's body for failures before response headers.
pub(crate) const RESET_BEFORE_HEADERS: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: ";

/// A response body the mesh can write its own replies in (a timeout, an injected abort, an
/// overflow), so that the [layers](crate::layer) can answer for the service they wrap.
///
/// Implemented for the mesh's [`RspBody`](crate::RspBody) and for `http-body-util`'s [`Full`] and boxed
/// bodies; a client whose body is hyper's `Incoming` can map it into a boxed body first.
///
/// [`Full`]: http_body_util::Full
pub trait LocalBody: Sized {
    /// A complete body holding `text` (empty `text` for an empty body).
    fn local(text: Bytes) -> Self;
}

impl LocalBody for Full<Bytes> {
    fn local(text: Bytes) -> Self {
        Full::new(text)
    }
}

impl<E: 'static> LocalBody for UnsyncBoxBody<Bytes, E> {
    fn local(text: Bytes) -> Self {
        Full::new(text)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

impl<E: 'static> LocalBody for BoxBody<Bytes, E> {
    fn local(text: Bytes) -> Self {
        Full::new(text).map_err(|never| match never {}).boxed()
    }
}

/// A local reply.
pub(crate) fn local<B: LocalBody>(
    status: StatusCode,
    body: impl Into<Bytes>,
    grpc: bool,
    info: ResponseInfo,
) -> Response<B> {
    let body = body.into();
    let mut rsp = if grpc {
        let mut rsp = Response::new(B::local(Bytes::new()));
        let h = rsp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(GRPC_STATUS, HeaderValue::from(grpc_status_for(status)));
        if let Ok(v) = HeaderValue::from_bytes(&percent_encode(&body)) {
            h.insert(GRPC_MESSAGE, v);
        }
        rsp
    } else {
        let mut rsp = Response::new(B::local(body.clone()));
        *rsp.status_mut() = status;
        if !body.is_empty() {
            rsp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        rsp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        rsp
    };
    if info.flags.contains(ResponseFlags::UPSTREAM_OVERFLOW) {
        rsp.headers_mut()
            .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    }
    rsp.extensions_mut().insert(info);
    rsp
}

/// Envoy's HTTP → gRPC status mapping for local replies.
pub(crate) fn grpc_status_for(status: StatusCode) -> u16 {
    match status.as_u16() {
        200 => 0,
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Envoy's gRPC → HTTP status mapping (`Grpc::Utility::grpcToHttpStatus`, after Google's
/// API error model), which outlier detection sees for a gRPC answer.
pub(crate) fn http_status_for_grpc(code: u16) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The `grpc-status` a header block carries (a trailers-only response's headers, or the
/// trailers), if any.
pub(crate) fn grpc_status(h: &http::HeaderMap) -> Option<u16> {
    h.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Whether a request is gRPC (its local replies must be gRPC too).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::RspBody;

    #[test]
    fn grpc_local_replies_are_trailers_only() {
        let info = ResponseInfo {
            flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
            ..ResponseInfo::default()
        };
        let rsp: Response<RspBody> = local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            true,
            info,
        );
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()["grpc-message"], "no healthy upstream");
        assert_eq!(ResponseInfo::of(&rsp).unwrap().flags.to_string(), "UH");
    }

    #[test]
    fn overflow_replies_say_overloaded() {
        let info = ResponseInfo {
            flags: ResponseFlags::UPSTREAM_OVERFLOW,
            ..ResponseInfo::default()
        };
        let rsp: Response<RspBody> = local(StatusCode::SERVICE_UNAVAILABLE, "x", false, info);
        assert_eq!(rsp.headers()["x-envoy-overloaded"], "true");
        assert_eq!(percent_encode("a%b\n".as_bytes()), b"a%25b%0A");
    }
}
