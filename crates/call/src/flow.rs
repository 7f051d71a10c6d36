//! What a flow's call does when its bot is done: the flow's next step after the bot's
//! session ends, the agent a bot's transfer request goes to, and what happens when the
//! agent cannot be reached.

/// How a bot session ended, as the call sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BotEnd {
    /// We ended it (the caller hung up, or the caller was handed to an agent): the call
    /// already knows what comes next.
    ByUs,
    /// The bot closed its socket (after its queued audio played).
    Closed(String),
    /// The bot could not be reached.
    Unreachable(String),
    /// The session reached its maximum length.
    MaxDuration,
    /// The bot asked to hang up.
    HungUp,
    /// The caller's RTP stopped.
    RtpTimeout,
}

/// The call's next step after its bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterBot {
    /// Connect the caller to this agent (the flow's `connect` on stream end).
    Agent(String),
    /// Hang up, for this reason (BYE to an answered caller).
    HangUp(String),
    /// End the call as for any RTP timeout.
    RtpTimeout,
    /// Nothing more to do.
    Nothing,
}

/// After the bot: the flow's agent when the bot closed the stream on an answered caller
/// (`connect_on_end`), else a hang-up saying why.
pub fn after_bot(end: &BotEnd, connect_on_end: Option<&str>, caller_up: bool) -> AfterBot {
    if let (BotEnd::Closed(_), Some(agent), true) = (end, connect_on_end, caller_up) {
        return AfterBot::Agent(agent.to_string());
    }
    let reason = match end {
        BotEnd::ByUs => return AfterBot::Nothing,
        BotEnd::RtpTimeout => return AfterBot::RtpTimeout,
        BotEnd::Closed(why) => format!("bot closed the stream: {why}"),
        BotEnd::Unreachable(why) => format!("bot unreachable: {why}"),
        BotEnd::MaxDuration => "bot session reached its maximum length".to_string(),
        BotEnd::HungUp => "bot hung up".to_string(),
    };
    AfterBot::HangUp(reason)
}

/// The agent a bot's transfer request goes to: the one it names, else the flow's default
/// (None: neither names one).
pub fn transfer_target(asked: &str, default_agent: Option<&str>) -> Option<String> {
    let asked = asked.trim();
    if asked.is_empty() {
        default_agent.map(str::to_string)
    } else {
        Some(asked.to_string())
    }
}

/// What follows when the agent's leg could not be placed at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentUnreachable {
    /// The bot is still streaming and the flow falls back to it: it simply goes on.
    BotGoesOn,
    /// The flow's fallback runs (back to a new bot session, or hang up).
    Fallback,
}

pub fn agent_unreachable(fallback_to_bot: bool, bot_running: bool) -> AgentUnreachable {
    if fallback_to_bot && bot_running {
        AgentUnreachable::BotGoesOn
    } else {
        AgentUnreachable::Fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bot_that_closes_hands_an_answered_caller_to_the_flows_agent() {
        let closed = BotEnd::Closed("normal".into());
        assert_eq!(
            after_bot(&closed, Some("sip:agent@pbx"), true),
            AfterBot::Agent("sip:agent@pbx".into())
        );
        assert_eq!(
            after_bot(&closed, Some("sip:agent@pbx"), false),
            AfterBot::HangUp("bot closed the stream: normal".into()),
            "a caller already gone is not connected"
        );
        assert_eq!(
            after_bot(&closed, None, true),
            AfterBot::HangUp("bot closed the stream: normal".into())
        );
    }

    #[test]
    fn other_endings_hang_up_saying_why_and_ours_do_nothing() {
        let agent = Some("sip:agent@pbx");
        assert_eq!(after_bot(&BotEnd::ByUs, agent, true), AfterBot::Nothing);
        assert_eq!(
            after_bot(&BotEnd::RtpTimeout, agent, true),
            AfterBot::RtpTimeout
        );
        assert_eq!(
            after_bot(&BotEnd::HungUp, agent, true),
            AfterBot::HangUp("bot hung up".into()),
            "a bot hanging up is no hand-off"
        );
        assert_eq!(
            after_bot(&BotEnd::Unreachable("refused".into()), agent, true),
            AfterBot::HangUp("bot unreachable: refused".into())
        );
        assert_eq!(
            after_bot(&BotEnd::MaxDuration, None, true),
            AfterBot::HangUp("bot session reached its maximum length".into())
        );
    }

    #[test]
    fn a_transfer_goes_to_the_named_agent_else_the_flows() {
        assert_eq!(
            transfer_target(" sip:a@pbx ", Some("sip:default@pbx")),
            Some("sip:a@pbx".into())
        );
        assert_eq!(
            transfer_target("", Some("sip:default@pbx")),
            Some("sip:default@pbx".into())
        );
        assert_eq!(transfer_target("  ", None), None);
    }

    #[test]
    fn an_unreachable_agent_leaves_a_running_bot_on_when_the_flow_falls_back_to_it() {
        assert_eq!(agent_unreachable(true, true), AgentUnreachable::BotGoesOn);
        assert_eq!(agent_unreachable(true, false), AgentUnreachable::Fallback);
        assert_eq!(agent_unreachable(false, true), AgentUnreachable::Fallback);
    }
}
