//! RFC 3261 transaction state machines, free of I/O and of the clock.
//!
//! The four machines of RFC 3261 §17 (client/server × INVITE/non-INVITE) are
//! plain data in the sans-I/O style: they own no socket, spawn no task and never
//! read the clock. The caller feeds them inputs (`respond`, `on_response`,
//! `on_ack`, ...) together with the current [`Instant`], and then drains their
//! outputs:
//!
//! * [`poll_transmit`](ServerInviteTx::poll_transmit): already-serialised
//!   messages to hand to the transport, in order;
//! * [`poll_timeout`](ServerInviteTx::poll_timeout): the earliest pending
//!   timer; call `handle_timeout(now)` once it has passed;
//! * [`poll_event`](ServerInviteTx::poll_event): [`TxEvent`]s for the
//!   transaction user.
//!
//! Messages are opaque [`Bytes`]; the machines only look at status codes.
//! Out-of-range status codes (outside 100–699) and calls made in a state where
//! they do not apply are ignored, never a panic.
//!
//! Timers whose RFC value is zero on reliable transports (I, J, K, and D counted
//! from the ACK) are not armed at all: the transaction moves to `Terminated`
//! within the call that would have started them. The message queued by that
//! same call stays available from `poll_transmit`, so a driver should always
//! drain `poll_transmit` before dropping a terminated transaction.
//!
//! A retransmission timer that is handled late does not produce a burst: each
//! `handle_timeout` call retransmits at most once, and the next deadline keeps
//! to the original schedule when that is still in the future (otherwise it is
//! counted from `now`).

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::{Duration, Instant};

/// Timer D on unreliable transports (RFC 3261 §17.1.1.2: "at least 32 seconds").
const TIMER_D: Duration = Duration::from_secs(32);

/// The RFC 3261 base timer values (§17.1.1.1, table 4 of appendix A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate; the first retransmission interval.
    pub t1: Duration,
    /// Cap on the retransmission interval of non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Maximum time a message stays in the network.
    pub t4: Duration,
}

impl Timers {
    /// `64 * T1`: Timers B, F, H, J and the give-up time for 2xx retransmission.
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// Something the transaction user must learn about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxEvent {
    /// Server INVITE: no ACK arrived for a final response (Timer H for non-2xx, or 64*T1 of 2xx retransmission). The TU should end the call (BYE for 2xx).
    AckTimeout,
    /// Client: Timer B (INVITE) or Timer F (non-INVITE) fired with no final response: treat as 408.
    Timeout,
    /// The transaction reached Terminated and can be dropped.
    Terminated,
}

/// A running retransmission timer (A, E, G or the 2xx one).
#[derive(Clone, Copy, Debug)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

/// Which timer is due first.
enum Due {
    Retransmit,
    Expiry,
}

/// What every machine has in common: output queues and at most two timers, a
/// retransmission timer and a single "expiry" timer (B, D, F, H, I, J, K or the
/// 2xx give-up time), whose meaning depends on the state.
#[derive(Debug)]
struct Core {
    reliable: bool,
    timers: Timers,
    transmit: VecDeque<Bytes>,
    events: VecDeque<TxEvent>,
    retransmit: Option<Retransmit>,
    expiry: Option<Instant>,
}

impl Core {
    fn new(reliable: bool, timers: Timers) -> Self {
        Core {
            reliable,
            timers,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            retransmit: None,
            expiry: None,
        }
    }

    fn send(&mut self, wire: &Bytes) {
        self.transmit.push_back(wire.clone());
    }

    /// Starts a retransmission timer at T1 (unreliable transports only).
    fn start_retransmit(&mut self, now: Instant) {
        let t1 = self.timers.t1;
        self.retransmit = if self.reliable {
            None
        } else {
            now.checked_add(t1)
                .map(|at| Retransmit { at, interval: t1 })
        };
    }

    /// Re-arms the retransmission timer that just fired with a new interval.
    fn rearm_retransmit(&mut self, now: Instant, interval: Duration) {
        self.retransmit = self.retransmit.and_then(|r| {
            let at =
                r.at.checked_add(interval)
                    .filter(|at| *at > now)
                    .or_else(|| now.checked_add(interval))?;
            Some(Retransmit { at, interval })
        });
    }

    /// The interval following `interval`: doubled, capped at T2.
    fn backoff(&self, interval: Duration) -> Duration {
        interval.saturating_mul(2).min(self.timers.t2)
    }

    fn set_expiry(&mut self, now: Instant, after: Duration) {
        self.expiry = now.checked_add(after);
    }

    fn stop_timers(&mut self) {
        self.retransmit = None;
        self.expiry = None;
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.retransmit.map(|r| r.at), self.expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest timer due at or before `now`; on a tie the expiry wins.
    fn due(&self, now: Instant) -> Option<Due> {
        let expiry = self.expiry.filter(|at| *at <= now);
        let retransmit = self.retransmit.map(|r| r.at).filter(|at| *at <= now);
        match (expiry, retransmit) {
            (Some(e), Some(r)) if r < e => Some(Due::Retransmit),
            (Some(_), _) => Some(Due::Expiry),
            (None, Some(_)) => Some(Due::Retransmit),
            (None, None) => None,
        }
    }
}

/// The timer-driven half of a machine, shared by `handle_timeout`.
trait Timed {
    fn core_mut(&mut self) -> &mut Core;
    /// The retransmission timer fired: resend and re-arm (or clear) it.
    fn fire_retransmit(&mut self, now: Instant);
    /// The expiry timer fired (it has already been cleared).
    fn fire_expiry(&mut self);
}

/// Fires every timer due at or before `now`, in chronological order, with at
/// most one retransmission per call.
fn drive<T: Timed>(tx: &mut T, now: Instant) {
    let mut retransmitted = false;
    while let Some(due) = tx.core_mut().due(now) {
        match due {
            Due::Expiry => {
                tx.core_mut().expiry = None;
                tx.fire_expiry();
            }
            Due::Retransmit if !retransmitted => {
                retransmitted = true;
                tx.fire_retransmit(now);
            }
            Due::Retransmit => break,
        }
    }
}

fn is_valid(status: u16) -> bool {
    (100..=699).contains(&status)
}

/// Generates the output-side methods every machine shares.
macro_rules! common_methods {
    ($state:ident) => {
        /// The current state.
        pub fn state(&self) -> $state {
            self.state
        }

        /// The next message to hand to the transport, if any.
        pub fn poll_transmit(&mut self) -> Option<Bytes> {
            self.core.transmit.pop_front()
        }

        /// The earliest pending timer, if any.
        pub fn poll_timeout(&self) -> Option<Instant> {
            self.core.poll_timeout()
        }

        /// Fires every timer due at or before `now`.
        pub fn handle_timeout(&mut self, now: Instant) {
            drive(self, now);
        }

        /// The next event for the transaction user, if any.
        pub fn poll_event(&mut self) -> Option<TxEvent> {
            self.core.events.pop_front()
        }

        /// Whether the transaction reached `Terminated` (drain `poll_transmit`
        /// and `poll_event` before dropping it).
        pub fn is_terminated(&self) -> bool {
            self.state == $state::Terminated
        }

        /// Whether the transport is reliable (no retransmissions, zero-length
        /// wait timers).
        pub fn is_reliable(&self) -> bool {
            self.core.reliable
        }

        fn terminate(&mut self) {
            self.core.stop_timers();
            if self.state != $state::Terminated {
                self.state = $state::Terminated;
                self.core.events.push_back(TxEvent::Terminated);
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Server INVITE (RFC 3261 §17.2.1, RFC 6026 §7.1)
// ---------------------------------------------------------------------------

/// States of a server INVITE transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
    Terminated,
}

/// Server INVITE transaction (RFC 3261 §17.2.1 with the RFC 6026 `Accepted` state).
///
/// Unlike RFC 6026, where the TU core retransmits 2xx responses, this machine
/// retransmits the 2xx itself while `Accepted` and gives up after 64*T1.
#[derive(Debug)]
pub struct ServerInviteTx {
    core: Core,
    state: ServerInviteState,
    provisional: Option<Bytes>,
    final_response: Option<Bytes>,
}

impl ServerInviteTx {
    /// A new transaction in `Proceeding`; nothing is queued (send 100 Trying via [`respond`](Self::respond)).
    pub fn new(reliable: bool, timers: Timers) -> Self {
        ServerInviteTx {
            core: Core::new(reliable, timers),
            state: ServerInviteState::Proceeding,
            provisional: None,
            final_response: None,
        }
    }

    /// Send a response (any status 100-699). 1xx: stays Proceeding, remembered for retransmitted INVITEs. 2xx: -> Accepted (RFC 6026): we retransmit the 2xx ourselves at T1, 2*T1, ... capped at T2 (only if !reliable) until on_ack; after 64*T1 without ACK -> event AckTimeout then Terminated. 3xx-6xx: -> Completed: Timer G retransmits (unreliable only, T1 doubling capped at T2), Timer H = 64*T1 -> AckTimeout + Terminated. Ignored (returns false) once a final response was sent, except 2xx retransmission handled internally. Queues the bytes for transmission.
    pub fn respond(&mut self, status: u16, wire: Bytes, now: Instant) -> bool {
        if self.state != ServerInviteState::Proceeding || !is_valid(status) {
            return false;
        }
        self.core.send(&wire);
        if status < 200 {
            self.provisional = Some(wire);
            return true;
        }
        self.state = if status < 300 {
            ServerInviteState::Accepted
        } else {
            ServerInviteState::Completed
        };
        self.final_response = Some(wire);
        self.core.start_retransmit(now);
        let timeout = self.core.timers.timeout();
        self.core.set_expiry(now, timeout);
        true
    }

    /// A retransmitted INVITE arrived: in Proceeding resend the last provisional (if any), in Completed resend the final, in Accepted resend the 2xx; otherwise nothing.
    pub fn on_request_retransmit(&mut self, _now: Instant) {
        let resend = match self.state {
            ServerInviteState::Proceeding => self.provisional.as_ref(),
            ServerInviteState::Completed | ServerInviteState::Accepted => {
                self.final_response.as_ref()
            }
            ServerInviteState::Confirmed | ServerInviteState::Terminated => None,
        };
        if let Some(wire) = resend.cloned() {
            self.core.send(&wire);
        }
    }

    /// ACK for this transaction: Completed -> Confirmed (Timer I = T4 unreliable, 0 reliable, then Terminated); Accepted -> Terminated (2xx acknowledged; stop retransmitting).
    ///
    /// On a reliable transport Timer I is zero, so the transaction passes
    /// through `Confirmed` and is `Terminated` when this returns.
    pub fn on_ack(&mut self, now: Instant) {
        match self.state {
            ServerInviteState::Completed => {
                self.core.stop_timers();
                if self.core.reliable {
                    self.terminate();
                } else {
                    self.state = ServerInviteState::Confirmed;
                    let t4 = self.core.timers.t4;
                    self.core.set_expiry(now, t4);
                }
            }
            ServerInviteState::Accepted => self.terminate(),
            _ => {}
        }
    }

    common_methods!(ServerInviteState);
}

impl Timed for ServerInviteTx {
    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn fire_retransmit(&mut self, now: Instant) {
        match (
            self.state,
            self.final_response.clone(),
            self.core.retransmit,
        ) {
            (ServerInviteState::Completed | ServerInviteState::Accepted, Some(wire), Some(r)) => {
                self.core.send(&wire);
                let next = self.core.backoff(r.interval);
                self.core.rearm_retransmit(now, next);
            }
            _ => self.core.retransmit = None,
        }
    }

    fn fire_expiry(&mut self) {
        match self.state {
            // Timer H, or the 2xx give-up time.
            ServerInviteState::Completed | ServerInviteState::Accepted => {
                self.core.events.push_back(TxEvent::AckTimeout);
                self.terminate();
            }
            // Timer I.
            ServerInviteState::Confirmed => self.terminate(),
            ServerInviteState::Proceeding | ServerInviteState::Terminated => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Server non-INVITE (RFC 3261 §17.2.2)
// ---------------------------------------------------------------------------

/// States of a server non-INVITE transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// Server non-INVITE transaction (RFC 3261 §17.2.2).
#[derive(Debug)]
pub struct ServerNonInviteTx {
    core: Core,
    state: ServerNonInviteState,
    last: Option<Bytes>,
}

impl ServerNonInviteTx {
    /// A new transaction in `Trying`; nothing is queued.
    pub fn new(reliable: bool, timers: Timers) -> Self {
        ServerNonInviteTx {
            core: Core::new(reliable, timers),
            state: ServerNonInviteState::Trying,
            last: None,
        }
    }

    /// Send a response (100-699) and queue it. 1xx: -> Proceeding. Final:
    /// -> Completed, where Timer J (64*T1) keeps the transaction absorbing
    /// retransmitted requests; on a reliable transport J is zero and the
    /// transaction is `Terminated` when this returns. Returns false (and sends
    /// nothing) once a final response was sent.
    pub fn respond(&mut self, status: u16, wire: Bytes, now: Instant) -> bool {
        let open = matches!(
            self.state,
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding
        );
        if !open || !is_valid(status) {
            return false;
        }
        self.core.send(&wire);
        self.last = Some(wire);
        if status < 200 {
            self.state = ServerNonInviteState::Proceeding;
        } else if self.core.reliable {
            self.state = ServerNonInviteState::Completed;
            self.terminate();
        } else {
            self.state = ServerNonInviteState::Completed;
            let timeout = self.core.timers.timeout();
            self.core.set_expiry(now, timeout);
        }
        true
    }

    /// A retransmitted request arrived: in Proceeding or Completed resend the
    /// last response; otherwise nothing.
    pub fn on_request_retransmit(&mut self, _now: Instant) {
        if matches!(
            self.state,
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed
        ) {
            if let Some(wire) = self.last.clone() {
                self.core.send(&wire);
            }
        }
    }

    common_methods!(ServerNonInviteState);
}

impl Timed for ServerNonInviteTx {
    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn fire_retransmit(&mut self, _now: Instant) {
        self.core.retransmit = None;
    }

    fn fire_expiry(&mut self) {
        // Timer J.
        if self.state == ServerNonInviteState::Completed {
            self.terminate();
        }
    }
}

// ---------------------------------------------------------------------------
// Client INVITE (RFC 3261 §17.1.1)
// ---------------------------------------------------------------------------

/// States of a client INVITE transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    Completed,
    Terminated,
}

/// Client INVITE transaction (RFC 3261 §17.1.1).
///
/// In `Proceeding` no timer runs: the TU bounds the wait for a final response
/// itself (Timer C, CANCEL).
#[derive(Debug)]
pub struct ClientInviteTx {
    core: Core,
    state: ClientInviteState,
    request: Bytes,
    ack: Option<Bytes>,
}

impl ClientInviteTx {
    /// Queues the INVITE for transmission at once. Timer A retransmits (unreliable only) at T1, doubling with no cap (RFC 3261 17.1.1.2); Timer B = 64*T1 -> event Timeout then Terminated.
    pub fn new(request: Bytes, reliable: bool, timers: Timers, now: Instant) -> Self {
        let mut core = Core::new(reliable, timers);
        core.send(&request);
        core.start_retransmit(now);
        core.set_expiry(now, timers.timeout());
        ClientInviteTx {
            core,
            state: ClientInviteState::Calling,
            request,
            ack: None,
        }
    }

    /// A response arrived; returns whether to pass it to the TU.
    ///
    /// * 1xx in Calling/Proceeding: -> Proceeding (Timers A and B stop), true.
    ///   Every provisional is passed up (RFC 3261 §17.1.1.2): the machine
    ///   cannot tell a retransmission from a new provisional (another To tag,
    ///   a 183 with SDP) by status code alone.
    /// * 2xx: always true (the TU acknowledges every 2xx); in Calling/Proceeding
    ///   -> Terminated.
    /// * 3xx-6xx in Calling/Proceeding: -> Completed, true; the caller must then
    ///   call [`send_ack`](Self::send_ack). Timer D (32 s) starts now; on a
    ///   reliable transport D is zero counted from the ACK, so `send_ack`
    ///   terminates the transaction (the 32 s timer is kept as a guard
    ///   should the ACK never be supplied). In Completed a retransmitted final
    ///   re-queues the ACK and returns false.
    /// * Anything else (including statuses outside 100-699): false.
    pub fn on_response(&mut self, status: u16, now: Instant) -> bool {
        let open = matches!(
            self.state,
            ClientInviteState::Calling | ClientInviteState::Proceeding
        );
        match status {
            100..=199 if open => {
                self.state = ClientInviteState::Proceeding;
                self.core.stop_timers();
                true
            }
            200..=299 => {
                if open {
                    self.terminate();
                }
                true
            }
            300..=699 if open => {
                self.state = ClientInviteState::Completed;
                self.core.stop_timers();
                self.core.set_expiry(now, TIMER_D);
                true
            }
            300..=699 if self.state == ClientInviteState::Completed => {
                if let Some(ack) = self.ack.clone() {
                    self.core.send(&ack);
                }
                false
            }
            _ => false,
        }
    }

    /// Queues the ACK for a 3xx-6xx response (Completed only; ignored
    /// otherwise). The ACK is remembered and resent for every retransmitted
    /// final response. On a reliable transport this terminates the
    /// transaction (Timer D = 0).
    pub fn send_ack(&mut self, ack: Bytes, _now: Instant) {
        if self.state != ClientInviteState::Completed {
            return;
        }
        self.core.send(&ack);
        self.ack = Some(ack);
        if self.core.reliable {
            self.terminate();
        }
    }

    common_methods!(ClientInviteState);
}

impl Timed for ClientInviteTx {
    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn fire_retransmit(&mut self, now: Instant) {
        match (self.state, self.core.retransmit) {
            // Timer A.
            (ClientInviteState::Calling, Some(r)) => {
                let request = self.request.clone();
                self.core.send(&request);
                self.core
                    .rearm_retransmit(now, r.interval.saturating_mul(2));
            }
            _ => self.core.retransmit = None,
        }
    }

    fn fire_expiry(&mut self) {
        match self.state {
            // Timer B.
            ClientInviteState::Calling => {
                self.core.events.push_back(TxEvent::Timeout);
                self.terminate();
            }
            // Timer D.
            ClientInviteState::Completed => self.terminate(),
            ClientInviteState::Proceeding | ClientInviteState::Terminated => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Client non-INVITE (RFC 3261 §17.1.2)
// ---------------------------------------------------------------------------

/// States of a client non-INVITE transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// Client non-INVITE transaction (RFC 3261 §17.1.2).
#[derive(Debug)]
pub struct ClientNonInviteTx {
    core: Core,
    state: ClientNonInviteState,
    request: Bytes,
}

impl ClientNonInviteTx {
    /// Queues the request for transmission at once. Timer E retransmits
    /// (unreliable only) at T1 doubling capped at T2 in Trying, every T2 in
    /// Proceeding; Timer F = 64*T1 -> event Timeout then Terminated.
    pub fn new(request: Bytes, reliable: bool, timers: Timers, now: Instant) -> Self {
        let mut core = Core::new(reliable, timers);
        core.send(&request);
        core.start_retransmit(now);
        core.set_expiry(now, timers.timeout());
        ClientNonInviteTx {
            core,
            state: ClientNonInviteState::Trying,
            request,
        }
    }

    /// A response arrived; returns whether to pass it to the TU.
    ///
    /// * 1xx in Trying/Proceeding: -> Proceeding, true (every provisional is
    ///   passed up, as RFC 3261 §17.1.2.2 requires). Timers E and F keep running.
    /// * 2xx-6xx in Trying/Proceeding: -> Completed, true; Timer K = T4
    ///   (unreliable) absorbs retransmitted finals, then Terminated. On a
    ///   reliable transport K is zero and the transaction is `Terminated`
    ///   when this returns.
    /// * Anything else (retransmitted finals, statuses outside 100-699): false.
    pub fn on_response(&mut self, status: u16, now: Instant) -> bool {
        let open = matches!(
            self.state,
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding
        );
        if !open || !is_valid(status) {
            return false;
        }
        if status < 200 {
            self.state = ClientNonInviteState::Proceeding;
            return true;
        }
        self.state = ClientNonInviteState::Completed;
        self.core.stop_timers();
        if self.core.reliable {
            self.terminate();
        } else {
            let t4 = self.core.timers.t4;
            self.core.set_expiry(now, t4);
        }
        true
    }

    common_methods!(ClientNonInviteState);
}

impl Timed for ClientNonInviteTx {
    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn fire_retransmit(&mut self, now: Instant) {
        // Timer E.
        let next = match (self.state, self.core.retransmit) {
            (ClientNonInviteState::Trying, Some(r)) => self.core.backoff(r.interval),
            (ClientNonInviteState::Proceeding, Some(_)) => self.core.timers.t2,
            _ => {
                self.core.retransmit = None;
                return;
            }
        };
        let request = self.request.clone();
        self.core.send(&request);
        self.core.rearm_retransmit(now, next);
    }

    fn fire_expiry(&mut self) {
        match self.state {
            // Timer F.
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                self.core.events.push_back(TxEvent::Timeout);
                self.terminate();
            }
            // Timer K.
            ClientNonInviteState::Completed => self.terminate(),
            ClientNonInviteState::Terminated => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Uniform access to the four machines for the helpers below.
    trait Drive {
        fn transmit(&mut self) -> Option<Bytes>;
        fn timeout(&self) -> Option<Instant>;
        fn fire(&mut self, now: Instant);
        fn event(&mut self) -> Option<TxEvent>;
    }

    macro_rules! impl_drive {
        ($($t:ty),*) => {$(
            impl Drive for $t {
                fn transmit(&mut self) -> Option<Bytes> {
                    self.poll_transmit()
                }
                fn timeout(&self) -> Option<Instant> {
                    self.poll_timeout()
                }
                fn fire(&mut self, now: Instant) {
                    self.handle_timeout(now)
                }
                fn event(&mut self) -> Option<TxEvent> {
                    self.poll_event()
                }
            }
        )*};
    }
    impl_drive!(
        ServerInviteTx,
        ServerNonInviteTx,
        ClientInviteTx,
        ClientNonInviteTx
    );

    fn drain<D: Drive>(d: &mut D) -> Vec<Bytes> {
        std::iter::from_fn(|| d.transmit()).collect()
    }

    fn events<D: Drive>(d: &mut D) -> Vec<TxEvent> {
        std::iter::from_fn(|| d.event()).collect()
    }

    /// Fires every timer up to and including `until`, each exactly at its
    /// deadline; returns the offsets from `start` at which something was sent.
    fn run<D: Drive>(d: &mut D, start: Instant, until: Instant) -> Vec<Duration> {
        let mut sent = Vec::new();
        while let Some(at) = d.timeout() {
            if at > until {
                break;
            }
            d.fire(at);
            while d.transmit().is_some() {
                sent.push(at - start);
            }
        }
        sent
    }

    fn offsets_ms(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|&m| ms(m)).collect()
    }

    const R486: Bytes = Bytes::from_static(b"SIP/2.0 486 Busy Here\r\n\r\n");
    const R200: Bytes = Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n");
    const R180: Bytes = Bytes::from_static(b"SIP/2.0 180 Ringing\r\n\r\n");
    const R100: Bytes = Bytes::from_static(b"SIP/2.0 100 Trying\r\n\r\n");
    const INVITE: Bytes = Bytes::from_static(b"INVITE sip:a@b SIP/2.0\r\n\r\n");
    const OPTIONS: Bytes = Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n");
    const ACK: Bytes = Bytes::from_static(b"ACK sip:a@b SIP/2.0\r\n\r\n");

    #[test]
    fn default_timers() {
        let t = Timers::default();
        assert_eq!((t.t1, t.t2, t.t4), (ms(500), ms(4000), ms(5000)));
        assert_eq!(t.timeout(), ms(32_000));
    }

    // --- server INVITE ---------------------------------------------------

    #[test]
    fn server_invite_udp_non2xx_timer_g_then_h() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(false, Timers::default());
        assert_eq!(drain(&mut tx), Vec::<Bytes>::new());
        assert!(tx.respond(100, R100, t0));
        assert!(tx.respond(486, R486, t0));
        assert_eq!(tx.state(), ServerInviteState::Completed);
        assert_eq!(drain(&mut tx), vec![R100, R486]);
        assert!(!tx.respond(200, R200, t0));
        assert!(drain(&mut tx).is_empty());

        let sent = run(&mut tx, t0, t0 + ms(31_999));
        assert_eq!(
            sent,
            offsets_ms(&[500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500])
        );
        assert_eq!(sent.len(), 10);
        assert!(events(&mut tx).is_empty());
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));

        tx.handle_timeout(t0 + ms(32_000));
        assert!(drain(&mut tx).is_empty());
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::AckTimeout, TxEvent::Terminated]
        );
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        tx.on_ack(t0 + ms(33_000));
        tx.on_request_retransmit(t0 + ms(33_000));
        assert!(drain(&mut tx).is_empty());
        assert!(events(&mut tx).is_empty());
    }

    #[test]
    fn server_invite_udp_ack_confirms() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(false, Timers::default());
        assert!(tx.respond(486, R486, t0));
        drain(&mut tx);
        assert_eq!(run(&mut tx, t0, t0 + ms(1_000)), offsets_ms(&[500]));
        tx.on_ack(t0 + ms(1_000));
        assert_eq!(tx.state(), ServerInviteState::Confirmed);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(6_000)));
        // Retransmitted INVITEs and ACKs are absorbed in Confirmed.
        tx.on_request_retransmit(t0 + ms(2_000));
        tx.on_ack(t0 + ms(2_000));
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(6_000)));
        assert!(run(&mut tx, t0, t0 + ms(5_999)).is_empty());
        assert!(events(&mut tx).is_empty());
        assert!(run(&mut tx, t0, t0 + ms(60_000)).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(tx.state(), ServerInviteState::Terminated);
    }

    #[test]
    fn server_invite_tcp_no_retransmission_ack_terminates_at_once() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(true, Timers::default());
        assert!(tx.is_reliable());
        assert!(tx.respond(486, R486, t0));
        assert_eq!(drain(&mut tx), vec![R486]);
        // Only Timer H is pending.
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        tx.on_request_retransmit(t0 + ms(200));
        assert_eq!(drain(&mut tx), vec![R486]);
        tx.on_ack(t0 + ms(1_000));
        assert_eq!(tx.state(), ServerInviteState::Terminated);
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
        assert!(run(&mut tx, t0, t0 + ms(60_000)).is_empty());
    }

    #[test]
    fn server_invite_tcp_timer_h() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(true, Timers::default());
        tx.respond(603, R486, t0);
        drain(&mut tx);
        assert!(run(&mut tx, t0, t0 + ms(32_000)).is_empty());
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::AckTimeout, TxEvent::Terminated]
        );
    }

    #[test]
    fn server_invite_2xx_retransmitted_until_ack() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(false, Timers::default());
        assert!(tx.respond(180, R180, t0));
        assert!(tx.respond(200, R200, t0 + ms(1_000)));
        assert_eq!(tx.state(), ServerInviteState::Accepted);
        assert_eq!(drain(&mut tx), vec![R180, R200]);
        // A retransmitted INVITE gets the 2xx.
        tx.on_request_retransmit(t0 + ms(1_100));
        assert_eq!(drain(&mut tx), vec![R200]);
        assert_eq!(
            run(&mut tx, t0, t0 + ms(5_000)),
            offsets_ms(&[1_500, 2_500, 4_500])
        );
        tx.on_ack(t0 + ms(5_000));
        assert_eq!(tx.state(), ServerInviteState::Terminated);
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
        assert!(run(&mut tx, t0, t0 + ms(60_000)).is_empty());
    }

    #[test]
    fn server_invite_2xx_ack_timeout() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(false, Timers::default());
        assert!(tx.respond(200, R200, t0));
        drain(&mut tx);
        let sent = run(&mut tx, t0, t0 + ms(31_999));
        assert_eq!(
            sent,
            offsets_ms(&[500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500])
        );
        assert!(events(&mut tx).is_empty());
        assert!(run(&mut tx, t0, t0 + ms(32_000)).is_empty());
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::AckTimeout, TxEvent::Terminated]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_2xx_over_tcp_is_not_retransmitted() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(true, Timers::default());
        assert!(tx.respond(200, R200, t0));
        assert_eq!(drain(&mut tx), vec![R200]);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        assert!(run(&mut tx, t0, t0 + ms(32_000)).is_empty());
        assert_eq!(
            events(&mut tx),
            vec![TxEvent::AckTimeout, TxEvent::Terminated]
        );
    }

    #[test]
    fn server_invite_retransmitted_invite_in_proceeding() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(false, Timers::default());
        // Nothing sent yet: nothing to resend.
        tx.on_request_retransmit(t0);
        assert!(drain(&mut tx).is_empty());
        assert!(tx.respond(100, R100, t0));
        assert!(tx.respond(180, R180, t0));
        drain(&mut tx);
        tx.on_request_retransmit(t0 + ms(500));
        assert_eq!(drain(&mut tx), vec![R180]);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        // Provisionals arm no timer; an early ACK is ignored.
        assert_eq!(tx.poll_timeout(), None);
        tx.on_ack(t0 + ms(600));
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        // In Completed the final is resent.
        assert!(tx.respond(486, R486, t0 + ms(1_000)));
        drain(&mut tx);
        tx.on_request_retransmit(t0 + ms(1_100));
        assert_eq!(drain(&mut tx), vec![R486]);
    }

    #[test]
    fn server_invite_rejects_out_of_range_status() {
        let t0 = Instant::now();
        let mut tx = ServerInviteTx::new(false, Timers::default());
        assert!(!tx.respond(99, R100, t0));
        assert!(!tx.respond(700, R486, t0));
        assert!(!tx.respond(0, R486, t0));
        assert!(drain(&mut tx).is_empty());
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
    }

    // --- server non-INVITE -----------------------------------------------

    #[test]
    fn server_non_invite_udp_timer_j() {
        let t0 = Instant::now();
        let mut tx = ServerNonInviteTx::new(false, Timers::default());
        assert_eq!(tx.state(), ServerNonInviteState::Trying);
        tx.on_request_retransmit(t0);
        assert!(drain(&mut tx).is_empty());
        assert!(tx.respond(100, R100, t0));
        assert_eq!(tx.state(), ServerNonInviteState::Proceeding);
        tx.on_request_retransmit(t0 + ms(100));
        assert_eq!(drain(&mut tx), vec![R100, R100]);
        assert_eq!(tx.poll_timeout(), None);

        assert!(tx.respond(200, R200, t0 + ms(1_000)));
        assert_eq!(tx.state(), ServerNonInviteState::Completed);
        assert!(!tx.respond(404, R486, t0 + ms(1_000)));
        assert_eq!(drain(&mut tx), vec![R200]);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(33_000)));

        // Retransmitted requests are answered for the whole of Timer J...
        for at in [2_000, 10_000, 32_999] {
            assert!(run(&mut tx, t0, t0 + ms(at)).is_empty());
            tx.on_request_retransmit(t0 + ms(at));
            assert_eq!(drain(&mut tx), vec![R200]);
        }
        assert!(events(&mut tx).is_empty());
        // ...and not afterwards.
        assert!(run(&mut tx, t0, t0 + ms(33_000)).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert!(tx.is_terminated());
        tx.on_request_retransmit(t0 + ms(34_000));
        assert!(drain(&mut tx).is_empty());
    }

    #[test]
    fn server_non_invite_tcp_terminates_with_final() {
        let t0 = Instant::now();
        let mut tx = ServerNonInviteTx::new(true, Timers::default());
        assert!(tx.respond(200, R200, t0));
        assert!(tx.is_terminated());
        // The response stays queued after termination.
        assert_eq!(drain(&mut tx), vec![R200]);
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
        tx.on_request_retransmit(t0);
        assert!(drain(&mut tx).is_empty());
    }

    // --- client INVITE ---------------------------------------------------

    #[test]
    fn client_invite_udp_timer_a_then_b() {
        let t0 = Instant::now();
        let mut tx = ClientInviteTx::new(INVITE, false, Timers::default(), t0);
        assert_eq!(tx.state(), ClientInviteState::Calling);
        assert_eq!(drain(&mut tx), vec![INVITE]);
        let sent = run(&mut tx, t0, t0 + ms(31_999));
        assert_eq!(
            sent,
            offsets_ms(&[500, 1_500, 3_500, 7_500, 15_500, 31_500])
        );
        assert_eq!(1 + sent.len(), 7);
        assert!(events(&mut tx).is_empty());
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        tx.handle_timeout(t0 + ms(32_000));
        assert!(drain(&mut tx).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        // A late 2xx still reaches the TU (it must ACK and BYE it).
        assert!(tx.on_response(200, t0 + ms(33_000)));
        assert!(!tx.on_response(486, t0 + ms(33_000)));
        assert!(events(&mut tx).is_empty());
    }

    #[test]
    fn client_invite_provisional_stops_retransmission() {
        let t0 = Instant::now();
        let mut tx = ClientInviteTx::new(INVITE, false, Timers::default(), t0);
        drain(&mut tx);
        assert_eq!(run(&mut tx, t0, t0 + ms(1_000)), offsets_ms(&[500]));
        assert!(tx.on_response(180, t0 + ms(1_000)));
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
        assert_eq!(tx.poll_timeout(), None);
        assert!(run(&mut tx, t0, t0 + ms(120_000)).is_empty());
        assert!(events(&mut tx).is_empty());
        // Further provisionals are passed up too.
        assert!(tx.on_response(183, t0 + ms(2_000)));
        assert!(tx.on_response(200, t0 + ms(3_000)));
        assert_eq!(tx.state(), ClientInviteState::Terminated);
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        // Retransmitted 2xx: passed up for the TU to re-ACK, no second event.
        assert!(tx.on_response(200, t0 + ms(3_500)));
        assert!(events(&mut tx).is_empty());
        assert!(drain(&mut tx).is_empty());
    }

    #[test]
    fn client_invite_udp_non2xx_acked_and_timer_d() {
        let t0 = Instant::now();
        let mut tx = ClientInviteTx::new(INVITE, false, Timers::default(), t0);
        drain(&mut tx);
        assert_eq!(run(&mut tx, t0, t0 + ms(2_000)), offsets_ms(&[500, 1_500]));
        assert!(tx.on_response(486, t0 + ms(2_000)));
        assert_eq!(tx.state(), ClientInviteState::Completed);
        // A retransmission before the TU supplied the ACK: nothing to send.
        assert!(!tx.on_response(486, t0 + ms(2_000)));
        assert!(drain(&mut tx).is_empty());
        tx.send_ack(ACK, t0 + ms(2_000));
        assert_eq!(drain(&mut tx), vec![ACK]);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(34_000)));
        // Each retransmitted final is absorbed and answered with the ACK.
        assert!(!tx.on_response(486, t0 + ms(2_500)));
        assert_eq!(drain(&mut tx), vec![ACK]);
        assert!(!tx.on_response(180, t0 + ms(2_600)));
        assert!(run(&mut tx, t0, t0 + ms(33_999)).is_empty());
        assert!(events(&mut tx).is_empty());
        assert!(run(&mut tx, t0, t0 + ms(34_000)).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert!(!tx.on_response(486, t0 + ms(35_000)));
        tx.send_ack(ACK, t0 + ms(35_000));
        assert!(drain(&mut tx).is_empty());
    }

    #[test]
    fn client_invite_tcp() {
        let t0 = Instant::now();
        let mut tx = ClientInviteTx::new(INVITE, true, Timers::default(), t0);
        assert_eq!(drain(&mut tx), vec![INVITE]);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        assert!(run(&mut tx, t0, t0 + ms(32_000)).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);

        let mut tx = ClientInviteTx::new(INVITE, true, Timers::default(), t0);
        drain(&mut tx);
        assert!(tx.on_response(486, t0 + ms(100)));
        assert_eq!(tx.state(), ClientInviteState::Completed);
        tx.send_ack(ACK, t0 + ms(100));
        assert_eq!(drain(&mut tx), vec![ACK]);
        assert!(tx.is_terminated());
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
    }

    // --- client non-INVITE -----------------------------------------------

    #[test]
    fn client_non_invite_udp_timer_e_then_f() {
        let t0 = Instant::now();
        let mut tx = ClientNonInviteTx::new(OPTIONS, false, Timers::default(), t0);
        assert_eq!(tx.state(), ClientNonInviteState::Trying);
        assert_eq!(drain(&mut tx), vec![OPTIONS]);
        let sent = run(&mut tx, t0, t0 + ms(31_999));
        assert_eq!(
            sent,
            offsets_ms(&[500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500])
        );
        // The original plus ten retransmissions before Timer F.
        assert_eq!(1 + sent.len(), 11);
        assert!(events(&mut tx).is_empty());
        tx.handle_timeout(t0 + ms(32_000));
        assert!(drain(&mut tx).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
        assert!(tx.is_terminated());
        assert!(!tx.on_response(200, t0 + ms(33_000)));
    }

    #[test]
    fn client_non_invite_proceeding_retransmits_every_t2() {
        let t0 = Instant::now();
        let mut tx = ClientNonInviteTx::new(OPTIONS, false, Timers::default(), t0);
        drain(&mut tx);
        assert!(tx.on_response(100, t0 + ms(200)));
        assert_eq!(tx.state(), ClientNonInviteState::Proceeding);
        assert!(tx.on_response(100, t0 + ms(300)));
        let sent = run(&mut tx, t0, t0 + ms(32_000));
        assert_eq!(
            sent,
            offsets_ms(&[500, 4_500, 8_500, 12_500, 16_500, 20_500, 24_500, 28_500])
        );
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn client_non_invite_tcp_single_transmit_and_timer_f() {
        let t0 = Instant::now();
        let mut tx = ClientNonInviteTx::new(OPTIONS, true, Timers::default(), t0);
        assert_eq!(drain(&mut tx), vec![OPTIONS]);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        assert!(run(&mut tx, t0, t0 + ms(32_000)).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn client_non_invite_final_then_timer_k() {
        let t0 = Instant::now();
        let mut tx = ClientNonInviteTx::new(OPTIONS, false, Timers::default(), t0);
        drain(&mut tx);
        assert_eq!(run(&mut tx, t0, t0 + ms(1_000)), offsets_ms(&[500]));
        assert!(tx.on_response(200, t0 + ms(1_000)));
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(6_000)));
        // Retransmitted finals are absorbed.
        assert!(!tx.on_response(200, t0 + ms(2_000)));
        assert!(!tx.on_response(100, t0 + ms(2_000)));
        assert!(run(&mut tx, t0, t0 + ms(5_999)).is_empty());
        assert!(events(&mut tx).is_empty());
        assert!(run(&mut tx, t0, t0 + ms(6_000)).is_empty());
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);

        // Reliable: Timer K is zero.
        let mut tx = ClientNonInviteTx::new(OPTIONS, true, Timers::default(), t0);
        drain(&mut tx);
        assert!(tx.on_response(404, t0 + ms(100)));
        assert!(tx.is_terminated());
        assert_eq!(events(&mut tx), vec![TxEvent::Terminated]);
        assert_eq!(tx.poll_timeout(), None);
    }

    // --- robustness --------------------------------------------------------

    #[test]
    fn late_timeout_handling_retransmits_once() {
        let t0 = Instant::now();
        let mut tx = ClientInviteTx::new(INVITE, false, Timers::default(), t0);
        drain(&mut tx);
        // Handled 10 s late: one retransmission, not a burst of four.
        tx.handle_timeout(t0 + ms(10_000));
        assert_eq!(drain(&mut tx), vec![INVITE]);
        let next = tx.poll_timeout().unwrap();
        assert!(next > t0 + ms(10_000));
        // Handled long after Timer B: the retransmission due before B fires
        // once, then B.
        tx.handle_timeout(t0 + ms(100_000));
        assert_eq!(drain(&mut tx), vec![INVITE]);
        assert_eq!(events(&mut tx), vec![TxEvent::Timeout, TxEvent::Terminated]);
    }

    #[test]
    fn degenerate_timers_do_not_panic_or_hang() {
        let t0 = Instant::now();
        for timers in [
            Timers {
                t1: Duration::ZERO,
                t2: Duration::ZERO,
                t4: Duration::ZERO,
            },
            Timers {
                t1: Duration::MAX,
                t2: Duration::MAX,
                t4: Duration::MAX,
            },
        ] {
            let mut a = ClientInviteTx::new(INVITE, false, timers, t0);
            a.handle_timeout(t0);
            let mut b = ClientNonInviteTx::new(OPTIONS, false, timers, t0);
            b.handle_timeout(t0);
            let mut c = ServerInviteTx::new(false, timers);
            c.respond(486, R486, t0);
            c.handle_timeout(t0);
            let mut d = ServerNonInviteTx::new(false, timers);
            d.respond(200, R200, t0);
            d.handle_timeout(t0);
        }
    }

    /// Every call in every order: no panic, at most one Terminated event, and
    /// Terminated is final.
    #[test]
    fn arbitrary_call_orders() {
        let statuses = [0, 99, 100, 180, 200, 202, 302, 486, 503, 699, 700];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n
        };
        for round in 0..400 {
            let reliable = round % 2 == 0;
            let t0 = Instant::now();
            let mut now = t0;
            let mut si = ServerInviteTx::new(reliable, Timers::default());
            let mut sn = ServerNonInviteTx::new(reliable, Timers::default());
            let mut ci = ClientInviteTx::new(INVITE, reliable, Timers::default(), t0);
            let mut cn = ClientNonInviteTx::new(OPTIONS, reliable, Timers::default(), t0);
            let mut terminated = [0usize; 4];
            let mut was_terminated = [false; 4];
            for _ in 0..40 {
                now += ms(next(8_000) as u64);
                let status = statuses[next(statuses.len())];
                match next(6) {
                    0 => {
                        si.respond(status, R200, now);
                        sn.respond(status, R200, now);
                        ci.on_response(status, now);
                        cn.on_response(status, now);
                    }
                    1 => {
                        si.on_request_retransmit(now);
                        sn.on_request_retransmit(now);
                    }
                    2 => {
                        si.on_ack(now);
                        ci.send_ack(ACK, now);
                    }
                    _ => {
                        si.handle_timeout(now);
                        sn.handle_timeout(now);
                        ci.handle_timeout(now);
                        cn.handle_timeout(now);
                    }
                }
                drain(&mut si);
                drain(&mut sn);
                drain(&mut ci);
                drain(&mut cn);
                let evs = [
                    events(&mut si),
                    events(&mut sn),
                    events(&mut ci),
                    events(&mut cn),
                ];
                let terms = [
                    si.is_terminated(),
                    sn.is_terminated(),
                    ci.is_terminated(),
                    cn.is_terminated(),
                ];
                for i in 0..4 {
                    terminated[i] += evs[i].iter().filter(|e| **e == TxEvent::Terminated).count();
                    assert!(terminated[i] <= 1);
                    assert_eq!(terminated[i] == 1, terms[i]);
                    assert!(!was_terminated[i] || terms[i]);
                    if terms[i] {
                        assert!(evs[i].last().is_none_or(|e| *e == TxEvent::Terminated));
                    }
                    was_terminated[i] = terms[i];
                }
                if terms[0] {
                    assert_eq!(si.poll_timeout(), None);
                }
            }
        }
    }

    /// The intended driver loop, on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn driven_by_paused_tokio_clock() {
        let start = Instant::now();
        let mut tx = ClientNonInviteTx::new(OPTIONS, false, Timers::default(), start);
        let mut sent = Vec::new();
        let mut evs = Vec::new();
        loop {
            while tx.poll_transmit().is_some() {
                sent.push(Instant::now() - start);
            }
            evs.extend(std::iter::from_fn(|| tx.poll_event()));
            if tx.is_terminated() {
                break;
            }
            // A 200 OK arrives after 3 s.
            let answer_at = start + ms(3_000);
            let deadline = tx.poll_timeout().expect("a live transaction has a timer");
            if Instant::now() < answer_at && deadline > answer_at {
                tokio::time::sleep_until(answer_at).await;
                assert!(tx.on_response(200, Instant::now()));
            } else {
                tokio::time::sleep_until(deadline).await;
                tx.handle_timeout(Instant::now());
            }
        }
        assert_eq!(sent, offsets_ms(&[0, 500, 1_500]));
        assert_eq!(evs, vec![TxEvent::Terminated]);
        // Timer K ran from 3 s.
        assert_eq!(Instant::now() - start, ms(8_000));
    }
}
