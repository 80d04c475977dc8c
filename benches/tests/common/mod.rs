//! What the bench crate's tests share: its release binaries.

use std::process::Command;

/// The release build of this crate's binary `name` (`mesh-bench`, `reliability`), built now
/// if it is missing or out of date: a debug build cannot carry the rates these tests run.
pub(crate) fn release_binary(name: &str) -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "-p",
            "mesh-bench",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "cargo build --release -p mesh-bench failed"
    );
    // The debug binaries cargo built for this test sit in <target>/debug; the release ones
    // in <target>/release.
    let debug = std::path::Path::new(env!("CARGO_BIN_EXE_mesh-bench"));
    let release = debug
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("release")
        .join(name);
    assert!(release.exists(), "no {}", release.display());
    release
}
