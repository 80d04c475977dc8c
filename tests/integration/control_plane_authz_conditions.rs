//! Every `when` key of Istio's AuthorizationPolicy, and `targetRef`, from YAML to a decision:
//! mesh-control generates the inbound listener, the client's translation validates it, and
//! the server's RBAC engine decides on requests made to match and not to match. Keys Istio
//! refuses are refused by `validate` with the policy's file, line and field.

use std::collections::BTreeMap;
use std::path::Path;

use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use mesh_control::generate::{Generator, NodeInfo, Policies};
use mesh_control::registry::Registry;
use mesh_core::identity::{PeerCertificate, SpiffeId};
use mesh_core::model::{FilterConfig, ListenerKind, NetworkFilter, RbacFilter, RequestView};
use mesh_tower::server::{Metadata, rbac};
use prost::Message;

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: details, namespace: default}\nspec:\n  ports: [{port: 9080, name: http}]\n  selector: {app: details}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: default}\nspec:\n  ports: [{port: 9080, name: http}]\n  selector: {app: ratings}\n";

const INBOUND: &str = "xds.istio.io/grpc/lds/inbound/10.0.0.2:9080";

fn node(app: &str) -> NodeInfo {
    NodeInfo {
        id: format!("sidecar~10.0.0.2~{app}.default~default.svc.cluster.local"),
        namespace: "default".into(),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        ..Default::default()
    }
}

/// The RBAC filters the `details` workload gets for these policies (DENY, then ALLOW).
fn filters_for(app: &str, policies: &str) -> Vec<RbacFilter> {
    let text = format!("{SERVICES}---\n{policies}");
    let config = mesh_control::config::parse_str(&text, Path::new("policy.yaml"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let registry = Registry::build(&config).unwrap_or_else(|e| panic!("{e:?}"));
    let problems: Vec<_> = mesh_control::analyze::analyze(&config, &registry)
        .into_iter()
        .filter(|d| d.severity == mesh_control::config::Severity::Error)
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
    let policies = Policies::new(&config);
    let any = Generator::new(&registry, &policies, "default")
        .inbound_listener(&node(app), INBOUND)
        .expect("an inbound listener");
    let l = listener_pb::Listener::decode(any.value.as_slice()).expect("a listener");
    let model = mesh_core::xds::translate::listener(&l).expect("the client accepts it");
    let ListenerKind::Socket(s) = &model.kind else {
        panic!("a socket listener")
    };
    let NetworkFilter::Http(h) = &s.filter_chains[0].filter else {
        panic!("HTTP")
    };
    h.http_filters
        .iter()
        .filter_map(|f| match &f.config {
            FilterConfig::Rbac(r) => Some((**r).clone()),
            _ => None,
        })
        .collect()
}

/// A request and its connection, as the RBAC engine sees them.
struct Ask<'a> {
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    peer: &'a str,
    spiffe: Option<&'a str>,
    sni: Option<&'a str>,
    local: &'a str,
}

const ASK: Ask<'static> = Ask {
    path: "/",
    headers: &[],
    peer: "10.0.0.1:5000",
    spiffe: None,
    sni: None,
    local: "10.0.0.2:9080",
};

fn allowed(filters: &[RbacFilter], a: &Ask<'_>) -> bool {
    let mut b = http::Request::get(a.path);
    for (k, v) in a.headers {
        b = b.header(*k, *v);
    }
    let req = b.body(()).unwrap();
    let id = a.spiffe.map(|s| s.parse::<SpiffeId>().unwrap());
    let cert = a.spiffe.map(|s| PeerCertificate {
        uri_sans: Box::new([s.into()]),
        ..Default::default()
    });
    let peer: std::net::SocketAddr = a.peer.parse().unwrap();
    let headers = req.headers().clone();
    let client = mesh_core::model::ClientAddress::default().client(&headers, peer.ip());
    let conn = rbac::Connection {
        peer,
        client,
        local: a.local.parse().unwrap(),
        spiffe_id: id.as_ref(),
        certificate: cert.as_ref(),
        sni: a.sni,
        metadata: &Metadata::default(),
    };
    let view = RequestView::from_request(&req);
    filters
        .iter()
        .all(|f| rbac::evaluate(f, &view, &conn) == rbac::Verdict::Allow)
}

fn deny_when(key: &str, values: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  action: DENY\n  rules: [{{when: [{{key: \"{key}\", values: {values}}}]}}]\n"
    )
}

/// Each key Istio defines: a request made to match is denied, one made not to is allowed.
#[test]
fn every_condition_key_decides() {
    let productpage = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
    let other_ns = "spiffe://cluster.local/ns/other/sa/bookinfo-productpage";
    let other_td = "spiffe://example.org/ns/default/sa/bookinfo-productpage";
    let cases: &[(&str, &str, Ask<'_>, Ask<'_>)] = &[
        (
            "request.headers[X-User]",
            "[\"admin*\"]",
            Ask {
                headers: &[("x-user", "admin-1")],
                ..ASK
            },
            Ask {
                headers: &[("x-user", "viewer")],
                ..ASK
            },
        ),
        (
            "request.headers[x-debug]",
            "[\"*\"]",
            Ask {
                headers: &[("x-debug", "")],
                ..ASK
            },
            ASK,
        ),
        (
            "source.ip",
            "[\"10.0.0.0/24\"]",
            ASK,
            Ask {
                peer: "10.0.9.1:5000",
                ..ASK
            },
        ),
        (
            "remote.ip",
            "[\"203.0.113.7\"]",
            Ask {
                headers: &[("x-forwarded-for", "203.0.113.7")],
                ..ASK
            },
            Ask {
                headers: &[("x-forwarded-for", "203.0.113.8")],
                ..ASK
            },
        ),
        (
            "source.namespace",
            "[\"default\"]",
            Ask {
                spiffe: Some(productpage),
                ..ASK
            },
            Ask {
                spiffe: Some(other_ns),
                ..ASK
            },
        ),
        (
            "source.principal",
            "[\"*/sa/bookinfo-productpage\"]",
            Ask {
                spiffe: Some(productpage),
                ..ASK
            },
            Ask {
                spiffe: Some("spiffe://cluster.local/ns/default/sa/reviews"),
                ..ASK
            },
        ),
        (
            "source.serviceAccount",
            "[\"bookinfo-productpage\"]",
            Ask {
                spiffe: Some(productpage),
                ..ASK
            },
            Ask {
                spiffe: Some(other_ns),
                ..ASK
            },
        ),
        (
            "source.trustDomain",
            "[\"cluster.local\"]",
            Ask {
                spiffe: Some(productpage),
                ..ASK
            },
            Ask {
                spiffe: Some(other_td),
                ..ASK
            },
        ),
        (
            "destination.ip",
            "[\"10.0.0.2\"]",
            ASK,
            Ask {
                local: "10.0.0.3:9080",
                ..ASK
            },
        ),
        (
            "destination.port",
            "[\"9080\"]",
            ASK,
            Ask {
                local: "10.0.0.2:9081",
                ..ASK
            },
        ),
        (
            "connection.sni",
            "[\"*.example.com\"]",
            Ask {
                sni: Some("details.example.com"),
                ..ASK
            },
            Ask {
                sni: Some("details.example.org"),
                ..ASK
            },
        ),
    ];
    for (key, values, denied, passed) in cases {
        let filters = filters_for("details", &deny_when(key, values));
        assert!(!allowed(&filters, denied), "{key} {values}: should deny");
        assert!(allowed(&filters, passed), "{key} {values}: should allow");
    }
}

/// `notValues` negate, and several conditions must all hold.
#[test]
fn not_values_and_several_conditions() {
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  rules: [{when: [{key: \"request.headers[x-env]\", notValues: [\"prod\"]}, {key: \"destination.port\", values: [\"9080\"]}]}]\n";
    let filters = filters_for("details", policy);
    assert!(allowed(
        &filters,
        &Ask {
            headers: &[("x-env", "dev")],
            ..ASK
        }
    ));
    assert!(!allowed(
        &filters,
        &Ask {
            headers: &[("x-env", "prod")],
            ..ASK
        }
    ));
    assert!(!allowed(
        &filters,
        &Ask {
            headers: &[("x-env", "dev")],
            local: "10.0.0.2:1",
            ..ASK
        }
    ));
}

/// A policy with a target reference applies to the workloads of the Service it names, never
/// to the whole namespace.
#[test]
fn target_refs_attach_to_their_service_only() {
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: ratings}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin/*\"]}}]}]\n";
    let admin = Ask {
        path: "/admin/x",
        ..ASK
    };
    assert!(
        !allowed(&filters_for("ratings", policy), &admin),
        "the Service's workload is protected"
    );
    assert!(
        allowed(&filters_for("details", policy), &admin),
        "another workload of the namespace is not"
    );
    let gateway = policy.replace(
        "{kind: Service, group: \"\", name: ratings}",
        "{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}",
    );
    assert!(
        allowed(&filters_for("ratings", &gateway), &admin),
        "a Gateway target attaches to no workload"
    );
}

/// What `validate` refuses, each with the file, the line of the policy and the field.
#[test]
fn validate_refuses_what_would_be_dropped() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "rules: [{when: [{key: \"request.auth.claim[groups]\", values: [a]}]}]",
            "spec.rules[0].when[0].key",
            "unknown attribute: request.auth.claim[groups]",
        ),
        (
            "rules: [{when: [{key: \"destination.labels[app]\", values: [a]}]}]",
            "spec.rules[0].when[0].key",
            "replaced by the workload selector",
        ),
        (
            "rules: [{when: [{key: \"experimental.envoy.filters.network.mysql_proxy[db.table]\", values: [\"[update]\"]}]}]",
            "spec.rules[0].when[0].key",
            "no envoy.filters.network.mysql_proxy filter",
        ),
        (
            "rules: [{when: [{key: \"destination.port\", values: [\"http\"]}]}]",
            "spec.rules[0].when[0].values[0]",
            "bad port (http)",
        ),
        (
            "rules: [{when: [{key: \"request.headers[x]\"}]}]",
            "spec.rules[0].when[0]",
            "at least one of `values` or `notValues`",
        ),
        (
            "rules: [{to: [{operation: {ports: [\"70000\"]}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
            "bad port (70000)",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/a/{*}/b\"]}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
            "path templates",
        ),
        (
            "rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/33\"]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "bad CIDR range",
        ),
        (
            "selector: {matchLabels: {app: details}}\n  targetRefs: [{kind: Service, name: details}]\n  rules: [{}]",
            "spec.selector",
            "only one of targetRefs or selector",
        ),
        (
            "targetRefs: [{kind: Service, name: details, namespace: other}]\n  rules: [{}]",
            "spec.targetRefs[0].namespace",
            "cross namespace",
        ),
        (
            "targetRefs: [{kind: Deployment, group: apps, name: details}]\n  rules: [{}]",
            "spec.targetRefs[0].kind",
            "but was apps/Deployment",
        ),
        (
            "action: DENY",
            "spec.rules",
            "DENY action without `rules` is meaningless",
        ),
        (
            "rules: [{from: [{source: {}}]}]",
            "spec.rules[0].from[0].source",
            "must not be empty",
        ),
        (
            "rules: [{to: [{operation: {methods: [\"\"]}}]}]",
            "spec.rules[0].to[0].operation.methods",
            "empty value not allowed",
        ),
    ];
    for (spec, field, message) in cases {
        let text = format!(
            "{SERVICES}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  {spec}\n"
        );
        let config = mesh_control::config::parse_str(&text, Path::new("policy.yaml"))
            .unwrap_or_else(|e| panic!("{spec}: {e:?}"));
        let registry = Registry::build(&config).unwrap();
        let found = mesh_control::analyze::analyze(&config, &registry);
        let d = found
            .iter()
            .find(|d| d.field.as_deref() == Some(*field))
            .unwrap_or_else(|| panic!("{spec}: no diagnostic at {field}: {found:?}"));
        assert_eq!(d.severity, mesh_control::config::Severity::Error, "{spec}");
        let shown = d.to_string();
        assert!(shown.contains(message), "{spec}: {shown}");
        assert!(
            shown.starts_with("policy.yaml:15:"),
            "{spec}: the file and the policy's line: {shown}"
        );
    }
}

/// A target that selects no workloads cannot carry a policy: refused, not dropped.
#[test]
fn a_target_without_a_selector_is_refused() {
    let text = format!(
        "{SERVICES}---\napiVersion: v1\nkind: Service\nmetadata: {{name: external, namespace: default}}\nspec:\n  ports: [{{port: 80, name: http}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n  targetRefs: [{{kind: Service, name: external}}]\n  action: DENY\n  rules: [{{}}]\n"
    );
    let config = mesh_control::config::parse_str(&text, Path::new("policy.yaml")).unwrap();
    let registry = Registry::build(&config).unwrap();
    let found = mesh_control::analyze::analyze(&config, &registry);
    assert!(
        found
            .iter()
            .any(|d| d.severity == mesh_control::config::Severity::Error
                && d.field.as_deref() == Some("spec.targetRefs[0]")
                && d.message.contains("selects no workloads")),
        "{found:?}"
    );
}

/// MeshConfig `pathNormalization` reaches the connection manager of every listener
/// mesh-control builds, as istiod sets it; `BASE` by default; an unknown value is refused.
#[test]
fn path_normalization_follows_the_mesh_config() {
    use mesh_core::model::{EscapedSlashes, PathNormalization};
    let normalization = |mesh: &str| {
        let text = format!(
            "{SERVICES}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{mesh}"
        );
        let config = mesh_control::config::parse_str(&text, Path::new("mesh.yaml"))?;
        let registry = Registry::build(&config).unwrap();
        let policies = Policies::new(&config);
        let any = Generator::new(&registry, &policies, "default")
            .inbound_listener(&node("details"), INBOUND)
            .unwrap();
        let l = listener_pb::Listener::decode(any.value.as_slice()).unwrap();
        let model = mesh_core::xds::translate::listener(&l).unwrap();
        let ListenerKind::Socket(s) = &model.kind else {
            panic!()
        };
        let NetworkFilter::Http(h) = &s.filter_chains[0].filter else {
            panic!()
        };
        Ok::<_, Vec<mesh_control::config::Diagnostic>>(h.path_normalization)
    };
    let base = PathNormalization {
        normalize: true,
        ..Default::default()
    };
    assert_eq!(
        normalization("    enableTracing: true\n").unwrap(),
        base,
        "BASE by default"
    );
    assert_eq!(
        normalization("    pathNormalization: {normalization: NONE}\n").unwrap(),
        PathNormalization::default()
    );
    assert_eq!(
        normalization("    pathNormalization: {normalization: MERGE_SLASHES}\n").unwrap(),
        PathNormalization {
            merge_slashes: true,
            ..base
        }
    );
    assert_eq!(
        normalization("    pathNormalization:\n      normalization: DECODE_AND_MERGE_SLASHES\n")
            .unwrap(),
        PathNormalization {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::UnescapeAndForward,
        }
    );
    let refused = normalization("    pathNormalization: {normalization: DECODE}\n").unwrap_err();
    let shown = refused[0].to_string();
    assert!(
        shown.starts_with("mesh.yaml:20:")
            && shown.contains("data.mesh.pathNormalization.normalization"),
        "{shown}"
    );
}
