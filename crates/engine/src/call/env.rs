//! The env of a call on this node ([`NodeEnv`]): what `voicegate_call`'s calls ask of the
//! outside world, done over the SIP core (sending, routes, next hops, counters, the record)
//! and the media tasks of `voicegate-bridge` and `voicegate-rtp`, which it owns.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;
use voicegate_bridge::relay::{LegDirection, RelayEvent, RelayHandle, RelayLeg, Side};
use voicegate_bridge::session::{BotSettings, BridgeEvent, BridgeHandle, CallMedia, SessionReport};
use voicegate_bridge::tap::TapFrame;
use voicegate_bridge::tone::{Tone, ToneHandle};
use voicegate_call::call::env::{
    BotHandOff, CallEnv, CallStart, MediaInput, MediaKind, MediaReports, PairSide, PortsId,
    RelayEnd, RelayStopped,
};
use voicegate_call::settings::CallSettings;
use voicegate_call::{CallRecord, NextHop, Target, Transmit};
use voicegate_rtp::dtmf::DtmfEvent;
use voicegate_rtp::{EchoHandle, LegConfig, LegControl, MediaEvent, RtpPorts};
use voicegate_sip::transport::{Source, TransportKind};

use super::pair::{self, PairLeg};
use crate::core::{CallEvent, CallTx, Core};

/// The caller's media leg as it runs, with the ports it holds.
enum Running {
    Echo(EchoHandle),
    Bot(BridgeHandle, PortsId),
    Relay(RelayHandle, PortsId, PortsId),
    Tone(ToneHandle, PortsId),
}

/// The env of a call on this node: the core and the call's media tasks.
pub struct NodeEnv {
    core: Arc<Core>,
    /// This call's own input queue, for the routes of the legs it places.
    self_tx: CallTx,
    next_ports: u32,
    /// Ports no leg holds now.
    free: Vec<(PortsId, RtpPorts)>,
    running: Option<Running>,
    /// A bot kept listening after the hand-off to an agent (agent assist).
    assist: Option<BridgeHandle>,
    /// Where the relay copies both parties' audio for `assist`.
    tap: Option<mpsc::Sender<TapFrame>>,
    /// Legs being stopped: their reports are collected by the run loop.
    stopping: Vec<Running>,
    leg_events: Option<mpsc::Receiver<MediaEvent>>,
    bot_events: Option<mpsc::Receiver<BridgeEvent>>,
    relay_events: Option<mpsc::Receiver<RelayEvent>>,
}

impl NodeEnv {
    pub fn new(core: Arc<Core>, self_tx: CallTx) -> Self {
        NodeEnv {
            core,
            self_tx,
            next_ports: 0,
            free: Vec::new(),
            running: None,
            assist: None,
            tap: None,
            stopping: Vec::new(),
            leg_events: None,
            bot_events: None,
            relay_events: None,
        }
    }

    fn take_free(&mut self, id: PortsId) -> Result<RtpPorts, String> {
        let i = self
            .free
            .iter()
            .position(|(p, _)| *p == id)
            .ok_or("RTP ports in use")?;
        Ok(self.free.swap_remove(i).1)
    }

    fn give_back(&mut self, id: PortsId, ports: Option<RtpPorts>) {
        if let Some(ports) = ports {
            self.free.push((id, ports));
        }
    }

    /// The next media event of the running legs (pending forever while none runs).
    pub async fn next_event(&mut self) -> MediaInput {
        async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> T {
            match rx.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(event) => event,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            event = next(&mut self.leg_events) => MediaInput::Leg(event),
            event = next(&mut self.bot_events) => MediaInput::Bot(event),
            event = next(&mut self.relay_events) => MediaInput::Relay(event),
        }
    }
}

impl CallEnv for NodeEnv {
    fn settings(&self) -> &CallSettings {
        &self.core.settings.call
    }

    fn user_agent(&self) -> &str {
        self.core.sender().user_agent()
    }

    fn listening_port(&self, transport: TransportKind) -> Option<u16> {
        self.core.listening_port(transport)
    }

    fn local_ip_towards(&self, remote: SocketAddr) -> Option<IpAddr> {
        // The kernel's choice of source address; no packet is sent.
        let bind = if remote.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = std::net::UdpSocket::bind(bind).ok()?;
        socket.connect(remote).ok()?;
        socket.local_addr().ok().map(|a| a.ip())
    }

    fn send(&mut self, t: Transmit) {
        self.core.sender().send_to(&t.source, t.target, t.bytes);
    }

    fn register_leg(&mut self, call_id: &str, local_tag: &str) {
        self.core.register_leg(call_id, local_tag, &self.self_tx);
    }

    fn unregister_leg(&mut self, call_id: &str, local_tag: &str) {
        self.core.unregister_leg(call_id, local_tag);
    }

    async fn resolve(&mut self, hop: &NextHop) -> Result<(Vec<Target>, String), String> {
        let uri = crate::resolve::parse_sip_target(&hop.request_uri)?;
        let targets = self
            .core
            .resolver
            .resolve(&uri.host, uri.port, uri.transport, uri.secure)
            .await?;
        if targets.is_empty() {
            return Err(format!("{} has no address", uri.host));
        }
        Ok((targets, uri.host))
    }

    async fn connect(
        &mut self,
        target: Target,
        server_name: Option<&str>,
    ) -> Result<Source, String> {
        self.core
            .sender()
            .connect(target.transport, target.addr, server_name)
            .await
            .map_err(|e| e.to_string())
    }

    async fn trunk_hops(&mut self, trunk_sid: &str, number: &str) -> Vec<NextHop> {
        super::hops::trunk_hops(&self.core, trunk_sid, number).await
    }

    async fn agent_hops(&mut self, to: &str, number: &str) -> Result<Vec<NextHop>, String> {
        super::hops::agent_hops(&self.core, to, number).await
    }

    fn call_started(&mut self, call: &CallStart<'_>) {
        use std::sync::atomic::Ordering;
        self.core.stats.active.fetch_add(1, Ordering::Relaxed);
        if let Some(in_progress) = &self.core.in_progress {
            in_progress.started(call);
        }
    }

    fn call_answered(&mut self, call_sid: &str) {
        use std::sync::atomic::Ordering;
        self.core.stats.answered.fetch_add(1, Ordering::Relaxed);
        if let Some(in_progress) = &self.core.in_progress {
            in_progress.answered(call_sid);
        }
    }

    fn call_refused(&mut self, cancelled: bool) {
        use std::sync::atomic::Ordering;
        let counter = if cancelled {
            &self.core.stats.cancelled
        } else {
            &self.core.stats.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn call_dtmf(&mut self, call_id: &str, event: DtmfEvent, via: &'static str) {
        use std::sync::atomic::Ordering;
        self.core.stats.dtmf.fetch_add(1, Ordering::Relaxed);
        let _ = self.core.events.send(CallEvent::Dtmf {
            call_id: call_id.to_string(),
            digit: event.digit,
            duration_ms: event.duration_ms,
            via,
        });
    }

    fn call_ended(&mut self, record: &CallRecord) {
        use std::sync::atomic::Ordering;
        let trunk = (record.trunk != voicegate_call::record::NONE).then_some(record.trunk.as_str());
        if let (Some(gate), Some(trunk)) = (self.core.gate.as_ref(), trunk) {
            gate.call_ended(trunk);
        }
        self.core.stats.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(in_progress) = &self.core.in_progress {
            in_progress.ended(&record.call_sid);
        }
        super::record::log(record);
    }

    fn hand_over(
        &mut self,
        call_id: &str,
        number: &str,
        a: PairSide,
        b: PairSide,
    ) -> Result<(), String> {
        let mut joined = Vec::new();
        for side in [a, b] {
            let ports = self.take_free(side.ports)?;
            joined.push(PairLeg {
                leg: side.leg,
                spent: side.spent,
                ports,
                local: side.local,
                negotiated: side.negotiated,
                timer: side.timer,
                label: side.label,
            });
        }
        let b = joined.pop().expect("two sides");
        let a = joined.pop().expect("two sides");
        pair::spawn(
            self.core.clone(),
            call_id.to_string(),
            number.to_string(),
            a,
            b,
        )
    }

    fn allocate_ports(&mut self, local_ip: IpAddr) -> Result<(PortsId, u16), String> {
        let ports = self
            .core
            .pool
            .allocate(local_ip)
            .map_err(|e| e.to_string())?;
        self.next_ports += 1;
        let id = PortsId(self.next_ports);
        let port = ports.rtp_port();
        self.free.push((id, ports));
        Ok((id, port))
    }

    fn release_ports(&mut self, ports: PortsId) {
        self.free.retain(|(id, _)| *id != ports);
    }

    fn media(&self) -> Option<MediaKind> {
        self.running.as_ref().map(|r| match r {
            Running::Echo(..) => MediaKind::Echo,
            Running::Bot(..) => MediaKind::Bot,
            Running::Relay(..) => MediaKind::Relay,
            Running::Tone(..) => MediaKind::Tone,
        })
    }

    fn start_echo(
        &mut self,
        ports: PortsId,
        config: LegConfig,
        control: LegControl,
    ) -> Result<(), String> {
        let lease = self.take_free(ports)?;
        let (events_tx, events_rx) = mpsc::channel(32);
        let echo =
            EchoHandle::start(lease, config, control, events_tx).map_err(|e| e.to_string())?;
        self.running = Some(Running::Echo(echo));
        self.leg_events = Some(events_rx);
        Ok(())
    }

    fn update_echo(&mut self, control: LegControl) {
        if let Some(Running::Echo(echo)) = &self.running {
            echo.update(control);
        }
    }

    fn start_bot(
        &mut self,
        ports: PortsId,
        media: CallMedia,
        bot: BotSettings,
    ) -> Result<(), String> {
        let lease = self.take_free(ports)?;
        let (events_tx, events_rx) = mpsc::channel(32);
        let handle =
            BridgeHandle::start(lease, media, bot, events_tx).map_err(|e| e.to_string())?;
        self.running = Some(Running::Bot(handle, ports));
        self.bot_events = Some(events_rx);
        Ok(())
    }

    fn bot_expect_rtp(&mut self, on: bool) {
        if let Some(Running::Bot(bot, _)) = &self.running {
            bot.expect_rtp(on);
        }
    }

    fn bot_dtmf(&mut self, digit: char, duration_ms: u32) {
        if let Some(Running::Bot(bot, _)) = &self.running {
            bot.dtmf(digit, duration_ms);
        }
    }

    fn start_relay(&mut self, a: RelayEnd, b: RelayEnd) -> Result<(), String> {
        if matches!(self.running, Some(Running::Relay(..))) {
            return Ok(());
        }
        let a_ports = self.take_free(a.ports)?;
        let b_ports = match self.take_free(b.ports) {
            Ok(ports) => ports,
            Err(e) => {
                self.give_back(a.ports, Some(a_ports));
                return Err(e);
            }
        };
        let leg = |end: RelayEnd, ports| RelayLeg {
            ports,
            media: end.media,
            direction: end.direction,
            rtcp_mux: end.rtcp_mux,
            cname: end.cname,
        };
        let (a_id, b_id) = (a.ports, b.ports);
        let (events_tx, events_rx) = mpsc::channel(32);
        let relay =
            RelayHandle::start(leg(a, a_ports), leg(b, b_ports), self.tap.take(), events_tx)
                .map_err(|e| e.to_string())?;
        self.running = Some(Running::Relay(relay, a_id, b_id));
        self.relay_events = Some(events_rx);
        Ok(())
    }

    fn update_relay(&mut self, side: Side, direction: LegDirection, remote: Option<SocketAddr>) {
        if let Some(Running::Relay(relay, ..)) = &self.running {
            relay.update(side, direction, remote);
        }
    }

    fn start_tone(&mut self, ports: PortsId, media: CallMedia, tone: Tone) -> Result<(), String> {
        let lease = self.take_free(ports)?;
        let handle = ToneHandle::start(lease, media, tone).map_err(|e| e.to_string())?;
        self.running = Some(Running::Tone(handle, ports));
        Ok(())
    }

    async fn stop_tone(&mut self) {
        match self.running.take() {
            Some(Running::Tone(tone, id)) => {
                let ports = tone.stop().await;
                self.give_back(id, ports);
            }
            other => self.running = other,
        }
    }

    async fn stop_relay(&mut self) -> Option<RelayStopped> {
        match self.running.take() {
            Some(Running::Relay(relay, a, b)) => {
                self.relay_events = None;
                let parts = relay.stop().await;
                self.give_back(a, parts.a);
                self.give_back(b, parts.b);
                Some(RelayStopped {
                    report: parts.report,
                    a,
                    b,
                })
            }
            other => {
                self.running = other;
                None
            }
        }
    }

    async fn take_ports_from_bot(&mut self, ports: PortsId, assist: bool) -> BotHandOff {
        if self.free.iter().any(|(id, _)| *id == ports) {
            return BotHandOff {
                ports_back: true,
                report: None,
            };
        }
        match self.running.take() {
            Some(Running::Bot(bot, id)) if assist => {
                let (tap_tx, tap_rx) = mpsc::channel::<TapFrame>(64);
                let ports = bot.hand_off(tap_rx).await;
                let ports_back = ports.is_some();
                self.give_back(id, ports);
                self.tap = Some(tap_tx);
                self.assist = Some(bot);
                self.bot_events = None;
                BotHandOff {
                    ports_back,
                    report: None,
                }
            }
            Some(Running::Bot(bot, id)) => {
                self.bot_events = None;
                bot.stop();
                let (report, ports) = bot.finish().await;
                let ports_back = ports.is_some();
                self.give_back(id, ports);
                BotHandOff {
                    ports_back,
                    report: Some(report),
                }
            }
            other => {
                self.running = other;
                BotHandOff {
                    ports_back: false,
                    report: None,
                }
            }
        }
    }

    async fn finish_assist(&mut self) -> Option<SessionReport> {
        let bot = self.assist.take()?;
        self.tap = None;
        let (report, _) = bot.finish().await;
        Some(report)
    }

    fn stop_media(&mut self, caller_hung_up: bool) {
        if let Some(running) = self.running.take() {
            if let Running::Bot(bot, _) = &running {
                bot.caller_hung_up();
            }
            self.stopping.push(running);
        }
        if let Some(assist) = self.assist.take() {
            if caller_hung_up {
                // The assisting bot hears `callended`, as it would have before the hand-off.
                assist.caller_hung_up();
            }
            self.stopping.push(Running::Bot(assist, PortsId(0)));
        }
        self.tap = None;
        self.free.clear();
        self.leg_events = None;
        self.bot_events = None;
        self.relay_events = None;
    }

    async fn collect_media_reports(&mut self) -> MediaReports {
        let mut reports = MediaReports::default();
        for running in std::mem::take(&mut self.stopping) {
            match running {
                Running::Echo(echo) => reports.echo = Some(echo.stop().await),
                Running::Bot(bot, _) => {
                    // A listening bot that stopped reading could hold its session (and so the
                    // call record) forever: it gets a few seconds, then its task is dropped.
                    let grace = std::time::Duration::from_secs(5);
                    match tokio::time::timeout(grace, bot.finish()).await {
                        Ok((report, _ports)) => {
                            reports.bot.get_or_insert(report);
                        }
                        Err(_) => reports.bot_dropped = true,
                    }
                }
                Running::Relay(relay, ..) => reports.relay = Some(relay.stop().await.report),
                Running::Tone(tone, _) => drop(tone.stop().await),
            }
        }
        reports
    }
}
