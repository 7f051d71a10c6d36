//! A flow's bot in a call: the session that streams the caller's audio to it, and what its
//! end or its transfer request means for the call.

use std::sync::Arc;

use crate::flow::{self, AfterBot, BotEnd};
use tokio::time::Instant;
use tracing::{info, warn};
use voicegate_bridge::session::{BotSettings, SessionEnd};

use super::b2bua::Pending;
use super::env::CallEnv;
use super::media;
use super::Call;
use crate::route::Route;
use crate::settings::FlowRoute;

impl<E: CallEnv> Call<E> {
    /// Starts streaming to the flow's bot on the call's ports.
    pub(super) fn start_bot(&mut self, flow: Arc<FlowRoute>) -> Result<(), String> {
        let media = self.media.as_ref().ok_or("no media")?;
        let negotiated = media.negotiated.as_ref().ok_or("no negotiated codec")?;
        let settings = self.env.settings();
        let call_media = media::call_media(negotiated, settings);
        let bot = BotSettings {
            url: flow.url.clone(),
            protocol: flow.protocol,
            bidirectional: flow.bidirectional,
            client: settings.bridge.client.clone(),
            media_interval: settings.bridge.media_interval,
            max_session: settings.bridge.max_session,
            playout_max: settings.bridge.playout_max,
            final_playout_max: settings.bridge.final_playout_max,
            write_timeout: settings.bridge.bot_write_timeout,
            max_messages_per_sec: settings.bridge.max_bot_messages_per_sec,
            max_bytes_per_sec: settings.bridge.max_bot_bytes_per_sec,
            silence_when_idle: settings.bridge.silence_when_idle,
            call_sid: self.call_sid.clone(),
            account_sid: flow.account_sid.clone(),
            from: self.caller.caller_user(),
            to: self.number.clone(),
            extra_parameters: flow
                .parameters
                .iter()
                .cloned()
                .chain(
                    self.caller
                        .forwarded_headers(&settings.bridge.forward_headers),
                )
                .collect(),
        };
        let ports = media.ports;
        self.env.start_bot(ports, call_media, bot)
    }

    /// The bot step ended: the flow's next step (hang up) unless the caller already left.
    pub(super) fn on_bot_end(&mut self, end: SessionEnd, now: Instant) {
        let end = match end {
            SessionEnd::CallerHungUp | SessionEnd::Stopped => BotEnd::ByUs,
            SessionEnd::BotClosed(why) => BotEnd::Closed(why),
            SessionEnd::BotUnreachable(why) => BotEnd::Unreachable(why),
            SessionEnd::MaxDuration => BotEnd::MaxDuration,
            SessionEnd::BotHangup => BotEnd::HungUp,
            SessionEnd::RtpTimeout => BotEnd::RtpTimeout,
        };
        let connect_on_end = match &self.route {
            Route::Flow(flow) => flow.connect_on_end.clone(),
            _ => None,
        };
        match flow::after_bot(&end, connect_on_end.as_deref(), self.caller.is_up()) {
            AfterBot::Nothing => {}
            AfterBot::RtpTimeout => self.on_rtp_timeout(now),
            AfterBot::Agent(to) => {
                info!(
                    call_id = self.caller.call_id(),
                    to, "bot closed: connecting to the agent"
                );
                self.pending = Some(Pending::Agent {
                    to,
                    from_transfer: false,
                });
            }
            AfterBot::HangUp(reason) => {
                info!(
                    call_id = self.caller.call_id(),
                    reason, "bot step ended: hanging up"
                );
                if self.caller.is_up() {
                    let text = reason.replace('"', "'");
                    self.send_bye(&reason, &format!("Q.850;cause=16;text=\"{text}\""), now);
                }
            }
        }
    }

    /// The bot asked for a transfer: to the agent it names, else the flow's.
    pub(super) fn on_bot_transfer(&mut self, to: String) {
        let Route::Flow(flow) = &self.route else {
            return;
        };
        let Some(to) = flow::transfer_target(&to, flow.default_agent.as_deref()) else {
            return warn!(
                call_id = self.caller.call_id(),
                "bot transfer names no agent and the flow has none"
            );
        };
        if self.peer.is_some() || !self.caller.is_up() {
            return;
        }
        info!(
            call_id = self.caller.call_id(),
            to, "bot asked for a transfer"
        );
        self.pending = Some(Pending::Agent {
            to,
            from_transfer: true,
        });
    }
}
