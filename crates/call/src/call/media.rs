//! What a call's media legs are told about a negotiation: the bridge's and the relay's view of
//! a negotiated stream, the echo leg's controls, and our answer to a re-INVITE's offer (also
//! for a pair of legs handed over, in `voicegate_engine`).

use voicegate_bridge::relay::LegDirection;
use voicegate_bridge::session::CallMedia;
use voicegate_rtp::echo::LegControl;
use voicegate_sip::sdp::{self, Direction, LocalMedia, Negotiated};

use crate::settings::CallSettings;

/// The bridge's view of a negotiated stream.
pub fn call_media(n: &Negotiated, settings: &CallSettings) -> CallMedia {
    CallMedia {
        codec: n.codec,
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        signalled: n.remote,
        latching: settings.latching,
        ssrc: rand::random(),
        rtp_timeout: settings.rtp_timeout,
    }
}

pub fn direction_of(n: &Negotiated) -> LegDirection {
    LegDirection {
        sending: n.direction.sends(),
        expect_rtp: n.direction.receives(),
    }
}

/// What the media leg needs from a negotiation.
pub fn leg_control(n: &Negotiated) -> LegControl {
    LegControl {
        sending: n.direction.sends(),
        expect_rtp: n.direction.receives(),
        signalled: n.remote,
        rtcp_mux: n.rtcp_mux,
        telephone_event: n.telephone_event,
        codec: n.codec,
    }
}

/// Our answer to a re-INVITE from a leg whose media we terminate: to its offer (the new
/// negotiation comes back), or, without one, our offer in the codec in use.
pub fn answer_reinvite_offer(
    local: &mut LocalMedia,
    current: Option<&Negotiated>,
    body: &[u8],
    codecs: &[sdp::Codec],
    preference: sdp::CodecPreference,
) -> Result<(String, Option<Negotiated>), (u16, String)> {
    if body.is_empty() {
        local.session_version += 1;
        let codec = current.map_or_else(|| codecs.to_vec(), |n| vec![n.codec]);
        return Ok((sdp::build_offer(local, &codec, Direction::SendRecv), None));
    }
    let offer = sdp::parse(body).map_err(|e| (400, format!("Malformed SDP: {e}")))?;
    let n = sdp::negotiate_answer(&offer, codecs, preference)
        .map_err(|e| (488, format!("Not Acceptable Here: {e}")))?;
    local.session_version += 1;
    Ok((sdp::build_answer(&offer, local, &n), Some(n)))
}
