//! The echo leg: every RTP packet is sent back to the address it came from (symmetric RTP, so
//! it works behind NAT whatever the SDP said), under our own SSRC, sequence numbers and
//! timestamps, as carriers' echo-test numbers do.
//!
//! The packet is rewritten in the receive buffer: no allocation per packet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rtp_rs::RtpReader;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::pool::{PortLease, RtpPorts};

/// What the echo leg saw, for the call record.
#[derive(Debug, Default)]
pub struct EchoStats {
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    pub packets_invalid: AtomicU64,
}

/// Owns the echo task; dropping it stops the task.
#[derive(Debug)]
pub struct EchoHandle {
    task: JoinHandle<()>,
    sending: Arc<AtomicBool>,
    pub stats: Arc<EchoStats>,
}

impl EchoHandle {
    /// Starts echoing on the call's ports, which the task owns from now on: they are closed
    /// and given back to the pool when the task ends.
    pub fn start(ports: RtpPorts, ssrc: u32) -> std::io::Result<Self> {
        let RtpPorts { rtp, rtcp, lease } = ports;
        let leg = Leg {
            socket: UdpSocket::from_std(rtp)?,
            _rtcp: rtcp,
            _lease: lease,
        };
        let sending = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(EchoStats::default());
        let task = tokio::spawn(run(leg, ssrc, sending.clone(), stats.clone()));
        Ok(EchoHandle {
            task,
            sending,
            stats,
        })
    }

    /// Stops the task and waits until its ports are closed and back in the pool.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Whether we send at all: off while the peer holds the call (sendonly/inactive from them).
    pub fn set_sending(&self, on: bool) {
        self.sending.store(on, Ordering::Relaxed);
    }
}

impl Drop for EchoHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the echo task owns. Fields drop in order: sockets closed, then the lease freed.
struct Leg {
    socket: UdpSocket,
    _rtcp: std::net::UdpSocket,
    _lease: PortLease,
}

/// Our outgoing stream's numbering, continuous whatever the incoming stream does.
#[derive(Debug, Clone)]
pub struct Renumber {
    ssrc: u32,
    next_seq: u16,
    /// Added to the peer's timestamp; fixed per peer SSRC so their spacing is kept.
    ts_offset: u32,
    peer_ssrc: Option<u32>,
    last_ts: u32,
}

impl Renumber {
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        Renumber {
            ssrc,
            next_seq: first_seq,
            ts_offset: first_ts,
            peer_ssrc: None,
            last_ts: first_ts,
        }
    }

    /// Rewrites the header of a valid RTP packet in place.
    pub fn rewrite(&mut self, packet: &mut [u8]) {
        if packet.len() < 12 {
            return;
        }
        let peer_ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let peer_ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if self.peer_ssrc != Some(peer_ssrc) {
            // New source: continue our timeline just after where it was.
            self.ts_offset = self.last_ts.wrapping_add(160).wrapping_sub(peer_ts);
            self.peer_ssrc = Some(peer_ssrc);
        }
        let ts = peer_ts.wrapping_add(self.ts_offset);
        self.last_ts = ts;
        packet[2..4].copy_from_slice(&self.next_seq.to_be_bytes());
        packet[4..8].copy_from_slice(&ts.to_be_bytes());
        packet[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.next_seq = self.next_seq.wrapping_add(1);
    }
}

async fn run(leg: Leg, ssrc: u32, sending: Arc<AtomicBool>, stats: Arc<EchoStats>) {
    let socket = &leg.socket;
    let mut buf = vec![0u8; 2048];
    let mut renumber = Renumber::new(ssrc, rand::random(), rand::random());
    let mut peer: Option<SocketAddr> = None;
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "RTP receive error");
                continue;
            }
        };
        stats.packets_received.fetch_add(1, Ordering::Relaxed);
        if RtpReader::new(&buf[..len]).is_err() {
            stats.packets_invalid.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if peer != Some(from) {
            debug!(%from, "RTP latched to source");
            peer = Some(from);
        }
        if !sending.load(Ordering::Relaxed) {
            continue;
        }
        renumber.rewrite(&mut buf[..len]);
        if socket.send_to(&buf[..len], from).await.is_ok() {
            stats.packets_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn fields(p: &[u8]) -> (u16, u32, u32) {
        let r = RtpReader::new(p).unwrap();
        (u16::from(r.sequence_number()), r.timestamp(), r.ssrc())
    }

    #[test]
    fn numbering_stays_continuous_across_source_change() {
        let mut r = Renumber::new(0xabcd, 100, 1000);
        let mut out = Vec::new();
        for (i, ssrc) in [(0u16, 7u32), (1, 7), (2, 7), (0, 9), (1, 9)] {
            let mut p = packet(5000 + i, 40_000 + 160 * i as u32, ssrc);
            r.rewrite(&mut p);
            out.push(fields(&p));
            assert_eq!(&p[12..], &[0xd5; 160][..], "payload untouched");
        }
        let seqs: Vec<u16> = out.iter().map(|f| f.0).collect();
        assert_eq!(seqs, vec![100, 101, 102, 103, 104]);
        let ts: Vec<u32> = out.iter().map(|f| f.1).collect();
        assert!(
            ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 160),
            "{ts:?}"
        );
        assert!(out.iter().all(|f| f.2 == 0xabcd));
    }

    #[tokio::test]
    async fn echoes_to_the_source_address_and_frees_its_ports_when_stopped() {
        let (min, max) = crate::pool::free_range(4);
        let pool = crate::PortPool::new(min, max);
        let ports = pool.allocate("127.0.0.1".parse().unwrap()).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", ports.rtp_port()).parse().unwrap();
        let echo = EchoHandle::start(ports, 42).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..5u16 {
            client
                .send_to(&packet(i, 160 * i as u32, 1), addr)
                .await
                .unwrap();
            let (n, from) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[12..n], &[0xd5; 160][..]);
            assert_eq!(fields(&buf[..n]).2, 42);
        }
        client.send_to(b"not rtp", addr).await.unwrap();
        echo.set_sending(false);
        client.send_to(&packet(9, 0, 1), addr).await.unwrap();
        let silent = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            client.recv_from(&mut buf),
        )
        .await;
        assert!(silent.is_err(), "no echo while on hold");
        assert_eq!(echo.stats.packets_sent.load(Ordering::Relaxed), 5);
        assert_eq!(echo.stats.packets_invalid.load(Ordering::Relaxed), 1);
        assert_eq!(pool.in_use(), 1);
        echo.stop().await;
        assert_eq!(pool.in_use(), 0);
        assert!(
            std::net::UdpSocket::bind(addr).is_ok(),
            "port closed when the pool says free"
        );
    }
}
