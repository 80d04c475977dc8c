//! The inbound side against a real Envoy 1.40, differentially. One inbound listener (path
//! normalization as Istio sets it, a DENY and an ALLOW RBAC filter on paths, headers and
//! client addresses) is served by Envoy in front of a backend and by `mesh_tower::serve` in
//! front of the same echoing application; a corpus of adversarial requests is sent to both,
//! byte for byte, over raw TCP. Every request must reach the application with the same path
//! on both sides, or be refused with the same status, except the few listed in
//! [`DIVERGENCES`], where the mesh is stricter and the comment says why.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use mesh_test_support::backend::echo;
use mesh_test_support::http::{RawAnswer, raw};
use mesh_test_support::{Backend, Envoy};
use serde_json::{Value, json};

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// It reached the application, which saw this path (and query).
    App(String),
    /// Refused with this status.
    Refused(u16),
    /// Redirected here (307).
    Redirect(String),
}

fn outcome(a: &RawAnswer) -> Outcome {
    match (a.status, a.header("x-backend"), a.header("x-path")) {
        // A client's certificate header reaching the application is part of what it sees.
        (200, Some(_), Some(path)) if a.header("x-echo-x-forwarded-client-cert").is_some() => {
            Outcome::App(format!("{path} with the client's x-forwarded-client-cert"))
        }
        (200, Some(_), Some(path)) => Outcome::App(path),
        (307, _, _) => Outcome::Redirect(a.header("location").unwrap_or_default()),
        (status, _, _) => Outcome::Refused(status),
    }
}

/// Istio's RBAC filters for the listener: the DENY filter first, then the ALLOW filter.
fn rbac() -> Value {
    let string = |name: &str, m: Value| json!({"header": {"name": name, "string_match": m}});
    let deny = json!({
        "admin-paths": {
            "permissions": [{"or_rules": {"rules": [
                {"url_path": {"path": {"prefix": "/admin/"}}},
                {"url_path": {"path": {"exact": "/admin"}}}]}}],
            "principals": [{"any": true}]},
        "attacker-header": {
            "permissions": [{"any": true}],
            "principals": [string("x-user", json!({"contains": "attacker"}))]},
        "admin-role": {
            "permissions": [{"any": true}],
            "principals": [string("x-role", json!({"prefix": "admin"}))]},
        "evil-tag": {
            "permissions": [{"any": true}],
            "principals": [string("x-tag", json!({"safe_regex": {"regex": ".*evil.*"}}))]},
        "blocked-client": {
            "permissions": [{"any": true}],
            "principals": [{"remote_ip": {"address_prefix": "203.0.113.0", "prefix_len": 24}}]},
        "blocked-peer": {
            "permissions": [{"any": true}],
            "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.2", "prefix_len": 32}}]},
    });
    let allow = json!({
        "public": {
            "permissions": [{"not_rule": {"url_path": {"path": {"prefix": "/private/"}}}}],
            "principals": [{"any": true}]},
        "private-with-token": {
            "permissions": [{"url_path": {"path": {"prefix": "/private/"}}}],
            "principals": [string("x-token", json!({"exact": "secret"}))]},
    });
    let filter = |name: &str, action: &str, policies: Value| {
        json!({"name": name, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies}}})
    };
    json!([
        filter("envoy.filters.http.rbac.deny", "DENY", deny),
        filter("envoy.filters.http.rbac.allow", "ALLOW", allow),
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ])
}

/// The listener both serve, at `addr`; `route` is what its one route does (Envoy forwards to
/// the application's cluster, the mesh hands the request to the application).
fn listener(name: &str, addr: SocketAddr, normalization: &Value, route: Value) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "route_config": {"name": "inbound", "virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}}]}]},
        "http_filters": rbac(),
    });
    mesh_test_support::static_json::merge(&mut hcm, normalization.clone());
    let r = &mut hcm["route_config"]["virtual_hosts"][0]["routes"][0];
    mesh_test_support::static_json::merge(r, route);
    json!({
        "name": name,
        "address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    })
}

/// Envoy and the mesh serving the same listener.
struct Pair {
    envoy: Envoy,
    envoy_addr: SocketAddr,
    mesh_addr: SocketAddr,
    _backend: Backend,
    _mesh: tokio::task::JoinHandle<()>,
}

async fn pair(normalization: Value) -> Pair {
    let backend = Backend::start("app").await;
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener("inbound", any_port, &normalization,
                json!({"route": {"cluster": "app"}}))],
            "clusters": [mesh_test_support::static_json::cluster("app", &[backend.addr()], json!({}))],
        }
    });
    let envoy = Envoy::start(&bootstrap.to_string()).await;
    let envoy_addr = envoy.listener_addr(0).await;

    let socket = tokio::net::TcpListener::bind(any_port).await.unwrap();
    let mesh_addr = socket.local_addr().unwrap();
    let doc = json!({"static_resources": {"listeners": [listener(
        &format!("inbound|{mesh_addr}"), mesh_addr, &normalization,
        json!({"non_forwarding_action": {}}))]}});
    let mesh = mesh_core::Mesh::builder()
        .bootstrap(
            mesh_core::Bootstrap::from_json(
                &json!({"server_listener_resource_name_template": "inbound|%s"}).to_string(),
            )
            .unwrap(),
        )
        .static_resources(mesh_core::StaticResources::from_value(&doc, "test").unwrap())
        .build()
        .await
        .unwrap();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        Ok::<_, Infallible>(echo("app", &req))
    });
    let task = tokio::spawn(async move {
        mesh_tower::serve_listener(&mesh, socket, app)
            .await
            .expect("serves");
    });
    Pair {
        envoy,
        envoy_addr,
        mesh_addr,
        _backend: backend,
        _mesh: task,
    }
}

/// One adversarial request.
struct Case {
    name: &'static str,
    /// The request, as sent.
    bytes: Vec<u8>,
    /// The client's own address.
    from: Option<IpAddr>,
}

fn get(name: &'static str, path: &[u8], headers: &[(&str, &[u8])]) -> Case {
    get_with_connection(name, path, headers, b"close")
}

/// [`get`], with this `Connection` header (which should still close the connection).
fn get_with_connection(
    name: &'static str,
    path: &[u8],
    headers: &[(&str, &[u8])],
    connection: &[u8],
) -> Case {
    let mut bytes = b"GET ".to_vec();
    bytes.extend_from_slice(path);
    bytes.extend_from_slice(b" HTTP/1.1\r\nhost: app\r\n");
    for (n, v) in headers {
        bytes.extend_from_slice(n.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(v);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"connection: ");
    bytes.extend_from_slice(connection);
    bytes.extend_from_slice(b"\r\n\r\n");
    Case {
        name,
        bytes,
        from: None,
    }
}

/// Spellings of paths policy cares about: dot segments, escapes of every kind, backslashes,
/// repeated slashes, path parameters, fragments, NUL.
fn path_cases() -> Vec<Case> {
    let paths: &[(&'static str, &[u8])] = &[
        ("admin", b"/admin/x"),
        ("admin exact", b"/admin"),
        ("public", b"/public"),
        ("dot-dot", b"/public/../admin/x"),
        ("dot", b"/./admin/x"),
        ("encoded letter", b"/%61dmin/x"),
        ("all encoded", b"/%61%64%6d%69%6e/x"),
        ("encoded upper", b"/%41dmin/x"),
        ("upper case", b"/ADMIN/x"),
        ("encoded slash", b"/admin%2fx"),
        ("encoded slash upper", b"/admin%2Fx"),
        ("dot-dot encoded slash", b"/public/..%2fadmin/x"),
        ("encoded slashes around", b"/public%2f..%2fadmin/x"),
        ("encoded backslash", b"/public%5c..%5cadmin/x"),
        ("backslashes", b"/public\\..\\admin\\x"),
        ("double slash", b"//admin/x"),
        ("inner double slash", b"/admin//x"),
        ("encoded dots", b"/public/%2e%2e/admin/x"),
        ("mixed-case encoded dots", b"/public/%2E%2e/admin/x"),
        ("half-encoded dots", b"/public/.%2e/admin/x"),
        ("dot-dot params", b"/public/..;/admin/x"),
        ("dot-dot named params", b"/public/..;x=1/admin/x"),
        ("encoded dot-dot params", b"/public/.%2e;/admin/x"),
        ("params in admin", b"/admin;x/y"),
        ("nul escape", b"/admin%00"),
        ("bare percent", b"/admin/%"),
        ("bad escape", b"/admin/%zz"),
        ("trailing dot", b"/admin/."),
        ("trailing encoded dot", b"/admin/%2e"),
        ("query", b"/public?next=/admin/x"),
        ("encoded query", b"/public?next=%2fadmin%2fx"),
        ("climb out", b"/admin/x/../.."),
        ("above root", b"/../../admin/x"),
        ("encoded above root", b"/%2e%2e/admin/x"),
        ("encoded tilde", b"/admin/%7e"),
        ("quotes and braces", b"/public/\"{}|"),
        ("angle bracket", b"/public/<x>"),
        ("fragment", b"/admin#x"),
        ("fragment climbs", b"/public#/../admin/x"),
        ("private", b"/private/x"),
        ("private via dots", b"/public/../private/x"),
        ("private encoded", b"/%70rivate/x"),
    ];
    paths.iter().map(|(name, p)| get(name, p, &[])).collect()
}

/// Headers: repeated, odd bytes, odd spellings; and client addresses, through
/// `x-forwarded-for` and the connection itself.
fn header_cases() -> Vec<Case> {
    let mut cases = vec![
        get("user", b"/public", &[("x-user", b"attacker")]),
        // Headers a client nominates in `Connection` are hop-by-hop: gone before policy looks
        // (a DENY rule on them sees them absent), and some nominations are refused.
        get_with_connection(
            "user nominated hop-by-hop",
            b"/public",
            &[("x-user", b"attacker")],
            b"X-User, close",
        ),
        get_with_connection(
            "role nominated hop-by-hop",
            b"/public",
            &[("x-role", b"admin")],
            b"close, x-role",
        ),
        get_with_connection(
            "forwarded-for nominated",
            b"/public",
            &[],
            b"close, x-forwarded-for",
        ),
        get_with_connection(
            "ten nominations",
            b"/public",
            &[],
            b"close, a, b, c, d, e, f, g, h, i",
        ),
        get(
            "user repeated",
            b"/public",
            &[("x-user", b"alice"), ("x-user", b"attacker")],
        ),
        get("user upper name", b"/public", &[("X-User", b"attacker")]),
        get("user padded", b"/public", &[("x-user", b"  attacker  ")]),
        get(
            "user high bytes",
            b"/public",
            &[("x-user", b"\xffattacker\xfe")],
        ),
        get("role", b"/public", &[("x-role", b"admin")]),
        get(
            "role repeated",
            b"/public",
            &[("x-role", b"viewer"), ("x-role", b"admin")],
        ),
        get(
            "role repeated first",
            b"/public",
            &[("x-role", b"admin"), ("x-role", b"viewer")],
        ),
        get("role high bytes", b"/public", &[("x-role", b"admin\xff")]),
        get("role empty", b"/public", &[("x-role", b"")]),
        get("tag", b"/public", &[("x-tag", b"so evil")]),
        get(
            "tag repeated",
            b"/public",
            &[("x-tag", b"fine"), ("x-tag", b"evil")],
        ),
        get("tag high bytes", b"/public", &[("x-tag", b"\xffevil")]),
        get(
            "tag high bytes after",
            b"/public",
            &[("x-tag", b"evil\xff")],
        ),
        get("token", b"/private/x", &[("x-token", b"secret")]),
        get("token missing", b"/private/x", &[]),
        get(
            "token repeated",
            b"/private/x",
            &[("x-token", b"secret"), ("x-token", b"secret")],
        ),
        get(
            "token second",
            b"/private/x",
            &[("x-token", b"wrong"), ("x-token", b"secret")],
        ),
        get("token case", b"/private/x", &[("x-token", b"SECRET")]),
        get(
            "token via dots",
            b"/public/../private/x",
            &[("x-token", b"secret")],
        ),
        get(
            "forwarded",
            b"/public",
            &[("x-forwarded-for", b"203.0.113.9")],
        ),
        get(
            "forwarded chain, blocked last",
            b"/public",
            &[("x-forwarded-for", b"10.1.1.1, 203.0.113.9")],
        ),
        get(
            "forwarded chain, blocked first",
            b"/public",
            &[("x-forwarded-for", b"203.0.113.9, 10.1.1.1")],
        ),
        get(
            "forwarded repeated",
            b"/public",
            &[
                ("x-forwarded-for", b"10.1.1.1"),
                ("x-forwarded-for", b"203.0.113.9"),
            ],
        ),
        get(
            "forwarded with port",
            b"/public",
            &[("x-forwarded-for", b"203.0.113.9:80")],
        ),
        get(
            "forwarded garbage",
            b"/public",
            &[("x-forwarded-for", b"not-an-ip")],
        ),
        get(
            "forwarded ipv6",
            b"/public",
            &[("x-forwarded-for", b"2001:db8::1")],
        ),
        get("two hosts", b"/public", &[("host", b"admin.internal")]),
        get(
            "client certificate header",
            b"/public",
            &[(
                "x-forwarded-client-cert",
                b"By=spiffe://cluster.local/ns/default/sa/admin",
            )],
        ),
    ];
    let mut peer = get("blocked peer", b"/public", &[]);
    peer.from = Some(IpAddr::from([127, 0, 0, 2]));
    cases.push(peer);
    let mut peer_forwarded = get(
        "blocked peer, forwarded for another",
        b"/public",
        &[("x-forwarded-for", b"10.1.1.1")],
    );
    peer_forwarded.from = Some(IpAddr::from([127, 0, 0, 2]));
    cases.push(peer_forwarded);
    let mut other_peer = get("other peer", b"/public", &[]);
    other_peer.from = Some(IpAddr::from([127, 0, 0, 3]));
    cases.push(other_peer);
    cases
}

/// Where the two answer differently on purpose: (case, Envoy's outcome, the mesh's, why).
type Divergence = (&'static str, Outcome, Outcome, &'static str);

fn divergences() -> Vec<Divergence> {
    let app = |p: &str| Outcome::App(p.into());
    vec![
        (
            "encoded dot-dot params",
            app("/public/..;/admin/x"),
            Outcome::Refused(403),
            "Envoy decodes `%2e` after deciding the segment is not `..;`, and forwards \
             `/public/..;/admin/x`, which Tomcat-style servers read as /admin/x; the mesh \
             normalizes to a fixed point, sees /admin/x and denies it",
        ),
        (
            "angle bracket",
            app("/public/%3Cx%3E"),
            Outcome::Refused(400),
            "hyper's request parser refuses `<` and `>` in a request target; Envoy escapes them",
        ),
        (
            "two hosts",
            Outcome::App("/public".into()),
            Outcome::Refused(400),
            "RFC 9112 asks for a 400 when a request has two Host headers; Envoy joins them \
             (`app,admin.internal`) and forwards, while hyper would hand the application both; \
             the mesh refuses, so policy and application cannot read different hosts",
        ),
        (
            "fragment",
            Outcome::Refused(400),
            Outcome::Refused(403),
            "Envoy refuses a `#` in the path; hyper's URI parser drops the fragment before any \
             mesh code runs, so the mesh decides on (and the application sees) /admin",
        ),
        (
            "fragment climbs",
            Outcome::Refused(400),
            app("/public"),
            "as above: the fragment is gone before the mesh sees the request, and the \
             application sees /public, the path policy allowed",
        ),
    ]
}

async fn compare(normalization: Value) {
    mesh_test_support::trace_init();
    let pair = pair(normalization).await;
    let divergences = divergences();
    let mut report = Vec::new();
    let cases: Vec<Case> = path_cases().into_iter().chain(header_cases()).collect();
    for case in &cases {
        let send = |addr| raw(addr, case.from, &case.bytes);
        let mesh = match send(pair.mesh_addr).await {
            Ok(a) => outcome(&a),
            Err(e) => panic!("{}: the mesh did not answer: {e}", case.name),
        };
        let envoy = match send(pair.envoy_addr).await {
            Ok(a) => outcome(&a),
            Err(e) => panic!(
                "{}: Envoy did not answer: {e}\n{}",
                case.name,
                pair.envoy.log()
            ),
        };
        match divergences.iter().find(|d| d.0 == case.name) {
            Some((_, want_envoy, want_mesh, why)) if (&envoy, &mesh) != (want_envoy, want_mesh) => {
                report.push(format!(
                    "{}: expected Envoy {want_envoy:?} and mesh {want_mesh:?} ({why}), got Envoy {envoy:?} and mesh {mesh:?}",
                    case.name
                ));
            }
            Some(_) => {}
            None if envoy != mesh => {
                report.push(format!("{}: Envoy {envoy:?}, mesh {mesh:?}", case.name))
            }
            None => {}
        }
    }
    assert!(
        report.is_empty(),
        "{} of {} requests differ:\n{}",
        report.len(),
        cases.len(),
        report.join("\n")
    );
}

/// Istio's default (`BASE`): `normalize_path` only.
#[tokio::test]
async fn istio_base_normalization_agrees_with_envoy() {
    compare(json!({"normalize_path": true})).await;
}

/// Istio's `DECODE_AND_MERGE_SLASHES`.
#[tokio::test]
async fn decode_and_merge_slashes_agrees_with_envoy() {
    compare(json!({"normalize_path": true, "merge_slashes": true,
               "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"}))
    .await;
}

/// Random spellings built from the pieces attackers combine, the same ones through both:
/// each reaches the application with the same path on both sides or is refused on both; the
/// only difference allowed is the mesh's second normalization pass (its path is Envoy's,
/// normalized once more).
#[tokio::test]
async fn random_spellings_agree_with_envoy() {
    const PIECES: &[&str] = &[
        "/", "\\", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", ";", ";x", "a", "admin",
        "%61", "%41", "%", "%%", "%2", "%zz", "%25", "%3b", "~", "%7e", "-", "%u002e", "//", "/./",
        "/../", "%00", "%3", "0", "e", "%%32e", "%2%65", "|", ":", "{", "\"", "private",
    ];
    mesh_test_support::trace_init();
    let pair = pair(json!({"normalize_path": true, "merge_slashes": true})).await;
    let mut rng = fastrand::Rng::with_seed(16);
    let mut differ = Vec::new();
    let (mut reached, mut second_pass) = (0, 0);
    let n = 1500;
    for _ in 0..n {
        let path = format!(
            "/{}",
            (0..rng.usize(0..10))
                .map(|_| PIECES[rng.usize(0..PIECES.len())])
                .collect::<String>()
        );
        let case = get("random", path.as_bytes(), &[]);
        let envoy = outcome(&raw(pair.envoy_addr, None, &case.bytes).await.unwrap());
        let mesh = outcome(&raw(pair.mesh_addr, None, &case.bytes).await.unwrap());
        reached += matches!(envoy, Outcome::App(_)) as usize;
        second_pass += (envoy != mesh) as usize;
        let explained = match (&envoy, &mesh) {
            (a, b) if a == b => true,
            // Envoy left something a second pass removes; the mesh decided on that.
            (Outcome::App(e), m) => {
                let again = mesh_core::model::PathNormalization {
                    normalize: true,
                    merge_slashes: true,
                    ..Default::default()
                }
                .apply(e);
                match (again, m) {
                    (mesh_core::model::PathAction::Forward(p), Outcome::App(m)) => &p == m,
                    (mesh_core::model::PathAction::Forward(p), Outcome::Refused(403)) => {
                        p.starts_with("/admin/") || p == "/admin" || p.starts_with("/private/")
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !explained {
            differ.push(format!("{path:?}: Envoy {envoy:?}, mesh {mesh:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {n} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    // The corpus has teeth: most requests reach the application, some only differ by the
    // second pass.
    println!("{reached} of {n} reached the application; {second_pass} differ by the second pass");
    assert!(reached > n / 3, "{reached} of {n} reached the application");
}
