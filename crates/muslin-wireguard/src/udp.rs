//! gotatun's UDP socket, rebound patiently.

use std::io;
use std::time::Duration;

use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpTransportFactory, UdpTransportFactoryParams};

/// On a reconfiguration (a new private key, say) gotatun stops the old
/// connection's tasks and binds the same port again at once, but the
/// aborted tasks drop their clones of the old socket a moment later, so
/// the first bind of a fixed port can fail with EADDRINUSE. Retrying for a
/// short while rides that out instead of failing the key rotation.
#[derive(Default)]
pub struct RebindingUdp(UdpSocketFactory);

const REBIND_FOR: Duration = Duration::from_secs(2);
const REBIND_EVERY: Duration = Duration::from_millis(10);

impl UdpTransportFactory for RebindingUdp {
    type Send = UdpSocket;
    type Recv = UdpSocket;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(UdpSocket, UdpSocket)> {
        let deadline = tokio::time::Instant::now() + REBIND_FOR;
        loop {
            match self.0.bind(params).await {
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && params.port != 0
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(REBIND_EVERY).await;
                }
                r => return r,
            }
        }
    }
}
