//! Ports for peers that bind their own (Envoy, Prometheus), and ports nobody listens on.

use std::net::SocketAddr;

/// A loopback address nobody listens on now, for a peer to bind later or for a connection
/// that must be refused.
///
/// Chosen at random below the kernel's ephemeral range (32768 and up on Linux), not by
/// binding port 0: a port-0 port is handed out again at once to the next port-0 bind or
/// outgoing connection of a test running beside this one, which then holds it when the peer
/// binds it (Envoy: "Address already in use") or answers where a refusal was expected.
///
/// ```
/// let addr = mesh_test_support::unused_port();
/// assert!(addr.port() < 32768);
/// std::net::TcpListener::bind(addr).expect("still free");
/// ```
pub fn unused_port() -> SocketAddr {
    loop {
        let addr = SocketAddr::from(([127, 0, 0, 1], fastrand::u16(20_000..32_000)));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}
