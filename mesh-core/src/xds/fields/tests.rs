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
        paths(&got)[2..],
        [(
            "filter_chains[1].filters[0].typed_config.server_name",
            FieldClass::Ignored
        )]
    );
    assert_eq!(
        paths(&got)[..2],
        [
            ("filter_chains[0].filters[0].name", FieldClass::Inert),
            ("filter_chains[1].filters[0].name", FieldClass::Inert)
        ],
        "inert fields are listed too, each occurrence under its own index"
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
