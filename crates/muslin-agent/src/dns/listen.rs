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

/// A network's server while it runs; dropping it stops it.
pub(super) struct Listening {
    _tcp: hickory_server::Server<NetHandler>,
    udp: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        for t in &self.udp {
            t.abort();
        }
    }
}

/// The name service's own threads: a query is answered at once, never
/// behind the agent's rounds (a full reconciliation reads every
/// interface and route of the host, tens of milliseconds with a thousand
/// containers), and the scheduler wakes them as soon as a query comes.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("muslin-dns")
            .enable_all()
            .build()
            .expect("the name service's threads")
    })
}

/// UDP answered by our own loop (`udp`), TCP by hickory's server, both
/// on the name service's threads.
pub(super) fn start(
    n: &ServedNet,
    udp_handler: NetHandler,
    tcp_handler: NetHandler,
) -> std::io::Result<Listening> {
    let _on = runtime().enter();
    let udp = socket(n, Type::DGRAM, Protocol::UDP)?;
    // Bursts of queries wait in the socket rather than being dropped.
    let _ = udp.set_recv_buffer_size(1 << 20);
    let udp = tokio::net::UdpSocket::from_std(udp.into())?;
    let tcp = socket(n, Type::STREAM, Protocol::TCP)?;
    tcp.listen(128)?;
    let tcp = tokio::net::TcpListener::from_std(tcp.into())?;
    let mut server = hickory_server::Server::new(tcp_handler);
    server.register_listener(tcp, TCP_IDLE, 64 * 1024);
    Ok(Listening {
        _tcp: server,
        udp: super::udp::spawn(udp, udp_handler),
    })
}
