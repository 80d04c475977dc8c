//! `mesh_tower::server::serve_observed`'s serving states (gRFC A36) and graceful drain, against
//! a fake ADS server that decides whether the inbound listener exists: not serving means
//! connections are accepted and closed before a byte is sent; a listener that appears turns
//! serving on; a shutdown lets started requests finish while new connections are refused.
//! Each state is published on the serving-state channel A36 asks for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::util::pack_any;
use http_body_util::Full;
use mesh_test_support::AdsServer;
use mesh_test_support::resources::{self, urls};
use mesh_tower::server::ServingState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEMPLATE: &str = "test/inbound/%s";

/// A plaintext inbound listener for `addr` that hands every request to the application.
fn inbound(addr: SocketAddr) -> envoy_types::pb::google::protobuf::Any {
    let routes = route::RouteConfiguration {
        name: "inbound".into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "inbound".into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(resources::prefix_match("/")),
                action: Some(route::route::Action::NonForwardingAction(Default::default())),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let manager = hcm::HttpConnectionManager {
        stat_prefix: "inbound".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            routes,
        )),
        http_filters: vec![resources::router_filter()],
        ..Default::default()
    };
    resources::any(listener::Listener {
        name: TEMPLATE.replace("%s", &addr.to_string()),
        address: Some(resources::address(addr)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// Answers after `?ms` milliseconds.
async fn slow(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let ms = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(http::Response::new(Full::new(Bytes::from_static(b"done"))))
}

/// What a new connection gets: an HTTP/1.1 answer's status line, or how it ended.
async fn probe(addr: SocketAddr) -> String {
    let mut tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => return format!("connect: {:?}", e.kind()),
    };
    let _ = tcp
        .write_all(b"GET /?0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await {
        Ok(Ok(_)) if buf.is_empty() => "closed".into(),
        Ok(Ok(_)) => String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        Ok(Err(e)) => format!("read: {:?}", e.kind()),
        Err(_) => "no answer".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_without_the_listener_then_serving_then_draining() {
    let ads = AdsServer::start().await;
    let mut bootstrap: serde_json::Value =
        serde_json::from_str(&ads.bootstrap_json(&["xds_v3", "fail_on_data_errors"])).unwrap();
    bootstrap["server_listener_resource_name_template"] = TEMPLATE.into();
    let mesh = super::mesh_from_json(bootstrap).await;
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    // Another listener exists, so the server's answer says ours does not.
    ads.set(inbound("127.0.0.1:1".parse().unwrap()));

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (state, states) = tokio::sync::watch::channel(ServingState::Starting);
    let server = tokio::spawn({
        let mesh = mesh.clone();
        async move {
            let signal = async {
                let _ = stopped.await;
            };
            let app = tower::service_fn(slow);
            mesh_tower::server::serve_observed(&mesh, socket, app, signal, state).await
        }
    });
    let state = || states.borrow().clone();

    let not_serving =
        super::meshed::eventually("not serving", || probe(addr), |a| a == "closed").await;
    assert_eq!(not_serving, "closed", "accepted and closed, nothing sent");
    assert!(
        matches!(&state(), ServingState::NotServing(why) if why.contains("does not exist")),
        "{:?}",
        state()
    );

    ads.set(inbound(addr));
    super::meshed::eventually("serving", || probe(addr), |a| a == "HTTP/1.1 200 OK").await;
    assert_eq!(state(), ServingState::Serving);

    // The listener deleted (honoured: fail_on_data_errors): not serving again, and an open
    // connection's request still finishes.
    let held = tokio::spawn(request(addr, 800));
    tokio::time::sleep(Duration::from_millis(100)).await;
    ads.remove(urls::LISTENER, &TEMPLATE.replace("%s", &addr.to_string()));
    super::meshed::eventually(
        "not serving after deletion",
        || probe(addr),
        |a| a == "closed",
    )
    .await;
    assert!(
        matches!(state(), ServingState::NotServing(_)),
        "{:?}",
        state()
    );
    assert_eq!(
        held.await.unwrap(),
        "HTTP/1.1 200 OK",
        "started before the deletion"
    );

    // Serving again, then a graceful stop: the slow request finishes, the port closes.
    ads.set(inbound(addr));
    super::meshed::eventually("serving again", || probe(addr), |a| a == "HTTP/1.1 200 OK").await;
    let held = tokio::spawn(request(addr, 800));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe(addr).await, "connect: ConnectionRefused");
    assert_eq!(state(), ServingState::Draining);
    assert_eq!(
        held.await.unwrap(),
        "HTTP/1.1 200 OK",
        "finished during the drain"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the drain ends")
        .unwrap()
        .expect("served");
}

/// One HTTP/1.1 request that the server answers after `ms`; its status line.
async fn request(addr: SocketAddr, ms: u64) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET /?{ms} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `inbound(addr)` with `change` applied to its one filter chain.
fn inbound_with(
    addr: SocketAddr,
    change: impl FnOnce(&mut listener::FilterChain),
) -> envoy_types::pb::google::protobuf::Any {
    use prost::Message;
    let any = inbound(addr);
    let mut l = listener::Listener::decode(any.value.as_slice()).expect("a listener");
    change(&mut l.filter_chains[0]);
    resources::any(l)
}

/// One keep-alive HTTP/1.1 exchange on `tcp`: the status line and whether the server said
/// it closes, or how the connection ended.
async fn exchange(tcp: &mut tokio::net::TcpStream) -> String {
    let _ = tcp.write_all(b"GET /?0 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".into(),
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let status = text.lines().next().unwrap_or_default().to_owned();
            if text.contains("connection: close") {
                format!("{status} (closing)")
            } else {
                status
            }
        }
        // A reset is how a closed connection may answer a request written into it.
        Ok(Err(_)) => "closed".into(),
        Err(_) => "no answer".into(),
    }
}

/// A policy update applies to an open connection; a change of its filter chain itself (here,
/// the chain stops being HTTP) does not hand it a chain it was not accepted on: what it has
/// started finishes under the filters it had, and it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_take_policy_updates_and_drain_when_their_chain_changes() {
    let ads = AdsServer::start().await;
    let mut bootstrap: serde_json::Value =
        serde_json::from_str(&ads.bootstrap_json(&["xds_v3"])).unwrap();
    bootstrap["server_listener_resource_name_template"] = TEMPLATE.into();
    let mesh = super::mesh_from_json(bootstrap).await;
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    ads.set(inbound(addr));
    tokio::spawn(async move {
        mesh_tower::serve_listener(&mesh, socket, tower::service_fn(slow)).await
    });
    let mut open = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(exchange(&mut open).await, "http/1.1 200 ok");

    // The same chain, with an RBAC filter that allows nothing: the open connection gets it.
    let deny_all = rbac_filter();
    ads.set(inbound_with(addr, |chain| {
        let mut h = hcm_of(chain);
        h.http_filters.insert(0, deny_all);
        set_hcm(chain, h);
    }));
    super::meshed::eventually(
        "the deny-all policy",
        || probe(addr),
        |p| p == "HTTP/1.1 403 Forbidden",
    )
    .await;
    assert_eq!(exchange(&mut open).await, "http/1.1 403 forbidden");

    // The chain becomes a TCP proxy: new connections are closed unserved; the open one
    // answers what it was asked under its old filters, then closes.
    ads.set(inbound_with(addr, |chain| {
        chain.filters[0].config_type = Some(listener::filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy {
                stat_prefix: "tcp".into(),
                cluster_specifier: Some(
                    envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster("elsewhere".into()),
                ),
                ..Default::default()
            },
        )));
    }));
    super::meshed::eventually("the TCP proxy chain", || probe(addr), |p| p == "closed").await;
    let last = exchange(&mut open).await;
    assert!(
        last.starts_with("http/1.1 403 forbidden"),
        "the policy it had, not the one it was accepted with: {last}"
    );
    assert_eq!(exchange(&mut open).await, "closed", "then it drains");
}

fn rbac_filter() -> hcm::HttpFilter {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
    hcm::HttpFilter {
        name: "rbac".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(
            rbac_filter::Rbac {
                rules: Some(rbac::Rbac {
                    action: rbac::rbac::Action::Allow as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }
}

fn hcm_of(chain: &listener::FilterChain) -> hcm::HttpConnectionManager {
    use prost::Message;
    match &chain.filters[0].config_type {
        Some(listener::filter::ConfigType::TypedConfig(any)) => {
            hcm::HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM")
        }
        _ => panic!("a typed HCM"),
    }
}

fn set_hcm(chain: &mut listener::FilterChain, h: hcm::HttpConnectionManager) {
    chain.filters[0].config_type = Some(listener::filter::ConfigType::TypedConfig(pack_any(h)));
}
