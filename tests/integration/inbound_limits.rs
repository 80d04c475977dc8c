//! The inbound side's limits and timeouts, one test per Envoy field, each against the real
//! server on loopback TCP with a peer that misbehaves as an attacker would: a handshake or
//! request head that never finishes, a connection that idles or lives too long, too many or
//! too large headers, a stream that never gets its answer, an HTTP/2 peer that stops
//! answering PINGs, more connections than the chain allows, and an application that panics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_test_support::TestCa;
use mesh_test_support::backend::echo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::inbound_filter_chains::{closes_within, hcm, inbound, mesh_builder, tls_socket};

type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The application: `/sleep?MS` answers after MS milliseconds, `/panic` panics, `/drip`
/// streams a chunk every 100 ms for ever, `/stall` sends one chunk and then nothing, anything
/// else echoes.
async fn app(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<AppBody>, Infallible> {
    let streamed = |drip: bool| {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
        tokio::spawn(async move {
            loop {
                if tx.send_data(Bytes::from_static(b"x")).await.is_err() || !drip {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // A stalled body: the sender lives on, sending nothing.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        Ok(http::Response::new(body.boxed_unsync()))
    };
    match req.uri().path() {
        "/sleep" => {
            let ms = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(http::Response::new(
                Full::new(Bytes::from_static(b"slept")).boxed_unsync(),
            ))
        }
        "/panic" => panic!("the application panicked on purpose"),
        "/drip" => streamed(true),
        "/stall" => streamed(false),
        _ => Ok(echo("app", &req).map(BodyExt::boxed_unsync)),
    }
}

/// The HTTP connection manager with these fields set (over the test's plain one).
fn manager(fields: Value) -> Value {
    let mut m = hcm(false);
    mesh_test_support::static_json::merge(&mut m["typed_config"], fields);
    m
}

/// Serves the application on a fresh port behind `chains`.
async fn serve(chains: Value) -> SocketAddr {
    mesh_test_support::trace_init();
    let ca = TestCa::new("limits");
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let mesh = mesh_builder(&inbound(addr, chains), &ca)
        .expect("the listener loads")
        .build()
        .await
        .expect("mesh");
    tokio::spawn(
        async move { mesh_tower::serve_listener(&mesh, socket, tower::service_fn(app)).await },
    );
    addr
}

/// A plaintext chain whose connection manager sets `fields`.
async fn serve_plain(fields: Value) -> SocketAddr {
    serve(json!([{"filters": [manager(fields)]}])).await
}

const LIMIT: Duration = Duration::from_secs(5);

/// Reads one HTTP/1.1 answer's head from `tcp` (status line and headers).
async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    try_read_head(tcp).await.expect("closed before an answer")
}

/// [`read_head`], or `None` when the server closes the connection before any byte of it.
async fn try_read_head(tcp: &mut tokio::net::TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, tcp.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap_or(0);
        if n == 0 {
            assert!(data.is_empty(), "closed in the middle of an answer");
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&data).into_owned())
}

/// `transport_socket_connect_timeout`: a peer that starts a TLS handshake and stops is
/// closed when the chain's bound passes.
#[tokio::test]
async fn transport_socket_connect_timeout_closes_a_stalled_handshake() {
    let addr = serve(json!([{"transport_socket": tls_socket(),
                              "transport_socket_connect_timeout": "0.3s",
                              "filters": [manager(json!({}))]}]))
    .await;
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The start of a ClientHello record, and nothing more.
    let closed = closes_within(&mut stalled, &[0x16, 0x03, 0x01, 0x00, 0x80], LIMIT).await;
    let closed = closed.expect("the stalled handshake is closed");
    assert!(
        closed >= Duration::from_millis(250),
        "not before the bound: {closed:?}"
    );
}

/// `request_headers_timeout`: timed from the first byte of a request head, as Envoy times
/// it, so an idle keep-alive connection is not cut by it, but a head that never ends is.
#[tokio::test]
async fn request_headers_timeout_closes_a_head_that_never_ends() {
    let addr = serve_plain(json!({"request_headers_timeout": "0.3s"})).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_head(&mut tcp).await.starts_with("HTTP/1.1 200"),
        "idle first is fine"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let closed = closes_within(&mut tcp, b"GET / HTTP/1.1\r\nhost: a", LIMIT).await;
    let closed = closed.expect("a head that never ends is closed");
    assert!(closed >= Duration::from_millis(250), "{closed:?}");
}

/// `common_http_protocol_options.idle_timeout`: a connection with no stream is closed once
/// the bound passes after its last response.
#[tokio::test]
async fn idle_timeout_closes_a_connection_without_streams() {
    let addr = serve_plain(json!({"common_http_protocol_options": {"idle_timeout": "0.4s"}})).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /sleep?600 HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    // A stream open for longer than the idle timeout keeps the connection.
    assert!(read_head(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    let closed = closes_within(&mut tcp, b"", LIMIT).await;
    assert!(closed.is_some(), "the idle connection is closed");
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_millis(350), "{idle:?}");
}

/// `common_http_protocol_options.max_connection_duration`: a busy connection is drained once
/// it is that old: its request in flight is answered (with `connection: close`), then it
/// closes.
#[tokio::test]
async fn max_connection_duration_drains_a_busy_connection() {
    let addr = serve_plain(json!({"common_http_protocol_options":
                                  {"max_connection_duration": "0.5s"}}))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let mut answers = 0;
    loop {
        // The bound may pass between two requests (rarely: each takes 100 ms, the gap
        // microseconds); a connection with no request in flight is then closed at once, as
        // Envoy closes it, and the next request meets a closed connection.
        let sent = tcp
            .write_all(b"GET /sleep?100 HTTP/1.1\r\nhost: app\r\n\r\n")
            .await;
        let Some(head) = (match sent {
            Ok(()) => try_read_head(&mut tcp).await,
            Err(_) => None,
        }) else {
            break;
        };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        answers += 1;
        if head.to_ascii_lowercase().contains("connection: close") {
            break;
        }
        assert!(opened.elapsed() < LIMIT, "never drained");
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(450),
        "{:?}",
        opened.elapsed()
    );
    assert!(answers >= 3, "served until drained: {answers}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, tcp.read_to_end(&mut rest)).await;
}

/// `common_http_protocol_options.max_headers_count`: more headers get 431 (on HTTP/2, Envoy
/// resets the stream instead), and the connection serves on.
#[tokio::test]
async fn max_headers_count_refuses_more_headers() {
    let addr = serve_plain(json!({"common_http_protocol_options": {"max_headers_count": 6}})).await;
    let headers = |n: usize| -> String { (0..n).map(|i| format!("x-h{i}: v\r\n")).collect() };
    let ok = format!(
        "GET / HTTP/1.1\r\nhost: app\r\n{}connection: close\r\n\r\n",
        headers(3)
    );
    let answer = mesh_test_support::http::raw(addr, None, ok.as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let many = format!(
        "GET / HTTP/1.1\r\nhost: app\r\n{}connection: close\r\n\r\n",
        headers(10)
    );
    let answer = mesh_test_support::http::raw(addr, None, many.as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 431);

    let mut h2 = h2_client(addr).await;
    assert_eq!(h2_get(&mut h2, "/", 3).await, Ok(200));
    assert_eq!(h2_get(&mut h2, "/", 10).await, Ok(431));
    assert_eq!(
        h2_get(&mut h2, "/", 0).await,
        Ok(200),
        "the connection stays"
    );
}

/// `max_request_headers_kb`: a request head over the bound gets 431 (Envoy's default, 60 KiB,
/// applies when unset).
#[tokio::test]
async fn max_request_headers_kb_refuses_larger_heads() {
    let request = |kb: usize| {
        format!(
            "GET / HTTP/1.1\r\nhost: app\r\nx-big: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(kb * 1024)
        )
    };
    let addr = serve_plain(json!({"max_request_headers_kb": 16})).await;
    let answer = mesh_test_support::http::raw(addr, None, request(8).as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let answer = mesh_test_support::http::raw(addr, None, request(20).as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 431);

    let default = serve_plain(json!({})).await;
    let answer = mesh_test_support::http::raw(default, None, request(40).as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let answer = mesh_test_support::http::raw(default, None, request(70).as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 431, "Envoy's default, 60 KiB");

    // Under hyper's 8 KiB floor, the bound still holds.
    let small = serve_plain(json!({"max_request_headers_kb": 2})).await;
    let request = |bytes: usize| {
        format!(
            "GET / HTTP/1.1\r\nhost: app\r\nx-big: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(bytes)
        )
    };
    let answer = mesh_test_support::http::raw(small, None, request(1500).as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let answer = mesh_test_support::http::raw(small, None, request(3000).as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.status, 431, "2 KiB");
}

/// `stream_idle_timeout` and `common_http_protocol_options.max_stream_duration`: a request
/// whose answer does not come in time is answered 504 (its request had ended), and the
/// connection serves on.
#[tokio::test]
async fn stream_idle_timeout_and_max_stream_duration_answer_a_stalled_stream() {
    for fields in [
        json!({"stream_idle_timeout": "0.3s"}),
        json!({"common_http_protocol_options": {"max_stream_duration": "0.3s"}}),
    ] {
        let addr = serve_plain(fields.clone()).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        tcp.write_all(b"GET /sleep?3000 HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 504"), "{fields}: {head}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        let (status, _) = mesh_test_support::http::get(addr, "/sleep?10", &[("host", "app")])
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
}

/// The same fields once the response has started: a response body that stalls resets its
/// own stream after `stream_idle_timeout` while a busy stream on the same HTTP/2 connection
/// goes on, and a body still streaming at `max_stream_duration` is reset then, as Envoy resets
/// such streams (over HTTP/1, the connection is closed before the body ends).
#[tokio::test]
async fn response_bodies_are_bounded_per_stream() {
    let addr = serve_plain(json!({"stream_idle_timeout": "0.3s"})).await;
    let h2 = h2_client(addr).await;
    let drip = tokio::spawn(read_stream(h2.clone(), "/drip"));
    let (chunks, took, error) = tokio::time::timeout(LIMIT, read_stream(h2, "/stall"))
        .await
        .expect("the stalled stream is reset, not left open");
    assert_eq!(chunks, 1, "the first chunk arrived");
    assert!(error.is_some(), "the stalled stream was reset: {error:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(!drip.is_finished(), "the busy stream goes on");
    drip.abort();

    let addr = serve_plain(json!({
        "common_http_protocol_options": {"max_stream_duration": "0.5s"}}))
    .await;
    let h2 = h2_client(addr).await;
    let (chunks, took, error) = tokio::time::timeout(LIMIT, read_stream(h2.clone(), "/drip"))
        .await
        .expect("bounded");
    assert!(error.is_some(), "reset at max_stream_duration");
    assert!(chunks >= 3, "streamed until then: {chunks}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        h2_get(&mut h2.clone(), "/", 0).await,
        Ok(200),
        "the connection serves on"
    );

    // HTTP/1: the connection is closed before the chunked body ends.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /drip HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(LIMIT, tcp.read_to_end(&mut seen)).await;
    assert!(closed.is_ok(), "closed");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "the body never ended: {text}");
}

/// GETs `path` over HTTP/2 and reads its body to the end: the chunks read, the time from
/// the request, and the stream's error if it was reset.
async fn read_stream(mut h2: H2, path: &str) -> (usize, Duration, Option<String>) {
    let started = Instant::now();
    h2.ready().await.unwrap();
    let req = http::Request::get(format!("http://app{path}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let mut body = h2.send_request(req).await.unwrap().into_body();
    let mut chunks = 0;
    loop {
        match body.frame().await {
            Some(Ok(_)) => chunks += 1,
            Some(Err(e)) => return (chunks, started.elapsed(), Some(e.to_string())),
            None => return (chunks, started.elapsed(), None),
        }
    }
}

/// `http2_protocol_options.connection_keepalive`: a peer that stops answering PINGs is
/// closed after the timeout; `max_concurrent_streams` is announced and held to.
#[tokio::test]
async fn http2_keepalive_closes_a_dead_peer_and_streams_are_bounded() {
    let addr = serve_plain(json!({"http2_protocol_options": {
        "max_concurrent_streams": 1,
        "connection_keepalive": {"interval": "0.2s", "timeout": "0.2s"}}}))
    .await;
    // The preface and an empty SETTINGS frame, then silence: no ACK, no PING answer.
    let mut dead = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    dead.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    let closed = tokio::time::timeout(LIMIT, async {
        loop {
            match dead.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a peer that answers no PING is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    // One stream at a time: two slow requests take twice as long as one. (A first request
    // waits for the server's SETTINGS, which a client may not have when it opens streams.)
    let mut h2 = h2_client(addr).await;
    assert_eq!(h2_get(&mut h2, "/", 0).await, Ok(200));
    let started = Instant::now();
    let (a, b) = tokio::join!(
        {
            let mut h2 = h2.clone();
            async move { h2_get(&mut h2, "/sleep?300", 0).await }
        },
        {
            let mut h2 = h2.clone();
            async move { h2_get(&mut h2, "/sleep?300", 0).await }
        }
    );
    assert_eq!((a, b), (Ok(200), Ok(200)));
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the second stream waited for the first: {:?}",
        started.elapsed()
    );
}

/// `envoy.filters.network.connection_limit`: connections over the chain's limit are closed
/// before a byte is read, and a place freed is taken again.
#[tokio::test]
async fn connection_limit_closes_connections_over_the_limit() {
    let limit = |max: u32| {
        json!({"name": "envoy.filters.network.connection_limit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        "stat_prefix": "limit", "max_connections": max}})
    };
    // Two limits on the chain: each counts, the tighter one binds.
    let addr = serve(json!([{"filters": [limit(2), limit(5), manager(json!({}))]}])).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .unwrap();
        assert!(read_head(&mut tcp).await.starts_with("HTTP/1.1 200"));
        held.push(tcp);
    }
    let over = mesh_test_support::http::raw(
        addr,
        None,
        b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        over.is_err(),
        "the third connection is closed unanswered: {over:?}"
    );
    drop(held.pop());
    let _ = super::meshed::eventually(
        "a freed place is taken",
        || mesh_test_support::http::get(addr, "/", &[("host", "app")]),
        |r| matches!(r, Ok((200, _))),
    )
    .await;
}

/// A panicking application answers 500 (not a reset) and the connection serves on.
#[tokio::test]
async fn an_application_panic_answers_500() {
    let addr = serve_plain(json!({})).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /panic HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_head(&mut tcp).await.contains("200"),
        "the connection serves on"
    );
}

type H2 = hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>;

async fn h2_client(addr: SocketAddr) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` over HTTP/2 with `extra` more headers: the status, or the stream's error.
async fn h2_get(h2: &mut H2, path: &str, extra: usize) -> Result<u16, String> {
    let mut req = http::Request::get(format!("http://app{path}"));
    for i in 0..extra {
        req = req.header(format!("x-h{i}"), "v");
    }
    h2.ready().await.map_err(|e| e.to_string())?;
    let rsp = h2
        .send_request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let _ = rsp.into_body().collect().await;
    Ok(status)
}
