//! The 49 RFC 4475 torture messages, byte-exact in tests/sip-torture/, sent over UDP to one
//! running voicegate: each gets the outcome the RFC expects of a server (as listed in the
//! folder's index.tsv), none crashes or stalls it, and a good call succeeds afterwards.
//!
//! voicegate answers a UDP request at the source IP and the top Via's sent-by port (RFC 3261
//! §18.2.2), and nearly every torture Via names port 5060 without `rport`. So each message is
//! sent from its own loopback address 127.a.b.N, from a socket bound to that Via port: its
//! answers (or their absence) are then its own, even for messages without a Call-ID.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use voicegate_sip::message::{self, Headers, Message, ParseError, Request};

/// What a server must do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// No answer at all (responses are never answered).
    Silence,
    /// One final answer with this status; an INVITE may get `100 Trying` first.
    Final(u16),
    /// Same branch, sent-by and method as the named earlier message, so the same server
    /// transaction (RFC 3261 §17.2.3): absorbed as a retransmission, which sends that
    /// message's final answer again (to it), and nothing to this one. Only an artefact of
    /// sending all 49 messages to one server within Timer J.
    RetransmissionOf(&'static str),
}

use Expect::*;

/// Per message (in index.tsv order): its kind in index.tsv, the expected outcome, and why.
#[rustfmt::skip]
const CASES: &[(&str, &str, Expect, &str)] = &[
    ("wsinv", "valid", Final(481),
        "folding, odd whitespace and compact forms parse; its To has a tag, so it is a \
         re-INVITE for a dialog voicegate does not have: 481 (RFC 3261 §12.2.2)"),
    ("intmeth", "valid", Final(501),
        "unknown method token (NUL/BEL/DEL quoted-pairs, UTF-8) parses: UAS answers 501 + Allow"),
    ("esc01", "valid", Final(404),
        "escaped Request-URI user sips%3Auser%40example.com is not a mapped number"),
    ("escnull", "valid", Final(405),
        "REGISTER with %00 in the users parses; voicegate has no registrar: 405 + Allow"),
    ("esc02", "valid", Final(501),
        "RE%47IST%45R is an unknown method, not REGISTER: 501"),
    ("lwsdisp", "valid-but-unusual", Final(200),
        "display name without LWS before <: accepted, OPTIONS 200"),
    ("longreq", "valid", Final(404),
        "3515-byte INVITE with 34 Vias and long params parses; user not mapped"),
    ("dblreq", "valid-but-unusual", Final(405),
        "the REGISTER (Content-Length 0) gets 405; the INVITE after it in the datagram is \
         ignored (no 100/404 for it)"),
    ("semiuri", "valid", Final(200),
        "user part with ; parses: OPTIONS to voicegate itself, 200"),
    ("transports", "valid", Final(200),
        "SCTP/TLS/UNKNOWN transports in lower Vias are not looked at: OPTIONS 200"),
    ("mpart01", "valid", Final(405),
        "553-byte binary body (NUL, bare LF) framed by Content-Length; MESSAGE is known but \
         not served here: 405"),
    ("unreason", "valid", Silence, "response (UTF-8 reason phrase): never answered"),
    ("noreason", "valid", Silence, "response (empty reason phrase): never answered"),
    ("badinv01", "invalid", Final(400), "empty Via parameters (;;,;,,): 400"),
    ("clerr", "invalid", Final(400), "Content-Length 9999 beyond the datagram: 400"),
    ("ncl", "invalid", Final(400), "negative Content-Length: 400"),
    ("scalar02", "invalid", Final(400), "CSeq above 2^32-1: 400"),
    ("scalarlg", "invalid", Silence, "response with oversized scalars: dropped"),
    ("quotbal", "invalid", Final(400), "unbalanced quote in To: 400 (answered to Via port 5050)"),
    ("ltgtruri", "invalid", Final(400), "<> around the Request-URI: 400"),
    ("lwsruri", "invalid", Final(400), "LWS inside the Request-URI: 400"),
    ("lwsstart", "invalid", Final(400), "double SP in the Request-Line: 400"),
    ("trws", "invalid", Final(400), "SP after SIP/2.0 in the Request-Line: 400"),
    ("escruri", "invalid", Final(400),
        "headers (?Route=) in a Request-URI (RFC 3261 §19.1.1): 400 (the strict choice)"),
    ("baddate", "invalid", Final(404),
        "Date means nothing to voicegate, so RFC 4475 says process normally: user not mapped"),
    ("regbadct", "invalid", Final(400), "Contact URI with ? outside <> (RFC 3261 §20): 400"),
    ("badaspec", "invalid", Final(400), "spaces inside the <> of To: 400"),
    ("baddn", "invalid", Final(400),
        "unquoted display names with a comma: 400 (this copy also lacks the final empty line)"),
    ("badvers", "invalid", Final(505), "SIP/7.0: 505 Version Not Supported"),
    ("mismatch01", "invalid", Final(400), "CSeq method INVITE on an OPTIONS: 400"),
    ("mismatch02", "invalid", Final(400),
        "CSeq method INVITE on NEWMETHOD: 400 (RFC 4475 allows 400 or 501)"),
    ("bigcode", "invalid", Silence, "response with status 4294967301: dropped"),
    ("badbranch", "valid-but-unusual", Final(200),
        "branch is only the magic cookie: processed normally, OPTIONS 200"),
    ("insuf", "invalid", Final(400), "no Call-ID, From or To: 400"),
    ("unkscm", "valid", Final(416), "unknown Request-URI scheme: 416"),
    ("novelsc", "valid", RetransmissionOf("unkscm"),
        "soap.beep: would get 416, but branch, sent-by (host9.example.com) and method equal \
         unkscm's"),
    ("unksm2", "valid", Final(405), "isbn:/http:/name: URIs parse; REGISTER: 405"),
    ("bext01", "valid", Final(420),
        "Require with unknown options: 420 + Unsupported listing them (Proxy-Require ignored \
         by a UAS)"),
    ("invut", "valid", Final(404),
        "Request-URI is checked before the body (RFC 3261 §8.2.2.1 before §8.2.3): user not \
         mapped, so 404 rather than 415"),
    ("regaut01", "valid", Final(405), "unknown Authorization scheme parses; REGISTER: 405"),
    ("multi01", "invalid", Final(400), "several Call-ID/CSeq/From/To/Max-Forwards: 400"),
    ("mcl01", "invalid", Final(400), "two Content-Length headers: 400"),
    ("bcast", "valid-but-unusual", Silence,
        "response with a 255.255.255.255 Via: dropped, never forwarded"),
    ("zeromf", "valid", Final(200),
        "Max-Forwards 0 on an OPTIONS to voicegate itself: the target processes it as if \
         positive (RFC 4475 §3.3.11); 483 is only for a request it would relay"),
    ("cparam01", "valid", Final(405), "contact-param without <>: parses; REGISTER: 405"),
    ("cparam02", "valid", RetransmissionOf("cparam01"),
        "would get 405, but branch, sent-by (saturn.example.com:5060) and method equal \
         cparam01's"),
    ("regescrt", "valid", RetransmissionOf("escnull"),
        "escaped Route in a Contact URI parses; would get 405, but branch, sent-by \
         (host5.example.com) and method equal escnull's"),
    ("sdp01", "valid", Final(404),
        "Accept without application/sdp: the Request-URI is checked first, user not mapped \
         (to a mapped number it gets 406: sdp01_to_a_mapped_number_gets_406)"),
    ("inv2543", "valid-but-unusual", Final(404),
        "RFC 2543 INVITE (no branch, From tag, Content-Length or Max-Forwards) accepted; \
         user not mapped"),
];

/// Time between two sends (keeps their order), and how long answers are collected after
/// the last one.
const STAGGER: Duration = Duration::from_millis(10);
const COLLECT: Duration = Duration::from_millis(600);

/// The messages and their index, kept in the repository (tests/sip-torture/, see its README).
fn torture_dir() -> PathBuf {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/sip-torture"
    ));
    assert!(
        dir.join("index.tsv").is_file(),
        "RFC 4475 torture messages not found at {}",
        dir.display()
    );
    dir.to_path_buf()
}

/// name → kind, from index.tsv.
fn index_kinds(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("index.tsv")).expect("index.tsv readable");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(cols.len() >= 3, "index.tsv: short line {l:?}");
            (cols[0].to_string(), cols[2].to_string())
        })
        .collect()
}

/// What voicegate's own parser reads of a message (for the Via port and the ACK).
fn read_request(bytes: &[u8]) -> Option<Request> {
    match message::parse(bytes) {
        Ok(Message::Request(r)) => Some(r),
        Err(ParseError::BadRequest { request, .. }) => Some(*request),
        _ => None,
    }
}

/// The port answers go to: the top Via's sent-by port (5060 when absent). With `rport` they
/// go to the source port instead, which is the same socket.
fn reply_port(bytes: &[u8]) -> u16 {
    read_request(bytes)
        .and_then(|r| message::top_via(&r.headers))
        .and_then(|via| via.sent_by().port.map(|p| p.value()))
        .unwrap_or(5060)
}

/// Binds one socket per message on 127.a.b.(i+1):port; retries another a.b when taken.
async fn bind_sources(ports: &[u16]) -> Vec<UdpSocket> {
    'attempt: for _ in 0..8 {
        let (a, b) = (
            10 + rand::random::<u8>() % 240,
            1 + rand::random::<u8>() % 250,
        );
        let mut sockets = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let ip = Ipv4Addr::new(127, a, b, i as u8 + 1);
            match UdpSocket::bind((ip, *port)).await {
                Ok(s) => sockets.push(s),
                Err(_) => continue 'attempt,
            }
        }
        return sockets;
    }
    panic!(
        "cannot bind the torture Via ports (5060, 5050, 5070) on loopback addresses 127.a.b.N \
         (Linux routes all of 127/8 to lo): is something listening on 0.0.0.0:5060?"
    );
}

/// A received answer.
struct Answer {
    status: u16,
    text: String,
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next()?;
    let code = line.strip_prefix("SIP/2.0 ")?.split(' ').next()?;
    code.parse().ok().filter(|c| (100..700).contains(c))
}

/// The first value of a header in a response (full or compact name), unfolded lines only.
fn header<'a>(text: &'a str, name: &str, compact: &str) -> Option<&'a str> {
    text.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case(name) || n.eq_ignore_ascii_case(compact)).then(|| v.trim())
    })
}

/// The ACK for a non-2xx final answer to an INVITE (RFC 3261 §17.1.1.3).
fn ack_for(invite: &Request, response: &[u8]) -> Option<Vec<u8>> {
    let Ok(Message::Response(resp)) = message::parse(response) else {
        return None;
    };
    let mut headers = Headers::default();
    let top_via = resp.headers.get("Via")?.split(',').next()?.trim();
    headers.push("Via", top_via);
    headers.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        headers.push(name, resp.headers.get(name)?);
    }
    let seq = resp.headers.get("CSeq")?.split_whitespace().next()?;
    headers.push("CSeq", format!("{seq} ACK"));
    let ack = Request {
        method: "ACK".into(),
        uri: invite.uri.clone(),
        headers,
        body: Default::default(),
    };
    Some(ack.to_bytes().to_vec())
}

/// Sends one message at `send_at` and collects what comes back until `until`, ACKing
/// non-2xx final answers to INVITEs at once (no Timer G retransmissions, no Timer H wait).
async fn exchange(
    sock: UdpSocket,
    server: SocketAddr,
    bytes: Vec<u8>,
    send_at: Instant,
    until: Instant,
) -> Vec<Answer> {
    tokio::time::sleep_until(send_at).await;
    sock.send_to(&bytes, server)
        .await
        .expect("send to voicegate");
    let request = read_request(&bytes);
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(received) = tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
        let (n, _) = received.expect("UDP receive");
        let datagram = &buf[..n];
        let status = status_of(datagram).unwrap_or(0);
        let text = String::from_utf8_lossy(datagram).into_owned();
        if let Some(invite) = request.as_ref().filter(|r| r.method == "INVITE") {
            let is_invite_answer =
                header(&text, "CSeq", "CSeq").is_some_and(|c| c.ends_with("INVITE"));
            if status >= 300 && is_invite_answer {
                if let Some(ack) = ack_for(invite, datagram) {
                    let _ = sock.send_to(&ack, server).await;
                }
            }
        }
        answers.push(Answer { status, text });
    }
    answers
}

/// Checks one message's answers; returns what went wrong, if anything.
fn check(
    name: &str,
    expect: Expect,
    bytes: &[u8],
    answers: &[Answer],
    retransmitted: usize,
) -> Option<String> {
    let request = read_request(bytes);
    let is_invite = request.as_ref().is_some_and(|r| r.method == "INVITE");
    match expect {
        Silence | RetransmissionOf(_) => {
            return (!answers.is_empty()).then(|| "expected no answer".to_string());
        }
        Final(code) => {
            if let Some(a) = answers.iter().find(|a| a.status == 0) {
                return Some(format!("not a SIP response: {:?}", first_line(&a.text)));
            }
            let provisional: Vec<u16> = answers
                .iter()
                .map(|a| a.status)
                .filter(|s| *s < 200)
                .collect();
            if !provisional.is_empty() && (!is_invite || provisional.iter().any(|s| *s != 100)) {
                return Some(format!("unexpected provisional answers {provisional:?}"));
            }
            let finals: Vec<&Answer> = answers.iter().filter(|a| a.status >= 200).collect();
            if finals.iter().any(|a| a.status != code) || finals.len() != 1 + retransmitted {
                return Some(format!(
                    "expected {} final answer(s) {code}",
                    1 + retransmitted
                ));
            }
            if finals.iter().any(|a| a.text != finals[0].text) {
                return Some("the retransmitted final answer differs from the first".into());
            }
            // The answer is to this message: same Call-ID and CSeq, where it has them.
            let sent = String::from_utf8_lossy(bytes);
            for (name, compact) in [("Call-ID", "i"), ("CSeq", "CSeq")] {
                let want = request.as_ref().and_then(|r| r.headers.get(name));
                let got = header(&finals[0].text, name, compact);
                if want.is_some() && want != got {
                    return Some(format!(
                        "answer's {name} {got:?} is not the request's {want:?}"
                    ));
                }
            }
            let answer = &finals[0].text;
            if matches!(code, 405 | 501) && header(answer, "Allow", "Allow").is_none() {
                return Some(format!("{code} without Allow"));
            }
            if code == 420 {
                let unsupported = header(answer, "Unsupported", "Unsupported").unwrap_or("");
                let required = sent
                    .lines()
                    .find_map(|l| l.strip_prefix("Require:"))
                    .unwrap_or("");
                for tag in required.split(',').map(str::trim) {
                    if !unsupported.split(',').any(|u| u.trim() == tag) {
                        return Some(format!("420's Unsupported {unsupported:?} lacks {tag}"));
                    }
                }
            }
            if name == "dblreq" && answers.iter().any(|a| a.text.contains("CSeq: 8 INVITE")) {
                return Some("the INVITE after the REGISTER was processed".into());
            }
        }
    }
    None
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn describe(expect: Expect) -> String {
    match expect {
        Silence => "no answer".into(),
        Final(code) => code.to_string(),
        RetransmissionOf(other) => format!("nothing ({other}'s answer re-sent)"),
    }
}

/// The copies hold the RFC's bytes (SHA256SUMS): a checkout that converted line endings, or an
/// editor that tidied a message, would change what voicegate is tortured with.
#[test]
fn torture_messages_match_their_checksums() {
    let dir = torture_dir();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS readable");
    let mut checked = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (want, name) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("SHA256SUMS: not `HASH  NAME`: {line:?}"));
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want, "{name} is not byte-exact");
        checked.push(name.trim_end_matches(".dat").to_string());
    }
    let mut names: Vec<String> = CASES.iter().map(|(n, ..)| n.to_string()).collect();
    names.sort();
    checked.sort();
    assert_eq!(
        checked, names,
        "SHA256SUMS covers exactly the messages tested"
    );
}

/// sdp01 again, byte-exact, to a voicegate where its Request-URI user is the echo number: the
/// answer would carry SDP, which its Accept refuses, so 406 with a Warning 399 (RFC 4475
/// §3.3.15) instead of a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdp01_to_a_mapped_number_gets_406() {
    let bytes = std::fs::read(torture_dir().join("sdp01.dat")).expect("sdp01.dat readable");
    let mut config = common::test_config();
    config.test_numbers.echo = vec!["user".into()];
    let running = common::start(&config).await;
    let server = running.local.udp.expect("UDP listener");
    let sock = bind_sources(&[reply_port(&bytes)]).await.remove(0);
    let now = Instant::now();
    let answers = exchange(sock, server, bytes.clone(), now, now + COLLECT).await;
    let got: Vec<&str> = answers.iter().map(|a| first_line(&a.text)).collect();
    if let Some(problem) = check("sdp01", Final(406), &bytes, &answers, 0) {
        panic!("sdp01 to a mapped number: {problem}; got {got:?}");
    }
    let last = &answers.last().expect("an answer").text;
    assert!(
        header(last, "Warning", "Warning").is_some_and(|w| w.starts_with("399 ")),
        "406 without Warning 399: {last}"
    );
    assert!(
        header(last, "Content-Type", "c").is_none(),
        "406 carries a body: {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4475_torture_messages_get_their_answers_and_calls_still_work() {
    let started = std::time::Instant::now();
    let dir = torture_dir();

    // The table covers exactly the messages of index.tsv, with the same kinds.
    let index = index_kinds(&dir);
    assert_eq!(index.len(), 49, "index.tsv lists {} messages", index.len());
    let table: HashMap<&str, &str> = CASES.iter().map(|(n, k, _, _)| (*n, *k)).collect();
    assert_eq!(table.len(), CASES.len(), "duplicate names in CASES");
    for (name, kind) in &index {
        assert_eq!(
            table.get(name.as_str()).copied(),
            Some(kind.as_str()),
            "{name}: index.tsv says {kind}"
        );
    }
    assert_eq!(
        CASES.len(),
        index.len(),
        "CASES has messages index.tsv lacks"
    );

    let messages: Vec<Vec<u8>> = CASES
        .iter()
        .map(|(name, ..)| {
            let path = dir.join(format!("{name}.dat"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect();

    // Well-formed messages pass voicegate's parser.
    for ((name, kind, ..), bytes) in CASES.iter().zip(&messages) {
        if kind.starts_with("valid") {
            assert!(
                message::parse(bytes).is_ok(),
                "{name} ({kind}) must parse: {:?}",
                message::parse(bytes).err()
            );
        }
    }

    let running = common::start(&common::test_config()).await;
    let server = running.local.udp.expect("UDP listener");
    let ports: Vec<u16> = messages.iter().map(|m| reply_port(m)).collect();
    let sockets = bind_sources(&ports).await;

    let t0 = Instant::now() + Duration::from_millis(20);
    let until = t0 + STAGGER * CASES.len() as u32 + COLLECT;
    let tasks: Vec<_> = sockets
        .into_iter()
        .zip(messages.iter().cloned())
        .enumerate()
        .map(|(i, (sock, bytes))| {
            tokio::spawn(exchange(
                sock,
                server,
                bytes,
                t0 + STAGGER * i as u32,
                until,
            ))
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("exchange task"));
    }

    let mut failures = Vec::new();
    let mut report = String::from("\nmessage      expected                         voicegate\n");
    for (i, (name, _, expect, why)) in CASES.iter().enumerate() {
        let retransmitted = CASES
            .iter()
            .filter(|(_, _, e, _)| *e == RetransmissionOf(name))
            .count();
        let answers = &results[i];
        let got = if answers.is_empty() {
            "no answer".to_string()
        } else {
            answers
                .iter()
                .map(|a| {
                    first_line(&a.text)
                        .trim_start_matches("SIP/2.0 ")
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        report.push_str(&format!("{name:12} {:32} {got}\n", describe(*expect)));
        if let Some(problem) = check(name, *expect, &messages[i], answers, retransmitted) {
            failures.push(format!("{name}: {problem}; got [{got}] ({why})"));
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} torture message(s) mishandled:\n{}\n{report}",
        failures.len(),
        failures.join("\n")
    );

    // Still serving: a good call to the echo number.
    common::good_call(server, "u1").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "torture run took {:?}",
        started.elapsed()
    );
}
