//! The caller's media: our RTP ports and the offer/answer before we ring, the answer of a
//! delayed offer, re-negotiation on a re-INVITE, and stopping the media legs with their
//! reports for the record.

use tokio::time::Instant;
use tracing::warn;
use voicegate_rtp::RtpPorts;
use voicegate_sip::accept;
use voicegate_sip::message::Request;
use voicegate_sip::sdp::{self, Direction, LocalMedia};

use super::media;
use super::{Call, Leg, Media, Route};

impl Call {
    /// Allocates RTP ports and checks the offer (if any) before we ring.
    pub(super) fn prepare_media(&mut self) -> Result<(), (u16, String)> {
        // Our answers carry SDP, so a caller that cannot take SDP cannot be answered
        // (RFC 3261 §21.4.7; RFC 4475 sdp01).
        let invite = self.caller.invite();
        if !accept::accepts(&invite.headers, "application/sdp") {
            self.caller.add_final_header(
                "Warning",
                "399 voicegate \"Accept does not allow application/sdp, our only answer body\""
                    .into(),
            );
            return Err((406, "Not Acceptable".into()));
        }
        let offer = if invite.body.is_empty() {
            None
        } else if !invite.body_is_sdp() {
            return Err((415, "Unsupported Media Type: only application/sdp".into()));
        } else {
            Some(sdp::parse(&invite.body).map_err(|e| (400, format!("Malformed SDP: {e}")))?)
        };
        let negotiated = match &offer {
            Some(offer) => Some(
                sdp::negotiate_answer(
                    offer,
                    &self.core.settings.codecs,
                    self.core.settings.codec_preference,
                )
                .map_err(|e| (488, format!("Not Acceptable Here: {e}")))?,
            ),
            None => None,
        };
        let (ports, local) = self.allocate_ports()?;
        self.media = Some(Media {
            ports: Some(ports),
            leg: None,
            local,
            negotiated,
        });
        Ok(())
    }

    /// An RTP port pair of ours and the SDP origin that goes with it (503 when none is free).
    pub(super) fn allocate_ports(&self) -> Result<(RtpPorts, LocalMedia), (u16, String)> {
        let ports = self
            .core
            .pool
            .allocate(self.caller.source().local.ip())
            .map_err(|e| (503, format!("Service Unavailable: {e}")))?;
        let local = LocalMedia {
            address: self.advertised_ip(),
            port: ports.rtp_port(),
            session_id: rand::random::<u32>() as u64,
            session_version: 1,
        };
        Ok((ports, local))
    }

    /// The peer's answer to our offer (in an ACK): sets what we send and whether.
    pub(super) fn apply_answer(&mut self, body: &[u8]) {
        let Some(media) = self.media.as_mut() else {
            return;
        };
        let negotiated = sdp::parse(body)
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                sdp::negotiate_from_answer(&answer, &self.core.settings.codecs)
                    .map_err(|e| e.to_string())
            });
        match negotiated {
            Ok(n) => {
                if let Some(Leg::Echo(echo)) = &media.leg {
                    echo.update(media::leg_control(&n));
                }
                media.negotiated = Some(n);
                if let (Route::Flow(flow), None) = (self.route.clone(), &media.leg) {
                    if let Err(e) = self.start_bot(flow) {
                        warn!(error = %e, "could not start the bot session");
                    }
                }
                if self.peer.as_ref().is_some_and(|p| p.negotiated.is_some()) {
                    if let Err(e) = self.start_relay() {
                        warn!(error = %e, "could not start the relay");
                    }
                }
            }
            Err(e) => {
                warn!(call_id = self.caller.call_id(), error = %e, "unusable SDP answer in ACK")
            }
        }
    }

    /// A re-INVITE's offer (hold, resume, new address) or, without SDP, our new offer.
    pub(super) fn renegotiate(&mut self, request: &Request) -> Result<String, (u16, String)> {
        let codecs = self.core.settings.codecs.clone();
        let preference = self.core.settings.codec_preference;
        let Some(media) = self.media.as_mut() else {
            return Err((488, "Not Acceptable Here: no media".into()));
        };
        media.local.session_version += 1;
        if request.body.is_empty() {
            return Ok(sdp::build_offer(&media.local, &codecs, Direction::SendRecv));
        }
        let offer = sdp::parse(&request.body).map_err(|e| (400, format!("Malformed SDP: {e}")))?;
        let negotiated = sdp::negotiate_answer(&offer, &codecs, preference)
            .map_err(|e| (488, format!("Not Acceptable Here: {e}")))?;
        match &media.leg {
            Some(Leg::Echo(echo)) => echo.update(media::leg_control(&negotiated)),
            // The bot keeps streaming through hold and resume; its RTP follows the caller.
            Some(Leg::Bot(bot)) => bot.expect_rtp(negotiated.direction.receives()),
            Some(Leg::Relay(relay)) => relay.update(
                voicegate_bridge::relay::Side::A,
                voicegate_bridge::relay::LegDirection {
                    sending: negotiated.direction.sends(),
                    expect_rtp: negotiated.direction.receives(),
                },
                negotiated.remote,
            ),
            Some(Leg::Tone(_)) | None => {}
        }
        let body = sdp::build_answer(&offer, &media.local, &negotiated);
        media.negotiated = Some(negotiated);
        Ok(body)
    }

    /// Our direction towards the caller, as last negotiated.
    pub(super) fn caller_direction(&self) -> Option<Direction> {
        self.media
            .as_ref()
            .and_then(|m| m.negotiated.as_ref())
            .map(|n| n.direction)
    }

    /// Stops the media and gives its ports back at once (the task may linger for Timer J).
    pub(super) fn end_media(&mut self) {
        self.ended_at.get_or_insert_with(Instant::now);
        if let Some(media) = self.media.take() {
            self.media_record.codec = media.negotiated.as_ref().map(|n| n.codec.encoding_name());
            if let Some(Leg::Bot(bot)) = &media.leg {
                bot.caller_hung_up();
            }
            self.stopping.extend(media.leg);
        }
        if let Some(assist) = self.assist.take() {
            if self.end_reason == "caller hung up" {
                // The assisting bot hears `callended`, as it would have before the hand-off.
                assist.caller_hung_up();
            }
            self.stopping.push(Leg::Bot(assist));
        }
        self.tap = None;
        if let Some(peer) = self.peer.as_mut() {
            peer.negotiated = None;
        }
        self.media_events = None;
        self.bot_events = None;
        self.relay_events = None;
    }

    /// Waits for stopping legs' reports (their ports are free after this).
    pub(super) async fn collect_media_report(&mut self) {
        for leg in std::mem::take(&mut self.stopping) {
            match leg {
                Leg::Echo(echo) => self.media_record.report = Some(echo.stop().await),
                Leg::Bot(bot) => {
                    // A listening bot that stopped reading could hold its session (and so the
                    // call record) forever: it gets a few seconds, then its task is dropped.
                    let finished =
                        tokio::time::timeout(std::time::Duration::from_secs(5), bot.finish()).await;
                    if let Ok((report, _ports)) = finished {
                        // The first bot's report is the call's; an assisting bot adds nothing.
                        self.media_record.bot.get_or_insert(report);
                    } else {
                        warn!(
                            call_id = self.caller.call_id(),
                            "bot session did not end in 5 s: dropped"
                        );
                    }
                }
                Leg::Relay(relay) => self.media_record.relay = Some(relay.stop().await.report),
                Leg::Tone(tone) => drop(tone.stop().await),
            }
        }
    }
}
