//! `mesh-bench --quick` (BENCHMARKS.md): every scenario in every mode completes with zero
//! errors, and every output line parses. No timing is asserted: CI machines are shared.
//!
//! It runs the release build: a debug build of the mesh cannot keep up with `rate@4000` on two
//! cores, and its overload would show as errors. `./scripts/test` builds it before the suite;
//! the test builds it again (a no-op when it is current) so it never runs a stale binary.
//! nextest runs this test alone (`.config/nextest.toml`): it pins both CPUs.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

/// Every (scenario, mode) pair of BENCHMARKS.md this bench runs.
const EXPECTED: &[(&str, &[&str])] = &[
    ("bare", &["max-h1", "max-h2", "rate@1000", "rate@4000"]),
    ("mesh-min", &["max-h1", "max-h2", "rate@1000", "rate@4000"]),
    ("mesh-full", &["max-h1", "max-h2", "rate@1000", "rate@4000"]),
    (
        "mesh-full-trace100",
        &["max-h1", "max-h2", "rate@1000", "rate@4000"],
    ),
    (
        "mesh-full-mtls",
        &["max-h1", "max-h2", "rate@1000", "rate@4000"],
    ),
    ("envoy2", &["max-h1", "max-h2", "rate@1000", "rate@4000"]),
    (
        "envoy2-mtls",
        &["max-h1", "max-h2", "rate@1000", "rate@4000"],
    ),
    ("grpc-bare", &["max-h2", "rate@1000", "rate@4000"]),
    ("grpc-mesh-full-mtls", &["max-h2", "rate@1000", "rate@4000"]),
    ("grpc-envoy2-mtls", &["max-h2", "rate@1000", "rate@4000"]),
    ("faulty", &["rate@1000", "max-h1"]),
];

fn json(line: &str, prefix: &str) -> Value {
    serde_json::from_str(&line[prefix.len()..])
        .unwrap_or_else(|e| panic!("{prefix}line does not parse ({e}): {line}"))
}

mod common;
use common::release_binary;

#[test]
fn quick_mode_runs_every_scenario_without_errors() {
    let out = Command::new(release_binary("mesh-bench"))
        .arg("--quick")
        .output()
        .expect("run mesh-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mesh-bench --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    let env: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with("ENV "))
        .map(|l| json(l, "ENV "))
        .collect();
    assert_eq!(env.len(), 1, "{stdout}");
    assert_eq!(env[0]["envoy"], "1.40.0", "{stdout}");
    assert!(env[0]["nproc"].as_u64().is_some_and(|n| n > 0), "{stdout}");

    let benches: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with("BENCH "))
        .map(|l| json(l, "BENCH "))
        .collect();
    // What each scenario sustained closed-loop, per protocol: an open-loop rate above it is
    // past the scenario's capacity (the Envoy pair's, on 2 cores), where errors are the
    // measurement, as mesh-bench itself treats them.
    let capacity = |scenario: &str, proto: &str| {
        benches
            .iter()
            .filter(|b| b["scenario"] == scenario && b["proto"] == proto)
            .filter(|b| !b["mode"].as_str().unwrap().starts_with("rate@"))
            .filter_map(|b| b["rps"].as_f64())
            .fold(0.0, f64::max)
    };
    let mut ran = BTreeSet::new();
    for b in &benches {
        let (scenario, mode) = (b["scenario"].as_str().unwrap(), b["mode"].as_str().unwrap());
        let (requests, errors) = (
            b["requests"].as_u64().unwrap(),
            b["errors"].as_u64().unwrap(),
        );
        assert!(requests > 0, "{b}");
        if scenario == "faulty" {
            // 1 % of the answers are 503: retries to the other instance must hide nearly all
            // of them (without the mesh, 1 % of requests would fail).
            assert!(errors * 1000 <= requests, "retries hide the failures: {b}");
        } else if let Some(rate) = mode
            .strip_prefix("rate@")
            .and_then(|r| r.parse::<f64>().ok())
            && capacity(scenario, b["proto"].as_str().unwrap()) < rate
        {
            eprintln!("{scenario} {mode}: past its closed-loop capacity, {errors} errors");
        } else {
            assert_eq!(errors, 0, "{scenario} {mode}: {b}");
        }
        for side in ["client", "server"] {
            assert!(b["cpu_us_per_req"][side].as_f64().unwrap() > 0.0, "{b}");
            assert!(b["rss_mib"][side].as_f64().unwrap() > 0.0, "{b}");
        }
        for q in ["p50_us", "p90_us", "p99_us"] {
            assert!(b[q].as_f64().unwrap() > 0.0, "{b}");
        }
        ran.insert((scenario.to_owned(), mode.to_owned()));
    }
    let expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .flat_map(|(s, modes)| modes.iter().map(|m| (s.to_string(), m.to_string())))
        .collect();
    assert_eq!(ran, expected, "{stdout}");

    let summaries: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with("SUMMARY "))
        .map(|l| json(l, "SUMMARY "))
        .collect();
    assert_eq!(summaries.len(), expected.len(), "{stdout}");
    let full = summaries
        .iter()
        .find(|s| s["scenario"] == "mesh-full-mtls" && s["mode"] == "rate@1000")
        .expect("mesh-full-mtls rate@1000");
    assert!(full["vs_bare"]["cpu_ratio"].as_f64().is_some(), "{full}");
    assert!(
        full["vs_envoy2_mtls"]["p50_ratio"].as_f64().is_some(),
        "{full}"
    );
    assert!(
        stdout.contains("| scenario | mode |"),
        "the Markdown table: {stdout}"
    );
    // Spans at 1 % and 100 % sampling reached the collector.
    let spans: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("spans received by the trace sink: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the span count");
    assert!(spans > 0, "{stdout}");
}
