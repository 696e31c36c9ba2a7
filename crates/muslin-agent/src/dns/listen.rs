//! A network's listening sockets: UDP and TCP on port 53 of its address,
//! carrying its firewall mark so answers route back into the network.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::answer::NetHandler;
use super::ServedNet;

/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(5);

fn socket(n: &ServedNet, kind: Type, protocol: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, kind, Some(protocol))?;
    s.set_reuse_address(true)?;
    // The address sits on msl-dns, which the data plane may program a
    // moment later than this bind (at start, or for a new network).
    s.set_freebind(true)?;
    if n.mark != 0 {
        s.set_mark(n.mark)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((n.address(), 53)).into())?;
    Ok(s)
}

pub(super) fn start(
    n: &ServedNet,
    handler: NetHandler,
) -> std::io::Result<hickory_server::Server<NetHandler>> {
    let udp = socket(n, Type::DGRAM, Protocol::UDP)?;
    // Bursts of queries wait in the socket rather than being dropped.
    let _ = udp.set_recv_buffer_size(1 << 20);
    let udp = tokio::net::UdpSocket::from_std(udp.into())?;
    let tcp = socket(n, Type::STREAM, Protocol::TCP)?;
    tcp.listen(128)?;
    let tcp = tokio::net::TcpListener::from_std(tcp.into())?;
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64 * 1024);
    Ok(server)
}
