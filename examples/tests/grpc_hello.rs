//! The grpc-hello example, run as a reader runs it: its two lines show mTLS identities
//! end to end and the AuthorizationPolicy's denial.

#[test]
fn grpc_hello_prints_who_called_whom_and_the_denial() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grpc-hello"))
        .output()
        .expect("run grpc-hello");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc-hello failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "client → front: front heard \"world\" from spiffe://cluster.local/ns/default/sa/client; back says: hello world, spiffe://cluster.local/ns/default/sa/front",
            "client → back: PermissionDenied: RBAC: access denied",
        ],
        "{stdout}"
    );
}
