use std::sync::Arc;
use std::time::Duration;

use mesh_test_support::{CertifiedKey, TestCa};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::{ClientAuth, client_config, peer_spiffe_id, server_config};
use super::*;
use crate::model::{SanKind, SanMatcher, StringMatcher};

const SERVER: &str = "spiffe://cluster.local/ns/default/sa/details";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/productpage";

fn identity(ca: &TestCa, key: &CertifiedKey) -> Identity {
    Identity::from_pem(
        Some(key.cert_pem.as_bytes()),
        Some(key.key_pem.as_bytes()),
        Some(ca.root_pem.as_bytes()),
        "test",
    )
    .expect("valid identity")
}

fn provider(ca: &TestCa, id: &str) -> CertificateProvider {
    CertificateProvider::from_identity("default", identity(ca, &ca.workload(id)))
}

fn expect_san(id: &str) -> Arc<[SanMatcher]> {
    Arc::new([SanMatcher {
        kind: SanKind::Uri,
        matcher: StringMatcher::exact(id),
    }])
}

/// One TLS handshake over loopback TCP; the server's view of the client's SPIFFE ID, or the
/// (client error, server error).
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> Result<Option<SpiffeId>, (String, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let peer = tls.get_ref().1.peer_certificates().and_then(peer_spiffe_id);
                let mut buf = [0u8; 4];
                let _ = tls.read_exact(&mut buf).await;
                let _ = tls.write_all(b"pong").await;
                Ok(peer)
            }
            Err(e) => Err(e.to_string()),
        }
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client_result = match connector
        .connect(ServerName::try_from("details.default").unwrap(), tcp)
        .await
    {
        Ok(mut tls) => {
            // TLS 1.3 reports a rejected client certificate on the first read.
            let _ = tls.write_all(b"ping").await;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let server_result = server_side.await.unwrap();
    match (client_result, server_result) {
        (Ok(()), Ok(peer)) => Ok(peer),
        (c, s) => Err((c.err().unwrap_or_default(), s.err().unwrap_or_default())),
    }
}

#[test]
fn spiffe_ids_are_validated() {
    let id: SpiffeId = CLIENT.parse().unwrap();
    assert_eq!(id.to_string(), CLIENT);
    assert_eq!(id.service_account(), Some("productpage"));
    for bad in [
        "spiffe://",
        "spiffe://UPPER/x",
        "spiffe://td/a//b",
        "spiffe://td/a/",
        "spiffe://td/../x",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
    }
    let odd: SpiffeId = "spiffe://td/workload/7".parse().unwrap();
    assert_eq!(odd.namespace(), None);
}

#[test]
fn identities_are_checked_when_loaded() {
    let ca = TestCa::new("root");
    let id = identity(&ca, &ca.workload(SERVER));
    assert_eq!(
        id.spiffe_id().map(ToString::to_string).as_deref(),
        Some(SERVER)
    );
    assert!(id.has_certificate());

    let expired = ca.expired_workload(SERVER);
    let e = Identity::from_pem(
        Some(expired.cert_pem.as_bytes()),
        Some(expired.key_pem.as_bytes()),
        None,
        "/etc/certs/cert-chain.pem",
    )
    .unwrap_err();
    assert!(matches!(e, IdentityError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("/etc/certs/cert-chain.pem"), "{e}");

    let other = ca.workload(CLIENT);
    let e = Identity::from_pem(
        Some(ca.workload(SERVER).cert_pem.as_bytes()),
        Some(other.key_pem.as_bytes()),
        None,
        "rotation",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("certificate and key"),
        "a key of another certificate: {e}"
    );

    let e = Identity::from_pem(Some(b"garbage"), None, None, "x").unwrap_err();
    assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
}

#[tokio::test]
async fn mutual_tls_verifies_both_identities() {
    let ca = TestCa::new("root");
    let server = server_config(&provider(&ca, SERVER), ClientAuth::Required, vec![]);
    let client = client_config(&provider(&ca, CLIENT), expect_san(SERVER), vec![]);
    let peer = handshake(server, client).await.expect("handshake");
    assert_eq!(peer.map(|p| p.to_string()).as_deref(), Some(CLIENT));
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let ca = TestCa::new("root");
    let server = server_config(
        &provider(&ca, "spiffe://cluster.local/ns/default/sa/impostor"),
        ClientAuth::Required,
        vec![],
    );
    let client = client_config(&provider(&ca, CLIENT), expect_san(SERVER), vec![]);
    let (c, _) = handshake(server, client).await.expect_err("refused");
    assert!(c.contains("match none of") && c.contains("impostor"), "{c}");
}

#[tokio::test]
async fn another_trust_root_is_refused_both_ways() {
    let ca = TestCa::new("root");
    let other = TestCa::new("other root");
    let server = server_config(&provider(&other, SERVER), ClientAuth::Required, vec![]);
    let client = client_config(&provider(&ca, CLIENT), expect_san(SERVER), vec![]);
    let (c, _) = handshake(server, client)
        .await
        .expect_err("unknown server CA");
    assert!(c.contains("UnknownIssuer"), "{c}");

    // A client that trusts the server but holds a certificate from another CA.
    let foreign = ca_less_identity(&other, &ca);
    let server = server_config(&provider(&ca, SERVER), ClientAuth::Required, vec![]);
    let client = client_config(&foreign, expect_san(SERVER), vec![]);
    let (_, s) = handshake(server, client)
        .await
        .expect_err("unknown client CA");
    assert!(s.contains("UnknownIssuer"), "{s}");
}

/// A certificate from `issuer`, trusting `trusted`'s root.
fn ca_less_identity(issuer: &TestCa, trusted: &TestCa) -> CertificateProvider {
    let key = issuer.workload(CLIENT);
    CertificateProvider::from_identity(
        "foreign",
        Identity::from_pem(
            Some(key.cert_pem.as_bytes()),
            Some(key.key_pem.as_bytes()),
            Some(trusted.root_pem.as_bytes()),
            "foreign",
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn strict_servers_require_a_client_certificate() {
    let ca = TestCa::new("root");
    let anonymous = CertificateProvider::from_identity(
        "roots-only",
        Identity::from_pem(None, None, Some(ca.root_pem.as_bytes()), "roots").unwrap(),
    );
    let server = server_config(&provider(&ca, SERVER), ClientAuth::Required, vec![]);
    let client = client_config(&anonymous, expect_san(SERVER), vec![]);
    let (_, s) = handshake(server, client).await.expect_err("no client cert");
    assert!(s.contains("peer sent no certificates"), "{s}");

    let server = server_config(&provider(&ca, SERVER), ClientAuth::Optional, vec![]);
    let client = client_config(&anonymous, expect_san(SERVER), vec![]);
    assert_eq!(handshake(server, client).await.expect("optional"), None);
}

#[tokio::test]
async fn rotated_files_are_used_by_new_handshakes() {
    let ca = TestCa::new("root");
    let dir = tempfile::tempdir().unwrap();
    ca.write_istio_files(&ca.workload(SERVER), dir.path());
    let files = |n: &str| dir.path().join(n);
    let server_id = CertificateProvider::file_watcher(
        "default",
        Some(&files("cert-chain.pem")),
        Some(&files("key.pem")),
        Some(&files("root-cert.pem")),
        Duration::from_secs(600),
    )
    .await
    .expect("files load");
    let client = || client_config(&provider(&ca, CLIENT), Arc::new([]), vec![]);
    let server = || server_config(&server_id, ClientAuth::Required, vec![]);
    handshake(server(), client())
        .await
        .expect("before rotation");

    let mut updates = server_id.updates();
    let next = "spiffe://cluster.local/ns/default/sa/details-v2";
    // A half-written rotation (new certificate, old key) is rejected; the old one serves.
    std::fs::write(files("cert-chain.pem"), ca.workload(next).cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server_id.current().spiffe_id().unwrap().to_string(), SERVER);
    // The complete rotation lands.
    ca.write_istio_files(&ca.workload(next), dir.path());
    tokio::time::timeout(Duration::from_secs(5), updates.changed())
        .await
        .expect("reloaded")
        .unwrap();
    assert_eq!(server_id.current().spiffe_id().unwrap().to_string(), next);
    let client = client_config(&provider(&ca, CLIENT), expect_san(next), vec![]);
    handshake(server(), client)
        .await
        .expect("new handshakes present the new certificate");
}

#[tokio::test]
async fn a_peer_of_another_trust_domain_is_refused() {
    // Same CA, same service account, another trust domain: the SAN check refuses it.
    let ca = TestCa::new("root");
    let server = server_config(
        &provider(&ca, "spiffe://evil.example/ns/default/sa/details"),
        ClientAuth::Required,
        vec![],
    );
    let client = client_config(&provider(&ca, CLIENT), expect_san(SERVER), vec![]);
    let (c, _) = handshake(server, client).await.expect_err("refused");
    assert!(
        c.contains("match none of") && c.contains("evil.example"),
        "{c}"
    );
}

#[tokio::test]
async fn an_expired_peer_certificate_is_refused() {
    // Our providers never load an expired certificate; a peer may still present one.
    let ca = TestCa::new("root");
    let expired = ca.expired_workload(SERVER);
    let server = expired.server_config();
    let client = client_config(&provider(&ca, CLIENT), expect_san(SERVER), vec![]);
    let (c, _) = handshake(server, client).await.expect_err("refused");
    assert!(c.contains("certificate expired"), "{c}");
}

/// A SPIFFE bundle map (gRFC A87) holding each CA's root under its trust domain.
fn bundle_map(domains: &[(&str, &TestCa)]) -> Vec<u8> {
    use base64::Engine;
    let mut map = serde_json::Map::new();
    for (domain, ca) in domains {
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(ca.root_pem.as_bytes()).unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        map.insert(
            (*domain).to_owned(),
            serde_json::json!({"keys": [{"use": "x509-svid", "kty": "EC", "x5c": [x5c]}]}),
        );
    }
    serde_json::to_vec(&serde_json::json!({"trust_domains": map})).unwrap()
}

/// A workload of `ca` for `id`, verifying peers with `map`.
fn federated(ca: &TestCa, id: &str, map: &[u8]) -> CertificateProvider {
    let key = ca.workload(id);
    let identity = Identity::from_pem(
        Some(key.cert_pem.as_bytes()),
        Some(key.key_pem.as_bytes()),
        None,
        "test",
    )
    .unwrap()
    .with_spiffe_bundle_map(map, "map.json")
    .unwrap();
    CertificateProvider::from_identity("default", identity)
}

/// gRFC A87: with a SPIFFE bundle map, each peer chains to its own trust domain's bundle:
/// two meshes with their own CAs speak mTLS; a certificate from one CA claiming the other's
/// trust domain, or from a trust domain the map lacks, is refused.
#[tokio::test]
async fn a_spiffe_bundle_map_verifies_each_peer_against_its_trust_domain() {
    let east = TestCa::new("east root");
    let west = TestCa::new("west root");
    let map = bundle_map(&[("east.example", &east), ("west.example", &west)]);
    let server_id = "spiffe://east.example/ns/default/sa/details";
    let client_id = "spiffe://west.example/ns/default/sa/productpage";
    let server = || {
        server_config(
            &federated(&east, server_id, &map),
            ClientAuth::Required,
            vec![],
        )
    };
    let client = client_config(
        &federated(&west, client_id, &map),
        expect_san(server_id),
        vec![],
    );
    let peer = handshake(server(), client).await.expect("federated mTLS");
    assert_eq!(peer.map(|p| p.to_string()).as_deref(), Some(client_id));

    // West's CA signing an east identity: not east's bundle, refused.
    let forged = client_config(
        &federated(
            &west,
            "spiffe://east.example/ns/default/sa/productpage",
            &map,
        ),
        expect_san(server_id),
        vec![],
    );
    let (_, s) = handshake(server(), forged)
        .await
        .expect_err("forged trust domain");
    assert!(s.contains("UnknownIssuer"), "{s}");

    // A trust domain the map does not hold.
    let north = TestCa::new("north root");
    let stranger = client_config(
        &federated(&north, "spiffe://north.example/ns/default/sa/x", &map),
        expect_san(server_id),
        vec![],
    );
    let (_, s) = handshake(server(), stranger)
        .await
        .expect_err("unknown trust domain");
    assert!(s.contains("not in the SPIFFE bundle map"), "{s}");

    let e = Identity::from_pem(None, None, None, "x")
        .unwrap()
        .with_spiffe_bundle_map(br#"{"trust_domains": {}}"#, "map.json")
        .unwrap_err();
    assert!(e.to_string().contains("map.json"), "{e}");
}

#[tokio::test]
async fn the_file_watcher_reads_the_spiffe_bundle_map() {
    let east = TestCa::new("east root");
    let west = TestCa::new("west root");
    let files = mesh_test_support::TempFiles::new();
    let key = east.workload("spiffe://east.example/ns/default/sa/details");
    let cert = files.write("cert.pem", &key.cert_pem);
    let private = files.write("key.pem", &key.key_pem);
    let map = files.path("map.json");
    std::fs::write(&map, bundle_map(&[("west.example", &west)])).unwrap();
    let provider = CertificateProvider::file_watcher_with_bundle_map(
        "default",
        Some(&cert),
        Some(&private),
        None,
        Some(&map),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let west_leaf = west.workload("spiffe://west.example/ns/default/sa/x");
    let der =
        rustls::pki_types::CertificateDer::from_pem_slice(west_leaf.cert_pem.as_bytes()).unwrap();
    assert!(provider.current().roots_for(&der).is_ok());
    let east_leaf = east.workload("spiffe://east.example/ns/default/sa/y");
    let der =
        rustls::pki_types::CertificateDer::from_pem_slice(east_leaf.cert_pem.as_bytes()).unwrap();
    assert!(
        provider.current().roots_for(&der).is_err(),
        "east is not in this map"
    );
}
