//! Upstream connection lifetimes (`common_http_protocol_options`): a connection carries at
//! most `max_requests_per_connection` requests, and one idle longer than `idle_timeout` or
//! open longer than `max_connection_duration` takes no new request. Checked by counting the
//! connections a real server accepts, over HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use crate::get;

/// A server (HTTP/1.1 and HTTP/2 cleartext) that counts the connections it accepts.
async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Sends `n` requests one after another, waiting `pause` between them, and returns how many
/// connections the server accepted.
async fn connections_for(h2: bool, common: serde_json::Value, n: usize, pause: Duration) -> usize {
    let (addr, accepted) = counting_server().await;
    let protocol = if h2 {
        json!({"explicit_http_config": {"http2_protocol_options": {}}})
    } else {
        json!({"explicit_http_config": {"http_protocol_options": {}}})
    };
    let mut options = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": common,
    });
    mesh_test_support::static_json::merge(&mut options, protocol);
    let client = crate::one_cluster_client(
        &[addr],
        json!({"typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}}),
    )
    .await;
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        assert_eq!(get(&client, "http://svc/", &[]).await.status, 200);
    }
    accepted.load(Ordering::SeqCst)
}

#[tokio::test]
async fn max_requests_per_connection_opens_new_connections() {
    let limit = json!({"max_requests_per_connection": 2});
    for h2 in [false, true] {
        assert_eq!(
            connections_for(h2, limit.clone(), 5, Duration::ZERO).await,
            3,
            "h2: {h2}"
        );
        assert_eq!(
            connections_for(h2, json!({}), 5, Duration::ZERO).await,
            1,
            "h2: {h2}, no limit"
        );
    }
}

#[tokio::test]
async fn idle_and_old_connections_are_not_reused() {
    let pause = Duration::from_millis(300);
    for h2 in [false, true] {
        let idle = json!({"idle_timeout": "0.15s"});
        assert_eq!(connections_for(h2, idle, 3, pause).await, 3, "h2: {h2}");
        let long_idle = json!({"idle_timeout": "30s"});
        assert_eq!(
            connections_for(h2, long_idle, 3, pause).await,
            1,
            "h2: {h2}"
        );
        // Two requests 0.3 s apart: a connection older than 0.1 s takes no new request.
        let old = json!({"max_connection_duration": "0.1s", "idle_timeout": "30s"});
        assert_eq!(connections_for(h2, old, 2, pause).await, 2, "h2: {h2}");
    }
}
