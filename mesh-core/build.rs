//! Locates the protobuf descriptor set that `envoy-types` ships beside its generated code, so
//! the static-config loader can read Envoy's proto3 JSON (and config dumps can write it). The
//! crate does not export the bytes, so we find its sources: first from the lock file and the
//! cargo registry (no process, no lock), then by asking `cargo metadata`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const FILE: &str = "src/generated/types.bin";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let found = from_registry(&manifest_dir).or_else(|| from_metadata(&manifest_dir));
    let Some(descriptors) = found else {
        panic!("cannot find envoy-types' {FILE}: is envoy-types in the dependency graph?");
    };
    println!("cargo:rerun-if-changed={}", descriptors.display());
    println!(
        "cargo:rustc-env=MESH_ENVOY_DESCRIPTORS={}",
        descriptors.display()
    );
}

/// `envoy-types-<locked version>` under `$CARGO_HOME/registry/src/*/`.
fn from_registry(manifest_dir: &Path) -> Option<PathBuf> {
    let lock = manifest_dir
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.exists())?;
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(lock).ok()?;
    let mut lines = text.lines();
    let version = loop {
        let line = lines.next()?;
        if line.trim() == "name = \"envoy-types\"" {
            let v = lines.next()?.trim();
            break v
                .strip_prefix("version = \"")?
                .strip_suffix('"')?
                .to_owned();
        }
    };
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    std::fs::read_dir(home.join("registry/src"))
        .ok()?
        .filter_map(Result::ok)
        .map(|index| {
            index
                .path()
                .join(format!("envoy-types-{version}"))
                .join(FILE)
        })
        .find(|p| p.exists())
}

/// Asks cargo where envoy-types' sources are (covers vendored and git sources).
fn from_metadata(manifest_dir: &Path) -> Option<PathBuf> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(env::var("TARGET").ok()?)
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .output()
        .ok()?;
    if !output.status.success() {
        println!(
            "cargo:warning=cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let pkg = meta["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "envoy-types")?;
    let dir = Path::new(pkg["manifest_path"].as_str()?)
        .parent()?
        .to_path_buf();
    Some(dir.join(FILE)).filter(|p| p.exists())
}
