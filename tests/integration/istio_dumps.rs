//! Real istiod output (Envoy config dumps from Istio's own test data, in ../shared/istio-xds)
//! translates with no error except for what the model refuses on purpose: HTTP filters it
//! does not implement, and, on sidecar listeners, network filters ahead of the HTTP
//! connection manager or a `filter_chain_matcher` (refused rather than served without them).
//! The test lists both, so a change in what we support shows up here.

use std::collections::BTreeSet;
use std::path::PathBuf;

use mesh_core::static_config::parse_typed;
use mesh_core::xds::ResourceType;

fn shared_dir() -> Option<PathBuf> {
    mesh_test_support::shared_dir("istio-xds")
}

/// Every object in a dump whose `@type` is one of the four resource types.
fn resources(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("@type")
                .and_then(|t| t.as_str())
                .and_then(ResourceType::from_type_url)
                .is_some()
            {
                out.push(v.clone());
                return;
            }
            m.values().for_each(|c| resources(c, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| resources(c, out)),
        _ => {}
    }
}

#[test]
fn istiod_config_dumps_translate() {
    let Some(dir) = shared_dir() else { return };
    let files = [
        "writer-compare-configdump.json",
        "writer-compare-configdump_diff.json",
        "proxyconfig-config_dump.json",
        "writer-envoy-configdump-endpoint-configdump.json",
        "authz-configdump.yaml",
    ];
    let mut counts = [0usize; 4];
    let mut unsupported = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut failures = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        let doc: serde_json::Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        let mut found = Vec::new();
        resources(&doc, &mut found);
        assert!(!found.is_empty(), "{f} holds resources");
        for (i, r) in found.iter_mut().enumerate() {
            // Envoy dumps inline route configs (`static_route_configs`) without a name; a name
            // is required over xDS, so give them one and validate the rest.
            if let Some(obj) = r.as_object_mut() {
                let key = if obj.contains_key("cluster_name")
                    || obj["@type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("ClusterLoadAssignment"))
                {
                    "cluster_name"
                } else {
                    "name"
                };
                if obj
                    .get(key)
                    .and_then(|n| n.as_str())
                    .is_none_or(str::is_empty)
                {
                    obj.insert(key.into(), format!("inline-{i}").into());
                }
            }
            match parse_typed(r, None).map_err(|e| e.to_string()) {
                Ok((ty, _, _)) => counts[ty as usize] += 1,
                Err(e) if e.contains("unsupported filter") => {
                    let what = e.rsplit("unsupported filter ").next().unwrap().to_owned();
                    unsupported.insert(what);
                }
                Err(e) if e.contains("is not supported ahead of the terminal filter") => {
                    let what = e.split("network filter ").nth(1).unwrap_or(&e);
                    refused.insert(what.split(' ').next().unwrap_or(what).to_owned());
                }
                Err(e) if e.contains("filter_chain_matcher: is not supported") => {
                    refused.insert("filter_chain_matcher".to_owned());
                }
                Err(e) => failures.push(format!("{f}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "istiod resources we reject:\n{}",
        failures.join("\n")
    );
    println!("translated: {counts:?} (listeners, routes, clusters, endpoint sets)");
    println!("unsupported required filters: {unsupported:#?}");
    assert!(
        counts.iter().all(|c| *c > 0),
        "every resource type is exercised: {counts:?}"
    );
    let expected: BTreeSet<String> = EXPECTED_UNSUPPORTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        unsupported, expected,
        "the list of unsupported filters changed"
    );
    let expected: BTreeSet<String> = EXPECTED_REFUSED.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        refused, expected,
        "the list of refused sidecar constructs changed"
    );
}

/// Required (non-optional) HTTP filters in those dumps that the model does not implement. A
/// listener carrying one is NACKed, as gRFC A39 asks.
const EXPECTED_UNSUPPORTED: &[&str] = &[
    // Envoy's own gRPC statistics; our telemetry layer reports Istio's metrics itself.
    "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    // Istio's legacy Wasm stats plugin.
    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
    // Istio's peer metadata exchange. (Its HBONE `connect_authority` filter sits on a
    // listener already refused for its network `istio_authn` filter, below.)
    "type.googleapis.com/io.istio.http.peer_metadata.Config",
];

/// What refuses a sidecar's listener (a proxyless server never gets one): network filters
/// ahead of the HTTP connection manager that are not enforced here, and the matcher API.
const EXPECTED_REFUSED: &[&str] = &[
    // Istio's stats and metadata exchange: telemetry, but a filter ahead of the terminal one
    // is enforced or refused, never skipped.
    "type.googleapis.com/stats.PluginConfig",
    "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
    // Istio's HBONE peer authentication on waypoint and sidecar CONNECT listeners.
    "type.googleapis.com/io.istio.network.authn.Config",
    // Ambient and sidecar internal listeners choose chains with the matcher API.
    "filter_chain_matcher",
];
