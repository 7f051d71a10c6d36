//! Calls driven without sockets or tasks: a [`FakeEnv`] records what the call sends and what
//! it asks of its media, next hops answer from a table, and time is tokio's paused clock. REFER
//! from either side, hold and resume, a failed session refresh, a CANCEL racing the answer,
//! escalation from a bot to an agent, and the bot taking the caller back.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use voicegate_bridge::relay::{LegDirection, RelayReport, Side};
use voicegate_bridge::session::{BotSettings, BridgeEvent, CallMedia, SessionReport};
use voicegate_bridge::tone::Tone;
use voicegate_rtp::dtmf::DtmfEvent;
use voicegate_rtp::{LegConfig, LegControl};
use voicegate_sip::message::{parse, Message, Method, Request, Response};
use voicegate_sip::transport::{Source, TransportKind};

use super::env::{
    BotHandOff, CallEnv, CallStart, MediaInput, MediaKind, MediaReports, PairSide, PortsId,
    RelayEnd, RelayStopped,
};
use super::Call;
use crate::caller::CallerState;
use crate::hop::{NextHop, Target};
use crate::incoming::Transmit;
use crate::record::CallRecord;
use crate::route::{Admitted, Route};
use crate::settings::{BridgeSettings, CallSettings, FlowRoute, RoutingSettings};

const US: &str = "192.0.2.1:5060";
const CALLER: &str = "192.0.2.10:5062";
const CARRIER: &str = "192.0.2.20:5060";
const AGENT: &str = "192.0.2.30:5060";
const AGENT_URI: &str = "sip:agent@192.0.2.30";

fn addr(a: &str) -> SocketAddr {
    a.parse().unwrap()
}

fn offer(direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a={direction}\r\n"
    )
}

fn answer_sdp(host: &str, direction: &str) -> String {
    format!(
        "v=0\r\no=- 2 2 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    )
}

/// The node as the call sees it, recording instead of doing.
struct FakeEnv {
    settings: CallSettings,
    sent: Vec<Transmit>,
    /// What the call asked of its media and the node, in order.
    log: Vec<String>,
    next_ports: u32,
    free: Vec<PortsId>,
    running: Option<(MediaKind, Vec<PortsId>)>,
    assisting: bool,
}

impl FakeEnv {
    fn new(settings: CallSettings) -> Self {
        FakeEnv {
            settings,
            sent: Vec::new(),
            log: Vec::new(),
            next_ports: 0,
            free: Vec::new(),
            running: None,
            assisting: false,
        }
    }

    fn take(&mut self, ports: PortsId) -> Result<(), String> {
        let i = self
            .free
            .iter()
            .position(|p| *p == ports)
            .ok_or("RTP ports in use")?;
        self.free.swap_remove(i);
        Ok(())
    }

    fn run(&mut self, kind: MediaKind, ports: Vec<PortsId>, what: String) {
        self.running = Some((kind, ports));
        self.log.push(what);
    }

    /// The running leg stops; its ports come back.
    fn stop(&mut self, kind: MediaKind) -> Option<Vec<PortsId>> {
        match self.running.take() {
            Some((k, ports)) if k == kind => {
                self.free.extend(&ports);
                Some(ports)
            }
            other => {
                self.running = other;
                None
            }
        }
    }
}

impl CallEnv for FakeEnv {
    fn settings(&self) -> &CallSettings {
        &self.settings
    }

    fn user_agent(&self) -> &str {
        "voicegate-test"
    }

    fn listening_port(&self, _: TransportKind) -> Option<u16> {
        Some(5060)
    }

    fn local_ip_towards(&self, _: SocketAddr) -> Option<IpAddr> {
        None
    }

    fn send(&mut self, t: Transmit) {
        self.sent.push(t);
    }

    fn register_leg(&mut self, _: &str, _: &str) {}

    fn unregister_leg(&mut self, _: &str, _: &str) {}

    async fn resolve(&mut self, hop: &NextHop) -> Result<(Vec<Target>, String), String> {
        Err(format!("no DNS here: {}", hop.request_uri))
    }

    async fn connect(&mut self, target: Target, _: Option<&str>) -> Result<Source, String> {
        Ok(Source {
            transport: target.transport,
            remote: target.addr,
            local: addr(US),
            connection: None,
        })
    }

    async fn trunk_hops(&mut self, _: &str, _: &str) -> Vec<NextHop> {
        Vec::new()
    }

    async fn agent_hops(&mut self, to: &str, _: &str) -> Result<Vec<NextHop>, String> {
        if to != AGENT_URI {
            return Err(format!("unknown agent {to}"));
        }
        Ok(vec![hop("agent", AGENT)])
    }

    fn call_started(&mut self, _: &CallStart<'_>) {}

    fn call_answered(&mut self, _: &str) {
        self.log.push("answered".into());
    }

    fn call_refused(&mut self, cancelled: bool) {
        self.log.push(format!("refused (cancelled: {cancelled})"));
    }

    fn call_dtmf(&mut self, _: &str, event: DtmfEvent, via: &'static str) {
        self.log.push(format!("digit {} by {via}", event.digit));
    }

    fn call_ended(&mut self, _: &CallRecord) {
        self.log.push("ended".into());
    }

    fn hand_over(&mut self, _: &str, _: &str, a: PairSide, b: PairSide) -> Result<(), String> {
        self.take(a.ports)?;
        self.take(b.ports)?;
        self.log.push(format!("pair {} + {}", a.label, b.label));
        Ok(())
    }

    fn allocate_ports(&mut self, _: IpAddr) -> Result<(PortsId, u16), String> {
        self.next_ports += 1;
        let id = PortsId(self.next_ports);
        self.free.push(id);
        Ok((id, 10_000 + 2 * self.next_ports as u16))
    }

    fn release_ports(&mut self, ports: PortsId) {
        self.free.retain(|p| *p != ports);
    }

    fn media(&self) -> Option<MediaKind> {
        self.running.as_ref().map(|(kind, _)| *kind)
    }

    fn start_echo(&mut self, ports: PortsId, _: LegConfig, _: LegControl) -> Result<(), String> {
        self.take(ports)?;
        self.run(MediaKind::Echo, vec![ports], format!("echo on {}", ports.0));
        Ok(())
    }

    fn update_echo(&mut self, _: LegControl) {
        self.log.push("echo updated".into());
    }

    fn start_bot(&mut self, ports: PortsId, _: CallMedia, bot: BotSettings) -> Result<(), String> {
        self.take(ports)?;
        let what = format!("bot on {} for {}", ports.0, bot.to);
        self.run(MediaKind::Bot, vec![ports], what);
        Ok(())
    }

    fn bot_expect_rtp(&mut self, on: bool) {
        self.log.push(format!("bot expects RTP: {on}"));
    }

    fn bot_dtmf(&mut self, digit: char, _: u32) {
        self.log.push(format!("bot hears {digit}"));
    }

    fn start_relay(&mut self, a: RelayEnd, b: RelayEnd) -> Result<(), String> {
        self.take(a.ports)?;
        if let Err(e) = self.take(b.ports) {
            self.free.push(a.ports);
            return Err(e);
        }
        let what = format!("relay {} <-> {}", a.ports.0, b.ports.0);
        self.run(MediaKind::Relay, vec![a.ports, b.ports], what);
        Ok(())
    }

    fn update_relay(&mut self, side: Side, direction: LegDirection, _: Option<SocketAddr>) {
        self.log.push(format!(
            "relay {side:?} sends: {}, expects: {}",
            direction.sending, direction.expect_rtp
        ));
    }

    fn start_tone(&mut self, ports: PortsId, _: CallMedia, _: Tone) -> Result<(), String> {
        self.take(ports)?;
        self.run(
            MediaKind::Tone,
            vec![ports],
            format!("ringback on {}", ports.0),
        );
        Ok(())
    }

    async fn stop_tone(&mut self) {
        if self.stop(MediaKind::Tone).is_some() {
            self.log.push("ringback off".into());
        }
    }

    async fn stop_relay(&mut self) -> Option<RelayStopped> {
        let ports = self.stop(MediaKind::Relay)?;
        self.log.push("relay off".into());
        Some(RelayStopped {
            report: RelayReport::default(),
            a: ports[0],
            b: ports[1],
        })
    }

    async fn take_ports_from_bot(&mut self, ports: PortsId, assist: bool) -> BotHandOff {
        if self.free.contains(&ports) {
            return BotHandOff {
                ports_back: true,
                report: None,
            };
        }
        if self.stop(MediaKind::Bot).is_none() {
            return BotHandOff {
                ports_back: false,
                report: None,
            };
        }
        self.assisting = assist;
        self.log
            .push(if assist { "bot listens" } else { "bot off" }.into());
        BotHandOff {
            ports_back: true,
            report: (!assist).then(SessionReport::default),
        }
    }

    async fn finish_assist(&mut self) -> Option<SessionReport> {
        std::mem::take(&mut self.assisting).then(SessionReport::default)
    }

    fn stop_media(&mut self, _: bool) {
        if self.running.take().is_some() {
            self.log.push("media off".into());
        }
        self.free.clear();
    }

    async fn collect_media_reports(&mut self) -> MediaReports {
        MediaReports::default()
    }
}

fn hop(label: &str, at: &str) -> NextHop {
    NextHop {
        request_uri: format!("sip:+15550123@{at}"),
        credentials: None,
        fixed: Some(Target {
            addr: addr(at),
            transport: TransportKind::Udp,
        }),
        label: label.to_string(),
        to: None,
    }
}

fn settings() -> CallSettings {
    use voicegate_sip::sdp::{Codec, CodecPreference};
    CallSettings {
        codecs: vec![Codec::Pcmu, Codec::Pcma],
        codec_preference: CodecPreference::Offer,
        ring_duration: Duration::ZERO,
        ring_timeout: Duration::from_secs(180),
        public_ip: None,
        timers: Default::default(),
        latching: voicegate_rtp::latch::LatchPolicy::Auto,
        bridge: BridgeSettings {
            client: Default::default(),
            media_interval: Duration::from_millis(100),
            max_session: Duration::from_secs(3600),
            playout_max: Duration::from_secs(60),
            final_playout_max: Duration::from_secs(10),
            bot_write_timeout: Duration::from_secs(10),
            max_bot_messages_per_sec: 0,
            max_bot_bytes_per_sec: 0,
            silence_when_idle: true,
            forward_headers: Vec::new(),
        },
        rtp_timeout: Duration::from_secs(30),
        routing: RoutingSettings {
            attempt_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(60),
            session_timer: Default::default(),
            ringback: Tone::Ringback,
        },
    }
}

fn flow() -> Arc<FlowRoute> {
    Arc::new(FlowRoute {
        name: "support".into(),
        account_sid: "AC1".into(),
        url: voicegate_bridge::ws::BotUrl::parse("ws://127.0.0.1:9/bot").unwrap(),
        protocol: voicegate_bridge::dialect::Protocol::Exotel,
        bidirectional: true,
        numbers: Vec::new(),
        parameters: Vec::new(),
        connect_on_end: None,
        default_agent: Some(AGENT_URI.into()),
        agent_assist: false,
        fallback_to_bot: true,
    })
}

fn parsed(t: &Transmit) -> Message {
    parse(&t.bytes).unwrap_or_else(|e| panic!("we sent something unparsable: {e:?}"))
}

/// A SIP request as text, parsed.
#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    uri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    headers: &str,
    body: &str,
) -> Request {
    let content = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".into()
    };
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\n\
To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{headers}{content}\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

/// A call in a test: its env, and the dialogs as the far ends see them.
struct Harness {
    call: Call<FakeEnv>,
    /// The caller's next CSeq.
    caller_cseq: u32,
}

impl Harness {
    async fn start(route: Route, settings: CallSettings) -> Harness {
        let invite = request(
            "INVITE",
            "sip:+15550123@192.0.2.1",
            &format!("{CALLER};branch=z9hG4bK-caller"),
            "<sip:+15550100@192.0.2.10>;tag=caller",
            "<sip:+15550123@192.0.2.1>",
            "caller-call@192.0.2.10",
            1,
            "Contact: <sip:+15550100@192.0.2.10:5062>\r\n",
            &offer("sendrecv"),
        );
        let source = Source {
            transport: TransportKind::Udp,
            remote: addr(CALLER),
            local: addr(US),
            connection: None,
        };
        let admitted = Admitted {
            route,
            trunk_sid: None,
            caller_id: None,
            direction: "local",
        };
        let env = FakeEnv::new(settings);
        let mut call = Call::new(env, invite, source, "ours", admitted, Instant::now());
        call.start(Instant::now()).await;
        call.settle().await;
        Harness {
            call,
            caller_cseq: 2,
        }
    }

    async fn forward() -> Harness {
        Harness::start(Route::Forward(vec![hop("carrier", CARRIER)]), settings()).await
    }

    /// What went out since last asked: where, and the message.
    fn sent(&mut self) -> Vec<(SocketAddr, Message)> {
        std::mem::take(&mut self.call.env.sent)
            .iter()
            .map(|t| (t.target, parsed(t)))
            .collect()
    }

    /// The requests that went to `to` since last asked (the rest is dropped).
    fn requests_to(&mut self, to: &str) -> Vec<Request> {
        requests_in(&self.sent(), to)
    }

    fn log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.call.env.log)
    }

    async fn far_end_sends(&mut self, request: Request, from: &str) {
        let source = Source {
            transport: TransportKind::Udp,
            remote: addr(from),
            local: addr(US),
            connection: None,
        };
        self.call.on_request(request, source, Instant::now());
        self.call.settle().await;
    }

    async fn response(&mut self, response: Response) {
        self.call.on_response(&response, Instant::now());
        self.call.settle().await;
    }

    async fn media(&mut self, input: MediaInput) {
        self.call.on_media_input(input, Instant::now());
        self.call.settle().await;
    }

    /// Time passes to `after` from now; the call's timers run.
    async fn wait(&mut self, after: Duration) {
        tokio::time::advance(after).await;
        self.call.on_timeout(Instant::now());
        self.call.settle().await;
    }

    /// A request of the caller in its dialog.
    async fn caller_sends(&mut self, method: &str, headers: &str, body: &str) {
        let cseq = self.caller_cseq;
        self.caller_cseq += 1;
        let request = request(
            method,
            "sip:+15550123@192.0.2.1:5060",
            &format!("{CALLER};branch=z9hG4bK-caller-{cseq}"),
            "<sip:+15550100@192.0.2.10>;tag=caller",
            "<sip:+15550123@192.0.2.1>;tag=ours",
            "caller-call@192.0.2.10",
            cseq,
            headers,
            body,
        );
        self.far_end_sends(request, CALLER).await;
    }

    async fn caller_acks(&mut self) {
        let ack = request(
            "ACK",
            "sip:+15550123@192.0.2.1:5060",
            &format!("{CALLER};branch=z9hG4bK-caller-ack"),
            "<sip:+15550100@192.0.2.10>;tag=caller",
            "<sip:+15550123@192.0.2.1>;tag=ours",
            "caller-call@192.0.2.10",
            1,
            "",
            "",
        );
        self.far_end_sends(ack, CALLER).await;
    }

    /// The far end at `at` answers our `invite` (`tag` is its dialog tag).
    async fn answers(&mut self, invite: &Request, status: u16, tag: &str, at: &str, sdp: &str) {
        let mut response = invite
            .response(status, "Answer")
            .with_to_tag(tag)
            .header("Contact", format!("<sip:far@{at}>"));
        if !sdp.is_empty() {
            response = response.with_body("application/sdp", bytes::Bytes::from(sdp.to_string()));
        }
        self.response(response).await;
    }

    /// A request of a far end in a dialog we placed with `invite`, answered with `their_tag`.
    fn in_our_dialog(
        invite: &Request,
        their_tag: &str,
        at: &str,
        method: &str,
        cseq: u32,
        headers: &str,
        body: &str,
    ) -> Request {
        let our_tag = invite.from_tag().expect("our tag");
        request(
            method,
            "sip:+15550100@192.0.2.1:5060",
            &format!("{at};branch=z9hG4bK-{method}-{cseq}"),
            &format!("<sip:+15550123@{at}>;tag={their_tag}"),
            &format!("<sip:+15550100@192.0.2.1>;tag={our_tag}"),
            invite.call_id(),
            cseq,
            &format!("Contact: <sip:far@{at}>\r\n{headers}"),
            body,
        )
    }

    /// The forwarded call answered by the carrier and acknowledged by the caller: the
    /// carrier's INVITE.
    async fn answered(&mut self, carrier_headers: &str) -> Request {
        let invite = self.requests_to(CARRIER).remove(0);
        let mut response = invite
            .response(200, "OK")
            .with_to_tag("carrier")
            .header("Contact", format!("<sip:far@{CARRIER}>"))
            .with_body(
                "application/sdp",
                bytes::Bytes::from(answer_sdp("192.0.2.20", "sendrecv")),
            );
        for line in carrier_headers.lines().filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').unwrap();
            response = response.header(name.trim(), value.trim());
        }
        self.response(response).await;
        self.caller_acks().await;
        invite
    }
}

/// The requests among `sent` that went to `to`, in order.
fn requests_in(sent: &[(SocketAddr, Message)], to: &str) -> Vec<Request> {
    sent.iter()
        .filter(|(target, _)| *target == addr(to))
        .filter_map(|(_, m)| match m {
            Message::Request(r) => Some(r.clone()),
            Message::Response(_) => None,
        })
        .collect()
}

/// The responses among `sent` that went to `to`, in order.
fn responses_in(sent: &[(SocketAddr, Message)], to: &str) -> Vec<Response> {
    sent.iter()
        .filter(|(target, _)| *target == addr(to))
        .filter_map(|(_, m)| match m {
            Message::Response(r) => Some(r.clone()),
            Message::Request(_) => None,
        })
        .collect()
}

fn statuses_to(sent: &[(SocketAddr, Message)], to: &str) -> Vec<u16> {
    responses_in(sent, to).iter().map(|r| r.status).collect()
}

fn methods(requests: &[Request]) -> Vec<String> {
    requests.iter().map(|r| r.method.to_string()).collect()
}

/// The sipfrag status line a NOTIFY carries.
fn sipfrag(notify: &Request) -> String {
    String::from_utf8_lossy(&notify.body).trim().to_string()
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_call_is_answered_when_the_carrier_answers() {
    let mut h = Harness::forward().await;
    let sent = h.sent();
    assert_eq!(statuses_to(&sent, CALLER), vec![100]);
    let invite = requests_in(&sent, CARRIER)
        .into_iter()
        .next()
        .expect("an INVITE to the carrier");
    assert_eq!(invite.method, Method::Invite);
    h.call.env.sent.clear();
    h.answers(
        &invite,
        200,
        "carrier",
        CARRIER,
        &answer_sdp("192.0.2.20", "sendrecv"),
    )
    .await;
    let sent = h.sent();
    assert_eq!(statuses_to(&sent, CALLER), vec![200]);
    assert!(sent.iter().any(|(to, m)| *to == addr(CARRIER)
        && matches!(m, Message::Request(r) if r.method == Method::Ack)));
    assert_eq!(h.log(), vec!["relay 1 <-> 2", "answered"]);
}

#[tokio::test(start_paused = true)]
async fn the_carriers_refer_moves_the_caller_to_the_target() {
    let mut h = Harness::forward().await;
    let carrier_invite = h.answered("").await;
    h.sent();
    h.log();
    let refer = Harness::in_our_dialog(
        &carrier_invite,
        "carrier",
        CARRIER,
        "REFER",
        10,
        &format!("Refer-To: <{AGENT_URI}>\r\n"),
        "",
    );
    h.far_end_sends(refer, CARRIER).await;
    let sent = h.sent();
    assert_eq!(statuses_to(&sent, CARRIER), vec![202]);
    let to_carrier = requests_in(&sent, CARRIER);
    assert_eq!(methods(&to_carrier), vec!["NOTIFY"]);
    assert_eq!(sipfrag(&to_carrier[0]), "SIP/2.0 100 Trying");
    let target_invite = requests_in(&sent, AGENT)
        .into_iter()
        .next()
        .expect("an INVITE to the target");
    assert!(
        statuses_to(&sent, CALLER).is_empty(),
        "the caller hears nothing yet"
    );

    h.answers(
        &target_invite,
        200,
        "agent",
        AGENT,
        &answer_sdp("192.0.2.30", "sendrecv"),
    )
    .await;
    let to_carrier = h.requests_to(CARRIER);
    assert_eq!(methods(&to_carrier), vec!["NOTIFY", "BYE"]);
    assert_eq!(sipfrag(&to_carrier[0]), "SIP/2.0 200 OK");
    assert_eq!(h.log(), vec!["relay off", "relay 1 <-> 3"]);
    assert!(
        h.call.caller.is_up(),
        "the caller stays, now with the target"
    );
}

#[tokio::test(start_paused = true)]
async fn the_callers_refer_leaves_the_carrier_and_the_target_together() {
    let mut h = Harness::forward().await;
    h.answered("").await;
    h.sent();
    h.log();
    h.caller_sends("REFER", &format!("Refer-To: <{AGENT_URI}>\r\n"), "")
        .await;
    let sent = h.sent();
    assert_eq!(statuses_to(&sent, CALLER), vec![202]);
    let target_invite = requests_in(&sent, AGENT)
        .into_iter()
        .next()
        .expect("an INVITE to the target");
    let notify = requests_in(&sent, CALLER)
        .into_iter()
        .next()
        .expect("a NOTIFY to the caller");
    assert_eq!(sipfrag(&notify), "SIP/2.0 100 Trying");

    h.answers(
        &target_invite,
        200,
        "agent",
        AGENT,
        &answer_sdp("192.0.2.30", "sendrecv"),
    )
    .await;
    let to_caller = h.requests_to(CALLER);
    assert_eq!(methods(&to_caller), vec!["NOTIFY", "BYE"]);
    assert_eq!(sipfrag(&to_caller[0]), "SIP/2.0 200 OK");
    assert_eq!(
        h.log(),
        vec!["relay off", "pair carrier + agent"],
        "the carrier's ports and the target's go to the pair"
    );
    assert_eq!(h.call.caller.state(), CallerState::Ending);
}

#[tokio::test(start_paused = true)]
async fn a_refer_before_the_answer_is_refused_and_a_second_one_waits() {
    let mut h = Harness::forward().await;
    h.sent();
    h.caller_sends("REFER", &format!("Refer-To: <{AGENT_URI}>\r\n"), "")
        .await;
    assert_eq!(
        statuses_to(&h.sent(), CALLER),
        vec![403],
        "nothing to transfer before the answer"
    );
    let mut h = Harness::forward().await;
    h.answered("").await;
    h.sent();
    h.caller_sends("REFER", &format!("Refer-To: <{AGENT_URI}>\r\n"), "")
        .await;
    h.sent();
    h.caller_sends("REFER", &format!("Refer-To: <{AGENT_URI}>\r\n"), "")
        .await;
    assert_eq!(statuses_to(&h.sent(), CALLER), vec![491]);
}

#[tokio::test(start_paused = true)]
async fn the_callers_hold_and_resume_reach_the_carrier() {
    let mut h = Harness::forward().await;
    let carrier_invite = h.answered("").await;
    h.sent();
    h.log();
    h.caller_sends(
        "INVITE",
        "Contact: <sip:+15550100@192.0.2.10:5062>\r\n",
        &offer("sendonly"),
    )
    .await;
    let sent = h.sent();
    let ok = responses_in(&sent, CALLER)
        .into_iter()
        .next()
        .expect("the caller's 200");
    assert_eq!(ok.status, 200);
    assert!(String::from_utf8_lossy(&ok.body).contains("a=recvonly"));
    let hold = requests_in(&sent, CARRIER)
        .into_iter()
        .next()
        .expect("our re-INVITE to the carrier");
    assert_eq!(hold.method, Method::Invite);
    assert_eq!(hold.call_id(), carrier_invite.call_id());
    assert!(String::from_utf8_lossy(&hold.body).contains("a=sendonly"));
    assert_eq!(h.log(), vec!["relay A sends: false, expects: true"]);

    // The carrier takes the hold; then the caller resumes.
    h.answers(
        &hold,
        200,
        "carrier",
        CARRIER,
        &answer_sdp("192.0.2.20", "recvonly"),
    )
    .await;
    assert_eq!(methods(&h.requests_to(CARRIER)), vec!["ACK"]);
    assert_eq!(h.log(), vec!["relay B sends: true, expects: false"]);
    h.caller_sends("ACK", "", "").await;
    h.caller_sends(
        "INVITE",
        "Contact: <sip:+15550100@192.0.2.10:5062>\r\n",
        &offer("sendrecv"),
    )
    .await;
    let resume = h.requests_to(CARRIER);
    assert_eq!(methods(&resume), vec!["INVITE"]);
    assert!(String::from_utf8_lossy(&resume[0].body).contains("a=sendrecv"));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_the_carrier_refuses_481_ends_both_legs() {
    let mut h = Harness::forward().await;
    // The carrier leaves the refreshes to us, every 90 s.
    let carrier_invite = h.answered("Session-Expires: 90;refresher=uac\r\n").await;
    h.sent();
    h.wait(Duration::from_secs(44)).await;
    assert!(
        h.requests_to(CARRIER).is_empty(),
        "not yet: half the interval is 45 s"
    );
    h.wait(Duration::from_secs(1)).await;
    let refresh = h.requests_to(CARRIER);
    assert_eq!(methods(&refresh), vec!["INVITE"]);
    assert_eq!(refresh[0].call_id(), carrier_invite.call_id());
    assert_eq!(
        refresh[0].headers.get("Session-Expires"),
        Some("90;refresher=uac")
    );
    h.answers(&refresh[0], 481, "carrier", CARRIER, "").await;
    let to_caller = h.requests_to(CALLER);
    assert_eq!(methods(&to_caller), vec!["BYE"]);
    assert!(to_caller[0]
        .headers
        .get("Reason")
        .is_some_and(|r| r.contains("session refresh failed")));
    assert_eq!(h.call.caller.state(), CallerState::Ending);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_while_the_carrier_rings_cancels_it_and_a_racing_200_is_hung_up() {
    let mut h = Harness::forward().await;
    let invite = h.requests_to(CARRIER).remove(0);
    h.answers(&invite, 180, "carrier", CARRIER, "").await;
    assert_eq!(statuses_to(&h.sent(), CALLER), vec![180]);
    let cancel = request(
        "CANCEL",
        "sip:+15550123@192.0.2.1",
        &format!("{CALLER};branch=z9hG4bK-caller"),
        "<sip:+15550100@192.0.2.10>;tag=caller",
        "<sip:+15550123@192.0.2.1>",
        "caller-call@192.0.2.10",
        1,
        "",
        "",
    );
    h.far_end_sends(cancel, CALLER).await;
    let sent = h.sent();
    assert_eq!(statuses_to(&sent, CALLER), vec![200, 487]);
    let to_carrier = requests_in(&sent, CARRIER);
    assert_eq!(methods(&to_carrier), vec!["CANCEL"]);
    // The carrier's 200 crossed our CANCEL: it is acknowledged and hung up at once.
    h.answers(
        &invite,
        200,
        "carrier",
        CARRIER,
        &answer_sdp("192.0.2.20", "sendrecv"),
    )
    .await;
    assert_eq!(methods(&h.requests_to(CARRIER)), vec!["ACK", "BYE"]);
    assert_eq!(h.call.caller.state(), CallerState::Ended);
}

#[tokio::test(start_paused = true)]
async fn a_bots_transfer_rings_the_agent_then_joins_the_caller_to_it() {
    let mut h = Harness::start(Route::Flow(flow()), settings()).await;
    assert_eq!(statuses_to(&h.sent(), CALLER), vec![100, 200]);
    assert_eq!(h.log(), vec!["bot on 1 for +15550123", "answered"]);
    h.caller_acks().await;
    h.media(MediaInput::Bot(BridgeEvent::Transfer { to: String::new() }))
        .await;
    assert_eq!(h.log(), vec!["bot off", "ringback on 1"]);
    let agent_invite = h.requests_to(AGENT).remove(0);
    assert_eq!(agent_invite.method, Method::Invite);
    h.answers(
        &agent_invite,
        200,
        "agent",
        AGENT,
        &answer_sdp("192.0.2.30", "sendrecv"),
    )
    .await;
    assert_eq!(h.log(), vec!["ringback off", "relay 1 <-> 2"]);
    assert_eq!(methods(&h.requests_to(AGENT)), vec!["ACK"]);
}

#[tokio::test(start_paused = true)]
async fn a_busy_agent_gives_the_caller_back_to_the_bot() {
    let mut h = Harness::start(Route::Flow(flow()), settings()).await;
    h.sent();
    h.caller_acks().await;
    h.log();
    h.media(MediaInput::Bot(BridgeEvent::Transfer {
        to: AGENT_URI.into(),
    }))
    .await;
    let agent_invite = h.requests_to(AGENT).remove(0);
    h.log();
    h.answers(&agent_invite, 486, "agent", AGENT, "").await;
    assert_eq!(h.log(), vec!["ringback off", "bot on 1 for +15550123"]);
    assert_eq!(methods(&h.requests_to(AGENT)), vec!["ACK"]);
    assert!(
        h.requests_to(CALLER).is_empty(),
        "no BYE: the bot has the caller"
    );
    assert!(h.call.caller.is_up());
}

#[tokio::test(start_paused = true)]
async fn info_digits_reach_the_bot_and_are_counted() {
    let mut h = Harness::start(Route::Flow(flow()), settings()).await;
    h.sent();
    h.caller_acks().await;
    h.log();
    let info = "Signal=7\r\nDuration=160\r\n";
    let headers = "Content-Type: application/dtmf-relay\r\n";
    let cseq = h.caller_cseq;
    h.caller_cseq += 1;
    let mut request = request(
        "INFO",
        "sip:+15550123@192.0.2.1:5060",
        &format!("{CALLER};branch=z9hG4bK-info"),
        "<sip:+15550100@192.0.2.10>;tag=caller",
        "<sip:+15550123@192.0.2.1>;tag=ours",
        "caller-call@192.0.2.10",
        cseq,
        headers,
        "",
    );
    request.body = bytes::Bytes::from_static(info.as_bytes());
    h.far_end_sends(request, CALLER).await;
    assert_eq!(statuses_to(&h.sent(), CALLER), vec![200]);
    assert_eq!(h.log(), vec!["bot hears 7", "digit 7 by info"]);
    assert_eq!(h.call.media_record.digits, "7");
}
