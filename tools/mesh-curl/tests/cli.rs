//! mesh-curl run for real against loopback backends and a static mesh file.

use std::process::Command;

use mesh_test_support::Backend;
use mesh_test_support::static_json::{cluster, listener, resources};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn prints_each_routing_decision() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let doc = resources(
        &[listener(
            "reviews:9080",
            json!([
                {"match": {"prefix": "/", "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}]},
                 "route": {"cluster": "v2"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "v1"}}
            ]),
            json!([]),
        )],
        &[
            cluster("v1", &[v1.addr()], json!({})),
            cluster("v2", &[v2.addr()], json!({})),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mesh-curl"))
            .args(["--static", file.to_str().unwrap(), "-n", "3", "--json"])
            .args(["-H", "end-user: jason", "http://reviews:9080/reviews/0"])
            .output()
            .expect("mesh-curl runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["status"], 200);
        assert_eq!(l["cluster"], "v2");
        assert_eq!(l["upstream"], v2.addr().to_string());
        assert_eq!(l["attempts"], 1);
        assert_eq!(l["flags"], "-");
    }
}

#[test]
fn bad_arguments_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-curl"))
        .args(["--bogus", "http://x/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option --bogus"));
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-curl"))
        .args(["--static", "/nonexistent/mesh.yaml", "http://x/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mesh.yaml"));
}

/// A field the client does not apply is listed after the requests; `--strict` refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn names_the_fields_it_does_not_apply_and_refuses_them_when_strict() {
    let v1 = Backend::start("v1").await;
    let doc = resources(
        &[listener(
            "reviews:9080",
            json!([{"match": {"prefix": "/"}, "route": {"cluster": "v1"}}]),
            json!([]),
        )],
        &[cluster(
            "v1",
            &[v1.addr()],
            json!({"health_checks": [{"timeout": "1s", "interval": "5s",
                   "http_health_check": {"path": "/healthz"}}]}),
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let run = |strict: bool| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-curl"));
            cmd.args(["--static", file.to_str().unwrap()]);
            if strict {
                cmd.arg("--strict");
            }
            cmd.arg("http://reviews:9080/")
                .output()
                .expect("mesh-curl runs")
        })
    };
    let out = run(false).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("unapplied: Cluster v1: health_checks (ignored: "),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "fields not applied by this client: static_resources.clusters[0].health_checks"
        ),
        "and the log says so where the file is loaded: {stderr}"
    );

    let out = run(true).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("static_resources.clusters[0].health_checks (ignored"),
        "{stderr}"
    );
}
