//! The authority a request is for, and the parts of its URI an upstream request keeps.
//! Route *matching* and what a route answers itself are the route layer's
//! ([`layer::route`](crate::layer::route)).

use std::borrow::Cow;

use http::HeaderMap;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery};

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
}
