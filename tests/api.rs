//! The trunk API served by voicegate: provisioned trunks admit calls at once, and a number
//! re-mapped from one flow to another takes effect on the next call, with no restart.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::uac::Uac;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use voicegate::config::{ApiAccountConfig, Config, FlowConfig, NumberConfig, TrunkConfig};

/// One HTTP/1.1 request with Basic auth; returns the status and the JSON body.
async fn http(api: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "key:token");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} /v2/accounts/acme{path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Basic {auth}\r\n\
Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(api, request.as_bytes()).await
}

fn data(v: &Value) -> &Value {
    &v["response"]["data"]
}

/// A bot that reports the `start` message of each connection it accepts.
async fn counting_bot() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
                    use futures_util::StreamExt;
                    while let Some(Ok(message)) = ws.next().await {
                        let Ok(text) = message.into_text() else {
                            continue;
                        };
                        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                            continue;
                        };
                        if value["event"] == "start" {
                            let _ = tx.send(value);
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn api_config() -> Config {
    let mut config = test_config();
    config.api.accounts = vec![ApiAccountConfig {
        account_sid: "acme".into(),
        api_key: "key".into(),
        api_token: "token".into(),
    }];
    config
}

async fn call(server: SocketAddr, number: &str) -> (Uac, u16) {
    let mut uac = Uac::new(server).await;
    let status = uac.call(number, "8", "").await.status;
    (uac, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_remapped_through_the_api_takes_effect_on_the_next_call() {
    let running = start(&api_config()).await;
    let api = running.api.expect("the API listens");
    let sip = running.local.udp.unwrap();
    let (bot_a, mut seen_a) = counting_bot().await;
    let (bot_b, mut seen_b) = counting_bot().await;

    let (status, a) = http(
        api,
        "POST",
        "/flows",
        Some(json!({"name": "a", "stream_url": format!("ws://{bot_a}/")})),
    )
    .await;
    assert_eq!(status, 200, "{a}");
    let flow_a = data(&a)["id"].as_str().unwrap().to_string();
    let (_, b) = http(
        api,
        "POST",
        "/flows",
        Some(json!({"name": "b", "stream_url": format!("ws://{bot_b}/")})),
    )
    .await;
    let flow_b = data(&b)["id"].as_str().unwrap().to_string();
    let (status, trunk) = http(
        api,
        "POST",
        "/trunks",
        Some(json!({"trunk_name": "acme1", "nso_code": "ANY-ANY", "domain_name": "acme.example"})),
    )
    .await;
    assert_eq!(status, 200, "{trunk}");
    let sid = data(&trunk)["trunk_sid"].as_str().unwrap().to_string();

    // Before the whitelist entry, the caller's address is unknown: 403.
    let (_, status) = call(sip, "+15550123").await;
    assert_eq!(status, 403);
    let (status, ip) = http(
        api,
        "POST",
        &format!("/trunks/{sid}/whitelisted-ips"),
        Some(json!({"ip": "127.0.0.1", "mask": 32})),
    )
    .await;
    assert_eq!(status, 200, "{ip}");
    let (status, number) = http(
        api,
        "POST",
        &format!("/trunks/{sid}/phone-numbers"),
        Some(json!({"phone_number": "+15550123", "mode": "flow", "flow_id": flow_a})),
    )
    .await;
    assert_eq!(status, 200, "{number}");
    let number_id = data(&number)["id"].as_str().unwrap().to_string();

    let (mut uac, status) = call(sip, "+15550123").await;
    assert_eq!(status, 200);
    let start = tokio::time::timeout(Duration::from_secs(5), seen_a.recv())
        .await
        .expect("bot a is called")
        .unwrap();
    // The flow belongs to the account that created it, and its bot is told so.
    assert_eq!(start["start"]["account_sid"], "acme", "{start}");
    assert_eq!(uac.bye().await.status, 200);

    let (status, _) = http(
        api,
        "PUT",
        &format!("/trunks/{sid}/phone-numbers/{number_id}"),
        Some(json!({"phone_number": "+15550123", "mode": "flow", "flow_id": flow_b})),
    )
    .await;
    assert_eq!(status, 200);
    let (mut uac, status) = call(sip, "+15550123").await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(5), seen_b.recv())
        .await
        .expect("bot b is called after the change")
        .unwrap();
    assert!(seen_a.try_recv().is_err(), "bot a is not called again");
    assert_eq!(uac.bye().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let path = std::env::temp_dir().join(format!("vg-store-{:x}.db", rand::random::<u64>()));
    let mut config = api_config();
    config.store.url = format!("sqlite://{}", path.display());
    {
        let running = start(&config).await;
        let (status, _) = http(
            running.api.unwrap(),
            "POST",
            "/trunks",
            Some(json!({"trunk_name": "kept", "nso_code": "ANY-ANY", "domain_name": "x"})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let running = start(&config).await;
    let (status, list) = http(running.api.unwrap(), "GET", "/trunks", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["data"]["trunk_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["kept"]);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_without_accounts_refuses_every_request() {
    let running = start(&test_config()).await;
    let (status, body) = http(running.api.unwrap(), "GET", "/trunks", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["response"]["error_data"]["code"], 1010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_can_be_enabled_through_the_api() {
    let running = start(&api_config()).await;
    let api = running.api.unwrap();
    let (status, trunk) = http(api, "POST", "/trunks", Some(json!({"trunk_name": "pbx1", "nso_code": "ANY-ANY", "domain_name": "x", "registration_enabled": true}))).await;
    assert_eq!(status, 200, "{trunk}");
    assert_eq!(data(&trunk)["registration_enabled"], true);
    let sid = data(&trunk)["trunk_sid"].as_str().unwrap().to_string();
    let (status, updated) = http(
        api,
        "PUT",
        &format!("/trunks/{sid}"),
        Some(json!({"registration_enabled": "false"})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(data(&updated)["registration_enabled"], false);
    let (status, bad) = http(
        api,
        "PUT",
        &format!("/trunks/{sid}"),
        Some(json!({"registration_enabled": "maybe"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(bad["response"]["error_data"]["code"], 1002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunks_and_flows_in_the_config_are_seeded_and_updated_at_start() {
    let path = std::env::temp_dir().join(format!("vg-seed-{:x}.db", rand::random::<u64>()));
    let mut config = api_config();
    config.store.url = format!("sqlite://{}", path.display());
    config.flows = vec![FlowConfig {
        name: "support".into(),
        url: "ws://127.0.0.1:9/bot".into(),
        ..FlowConfig::default()
    }];
    config.trunks = vec![TrunkConfig {
        name: "acme".into(),
        whitelisted_ips: vec!["127.0.0.1/32".into()],
        numbers: vec![NumberConfig {
            number: "+15550777".into(),
            mode: "flow".into(),
            flow: "support".into(),
        }],
        max_concurrent_calls: 5,
        ..TrunkConfig::default()
    }];
    let list = |api| async move { http(api, "GET", "/trunks", None).await.1 };
    {
        let running = start(&config).await;
        let trunks = list(running.api.unwrap()).await;
        let items = trunks["response"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["data"]["trunk_name"], "acme");
        let sid = items[0]["data"]["trunk_sid"].as_str().unwrap().to_string();
        let (_, numbers) = http(
            running.api.unwrap(),
            "GET",
            &format!("/trunks/{sid}/phone-numbers"),
            None,
        )
        .await;
        let number = &numbers["response"][0]["data"];
        assert_eq!(number["phone_number"], "+15550777");
        assert_eq!(number["mode"], "flow");
        let (_, flows) = http(running.api.unwrap(), "GET", "/flows", None).await;
        assert_eq!(flows["response"][0]["data"]["id"], number["flow_id"]);
    }
    // Changed in the file: updated in place at the next start, not duplicated.
    config.trunks[0].max_concurrent_calls = 9;
    let running = start(&config).await;
    let trunks = list(running.api.unwrap()).await;
    let items = trunks["response"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{trunks}");
    assert_eq!(items[0]["data"]["max_concurrent_calls"], 9);
    let _ = std::fs::remove_file(&path);
}

/// Sends `request` as it is and returns the status and the JSON body of the answer; a reset
/// after the answer (the server closing with unread request bytes) is not an error here.
async fn raw(api: SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(api).await.unwrap();
    // The server may answer and close before reading everything (a body over the limit).
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (status, json)
}

fn authorized(method: &str, target: &str, body: &str) -> Vec<u8> {
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "key:token");
    format!(
        "{method} {target} HTTP/1.1\r\nHost: api\r\nAuthorization: Basic {auth}\r\n\
Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The envelope's failure `code` (Exotel's), after checking the envelope agrees with `status`.
fn failure_code(status: u16, answer: &Value) -> u64 {
    assert_eq!(answer["http_code"], status, "{answer}");
    assert_eq!(answer["response"]["code"], status, "{answer}");
    assert_eq!(answer["response"]["status"], "failure", "{answer}");
    assert!(
        answer["response"]["error_data"]["message"].is_string(),
        "{answer}"
    );
    answer["response"]["error_data"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no error code: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_made_outside_the_handlers_are_in_the_envelope_too() {
    let running = start(&api_config()).await;
    let api = running.api.expect("the API listens");

    let (status, answer) = raw(api, &authorized("PATCH", "/v2/accounts/acme/trunks", "{}")).await;
    assert_eq!((status, failure_code(status, &answer)), (405, 1005));

    let (status, answer) = raw(api, &authorized("GET", "/v2/accounts/acme/nothing", "")).await;
    assert_eq!((status, failure_code(status, &answer)), (404, 1000));

    let long = format!("/v2/accounts/acme/trunks?trunk_sid={}", "A".repeat(4000));
    let (status, answer) = raw(api, &authorized("GET", &long, "")).await;
    assert_eq!((status, failure_code(status, &answer)), (414, 1014));

    let big = json!({"trunk_name": "x".repeat(70_000)}).to_string();
    let (status, answer) = raw(api, &authorized("POST", "/v2/accounts/acme/trunks", &big)).await;
    assert_eq!((status, failure_code(status, &answer)), (413, 1013));

    let not_utf8 = authorized("GET", "/v2/accounts/acme/trunks/%FF%FE", "");
    let (status, answer) = raw(api, &not_utf8).await;
    assert_eq!((status, failure_code(status, &answer)), (400, 1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_destinations_are_refused_quickly_and_whole() {
    let running = start(&api_config()).await;
    let api = running.api.expect("the API listens");
    let (status, trunk) = http(
        api,
        "POST",
        "/trunks",
        Some(json!({"trunk_name": "big", "nso_code": "ANY-ANY", "domain_name": "big.example"})),
    )
    .await;
    assert_eq!(status, 200, "{trunk}");
    let sid = data(&trunk)["trunk_sid"].as_str().unwrap().to_string();
    let destinations = |n: usize, from: usize| {
        let items: Vec<Value> = (from..from + n)
            .map(|i| json!({"destination": format!("host{i}.example")}))
            .collect();
        Some(json!({ "destinations": items }))
    };
    let path = format!("/trunks/{sid}/destination-uris");

    let started = std::time::Instant::now();
    // Refused before it is read in full, so sent with `raw`, which survives the early close.
    let huge = destinations(10_000, 0).unwrap().to_string();
    let request = authorized("POST", &format!("/v2/accounts/acme{path}"), &huge);
    let (status, answer) = raw(api, &request).await;
    assert_eq!((status, failure_code(status, &answer)), (413, 1013));
    let (status, answer) = http(api, "POST", &path, destinations(101, 0)).await;
    assert_eq!((status, failure_code(status, &answer)), (413, 1013));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        started.elapsed()
    );

    let (status, answer) = http(api, "POST", &path, destinations(100, 0)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = http(api, "POST", &path, destinations(1, 100)).await;
    assert_eq!((status, failure_code(status, &answer)), (400, 1012));
    let (_, listed) = http(
        api,
        "GET",
        &format!("{path}?page_size=100&offset=100"),
        None,
    )
    .await;
    assert_eq!(
        listed["response"],
        json!([]),
        "nothing of a refused POST is stored"
    );
}

/// True if the server closed `stream` within `within` (EOF or reset), false if it stayed open.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the server sent something unasked"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_over_the_cap_do_not_lock_the_api_out_and_are_closed() {
    let mut config = api_config();
    config.api.max_connections = 4;
    config.api.max_connections_per_ip = 4;
    config.api.idle_timeout_secs = 1;
    let running = start(&config).await;
    let api = running.api.expect("the API listens");

    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(TcpStream::connect(api).await.unwrap());
    }
    let started = std::time::Instant::now();
    let (status, answer) =
        tokio::time::timeout(Duration::from_secs(5), http(api, "GET", "/trunks", None))
            .await
            .expect("a normal request is served once idle connections time out");
    assert_eq!(status, 200, "{answer}");
    // It had to wait for a slot: the four idle connections held them all until their timeout.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "served after {:?}, so the cap did not hold",
        started.elapsed()
    );
    for stream in &mut idle {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "an idle connection is closed after the timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_more_than_its_share_of_connections() {
    let mut config = api_config();
    config.api.max_connections = 8;
    config.api.max_connections_per_ip = 2;
    config.api.idle_timeout_secs = 30;
    let running = start(&config).await;
    let api = running.api.expect("the API listens");

    let mut first = TcpStream::connect(api).await.unwrap();
    let _second = TcpStream::connect(api).await.unwrap();
    let mut third = TcpStream::connect(api).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    assert!(
        !closed_within(&mut first, Duration::from_millis(200)).await,
        "connections within the share stay open"
    );
}

/// Each kind of write is live for the very next call, though the API now re-reads only the
/// trunk or flow it touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_write_is_live_for_the_next_call() {
    let running = start(&api_config()).await;
    let api = running.api.expect("the API listens");
    let sip = running.local.udp.unwrap();
    let (bot_a, mut seen_a) = counting_bot().await;
    let (bot_b, mut seen_b) = counting_bot().await;
    let (_, flow) = http(
        api,
        "POST",
        "/flows",
        Some(json!({"name": "f", "stream_url": format!("ws://{bot_a}/")})),
    )
    .await;
    let flow = data(&flow)["id"].as_str().unwrap().to_string();
    let (_, trunk) = http(
        api,
        "POST",
        "/trunks",
        Some(json!({"trunk_name": "live", "nso_code": "ANY-ANY", "domain_name": "acme.example"})),
    )
    .await;
    let sid = data(&trunk)["trunk_sid"].as_str().unwrap().to_string();
    let (status, ip) = http(
        api,
        "POST",
        &format!("/trunks/{sid}/whitelisted-ips"),
        Some(json!({"ip": "127.0.0.1"})),
    )
    .await;
    assert_eq!(status, 200, "{ip}");
    let ip = data(&ip)["id"].as_str().unwrap().to_string();
    let (status, number) = http(
        api,
        "POST",
        &format!("/trunks/{sid}/phone-numbers"),
        Some(json!({"phone_number": "+15550124", "mode": "flow", "flow_id": flow})),
    )
    .await;
    assert_eq!(status, 200, "{number}");
    let number = data(&number)["id"].as_str().unwrap().to_string();

    let (mut uac, status) = call(sip, "+15550124").await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(5), seen_a.recv())
        .await
        .expect("bot a is called")
        .unwrap();
    assert_eq!(uac.bye().await.status, 200);

    // A flow write: the next call streams to the flow's new URL.
    let (status, answer) = http(
        api,
        "PUT",
        &format!("/flows/{flow}"),
        Some(json!({"stream_url": format!("ws://{bot_b}/")})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (mut uac, status) = call(sip, "+15550124").await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(5), seen_b.recv())
        .await
        .expect("bot b is called after the flow changed")
        .unwrap();
    assert_eq!(uac.bye().await.status, 200);
    assert!(seen_a.try_recv().is_err(), "bot a is not called again");

    // Trunk writes: inactive refuses, active again admits.
    for (status_field, expected) in [("inactive", 403), ("active", 200)] {
        let (status, answer) = http(
            api,
            "PUT",
            &format!("/trunks/{sid}"),
            Some(json!({"status": status_field})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let (mut uac, status) = call(sip, "+15550124").await;
        assert_eq!(status, expected, "trunk {status_field}");
        if status == 200 {
            tokio::time::timeout(Duration::from_secs(5), seen_b.recv())
                .await
                .expect("bot b is called once the trunk is active again")
                .unwrap();
            assert_eq!(uac.bye().await.status, 200);
        }
    }

    // A deleted number no longer reaches the flow's bot.
    let (status, _) = http(
        api,
        "DELETE",
        &format!("/trunks/{sid}/phone-numbers/{number}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (mut uac, status) = call(sip, "+15550124").await;
    if status == 200 {
        uac.bye().await;
    }
    assert_ne!(status, 200, "an unmapped number is not the flow's any more");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen_b.try_recv().is_err(), "bot b is not called");

    // A deleted whitelist entry: the caller's address is unknown again.
    let (status, _) = http(
        api,
        "DELETE",
        &format!("/trunks/{sid}/whitelisted-ips/{ip}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, status) = call(sip, "+15550124").await;
    assert_eq!(status, 403);
}
