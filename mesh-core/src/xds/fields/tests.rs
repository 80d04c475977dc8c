use super::*;
use crate::static_config::descriptor_pool;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use prost::Message;

fn cluster_bytes(c: &Cluster) -> Vec<u8> {
    c.encode_to_vec()
}

fn paths(fields: &[UnappliedField]) -> Vec<(&str, FieldClass)> {
    fields.iter().map(|f| (&*f.path, f.class)).collect()
}

/// Every field of every message in the table has a class, every message an implemented field
/// leads to is in it, and nothing in it is unreachable: the table is the translator's, whole.
#[test]
fn the_table_classifies_every_field_the_translator_reaches() {
    let pool = descriptor_pool();
    let table = Table::compile(SOURCE, pool).unwrap_or_else(|e| panic!("{}", e.join("\n")));
    let problems = table.closure_problems(pool);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `docs/xds-support.md` is generated from the table; a stale copy is rewritten and fails the
/// test, so the committed one always matches the code.
#[test]
fn support_table_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/xds-support.md");
    let want = support_table_markdown();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        panic!(
            "{} was out of date and has been regenerated: review and commit it",
            path.display()
        );
    }
}

#[test]
fn a_resource_using_only_implemented_fields_reports_nothing() {
    let c = Cluster {
        name: "a".into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert!(unapplied(ResourceType::Cluster, &cluster_bytes(&c)).is_empty());
}

#[test]
fn inert_and_ignored_fields_are_named_by_path_once() {
    use envoy_types::pb::envoy::config::core::v3::HealthCheck;
    let c = Cluster {
        name: "a".into(),
        alt_stat_name: "stats-only".into(),
        health_checks: vec![HealthCheck::default(), HealthCheck::default()],
        ..Default::default()
    };
    let got = unapplied(ResourceType::Cluster, &cluster_bytes(&c));
    let mut listed = paths(&got);
    listed.sort();
    assert_eq!(
        listed,
        [
            ("alt_stat_name", FieldClass::Inert),
            ("health_checks", FieldClass::Ignored)
        ]
    );
    assert!(got.iter().all(|f| !f.note.is_empty()));
    assert_eq!(any_ignored(&got).map(|f| &*f.path), Some("health_checks"));
}

/// A proto3 scalar written with its default value is "not set", as Envoy reads it.
#[test]
fn scalars_explicitly_encoded_with_their_default_are_not_set() {
    // Field 28 of Cluster is `alt_stat_name` (string): an empty string on the wire.
    let mut bytes = cluster_bytes(&Cluster {
        name: "a".into(),
        ..Default::default()
    });
    let number = descriptor_pool()
        .get_message_by_name("envoy.config.cluster.v3.Cluster")
        .unwrap()
        .get_field_by_name("alt_stat_name")
        .unwrap()
        .number();
    prost::encoding::encode_key(
        number,
        prost::encoding::WireType::LengthDelimited,
        &mut bytes,
    );
    prost::encoding::encode_varint(0, &mut bytes);
    assert!(unapplied(ResourceType::Cluster, &bytes).is_empty());
}

/// A field number this client's descriptors do not have (a newer API) is named by number.
#[test]
fn unknown_field_numbers_are_reported_as_ignored() {
    let mut bytes = cluster_bytes(&Cluster {
        name: "a".into(),
        ..Default::default()
    });
    prost::encoding::encode_key(9_999, prost::encoding::WireType::Varint, &mut bytes);
    prost::encoding::encode_varint(1, &mut bytes);
    let got = unapplied(ResourceType::Cluster, &bytes);
    assert_eq!(paths(&got), [("#9999", FieldClass::Ignored)]);
}

/// Nested paths keep the indices of repeated fields and the keys of maps, through `Any`.
#[test]
fn nested_paths_name_indices_and_map_keys() {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Name;
    let hcm = HttpConnectionManager {
        server_name: "not-applied".into(),
        ..Default::default()
    };
    let chain = |hcm: &HttpConnectionManager| FilterChain {
        filters: vec![Filter {
            name: "hcm".into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: HttpConnectionManager::type_url(),
                value: hcm.encode_to_vec(),
            })),
        }],
        ..Default::default()
    };
    let l = Listener {
        name: "l".into(),
        filter_chains: vec![chain(&HttpConnectionManager::default()), chain(&hcm)],
        ..Default::default()
    };
    let got = unapplied(ResourceType::Listener, &l.encode_to_vec());
    assert_eq!(
        paths(&got)[..1],
        [(
            "filter_chains[1].filters[0].typed_config.server_name",
            FieldClass::Ignored
        )]
    );
    assert_eq!(
        paths(&got)[1..],
        [
            ("filter_chains[0].filters[0].name", FieldClass::Inert),
            ("filter_chains[1].filters[0].name", FieldClass::Inert)
        ],
        "inert fields are listed too (after the ignored ones), each under its own index"
    );

    // A map entry of a type the table lacks is named by its key.
    let c = Cluster {
        name: "a".into(),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".to_owned(),
            Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions"
                        .into(),
                value: vec![],
            },
        )]
        .into(),
        ..Default::default()
    };
    let got = unapplied(ResourceType::Cluster, &cluster_bytes(&c));
    assert_eq!(
        paths(&got),
        [(
            "typed_extension_protocol_options[\"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions\"]",
            FieldClass::Ignored
        )]
    );
    assert!(got[0].note.contains("TcpProtocolOptions"), "{}", got[0]);
}

/// Garbage never panics the walk; it reports what it could read.
#[test]
fn malformed_bytes_do_not_panic() {
    for bytes in [
        &[0xff_u8; 12][..],
        &[0x0a, 0x80][..],
        &[0x0a, 0x05, 0x01][..],
        &[0x0b][..],
        &[][..],
    ] {
        for ty in ResourceType::ALL {
            let _ = unapplied(ty, bytes);
        }
    }
}

/// However many inert fields a resource sets, the ignored one is still listed (strict mode
/// reads the list), and a deep nesting of `Any`s the translator never reads stops the walk
/// rather than the process.
#[test]
fn inert_fields_cannot_hide_an_ignored_one_and_depth_is_bounded() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, cluster_load_assignment::Policy,
    };
    let many = LocalityLbEndpoints {
        lb_endpoints: (0..300)
            .map(|_| LbEndpoint {
                metadata: Some(Metadata {
                    filter_metadata: [("istio".to_owned(), Default::default())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let cla = ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![many],
        policy: Some(Policy {
            drop_overloads: vec![Default::default()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let got = unapplied(ResourceType::ClusterLoadAssignment, &cla.encode_to_vec());
    assert_eq!(
        any_ignored(&got).map(|f| &*f.path),
        Some("policy.drop_overloads")
    );
    assert!(got.len() <= 2 * MAX_REPORTED, "{}", got.len());

    // An HTTP RBAC config of ever deeper `not_rule`s under a protocol-options key the
    // translator does not read: the walk enters it (its type is in the table) and stops.
    use envoy_types::pb::envoy::config::rbac::v3::{Permission, permission::Rule};
    // Encoded by hand, level by level: field 8 (`not_rule`) around the previous level.
    let mut nested = Permission {
        rule: Some(Rule::Any(true)),
    }
    .encode_to_vec();
    for _ in 0..5_000 {
        let mut outer = Vec::new();
        prost::encoding::encode_key(8, prost::encoding::WireType::LengthDelimited, &mut outer);
        prost::encoding::encode_varint(nested.len() as u64, &mut outer);
        outer.extend(&nested);
        nested = outer;
    }
    let c = Cluster {
        name: "a".into(),
        typed_extension_protocol_options: [(
            "other".to_owned(),
            envoy_types::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.config.rbac.v3.Permission".into(),
                value: nested,
            },
        )]
        .into(),
        ..Default::default()
    };
    let _ = unapplied(ResourceType::Cluster, &cluster_bytes(&c));
}

/// A connection manager's settings for downstream connections are applied by servers and
/// mean nothing to a client: the same field is reported inside an API listener only.
#[test]
fn classes_follow_the_side_a_message_is_read_on() {
    use envoy_types::pb::envoy::config::listener::v3::{
        ApiListener, Filter, FilterChain, Listener, filter,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let hcm = envoy_types::util::pack_any(HttpConnectionManager {
        stream_idle_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    });
    let client = Listener {
        name: "c".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(hcm.clone()),
        }),
        ..Default::default()
    };
    let got = unapplied(ResourceType::Listener, &client.encode_to_vec());
    assert_eq!(
        paths(&got),
        [(
            "api_listener.api_listener.stream_idle_timeout",
            FieldClass::Inert
        )]
    );
    let server = Listener {
        name: "s".into(),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: String::new(),
                config_type: Some(filter::ConfigType::TypedConfig(hcm)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(unapplied(ResourceType::Listener, &server.encode_to_vec()).is_empty());
}
