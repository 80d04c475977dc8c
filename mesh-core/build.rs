//! Locates the protobuf descriptor set that `envoy-types` ships beside its generated code, so
//! the static-config loader can read Envoy's proto3 JSON (and `/config_dump` can write it).
//! The crate does not export the bytes, so we ask cargo where the crate's sources are.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform"])
        .arg(env::var("TARGET").expect("TARGET"))
        .arg("--manifest-path")
        .arg(manifest.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    if !output.status.success() {
        panic!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types in the dependency graph");
    let dir = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"))
        .parent()
        .expect("crate dir")
        .to_path_buf();
    let descriptors = dir.join("src/generated/types.bin");
    assert!(descriptors.exists(), "envoy-types no longer ships {}", descriptors.display());
    println!("cargo:rerun-if-changed={}", descriptors.display());
    println!("cargo:rustc-env=MESH_ENVOY_DESCRIPTORS={}", descriptors.display());
}
