//! The caller's media: our RTP ports and the offer/answer before we ring, the answer of a
//! delayed offer, re-negotiation on a re-INVITE, and stopping the media legs with their
//! reports for the record.

use tokio::time::Instant;
use tracing::warn;
use voicegate_sip::accept;
use voicegate_sip::message::Request;
use voicegate_sip::sdp::{self, Direction, LocalMedia};

use super::env::{CallEnv, MediaKind, PortsId};
use super::media;
use super::{Call, Media};
use crate::route::Route;

impl<E: CallEnv> Call<E> {
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
                    &self.env.settings().codecs,
                    self.env.settings().codec_preference,
                )
                .map_err(|e| (488, format!("Not Acceptable Here: {e}")))?,
            ),
            None => None,
        };
        let (ports, local) = self.allocate_ports()?;
        self.media = Some(Media {
            ports,
            local,
            negotiated,
        });
        Ok(())
    }

    /// An RTP port pair of ours and the SDP origin that goes with it (503 when none is free).
    pub(super) fn allocate_ports(&mut self) -> Result<(PortsId, LocalMedia), (u16, String)> {
        let local_ip = self.caller.source().local.ip();
        let (ports, port) = self
            .env
            .allocate_ports(local_ip)
            .map_err(|e| (503, format!("Service Unavailable: {e}")))?;
        let local = LocalMedia {
            address: self.advertised_ip(),
            port,
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
                sdp::negotiate_from_answer(&answer, &self.env.settings().codecs)
                    .map_err(|e| e.to_string())
            });
        match negotiated {
            Ok(n) => {
                if self.env.media() == Some(MediaKind::Echo) {
                    self.env.update_echo(media::leg_control(&n));
                }
                media.negotiated = Some(n);
                if let (Route::Flow(flow), None) = (self.route.clone(), self.env.media()) {
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
        let codecs = self.env.settings().codecs.clone();
        let preference = self.env.settings().codec_preference;
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
        match self.env.media() {
            Some(MediaKind::Echo) => self.env.update_echo(media::leg_control(&negotiated)),
            // The bot keeps streaming through hold and resume; its RTP follows the caller.
            Some(MediaKind::Bot) => self.env.bot_expect_rtp(negotiated.direction.receives()),
            Some(MediaKind::Relay) => self.env.update_relay(
                voicegate_bridge::relay::Side::A,
                media::direction_of(&negotiated),
                negotiated.remote,
            ),
            Some(MediaKind::Tone) | None => {}
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
        }
        self.env.stop_media(self.end_reason == "caller hung up");
        if let Some(peer) = self.peer.as_mut() {
            peer.negotiated = None;
        }
    }

    /// Takes the stopped legs' reports (their ports are free after this).
    pub(super) async fn collect_media_report(&mut self) {
        let reports = self.env.collect_media_reports().await;
        if reports.echo.is_some() {
            self.media_record.report = reports.echo;
        }
        if let Some(bot) = reports.bot {
            // The first bot's report is the call's; an assisting bot adds nothing.
            self.media_record.bot.get_or_insert(bot);
        }
        if reports.relay.is_some() {
            self.media_record.relay = reports.relay;
        }
        if reports.bot_dropped {
            warn!(
                call_id = self.caller.call_id(),
                "bot session did not end in 5 s: dropped"
            );
        }
    }
}
