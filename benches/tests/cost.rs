//! `mesh-bench cost`, which `scripts/cost` runs under callgrind: a scenario's two sides in one
//! process send every request they are asked for, and say so in a `COST` line. The counting
//! itself needs valgrind and runs outside the suite.

use std::process::Command;

use serde_json::Value;

mod common;
use common::release_binary;

#[test]
fn cost_mode_sends_every_request_through_each_stack() {
    let bin = release_binary("mesh-bench");
    for (scenario, mode) in [
        ("bare", "max-h1"),
        ("mesh-min", "max-h1"),
        ("mesh-full-mtls", "max-h2"),
    ] {
        let out = Command::new(&bin)
            .args([
                "cost",
                "--scenario",
                scenario,
                "--mode",
                mode,
                "--requests",
                "40",
            ])
            .output()
            .expect("run mesh-bench cost");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{scenario} {mode}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("COST "))
            .unwrap_or_else(|| panic!("{scenario}: no COST line in {stdout}"));
        let v: Value = serde_json::from_str(line).expect("COST json");
        assert_eq!(v["scenario"], scenario);
        assert_eq!(v["mode"], mode);
        assert_eq!(
            (v["requests"].as_u64(), v["failed"].as_u64()),
            (Some(40), Some(0))
        );
    }
}
