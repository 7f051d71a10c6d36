//! SIP session timers (RFC 4028), free of I/O: what to put in an INVITE, how to answer one,
//! how to read the answer, and when to refresh or give up on a session.
//!
//! `refresher=uac|uas` names a role in the transaction that set it, not a party: the side
//! that sent the INVITE (or re-INVITE, or UPDATE) is `uac` for that exchange. When the other
//! side sends the next refresh the roles swap, so [`Refresher::is_us`] takes the role we had.

use tokio::time::{Duration, Instant};

use crate::message::Headers;

/// The lowest Session-Expires or Min-SE anyone may use (RFC 4028 §4, §5).
pub const ABSOLUTE_MIN_SE: u32 = 90;

/// Who sends the refreshes, named by the role in the transaction that negotiated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }

    /// Whether we refresh, given whether we were the UAC of the negotiating transaction.
    pub fn is_us(self, we_were_uac: bool) -> bool {
        (self == Refresher::Uac) == we_were_uac
    }
}

/// A parsed `Session-Expires` (compact `x`) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionExpires {
    /// delta-seconds, saturated at `u32::MAX`.
    pub interval: u32,
    pub refresher: Option<Refresher>,
}

/// What we ask for and what we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// The interval we ask for (UAC) or offer (UAS); 0 means we never start a timer ourselves
    /// but still honour one the peer asks for.
    pub session_expires: u32,
    /// The smallest interval we accept; below 90 counts as 90.
    pub min_se: u32,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            session_expires: 1800,
            min_se: ABSOLUTE_MIN_SE,
        }
    }
}

impl TimerConfig {
    fn floor(&self) -> u32 {
        self.min_se.max(ABSOLUTE_MIN_SE)
    }

    /// The headers for an INVITE we send: `Supported: timer`, and `Session-Expires` and
    /// `Min-SE` unless `session_expires` is 0. No refresher is named, so the UAS picks
    /// (RFC 4028 §7.1 allows either).
    pub fn uac_headers(&self) -> Vec<(&'static str, String)> {
        if self.session_expires == 0 {
            return vec![("Supported", "timer".into())];
        }
        let min_se = self.floor();
        uac_headers(self.session_expires.max(min_se), min_se)
    }
}

/// `Supported: timer`, `Session-Expires: <session_expires>`, `Min-SE: <min_se>`: for a first
/// INVITE, or a retry after 422 with both set to the 422's Min-SE (RFC 4028 §7.3).
pub fn uac_headers(session_expires: u32, min_se: u32) -> Vec<(&'static str, String)> {
    vec![
        ("Supported", "timer".into()),
        ("Session-Expires", session_expires.to_string()),
        ("Min-SE", min_se.to_string()),
    ]
}

/// `1800;refresher=uac`.
pub fn header_value(interval: u32, refresher: Refresher) -> String {
    format!("{interval};refresher={}", refresher.as_str())
}

/// delta-seconds: digits only; too large a value saturates rather than failing.
fn delta_seconds(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .map_or(u32::MAX, |v| u32::try_from(v).unwrap_or(u32::MAX)),
    )
}

/// The Session-Expires of a message; a malformed one counts as absent.
pub fn session_expires(headers: &Headers) -> Option<SessionExpires> {
    let mut parts = headers.get("Session-Expires")?.split(';');
    let interval = delta_seconds(parts.next()?)?;
    let mut refresher = None;
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("refresher") {
            let value = value.trim();
            refresher = if value.eq_ignore_ascii_case("uac") {
                Some(Refresher::Uac)
            } else if value.eq_ignore_ascii_case("uas") {
                Some(Refresher::Uas)
            } else {
                None
            };
        }
    }
    Some(SessionExpires {
        interval,
        refresher,
    })
}

/// The Min-SE of a message; a malformed one counts as absent.
pub fn min_se(headers: &Headers) -> Option<u32> {
    delta_seconds(headers.get("Min-SE")?.split(';').next()?)
}

/// Whether the sender said it supports session timers (`Supported: timer`, or requiring it).
pub fn supports_timer(headers: &Headers) -> bool {
    headers
        .tokens("Supported")
        .chain(headers.tokens("Require"))
        .any(|t| t.eq_ignore_ascii_case("timer"))
}

/// How we, the UAS, answer an INVITE, re-INVITE or UPDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UasTimer {
    /// Answer `422 Session Interval Too Small` with `Min-SE: <min_se>`.
    TooSmall { min_se: u32 },
    /// Put `Session-Expires: interval;refresher=…` in the 2xx, and `Require: timer` when
    /// `require_timer`.
    Active {
        interval: u32,
        refresher: Refresher,
        require_timer: bool,
    },
    /// No timer for this session.
    Off,
}

impl UasTimer {
    /// The headers for our 2xx (none for `Off`; `TooSmall` gets its Min-SE on the 422).
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        match *self {
            UasTimer::Active {
                interval,
                refresher,
                require_timer,
            } => {
                let mut headers = vec![("Session-Expires", header_value(interval, refresher))];
                if require_timer {
                    headers.push(("Require", "timer".into()));
                }
                headers
            }
            UasTimer::TooSmall { min_se } => vec![("Min-SE", min_se.to_string())],
            UasTimer::Off => Vec::new(),
        }
    }
}

/// Negotiates the session timer for a request we receive (RFC 4028 §9).
///
/// * With Session-Expires below our minimum: 422 if the UAC supports timers (only then may a
///   UAS send 422); otherwise the value was put in by a proxy and, like a proxy would
///   (§8.1), we raise it to our minimum.
/// * With Session-Expires: the interval is the request's, lowered to our preference but not
///   below the request's Min-SE (a UAS may reduce it, never increase it).
/// * Without: we add our own interval (not below the request's Min-SE) unless
///   `config.session_expires` is 0.
/// * Refresher (§9's table): the one the request named if the UAC supports timers; if it
///   named none, the UAC when it supports timers (it then does the work), else us.
/// * `Require: timer` whenever the UAC supports timers: a MUST when it refreshes, a SHOULD
///   when we do (so that it sends BYE if our refreshes stop).
pub fn uas_negotiate(request: &Headers, config: &TimerConfig) -> UasTimer {
    let supported = supports_timer(request);
    let floor = config.floor();
    let request_min = min_se(request).unwrap_or(0);
    let interval = match session_expires(request) {
        Some(se) if se.interval < floor => {
            if supported {
                return UasTimer::TooSmall {
                    min_se: floor.max(request_min),
                };
            }
            floor.max(request_min)
        }
        Some(se) => {
            let preferred = match config.session_expires {
                0 => se.interval,
                ours => ours.max(floor),
            };
            se.interval.min(preferred).max(request_min.min(se.interval))
        }
        None if config.session_expires == 0 => return UasTimer::Off,
        None => config.session_expires.max(floor).max(request_min),
    };
    let named = session_expires(request).and_then(|se| se.refresher);
    let refresher = match (supported, named) {
        (true, Some(r)) => r,
        (true, None) => Refresher::Uac,
        (false, _) => Refresher::Uas,
    };
    UasTimer::Active {
        interval,
        refresher,
        require_timer: supported,
    }
}

/// Reads the 2xx to an INVITE we sent (RFC 4028 §7.2): no Session-Expires means no timer.
/// Without a refresher the UAS does not support timers (a proxy added the header), so we
/// refresh. A UAS may not raise the interval above `requested`; if one did, we refresh on
/// what we asked for (sooner is always safe) and, when it refreshes, wait as long as it said.
pub fn uac_from_response(response: &Headers, requested: u32) -> Option<(u32, Refresher)> {
    let se = session_expires(response)?;
    if se.interval == 0 {
        return None;
    }
    let refresher = se.refresher.unwrap_or(Refresher::Uac);
    let interval = match refresher {
        Refresher::Uac if requested > 0 => se.interval.min(requested),
        _ => se.interval,
    };
    Some((interval, refresher))
}

/// After a 422 to our INVITE: the Session-Expires (and Min-SE) to retry with, which is the
/// 422's Min-SE (RFC 4028 §7.3). None when there is no usable Min-SE or it is not above
/// what we sent (retrying would get the same 422).
pub fn uac_retry_after_422(response: &Headers, current: u32) -> Option<u32> {
    let wanted = min_se(response)?;
    (wanted > current).then_some(wanted)
}

/// When a session with a timer must be refreshed, or given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimer {
    /// The negotiated session interval, in seconds.
    pub interval: u32,
    /// Whether we send the refreshes.
    pub we_refresh: bool,
    /// When the session was last established or refreshed (a 2xx to a refresh).
    pub last_refresh: Instant,
}

impl SessionTimer {
    pub fn new(interval: u32, we_refresh: bool, now: Instant) -> Self {
        Self {
            interval,
            we_refresh,
            last_refresh: now,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval))
    }

    /// When to send our refresh: half the interval after the last one (RFC 4028 §10).
    /// None when the peer refreshes.
    pub fn refresh_at(&self) -> Option<Instant> {
        self.we_refresh
            .then(|| self.last_refresh + self.interval() / 2)
    }

    /// When to send BYE if the peer's refresh has not come: the interval less the smaller of
    /// 32 s and a third of it (RFC 4028 §10). None when we refresh.
    pub fn expires_at(&self) -> Option<Instant> {
        (!self.we_refresh).then(|| {
            let interval = self.interval();
            self.last_refresh + interval - (interval / 3).min(Duration::from_secs(32))
        })
    }

    /// The next time something must happen: our refresh, or giving up on the peer's.
    pub fn deadline(&self) -> Instant {
        self.refresh_at()
            .or_else(|| self.expires_at())
            .unwrap_or(self.last_refresh)
    }

    /// A refresh succeeded (a 2xx to a re-INVITE or UPDATE, either direction).
    pub fn on_refreshed(&mut self, now: Instant) {
        self.last_refresh = now;
    }

    /// A refresh renegotiated the interval or the refresher.
    pub fn renegotiated(&mut self, interval: u32, we_refresh: bool, now: Instant) {
        self.interval = interval;
        self.we_refresh = we_refresh;
        self.last_refresh = now;
    }
}

/// The far end refreshed the session of a dialog whose INVITE we sent (its re-INVITE or
/// UPDATE, which we answer as the UAS of that request; RFC 4028 §9): the interval restarts
/// now, renegotiated when the request carries Session-Expires (`refresher=uas` there makes
/// us the refresher), and a timer starts if there was none. Returns the Session-Expires for
/// our 2xx when the request had one.
pub fn refreshed_by_peer(
    timer: &mut Option<SessionTimer>,
    request: &Headers,
    now: Instant,
) -> Option<(&'static str, String)> {
    let Some(se) = session_expires(request) else {
        if let Some(t) = timer.as_mut() {
            t.on_refreshed(now);
        }
        return None;
    };
    let we_refresh = se.refresher == Some(Refresher::Uas);
    match timer.as_mut() {
        Some(t) => t.renegotiated(se.interval, we_refresh, now),
        None => *timer = Some(SessionTimer::new(se.interval, we_refresh, now)),
    }
    let refresher = if we_refresh {
        Refresher::Uas
    } else {
        Refresher::Uac
    };
    Some(("Session-Expires", header_value(se.interval, refresher)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, Message};

    fn headers(lines: &[&str]) -> Headers {
        let mut h = Headers::default();
        for line in lines {
            let (name, value) = line.split_once(':').unwrap();
            h.push(name.trim(), value.trim());
        }
        h
    }

    fn active(interval: u32, refresher: Refresher, require_timer: bool) -> UasTimer {
        UasTimer::Active {
            interval,
            refresher,
            require_timer,
        }
    }

    #[test]
    fn parses_session_expires_and_min_se() {
        let h = headers(&[
            "Session-Expires: 1800 ; Refresher = UAS;x=y",
            "Min-SE: 120;p",
        ]);
        assert_eq!(
            session_expires(&h),
            Some(SessionExpires {
                interval: 1800,
                refresher: Some(Refresher::Uas)
            })
        );
        assert_eq!(min_se(&h), Some(120));
        let h = headers(&["Session-Expires: 600", "Min-SE: x"]);
        assert_eq!(session_expires(&h).unwrap().refresher, None);
        assert_eq!(min_se(&h), None);
        for bad in ["", "abc", "-5", "12a;refresher=uac", ";refresher=uac"] {
            let h = headers(&[&format!("Session-Expires: {bad}")]);
            assert_eq!(session_expires(&h), None, "{bad:?}");
        }
        let h = headers(&["Session-Expires: 99999999999;refresher=other"]);
        assert_eq!(
            session_expires(&h),
            Some(SessionExpires {
                interval: u32::MAX,
                refresher: None
            })
        );
    }

    #[test]
    fn compact_form_is_expanded_by_the_parser() {
        let text = "INVITE sip:a@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK-1\r\n\
From: <sip:b@10.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
k: timer, 100rel\r\nx: 900;refresher=uac\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Request(r)) = parse(text.as_bytes()) else {
            panic!("parse")
        };
        assert!(supports_timer(&r.headers));
        assert_eq!(
            session_expires(&r.headers),
            Some(SessionExpires {
                interval: 900,
                refresher: Some(Refresher::Uac)
            })
        );
    }

    #[test]
    fn uas_rejects_too_small_only_when_the_uac_supports_timers() {
        let config = TimerConfig {
            session_expires: 1800,
            min_se: 300,
        };
        let h = headers(&["Supported: 100rel, timer", "Session-Expires: 200"]);
        let t = uas_negotiate(&h, &config);
        assert_eq!(t, UasTimer::TooSmall { min_se: 300 });
        assert_eq!(t.response_headers(), vec![("Min-SE", "300".to_string())]);
        // Without Supported: timer a proxy added it: raise it as a proxy may, we refresh.
        let h = headers(&["Session-Expires: 200"]);
        assert_eq!(
            uas_negotiate(&h, &config),
            active(300, Refresher::Uas, false)
        );
        // A configured minimum below 90 counts as 90.
        let low = TimerConfig {
            session_expires: 1800,
            min_se: 30,
        };
        let h = headers(&["Supported: timer", "Session-Expires: 60"]);
        assert_eq!(uas_negotiate(&h, &low), UasTimer::TooSmall { min_se: 90 });
    }

    #[test]
    fn uas_keeps_or_lowers_the_requested_interval() {
        let config = TimerConfig::default();
        let h = headers(&["Supported: timer", "Session-Expires: 900;refresher=uas"]);
        let t = uas_negotiate(&h, &config);
        assert_eq!(t, active(900, Refresher::Uas, true));
        assert_eq!(
            t.response_headers(),
            vec![
                ("Session-Expires", "900;refresher=uas".to_string()),
                ("Require", "timer".to_string())
            ]
        );
        // Longer than we like: lowered to ours, never below the request's Min-SE.
        let h = headers(&["Supported: timer", "Session-Expires: 7200", "Min-SE: 3600"]);
        assert_eq!(
            uas_negotiate(&h, &config),
            active(3600, Refresher::Uac, true)
        );
        let h = headers(&["Supported: timer", "Session-Expires: 7200;refresher=uac"]);
        assert_eq!(
            uas_negotiate(&h, &config),
            active(1800, Refresher::Uac, true)
        );
        // A UAC without timer support cannot refresh, whatever the header says.
        let h = headers(&["Session-Expires: 600;refresher=uac"]);
        assert_eq!(
            uas_negotiate(&h, &config),
            active(600, Refresher::Uas, false)
        );
        // With no preference of ours the request's value stands.
        let passive = TimerConfig {
            session_expires: 0,
            min_se: 90,
        };
        let h = headers(&["Supported: timer", "Session-Expires: 7200"]);
        assert_eq!(
            uas_negotiate(&h, &passive),
            active(7200, Refresher::Uac, true)
        );
    }

    #[test]
    fn uas_adds_a_timer_when_the_uac_asked_for_none() {
        let config = TimerConfig::default();
        let h = headers(&["Supported: timer"]);
        let t = uas_negotiate(&h, &config);
        assert_eq!(t, active(1800, Refresher::Uac, true));
        assert_eq!(
            t.response_headers(),
            vec![
                ("Session-Expires", "1800;refresher=uac".to_string()),
                ("Require", "timer".to_string())
            ]
        );
        let t = uas_negotiate(&headers(&[]), &config);
        assert_eq!(t, active(1800, Refresher::Uas, false));
        assert_eq!(
            t.response_headers(),
            vec![("Session-Expires", "1800;refresher=uas".to_string())]
        );
        // Not below the request's Min-SE.
        let h = headers(&["Supported: timer", "Min-SE: 2400"]);
        assert_eq!(
            uas_negotiate(&h, &config),
            active(2400, Refresher::Uac, true)
        );
        let passive = TimerConfig {
            session_expires: 0,
            min_se: 90,
        };
        assert_eq!(uas_negotiate(&h, &passive), UasTimer::Off);
        assert!(UasTimer::Off.response_headers().is_empty());
    }

    #[test]
    fn uac_headers_and_response() {
        assert_eq!(
            TimerConfig::default().uac_headers(),
            vec![
                ("Supported", "timer".to_string()),
                ("Session-Expires", "1800".to_string()),
                ("Min-SE", "90".to_string())
            ]
        );
        let passive = TimerConfig {
            session_expires: 0,
            min_se: 90,
        };
        assert_eq!(
            passive.uac_headers(),
            vec![("Supported", "timer".to_string())]
        );
        let ok = headers(&["Session-Expires: 900;refresher=uas", "Require: timer"]);
        assert_eq!(uac_from_response(&ok, 1800), Some((900, Refresher::Uas)));
        assert_eq!(uac_from_response(&headers(&[]), 1800), None);
        // No refresher: the UAS does not know timers, so we refresh.
        let proxy_added = headers(&["Session-Expires: 1200"]);
        assert_eq!(
            uac_from_response(&proxy_added, 1800),
            Some((1200, Refresher::Uac))
        );
        // A UAS that raised the interval: we refresh on ours, or wait on theirs.
        let raised = headers(&["Session-Expires: 3600;refresher=uac"]);
        assert_eq!(
            uac_from_response(&raised, 1800),
            Some((1800, Refresher::Uac))
        );
        let raised = headers(&["Session-Expires: 3600;refresher=uas"]);
        assert_eq!(
            uac_from_response(&raised, 1800),
            Some((3600, Refresher::Uas))
        );
        assert_eq!(
            uac_from_response(&headers(&["Session-Expires: 0"]), 1800),
            None
        );
        assert!(Refresher::Uac.is_us(true));
        assert!(!Refresher::Uac.is_us(false));
        assert!(Refresher::Uas.is_us(false));
    }

    #[test]
    fn uac_retries_after_422_with_its_min_se() {
        let r = headers(&["Min-SE: 1900"]);
        assert_eq!(uac_retry_after_422(&r, 1800), Some(1900));
        assert_eq!(
            uac_headers(1900, 1900),
            vec![
                ("Supported", "timer".to_string()),
                ("Session-Expires", "1900".to_string()),
                ("Min-SE", "1900".to_string())
            ]
        );
        assert_eq!(uac_retry_after_422(&r, 1900), None);
        assert_eq!(uac_retry_after_422(&headers(&[]), 1800), None);
    }

    #[test]
    fn header_value_format() {
        assert_eq!(header_value(1800, Refresher::Uac), "1800;refresher=uac");
        assert_eq!(header_value(90, Refresher::Uas), "90;refresher=uas");
    }

    #[test]
    fn refresher_refreshes_at_half_the_interval() {
        let t0 = Instant::now();
        let mut t = SessionTimer::new(1800, true, t0);
        assert_eq!(t.refresh_at(), Some(t0 + Duration::from_secs(900)));
        assert_eq!(t.expires_at(), None);
        assert_eq!(t.deadline(), t0 + Duration::from_secs(900));
        let odd = SessionTimer::new(91, true, t0);
        assert_eq!(odd.refresh_at(), Some(t0 + Duration::from_millis(45_500)));
        let t1 = t0 + Duration::from_secs(900);
        t.on_refreshed(t1);
        assert_eq!(t.refresh_at(), Some(t1 + Duration::from_secs(900)));
    }

    #[test]
    fn other_side_expires_before_the_interval() {
        let t0 = Instant::now();
        // Long intervals: 32 s early.
        let t = SessionTimer::new(1800, false, t0);
        assert_eq!(t.refresh_at(), None);
        assert_eq!(t.expires_at(), Some(t0 + Duration::from_secs(1768)));
        assert_eq!(t.deadline(), t0 + Duration::from_secs(1768));
        // Short intervals: a third early (90 → 60; 96 is where the two meet, 64).
        let t = SessionTimer::new(90, false, t0);
        assert_eq!(t.expires_at(), Some(t0 + Duration::from_secs(60)));
        let t = SessionTimer::new(96, false, t0);
        assert_eq!(t.expires_at(), Some(t0 + Duration::from_secs(64)));
        let t = SessionTimer::new(100, false, t0);
        assert_eq!(t.expires_at(), Some(t0 + Duration::from_secs(68)));
        let mut t = SessionTimer::new(1800, false, t0);
        t.renegotiated(600, true, t0 + Duration::from_secs(10));
        assert_eq!(t.refresh_at(), Some(t0 + Duration::from_secs(310)));
    }

    #[test]
    fn a_peers_refresh_restarts_and_renegotiates_the_timer() {
        let start = Instant::now();
        let later = start + Duration::from_secs(40);
        // We refresh every 90 s; the far end's UPDATE without Session-Expires restarts it.
        let mut timer = Some(SessionTimer::new(90, true, start));
        assert_eq!(refreshed_by_peer(&mut timer, &headers(&[]), later), None);
        assert_eq!(
            timer.map(|t| (t.interval, t.we_refresh, t.last_refresh)),
            Some((90, true, later))
        );
        // Its re-INVITE says it refreshes now, every 120 s: our 2xx says so back.
        let its_terms = headers(&["Session-Expires: 120;refresher=uac"]);
        assert_eq!(
            refreshed_by_peer(&mut timer, &its_terms, later),
            Some(("Session-Expires", "120;refresher=uac".to_string()))
        );
        assert_eq!(
            timer.map(|t| (t.interval, t.we_refresh)),
            Some((120, false))
        );
        // `refresher=uas` names us, the UAS of its request.
        let ours = headers(&["Session-Expires: 100;refresher=uas"]);
        assert_eq!(
            refreshed_by_peer(&mut timer, &ours, later),
            Some(("Session-Expires", "100;refresher=uas".to_string()))
        );
        assert_eq!(timer.map(|t| (t.interval, t.we_refresh)), Some((100, true)));
    }

    #[test]
    fn a_peer_may_start_a_timer_on_a_session_without_one() {
        let now = Instant::now();
        let mut none = None;
        assert_eq!(refreshed_by_peer(&mut none, &headers(&[]), now), None);
        assert!(none.is_none(), "nothing asked for, nothing started");
        let asked = headers(&["Session-Expires: 90"]);
        assert_eq!(
            refreshed_by_peer(&mut none, &asked, now),
            Some(("Session-Expires", "90;refresher=uac".to_string()))
        );
        assert_eq!(none.map(|t| (t.interval, t.we_refresh)), Some((90, false)));
    }
}
