//! The admission decision for one INVITE, and each trunk's live counters.
//!
//! [`Admission::decide`] runs these checks in this order; the first that fails answers:
//!
//! 1. **Caller trunk.** The trunk whose credentials passed digest auth
//!    ([`InviteFacts::authenticated_trunk`]) if it is in the snapshot, else the trunk whose
//!    whitelist contains the source address ([`Snapshot::trunk_for_source`]). Credentials win
//!    over the address because several trunks may share one source (one PBX, two accounts).
//! 2. **No trunk:** no credentials offered → 403 "Source IP not allowed", unless some active
//!    trunk takes credentials from any address (credentials and an empty whitelist, e.g. a PBX
//!    on a dynamic address): then [`Decision::Challenge`], since the caller may be that PBX.
//!    Credentials offered but not accepted (wrong, or a stale nonce) → [`Decision::Challenge`].
//! 3. **Credentials required:** the trunk has credentials and the INVITE did not authenticate
//!    for *that* trunk → [`Decision::Challenge`] (whether or not an Authorization was offered:
//!    stale and wrong look alike here, and a fresh 401 is what RFC 3261 §22 expects).
//! 4. **Trunk inactive** → 403 "Trunk inactive". After the challenge, so an unauthenticated
//!    party learns nothing about the trunk's state.
//! 5. **Dialled number** ([`check_e164`]) → 404 "Use E.164 format" or 484 "Address Incomplete".
//! 6. **Routing.** A number mapped in the snapshot belongs to its mapping's trunk, whichever
//!    identified trunk sent the INVITE: the call is *inbound* to that trunk, with the
//!    mapping's [`Mode`]. Its trunk missing from the snapshot → 404 "Number not mapped"; its
//!    trunk inactive → 403 "Trunk inactive". An unmapped E.164 number is an *outbound*
//!    (termination) call on the caller's trunk with [`Mode::Pstn`].
//! 7. **Concurrent calls** of the owning trunk at `max_concurrent_calls` → 486
//!    "Busy Here (trunk at its call limit)".
//! 8. **Calls per minute** of the owning trunk: `calls_per_minute` calls already admitted in
//!    the last [`CPM_WINDOW`] → 503 "Service Unavailable (calls per minute exceeded)" with
//!    Retry-After, the whole seconds until enough of them leave the window.
//!
//! On [`Decision::Admit`], `decide` itself counts the call on the owning trunk (one more
//! concurrent call and one entry in the minute window), so check and reservation are one step.
//! The caller must later report [`Admission::call_ended`] for that `trunk_sid` — when the
//! call ends, or when it fails before being answered. [`Admission::call_started`] is only for
//! calls that did not pass through `decide` (e.g. originated from the API).
//!
//! Only admitted calls enter the minute window: rejected attempts do not, so a caller
//! retrying into a full trunk cannot keep it full.
//!
//! The owning trunk's limits apply, not the caller's: a call from an upstream carrier trunk to
//! a customer's number counts against the customer's trunk only.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::model::{Mode, Snapshot, Trunk};

/// The sliding window `calls_per_minute` counts over.
pub const CPM_WINDOW: Duration = Duration::from_secs(60);

/// What the SIP layer knows about one INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InviteFacts<'a> {
    /// The packet's source address.
    pub source: IpAddr,
    /// The Request-URI user part, already percent-decoded, without URI parameters.
    pub dialled: &'a str,
    /// Set when digest auth succeeded against this trunk's credentials.
    pub authenticated_trunk: Option<&'a str>,
    /// An Authorization header was present.
    pub offered_credentials: bool,
}

/// The answer to one INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead. `trunk_sid` owns the call (its counters were incremented); `mode` says where
    /// the call goes.
    Admit { trunk_sid: String, mode: Mode },
    /// Answer 401 with a fresh digest challenge.
    Challenge,
    /// Answer `status` with `reason`; `retry_after` (seconds) becomes a Retry-After header.
    Reject {
        status: u16,
        reason: String,
        retry_after: Option<u32>,
    },
}

impl Decision {
    fn reject(status: u16, reason: &str) -> Self {
        Decision::Reject {
            status,
            reason: reason.to_string(),
            retry_after: None,
        }
    }
}

/// Checks that a Request-URI user part is an E.164 number: `+` then 8..=15 ASCII digits, the
/// first not `0` (no country code starts with 0).
///
/// Errors: 484 "Address Incomplete" for `+` followed by fewer than 8 digits (clearly a number
/// still being dialled); 404 "Use E.164 format" for anything else.
pub fn check_e164(user: &str) -> Result<(), (u16, &'static str)> {
    const NOT_E164: (u16, &str) = (404, "Use E.164 format");
    const INCOMPLETE: (u16, &str) = (484, "Address Incomplete");
    let digits = user.strip_prefix('+').ok_or(NOT_E164)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return Err(NOT_E164);
    }
    match digits.len() {
        0..=7 => Err(INCOMPLETE),
        8..=15 => Ok(()),
        _ => Err(NOT_E164),
    }
}

/// One trunk's live counters.
#[derive(Debug, Default)]
struct Counters {
    concurrent: u32,
    /// Admission times of the calls in the current minute window, oldest first. Never longer
    /// than the trunk's `calls_per_minute` at the time of each push.
    admitted: VecDeque<Instant>,
}

impl Counters {
    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.admitted.front() {
            if now.saturating_duration_since(t) >= CPM_WINDOW {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
    }

    /// `None` if a call may be admitted at `now` under `limit`, else the whole seconds to wait
    /// (`Some(None)` when no wait helps: a limit of 0).
    fn cpm_wait(&mut self, limit: u32, now: Instant) -> Option<Option<u32>> {
        self.expire(now);
        let limit = limit as usize;
        if self.admitted.len() < limit {
            return None;
        }
        if limit == 0 {
            return Some(None);
        }
        // Entries 0..=len-limit must leave the window before one more fits.
        let frees_at = self.admitted[self.admitted.len() - limit] + CPM_WINDOW;
        let wait = frees_at.saturating_duration_since(now);
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Some(Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX)))
    }
}

/// Live admission state: per-trunk concurrent calls and calls-per-minute windows, keyed by
/// trunk sid so they survive snapshot swaps.
#[derive(Debug, Default)]
pub struct Admission {
    trunks: HashMap<String, Counters>,
}

impl Admission {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides one INVITE (checks in the order given in the module docs) and, on
    /// [`Decision::Admit`], counts the call on the owning trunk.
    pub fn decide(&mut self, snapshot: &Snapshot, facts: &InviteFacts, now: Instant) -> Decision {
        let caller = facts
            .authenticated_trunk
            .and_then(|sid| snapshot.trunk(sid))
            .or_else(|| snapshot.trunk_for_source(facts.source));
        let Some(caller) = caller else {
            let open_to_credentials = snapshot
                .trunks
                .iter()
                .any(|t| t.active && t.has_credentials && t.whitelisted.is_empty());
            return if facts.offered_credentials || open_to_credentials {
                Decision::Challenge
            } else {
                Decision::reject(403, "Source IP not allowed")
            };
        };
        if caller.has_credentials && facts.authenticated_trunk != Some(caller.sid.as_str()) {
            return Decision::Challenge;
        }
        if !caller.active {
            return Decision::reject(403, "Trunk inactive");
        }
        if let Err((status, reason)) = check_e164(facts.dialled) {
            return Decision::reject(status, reason);
        }
        let (owner, mode): (&Trunk, Mode) = match snapshot.mapping(facts.dialled) {
            None => (caller, Mode::Pstn),
            Some(mapping) => match snapshot.trunk(&mapping.trunk_sid) {
                None => return Decision::reject(404, "Number not mapped"),
                Some(t) if !t.active => return Decision::reject(403, "Trunk inactive"),
                Some(t) => (t, mapping.mode.clone()),
            },
        };

        let counters = self.trunks.entry(owner.sid.clone()).or_default();
        if owner
            .max_concurrent_calls
            .is_some_and(|max| counters.concurrent >= max)
        {
            return Decision::reject(486, "Busy Here (trunk at its call limit)");
        }
        if let Some(retry_after) = counters.cpm_wait(owner.calls_per_minute, now) {
            return Decision::Reject {
                status: 503,
                reason: "Service Unavailable (calls per minute exceeded)".to_string(),
                retry_after,
            };
        }
        counters.concurrent += 1;
        counters.admitted.push_back(now);
        Decision::Admit {
            trunk_sid: owner.sid.clone(),
            mode,
        }
    }

    /// Counts a call that did not pass through [`decide`](Self::decide) (which counts its own
    /// admissions). Adds a concurrent call only; the minute window is `decide`'s.
    pub fn call_started(&mut self, trunk_sid: &str) {
        let c = self.trunks.entry(trunk_sid.to_string()).or_default();
        c.concurrent = c.concurrent.saturating_add(1);
    }

    /// A call on `trunk_sid` ended (or failed before being answered): frees its concurrent
    /// slot. An end with no call counted is ignored.
    pub fn call_ended(&mut self, trunk_sid: &str) {
        if let Some(c) = self.trunks.get_mut(trunk_sid) {
            c.concurrent = c.concurrent.saturating_sub(1);
        }
    }

    /// Calls in progress on a trunk.
    pub fn concurrent(&self, trunk_sid: &str) -> u32 {
        self.trunks.get(trunk_sid).map_or(0, |c| c.concurrent)
    }

    /// Calls admitted on a trunk within the minute before `now`.
    pub fn calls_in_window(&self, trunk_sid: &str, now: Instant) -> usize {
        self.trunks.get(trunk_sid).map_or(0, |c| {
            c.admitted
                .iter()
                .filter(|&&t| now.saturating_duration_since(t) < CPM_WINDOW)
                .count()
        })
    }

    /// Drops the counters of trunks no longer in `snapshot` that have no call in progress.
    pub fn retain_known(&mut self, snapshot: &Snapshot) {
        self.trunks
            .retain(|sid, c| c.concurrent > 0 || snapshot.trunk(sid).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpNet, NumberMapping};

    const CUSTOMER_IP: &str = "10.0.3.4";
    const CARRIER_IP: &str = "192.0.2.10";
    const SECURE_IP: &str = "198.51.100.7";
    const STRANGER_IP: &str = "203.0.113.99";
    const CALLEE: &str = "+919876543210";
    const FLOW_NUMBER: &str = "+918000000001";
    const PSTN_NUMBER: &str = "+918000000002";
    const DANGLING_NUMBER: &str = "+918000000003";
    const PAUSED_NUMBER: &str = "+918000000004";

    /// CUST (10.0.0.0/16, no credentials), CARRIER (an upstream carrier's /32), SECURE
    /// (whitelisted and with credentials), PAUSED (inactive), ANYWHERE (credentials only).
    fn snapshot() -> Snapshot {
        let mut cust = Trunk::new("CUST", "customer");
        cust.whitelisted.push(IpNet::parse("10.0.0.0/16").unwrap());
        let mut carrier = Trunk::new("CARRIER", "carrier");
        carrier.whitelisted.push(IpNet::parse(CARRIER_IP).unwrap());
        let mut secure = Trunk::new("SECURE", "secure");
        secure.whitelisted.push(IpNet::parse(SECURE_IP).unwrap());
        secure.has_credentials = true;
        let mut paused = Trunk::new("PAUSED", "paused");
        paused.active = false;
        paused
            .whitelisted
            .push(IpNet::parse("172.16.0.0/16").unwrap());
        let mut anywhere = Trunk::new("ANYWHERE", "anywhere");
        anywhere.has_credentials = true;
        let map = |number: &str, trunk: &str, mode: Mode| NumberMapping {
            number: number.into(),
            trunk_sid: trunk.into(),
            mode,
        };
        Snapshot {
            trunks: vec![cust, carrier, secure, paused, anywhere],
            numbers: vec![
                map(
                    FLOW_NUMBER,
                    "CUST",
                    Mode::Flow {
                        flow_id: "F1".into(),
                    },
                ),
                map(PSTN_NUMBER, "CUST", Mode::Pstn),
                map(DANGLING_NUMBER, "GONE", Mode::Pstn),
                map(PAUSED_NUMBER, "PAUSED", Mode::Pstn),
            ],
        }
    }

    fn facts<'a>(source: &str, dialled: &'a str) -> InviteFacts<'a> {
        InviteFacts {
            source: source.parse().unwrap(),
            dialled,
            authenticated_trunk: None,
            offered_credentials: false,
        }
    }

    fn reject(status: u16, reason: &str) -> Decision {
        Decision::Reject {
            status,
            reason: reason.into(),
            retry_after: None,
        }
    }

    fn admit(trunk: &str, mode: Mode) -> Decision {
        Decision::Admit {
            trunk_sid: trunk.into(),
            mode,
        }
    }

    fn decide(f: &InviteFacts) -> Decision {
        Admission::new().decide(&snapshot(), f, Instant::now())
    }

    // --- check_e164 ---

    #[test]
    fn e164_accepts_8_to_15_digits() {
        assert_eq!(check_e164("+12345678"), Ok(()));
        assert_eq!(check_e164("+919876543210"), Ok(()));
        assert_eq!(check_e164("+123456789012345"), Ok(()));
    }

    #[test]
    fn e164_short_with_plus_is_incomplete() {
        assert_eq!(check_e164("+91"), Err((484, "Address Incomplete")));
        assert_eq!(check_e164("+"), Err((484, "Address Incomplete")));
        assert_eq!(check_e164("+1234567"), Err((484, "Address Incomplete")));
    }

    #[test]
    fn e164_other_shapes_are_404() {
        let not = Err((404, "Use E.164 format"));
        assert_eq!(check_e164("1234"), not);
        assert_eq!(check_e164("919876543210"), not);
        assert_eq!(check_e164("+1234567890123456"), not); // 16 digits
        assert_eq!(check_e164("+91abc"), not);
        assert_eq!(check_e164("+9198765432ab"), not);
        assert_eq!(check_e164("alice"), not);
        assert_eq!(check_e164(""), not);
        assert_eq!(check_e164("++919876543210"), not);
        assert_eq!(check_e164("+91 98765 43210"), not);
        assert_eq!(check_e164("+91-9876543210"), not);
        assert_eq!(check_e164("+0919876543210"), not); // no country code starts with 0
        assert_eq!(check_e164("+٩١٩٨٧٦٥٤٣٢١٠"), not); // non-ASCII digits
    }

    // --- decision branches, in check order ---

    #[test]
    fn unknown_source_without_credentials_is_403() {
        // Without a trunk that takes credentials from any address.
        let mut snap = snapshot();
        snap.trunks
            .retain(|t| !(t.has_credentials && t.whitelisted.is_empty()));
        let decide = |f: &InviteFacts| Admission::new().decide(&snap, f, Instant::now());
        assert_eq!(
            decide(&facts(STRANGER_IP, CALLEE)),
            reject(403, "Source IP not allowed")
        );
        // Even to a mapped number: inbound needs an identified sender too.
        assert_eq!(
            decide(&facts(STRANGER_IP, FLOW_NUMBER)),
            reject(403, "Source IP not allowed")
        );
    }

    #[test]
    fn unknown_source_is_challenged_when_a_trunk_takes_credentials_from_anywhere() {
        // The full snapshot has ANYWHERE: credentials, no whitelist.
        assert_eq!(decide(&facts(STRANGER_IP, CALLEE)), Decision::Challenge);
        // An inactive credentials-only trunk does not open the door.
        let mut snap = snapshot();
        for t in snap
            .trunks
            .iter_mut()
            .filter(|t| t.has_credentials && t.whitelisted.is_empty())
        {
            t.active = false;
        }
        assert_eq!(
            Admission::new().decide(&snap, &facts(STRANGER_IP, CALLEE), Instant::now()),
            reject(403, "Source IP not allowed")
        );
    }

    #[test]
    fn unknown_source_with_rejected_credentials_is_challenged() {
        let mut f = facts(STRANGER_IP, CALLEE);
        f.offered_credentials = true;
        assert_eq!(decide(&f), Decision::Challenge);
        // Authenticated against a trunk since removed from the snapshot: unidentified.
        f.authenticated_trunk = Some("GONE");
        assert_eq!(decide(&f), Decision::Challenge);
        // No credentials at all: challenged too, since ANYWHERE takes credentials from any
        // address (without such a trunk it is 403: see the test above).
        f.offered_credentials = false;
        assert_eq!(decide(&f), Decision::Challenge);
    }

    #[test]
    fn trunk_with_credentials_challenges_until_authenticated() {
        let mut f = facts(SECURE_IP, CALLEE);
        assert_eq!(decide(&f), Decision::Challenge);
        f.offered_credentials = true; // stale or wrong
        assert_eq!(decide(&f), Decision::Challenge);
        f.authenticated_trunk = Some("SECURE");
        assert_eq!(decide(&f), admit("SECURE", Mode::Pstn));
    }

    #[test]
    fn credentials_of_another_trunk_select_that_trunk() {
        // Whitelisted for SECURE but authenticated as ANYWHERE: ANYWHERE is the caller.
        let mut f = facts(SECURE_IP, CALLEE);
        f.offered_credentials = true;
        f.authenticated_trunk = Some("ANYWHERE");
        assert_eq!(decide(&f), admit("ANYWHERE", Mode::Pstn));
    }

    #[test]
    fn credentials_only_trunk_from_any_source() {
        let mut f = facts(STRANGER_IP, CALLEE);
        f.offered_credentials = true;
        f.authenticated_trunk = Some("ANYWHERE");
        assert_eq!(decide(&f), admit("ANYWHERE", Mode::Pstn));
    }

    #[test]
    fn inactive_trunk_is_403_after_the_challenge() {
        let mut snap = snapshot();
        assert_eq!(
            Admission::new().decide(&snap, &facts("172.16.1.1", CALLEE), Instant::now()),
            reject(403, "Trunk inactive")
        );
        // A trunk with credentials challenges first, then says it is inactive.
        snap.trunks[2].active = false; // SECURE
        let mut f = facts(SECURE_IP, CALLEE);
        let mut adm = Admission::new();
        assert_eq!(adm.decide(&snap, &f, Instant::now()), Decision::Challenge);
        f.authenticated_trunk = Some("SECURE");
        assert_eq!(
            adm.decide(&snap, &f, Instant::now()),
            reject(403, "Trunk inactive")
        );
    }

    #[test]
    fn bad_numbers_from_a_known_trunk() {
        assert_eq!(
            decide(&facts(CUSTOMER_IP, "+91")),
            reject(484, "Address Incomplete")
        );
        assert_eq!(
            decide(&facts(CUSTOMER_IP, "1234")),
            reject(404, "Use E.164 format")
        );
        assert_eq!(
            decide(&facts(CUSTOMER_IP, "+1234567890123456")),
            reject(404, "Use E.164 format")
        );
    }

    #[test]
    fn unmapped_number_is_outbound_pstn_on_the_callers_trunk() {
        assert_eq!(
            decide(&facts(CUSTOMER_IP, CALLEE)),
            admit("CUST", Mode::Pstn)
        );
        assert_eq!(
            decide(&facts(CARRIER_IP, CALLEE)),
            admit("CARRIER", Mode::Pstn)
        );
    }

    #[test]
    fn mapped_number_is_inbound_to_its_trunk_with_its_mode() {
        let flow = Mode::Flow {
            flow_id: "F1".into(),
        };
        // From the upstream carrier: inbound to the customer's number.
        assert_eq!(
            decide(&facts(CARRIER_IP, FLOW_NUMBER)),
            admit("CUST", flow.clone())
        );
        assert_eq!(
            decide(&facts(CARRIER_IP, PSTN_NUMBER)),
            admit("CUST", Mode::Pstn)
        );
        // From the number's own trunk.
        assert_eq!(
            decide(&facts(CUSTOMER_IP, FLOW_NUMBER)),
            admit("CUST", flow)
        );
    }

    #[test]
    fn number_mapped_to_a_missing_trunk_is_404() {
        assert_eq!(
            decide(&facts(CARRIER_IP, DANGLING_NUMBER)),
            reject(404, "Number not mapped")
        );
    }

    #[test]
    fn number_mapped_to_an_inactive_trunk_is_403() {
        assert_eq!(
            decide(&facts(CARRIER_IP, PAUSED_NUMBER)),
            reject(403, "Trunk inactive")
        );
    }

    // --- limits ---

    #[test]
    fn concurrent_limit_and_call_ended_frees_a_slot() {
        let mut snap = snapshot();
        snap.trunks[0].max_concurrent_calls = Some(2); // CUST
        let mut adm = Admission::new();
        let now = Instant::now();
        let f = facts(CUSTOMER_IP, CALLEE);
        assert_eq!(adm.decide(&snap, &f, now), admit("CUST", Mode::Pstn));
        // An inbound call to CUST's number counts on CUST too.
        assert!(matches!(
            adm.decide(&snap, &facts(CARRIER_IP, FLOW_NUMBER), now),
            Decision::Admit { .. }
        ));
        assert_eq!(adm.concurrent("CUST"), 2);
        assert_eq!(
            adm.decide(&snap, &f, now),
            reject(486, "Busy Here (trunk at its call limit)")
        );
        assert_eq!(adm.concurrent("CUST"), 2, "a reject reserves nothing");
        adm.call_ended("CUST");
        assert_eq!(adm.concurrent("CUST"), 1);
        assert_eq!(adm.decide(&snap, &f, now), admit("CUST", Mode::Pstn));
        // Other trunks are unaffected.
        assert_eq!(adm.concurrent("CARRIER"), 0);
    }

    #[test]
    fn call_started_counts_toward_the_concurrent_limit() {
        let mut snap = snapshot();
        snap.trunks[0].max_concurrent_calls = Some(1);
        let mut adm = Admission::new();
        adm.call_started("CUST");
        let f = facts(CUSTOMER_IP, CALLEE);
        assert_eq!(
            adm.decide(&snap, &f, Instant::now()),
            reject(486, "Busy Here (trunk at its call limit)")
        );
        adm.call_ended("CUST");
        assert_eq!(
            adm.decide(&snap, &f, Instant::now()),
            admit("CUST", Mode::Pstn)
        );
    }

    #[test]
    fn zero_concurrent_limit_admits_nothing() {
        let mut snap = snapshot();
        snap.trunks[0].max_concurrent_calls = Some(0);
        assert_eq!(
            Admission::new().decide(&snap, &facts(CUSTOMER_IP, CALLEE), Instant::now()),
            reject(486, "Busy Here (trunk at its call limit)")
        );
    }

    #[test]
    fn spurious_call_ended_does_not_underflow() {
        let mut adm = Admission::new();
        adm.call_ended("CUST");
        adm.call_started("CUST");
        adm.call_ended("CUST");
        adm.call_ended("CUST");
        assert_eq!(adm.concurrent("CUST"), 0);
    }

    #[test]
    fn cpm_window_admits_200_then_retry_after_lets_the_next_through() {
        let snap = snapshot();
        let mut adm = Admission::new();
        let t0 = Instant::now();
        let f = facts(CUSTOMER_IP, CALLEE);
        // 200 calls, the first at 0.5 s, then one every 100 ms (the last at 20.4 s).
        for i in 0..200u64 {
            let at = t0 + Duration::from_millis(500 + 100 * i);
            assert_eq!(
                adm.decide(&snap, &f, at),
                admit("CUST", Mode::Pstn),
                "call {i}"
            );
            adm.call_ended("CUST");
        }
        assert_eq!(
            adm.calls_in_window("CUST", t0 + Duration::from_secs(30)),
            200
        );

        // The 201st at 30 s: the oldest leaves the window at 60.5 s, so 31 s from now.
        let at = t0 + Duration::from_secs(30);
        let retry = match adm.decide(&snap, &f, at) {
            Decision::Reject {
                status: 503,
                reason,
                retry_after: Some(secs),
            } => {
                assert_eq!(reason, "Service Unavailable (calls per minute exceeded)");
                secs
            }
            other => panic!("expected 503, got {other:?}"),
        };
        assert_eq!(retry, 31);
        // Rejected attempts do not fill the window; one second early is still too early.
        let early = at + Duration::from_secs(u64::from(retry) - 1);
        assert!(matches!(
            adm.decide(&snap, &f, early),
            Decision::Reject { status: 503, .. }
        ));
        let later = at + Duration::from_secs(u64::from(retry));
        assert_eq!(adm.decide(&snap, &f, later), admit("CUST", Mode::Pstn));
        // The calls at 0.5..=1.0 s have left the window by 61 s; this one joined it.
        assert_eq!(adm.calls_in_window("CUST", later), 200 - 6 + 1);
    }

    #[test]
    fn cpm_retry_after_rounds_up_and_is_at_least_one_second() {
        let mut snap = snapshot();
        snap.trunks[0].calls_per_minute = 1;
        let mut adm = Admission::new();
        let t0 = Instant::now();
        let f = facts(CUSTOMER_IP, CALLEE);
        assert!(matches!(adm.decide(&snap, &f, t0), Decision::Admit { .. }));
        let rejected = |adm: &mut Admission, at| match adm.decide(&snap, &f, at) {
            Decision::Reject {
                status: 503,
                retry_after,
                ..
            } => retry_after,
            other => panic!("expected 503, got {other:?}"),
        };
        assert_eq!(rejected(&mut adm, t0), Some(60));
        assert_eq!(
            rejected(&mut adm, t0 + Duration::from_millis(100)),
            Some(60)
        );
        assert_eq!(
            rejected(&mut adm, t0 + Duration::from_millis(59_999)),
            Some(1)
        );
        // Exactly one window later the slot is free.
        assert!(matches!(
            adm.decide(&snap, &f, t0 + CPM_WINDOW),
            Decision::Admit { .. }
        ));
    }

    #[test]
    fn cpm_limit_lowered_below_the_window_waits_for_enough_to_expire() {
        let mut snap = snapshot();
        let mut adm = Admission::new();
        let t0 = Instant::now();
        let f = facts(CUSTOMER_IP, CALLEE);
        for s in 0..5u64 {
            let at = t0 + Duration::from_secs(s);
            assert!(matches!(adm.decide(&snap, &f, at), Decision::Admit { .. }));
        }
        // The limit drops to 2 with 5 calls (at 0..4 s) in the window: the call at 3 s must
        // leave it, at 63 s.
        snap.trunks[0].calls_per_minute = 2;
        let at = t0 + Duration::from_secs(10);
        assert!(matches!(
            adm.decide(&snap, &f, at),
            Decision::Reject {
                status: 503,
                retry_after: Some(53),
                ..
            }
        ));
        assert!(matches!(
            adm.decide(&snap, &f, t0 + Duration::from_secs(63)),
            Decision::Admit { .. }
        ));
    }

    #[test]
    fn zero_cpm_admits_nothing_without_retry_after() {
        let mut snap = snapshot();
        snap.trunks[0].calls_per_minute = 0;
        assert_eq!(
            Admission::new().decide(&snap, &facts(CUSTOMER_IP, CALLEE), Instant::now()),
            Decision::Reject {
                status: 503,
                reason: "Service Unavailable (calls per minute exceeded)".into(),
                retry_after: None,
            }
        );
    }

    #[test]
    fn concurrent_limit_is_checked_before_cpm() {
        let mut snap = snapshot();
        snap.trunks[0].max_concurrent_calls = Some(1);
        snap.trunks[0].calls_per_minute = 1;
        let mut adm = Admission::new();
        let now = Instant::now();
        let f = facts(CUSTOMER_IP, CALLEE);
        assert!(matches!(adm.decide(&snap, &f, now), Decision::Admit { .. }));
        assert!(matches!(
            adm.decide(&snap, &f, now),
            Decision::Reject { status: 486, .. }
        ));
        adm.call_ended("CUST");
        assert!(matches!(
            adm.decide(&snap, &f, now),
            Decision::Reject { status: 503, .. }
        ));
    }

    #[test]
    fn retain_known_drops_idle_counters_of_removed_trunks() {
        let mut adm = Admission::new();
        adm.call_started("GONE");
        adm.call_started("GONE2");
        adm.call_ended("GONE2");
        adm.retain_known(&snapshot());
        assert_eq!(
            adm.concurrent("GONE"),
            1,
            "a call in progress keeps its counter"
        );
        assert!(!adm.trunks.contains_key("GONE2"));
    }
}
