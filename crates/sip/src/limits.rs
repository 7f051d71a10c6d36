//! What one peer may hold of the stream listeners: how many connections (in all and per source
//! IP), how long a connection may take to say something whole, how long it may sit idle, and
//! how quickly accept errors are retried. Plain data, decided without sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds on accepted TCP/TLS connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Accepted connections open at once, over TCP and TLS together.
    pub max_connections: usize,
    /// Accepted connections open at once from one source IP address.
    pub max_connections_per_ip: usize,
    /// A new connection must deliver a whole first message within this.
    pub header_timeout: Duration,
    /// A connection with no whole message (or keep-alive) either way for this long is closed.
    pub idle_timeout: Duration,
    /// The TLS handshake of an accepted connection must finish within this.
    pub tls_handshake_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_ip: 100,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromAddress,
}

/// Open accepted connections, in all and per source IP.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ConnectionCounts {
    /// Counts a new connection from `ip` in, unless that would pass a limit.
    pub fn admit(&mut self, ip: IpAddr, limits: &StreamLimits) -> Result<(), Refusal> {
        if self.total >= limits.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let from_ip = self.per_ip.entry(ip).or_default();
        if *from_ip >= limits.max_connections_per_ip {
            if *from_ip == 0 {
                self.per_ip.remove(&ip);
            }
            return Err(Refusal::TooManyFromAddress);
        }
        *from_ip += 1;
        self.total += 1;
        Ok(())
    }

    /// Counts a connection admitted from `ip` out again.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(from_ip) = self.per_ip.get_mut(&ip) {
            *from_ip -= 1;
            if *from_ip == 0 {
                self.per_ip.remove(&ip);
            }
            self.total -= 1;
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// An admitted connection's place in the counts, given back when dropped.
pub struct ConnectionSlot {
    counts: Arc<Mutex<ConnectionCounts>>,
    ip: IpAddr,
}

impl ConnectionSlot {
    pub fn admit(
        counts: &Arc<Mutex<ConnectionCounts>>,
        ip: IpAddr,
        limits: &StreamLimits,
    ) -> Result<Self, Refusal> {
        counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(ip, limits)?;
        Ok(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.ip);
    }
}

/// When a stream connection has been quiet too long.
///
/// Until its first whole message an accepted connection has `header_timeout`; after that every
/// whole message or keep-alive, received or sent, gives it `idle_timeout` more. Connections we
/// opened start as if they had spoken (we chose the peer).
#[derive(Clone, Copy, Debug)]
pub struct IdleClock {
    header_timeout: Duration,
    idle_timeout: Duration,
    started: Instant,
    last_activity: Option<Instant>,
}

impl IdleClock {
    pub fn accepted(now: Instant, limits: &StreamLimits) -> Self {
        Self {
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            started: now,
            last_activity: None,
        }
    }

    pub fn opened(now: Instant, limits: &StreamLimits) -> Self {
        Self {
            last_activity: Some(now),
            ..Self::accepted(now, limits)
        }
    }

    /// A whole message arrived.
    pub fn on_message(&mut self, now: Instant) {
        self.last_activity = Some(now);
    }

    /// A keep-alive arrived, or something was sent: activity only once the peer has spoken,
    /// so CRLFs alone or our answers cannot stand in for a first message.
    pub fn on_activity(&mut self, at: Instant) {
        if let Some(last) = self.last_activity {
            self.last_activity = Some(last.max(at));
        }
    }

    pub fn deadline(&self) -> Instant {
        match self.last_activity {
            None => self.started + self.header_timeout,
            Some(last) => last + self.idle_timeout,
        }
    }

    /// Why the connection is to be closed at `now`, if it is.
    pub fn expired(&self, now: Instant) -> Option<&'static str> {
        if now < self.deadline() {
            return None;
        }
        Some(match self.last_activity {
            None => "no whole message within sip.header_timeout_secs",
            Some(_) => "idle for sip.connection_idle_secs",
        })
    }
}

/// How long to wait after a failed accept: growing while failures repeat, so running out of
/// descriptors (EMFILE/ENFILE) never turns the accept loop into a spin.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptBackoff {
    current: Option<Duration>,
}

impl AcceptBackoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MOST: Duration = Duration::from_millis(200);

    pub fn on_error(&mut self) -> Duration {
        let next = match self.current {
            None => Self::FIRST,
            Some(current) => (current * 2).min(Self::MOST),
        };
        self.current = Some(next);
        next
    }

    pub fn on_success(&mut self) {
        self.current = None;
    }
}

/// Lets a repeated warning through at most once per `every`, counting what it held back.
#[derive(Clone, Copy, Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(occurrences held back since the last one let through)` when this one may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> StreamLimits {
        StreamLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..StreamLimits::default()
        }
    }

    #[test]
    fn admission_keeps_to_both_caps() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "2001:db8::3".parse().unwrap();
        let limits = limits(4, 2);
        let mut counts = ConnectionCounts::default();
        assert_eq!(counts.admit(a, &limits), Ok(()));
        assert_eq!(counts.admit(a, &limits), Ok(()));
        assert_eq!(counts.admit(a, &limits), Err(Refusal::TooManyFromAddress));
        assert_eq!(counts.admit(b, &limits), Ok(()));
        assert_eq!(counts.admit(c, &limits), Ok(()));
        assert_eq!(counts.admit(c, &limits), Err(Refusal::TooManyConnections));
        assert_eq!((counts.total(), counts.from(a), counts.from(c)), (4, 2, 1));
        counts.release(a);
        assert_eq!(counts.admit(c, &limits), Ok(()));
        assert_eq!(counts.from(c), 2);
        // Releasing an address never admitted changes nothing.
        counts.release("198.51.100.9".parse().unwrap());
        assert_eq!(counts.total(), 4);
        for ip in [a, b, c, c] {
            counts.release(ip);
        }
        assert_eq!(counts.total(), 0);
        assert!(counts.per_ip.is_empty(), "no entries left behind");
    }

    #[test]
    fn a_refused_address_leaves_no_entry() {
        let mut counts = ConnectionCounts::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            counts.admit(ip, &limits(4, 0)),
            Err(Refusal::TooManyFromAddress)
        );
        assert!(counts.per_ip.is_empty());
    }

    #[test]
    fn slots_give_their_place_back() {
        let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let limits = limits(1, 1);
        let slot = ConnectionSlot::admit(&counts, ip, &limits).unwrap();
        assert!(ConnectionSlot::admit(&counts, ip, &limits).is_err());
        drop(slot);
        assert!(ConnectionSlot::admit(&counts, ip, &limits).is_ok());
    }

    #[test]
    fn first_message_by_the_header_timeout_then_idle_timeout() {
        let limits = StreamLimits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ..StreamLimits::default()
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clock = IdleClock::accepted(t0, &limits);
        // Keep-alives and our own sends do not count before the first message.
        clock.on_activity(t0 + s(4));
        assert_eq!(clock.deadline(), t0 + s(5));
        assert!(clock.expired(t0 + s(4)).is_none());
        assert!(clock
            .expired(t0 + s(5))
            .is_some_and(|why| why.contains("header_timeout")));

        let mut clock = IdleClock::accepted(t0, &limits);
        clock.on_message(t0 + s(3));
        assert_eq!(clock.deadline(), t0 + s(63));
        clock.on_activity(t0 + s(50));
        // Activity seen late (a send stamped earlier) never moves the deadline back.
        clock.on_activity(t0 + s(10));
        assert_eq!(clock.deadline(), t0 + s(110));
        assert!(clock
            .expired(t0 + s(110))
            .is_some_and(|why| why.contains("idle")));

        let clock = IdleClock::opened(t0, &limits);
        assert_eq!(clock.deadline(), t0 + s(60));
    }

    #[test]
    fn accept_backoff_grows_to_a_bound_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.on_error()).collect();
        assert_eq!(delays[0], AcceptBackoff::FIRST);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays[7], AcceptBackoff::MOST);
        backoff.on_success();
        assert_eq!(backoff.on_error(), AcceptBackoff::FIRST);
    }

    #[test]
    fn log_limiter_counts_what_it_holds_back() {
        let t0 = Instant::now();
        let mut limiter = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_secs(10)), Some(2));
    }
}
