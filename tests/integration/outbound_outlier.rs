//! Outlier detection: a host answering 5xx is ejected after `consecutive_5xx` failures and
//! traffic goes to the others; it returns after its ejection time.

use std::time::Duration;

use mesh_test_support::static_json::{cluster, listener, resources};
use mesh_test_support::{Backend, Behavior};
use serde_json::json;

use crate::{get, static_client};

#[tokio::test]
async fn consecutive_failures_eject_a_host_until_its_time_is_up() {
    let good = Backend::start("good").await;
    let bad = Backend::start("bad").await;
    bad.set(Behavior::Status(503));
    let client = static_client(resources(
        &[listener(
            "svc:80",
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]),
            json!([]),
        )],
        &[cluster(
            "c",
            &[good.addr(), bad.addr()],
            json!({"outlier_detection": {
            "consecutive_5xx": 3, "interval": "0.2s", "base_ejection_time": "0.5s",
            "max_ejection_percent": 50}}),
        )],
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get(&client, "http://svc/", &[]).await.status);
    }
    assert_eq!(
        bad.requests(),
        3,
        "ejected at the third consecutive 5xx: {statuses:?}"
    );
    assert!(statuses[8..].iter().all(|&s| s == 200), "{statuses:?}");
    // Back after the ejection time (and the next interval).
    bad.set(Behavior::Ok);
    tokio::time::sleep(Duration::from_millis(900)).await;
    for _ in 0..10 {
        get(&client, "http://svc/", &[]).await;
    }
    assert!(bad.requests() > 3, "the host returned");
}
