//! `reliability --quick`: the reliability suite's short form (issue 17) passes, every
//! scenario prints its figures, and each figure the issue asks for is there. Sizes are small
//! (300 slow connections, 200 pushes, a 2 s outage, 20 s of flapping, 3 s of certificate
//! rotation); the long form prints
//! the (`cargo run --release -p mesh-bench --bin reliability`).
//!
//! nextest runs it alone (`.config/nextest.toml`): it loads both CPUs.

mod common;

use std::process::Command;

use serde_json::Value;

#[test]
fn the_quick_reliability_suite_passes_with_its_figures() {
    let out = Command::new(common::release_binary("reliability"))
        .arg("--quick")
        .output()
        .expect("run reliability");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("reliability "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let scenario = |name: &str| {
        lines
            .iter()
            .find(|l| l["scenario"] == name)
            .unwrap_or_else(|| panic!("no {name} line:\n{stdout}\n{stderr}"))
    };
    let slow = scenario("slowloris");
    assert_eq!(slow["good_failed"], 0, "{slow}");
    assert_eq!(
        slow["closed_by_timeouts"], slow["slow_connections"],
        "{slow}"
    );
    let flood = scenario("host-flood");
    assert_eq!(flood["failed"], 0, "{flood}");
    assert!(
        flood["second_flood_growth_kib"].as_u64().is_some(),
        "{flood}"
    );
    let pushes = scenario("pushes");
    assert_eq!(pushes["failed"], 0, "{pushes}");
    assert_eq!(pushes["pushes"], 200, "{pushes}");
    let down = scenario("control-plane-down");
    assert_eq!(down["failed"], 0, "{down}");
    assert_eq!(down["resynced"], true, "{down}");
    let rotation = scenario("rotation");
    assert_eq!(rotation["failed"], 0, "{rotation}");
    assert!(rotation["rotations"].as_u64().unwrap() > 10, "{rotation}");
    let flapping = scenario("flapping");
    assert!(
        flapping["reconnects_per_minute"].as_f64().unwrap() < 20.0,
        "{flapping}"
    );
    assert!(
        out.status.success() && lines.iter().all(|l| l["pass"] == true),
        "reliability --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
