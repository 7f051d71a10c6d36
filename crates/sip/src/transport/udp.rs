//! The UDP listener: one datagram, one message; keep-alives skipped, oversized or
//! unparseable datagrams dropped and counted.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tracing::debug;

use super::delivery::{deliver, drop_datagram};
use super::{Handler, Sender, Source, TransportKind};

pub(super) async fn serve_udp(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    sender: Sender,
    handler: Arc<dyn Handler>,
    max: usize,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, remote) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port unreachable shows up here on some systems: not fatal.
            Err(e) => {
                debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let datagram = &buf[..len];
        if datagram.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // keep-alive
        }
        let source = Source {
            transport: TransportKind::Udp,
            remote,
            local,
            connection: None,
        };
        if len > max {
            drop_datagram(&sender, remote, "larger than sip.max_message_bytes");
            continue;
        }
        deliver(datagram, source, &sender, handler.as_ref());
    }
}
