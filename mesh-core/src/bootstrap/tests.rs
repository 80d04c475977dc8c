use super::*;

fn err(json: &str) -> String {
    Bootstrap::from_json(json).unwrap_err().to_string()
}

#[test]
fn istio_agent_bootstrap_parses() {
    // The shape istio-agent writes for proxyless gRPC (with its "localisty" typo, which is an
    // unknown field and so ignored).
    let b = Bootstrap::from_json(
        r#"{
      "xds_servers": [{"server_uri": "localhost:15010", "channel_creds": [{"type": "insecure"}],
                       "server_features": ["xds_v3"]}],
      "node": {"id": "sidecar~127.0.1.1~echo.test~cluster.local",
               "metadata": {"GENERATOR": "grpc", "NAMESPACE": "test"}, "localisty": {}},
      "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
          "certificate_file": "cert-chain.pem", "private_key_file": "key.pem",
          "ca_certificate_file": "root-cert.pem", "refresh_interval": "900s"}}},
      "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"
    }"#,
    )
    .unwrap();
    assert_eq!(b.xds_servers[0].server_uri, "localhost:15010");
    assert!(b.xds_servers[0].has_feature("xds_v3"));
    assert_eq!(b.node.metadata["NAMESPACE"], "test");
    assert!(matches!(
        &b.certificate_providers["default"],
        CertificateProviderConfig::FileWatcher { refresh_interval, .. } if *refresh_interval == Duration::from_secs(900)
    ));
    assert_eq!(
        b.server_listener_name("10.0.0.1:8080".parse().unwrap())
            .as_deref(),
        Some("xds.istio.io/grpc/lds/inbound/10.0.0.1:8080")
    );
    assert_eq!(b.client_listener_name("reviews:9080"), "reviews:9080");
}

#[test]
fn first_supported_channel_creds_win() {
    let b = Bootstrap::from_json(
        r#"{"xds_servers": [{"server_uri": "unix:///tmp/xds.sock",
            "channel_creds": [{"type": "google_default"}, {"type": "tls", "config": {"ca_certificate_file": "ca.pem"}}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        b.xds_servers[0].channel_creds,
        ChannelCreds::Tls {
            ca_certificate_file: Some("ca.pem".into()),
            certificate_file: None,
            private_key_file: None
        }
    );
}

#[test]
fn wrong_type_names_the_json_path() {
    let e = err(r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": 1}]}]}"#);
    assert!(e.contains("xds_servers[0].channel_creds[0].type"), "{e}");
}

#[test]
fn unsupported_creds_name_the_field() {
    let e = err(
        r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "google_default"}]}]}"#,
    );
    assert!(
        e.contains("xds_servers[0].channel_creds") && e.contains("no supported type"),
        "{e}"
    );
}

#[test]
fn empty_server_uri_is_rejected() {
    let e =
        err(r#"{"xds_servers": [{"server_uri": " ", "channel_creds": [{"type": "insecure"}]}]}"#);
    assert!(
        e.contains("xds_servers[0].server_uri: must not be empty"),
        "{e}"
    );
}

#[test]
fn bad_refresh_interval_names_the_field() {
    let e = err(
        r#"{"certificate_providers": {"default": {"plugin_name": "file_watcher",
            "config": {"ca_certificate_file": "ca.pem", "refresh_interval": "ten minutes"}}}}"#,
    );
    assert!(
        e.contains("certificate_providers.default.config.refresh_interval"),
        "{e}"
    );
}

#[test]
fn malformed_json_fails_with_position() {
    let e = err(r#"{"xds_servers": [}"#);
    assert!(e.contains("invalid xDS bootstrap"), "{e}");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn authority_templates_must_use_their_authority() {
    let e = err(
        r#"{"authorities": {"a.com": {"client_listener_resource_name_template": "xdstp://b.com/x/%s"}}}"#,
    );
    assert!(
        e.contains("authorities.a.com.client_listener_resource_name_template"),
        "{e}"
    );
}

#[test]
fn environment_path_wins_over_inline_config() {
    let dir = std::env::temp_dir().join(format!("mesh-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, r#"{"node": {"id": "from-file"}}"#).unwrap();
    let inline = Some(r#"{"node": {"id": "inline"}}"#.to_owned());
    let b = Bootstrap::from_env_values(Some(file.clone().into()), inline.clone()).unwrap();
    assert_eq!(b.node.id, "from-file");
    let b = Bootstrap::from_env_values(None, inline).unwrap();
    assert_eq!(b.node.id, "inline");
    assert!(matches!(
        Bootstrap::from_env_values(None, None),
        Err(BootstrapError::NotConfigured)
    ));
    let e = Bootstrap::from_env_values(Some(dir.join("missing.json").into()), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.json"), "{e}");
    std::fs::write(&file, r#"{"node": {"id": 7}}"#).unwrap();
    let e = Bootstrap::from_env_values(Some(file.clone().into()), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bootstrap.json") && e.contains("node.id"),
        "names the file and the field: {e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refresh_interval_has_a_floor() {
    let b = Bootstrap::from_json(
        r#"{"xds_servers": [], "certificate_providers": {"default": {"plugin_name": "file_watcher",
            "config": {"ca_certificate_file": "ca.pem", "refresh_interval": "0s"}}}}"#,
    )
    .unwrap();
    assert!(matches!(
        &b.certificate_providers["default"],
        CertificateProviderConfig::FileWatcher { refresh_interval, .. } if *refresh_interval == MIN_REFRESH_INTERVAL
    ));
}
