//! Escalation from a bot to a human agent: the agent's leg rings (the caller hears ringback,
//! an assisting bot may keep listening), the relay joins them when it answers, and the flow's
//! fallback runs when it does not.

use tokio::time::Instant;
use tracing::{info, warn};

use super::b2bua::Pending;
use super::env::{CallEnv, MediaKind};
use super::media::call_media;
use super::Call;
use crate::flow::{self, AgentUnreachable};
use crate::route::Route;
use crate::PeerRole;

impl<E: CallEnv> Call<E> {
    /// The bot asked for an agent (or closed with `connect` as the flow's next step).
    pub(super) async fn start_agent(&mut self, to: &str, from_transfer: bool, now: Instant) {
        if !self.caller.is_up() || self.peer.is_some() {
            return;
        }
        let hops = match self.env.agent_hops(to, &self.number).await {
            Ok(hops) => hops,
            Err(e) => {
                warn!(call_id = self.caller.call_id(), to, error = %e, "cannot reach the agent");
                return self.agent_unreachable();
            }
        };
        let assist = from_transfer && matches!(&self.route, Route::Flow(flow) if flow.agent_assist);
        info!(
            call_id = self.caller.call_id(),
            to, assist, "connecting the caller to an agent"
        );
        // The caller's ports come back from the bot; ringback plays on them.
        let Some(ports) = self.media.as_ref().map(|m| m.ports) else {
            return self.send_bye("agent hand-off failed", "Q.850;cause=41", now);
        };
        let hand_off = self.env.take_ports_from_bot(ports, assist).await;
        if let Some(report) = hand_off.report {
            self.media_record.bot = Some(report);
        }
        if !hand_off.ports_back {
            warn!(
                call_id = self.caller.call_id(),
                "caller's RTP ports did not come back from the bot"
            );
            return self.send_bye(
                "agent hand-off failed",
                "Q.850;cause=41;text=\"hand-off failed\"",
                now,
            );
        }
        let Some(n) = self.media.as_ref().and_then(|m| m.negotiated.clone()) else {
            return self.send_bye("agent hand-off failed", "Q.850;cause=41", now);
        };
        let settings = self.env.settings();
        let (tone, media) = (settings.routing.ringback, call_media(&n, settings));
        if let Err(e) = self.env.start_tone(ports, media, tone) {
            warn!(call_id = self.caller.call_id(), error = %e, "no ringback");
        }
        self.media_record.escalated_to = Some(to.to_string());
        if let Err((status, reason)) = self.start_peer(PeerRole::Agent, hops, now) {
            warn!(
                call_id = self.caller.call_id(),
                status, reason, "agent leg not started"
            );
            self.pending = Some(Pending::Fallback);
        }
    }

    /// The agent cannot even be called (bad target, no carrier): with a running bot and a
    /// `bot` fallback the bot just goes on; otherwise the fallback runs.
    pub(super) fn agent_unreachable(&mut self) {
        let back_to_bot = matches!(&self.route, Route::Flow(flow) if flow.fallback_to_bot);
        let bot_running = self.env.media() == Some(MediaKind::Bot);
        match flow::agent_unreachable(back_to_bot, bot_running) {
            AgentUnreachable::BotGoesOn => {}
            AgentUnreachable::Fallback => self.pending = Some(Pending::Fallback),
        }
    }

    /// The agent answered: ringback off, the caller's ports joined to the agent's.
    pub(super) async fn bridge_agent(&mut self, now: Instant) {
        self.env.stop_tone().await;
        if let Err(e) = self.start_relay() {
            warn!(call_id = self.caller.call_id(), error = %e, "could not bridge the agent");
            self.end_both("agent bridge failed", now);
        }
    }

    /// The agent leg failed: back to the bot, or hang up, as the flow says.
    pub(super) async fn agent_fallback(&mut self, now: Instant) {
        if !self.caller.is_up() {
            return;
        }
        self.env.stop_tone().await;
        if let Some(report) = self.env.finish_assist().await {
            self.media_record.bot = Some(report);
        }
        let failed = self.peer.take();
        self.retire(failed);
        let flow = match &self.route {
            Route::Flow(flow) if flow.fallback_to_bot => Some(flow.clone()),
            _ => None,
        };
        match flow {
            Some(flow) => {
                info!(
                    call_id = self.caller.call_id(),
                    "agent leg failed: back to the bot"
                );
                if let Err(e) = self.start_bot(flow) {
                    warn!(call_id = self.caller.call_id(), error = %e, "bot restart failed");
                    self.send_bye("agent failed and bot restart failed", "Q.850;cause=41", now);
                }
            }
            None => {
                info!(
                    call_id = self.caller.call_id(),
                    "agent leg failed: hanging up"
                );
                self.send_bye(
                    "agent unavailable",
                    "Q.850;cause=17;text=\"agent unavailable\"",
                    now,
                );
            }
        }
    }
}
