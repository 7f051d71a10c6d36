//! The server transactions of INVITEs refused in the core, before any call exists: what is
//! left of RFC 3261 §17.2.1 once the final response is sent.
//!
//! A refused INVITE over UDP keeps one small entry (its final response's bytes and where it
//! went) until Timer H, so that a retransmitted INVITE gets the response again and the ACK is
//! absorbed. Timer G retransmissions are not sent: the source is unverified (it may be
//! spoofed), and answering only the peer's own retransmissions keeps the answers to one per
//! request received — no amplification by count. A peer that lost our response retransmits its
//! INVITE and so gets it again. Over TCP/TLS nothing is kept (no retransmissions exist).
//!
//! The table is bounded: entries expire in insertion order (all live for Timer H) and when it
//! is full the oldest goes first, so its memory is capped whatever the flood.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use voicegate_sip::transport::Source;

/// (INVITE branch, top Via sent-by): RFC 3261 §17.2.3 matching, the ACK of a non-2xx
/// response carrying the INVITE's branch.
pub type RefusalKey = (String, String);

#[derive(Debug)]
pub struct Refusal {
    pub response: Bytes,
    pub source: Source,
    pub target: SocketAddr,
    expires: Instant,
}

/// What to do with a request that matches a refused INVITE.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched {
    /// An INVITE retransmission: send this again.
    Resend(Bytes, Source, SocketAddr),
    /// The ACK: absorbed (the transaction is over).
    Absorbed,
}

#[derive(Debug)]
pub struct Refusals {
    entries: HashMap<RefusalKey, Refusal>,
    /// Keys oldest first; a key whose entry was removed early is skipped.
    order: VecDeque<(RefusalKey, Instant)>,
    capacity: usize,
    lifetime: Duration,
}

impl Refusals {
    /// `lifetime` is Timer H (64·T1).
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        Refusals {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            lifetime,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps a refused INVITE's final response; evicts the oldest when full. True when an
    /// entry was evicted.
    pub fn insert(
        &mut self,
        key: RefusalKey,
        response: Bytes,
        source: Source,
        target: SocketAddr,
        now: Instant,
    ) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut evicted = false;
        // Keys of entries ACKed early stay in `order` until they reach its front: bounded too.
        while self.entries.len() >= self.capacity || self.order.len() >= 2 * self.capacity {
            let Some((old, _)) = self.order.pop_front() else {
                break;
            };
            evicted |= self.entries.remove(&old).is_some();
        }
        let expires = now + self.lifetime;
        if self
            .entries
            .insert(
                key.clone(),
                Refusal {
                    response,
                    source,
                    target,
                    expires,
                },
            )
            .is_none()
        {
            self.order.push_back((key, expires));
        }
        evicted
    }

    /// A request with this key and method: an INVITE retransmission or the ACK.
    pub fn on_request(&mut self, key: &RefusalKey, is_ack: bool, now: Instant) -> Option<Matched> {
        let entry = self.entries.get(key)?;
        if now >= entry.expires {
            self.entries.remove(key);
            return None;
        }
        if is_ack {
            self.entries.remove(key);
            return Some(Matched::Absorbed);
        }
        Some(Matched::Resend(
            entry.response.clone(),
            entry.source,
            entry.target,
        ))
    }

    /// Drops expired entries and gives back the memory a flood left behind.
    pub fn sweep(&mut self, now: Instant) {
        while let Some((key, expires)) = self.order.front() {
            let gone = !self.entries.contains_key(key);
            if !gone && now < *expires {
                break;
            }
            if !gone {
                self.entries.remove(key);
            }
            self.order.pop_front();
        }
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to_fit();
        }
        if self.order.capacity() > 64 && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicegate_sip::transport::TransportKind;

    fn source() -> Source {
        Source {
            transport: TransportKind::Udp,
            remote: "192.0.2.1:5060".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            connection: None,
        }
    }

    fn key(n: u32) -> RefusalKey {
        (format!("z9hG4bK{n}"), "192.0.2.1:5060".into())
    }

    #[test]
    fn a_retransmission_gets_the_response_again_and_the_ack_ends_it() {
        let t0 = Instant::now();
        let mut table = Refusals::new(10, Duration::from_secs(32));
        let bytes = Bytes::from_static(b"SIP/2.0 403 Forbidden\r\n\r\n");
        table.insert(key(1), bytes.clone(), source(), source().remote, t0);
        assert_eq!(
            table.on_request(&key(1), false, t0 + Duration::from_secs(1)),
            Some(Matched::Resend(bytes, source(), source().remote))
        );
        assert_eq!(table.on_request(&key(2), false, t0), None);
        assert_eq!(
            table.on_request(&key(1), true, t0 + Duration::from_secs(2)),
            Some(Matched::Absorbed)
        );
        assert!(table.is_empty());
    }

    #[test]
    fn entries_expire_at_timer_h() {
        let t0 = Instant::now();
        let mut table = Refusals::new(10, Duration::from_secs(32));
        table.insert(key(1), Bytes::new(), source(), source().remote, t0);
        table.sweep(t0 + Duration::from_secs(31));
        assert_eq!(table.len(), 1);
        table.sweep(t0 + Duration::from_secs(32));
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_evicts_the_oldest() {
        let t0 = Instant::now();
        let mut table = Refusals::new(3, Duration::from_secs(32));
        for n in 0..3 {
            assert!(!table.insert(key(n), Bytes::new(), source(), source().remote, t0));
        }
        assert!(table.insert(key(3), Bytes::new(), source(), source().remote, t0));
        assert_eq!(table.len(), 3);
        assert_eq!(table.on_request(&key(0), false, t0), None);
        assert!(table.on_request(&key(3), false, t0).is_some());
        // Many more: still three.
        for n in 4..1000 {
            table.insert(key(n), Bytes::new(), source(), source().remote, t0);
        }
        assert_eq!(table.len(), 3);
        table.sweep(t0);
        assert!(table.order.len() <= 1000);
    }
}
