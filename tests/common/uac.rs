//! A small scripted SIP UA over UDP for tests that need to look inside the call (SDP, RTP).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use voicegate_sip::message::{parse, Message, Response};

pub struct Uac {
    pub sip: UdpSocket,
    pub rtp: UdpSocket,
    pub server: SocketAddr,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: Option<String>,
    pub cseq: u32,
    invite_branch: String,
}

pub fn offer(rtp_port: u16, formats: &str, direction: &str) -> String {
    let mut sdp = format!(
        "v=0\r\no=tester 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP {formats}\r\n"
    );
    for f in formats.split_whitespace() {
        match f {
            "0" => sdp.push_str("a=rtpmap:0 PCMU/8000\r\n"),
            "8" => sdp.push_str("a=rtpmap:8 PCMA/8000\r\n"),
            "18" => sdp.push_str("a=rtpmap:18 G729/8000\r\n"),
            "101" => sdp.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"),
            _ => {}
        }
    }
    sdp.push_str(&format!("a={direction}\r\n"));
    sdp
}

impl Uac {
    pub async fn new(server: SocketAddr) -> Self {
        Self::from_ip(server, "127.0.0.1").await
    }

    /// A UA whose SIP socket is bound on `ip` (e.g. 127.0.0.2, a source no trunk allows).
    pub async fn from_ip(server: SocketAddr, ip: &str) -> Self {
        Uac {
            sip: UdpSocket::bind((ip, 0)).await.unwrap(),
            rtp: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            call_id: format!("uac-{:x}", rand::random::<u64>()),
            from_tag: format!("{:x}", rand::random::<u32>()),
            to_tag: None,
            cseq: 1,
            invite_branch: String::new(),
        }
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }

    fn request(&self, method: &str, cseq: u32, branch: &str, body: &str) -> String {
        let local = self.sip.local_addr().unwrap();
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let content_type = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} sip:echo@{server} SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
From: <sip:tester@127.0.0.1>;tag={from_tag}\r\n\
To: <sip:echo@{server}>{to_tag}\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:tester@{local}>\r\n\
Max-Forwards: 70\r\n\
{content_type}Content-Length: {len}\r\n\r\n{body}",
            server = self.server,
            from_tag = self.from_tag,
            call_id = self.call_id,
            len = body.len(),
        )
    }

    /// The text of a request in this call with a fresh branch, to alter before sending.
    pub fn request_text(&mut self, method: &str, body: &str) -> String {
        self.invite_branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        self.request(method, self.cseq, &self.invite_branch.clone(), body)
    }

    pub async fn send(&self, text: &str) {
        self.sip
            .send_to(text.as_bytes(), self.server)
            .await
            .unwrap();
    }

    /// Sends an INVITE (initial, or a re-INVITE once there is a To-tag).
    pub async fn invite(&mut self, body: &str) {
        self.invite_branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let text = self.request("INVITE", self.cseq, &self.invite_branch.clone(), body);
        self.send(&text).await;
    }

    /// Next message within `wait`, or None.
    pub async fn recv(&self, wait: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(wait, self.sip.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        parse(&buf[..n]).ok()
    }

    /// The next final response, skipping provisionals; records the To-tag.
    pub async fn final_response(&mut self) -> Response {
        loop {
            match self.recv(Duration::from_secs(5)).await {
                Some(Message::Response(r)) if r.status >= 200 => {
                    if let Some(tag) = r
                        .headers
                        .get("To")
                        .and_then(voicegate_sip::message::tag_param)
                    {
                        self.to_tag = Some(tag.to_string());
                    }
                    return r;
                }
                Some(_) => continue,
                None => panic!("no final response within 5 s"),
            }
        }
    }

    /// ACK for a 2xx: a new transaction (RFC 3261 §13.2.2.4), with an optional SDP answer.
    pub async fn ack(&mut self, body: &str) {
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let text = self.request("ACK", self.cseq, &branch, body);
        self.send(&text).await;
        self.cseq += 1;
    }

    /// ACK for a non-2xx final: same branch as the INVITE.
    pub async fn ack_failure(&mut self) {
        let branch = self.invite_branch.clone();
        let text = self.request("ACK", self.cseq, &branch, "");
        self.send(&text).await;
    }

    /// An INVITE to `number` offering `formats`, with `extra` header lines, and the ACK of its
    /// final response (on the INVITE's branch for a failure, a new one for a 2xx).
    pub async fn call(&mut self, number: &str, formats: &str, extra: &str) -> Response {
        let invite = self
            .request_text("INVITE", &offer(self.rtp_port(), formats, "sendrecv"))
            .replace("sip:echo@", &format!("sip:{number}@"))
            .replace(
                "Max-Forwards: 70\r\n",
                &format!("Max-Forwards: 70\r\n{extra}"),
            );
        self.send(&invite).await;
        let response = self.final_response().await;
        if response.status >= 300 {
            self.ack_failure().await;
        } else {
            self.ack("").await;
        }
        response
    }

    /// Answers a request voicegate sent us (a BYE) with `status`.
    pub async fn reply(&self, request: &voicegate_sip::message::Request, status: u16) {
        let response = request
            .response(status, if status == 200 { "OK" } else { "Error" })
            .to_bytes();
        self.sip.send_to(&response, self.server).await.unwrap();
    }

    /// CANCEL of the last INVITE (same branch and CSeq number).
    pub async fn cancel(&mut self) -> Response {
        let branch = self.invite_branch.clone();
        let to_tag = self.to_tag.take();
        let text = self.request("CANCEL", self.cseq.saturating_sub(1).max(1), &branch, "");
        self.to_tag = to_tag;
        self.send(&text).await;
        self.final_response().await
    }

    pub async fn bye(&mut self) -> Response {
        let branch = format!("z9hG4bK{:x}", rand::random::<u64>());
        let text = self.request("BYE", self.cseq, &branch, "");
        self.cseq += 1;
        self.send(&text).await;
        self.final_response().await
    }

    /// Where voicegate wants our RTP, from its SDP.
    pub fn media_target(response: &Response) -> SocketAddr {
        let sdp = voicegate_sip::sdp::parse(&response.body).expect("SDP in the answer");
        let audio = sdp
            .media
            .iter()
            .find(|m| m.kind == "audio")
            .expect("audio line");
        let ip = audio.connection.or(sdp.connection).expect("c= line");
        SocketAddr::new(ip, audio.port)
    }
}

pub fn rtp_packet(seq: u16, ts: u32, ssrc: u32, pt: u8, payload_byte: u8) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(payload_byte, 160));
    p
}

pub fn body_text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}
