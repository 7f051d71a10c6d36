//! Per-source protection in front of admission, in the manner of Kamailio's pike module: a
//! fixed window of requests per source address, a temporary block list for sources that go
//! over it or keep failing digest auth, and the refusal counts that become one summary log
//! line per source per interval instead of a line per refused INVITE.
//!
//! Plain data with time passed in: the core feeds it, tests drive it with virtual time. The
//! table of sources is bounded; once it is full, new sources share one overflow entry, so a
//! flood from spoofed addresses is limited as one source rather than growing memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// The shield's limits (from `[limits]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShieldLimits {
    pub window: Duration,
    /// Out-of-dialog requests per window from an address that is no trunk's or carrier's.
    pub requests_per_window: u32,
    /// The same for trunk whitelist and carrier addresses.
    pub trusted_requests_per_window: u32,
    /// Failed digest authentications per `auth_window` before the source is blocked.
    pub auth_failures: u32,
    pub auth_window: Duration,
    /// How long a source that went over a limit stays blocked.
    pub block: Duration,
    /// Most sources tracked at once.
    pub tracked_sources: usize,
}

/// Whether a source's request is looked at further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over its limit just now: blocked from this request on.
    Blocked,
    /// Already blocked: dropped.
    Dropped,
}

/// Where a request comes from, as the limits see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceClass {
    /// A trunk's whitelisted address or a carrier's.
    Trusted,
    Unknown,
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    requests: u32,
    auth_window_start: Instant,
    auth_failures: u32,
    blocked_until: Option<Instant>,
    /// Requests refused (by the shield or by admission) since the last summary.
    refused: u64,
    dropped: u64,
    last_seen: Instant,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            window_start: now,
            requests: 0,
            auth_window_start: now,
            auth_failures: 0,
            blocked_until: None,
            refused: 0,
            dropped: 0,
            last_seen: now,
        }
    }

    fn is_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }
}

/// One source's refusals since the last summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalSummary {
    /// `None`: the overflow entry (sources beyond `tracked_sources`).
    pub source: Option<IpAddr>,
    pub refused: u64,
    pub dropped: u64,
    pub blocked: bool,
}

/// Request counts by source and the block list.
#[derive(Debug)]
pub struct Shield {
    limits: ShieldLimits,
    sources: HashMap<IpAddr, Entry>,
    /// Shared by every source that found the table full.
    overflow: Entry,
}

impl Shield {
    pub fn new(limits: ShieldLimits, now: Instant) -> Self {
        Shield {
            limits,
            sources: HashMap::new(),
            overflow: Entry::new(now),
        }
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut Entry {
        if !self.sources.contains_key(&ip) && self.sources.len() >= self.limits.tracked_sources {
            return &mut self.overflow;
        }
        self.sources.entry(ip).or_insert_with(|| Entry::new(now))
    }

    /// Counts one out-of-dialog request from `ip`.
    pub fn check(&mut self, ip: IpAddr, class: SourceClass, now: Instant) -> Verdict {
        let limits = self.limits;
        let limit = match class {
            SourceClass::Trusted => limits.trusted_requests_per_window,
            SourceClass::Unknown => limits.requests_per_window,
        };
        let entry = self.entry(ip, now);
        entry.last_seen = now;
        if entry.is_blocked(now) {
            entry.dropped += 1;
            return Verdict::Dropped;
        }
        if now.saturating_duration_since(entry.window_start) >= limits.window {
            entry.window_start = now;
            entry.requests = 0;
        }
        entry.requests = entry.requests.saturating_add(1);
        if entry.requests > limit {
            entry.blocked_until = Some(now + limits.block);
            entry.dropped += 1;
            return Verdict::Blocked;
        }
        Verdict::Pass
    }

    /// Whether `ip` itself is blocked, without counting anything. The overflow entry's block is
    /// left out: it stands for many addresses, and it drops their requests already.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources.get(&ip).is_some_and(|e| e.is_blocked(now))
    }

    /// Counts a failed digest authentication; true when it blocks the source.
    pub fn auth_failed(&mut self, ip: IpAddr, now: Instant) -> bool {
        let limits = self.limits;
        let entry = self.entry(ip, now);
        if now.saturating_duration_since(entry.auth_window_start) >= limits.auth_window {
            entry.auth_window_start = now;
            entry.auth_failures = 0;
        }
        entry.auth_failures = entry.auth_failures.saturating_add(1);
        if entry.auth_failures > limits.auth_failures && !entry.is_blocked(now) {
            entry.blocked_until = Some(now + limits.block);
            return true;
        }
        false
    }

    /// Counts a refused request for the next summary.
    pub fn refused(&mut self, ip: IpAddr, now: Instant) {
        self.entry(ip, now).refused += 1;
    }

    /// Takes the refusal counts since the last call (sources with none are left out) and
    /// forgets sources idle past every window and block, giving their memory back.
    pub fn sweep(&mut self, now: Instant) -> Vec<RefusalSummary> {
        let mut out = Vec::new();
        let take = |source: Option<IpAddr>, entry: &mut Entry, out: &mut Vec<RefusalSummary>| {
            if entry.refused + entry.dropped > 0 {
                out.push(RefusalSummary {
                    source,
                    refused: std::mem::take(&mut entry.refused),
                    dropped: std::mem::take(&mut entry.dropped),
                    blocked: entry.is_blocked(now),
                });
            }
        };
        for (ip, entry) in self.sources.iter_mut() {
            take(Some(*ip), entry, &mut out);
        }
        take(None, &mut self.overflow, &mut out);
        let idle = self.limits.window.max(self.limits.auth_window);
        self.sources
            .retain(|_, e| e.is_blocked(now) || now.saturating_duration_since(e.last_seen) < idle);
        // After a flood the table's capacity would stay at its peak.
        if self.sources.capacity() > 64 && self.sources.len() < self.sources.capacity() / 4 {
            self.sources.shrink_to_fit();
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.refused + s.dropped));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ShieldLimits {
        ShieldLimits {
            window: Duration::from_secs(2),
            requests_per_window: 3,
            trusted_requests_per_window: 10,
            auth_failures: 2,
            auth_window: Duration::from_secs(60),
            block: Duration::from_secs(30),
            tracked_sources: 2,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_source_over_its_window_is_blocked_then_released() {
        let t0 = Instant::now();
        let mut shield = Shield::new(limits(), t0);
        for _ in 0..3 {
            assert_eq!(shield.check(ip(1), SourceClass::Unknown, t0), Verdict::Pass);
        }
        assert_eq!(
            shield.check(ip(1), SourceClass::Unknown, t0),
            Verdict::Blocked
        );
        // Blocked for the whole block time, even in a new window.
        let later = t0 + Duration::from_secs(29);
        assert_eq!(
            shield.check(ip(1), SourceClass::Unknown, later),
            Verdict::Dropped
        );
        // Another source is not affected.
        assert_eq!(shield.check(ip(2), SourceClass::Unknown, t0), Verdict::Pass);
        let after = t0 + Duration::from_secs(30);
        assert!(shield.is_blocked(ip(1), later));
        assert!(!shield.is_blocked(ip(1), after));
        assert!(!shield.is_blocked(ip(2), t0));
        assert_eq!(
            shield.check(ip(1), SourceClass::Unknown, after),
            Verdict::Pass
        );
    }

    #[test]
    fn the_window_restarts() {
        let t0 = Instant::now();
        let mut shield = Shield::new(limits(), t0);
        for second in 0..10 {
            let now = t0 + Duration::from_secs(2 * second);
            for _ in 0..3 {
                assert_eq!(
                    shield.check(ip(1), SourceClass::Unknown, now),
                    Verdict::Pass
                );
            }
        }
    }

    #[test]
    fn trusted_addresses_have_their_own_higher_limit() {
        let t0 = Instant::now();
        let mut shield = Shield::new(limits(), t0);
        for _ in 0..10 {
            assert_eq!(shield.check(ip(1), SourceClass::Trusted, t0), Verdict::Pass);
        }
        assert_eq!(
            shield.check(ip(1), SourceClass::Trusted, t0),
            Verdict::Blocked
        );
    }

    #[test]
    fn repeated_auth_failures_block() {
        let t0 = Instant::now();
        let mut shield = Shield::new(limits(), t0);
        assert!(!shield.auth_failed(ip(1), t0));
        assert!(!shield.auth_failed(ip(1), t0));
        assert!(shield.auth_failed(ip(1), t0));
        assert_eq!(
            shield.check(ip(1), SourceClass::Trusted, t0),
            Verdict::Dropped
        );
        // Failures spread over more than the window do not add up.
        let mut other = Shield::new(limits(), t0);
        for minute in 0..5 {
            let now = t0 + Duration::from_secs(61 * minute);
            assert!(!other.auth_failed(ip(2), now));
            assert!(!other.auth_failed(ip(2), now));
        }
    }

    #[test]
    fn a_full_table_puts_new_sources_in_one_shared_entry() {
        let t0 = Instant::now();
        let mut shield = Shield::new(limits(), t0);
        shield.check(ip(1), SourceClass::Unknown, t0);
        shield.check(ip(2), SourceClass::Unknown, t0);
        // A spoofed flood from ever new addresses is limited as one source.
        let verdicts: Vec<_> = (10..20)
            .map(|n| shield.check(ip(n), SourceClass::Unknown, t0))
            .collect();
        assert_eq!(shield.tracked(), 2);
        assert_eq!(&verdicts[..3], &[Verdict::Pass; 3]);
        assert_eq!(verdicts[3], Verdict::Blocked);
        assert!(verdicts[4..].iter().all(|v| *v == Verdict::Dropped));
        // Its block drops their requests but is not taken as any one address's.
        assert!(!shield.is_blocked(ip(10), t0));
        // The tracked sources still pass.
        assert_eq!(shield.check(ip(1), SourceClass::Unknown, t0), Verdict::Pass);
    }

    #[test]
    fn sweep_summarises_refusals_once_and_forgets_idle_sources() {
        let t0 = Instant::now();
        let mut shield = Shield::new(limits(), t0);
        for _ in 0..5 {
            shield.check(ip(1), SourceClass::Unknown, t0);
        }
        shield.refused(ip(1), t0);
        shield.refused(ip(1), t0);
        shield.check(ip(2), SourceClass::Unknown, t0);
        let summary = shield.sweep(t0 + Duration::from_secs(1));
        assert_eq!(
            summary,
            vec![RefusalSummary {
                source: Some(ip(1)),
                refused: 2,
                dropped: 2,
                blocked: true,
            }]
        );
        assert!(shield.sweep(t0 + Duration::from_secs(1)).is_empty());
        // Idle past the windows: forgotten; blocked: kept until the block ends.
        shield.sweep(t0 + Duration::from_secs(61));
        assert_eq!(shield.tracked(), 0);
    }
}
