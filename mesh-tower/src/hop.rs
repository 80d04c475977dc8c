//! Hop-by-hop headers (RFC 9110 §7.6.1): the standard ones, and those a `Connection` header
//! nominates. They belong to one connection and never travel past it: Envoy's HTTP/1 codec
//! removes the nominated ones as a request arrives, and its router the rest.

use http::header::{self, HeaderMap, HeaderName};

/// The standard hop-by-hop headers, which HTTP/2 also forbids. (Names, not strings: a lookup
/// by `&str` parses the name on every request.)
pub(crate) static STANDARD: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What a request's `Connection` header nominates.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Nominated {
    /// The headers to remove: every token but the connection options (`close`,
    /// `keep-alive`, `upgrade`, `http2-settings`) and `te` (which stays as `trailers` only,
    /// decided apart).
    pub(crate) names: Vec<HeaderName>,
    /// Whether Envoy would refuse the request (400, `http1.connection_header_rejected`): it
    /// nominates `x-forwarded-for`, `x-forwarded-host` or `x-forwarded-proto` (asking the next
    /// hop to strip what a proxy added), a pseudo-header, or ten tokens or more, or is not
    /// text.
    pub(crate) refused: bool,
}

/// The most tokens a `Connection` header may carry (Envoy refuses ten or more).
const MAX_TOKENS: usize = 9;

/// What `headers`' `Connection` header nominates.
pub(crate) fn nominated(headers: &HeaderMap) -> Nominated {
    let mut out = Nominated::default();
    let mut tokens = 0;
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else {
            out.refused = true;
            continue;
        };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            tokens += 1;
            out.refused |= tokens > MAX_TOKENS || token.starts_with(':');
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            match name.as_str() {
                "close" | "keep-alive" | "upgrade" | "http2-settings" | "te" => {}
                "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto" => {
                    out.refused = true;
                    out.names.push(name);
                }
                _ => out.names.push(name),
            }
        }
    }
    out
}

/// Whether the request asks to switch protocols (`Connection: upgrade` with `Upgrade`): Envoy
/// leaves its `Connection` header alone then.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with_connection(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONNECTION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn nominated_names_are_every_token_but_the_options() {
        let h = with_connection(&["X-User, close", "keep-alive,x-role , te"]);
        let n = nominated(&h);
        assert_eq!(n.names, ["x-user", "x-role"]);
        assert!(!n.refused);
        assert_eq!(nominated(&HeaderMap::new()), Nominated::default());
    }

    #[test]
    fn what_envoy_refuses() {
        for v in [
            "x-forwarded-for",
            "close, X-Forwarded-Proto",
            "x-forwarded-host",
            ":authority",
            "a,b,c,d,e,f,g,h,i,j",
        ] {
            assert!(nominated(&with_connection(&[v])).refused, "{v}");
        }
        assert!(!nominated(&with_connection(&["a,b,c,d,e,f,g,h,i"])).refused);
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let mut h = with_connection(&["Upgrade"]);
        assert!(!is_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
    }
}
