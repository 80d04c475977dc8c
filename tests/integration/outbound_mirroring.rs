//! Mirroring: a copy goes to the shadow cluster with `-shadow` on its host; the caller's
//! answer comes from the primary alone.

use mesh_test_support::static_json::{cluster, listener, resources};
use mesh_test_support::{Backend, Behavior};
use serde_json::json;

use crate::{get, static_client};

#[tokio::test]
async fn mirrors_get_a_copy_and_never_affect_the_answer() {
    let primary = Backend::start("primary").await;
    let shadow = Backend::start("shadow").await;
    shadow.set(Behavior::Status(500));
    let route = json!([{"match": {"prefix": "/"}, "route": {"cluster": "primary",
        "request_mirror_policies": [{"cluster": "shadow"}]}}]);
    let client = static_client(resources(
        &[listener("svc:80", route, json!([]))],
        &[
            cluster("primary", &[primary.addr()], json!({})),
            cluster("shadow", &[shadow.addr()], json!({})),
        ],
    ))
    .await;
    for _ in 0..10 {
        let a = get(&client, "http://svc:80/m", &[]).await;
        assert_eq!((a.status, a.backend()), (200, "primary"));
    }
    mesh_test_support::assert_eventually!(shadow.requests() == 10, "every request mirrored");
    assert_eq!(primary.requests(), 10);
}
