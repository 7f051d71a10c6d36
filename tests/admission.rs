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
