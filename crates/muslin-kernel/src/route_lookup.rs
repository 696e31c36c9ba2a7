//! Which source address the kernel would use towards a peer.

use std::net::{IpAddr, SocketAddr, UdpSocket};

/// The source address the kernel would use towards `peer` (a UDP connect
/// sends nothing; it only resolves the route).
pub fn source_towards(peer: IpAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(peer, 9))?;
    Ok(s.local_addr()?.ip())
}
