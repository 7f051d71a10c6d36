//! The callers' media: one UDP socket per call, its port given to SIPp for the call's SDP.
//! voicegate's first RTP packet to a socket (silence while the bot is quiet) tells where to
//! send: the caller then sends a marked PCMA packet every 20 ms until the run stops, and counts
//! the echoed markers it gets back. SIPp does all the signalling.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::{interval, MissedTickBehavior};
use voicegate_audio::g711;

use crate::board::Board;
use crate::marker::{self, Marker, PACKET_SAMPLES};

const RTP_HEADER: usize = 12;
const PCMA: u8 = 8;

/// One call's media end.
pub struct Slot {
    socket: UdpSocket,
    /// voicegate's RTP address for this call, once its first packet came: IPv4 and port
    /// packed, 0 until then.
    remote: AtomicU64,
}

impl Slot {
    fn remote(&self) -> Option<SocketAddr> {
        let packed = self.remote.load(Relaxed);
        (packed != 0).then(|| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from((packed >> 16) as u32),
                packed as u16,
            ))
        })
    }
}

/// Every call's media end.
pub struct Callers {
    slots: Vec<Arc<Slot>>,
}

impl Callers {
    /// Binds `calls` sockets on 127.0.0.1 ephemeral ports.
    pub async fn bind(calls: usize) -> std::io::Result<Callers> {
        let mut slots = Vec::with_capacity(calls);
        for _ in 0..calls {
            slots.push(Arc::new(Slot {
                socket: UdpSocket::bind("127.0.0.1:0").await?,
                remote: AtomicU64::new(0),
            }));
        }
        Ok(Callers { slots })
    }

    /// Each call's RTP port, in call order (for SIPp's injection file).
    pub fn ports(&self) -> Vec<u16> {
        self.slots
            .iter()
            .map(|s| s.socket.local_addr().map(|a| a.port()).unwrap_or(0))
            .collect()
    }

    /// Calls whose media started (voicegate sent them RTP).
    pub fn started(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.remote.load(Relaxed) != 0)
            .count()
    }

    /// Runs every receiver and the sender until the board stops; receivers go on until the
    /// returned set is dropped.
    pub fn run(&self, board: Arc<Board>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for (i, slot) in self.slots.iter().enumerate() {
            tasks.spawn(receive(i as u16, slot.clone(), board.clone()));
        }
        tasks.spawn(send(self.slots.clone(), board));
        tasks
    }
}

async fn receive(index: u16, slot: Arc<Slot>, board: Arc<Board>) {
    let mut buf = [0u8; 2048];
    let mut last_seen: Option<u16> = None;
    loop {
        let Ok((len, from)) = slot.socket.recv_from(&mut buf).await else {
            continue;
        };
        // Only voicegate's RTP says where to send: its RTCP for another call can land here too
        // (each call's RTCP goes to the port after its RTP port, another call's socket).
        let is_our_rtp = len >= RTP_HEADER && buf[1] & 0x7f == PCMA;
        if !is_our_rtp {
            continue;
        }
        if slot.remote.load(Relaxed) == 0 {
            if let SocketAddr::V4(v4) = from {
                slot.remote.store(
                    u64::from(u32::from(*v4.ip())) << 16 | u64::from(v4.port()),
                    Relaxed,
                );
            }
        }
        let Some(payload) = rtp_payload(&buf[..len]) else {
            continue;
        };
        let unaligned = marker::scan(
            payload.len(),
            |i| g711::alaw_decode(payload[i]),
            |m| {
                if m.slot != index {
                    return;
                }
                let new = last_seen.is_none_or(|last| m.seq > last);
                if new {
                    last_seen = Some(m.seq);
                }
                board.caller_received(m, new);
            },
        );
        if unaligned {
            board.counters.unaligned.fetch_add(1, Relaxed);
        }
    }
}

/// The payload of an RTP packet (after CSRCs and any extension), if it is one.
fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    if packet.len() < RTP_HEADER || packet[0] >> 6 != 2 {
        return None;
    }
    let csrcs = usize::from(packet[0] & 0x0f);
    let mut at = RTP_HEADER + 4 * csrcs;
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(at + 2..at + 4)?;
        at += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    packet.get(at..)
}

/// Sends every started call a marked packet each 20 ms until the board stops.
async fn send(slots: Vec<Arc<Slot>>, board: Arc<Board>) {
    let mut tick = interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut seqs = vec![0u16; slots.len()];
    let mut samples = [0i16; PACKET_SAMPLES];
    let mut packet = [0u8; RTP_HEADER + PACKET_SAMPLES];
    while !board.stopped() {
        tick.tick().await;
        if board.stopped() {
            break;
        }
        for (i, slot) in slots.iter().enumerate() {
            let Some(remote) = slot.remote() else {
                continue;
            };
            let seq = seqs[i];
            let m = Marker {
                slot: i as u16,
                seq,
            };
            marker::write(m, &mut samples);
            packet[0] = 0x80;
            packet[1] = PCMA | if seq == 0 { 0x80 } else { 0 };
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet[4..8].copy_from_slice(&(u32::from(seq) * PACKET_SAMPLES as u32).to_be_bytes());
            packet[8..12].copy_from_slice(&(0x5eed_0000 | i as u32).to_be_bytes());
            g711::encode_alaw(&samples, &mut packet[RTP_HEADER..]);
            if slot.socket.try_send_to(&packet, remote).is_ok() {
                board.caller_sent(m);
                seqs[i] = seq.wrapping_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_follows_csrcs_and_the_extension() {
        let mut p = vec![0x80, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9];
        assert_eq!(rtp_payload(&p), Some(&[9u8, 9][..]));
        p[0] = 0x91; // one CSRC, an extension
        let mut q = p[..12].to_vec();
        q.extend_from_slice(&[0, 0, 0, 2]); // CSRC
        q.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, one word
        q.push(7);
        assert_eq!(rtp_payload(&q), Some(&[7u8][..]));
        assert_eq!(rtp_payload(&[0x40; 12]), None);
    }
}
