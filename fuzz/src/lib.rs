//! Fuzz targets for the inbound side's security decisions (path normalization, header
//! matching, RBAC evaluation, the PERMISSIVE sniffer with filter-chain selection) and for
//! configuration input (xDS resources through decode, translation and field accounting;
//! mesh-control's Istio YAML).
//!
//! Each target is a function of arbitrary bytes that panics when a property fails. The
//! coverage-guided runs use them through cargo-fuzz (`fuzz/libfuzzer`, started by
//! `scripts/fuzz`); the test suite runs each on its seed corpus and on pseudo-random inputs
//! for a few seconds (`tests/smoke.rs`).
#![forbid(unsafe_code)]

use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::util::pack_any;
use mesh_core::model::{
    ConnectionFacts, EscapedSlashes, FilterChainMatch, FilterConfig, HeaderMatch, HeaderMatcher,
    ListenerKind, NetworkFilter, PathAction, PathNormalization, RbacAction, RequestView,
    StringMatch, StringMatcher, canonicalize_fully,
};
use mesh_tower::server::rbac;

/// A fuzz target: panics when a property fails on `data`.
pub type Target = fn(&[u8]);

/// The targets, by name (the cargo-fuzz binaries and the corpus directories use the same).
pub const TARGETS: &[(&str, Target)] = &[
    ("path_normalization", path_normalization),
    ("header_matching", header_matching),
    ("rbac_evaluation", rbac_evaluation),
    ("permissive_sniffer", permissive_sniffer),
    ("xds_resources", config::xds_resources),
    ("istio_yaml", config::istio_yaml),
];

mod config;
pub use config::{istio_yaml, xds_resources};

/// Splits off the first byte (settings) from the rest (the input proper).
fn split(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, &[]),
    }
}

/// Path normalization never panics, and what it forwards is a path hyper can carry: visible
/// ASCII, starting with `/`, with no dot segment left, and normalizing it again changes
/// nothing (idempotence).
pub fn path_normalization(data: &[u8]) {
    let (settings, path) = split(data);
    let config = PathNormalization {
        normalize: settings & 1 != 0,
        merge_slashes: settings & 2 != 0,
        escaped_slashes: match (settings >> 2) & 3 {
            0 => EscapedSlashes::KeepUnchanged,
            1 => EscapedSlashes::RejectRequest,
            2 => EscapedSlashes::UnescapeAndRedirect,
            _ => EscapedSlashes::UnescapeAndForward,
        },
    };
    if let Some(c) = canonicalize_fully(path) {
        assert!(c.iter().all(|b| (0x21..0x7f).contains(b)), "{c:?}");
        assert_eq!(c.first(), Some(&b'/'));
        assert!(!has_dot_segment(&c), "{path:?} → {c:?}");
        assert!(matches!(
            canonicalize_fully(&c),
            Some(std::borrow::Cow::Borrowed(_))
        ));
    }
    // What a server hands the normalization: a request target hyper accepted.
    let Ok(text) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(text) else {
        return;
    };
    if !pq.as_str().starts_with('/') {
        return;
    }
    let mut req = http::Request::get(http::Uri::from(pq.clone()))
        .body(())
        .expect("request");
    match mesh_tower::normalize::normalize_request(&config, &mut req) {
        Ok(()) => {
            let out = req
                .uri()
                .path_and_query()
                .map_or("", |p| p.as_str())
                .to_owned();
            if config.normalize && config.escaped_slashes == EscapedSlashes::KeepUnchanged {
                let again = config.apply(&out);
                assert_eq!(
                    again,
                    PathAction::Keep,
                    "{text:?} → {out:?} is not a fixed point"
                );
                assert!(!has_dot_segment(
                    out.split('?').next().unwrap_or("").as_bytes()
                ));
            }
        }
        Err(rejection) => {
            let _ = rejection.location();
        }
    }
}

/// Whether a path has a segment a server could read as `.` or `..` (literal, with path
/// parameters, or percent-encoded dots).
pub fn has_dot_segment(path: &[u8]) -> bool {
    path.split(|b| *b == b'/' || *b == b'\\').any(|segment| {
        let name = segment.split(|b| *b == b';').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name)
            .replace("%2e", ".")
            .replace("%2E", ".");
        name == "." || name == ".."
    })
}

/// Header matching never panics, agrees with a plain model of Envoy's rule (one of the values
/// matches, then `invert`; a missing header never matches), and a regex pattern can never
/// match more than its anchored whole.
pub fn header_matching(data: &[u8]) {
    let (settings, rest) = split(data);
    let mut parts = rest.split(|b| *b == 0xff);
    let pattern = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let values: Vec<http::HeaderValue> = parts
        .filter_map(|v| http::HeaderValue::from_bytes(v).ok())
        .take(4)
        .collect();
    let string = |kind| StringMatcher {
        kind,
        ignore_case: settings & 8 != 0,
    };
    let kind = match settings & 7 {
        0 => HeaderMatch::String(string(StringMatch::Exact(pattern.as_str().into()))),
        1 => HeaderMatch::String(string(StringMatch::Prefix(pattern.as_str().into()))),
        2 => HeaderMatch::String(string(StringMatch::Suffix(pattern.as_str().into()))),
        3 => HeaderMatch::String(string(StringMatch::Contains(pattern.as_str().into()))),
        4 => match mesh_core::model::FullRegex::new(&pattern) {
            Ok(re) => HeaderMatch::String(string(StringMatch::Regex(re))),
            Err(_) => return,
        },
        5 => HeaderMatch::Range {
            start: i64::from(settings) - 100,
            end: i64::from(settings) + 100,
        },
        _ => HeaderMatch::Present(settings & 16 != 0),
    };
    let matcher = HeaderMatcher {
        name: "x-h".into(),
        kind,
        invert: settings & 32 != 0,
        treat_missing_as_empty: settings & 64 != 0,
    };
    let mut req = http::Request::get("/").body(()).expect("request");
    for v in &values {
        req.headers_mut().append("x-h", v.clone());
    }
    let got = matcher.matches(&RequestView::from_request(&req));
    let one = |v: &[u8]| match &matcher.kind {
        HeaderMatch::String(m) => m.matches_bytes(v),
        HeaderMatch::Range { start, end } => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|n| (*start..*end).contains(&n)),
        HeaderMatch::Present(want) => *want,
    };
    let want = match (&matcher.kind, values.is_empty()) {
        (HeaderMatch::Present(p), empty) => {
            ((!empty || matcher.treat_missing_as_empty) == *p) != matcher.invert
        }
        (_, true) if !matcher.treat_missing_as_empty => false,
        (_, true) => one(b"") != matcher.invert,
        (_, false) => values.iter().any(|v| one(v.as_bytes())) != matcher.invert,
    };
    assert_eq!(got, want, "{matcher:?} on {values:?}");
    if let HeaderMatch::String(StringMatcher {
        kind: StringMatch::Regex(re),
        ..
    }) = &matcher.kind
    {
        // Anchoring is structural: a match of the whole is a match of the pattern alone
        // found at 0 and spanning the input.
        for v in &values {
            if re.is_match_bytes(v.as_bytes()) {
                let text = String::from_utf8_lossy(v.as_bytes());
                if let Ok(alone) = regex::Regex::new(&pattern) {
                    assert!(
                        alone.is_match(&text),
                        "{pattern:?} matched {text:?} only anchored"
                    );
                }
            }
        }
    }
}

/// RBAC filters from arbitrary protobuf bytes: translation either refuses them or yields
/// filters whose verdicts are consistent (a DENY filter denies exactly when a policy
/// matches, an ALLOW filter allows exactly when one does, a LOG filter never denies).
pub fn rbac_evaluation(data: &[u8]) {
    use prost::Message;
    let (settings, rest) = split(data);
    let Ok(config) = rbac_filter::Rbac::decode(rest) else {
        return;
    };
    let manager = hcm::HttpConnectionManager {
        stat_prefix: "fuzz".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            Default::default(),
        )),
        http_filters: vec![
            hcm::HttpFilter {
                name: "rbac".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(config))),
                ..Default::default()
            },
            hcm::HttpFilter {
                name: "router".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(
                    envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(
                    ),
                ))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let l = listener::Listener {
        name: "fuzz".into(),
        address: Some(envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                    envoy_types::pb::envoy::config::core::v3::SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(80),
                        ),
                        ..Default::default()
                    },
                ),
            ),
        }),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "hcm".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let Ok(model) = mesh_core::xds::translate::listener(&l) else {
        return;
    };
    let ListenerKind::Socket(socket) = &model.kind else {
        panic!("a socket listener translated into another kind");
    };
    let NetworkFilter::Http(h) = &socket.filter_chains[0].filter else {
        panic!("the HTTP connection manager was lost");
    };
    let FilterConfig::Rbac(filter) = &h.http_filters[0].config else {
        panic!("the RBAC filter was lost");
    };
    let paths = ["/", "/admin/x", "/public/../admin", "/%61dmin", "/x?y=z"];
    let path = paths[usize::from(settings) % paths.len()];
    let req = http::Request::builder()
        .method(if settings & 8 != 0 { "POST" } else { "GET" })
        .uri(path)
        .header(
            "x-user",
            if settings & 16 != 0 {
                "attacker"
            } else {
                "alice"
            },
        )
        .body(())
        .expect("request");
    let cert = mesh_core::identity::PeerCertificate {
        uri_sans: Box::new(["spiffe://cluster.local/ns/default/sa/client".into()]),
        ..Default::default()
    };
    let conn = rbac::Connection {
        peer: "10.0.0.1:5000".parse().expect("addr"),
        client: "10.0.0.1".parse().expect("addr"),
        local: "10.0.0.2:80".parse().expect("addr"),
        spiffe_id: None,
        certificate: (settings & 32 != 0).then_some(&cert),
        sni: None,
        metadata: &mesh_tower::server::Metadata::default(),
    };
    let view = RequestView::from_request(&req);
    let verdict = rbac::evaluate(filter, &view, &conn);
    let Some(rules) = &filter.rules else {
        assert_eq!(verdict, rbac::Verdict::Allow);
        return;
    };
    let matched = rbac::first_match(rules, &view, &conn).is_some();
    let allowed = verdict == rbac::Verdict::Allow;
    match rules.action {
        RbacAction::Allow => assert_eq!(allowed, matched),
        RbacAction::Deny => assert_eq!(allowed, !matched),
        RbacAction::Log => assert!(allowed),
    }
    let _ = rbac::evaluate_connection(filter, &conn);
}

/// The PERMISSIVE sniffer on arbitrary first bytes: the TLS check, the ClientHello parser the
/// server uses (rustls's `Acceptor`, as `LazyConfigAcceptor` drives it), and filter-chain
/// selection with whatever server name and ALPN list came out, never panic; selection picks
/// a chain that matches, or none.
pub fn permissive_sniffer(data: &[u8]) {
    let (settings, bytes) = split(data);
    let tls = mesh_tower::server::looks_like_tls(bytes);
    let mut sni = None;
    let mut alpn: Vec<Vec<u8>> = Vec::new();
    if tls {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut reader = bytes;
        while !reader.is_empty() {
            match acceptor.read_tls(&mut reader) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Ok(Some(accepted)) = acceptor.accept() {
            let hello = accepted.client_hello();
            sni = hello.server_name().map(str::to_ascii_lowercase);
            alpn = hello
                .alpn()
                .map(|p| p.map(<[u8]>::to_vec).collect())
                .unwrap_or_default();
        }
    }
    let chains = [
        FilterChainMatch {
            transport_protocol: Some("tls".into()),
            server_names: Box::new(["*.example.com".into()]),
            ..Default::default()
        },
        FilterChainMatch {
            transport_protocol: Some("tls".into()),
            application_protocols: Box::new(["h2".into(), "istio".into()]),
            ..Default::default()
        },
        FilterChainMatch {
            transport_protocol: Some("raw_buffer".into()),
            destination_port: Some(80),
            ..Default::default()
        },
        FilterChainMatch {
            destination_port: Some(u16::from(settings)),
            ..Default::default()
        },
    ];
    let matches: Vec<&FilterChainMatch> = chains.iter().collect();
    let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
    let facts = ConnectionFacts {
        local: std::net::SocketAddr::from((
            [10, 0, 0, 2],
            if settings & 1 != 0 { 80 } else { 443 },
        )),
        peer: "10.0.0.1:5000".parse().expect("addr"),
        server_name: sni.as_deref(),
        transport: if tls { "tls" } else { "raw_buffer" },
        alpn: &alpn,
    };
    if let Some(i) = mesh_core::model::select(&matches, &facts) {
        let m = &chains[i];
        assert!(
            m.transport_protocol
                .as_deref()
                .is_none_or(|t| t == facts.transport)
        );
        assert!(m.destination_port.is_none_or(|p| p == facts.local.port()));
        if !m.server_names.is_empty() {
            assert!(
                sni.is_some(),
                "a named chain for a connection without a name"
            );
        }
    }
}

/// Starting inputs for a target: what each one should explore from (cargo-fuzz mutates them;
/// the smoke test runs them and mutations of them).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let with = |settings: u8, rest: &[u8]| {
        let mut v = vec![settings];
        v.extend_from_slice(rest);
        v
    };
    match target {
        "path_normalization" => [
            &b"/public/../admin/x"[..],
            b"/%61dmin/%2e%2e/%2E./.%2e/x",
            b"/a/..;x/b/.;/c\\d\\..\\e",
            b"/a%2fb%5C..%2F%2f//c",
            b"/%%32e/%2%65/%%%30%30",
            b"/a/.%2e;x/b/%2e;/c",
            b"/a{b}|c^d`e<f>g\"h",
            b"/x?y=/../z#frag",
        ]
        .iter()
        .flat_map(|p| [with(1, p), with(3, p), with(0b1111, p), with(0b0101, p)])
        .collect(),
        "header_matching" => vec![
            with(0, b"secret\xffsecret\xffother"),
            with(1, b"admin\xffviewer\xffadmin\x80"),
            with(3 | 8, b"EVIL\xffso evil"),
            with(4, b".*evil.*\xff\x80evil"),
            with(4, b"a|ab\xffab"),
            with(5, b"\xff7\xff20"),
            with(6 | 16 | 32, b"\xffx"),
            with(64, b""),
        ],
        "rbac_evaluation" => rbac_seeds(),
        "xds_resources" => config::xds_seeds(),
        "istio_yaml" => config::yaml_seeds(),
        "permissive_sniffer" => vec![
            with(1, b"GET / HTTP/1.1\r\n\r\n"),
            with(0, &client_hello(Some("a.example.com"), &[b"h2", b"istio"])),
            with(0, &client_hello(None, &[b"istio-peer-exchange", b"istio"])),
            with(0, &client_hello(Some("example.com"), &[])),
            with(
                0,
                &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00],
            ),
        ],
        _ => Vec::new(),
    }
}

/// Istio-shaped RBAC filters, encoded: a DENY on paths and a header, an ALLOW for a
/// principal, an AUDIT rule.
fn rbac_seeds() -> Vec<Vec<u8>> {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac_pb;
    use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    use prost::Message;
    let string = |p| m::StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    };
    let path = |p| rbac_pb::Permission {
        rule: Some(rbac_pb::permission::Rule::UrlPath(m::PathMatcher {
            rule: Some(m::path_matcher::Rule::Path(string(p))),
        })),
    };
    let any_principal = rbac_pb::Principal {
        identifier: Some(rbac_pb::principal::Identifier::Any(true)),
    };
    let header = rbac_pb::Principal {
        identifier: Some(rbac_pb::principal::Identifier::Header(HeaderMatcher {
            name: "x-user".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                string(m::string_matcher::MatchPattern::Contains("attacker".into())),
            )),
            ..Default::default()
        })),
    };
    let spiffe = rbac_pb::Principal {
        identifier: Some(rbac_pb::principal::Identifier::Authenticated(
            rbac_pb::principal::Authenticated {
                principal_name: Some(string(m::string_matcher::MatchPattern::SafeRegex(
                    m::RegexMatcher {
                        regex: ".*/ns/default/.*".into(),
                        ..Default::default()
                    },
                ))),
            },
        )),
    };
    let policy = |permissions, principals| rbac_pb::Policy {
        permissions,
        principals,
        ..Default::default()
    };
    let filter = |action: rbac_pb::rbac::Action, policies: Vec<(&str, rbac_pb::Policy)>| {
        rbac_filter::Rbac {
            rules: Some(rbac_pb::Rbac {
                action: action as i32,
                policies: policies
                    .into_iter()
                    .map(|(n, p)| (n.to_owned(), p))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    };
    use m::string_matcher::MatchPattern as P;
    let mut out = Vec::new();
    for settings in [0u8, 1, 9, 17, 33] {
        for encoded in [
            filter(
                rbac_pb::rbac::Action::Deny,
                vec![
                    (
                        "admin",
                        policy(
                            vec![path(P::Prefix("/admin/".into()))],
                            vec![any_principal.clone()],
                        ),
                    ),
                    (
                        "user",
                        policy(vec![path(P::Prefix("/".into()))], vec![header.clone()]),
                    ),
                ],
            ),
            filter(
                rbac_pb::rbac::Action::Allow,
                vec![(
                    "ns",
                    policy(vec![path(P::Exact("/".into()))], vec![spiffe.clone()]),
                )],
            ),
            filter(
                rbac_pb::rbac::Action::Log,
                vec![(
                    "audit",
                    policy(
                        vec![path(P::Suffix("x".into()))],
                        vec![any_principal.clone()],
                    ),
                )],
            ),
        ] {
            let mut v = vec![settings];
            v.extend_from_slice(&encoded);
            out.push(v);
        }
    }
    out
}

/// A TLS 1.2/1.3 ClientHello record with this server name and ALPN list.
fn client_hello(sni: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut push_ext = |kind: u16, body: &[u8]| {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    if let Some(name) = sni {
        let mut list = vec![0u8];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name.as_bytes());
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&list);
        push_ext(0, &body);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        let mut body = (list.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&list);
        push_ext(16, &body);
    }
    // Supported versions (TLS 1.3), key share groups and signature algorithms, so rustls
    // reads the hello as a usable one.
    push_ext(43, &[2, 0x03, 0x04]);
    push_ext(10, &[0, 2, 0x00, 0x1d]);
    push_ext(13, &[0, 2, 0x08, 0x04]);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[7u8; 32]);
    hello.push(0);
    hello.extend_from_slice(&[0, 2, 0x13, 0x01]);
    hello.extend_from_slice(&[1, 0]);
    hello.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hello.extend_from_slice(&ext);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sniffer_seeds_are_client_hellos_rustls_reads() {
        let hello = super::client_hello(Some("a.example.com"), &[b"h2", b"istio"]);
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor.read_tls(&mut hello.as_slice()).expect("read");
        let accepted = acceptor.accept().expect("a ClientHello").expect("complete");
        let hello = accepted.client_hello();
        assert_eq!(hello.server_name(), Some("a.example.com"));
        let alpn: Vec<&[u8]> = hello.alpn().expect("ALPN").collect();
        assert_eq!(alpn, [&b"h2"[..], &b"istio"[..]]);
    }
}
