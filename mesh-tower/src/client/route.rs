//! What a matched route does to the request and response: header mutations, path and host
//! rewrites, redirects. Route *matching* is the model's ([`RouteTable::find`]), a pure function
//! over the snapshot.
//!
//! [`RouteTable::find`]: mesh_core::model::RouteTable::find

use std::borrow::Cow;

use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use mesh_core::model::{PathMatch, Redirect, RedirectPath};

use crate::body::RspBody;

/// The authority a request is for: the URI's, else the `Host` header's; with the scheme's
/// default port added when it has none (the client listener for `http://reviews/` is
/// `reviews:80`).
pub(crate) fn authority<B>(req: &http::Request<B>) -> Option<Cow<'_, str>> {
    let a = req
        .uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))?;
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    if a.is_empty() {
        return None;
    }
    let has_port = match a.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':')
        }
        None => false,
    } && !(a.starts_with('[') && a.ends_with(']'));
    if has_port {
        return Some(Cow::Borrowed(a));
    }
    let port = if req.uri().scheme_str() == Some("https") {
        443
    } else {
        80
    };
    Some(Cow::Owned(format!("{a}:{port}")))
}

/// The authority an upstream request goes to, as the caller (or a rewrite) wrote it: the
/// URI's, reused as is (a reference count, no copy), else the `Host` header's; without a
/// default port.
pub(crate) fn upstream_authority(uri: &http::Uri, headers: &HeaderMap) -> Option<Authority> {
    uri.authority().cloned().or_else(|| {
        headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse().ok())
    })
}

/// The URI's path and query, `/` when it has none (an authority-form or empty URI).
pub(crate) fn path_and_query(uri: &http::Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The redirect response for a request.
pub(crate) fn redirect(
    r: &Redirect,
    scheme: &str,
    authority: &str,
    pq: &PathAndQuery,
    matcher: &PathMatch,
) -> Response<RspBody> {
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let (host, port) = split_port(authority);
    let host = r.host.as_deref().unwrap_or(host);
    // A scheme change drops the old port unless a new one is given (Envoy's rule).
    let port = match r.port {
        Some(p) => Some(p.to_string()),
        None if new_scheme != scheme => None,
        None => port.map(str::to_owned),
    };
    let scheme = new_scheme;
    let default_port = matches!(
        (scheme, port.as_deref()),
        ("http", Some("80")) | ("https", Some("443"))
    );
    let path: Cow<'_, str> = match &r.path {
        None => Cow::Borrowed(pq.path()),
        Some(RedirectPath::Path(p)) => Cow::Borrowed(p),
        Some(RedirectPath::Prefix(p)) => {
            let matched = match matcher {
                PathMatch::Prefix(m) | PathMatch::SeparatedPrefix(m) => m.len(),
                _ => 0,
            };
            Cow::Owned(format!("{p}{}", &pq.path()[matched.min(pq.path().len())..]))
        }
        Some(RedirectPath::Regex(re)) => re.pattern.replace_all(pq.path(), &*re.substitution),
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port.filter(|_| !default_port) {
        location.push(':');
        location.push_str(&p);
    }
    location.push_str(&path);
    if !r.strip_query
        && let Some(q) = pq.query()
    {
        location.push('?');
        location.push_str(q);
    }
    let mut rsp = Response::new(RspBody::empty());
    *rsp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        rsp.headers_mut().insert(LOCATION, v);
    }
    rsp
}

/// A `direct_response`.
pub(crate) fn direct(status: StatusCode, body: &bytes::Bytes) -> Response<RspBody> {
    let mut rsp = Response::new(RspBody::full(body.clone()));
    *rsp.status_mut() = status;
    if !body.is_empty() {
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    rsp
}

fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_gets_the_default_port() {
        let r = http::Request::get("http://reviews/x").body(()).unwrap();
        assert_eq!(authority(&r).unwrap(), "reviews:80");
        let r = http::Request::get("http://reviews:9080/x")
            .body(())
            .unwrap();
        assert_eq!(authority(&r).unwrap(), "reviews:9080");
        let r = http::Request::get("/x")
            .header("host", "ratings")
            .body(())
            .unwrap();
        assert_eq!(authority(&r).unwrap(), "ratings:80");
        let r = http::Request::get("https://[::1]/x").body(()).unwrap();
        assert_eq!(authority(&r).unwrap(), "[::1]:443");
        let r = http::Request::get("/x").body(()).unwrap();
        assert!(authority(&r).is_none());
    }

    #[test]
    fn redirects_build_the_location() {
        let r = Redirect {
            scheme: Some("https".into()),
            host: Some("new.example".into()),
            port: None,
            path: Some(RedirectPath::Prefix("/v2/".into())),
            status: StatusCode::MOVED_PERMANENTLY,
            strip_query: false,
        };
        let rsp = redirect(
            &r,
            "http",
            "old.example:80",
            &PathAndQuery::from_static("/v1/a?q=1"),
            &PathMatch::Prefix("/v1/".into()),
        );
        assert_eq!(rsp.status(), 301);
        assert_eq!(rsp.headers()[LOCATION], "https://new.example/v2/a?q=1");
    }
}
