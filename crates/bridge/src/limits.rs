//! Bounds on what one bot can make its session do: a budget of messages and bytes per second,
//! a cap on mark names, and warnings that cannot flood the log. Plain data with time passed in.

use std::time::Duration;

use tokio::time::Instant;

/// A bot's mark name longer than this is refused as a malformed frame: names are labels (Exotel
/// and Twilio bots use ids), and a queue of 1,024 pending marks must stay small.
pub const MAX_MARK_NAME_BYTES: usize = 256;

/// A budget's burst: this many seconds of its rate may come at once (a bot sending its whole
/// answer as fast as its TTS makes it).
pub const BURST_SECS: u32 = 5;

/// A token bucket: `per_sec` tokens a second, at most [`BURST_SECS`] seconds of them saved up.
#[derive(Clone, Debug)]
pub struct RateBudget {
    per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl RateBudget {
    /// A full bucket at `now`.
    pub fn new(per_sec: u64, now: Instant) -> Self {
        let per_sec = per_sec as f64;
        let capacity = per_sec * f64::from(BURST_SECS);
        RateBudget {
            per_sec,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes `amount` tokens if there are that many; false (and nothing taken) otherwise.
    pub fn take(&mut self, amount: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        let amount = amount as f64;
        if amount <= self.tokens {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

/// What a bot may send per second: messages (each costs a JSON parse) and bytes (base64 to
/// decode). Beyond either, a message is dropped before it is parsed, and counted.
#[derive(Clone, Debug)]
pub struct BotBudget {
    messages: RateBudget,
    bytes: RateBudget,
}

impl BotBudget {
    pub fn new(messages_per_sec: u64, bytes_per_sec: u64, now: Instant) -> Self {
        BotBudget {
            messages: RateBudget::new(messages_per_sec, now),
            bytes: RateBudget::new(bytes_per_sec, now),
        }
    }

    /// Whether a message of `len` bytes fits the budget (and takes it).
    pub fn admit(&mut self, len: usize, now: Instant) -> bool {
        // Check bytes first so a refused message takes no message token either.
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        self.bytes.take(len, now) && self.messages.take(1, now)
    }
}

/// Warnings of one kind, rate-limited: the first [`WarnLimiter::BURST`] in an interval are
/// logged, the rest only counted, and the next logged one says how many were left out.
#[derive(Clone, Debug)]
pub struct WarnLimiter {
    interval: Duration,
    window_start: Option<Instant>,
    logged_in_window: u32,
    suppressed: u64,
}

impl WarnLimiter {
    /// Warnings logged per interval before the rest are only counted.
    pub const BURST: u32 = 5;

    pub fn new(interval: Duration) -> Self {
        WarnLimiter {
            interval,
            window_start: None,
            logged_in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(left out since the last logged one)` when this warning should be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let new_window = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        if new_window {
            self.window_start = Some(now);
            self.logged_in_window = 0;
        }
        if self.logged_in_window < Self::BURST {
            self.logged_in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn budget_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut budget = RateBudget::new(100, start);
        // Five seconds' worth at once...
        assert_eq!((0..600).filter(|_| budget.take(1, start)).count(), 500);
        // ...then 100 a second.
        let later = start + SECOND;
        assert_eq!((0..600).filter(|_| budget.take(1, later)).count(), 100);
        // Idle time saves up no more than the burst.
        let much_later = later + 60 * SECOND;
        assert_eq!((0..600).filter(|_| budget.take(1, much_later)).count(), 500);
    }

    #[test]
    fn budget_refuses_what_does_not_fit_and_takes_nothing_then() {
        let now = Instant::now();
        let mut budget = RateBudget::new(10, now);
        assert!(!budget.take(51, now));
        assert!(budget.take(50, now));
        // Time going backwards (it cannot, but never panic) just adds nothing.
        assert!(!budget.take(1, now - SECOND));
    }

    #[test]
    fn bot_budget_counts_messages_and_bytes() {
        let now = Instant::now();
        // 4 messages a second (burst 20), 1,000 bytes a second (burst 5,000).
        let mut budget = BotBudget::new(4, 1000, now);
        assert_eq!((0..30).filter(|_| budget.admit(10, now)).count(), 20);
        let mut budget = BotBudget::new(4, 1000, now);
        assert_eq!((0..30).filter(|_| budget.admit(1000, now)).count(), 5);
        // A refused big message leaves the message budget for small ones.
        let mut budget = BotBudget::new(4, 1000, now);
        assert!(!budget.admit(6000, now));
        assert_eq!((0..30).filter(|_| budget.admit(1, now)).count(), 20);
    }

    #[test]
    fn warnings_are_limited_per_interval_and_report_what_was_left_out() {
        let start = Instant::now();
        let mut limiter = WarnLimiter::new(10 * SECOND);
        let logged: Vec<Option<u64>> = (0..8).map(|_| limiter.allow(start)).collect();
        assert_eq!(
            logged,
            [
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None
            ]
        );
        // The next interval's first warning says three were left out.
        assert_eq!(limiter.allow(start + 10 * SECOND), Some(3));
        assert_eq!(limiter.allow(start + 11 * SECOND), Some(0));
    }
}
