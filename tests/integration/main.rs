//! Cross-crate tests. One module per behaviour; one binary so the suite links once.

mod ads_ack_nack;
mod ads_connectivity;
mod ads_resource_lifecycle;
mod ads_transports;
mod bad_input;
mod control_plane;
mod control_plane_authz;
mod control_plane_policy;
mod control_plane_samples;
mod envoy_control_plane;
mod grpcio_control_plane;
mod istio_dumps;
mod snapshots;
mod static_config;
mod translate_fixtures;

use std::time::Duration;

use mesh_core::xds::XdsClientConfig;
use mesh_core::{Bootstrap, Mesh};
use mesh_test_support::AdsServer;

/// Client tunables that keep tests fast: short timers, quick reconnects.
pub(crate) fn fast_config() -> XdsClientConfig {
    let mut c = XdsClientConfig::default();
    c.does_not_exist_timeout = Duration::from_millis(500);
    c.backoff_base = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(200);
    c.routine_reconnect_delay = Duration::from_millis(10);
    c.connect_timeout = Duration::from_secs(2);
    c
}

/// A mesh connected to `server` with `features`.
pub(crate) async fn mesh_for(server: &AdsServer, features: &[&str]) -> Mesh {
    mesh_test_support::trace_init();
    let bootstrap = Bootstrap::from_json(&server.bootstrap_json(features)).expect("bootstrap");
    Mesh::builder()
        .bootstrap(bootstrap)
        .xds_config(fast_config())
        .build()
        .await
        .expect("mesh")
}
