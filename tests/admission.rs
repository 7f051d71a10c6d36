//! Admission by customer trunks: source addresses, digest credentials, E.164 numbers and the
//! per-trunk limits give the seed's answers (403, 401, 404/484, 486, 503 with Retry-After).

mod common;

use common::uac::Uac;
use common::*;
use voicegate::config::{Config, CredentialConfig, NumberConfig, TrunkConfig};
use voicegate_sip::digest::{Algorithm, ResponseInput};

/// An echo test number reached through a trunk (a PSTN-mode number with no carrier yet).
const ECHO: &str = "+15550199";

fn trunk_config(trunk: TrunkConfig) -> Config {
    let mut config = test_config();
    config.test_numbers.echo = vec![ECHO.into()];
    config.trunks = vec![trunk];
    config
}

fn local_trunk() -> TrunkConfig {
    TrunkConfig {
        name: "acme".into(),
        whitelisted_ips: vec!["127.0.0.1/32".into()],
        numbers: vec![NumberConfig {
            number: ECHO.into(),
            mode: "pstn".into(),
            flow: String::new(),
        }],
        ..TrunkConfig::default()
    }
}

/// SIPp's refused-call scenario expecting `status`.
fn refused_scenario(status: u16) -> std::path::PathBuf {
    let text = std::fs::read_to_string(scenario("uac_refused.xml"))
        .unwrap()
        .replace("STATUS", &status.to_string());
    let path = std::env::temp_dir().join(format!(
        "vg-refused-{status}-{:x}.xml",
        rand::random::<u64>()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_from_an_address_not_whitelisted_gets_403() {
    let running = start(&trunk_config(local_trunk())).await;
    let scenario = refused_scenario(403);
    let out = sipp(
        running.local.udp.unwrap(),
        &[
            "-sf",
            scenario.to_str().unwrap(),
            "-s",
            ECHO,
            "-m",
            "1",
            "-i",
            "127.0.0.2",
        ],
    )
    .await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&out, 1);
    // The same from the allowed address connects.
    let out = sipp(
        running.local.udp.unwrap(),
        &["-sn", "uac", "-s", ECHO, "-m", "1"],
    )
    .await;
    assert_sipp_ok(&out, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_with_credentials_is_challenged_then_connects_and_a_wrong_password_gets_403() {
    let mut trunk = local_trunk();
    trunk.whitelisted_ips.clear();
    trunk.credentials = vec![CredentialConfig {
        user_name: "acme".into(),
        password: "s3cret".into(),
    }];
    let running = start(&trunk_config(trunk)).await;
    let auth = scenario("uac_auth.xml");
    let out = sipp(
        running.local.udp.unwrap(),
        &[
            "-sf",
            auth.to_str().unwrap(),
            "-s",
            ECHO,
            "-m",
            "3",
            "-au",
            "acme",
            "-ap",
            "s3cret",
        ],
    )
    .await;
    assert_sipp_ok(&out, 3);
    assert_eq!(
        running
            .core
            .stats
            .answered
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // SIPp with a wrong password: 401, then 403 to the authenticated INVITE.
    let text = std::fs::read_to_string(&auth).unwrap();
    let cut = text
        .find("  <recv response=\"100\" optional=\"true\"/>\n  <recv response=\"180\"")
        .expect("second INVITE's answers");
    let ack_403 = "  <recv response=\"100\" optional=\"true\"/>\n  <recv response=\"403\"/>\n  <send>\n    <![CDATA[\n      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3]\n      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n      [last_To:]\n      Call-ID: [call_id]\n      CSeq: 2 ACK\n      Max-Forwards: 70\n      Content-Length: 0\n\n    ]]>\n  </send>\n</scenario>\n";
    let wrong = std::env::temp_dir().join(format!("vg-auth-wrong-{:x}.xml", rand::random::<u64>()));
    std::fs::write(&wrong, format!("{}{ack_403}", &text[..cut])).unwrap();
    let out = sipp(
        running.local.udp.unwrap(),
        &[
            "-sf",
            wrong.to_str().unwrap(),
            "-s",
            ECHO,
            "-m",
            "1",
            "-au",
            "acme",
            "-ap",
            "wrong",
        ],
    )
    .await;
    let _ = std::fs::remove_file(&wrong);
    assert_sipp_ok(&out, 1);

    // The same with a scripted UA, checking the challenge's algorithms too.
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let challenge = uac.call(ECHO, "8", "").await;
    assert_eq!(challenge.status, 401);
    let values: Vec<&str> = challenge.headers.get_all("WWW-Authenticate").collect();
    assert!(
        values[0].contains("algorithm=MD5")
            && values.iter().any(|v| v.contains("algorithm=SHA-256")),
        "{values:?}"
    );
    let param = |name: &str| {
        voicegate_sip::digest::parse_params(values[0])
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap()
    };
    let (nonce, opaque) = (param("nonce"), param("opaque"));
    let uri = format!("sip:{ECHO}@{}", running.local.udp.unwrap());
    let response = ResponseInput {
        algorithm: Algorithm::Md5,
        username: "acme",
        realm: "voicegate",
        password: "not-the-password",
        method: "INVITE",
        uri: &uri,
        nonce: &nonce,
        nc: "00000001",
        cnonce: "abc",
    }
    .response();
    let header = format!(
        "Authorization: Digest username=\"acme\", realm=\"voicegate\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\", opaque=\"{opaque}\"\r\n"
    );
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let refused = uac.call(ECHO, "8", &header).await;
    assert_eq!(refused.status, 403, "{}", refused.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_not_in_e164_get_404_or_484() {
    let running = start(&trunk_config(local_trunk())).await;
    let scenario = refused_scenario(404);
    let out = sipp(
        running.local.udp.unwrap(),
        &["-sf", scenario.to_str().unwrap(), "-s", "1234", "-m", "1"],
    )
    .await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&out, 1);
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let r = uac.call("1234", "8", "").await;
    assert_eq!((r.status, r.reason.as_str()), (404, "Use E.164 format"));
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    assert_eq!(uac.call("+91", "8", "").await.status, 484);
    // E.164 but no carrier yet: 503 no route, with Retry-After.
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let r = uac.call("+15550000777", "8", "").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.get("Retry-After").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_at_its_call_limit_gets_486_and_over_its_rate_503() {
    let mut trunk = local_trunk();
    trunk.max_concurrent_calls = 1;
    let running = start(&trunk_config(trunk)).await;
    let mut first = Uac::new(running.local.udp.unwrap()).await;
    assert_eq!(first.call(ECHO, "8", "").await.status, 200);
    let scenario = refused_scenario(486);
    let out = sipp(
        running.local.udp.unwrap(),
        &["-sf", scenario.to_str().unwrap(), "-s", ECHO, "-m", "1"],
    )
    .await;
    let _ = std::fs::remove_file(&scenario);
    assert_sipp_ok(&out, 1);
    // The slot comes back when the call ends.
    assert_eq!(first.bye().await.status, 200);
    let mut again = Uac::new(running.local.udp.unwrap()).await;
    assert_eq!(again.call(ECHO, "8", "").await.status, 200);
    assert_eq!(again.bye().await.status, 200);

    let mut trunk = local_trunk();
    trunk.calls_per_minute = 2;
    let running = start(&trunk_config(trunk)).await;
    for _ in 0..2 {
        let mut uac = Uac::new(running.local.udp.unwrap()).await;
        assert_eq!(uac.call(ECHO, "8", "").await.status, 200);
        assert_eq!(uac.bye().await.status, 200);
    }
    let mut uac = Uac::new(running.local.udp.unwrap()).await;
    let r = uac.call(ECHO, "8", "").await;
    assert_eq!(r.status, 503);
    let retry: u32 = r.headers.get("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

/// Every datagram `socket` receives within `quiet` of the previous one (or of the call).
async fn datagrams(socket: &tokio::net::UdpSocket, quiet: std::time::Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok((n, _))) = tokio::time::timeout(quiet, socket.recv_from(&mut buf)).await {
        out.push(buf[..n].to_vec());
    }
    out
}

/// An INVITE to the trunk's echo number from `local`, on `branch`.
fn raw_invite(
    server: std::net::SocketAddr,
    local: std::net::SocketAddr,
    branch: &str,
    extra: &str,
) -> String {
    let body = common::uac::offer(local.port() + 1, "8", "sendrecv");
    format!(
        "INVITE sip:{ECHO}@{server} SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};branch={branch}\r\n\
From: <sip:attacker@{local}>;tag=a{branch}\r\n\
To: <sip:{ECHO}@{server}>\r\n\
Call-ID: {branch}@{local}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:attacker@{local}>\r\n\
Max-Forwards: 70\r\n\
{extra}Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn stat(
    running: &voicegate::server::Running,
    pick: fn(&voicegate::core::CallStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    pick(&running.core.stats).load(std::sync::atomic::Ordering::Relaxed)
}

/// A refused INVITE over UDP (its source may be spoofed) draws one final response and no
/// 100 Trying, nothing on Timer G, the response again only when the INVITE itself is
/// retransmitted, nothing after the ACK, no larger than the request, and no call task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_over_udp_is_sent_once_per_invite_received() {
    let running = start(&trunk_config(local_trunk())).await;
    let server = running.local.udp.unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let local = socket.local_addr().unwrap();
    let invite = raw_invite(server, local, "z9hG4bKrefused1", "");
    socket.send_to(invite.as_bytes(), server).await.unwrap();
    // Timer G (T1 = 500 ms) would have retransmitted at 0.5 s and 1.5 s.
    let first = datagrams(&socket, std::time::Duration::from_millis(2200)).await;
    let texts: Vec<String> = first
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert_eq!(first.len(), 1, "one answer to one INVITE: {texts:#?}");
    assert!(texts[0].starts_with("SIP/2.0 403 "), "{}", texts[0]);
    assert!(
        first[0].len() <= invite.len(),
        "the answer ({} bytes) is no larger than the request ({} bytes)",
        first[0].len(),
        invite.len()
    );
    assert_eq!(stat(&running, |s| &s.active), 0, "no call was started");
    assert_eq!(running.core.active_calls(), 0);

    // The peer retransmits: the same response once more.
    socket.send_to(invite.as_bytes(), server).await.unwrap();
    let again = datagrams(&socket, std::time::Duration::from_millis(700)).await;
    assert_eq!(
        again, first,
        "the retransmitted INVITE gets the same response"
    );
    assert_eq!(stat(&running, |s| &s.refusals_resent), 1);

    // Its ACK (the INVITE's branch) is absorbed.
    let ack = invite
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
    socket.send_to(ack.as_bytes(), server).await.unwrap();
    assert!(datagrams(&socket, std::time::Duration::from_millis(700))
        .await
        .is_empty());
    assert_eq!(stat(&running, |s| &s.refusal_acks), 1);
    assert_eq!(stat(&running, |s| &s.refused_early), 1);
}

/// A source over its request rate is dropped silently while the trunk's address, on its own
/// higher limit, is still answered; a source failing digest auth too often is blocked too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_over_their_limits_are_blocked_and_others_still_served() {
    let mut config = trunk_config(local_trunk());
    config.limits.requests_per_window = 5;
    config.limits.trusted_requests_per_window = 50;
    config.limits.window_secs = 60;
    config.limits.auth_failures_per_minute = 2;
    let running = start(&config).await;
    let server = running.local.udp.unwrap();

    let flooder = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let local = flooder.local_addr().unwrap();
    for n in 0..8 {
        let invite = raw_invite(server, local, &format!("z9hG4bKflood{n}"), "");
        flooder.send_to(invite.as_bytes(), server).await.unwrap();
    }
    let answers = datagrams(&flooder, std::time::Duration::from_millis(1500)).await;
    assert_eq!(answers.len(), 5, "answers up to the limit, then silence");
    assert_eq!(stat(&running, |s| &s.sources_blocked), 1);
    assert_eq!(stat(&running, |s| &s.shield_dropped), 3);

    // The trunk (127.0.0.1) goes over the unknown sources' limit and still connects.
    for _ in 0..6 {
        let mut uac = Uac::new(server).await;
        let response = uac.call(ECHO, "8", "").await;
        assert_eq!(response.status, 200);
        assert_eq!(uac.bye().await.status, 200);
    }

    // Wrong credentials, again and again: blocked after the limit.
    let guesser = tokio::net::UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let local = guesser.local_addr().unwrap();
    let authorization = "Authorization: Digest username=\"acme\", realm=\"voicegate\", nonce=\"x\", uri=\"sip:x\", response=\"0123456789abcdef0123456789abcdef\"\r\n";
    let mut answered = 0;
    for n in 0..4 {
        let invite = raw_invite(server, local, &format!("z9hG4bKguess{n}"), authorization);
        guesser.send_to(invite.as_bytes(), server).await.unwrap();
        answered += datagrams(&guesser, std::time::Duration::from_millis(400))
            .await
            .len();
    }
    assert_eq!(
        answered, 3,
        "answered until the third failure blocks the source"
    );
    assert_eq!(stat(&running, |s| &s.auth_blocked), 1);
}

/// Beyond `limits.max_calls` calls in progress, a new INVITE is shed with 503 and Retry-After
/// before admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_limit_get_503_with_retry_after() {
    let mut config = test_config();
    config.limits.max_calls = 1;
    config.limits.retry_after_secs = 7;
    let running = start(&config).await;
    let server = running.local.udp.unwrap();
    let mut ringing = Uac::new(server).await;
    let invite = ringing
        .request_text("INVITE", "")
        .replace("sip:echo@", "sip:ring@");
    ringing.send(&invite).await;
    // Its 180: the call is in progress.
    loop {
        match ringing.recv(std::time::Duration::from_secs(5)).await {
            Some(voicegate_sip::message::Message::Response(r)) if r.status == 180 => break,
            Some(_) => continue,
            None => panic!("no 180"),
        }
    }
    let mut second = Uac::new(server).await;
    let response = second.call("echo", "8", "").await;
    assert_eq!(response.status, 503);
    assert_eq!(
        response.reason,
        "Service Unavailable (overloaded: calls in progress)"
    );
    assert_eq!(response.headers.get("Retry-After"), Some("7"));
    assert_eq!(stat(&running, |s| &s.shed), 1);
    assert_eq!(ringing.cancel().await.status, 200);
}

/// With the process's CPU use at or over `limits.max_cpu_percent`, a new INVITE is shed with
/// 503; the server here runs in the test's process, so a thread spinning here is its load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_cpu_sheds_new_calls_with_503() {
    let mut config = test_config();
    config.limits.max_cpu_percent = 1;
    let running = start(&config).await;
    let server = running.local.udp.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })
    };
    // The sweeper samples CPU once a second: two samples span the spinning.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let response = Uac::new(server).await.call("echo", "8", "").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spinner.join().unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.reason, "Service Unavailable (overloaded: CPU)");
    assert!(response.headers.get("Retry-After").is_some());
    assert_eq!(stat(&running, |s| &s.shed), 1);
}
