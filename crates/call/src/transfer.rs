//! Blind transfer (RFC 3515) as a decision: whether a REFER is taken now and to where. The
//! call carries it out (a new leg to the target, NOTIFYs of its progress).

use voicegate_sip::message::{name_addr_uri_text, Request};

use crate::hop::parse_sip_target;
use crate::peer::PeerRole;

/// Where the call stands when a REFER arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReferContext {
    /// The REFER came from the caller's side (else from the other leg).
    pub from_caller: bool,
    /// A transfer is already under way, or our NOTIFY of the last one is unanswered.
    pub transfer_under_way: bool,
    /// The caller's leg is answered.
    pub caller_up: bool,
    /// The other leg: what it is for, and whether it answered.
    pub peer: Option<(PeerRole, bool)>,
}

/// A REFER refused: its status and reason phrase.
pub type Refusal = (u16, String);

/// Takes a REFER or says why not: 491 while another transfer is under way, 403 unless the
/// call is an answered call to another party (from the caller: a plain two-party call, not
/// one to an agent), 400 without a usable Refer-To. Taken, it is answered 202 and the target
/// comes back.
pub fn take_refer(request: &Request, context: ReferContext) -> Result<String, Refusal> {
    if context.transfer_under_way {
        return Err((491, "Request Pending".into()));
    }
    let two_parties = context.caller_up
        && context.peer.is_some_and(|(role, answered)| {
            answered && (!context.from_caller || role == PeerRole::Forward)
        });
    if !two_parties {
        let reason = "Forbidden (REFER needs an answered call to another party)";
        return Err((403, reason.into()));
    }
    refer_target(request).map_err(|reason| (400, reason))
}

/// The target of a REFER: its Refer-To URI, or the reason phrase of a 400.
pub fn refer_target(request: &Request) -> Result<String, String> {
    let target = request
        .headers
        .get("Refer-To")
        .and_then(name_addr_uri_text)
        // Embedded headers (`?Replaces=…`) ask for an attended transfer: not done here.
        .map(|uri| uri.split('?').next().unwrap_or(uri).to_string())
        .ok_or("Bad Request (no Refer-To)")?;
    parse_sip_target(&target).map_err(|e| format!("Bad Request (Refer-To: {e})"))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request_with;

    fn refer(refer_to: &str) -> Request {
        let header = if refer_to.is_empty() {
            String::new()
        } else {
            format!("Refer-To: {refer_to}\r\n")
        };
        request_with("REFER", 2, "z9hG4bK-refer", "ours", &header, "")
    }

    /// An answered two-party call, the REFER from the other leg.
    fn up() -> ReferContext {
        ReferContext {
            from_caller: false,
            transfer_under_way: false,
            caller_up: true,
            peer: Some((PeerRole::Forward, true)),
        }
    }

    #[test]
    fn an_answered_two_party_call_takes_a_refer_from_either_side() {
        let target = "<sip:agent@192.0.2.30:5060;transport=tcp>";
        for from_caller in [false, true] {
            let context = ReferContext {
                from_caller,
                ..up()
            };
            assert_eq!(
                take_refer(&refer(target), context),
                Ok("sip:agent@192.0.2.30:5060;transport=tcp".into())
            );
        }
    }

    #[test]
    fn an_attended_transfers_replaces_is_left_out() {
        let target = "<sip:agent@pbx.example?Replaces=abc%40host%3Bto-tag%3D1>";
        assert_eq!(
            take_refer(&refer(target), up()),
            Ok("sip:agent@pbx.example".into())
        );
    }

    #[test]
    fn a_second_transfer_waits_491() {
        let context = ReferContext {
            transfer_under_way: true,
            ..up()
        };
        let (status, _) = take_refer(&refer("<sip:a@pbx.example>"), context).unwrap_err();
        assert_eq!(status, 491);
    }

    #[test]
    fn only_an_answered_call_to_another_party_is_transferred() {
        let refused = |context: ReferContext| {
            take_refer(&refer("<sip:a@pbx.example>"), context)
                .unwrap_err()
                .0
        };
        let not_up = ReferContext {
            caller_up: false,
            ..up()
        };
        let ringing = ReferContext {
            peer: Some((PeerRole::Forward, false)),
            ..up()
        };
        let echo_or_bot = ReferContext { peer: None, ..up() };
        let caller_with_an_agent = ReferContext {
            from_caller: true,
            peer: Some((PeerRole::Agent, true)),
            ..up()
        };
        for context in [not_up, ringing, echo_or_bot, caller_with_an_agent] {
            assert_eq!(refused(context), 403, "{context:?}");
        }
        let agent_refers = ReferContext {
            peer: Some((PeerRole::Agent, true)),
            ..up()
        };
        assert!(take_refer(&refer("<sip:a@pbx.example>"), agent_refers).is_ok());
    }

    #[test]
    fn a_refer_without_a_usable_target_gets_400_saying_why() {
        let (status, reason) = take_refer(&refer(""), up()).unwrap_err();
        assert_eq!(
            (status, reason.as_str()),
            (400, "Bad Request (no Refer-To)")
        );
        let (status, reason) = take_refer(&refer("<tel:+15550123>"), up()).unwrap_err();
        assert_eq!(status, 400);
        assert!(reason.starts_with("Bad Request (Refer-To: "), "{reason}");
    }
}
