//! Security costs, one JSON line each (BENCHMARKS.md format):
//! - `mtls-handshake`: a full TLS 1.3 handshake with client certificates and the SPIFFE SAN
//!   check, client and server in this process over loopback TCP (both sides' CPU).
//! - `tls-handshake`: the same without a client certificate, for comparison.
//! - `plain-mtls-handshake`: mutual TLS as rustls does it alone (its WebPKI verifiers, a DNS
//!   server name), with certificates of the same key type from the same CA: the baseline of
//!   BENCHMARKS.md's handshake target (the mesh's mTLS handshake ≤ 1.2× this).
//! - `rbac-check`: evaluating Istio-shaped DENY and ALLOW filters for one request.
//! - `path-normalization`: Istio's `BASE` normalization of a request's path and the request
//!   line checks, for a path already canonical (nearly every request) and one that is not,
//!   beside building the request itself.
//!
//! `cargo bench -p mesh-tests --bench security [-- --quick]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::identity::tls::{ClientAuth, client_config, server_config};
use mesh_core::identity::{CertificateProvider, Identity, SpiffeId};
use mesh_core::model::*;
use mesh_test_support::TestCa;
use mesh_tower::server::rbac;

const SERVER: &str = "spiffe://cluster.local/ns/default/sa/details";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/productpage";

fn provider(ca: &TestCa, id: Option<&str>) -> CertificateProvider {
    let key = id.map(|id| ca.workload(id));
    CertificateProvider::from_identity(
        "bench",
        Identity::from_pem(
            key.as_ref().map(|k| k.cert_pem.as_bytes()),
            key.as_ref().map(|k| k.key_pem.as_bytes()),
            Some(ca.root_pem.as_bytes()),
            "bench",
        )
        .expect("identity"),
    )
}

async fn handshakes(n: usize, mutual: bool) -> Duration {
    let ca = TestCa::new("bench root");
    let auth = if mutual {
        ClientAuth::Required
    } else {
        ClientAuth::Optional
    };
    let server = Arc::new(server_config(&provider(&ca, Some(SERVER)), auth, vec![]));
    let client_id = if mutual { Some(CLIENT) } else { None };
    let sans: Arc<[SanMatcher]> = Arc::new([SanMatcher {
        kind: SanKind::Uri,
        matcher: StringMatcher::exact(SERVER),
    }]);
    let client = Arc::new(client_config(&provider(&ca, client_id), sans, vec![]));
    time_handshakes(n, server, client).await
}

/// The baseline: rustls's own mutual TLS (WebPKI client and server verifiers over the same
/// root), certificates from the same CA with the same key type (rcgen's default, ECDSA P-256).
async fn plain_handshakes(n: usize) -> Duration {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = TestCa::new("bench root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.root_pem.as_bytes()).expect("root"))
        .expect("root");
    let roots = Arc::new(roots);
    let pair = |key: &mesh_test_support::CertifiedKey| {
        let chain = CertificateDer::pem_slice_iter(key.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        (
            chain,
            PrivateKeyDer::from_pem_slice(key.key_pem.as_bytes()).expect("key"),
        )
    };
    let (chain, key) = pair(&ca.server(&["details"]));
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let (chain, key) = pair(&ca.client(CLIENT));
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    time_handshakes(n, Arc::new(server), Arc::new(client)).await
}

/// `n` handshakes one after another over loopback TCP, client and server in this process;
/// the average wall time of one (both sides' work is on its critical path).
async fn time_handshakes(
    n: usize,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let server = tokio::spawn(async move {
        for _ in 0..n {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // The server finishes its side before the next connection: a handshake's cost is
            // both sides' work, not the client's view of it alone.
            acceptor.accept(tcp).await.expect("server handshake");
        }
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = rustls::pki_types::ServerName::try_from("details").unwrap();
    let started = Instant::now();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        connector
            .connect(name.clone(), tcp)
            .await
            .expect("handshake");
    }
    server.await.expect("server task");
    started.elapsed() / n as u32
}

fn rbac_filters() -> [RbacFilter; 2] {
    let exact = |s: &str| StringMatcher::exact(s);
    let header = |name: &str, value: &str| HeaderMatcher {
        name: name.into(),
        kind: HeaderMatch::String(exact(value)),
        invert: false,
        treat_missing_as_empty: false,
    };
    let filter =
        |action, name: &str, permissions: Vec<Permission>, principals: Vec<Principal>| RbacFilter {
            rules: Some(RbacPolicies {
                action,
                policies: Box::new([(
                    Arc::from(name),
                    RbacPolicy {
                        permissions: Box::new([Permission::And(permissions.into())]),
                        principals: Box::new([Principal::And(principals.into())]),
                    },
                )]),
            }),
            shadow_rules: None,
            stat_prefix: "".into(),
            shadow_stat_prefix: "".into(),
        };
    [
        filter(
            RbacAction::Deny,
            "ns[default]-policy[no-admin]-rule[0]",
            vec![Permission::UrlPath(StringMatcher {
                kind: StringMatch::Prefix("/admin".into()),
                ignore_case: false,
            })],
            vec![Principal::Any],
        ),
        filter(
            RbacAction::Allow,
            "ns[default]-policy[details-viewer]-rule[0]",
            vec![Permission::Or(Box::new([
                Permission::Header(header(":method", "GET")),
                Permission::Header(header(":method", "HEAD")),
            ]))],
            vec![Principal::Or(Box::new([
                Principal::Authenticated(Some(exact(CLIENT))),
                Principal::Authenticated(Some(exact(
                    "spiffe://cluster.local/ns/default/sa/reviews",
                ))),
            ]))],
        ),
    ]
}

fn rbac_check(n: usize) -> Duration {
    let filters = rbac_filters();
    let req = http::Request::get("http://details:9080/details/0")
        .header("user-agent", "bench")
        .body(())
        .unwrap();
    let id: SpiffeId = CLIENT.parse().unwrap();
    let cert = mesh_core::identity::PeerCertificate {
        uri_sans: Box::new([CLIENT.into()]),
        ..Default::default()
    };
    let conn = rbac::Connection {
        peer: "10.0.0.1:40000".parse().unwrap(),
        client: "10.0.0.1".parse().unwrap(),
        local: "10.0.0.2:9080".parse().unwrap(),
        spiffe_id: Some(&id),
        certificate: Some(&cert),
        sni: None,
        metadata: &mesh_tower::server::Metadata::default(),
    };
    let view = RequestView::from_request(&req);
    let started = Instant::now();
    let mut allowed = 0usize;
    for _ in 0..n {
        let ok = filters
            .iter()
            .all(|f| rbac::evaluate(std::hint::black_box(f), &view, &conn) == rbac::Verdict::Allow);
        allowed += ok as usize;
    }
    assert_eq!(allowed, n, "the request is allowed");
    started.elapsed() / n as u32
}

/// Time per request to normalize `path` in place (with the request built each time), and to
/// build the request alone.
fn normalization(path: &str, n: usize) -> (Duration, Duration) {
    use std::hint::black_box;
    let base = PathNormalization {
        normalize: true,
        ..Default::default()
    };
    let started = Instant::now();
    for _ in 0..n {
        let mut req = http::Request::get(black_box(path)).body(()).unwrap();
        let _ = black_box(mesh_tower::normalize::normalize_request(&base, &mut req));
    }
    let with = started.elapsed() / n as u32;
    let started = Instant::now();
    for _ in 0..n {
        black_box(http::Request::get(black_box(path)).body(()).unwrap());
    }
    (with, started.elapsed() / n as u32)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (hs, checks) = if quick {
        (50, 100_000)
    } else {
        (1000, 5_000_000)
    };
    println!(
        "ENV {{\"nproc\":{},\"mesh\":{:?}}}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env!("CARGO_PKG_VERSION")
    );
    handshakes(20, true).await; // warm up
    plain_handshakes(20).await;
    let mtls = handshakes(hs, true).await;
    let tls = handshakes(hs, false).await;
    let plain = plain_handshakes(hs).await;
    let check = rbac_check(checks);
    let canonical = normalization("/api/v1/products/12345/reviews?limit=10", checks);
    let spelled = normalization(
        "/api/v1/products/../%70roducts/12345/./reviews?limit=10",
        checks,
    );
    for (name, (with, alone)) in [("canonical", canonical), ("rewritten", spelled)] {
        println!(
            "BENCH {{\"scenario\":\"path-normalization-{name}\",\"n\":{checks},\"ns_per_op\":{:.1},\"request_alone_ns\":{:.1}}}",
            with.as_secs_f64() * 1e9,
            alone.as_secs_f64() * 1e9
        );
    }
    println!(
        "BENCH {{\"scenario\":\"mtls-handshake\",\"n\":{hs},\"us_per_op\":{:.1}}}",
        mtls.as_secs_f64() * 1e6
    );
    println!(
        "BENCH {{\"scenario\":\"tls-handshake\",\"n\":{hs},\"us_per_op\":{:.1}}}",
        tls.as_secs_f64() * 1e6
    );
    println!(
        "BENCH {{\"scenario\":\"plain-mtls-handshake\",\"n\":{hs},\"us_per_op\":{:.1}}}",
        plain.as_secs_f64() * 1e6
    );
    println!(
        "BENCH {{\"scenario\":\"rbac-check\",\"n\":{checks},\"ns_per_op\":{:.1}}}",
        check.as_secs_f64() * 1e9
    );
    println!();
    println!("| what | cost |");
    println!("|---|---|");
    println!(
        "| mTLS handshake (both sides, SPIFFE check) | {:.1} µs |",
        mtls.as_secs_f64() * 1e6
    );
    println!(
        "| TLS handshake, no client certificate | {:.1} µs |",
        tls.as_secs_f64() * 1e6
    );
    let ratio = mtls.as_secs_f64() / plain.as_secs_f64();
    println!(
        "| plain rustls mTLS handshake (WebPKI verifiers, same key type) | {:.1} µs |",
        plain.as_secs_f64() * 1e6
    );
    println!(
        "| mesh mTLS ÷ plain rustls mTLS (BENCHMARKS.md: ≤ 1.2) | {ratio:.2} ({}) |",
        if ratio <= 1.2 { "met" } else { "missed" }
    );
    println!(
        "| RBAC DENY + ALLOW check per request | {:.0} ns |",
        check.as_secs_f64() * 1e9
    );
    println!(
        "| path normalization (BASE) of a canonical path, over building the request | {:.0} ns |",
        canonical.0.saturating_sub(canonical.1).as_secs_f64() * 1e9
    );
    println!(
        "| path normalization (BASE) of a path it rewrites, over building the request | {:.0} ns |",
        spelled.0.saturating_sub(spelled.1).as_secs_f64() * 1e9
    );
}
