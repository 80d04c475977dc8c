//! The interop binaries fail fast, naming the flag, on what they cannot use.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_client_names_a_bad_flag() {
    let client = env!("CARGO_BIN_EXE_xds-interop-client");
    let (ok, err) = run(client, &["--server=xds:///s:8080", "--qpz=10"]);
    assert!(!ok);
    assert!(err.contains("--qpz: unknown flag"), "{err}");
    let (ok, err) = run(
        client,
        &["--server=xds:///s:8080", "--metadata=UnaryCall:k"],
    );
    assert!(!ok);
    assert!(
        err.contains("--metadata") && err.contains("METHOD:KEY:VALUE"),
        "{err}"
    );
    let (ok, err) = run(client, &["--qps=10"]);
    assert!(!ok);
    assert!(err.contains("--server"), "{err}");
}

#[test]
fn the_server_needs_a_bootstrap_and_two_ports() {
    let server = env!("CARGO_BIN_EXE_xds-interop-server");
    let (ok, err) = run(server, &["--port=8080", "--maintenance_port=8080"]);
    assert!(!ok);
    assert!(err.contains("--maintenance_port must differ"), "{err}");
    let (ok, err) = run(server, &["--port=0", "--maintenance_port=1"]);
    assert!(!ok);
    assert!(
        err.contains("GRPC_XDS_BOOTSTRAP"),
        "no bootstrap is an error that says so: {err}"
    );
}
