//! REGISTER from a trunk's PBX: digest-authenticated, bindings kept with their expiry in the
//! store (and so across a restart), the seed's refusals otherwise.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use voicegate::config::{Config, CredentialConfig, TrunkConfig};
use voicegate_sip::digest::{parse_params, Algorithm, ResponseInput};
use voicegate_sip::message::{parse, Message, Response};

fn registrar_config(registration_enabled: bool, store_url: String) -> Config {
    let mut config = test_config();
    config.store.url = store_url;
    config.trunks = vec![TrunkConfig {
        name: "pbx".into(),
        credentials: vec![CredentialConfig {
            user_name: "pbx".into(),
            password: "s3cret".into(),
        }],
        registration_enabled,
        ..TrunkConfig::default()
    }];
    config
}

/// A PBX registering from its own socket.
struct Pbx {
    sock: UdpSocket,
    server: SocketAddr,
    cseq: u32,
    call_id: String,
}

impl Pbx {
    async fn new(server: SocketAddr) -> Self {
        Pbx {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            cseq: 0,
            call_id: format!("reg-{:x}", rand::random::<u64>()),
        }
    }

    async fn register(&mut self, expires: u32, authorization: Option<String>) -> Response {
        self.cseq += 1;
        let local = self.sock.local_addr().unwrap();
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let text = format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch:x};rport\r\n\
From: <sip:pbx@voicegate>;tag=t1\r\nTo: <sip:pbx@voicegate>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:pbx@{local};transport=udp>\r\nExpires: {expires}\r\n{auth}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            server = self.server,
            branch = rand::random::<u64>(),
            call_id = self.call_id,
            cseq = self.cseq,
        );
        self.sock
            .send_to(text.as_bytes(), self.server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        match parse(&buf[..n]) {
            Ok(Message::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    /// Answers a 401 with `password`.
    fn authorization(&self, challenge: &Response, password: &str) -> String {
        let md5 = challenge
            .headers
            .get_all("WWW-Authenticate")
            .find(|v| v.contains("algorithm=MD5"))
            .unwrap();
        let params = parse_params(md5).unwrap();
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let (nonce, opaque, realm) = (get("nonce"), get("opaque"), get("realm"));
        let uri = format!("sip:{}", self.server);
        let response = ResponseInput {
            algorithm: Algorithm::Md5,
            username: "pbx",
            realm: &realm,
            password,
            method: "REGISTER",
            uri: &uri,
            nonce: &nonce,
            nc: "00000001",
            cnonce: "c0ffee",
        }
        .response();
        format!(
            "Digest username=\"pbx\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\", opaque=\"{opaque}\""
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_registers_with_digest_and_its_binding_survives_a_restart() {
    let path = std::env::temp_dir().join(format!("vg-registrar-{:x}.db", rand::random::<u64>()));
    let config = registrar_config(true, format!("sqlite://{}", path.display()));
    let running = start(&config).await;
    let mut pbx = Pbx::new(running.local.udp.unwrap()).await;

    let challenge = pbx.register(300, None).await;
    assert_eq!(challenge.status, 401);
    let wrong = pbx.authorization(&challenge, "nope");
    assert_eq!(pbx.register(300, Some(wrong)).await.status, 403);

    let challenge = pbx.register(300, None).await;
    let auth = pbx.authorization(&challenge, "s3cret");
    let ok = pbx.register(300, Some(auth)).await;
    assert_eq!(ok.status, 200, "{}", ok.reason);
    let contact = ok.headers.get("Contact").unwrap();
    assert!(
        contact.contains(&format!("sip:pbx@{}", pbx.sock.local_addr().unwrap())),
        "{contact}"
    );
    let left: u64 = contact.rsplit("expires=").next().unwrap().parse().unwrap();
    assert!((295..=300).contains(&left), "{contact}");

    // Too short an interval.
    let challenge = pbx.register(30, None).await;
    let auth = pbx.authorization(&challenge, "s3cret");
    let brief = pbx.register(30, Some(auth)).await;
    assert_eq!(brief.status, 423);
    assert_eq!(brief.headers.get("Min-Expires"), Some("60"));

    // A restart keeps the binding.
    drop(running);
    let running = start(&config).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let bindings = running
        .core
        .store
        .as_ref()
        .unwrap()
        .bindings(now)
        .await
        .unwrap();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].aor, "sip:pbx@voicegate");
    assert!(bindings[0].source.starts_with("udp:127.0.0.1:"));
    // What calls read, loaded from the store at start.
    let trunk_sid = bindings[0].trunk_sid.clone();
    assert_eq!(running.core.lock_bindings().live(&trunk_sid, now), bindings);

    // Expires: 0 removes it.
    let mut pbx = Pbx {
        server: running.local.udp.unwrap(),
        ..pbx
    };
    let challenge = pbx.register(0, None).await;
    let auth = pbx.authorization(&challenge, "s3cret");
    assert_eq!(pbx.register(0, Some(auth)).await.status, 200);
    assert!(running
        .core
        .store
        .as_ref()
        .unwrap()
        .bindings(now)
        .await
        .unwrap()
        .is_empty());
    assert!(running
        .core
        .lock_bindings()
        .live(&trunk_sid, now)
        .is_empty());
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_without_registration_gets_403() {
    let running = start(&registrar_config(false, "sqlite::memory:".into())).await;
    let mut pbx = Pbx::new(running.local.udp.unwrap()).await;
    let challenge = pbx.register(300, None).await;
    assert_eq!(challenge.status, 401);
    let auth = pbx.authorization(&challenge, "s3cret");
    let refused = pbx.register(300, Some(auth)).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.reason.contains("registration not enabled"),
        "{}",
        refused.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_call_reaches_the_registered_pbx() {
    let mut config = registrar_config(true, "sqlite::memory:".into());
    config.trunks[0].numbers = vec![voicegate::config::NumberConfig {
        number: "+15550100".into(),
        mode: "pstn".into(),
        flow: String::new(),
    }];
    // A carrier whose INVITEs come from 127.0.0.2 (never called); the trunk has no
    // destination URI.
    config.carriers = vec![voicegate::config::CarrierConfig {
        name: "upstream".into(),
        uri: format!("sip:127.0.0.1:{}", silent_port()),
        inbound_ips: vec!["127.0.0.2".into()],
        ..Default::default()
    }];
    let running = start(&config).await;
    let server = running.local.udp.unwrap();
    let mut pbx = Pbx::new(server).await;
    let challenge = pbx.register(300, None).await;
    let auth = pbx.authorization(&challenge, "s3cret");
    assert_eq!(pbx.register(300, Some(auth)).await.status, 200);

    let mut carrier = common::uac::Uac::from_ip(server, "127.0.0.2").await;
    let invite = carrier
        .request_text(
            "INVITE",
            &common::uac::offer(carrier.rtp_port(), "0 101", "sendrecv"),
        )
        .replace("sip:echo@", "sip:+15550100@");
    carrier.send(&invite).await;

    // The INVITE reaches the PBX at the address it registered from.
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), pbx.sock.recv_from(&mut buf))
        .await
        .expect("the registered PBX is called")
        .unwrap();
    let Ok(Message::Request(request)) = parse(&buf[..n]) else {
        panic!("not a request")
    };
    assert_eq!(request.method, "INVITE");
    // The registered contact is the Request-URI; the dialled number is in To.
    assert!(
        request.uri.starts_with("sip:pbx@127.0.0.1:"),
        "{}",
        request.uri
    );
    assert!(
        request
            .headers
            .get("To")
            .is_some_and(|to| to.contains("+15550100@")),
        "{:?}",
        request.headers.get("To")
    );
    let local = pbx.sock.local_addr().unwrap();
    let answer = request
        .response(200, "OK")
        .with_to_tag("pbx1")
        .header("Contact", format!("<sip:pbx@{local}>"))
        .with_body(
            "application/sdp",
            common::uac::offer(local.port() + 2, "0 101", "sendrecv"),
        );
    pbx.sock.send_to(&answer.to_bytes(), from).await.unwrap();
    let ok = carrier.final_response().await;
    assert_eq!(ok.status, 200);
    carrier.ack("").await;
    // voicegate acknowledges the PBX's 200.
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), pbx.sock.recv_from(&mut buf))
        .await
        .expect("ACK")
        .unwrap();
    let Ok(Message::Request(ack)) = parse(&buf[..n]) else {
        panic!("not a request")
    };
    assert_eq!(ack.method, "ACK");
}
