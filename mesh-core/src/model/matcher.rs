//! String, header, query and path matchers with Envoy's semantics, validated on arrival.
//!
//! Regexes follow Envoy's `safe_regex`: RE2 syntax (the `regex` crate is linear time, like RE2)
//! and a *full* match of the input. The anchors are added to the parsed pattern, not to its
//! text, so no pattern can reach outside them (`a)|(b` is an error, not "starts with a").
//!
//! Header values are matched as Envoy 1.40 matches them (checked against a real Envoy by
//! `tests/integration/inbound_differential.rs`): a repeated header matches when one of its
//! values does, and values are compared as bytes, so a value with bytes outside visible ASCII
//! is matched (a regex reads an invalid UTF-8 sequence as U+FFFD, so `.` matches it, as in
//! Envoy), never taken as absent.

use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;
use regex_automata::meta;
use regex_syntax::hir::{Hir, Look};

/// A compiled regular expression that must match the whole input, as Envoy's `safe_regex` does.
#[derive(Clone, Debug)]
pub struct FullRegex {
    source: Arc<str>,
    compiled: meta::Regex,
}

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RegexError(String);

impl FullRegex {
    /// Compiles `pattern` anchored at both ends. The pattern is parsed on its own, then wrapped
    /// in start and end assertions, so its text cannot close the anchoring group.
    ///
    /// ```
    /// let re = mesh_core::model::FullRegex::new("/api/v[0-9]+").unwrap();
    /// assert!(re.is_match("/api/v1"));
    /// assert!(!re.is_match("/api/v1/users"));
    /// // Valid only inside a wrapping group; on its own it is not a regex.
    /// assert!(mesh_core::model::FullRegex::new("a)|(b").is_err());
    /// ```
    pub fn new(pattern: &str) -> Result<Self, RegexError> {
        let parsed = regex_syntax::ParserBuilder::new()
            .build()
            .parse(pattern)
            .map_err(|e| RegexError(e.to_string()))?;
        let anchored = Hir::concat(vec![Hir::look(Look::Start), parsed, Hir::look(Look::End)]);
        let compiled = meta::Regex::builder()
            .build_from_hir(&anchored)
            .map_err(|e| RegexError(e.to_string()))?;
        Ok(Self {
            source: pattern.into(),
            compiled,
        })
    }

    /// Whether the whole of `input` matches.
    pub fn is_match(&self, input: &str) -> bool {
        self.compiled.is_match(input)
    }

    /// Whether the whole of `input` matches; bytes that are not UTF-8 are read as U+FFFD, as
    /// RE2 reads them, so `.` matches them.
    pub fn is_match_bytes(&self, input: &[u8]) -> bool {
        match std::str::from_utf8(input) {
            Ok(s) => self.is_match(s),
            Err(_) => self.is_match(&String::from_utf8_lossy(input)),
        }
    }

    /// The pattern as configured (without the anchors added here).
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// How a [`StringMatcher`] compares.
#[derive(Clone, Debug)]
pub enum StringMatch {
    /// The whole value equals this.
    Exact(Box<str>),
    /// The value starts with this.
    Prefix(Box<str>),
    /// The value ends with this.
    Suffix(Box<str>),
    /// The value contains this.
    Contains(Box<str>),
    /// The whole value matches this regex.
    Regex(FullRegex),
}

/// Envoy's `type.matcher.v3.StringMatcher`.
///
/// ```
/// use mesh_core::model::{StringMatch, StringMatcher};
/// let m = StringMatcher { kind: StringMatch::Prefix("Bearer ".into()), ignore_case: true };
/// assert!(m.matches("bearer abc"));
/// ```
#[derive(Clone, Debug)]
pub struct StringMatcher {
    /// The comparison.
    pub kind: StringMatch,
    /// Compare ASCII case-insensitively (not applied to regexes, as in Envoy).
    pub ignore_case: bool,
}

impl StringMatcher {
    /// An exact, case-sensitive matcher.
    pub fn exact(value: impl Into<Box<str>>) -> Self {
        Self {
            kind: StringMatch::Exact(value.into()),
            ignore_case: false,
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        match &self.kind {
            StringMatch::Exact(s) if ic => value.eq_ignore_ascii_case(s),
            StringMatch::Exact(s) => value == &**s,
            StringMatch::Prefix(s) => starts_with(value, s, ic),
            StringMatch::Suffix(s) => ends_with(value, s, ic),
            StringMatch::Contains(s) if ic => {
                value.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
            }
            StringMatch::Contains(s) => value.contains(&**s),
            StringMatch::Regex(re) => re.is_match(value),
        }
    }
}

impl StringMatcher {
    /// Whether `value` matches, compared byte for byte (case-insensitively for ASCII letters
    /// when asked), as Envoy compares header values.
    ///
    /// ```
    /// use mesh_core::model::StringMatcher;
    /// assert!(StringMatcher::exact("admin").matches_bytes(b"admin"));
    /// assert!(!StringMatcher::exact("admin").matches_bytes(b"admin\xff"));
    /// ```
    pub fn matches_bytes(&self, value: &[u8]) -> bool {
        if let Ok(s) = std::str::from_utf8(value) {
            return self.matches(s);
        }
        let ic = self.ignore_case;
        let eq = |a: &[u8], b: &[u8]| {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.kind {
            StringMatch::Exact(s) => eq(value, s.as_bytes()),
            StringMatch::Prefix(s) => value.len() >= s.len() && eq(&value[..s.len()], s.as_bytes()),
            StringMatch::Suffix(s) => {
                value.len() >= s.len() && eq(&value[value.len() - s.len()..], s.as_bytes())
            }
            StringMatch::Contains(s) => {
                s.is_empty() || value.windows(s.len()).any(|w| eq(w, s.as_bytes()))
            }
            StringMatch::Regex(re) => re.is_match_bytes(value),
        }
    }
}

pub(crate) fn starts_with(value: &str, prefix: &str, ignore_case: bool) -> bool {
    if ignore_case {
        value.len() >= prefix.len()
            && value.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    } else {
        value.starts_with(prefix)
    }
}

fn ends_with(value: &str, suffix: &str, ignore_case: bool) -> bool {
    if ignore_case {
        value.len() >= suffix.len()
            && value.as_bytes()[value.len() - suffix.len()..]
                .eq_ignore_ascii_case(suffix.as_bytes())
    } else {
        value.ends_with(suffix)
    }
}

/// What a [`HeaderMatcher`] checks.
#[derive(Clone, Debug)]
pub enum HeaderMatch {
    /// Value matches the string matcher (covers Envoy's exact/prefix/suffix/contains/regex forms).
    String(StringMatcher),
    /// Value parses as an integer in `[start, end)`.
    Range {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
    /// Header present (`true`) or absent (`false`).
    Present(bool),
}

/// Envoy's `route.v3.HeaderMatcher`.
#[derive(Clone, Debug)]
pub struct HeaderMatcher {
    /// Header name (lower case). `:authority`, `:path`, `:method` and `:scheme` are pseudo-headers
    /// read from the request line.
    pub name: Box<str>,
    /// The check.
    pub kind: HeaderMatch,
    /// Negate the result.
    pub invert: bool,
    /// A missing header matches as if it were present with an empty value.
    pub treat_missing_as_empty: bool,
}

/// A request's authority: the URI's (HTTP/2, absolute-form HTTP/1), else its `Host` header,
/// else empty.
///
/// ```
/// let req = http::Request::get("/p").header("host", "reviews:9080").body(()).unwrap();
/// assert_eq!(mesh_core::model::authority_of(&req), "reviews:9080");
/// ```
pub fn authority_of<B>(req: &http::Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// The parts of a request the matchers look at, borrowed so that matching allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Host or authority, with any port.
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Path and query, as in the `:path` pseudo-header.
    pub path_and_query: &'a str,
    /// Method.
    pub method: &'a http::Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// `http` or `https`.
    pub scheme: &'a str,
}

impl<'a> RequestView<'a> {
    /// Borrows the view from an `http::Request`.
    pub fn from_request<B>(req: &'a http::Request<B>) -> Self {
        let uri = req.uri();
        Self {
            authority: authority_of(req),
            path: uri.path(),
            query: uri.query(),
            path_and_query: uri.path_and_query().map_or("/", |pq| pq.as_str()),
            method: req.method(),
            headers: req.headers(),
            scheme: uri.scheme_str().unwrap_or("http"),
        }
    }

    /// A view of headers alone (response headers, for retry conditions): the pseudo-headers
    /// are empty.
    pub fn of_headers(headers: &'a HeaderMap) -> Self {
        Self {
            authority: "",
            path: "",
            query: None,
            path_and_query: "",
            method: &http::Method::GET,
            headers,
            scheme: "",
        }
    }

    /// A header's values as Envoy's matchers see them: the pseudo-headers `:authority` (also
    /// `host`), `:path` (with the query), `:method` and `:scheme` from the request line, and
    /// each value of a repeated header on its own (a matcher matches when one of them does,
    /// as Envoy 1.40's do). Empty when the header is absent.
    ///
    /// ```
    /// let req = http::Request::get("/p?q=1")
    ///     .header("x-user", "alice")
    ///     .header("x-user", "admin")
    ///     .body(())
    ///     .unwrap();
    /// let view = mesh_core::model::RequestView::from_request(&req);
    /// let users: Vec<&[u8]> = view.header_values("x-user").collect();
    /// assert_eq!(users, [&b"alice"[..], &b"admin"[..]]);
    /// assert_eq!(view.header_values(":path").next(), Some(&b"/p?q=1"[..]));
    /// assert!(view.header_values("x-missing").next().is_none());
    /// ```
    pub fn header_values(&self, name: &str) -> HeaderValues<'a> {
        let pseudo = match name {
            ":authority" | "host" => Some(self.authority),
            ":path" => Some(self.path_and_query),
            ":method" => Some(self.method.as_str()),
            ":scheme" => Some(self.scheme),
            _ => None,
        };
        match pseudo {
            Some(v) => HeaderValues::One(Some(v.as_bytes())),
            None => HeaderValues::Many(self.headers.get_all(name).iter()),
        }
    }
}

/// The values of one header: see [`RequestView::header_values`].
#[derive(Debug)]
pub enum HeaderValues<'a> {
    /// A pseudo-header: one value.
    One(Option<&'a [u8]>),
    /// A header field, repeated or not.
    Many(http::header::ValueIter<'a, http::HeaderValue>),
}

impl<'a> Iterator for HeaderValues<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Self::One(v) => v.take(),
            Self::Many(it) => it.next().map(http::HeaderValue::as_bytes),
        }
    }
}

impl HeaderMatcher {
    /// Whether the request matches, as Envoy 1.40 decides it: one of the header's values
    /// matches, then `invert` turns the result over; a missing header never matches, even
    /// inverted, unless `treat_missing_as_empty` makes it an empty value.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let mut values = req.header_values(&self.name).peekable();
        let present = values.peek().is_some();
        let result = match &self.kind {
            HeaderMatch::Present(want) => (present || self.treat_missing_as_empty) == *want,
            _ if !present && !self.treat_missing_as_empty => return false,
            kind if !present => value_matches(kind, b""),
            kind => values.any(|v| value_matches(kind, v)),
        };
        result != self.invert
    }

    /// The header name as an `http` type, when it is a real header rather than a pseudo-header.
    pub fn header_name(&self) -> Option<HeaderName> {
        HeaderName::from_bytes(self.name.as_bytes()).ok()
    }
}

fn value_matches(kind: &HeaderMatch, v: &[u8]) -> bool {
    match kind {
        HeaderMatch::String(m) => m.matches_bytes(v),
        HeaderMatch::Range { start, end } => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|n| n >= *start && n < *end),
        HeaderMatch::Present(want) => *want,
    }
}

/// Envoy's `route.v3.QueryParameterMatcher`.
#[derive(Clone, Debug)]
pub struct QueryParamMatcher {
    /// Parameter name.
    pub name: Box<str>,
    /// `None`: the parameter must be present; otherwise its value must match.
    pub value: Option<StringMatcher>,
}

impl QueryParamMatcher {
    /// Whether the query string carries a matching parameter.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        query.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == &*self.name && self.value.as_ref().is_none_or(|m| m.matches(v))
        })
    }
}

/// How a route matches the path.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Path starts with this.
    Prefix(Box<str>),
    /// Path equals this.
    Exact(Box<str>),
    /// Whole path matches this regex.
    Regex(FullRegex),
    /// Path equals this or starts with it followed by `/`, `?` or `#`.
    SeparatedPrefix(Box<str>),
    /// Only `CONNECT` requests (Envoy's `connect_matcher`), whatever the path.
    Connect,
}

impl PathMatch {
    /// Whether `path` (without the query) matches.
    pub fn matches(&self, path: &str, case_sensitive: bool) -> bool {
        let ic = !case_sensitive;
        match self {
            PathMatch::Prefix(p) => starts_with(path, p, ic),
            PathMatch::Exact(p) if ic => path.eq_ignore_ascii_case(p),
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, ic)
                    && matches!(
                        path.as_bytes().get(p.len()),
                        None | Some(b'/' | b'?' | b'#')
                    )
            }
            // Checked against the method in `RouteMatcher::matches`.
            PathMatch::Connect => true,
        }
    }
}

/// A fraction in parts per million (Envoy's `FractionalPercent` normalised).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fraction {
    /// Parts per million, 0..=1_000_000.
    pub per_million: u32,
}

impl Fraction {
    /// Always.
    pub const ALWAYS: Fraction = Fraction {
        per_million: 1_000_000,
    };

    /// From a percentage (0.0 ..= 100.0), clamped.
    pub fn from_percent(p: f64) -> Self {
        Self {
            per_million: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        }
    }

    /// Whether a uniform sample in `0..1_000_000` falls inside the fraction.
    pub fn hit(&self, sample: u32) -> bool {
        sample < self.per_million
    }
}

/// Envoy's `route.v3.RouteMatch`.
#[derive(Clone, Debug)]
pub struct RouteMatcher {
    /// The path check.
    pub path: PathMatch,
    /// Whether path matching is case sensitive (default true).
    pub case_sensitive: bool,
    /// Every header matcher must match.
    pub headers: Box<[HeaderMatcher]>,
    /// Every query parameter matcher must match.
    pub query_params: Box<[QueryParamMatcher]>,
    /// Match only this fraction of requests.
    pub runtime_fraction: Option<Fraction>,
    /// Match only gRPC requests (`content-type: application/grpc*`).
    pub grpc: bool,
}

impl RouteMatcher {
    /// A matcher for every request (prefix `/`).
    pub fn any() -> Self {
        Self {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: Box::new([]),
            query_params: Box::new([]),
            runtime_fraction: None,
            grpc: false,
        }
    }

    /// Whether the request matches. `sample` is a uniform random number in `0..1_000_000`,
    /// used only when the route has a runtime fraction.
    pub fn matches(&self, req: &RequestView<'_>, sample: u32) -> bool {
        self.path.matches(req.path, self.case_sensitive)
            && (matches!(self.path, PathMatch::Connect) == (req.method == http::Method::CONNECT))
            && self.headers.iter().all(|h| h.matches(req))
            && self.query_params.iter().all(|q| q.matches(req.query))
            && (!self.grpc
                || req
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")))
            && self.runtime_fraction.is_none_or(|f| f.hit(sample))
    }
}

/// An IP prefix (`CidrRange`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: std::net::IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` falls inside the range. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for IPv4 peers) is the IPv4 address it carries, as
    /// Envoy reports it; otherwise IPv4 and IPv6 never match each other.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = unmapped(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix_len) == self.network()
    }

    /// The network address: `addr` with its host bits cleared (`10.1.2.3/16` is `10.1.0.0`).
    pub fn network(&self) -> std::net::IpAddr {
        masked(self.addr, self.prefix_len)
    }
}

/// `ip` with every bit past `prefix_len` cleared.
fn masked(ip: std::net::IpAddr, prefix_len: u8) -> std::net::IpAddr {
    use std::net::IpAddr::{V4, V6};
    match ip {
        V4(a) => {
            let bits = u32::from(prefix_len.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            V4((u32::from(a) & mask).into())
        }
        V6(a) => {
            let bits = u32::from(prefix_len.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            V6((u128::from(a) & mask).into())
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
pub(crate) fn unmapped(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(path: &'a str, headers: &'a HeaderMap, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            authority: "svc:80",
            path,
            query,
            path_and_query: path,
            method: &http::Method::GET,
            headers,
            scheme: "http",
        }
    }

    #[test]
    fn regex_is_full_match() {
        let re = FullRegex::new("/a+").unwrap();
        assert!(re.is_match("/aaa"));
        assert!(!re.is_match("/aaab"));
    }

    #[test]
    fn separated_prefix_needs_a_separator() {
        let m = PathMatch::SeparatedPrefix("/api".into());
        assert!(m.matches("/api", true));
        assert!(m.matches("/api/x", true));
        assert!(!m.matches("/apix", true));
    }

    #[test]
    fn case_insensitive_prefix() {
        assert!(PathMatch::Prefix("/API".into()).matches("/api/x", false));
        assert!(!PathMatch::Prefix("/API".into()).matches("/api/x", true));
    }

    #[test]
    fn header_invert_and_missing() {
        let mut h = HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        let m = HeaderMatcher {
            name: "end-user".into(),
            kind: HeaderMatch::String(StringMatcher::exact("jason")),
            invert: true,
            treat_missing_as_empty: false,
        };
        assert!(!m.matches(&view("/", &h, None)));
        let empty = HeaderMap::new();
        assert!(
            !m.matches(&view("/", &empty, None)),
            "a missing header never matches"
        );
        let range = HeaderMatcher {
            name: "x-n".into(),
            kind: HeaderMatch::Range { start: 1, end: 10 },
            invert: false,
            treat_missing_as_empty: false,
        };
        h.insert("x-n", "9".parse().unwrap());
        assert!(range.matches(&view("/", &h, None)));
        h.insert("x-n", "10".parse().unwrap());
        assert!(!range.matches(&view("/", &h, None)));
    }

    #[test]
    fn query_params() {
        let m = QueryParamMatcher {
            name: "u".into(),
            value: Some(StringMatcher::exact("1")),
        };
        assert!(m.matches(Some("a=2&u=1")));
        assert!(!m.matches(Some("u=2")));
        let present = QueryParamMatcher {
            name: "debug".into(),
            value: None,
        };
        assert!(present.matches(Some("debug")));
        assert!(!present.matches(None));
    }

    #[test]
    fn cidr() {
        let c = Cidr {
            addr: "10.1.0.0".parse().unwrap(),
            prefix_len: 16,
        };
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        let c6 = Cidr {
            addr: "fd00::".parse().unwrap(),
            prefix_len: 8,
        };
        assert!(c6.contains("fd12::1".parse().unwrap()));
        assert!(!c6.contains("10.1.2.3".parse().unwrap()));
        assert!(
            c.contains("::ffff:10.1.2.3".parse().unwrap()),
            "a dual-stack socket's IPv4 peer"
        );
    }
}
