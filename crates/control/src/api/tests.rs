use std::sync::Mutex;

use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use super::*;

const ACC: &str = "AC1";
const ACC2: &str = "AC2";

struct Api {
    app: Router,
    store: Arc<Store>,
    changes: Arc<Mutex<Vec<Change>>>,
}

fn basic(key: &str, token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{token}"))
    )
}

fn accounts() -> Vec<ApiAccount> {
    vec![
        ApiAccount {
            account_sid: ACC.into(),
            api_key: "key1".into(),
            api_token: "tok1".into(),
        },
        ApiAccount {
            account_sid: ACC2.into(),
            api_key: "key2".into(),
            api_token: "tok2".into(),
        },
    ]
}

async fn api_with(accounts: Vec<ApiAccount>) -> Api {
    let store = Arc::new(Store::open("sqlite::memory:").await.unwrap());
    let changes = Arc::new(Mutex::new(Vec::new()));
    let c = changes.clone();
    let state = ApiState {
        store: store.clone(),
        accounts,
        on_change: Arc::new(move |change| {
            c.lock().unwrap().push(change);
            Box::pin(async {})
        }),
    };
    Api {
        app: router(state),
        store,
        changes,
    }
}

async fn api() -> Api {
    api_with(accounts()).await
}

impl Api {
    /// A raw request: `auth` is the Authorization header, `ctype` the Content-Type.
    async fn raw(
        &self,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        ctype: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        if let Some(c) = ctype {
            req = req.header(header::CONTENT_TYPE, c);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes)));
        assert_eq!(v["http_code"], status.as_u16(), "{v}");
        assert_eq!(v["method"], method);
        assert!(v["request_id"].as_str().is_some_and(|s| s.len() == 32));
        (status, v)
    }

    /// As account AC1, JSON body when `body` is Some.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(ACC, "key1", "tok1", method, path, body).await
    }

    async fn call_as(
        &self,
        acc: &str,
        key: &str,
        tok: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let uri = format!("/v2/accounts/{acc}{path}");
        let auth = basic(key, tok);
        match body {
            Some(b) => {
                self.raw(
                    method,
                    &uri,
                    Some(&auth),
                    Some("application/json"),
                    &b.to_string(),
                )
                .await
            }
            None => self.raw(method, &uri, Some(&auth), None, "").await,
        }
    }

    /// Creates a trunk as AC1 and returns its sid.
    async fn trunk(&self, name: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/trunks",
                Some(json!({"trunk_name": name, "nso_code": "ANY-ANY", "domain_name": "acme.example"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["response"]["data"]["trunk_sid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn changes(&self) -> usize {
        self.changes.lock().unwrap().len()
    }

    /// The change the last write announced.
    fn last_change(&self) -> Option<Change> {
        self.changes.lock().unwrap().last().cloned()
    }
}

/// Asserts a single-object failure envelope with this HTTP status and error code.
fn assert_err(got: &(StatusCode, Value), http: u16, code: u16) {
    let (s, v) = got;
    assert_eq!(s.as_u16(), http, "{v}");
    let r = &v["response"];
    assert_eq!(r["status"], "failure", "{v}");
    assert_eq!(r["code"], http, "{v}");
    assert_eq!(r["error_data"]["code"], code, "{v}");
    assert!(r["error_data"]["message"].is_string());
    assert!(r["error_data"]["description"].is_string());
    assert!(r["data"].is_null());
}

fn data(got: &(StatusCode, Value)) -> &Value {
    let (s, v) = got;
    assert_eq!(*s, StatusCode::OK, "{v}");
    assert_eq!(v["response"]["status"], "success", "{v}");
    assert_eq!(v["response"]["code"], 200);
    assert!(v["response"]["error_data"].is_null());
    &v["response"]["data"]
}

fn list_data(got: &(StatusCode, Value)) -> Vec<Value> {
    let (s, v) = got;
    assert_eq!(*s, StatusCode::OK, "{v}");
    v["response"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|item| {
            assert_eq!(item["status"], "success");
            item["data"].clone()
        })
        .collect()
}

// --- auth, content type, parsing ---

#[tokio::test]
async fn auth_failures_are_401_1010() {
    let api = api().await;
    let uri = format!("/v2/accounts/{ACC}/trunks");
    assert_err(&api.raw("GET", &uri, None, None, "").await, 401, 1010);
    let wrong = basic("key1", "nope");
    assert_err(
        &api.raw("GET", &uri, Some(&wrong), None, "").await,
        401,
        1010,
    );
    assert_err(
        &api.raw("GET", &uri, Some("Bearer abc"), None, "").await,
        401,
        1010,
    );
    assert_err(
        &api.raw("GET", &uri, Some("Basic !!!"), None, "").await,
        401,
        1010,
    );
    // Valid credentials of another account do not open this one.
    assert_err(
        &api.call_as(ACC, "key2", "tok2", "GET", "/trunks", None)
            .await,
        401,
        1010,
    );
    list_data(
        &api.call_as(ACC2, "key2", "tok2", "GET", "/trunks", None)
            .await,
    );
    // Auth is checked before content type and body.
    assert_err(
        &api.raw("POST", &uri, None, Some("text/plain"), "{").await,
        401,
        1010,
    );
    // Outside the prefix, too.
    assert_err(
        &api.raw("GET", "/elsewhere", None, None, "").await,
        401,
        1010,
    );
}

#[tokio::test]
async fn no_accounts_refuses_everything() {
    let api = api_with(vec![]).await;
    assert_err(&api.call("GET", "/trunks", None).await, 401, 1010);
    assert_err(
        &api.call("POST", "/flows", Some(json!({"name": "x"}))).await,
        401,
        1010,
    );
}

#[tokio::test]
async fn content_type_and_body_errors() {
    let api = api().await;
    let uri = format!("/v2/accounts/{ACC}/trunks");
    let auth = basic("key1", "tok1");
    let body = r#"{"trunk_name":"a","nso_code":"ANY-ANY","domain_name":"a.example"}"#;
    assert_err(
        &api.raw("POST", &uri, Some(&auth), None, body).await,
        415,
        1011,
    );
    assert_err(
        &api.raw("POST", &uri, Some(&auth), Some("text/plain"), body)
            .await,
        415,
        1011,
    );
    assert_err(
        &api.raw("POST", &uri, Some(&auth), Some("application/json"), "{nope")
            .await,
        400,
        1007,
    );
    assert_err(
        &api.raw("POST", &uri, Some(&auth), Some("application/json"), "")
            .await,
        400,
        1007,
    );
    assert_err(
        &api.raw("POST", &uri, Some(&auth), Some("application/json"), "[1]")
            .await,
        400,
        1007,
    );
    let ok = api
        .raw(
            "POST",
            &uri,
            Some(&auth),
            Some("application/json; charset=utf-8"),
            body,
        )
        .await;
    data(&ok);
    assert_eq!(api.changes(), 1);
}

#[tokio::test]
async fn every_write_names_the_trunk_or_flow_it_changed() {
    let api = api().await;
    let sid = api.trunk("scoped").await;
    let trunk = Some(Change::Trunk(sid.clone()));
    assert_eq!(api.last_change(), trunk);
    let id = |got: &(StatusCode, Value), key: &str| data(got)[key].as_str().unwrap().to_string();
    let path = |rest: &str| format!("/trunks/{sid}{rest}");

    let flow = api
        .call(
            "POST",
            "/flows",
            Some(json!({"name": "f", "stream_url": "ws://127.0.0.1:9/"})),
        )
        .await;
    let flow_id = id(&flow, "id");
    let flow_change = Some(Change::Flow(flow_id.clone()));
    assert_eq!(api.last_change(), flow_change);
    data(
        &api.call(
            "PUT",
            &format!("/flows/{flow_id}"),
            Some(json!({"name": "g"})),
        )
        .await,
    );
    assert_eq!(api.last_change(), flow_change);

    let writes: Vec<(&str, String, Value)> = vec![
        ("PUT", path(""), json!({"status": "inactive"})),
        ("POST", path("/whitelisted-ips"), json!({"ip": "10.0.0.1"})),
        (
            "POST",
            path("/destination-uris"),
            json!({"destinations": [{"destination": "10.0.0.1:5060"}]}),
        ),
        (
            "POST",
            path("/settings"),
            json!({"settings": [{"name": "trunk_external_alias", "value": "+15550100"}]}),
        ),
    ];
    for (method, uri, body) in writes {
        api.changes.lock().unwrap().clear();
        let got = api.call(method, &uri, Some(body)).await;
        assert_eq!(got.0, StatusCode::OK, "{uri}: {}", got.1);
        assert_eq!(api.last_change(), trunk, "{method} {uri}");
    }
    let ip = list_data(&api.call("GET", &path("/whitelisted-ips"), None).await)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let destination = list_data(&api.call("GET", &path("/destination-uris"), None).await)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let number = api
        .call(
            "POST",
            &path("/phone-numbers"),
            Some(json!({"phone_number": "+15550111", "mode": "flow", "flow_id": flow_id})),
        )
        .await;
    // A number mapped to a flow is its trunk's row.
    assert_eq!(api.last_change(), trunk);
    let number = id(&number, "id");
    let credential = api
        .call(
            "POST",
            &path("/credentials"),
            Some(json!({"user_name": "pbx", "password": "Secret-Pass-123"})),
        )
        .await;
    assert_eq!(api.last_change(), trunk, "{}", credential.1);
    let credential = id(&credential, "id");
    for (method, uri, body) in [
        (
            "PUT",
            path(&format!("/phone-numbers/{number}")),
            Some(json!({"phone_number": "+15550112"})),
        ),
        ("DELETE", path(&format!("/phone-numbers/{number}")), None),
        (
            "PUT",
            format!("/credentials/{credential}"),
            Some(json!({"friendly_name": "x"})),
        ),
        ("DELETE", format!("/credentials/{credential}"), None),
        ("DELETE", path(&format!("/whitelisted-ips/{ip}")), None),
        (
            "DELETE",
            path(&format!("/destination-uris/{destination}")),
            None,
        ),
        ("DELETE", path(""), None),
    ] {
        api.changes.lock().unwrap().clear();
        let got = api.call(method, &uri, body).await;
        assert_eq!(got.0, StatusCode::OK, "{uri}: {}", got.1);
        assert_eq!(api.last_change(), trunk, "{method} {uri}");
    }
    data(&api.call("DELETE", &format!("/flows/{flow_id}"), None).await);
    assert_eq!(api.last_change(), flow_change);
}

#[tokio::test]
async fn unknown_route_is_1000() {
    let api = api().await;
    assert_err(&api.call("GET", "/nothing-here", None).await, 404, 1000);
}

// --- trunks ---

#[tokio::test]
async fn trunk_create_get_shape() {
    let api = api().await;
    let sid = api.trunk("acme_1").await;
    assert!(sid.starts_with("TR") && sid.len() == 34);
    let got = api.call("GET", &format!("/trunks/{sid}"), None).await;
    let t = data(&got);
    let base = format!("/v2/accounts/{ACC}/trunks/{sid}");
    assert_eq!(t["trunk_sid"], sid.as_str());
    assert_eq!(t["trunk_name"], "acme_1");
    assert_eq!(t["status"], "active");
    assert_eq!(t["domain_name"], "acme.example");
    assert_eq!(t["nso_code"], "ANY-ANY");
    assert_eq!(t["secure_trunking"], "disabled");
    assert_eq!(t["registration_enabled"], false);
    for f in [
        "auth_type",
        "edge_preference",
        "date_created",
        "date_updated",
    ] {
        assert!(t[f].is_string(), "{f}");
    }
    assert!(t["date_created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(t["destination_uris"], format!("{base}/destination-uris"));
    assert_eq!(t["whitelisted_ips"], format!("{base}/whitelisted-ips"));
    assert_eq!(t["credentials"], format!("{base}/credentials"));
    assert_eq!(t["phone_numbers"], format!("{base}/phone-numbers"));
}

#[tokio::test]
async fn trunk_create_errors() {
    let api = api().await;
    let post = |body: Value| api.call("POST", "/trunks", Some(body));
    let missing = post(json!({"nso_code": "ANY-ANY", "domain_name": "a.example"})).await;
    assert_err(&missing, 400, 1001);
    assert!(missing.1["response"]["error_data"]["message"]
        .as_str()
        .unwrap()
        .contains("trunk_name"));
    assert_err(
        &post(json!({"trunk_name": "a", "domain_name": "a.example"})).await,
        400,
        1001,
    );
    assert_err(
        &post(json!({"trunk_name": "a", "nso_code": "ANY-ANY"})).await,
        400,
        1001,
    );
    for bad in ["has space", "dash-no", "seventeen_chars_x", "ünï"] {
        assert_err(
            &post(json!({"trunk_name": bad, "nso_code": "ANY-ANY", "domain_name": "a.example"}))
                .await,
            400,
            1002,
        );
    }
    assert_err(
        &post(json!({"trunk_name": 5, "nso_code": "ANY-ANY", "domain_name": "a.example"})).await,
        400,
        1002,
    );
    assert_err(
        &post(json!({"trunk_name": "a", "nso_code": "ANY-ANY", "domain_name": "bad domain"})).await,
        400,
        1002,
    );
    api.trunk("sixteen_chars_ok").await;
    let dup = post(json!({"trunk_name": "sixteen_chars_ok", "nso_code": "ANY-ANY", "domain_name": "a.example"})).await;
    assert_err(&dup, 409, 1008);
    assert_eq!(api.changes(), 1, "failed writes do not fire on_change");
}

#[tokio::test]
async fn trunk_of_another_account_is_1003() {
    let api = api().await;
    let sid = api.trunk("mine").await;
    let other = |m: &'static str, p: String, b: Option<Value>| {
        let api = &api;
        async move { api.call_as(ACC2, "key2", "tok2", m, &p, b).await }
    };
    assert_err(
        &other("GET", format!("/trunks/{sid}"), None).await,
        403,
        1003,
    );
    assert_err(
        &other("DELETE", format!("/trunks?trunk_sid={sid}"), None).await,
        403,
        1003,
    );
    assert_err(
        &other(
            "POST",
            format!("/trunks/{sid}/phone-numbers"),
            Some(json!({"phone_number": "+918000000001"})),
        )
        .await,
        403,
        1003,
    );
    assert_err(
        &other("GET", format!("/trunks/{sid}/credentials"), None).await,
        403,
        1003,
    );
    assert_err(&api.call("GET", "/trunks/TRnope", None).await, 403, 1003);
    // The other account's list does not show it; the trunk_sid filter neither.
    assert!(list_data(&other("GET", "/trunks".into(), None).await).is_empty());
    assert!(list_data(&other("GET", format!("/trunks?trunk_sid={sid}"), None).await).is_empty());
    assert_eq!(
        list_data(
            &api.call("GET", &format!("/trunks?trunk_sid={sid}"), None)
                .await
        )
        .len(),
        1
    );
}

#[tokio::test]
async fn trunk_pagination() {
    let api = api().await;
    for i in 0..5 {
        api.trunk(&format!("t{i}")).await;
    }
    let all = list_data(&api.call("GET", "/trunks", None).await);
    assert_eq!(all.len(), 5);
    let (s, v) = api.call("GET", "/trunks?page_size=2&offset=2", None).await;
    let page = list_data(&(s, v.clone()));
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["trunk_sid"], all[2]["trunk_sid"]);
    let m = &v["metadata"];
    let base = format!("/v2/accounts/{ACC}/trunks");
    assert_eq!(m["page_size"], 2);
    assert_eq!(m["first_page_uri"], format!("{base}?page_size=2&offset=0"));
    assert_eq!(m["prev_page_uri"], format!("{base}?page_size=2&offset=0"));
    assert_eq!(m["next_page_uri"], format!("{base}?page_size=2&offset=4"));
    let (_, last) = api.call("GET", "/trunks?page_size=2&offset=4", None).await;
    assert_eq!(last["response"].as_array().unwrap().len(), 1);
    assert!(last["metadata"]["next_page_uri"].is_null());
    let (_, first) = api.call("GET", "/trunks", None).await;
    assert_eq!(first["metadata"]["page_size"], DEFAULT_PAGE_SIZE);
    assert!(first["metadata"]["prev_page_uri"].is_null());
    assert!(first["metadata"]["next_page_uri"].is_null());
    for bad in ["page_size=0", "page_size=101", "page_size=x", "offset=-1"] {
        assert_err(
            &api.call("GET", &format!("/trunks?{bad}"), None).await,
            400,
            1002,
        );
    }
}

#[tokio::test]
async fn trunk_update_extension() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let got = api
        .call(
            "PUT",
            &format!("/trunks/{sid}"),
            Some(json!({"status": "inactive", "secure_trunking": "enabled", "max_concurrent_calls": 5, "calls_per_minute": 10})),
        )
        .await;
    let t = data(&got);
    assert_eq!(t["status"], "inactive");
    assert_eq!(t["secure_trunking"], "enabled");
    let snap = api.store.snapshot().await.unwrap();
    let tr = snap.snapshot.trunk(&sid).unwrap();
    assert!(!tr.active);
    assert_eq!(
        (tr.max_concurrent_calls, tr.calls_per_minute),
        (Some(5), 10)
    );
    assert_err(
        &api.call(
            "PUT",
            &format!("/trunks/{sid}"),
            Some(json!({"status": "paused"})),
        )
        .await,
        400,
        1002,
    );
    assert_err(
        &api.call("PUT", "/trunks/TRnope", Some(json!({"status": "active"})))
            .await,
        403,
        1003,
    );
}

#[tokio::test]
async fn trunk_delete_cascades_and_returns_the_trunk() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let t = format!("/trunks/{sid}");
    data(
        &api.call(
            "POST",
            &format!("{t}/phone-numbers"),
            Some(json!({"phone_number": "+918000000001"})),
        )
        .await,
    );
    data(
        &api.call(
            "POST",
            &format!("{t}/whitelisted-ips"),
            Some(json!({"ip": "10.0.0.1"})),
        )
        .await,
    );
    let d = api
        .call(
            "POST",
            &format!("{t}/destination-uris"),
            Some(json!({"destinations": [{"destination": "10.0.0.1:5060"}]})),
        )
        .await;
    assert_eq!(d.0, StatusCode::OK, "{}", d.1);
    let c = api
        .call(
            "POST",
            &format!("{t}/credentials"),
            Some(json!({"user_name": "u", "password": "p"})),
        )
        .await;
    let cred_id = data(&c)["id"].as_str().unwrap().to_string();
    let before = api.changes();

    assert_err(&api.call("DELETE", "/trunks", None).await, 400, 1001);
    let del = api
        .call("DELETE", &format!("/trunks?trunk_sid={sid}"), None)
        .await;
    assert_eq!(data(&del)["trunk_sid"], sid.as_str());
    assert_eq!(api.changes(), before + 1);
    assert_err(&api.call("GET", &t, None).await, 403, 1003);
    assert_err(
        &api.call("GET", &format!("/credentials/{cred_id}"), None)
            .await,
        404,
        1000,
    );
    let snap = api.store.snapshot().await.unwrap();
    assert!(snap.snapshot.trunks.is_empty() && snap.snapshot.numbers.is_empty());
    assert!(snap.credentials.is_empty() && snap.destinations.is_empty());
    // The number can be mapped again elsewhere.
    let sid2 = api.trunk("b").await;
    data(
        &api.call(
            "POST",
            &format!("/trunks/{sid2}/phone-numbers"),
            Some(json!({"phone_number": "+918000000001"})),
        )
        .await,
    );
    // DELETE /trunks/{sid} works too.
    data(&api.call("DELETE", &format!("/trunks/{sid2}"), None).await);
    assert_err(
        &api.call("DELETE", &format!("/trunks?trunk_sid={sid2}"), None)
            .await,
        403,
        1003,
    );
}

// --- phone numbers ---

#[tokio::test]
async fn phone_numbers_crud_and_errors() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let base = format!("/trunks/{sid}/phone-numbers");
    let got = api
        .call(
            "POST",
            &base,
            Some(json!({"phone_number": "+918000000001", "mode": null})),
        )
        .await;
    let n = data(&got).clone();
    assert_eq!(n["mode"], "pstn");
    assert_eq!(n["phone_number"], "+918000000001");
    assert!(n["flow_id"].is_null());
    let id = n["id"].as_str().unwrap().to_string();

    assert_err(&api.call("POST", &base, Some(json!({}))).await, 400, 1001);
    for bad in ["918000000001", "+91", "+91 8000000001", "+0918000000001"] {
        assert_err(
            &api.call("POST", &base, Some(json!({"phone_number": bad})))
                .await,
            400,
            1002,
        );
    }
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(json!({"phone_number": "+918000000002", "mode": "sms"})),
        )
        .await,
        400,
        1002,
    );
    // Flow mode: flow_id mandatory and must exist in this account.
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(json!({"phone_number": "+918000000002", "mode": "flow"})),
        )
        .await,
        400,
        1001,
    );
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(json!({"phone_number": "+918000000002", "mode": "flow", "flow_id": "FLnope"})),
        )
        .await,
        400,
        1002,
    );
    let other_flow = api
        .call_as(
            ACC2,
            "key2",
            "tok2",
            "POST",
            "/flows",
            Some(json!({"name": "b", "stream_url": "wss://b.example"})),
        )
        .await;
    let other_flow_id = data(&other_flow)["id"].as_str().unwrap().to_string();
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(
                json!({"phone_number": "+918000000002", "mode": "flow", "flow_id": other_flow_id}),
            ),
        )
        .await,
        400,
        1002,
    );
    let f = api
        .call(
            "POST",
            "/flows",
            Some(json!({"name": "bot", "stream_url": "wss://bot.example/ws"})),
        )
        .await;
    let flow_id = data(&f)["id"].as_str().unwrap().to_string();
    let got = api
        .call(
            "POST",
            "/trunks/{sid}/phone_numbers"
                .replace("{sid}", &sid)
                .as_str(),
            Some(json!({"phone_number": "+918000000002", "mode": "flow", "flow_id": flow_id})),
        )
        .await;
    let n2 = data(&got).clone();
    assert_eq!(
        (n2["mode"].as_str(), n2["flow_id"].as_str()),
        (Some("flow"), Some(flow_id.as_str()))
    );
    // Duplicate, also through another trunk.
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(json!({"phone_number": "+918000000001"})),
        )
        .await,
        409,
        1008,
    );

    let listed = list_data(&api.call("GET", &base, None).await);
    assert_eq!(listed.len(), 2);
    assert_eq!(
        data(&api.call("GET", &format!("{base}/{id}"), None).await)["id"],
        id.as_str()
    );
    assert_err(
        &api.call("GET", &format!("{base}/PNnope"), None).await,
        404,
        1000,
    );

    // Update: change the number; switch to flow; bad values.
    let up = api
        .call(
            "PUT",
            &format!("{base}/{id}"),
            Some(json!({"phone_number": "+918000000003"})),
        )
        .await;
    assert_eq!(data(&up)["phone_number"], "+918000000003");
    assert_eq!(data(&up)["mode"], "pstn");
    let up = api
        .call(
            "PUT",
            &format!("{base}/{id}"),
            Some(json!({"mode": "flow", "flow_id": flow_id})),
        )
        .await;
    assert_eq!(data(&up)["mode"], "flow");
    assert_err(
        &api.call(
            "PUT",
            &format!("{base}/{id}"),
            Some(json!({"phone_number": "+918000000002"})),
        )
        .await,
        409,
        1008,
    );
    assert_err(
        &api.call(
            "PUT",
            &format!("{base}/{id}"),
            Some(json!({"phone_number": "12"})),
        )
        .await,
        400,
        1002,
    );
    assert_err(
        &api.call(
            "PUT",
            &format!("{base}/PNnope"),
            Some(json!({"phone_number": "+918000000009"})),
        )
        .await,
        404,
        1000,
    );
    let up = api
        .call("PUT", &format!("{base}/{id}"), Some(json!({"mode": null})))
        .await;
    assert_eq!(data(&up)["mode"], "pstn");
    assert!(data(&up)["flow_id"].is_null());

    let snap = api.store.snapshot().await.unwrap();
    assert_eq!(
        snap.snapshot.mapping("+918000000003").unwrap().mode,
        Mode::Pstn
    );

    let before = api.changes();
    data(&api.call("DELETE", &format!("{base}/{id}"), None).await);
    assert_eq!(api.changes(), before + 1);
    assert_err(
        &api.call("DELETE", &format!("{base}/{id}"), None).await,
        404,
        1000,
    );
    assert_eq!(list_data(&api.call("GET", &base, None).await).len(), 1);
}

// --- whitelisted IPs ---

#[tokio::test]
async fn whitelisted_ips_crud_and_errors() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let base = format!("/trunks/{sid}/whitelisted-ips");
    let got = api
        .call("POST", &base, Some(json!({"ip": "10.0.1.5", "mask": 16})))
        .await;
    let ip = data(&got).clone();
    assert_eq!(
        (ip["ip"].as_str(), ip["mask"].as_i64()),
        (Some("10.0.0.0"), Some(16))
    );
    let got = api
        .call("POST", &base, Some(json!({"ip": "192.0.2.7"})))
        .await;
    assert_eq!(data(&got)["mask"], 32);
    let got = api
        .call(
            "POST",
            &format!("/trunks/{sid}/whitelisted_ips"),
            Some(json!({"ip": "198.51.100.0", "mask": "24"})),
        )
        .await;
    assert_eq!(data(&got)["mask"], 24);

    assert_err(
        &api.call("POST", &base, Some(json!({"mask": 32}))).await,
        400,
        1001,
    );
    assert_err(
        &api.call("POST", &base, Some(json!({"ip": "10.0.0"}))).await,
        400,
        1002,
    );
    for mask in [json!(15), json!(33), json!("x"), json!(-1)] {
        assert_err(
            &api.call("POST", &base, Some(json!({"ip": "10.0.0.0", "mask": mask})))
                .await,
            400,
            1002,
        );
    }
    assert_err(
        &api.call("POST", &base, Some(json!({"ip": "10.0.9.9", "mask": 16})))
            .await,
        409,
        1008,
    );
    let (s, v) = api.call("GET", &format!("{base}?page_size=2"), None).await;
    assert_eq!(list_data(&(s, v.clone())).len(), 2);
    assert!(v["metadata"]["next_page_uri"]
        .as_str()
        .unwrap()
        .ends_with("offset=2"));

    let id = ip["id"].as_str().unwrap();
    data(&api.call("DELETE", &format!("{base}/{id}"), None).await);
    assert_err(
        &api.call("DELETE", &format!("{base}/{id}"), None).await,
        404,
        1000,
    );
    let snap = api.store.snapshot().await.unwrap();
    assert_eq!(snap.snapshot.trunk(&sid).unwrap().whitelisted.len(), 2);
}

// --- destination URIs ---

#[test]
fn destination_parsing() {
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(
        parse_destination("10.0.0.1:5061;transport=tls").unwrap(),
        ("sip:10.0.0.1:5061;transport=tls".into(), ip("10.0.0.1"))
    );
    assert_eq!(
        parse_destination("sip:pbx.example.com").unwrap(),
        ("sip:pbx.example.com".into(), None)
    );
    assert_eq!(
        parse_destination("SIPS:user@[2001:db8::1]:5061").unwrap(),
        ("sips:user@[2001:db8::1]:5061".into(), ip("2001:db8::1"))
    );
    for bad in [
        "",
        "a b",
        "host:0",
        "host:99999",
        "host;transport=sctp",
        "bad_host!",
        "[2001:db8::1",
        "host;;x",
    ] {
        assert!(parse_destination(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn destination_uris_multi_item_and_whitelist_rule() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let base = format!("/trunks/{sid}/destination-uris");
    data(
        &api.call(
            "POST",
            &format!("/trunks/{sid}/whitelisted-ips"),
            Some(json!({"ip": "10.0.0.0", "mask": 24})),
        )
        .await,
    );

    let all_ok = api
        .call(
            "POST",
            &base,
            Some(json!({"destinations": [
                {"destination": "10.0.0.5:5061;transport=tls"},
                {"destination": "pbx.example.com", "priority": 5, "weight": 2}
            ]})),
        )
        .await;
    assert_eq!(all_ok.0, StatusCode::OK, "{}", all_ok.1);
    assert_eq!(
        all_ok.1["metadata"],
        json!({"total": 2, "success": 2, "failed": 0})
    );
    let items = all_ok.1["response"].as_array().unwrap();
    assert_eq!(
        items[0]["data"]["destination"],
        "sip:10.0.0.5:5061;transport=tls"
    );
    assert_eq!(items[1]["data"]["priority"], 5);
    assert_eq!(items[1]["data"]["weight"], 2);

    let before = api.changes();
    let mixed = api
        .call(
            "POST",
            &format!("/trunks/{sid}/destination_uris"),
            Some(json!({"destinations": [
                {"destination": "10.0.0.6"},
                {"destination": "192.0.2.1:5060"},
                {"nothing": 1},
                {"destination": "10.0.0.5:5061;transport=tls"}
            ]})),
        )
        .await;
    assert_eq!(mixed.0, StatusCode::MULTI_STATUS, "{}", mixed.1);
    assert_eq!(mixed.1["http_code"], 207);
    assert_eq!(
        mixed.1["metadata"],
        json!({"total": 4, "success": 1, "failed": 3})
    );
    let items = mixed.1["response"].as_array().unwrap();
    assert_eq!(items[0]["status"], "success");
    assert_eq!(items[1]["error_data"]["code"], 1002);
    assert_eq!(
        items[1]["error_data"]["message"],
        "Destination not whitelisted"
    );
    assert_eq!(items[2]["error_data"]["code"], 1001);
    assert_eq!(items[3]["error_data"]["code"], 1008);
    assert_eq!(items[3]["code"], 409);
    assert_eq!(api.changes(), before + 1);

    // A single failing item answers its own status.
    let one_bad = api
        .call(
            "POST",
            &base,
            Some(json!({"destinations": [{"destination": "192.0.2.1"}]})),
        )
        .await;
    assert_eq!(one_bad.0, StatusCode::BAD_REQUEST);
    assert_eq!(one_bad.1["metadata"]["failed"], 1);
    assert_eq!(api.changes(), before + 1);

    assert_err(&api.call("POST", &base, Some(json!({}))).await, 400, 1001);
    assert_err(
        &api.call("POST", &base, Some(json!({"destinations": []})))
            .await,
        400,
        1002,
    );
    assert_err(
        &api.call("POST", &base, Some(json!({"destinations": "x"})))
            .await,
        400,
        1002,
    );

    let listed = list_data(&api.call("GET", &base, None).await);
    assert_eq!(listed.len(), 3);
    // Lowest priority first.
    let prios: Vec<i64> = listed
        .iter()
        .map(|d| d["priority"].as_i64().unwrap())
        .collect();
    let mut sorted = prios.clone();
    sorted.sort();
    assert_eq!(prios, sorted);
    let id = listed[0]["id"].as_str().unwrap();
    data(&api.call("DELETE", &format!("{base}/{id}"), None).await);
    assert_err(
        &api.call("DELETE", &format!("{base}/{id}"), None).await,
        404,
        1000,
    );
    assert_eq!(list_data(&api.call("GET", &base, None).await).len(), 2);
}

// --- credentials ---

#[tokio::test]
async fn credentials_crud_never_return_passwords() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let base = format!("/trunks/{sid}/credentials");
    let (s, v) = api
        .call(
            "POST",
            &base,
            Some(json!({"user_name": "pbx", "password": "s3cret", "friendly_name": "office"})),
        )
        .await;
    assert!(!v.to_string().contains("s3cret"), "{v}");
    let c = data(&(s, v.clone())).clone();
    assert_eq!(c["user_name"], "pbx");
    assert_eq!(c["friendly_name"], "office");
    assert!(c.get("password").is_none());
    let id = c["id"].as_str().unwrap().to_string();

    assert_err(
        &api.call("POST", &base, Some(json!({"password": "x"})))
            .await,
        400,
        1001,
    );
    assert_err(
        &api.call("POST", &base, Some(json!({"user_name": "x"})))
            .await,
        400,
        1001,
    );
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(json!({"user_name": "x", "password": "p", "friendly_name": "a".repeat(33)})),
        )
        .await,
        400,
        1002,
    );
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(json!({"user_name": "a:b", "password": "p"})),
        )
        .await,
        400,
        1002,
    );
    assert_err(
        &api.call(
            "POST",
            &base,
            Some(json!({"user_name": "pbx", "password": "other"})),
        )
        .await,
        409,
        1008,
    );

    let (s, v) = api.call("GET", &base, None).await;
    assert!(!v.to_string().contains("s3cret"));
    assert_eq!(list_data(&(s, v)).len(), 1);
    let (s, v) = api.call("GET", &format!("/credentials/{id}"), None).await;
    assert!(!v.to_string().contains("s3cret"));
    assert_eq!(data(&(s, v))["id"], id.as_str());

    let (s, v) = api
        .call(
            "PUT",
            &format!("/credentials/{id}"),
            Some(json!({"password": "n3w-pass", "friendly_name": "desk"})),
        )
        .await;
    assert!(!v.to_string().contains("n3w-pass"));
    assert_eq!(data(&(s, v))["friendly_name"], "desk");
    let snap = api.store.snapshot().await.unwrap();
    assert_eq!(
        snap.credentials_of(&sid).next().unwrap().password,
        "n3w-pass"
    );
    assert!(snap.snapshot.trunk(&sid).unwrap().has_credentials);
    assert_err(
        &api.call("PUT", "/credentials/CRnope", Some(json!({"password": "x"})))
            .await,
        404,
        1000,
    );
    assert_err(
        &api.call(
            "PUT",
            &format!("/credentials/{id}"),
            Some(json!({"friendly_name": "a".repeat(33)})),
        )
        .await,
        400,
        1002,
    );
    // Another account cannot see or touch it.
    assert_err(
        &api.call_as(
            ACC2,
            "key2",
            "tok2",
            "GET",
            &format!("/credentials/{id}"),
            None,
        )
        .await,
        404,
        1000,
    );
    assert_err(
        &api.call_as(
            ACC2,
            "key2",
            "tok2",
            "DELETE",
            &format!("/credentials?id={id}"),
            None,
        )
        .await,
        404,
        1000,
    );

    assert_err(&api.call("DELETE", "/credentials", None).await, 400, 1001);
    let before = api.changes();
    data(
        &api.call("DELETE", &format!("/credentials?id={id}"), None)
            .await,
    );
    assert_eq!(api.changes(), before + 1);
    assert_err(
        &api.call("DELETE", &format!("/credentials?id={id}"), None)
            .await,
        404,
        1000,
    );
    assert!(list_data(&api.call("GET", &base, None).await).is_empty());
}

// --- settings ---

#[tokio::test]
async fn settings_set_and_list() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let base = format!("/trunks/{sid}/settings");
    let got = api
        .call(
            "POST",
            &base,
            Some(json!({"settings": [{"name": "trunk_external_alias", "value": "+918000000001"}]})),
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    assert_eq!(
        got.1["metadata"],
        json!({"total": 1, "success": 1, "failed": 0})
    );
    let bad = api
        .call(
            "POST",
            &base,
            Some(json!({"settings": [{"name": "trunk_external_alias", "value": "12"}]})),
        )
        .await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
    assert_eq!(bad.1["response"][0]["error_data"]["code"], 1002);
    assert_err(&api.call("POST", &base, Some(json!({}))).await, 400, 1001);
    let listed = list_data(&api.call("GET", &base, None).await);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["value"], "+918000000001");
    let snap = api.store.snapshot().await.unwrap();
    assert_eq!(
        snap.setting(&sid, "trunk_external_alias"),
        Some("+918000000001")
    );
}

// --- flows ---

#[tokio::test]
async fn flows_crud_and_errors() {
    let api = api().await;
    let got = api
        .call(
            "POST",
            "/flows",
            Some(json!({
                "name": "support bot",
                "stream_url": "wss://bot.example/ws",
                "protocol": "twilio",
                "custom_parameters": {"lang": "hi-IN"},
                "on_stream_end": {"action": "connect", "destination": "sip:agent@pbx.example"}
            })),
        )
        .await;
    let f = data(&got).clone();
    let id = f["id"].as_str().unwrap().to_string();
    assert_eq!(f["protocol"], "twilio");
    assert_eq!(f["direction"], "bidirectional");
    assert_eq!(f["custom_parameters"], json!({"lang": "hi-IN"}));
    assert_eq!(
        f["on_stream_end"],
        json!({"action": "connect", "destination": "sip:agent@pbx.example"})
    );

    let post = |b: Value| api.call("POST", "/flows", Some(b));
    assert_err(&post(json!({"stream_url": "wss://x"})).await, 400, 1001);
    assert_err(&post(json!({"name": "x"})).await, 400, 1001);
    for bad in [
        json!({"name": "x", "stream_url": "https://x"}),
        json!({"name": "x", "stream_url": "wss://"}),
        json!({"name": "x", "stream_url": "wss://x", "protocol": "sip"}),
        json!({"name": "x", "stream_url": "wss://x", "direction": "both"}),
        json!({"name": "x", "stream_url": "wss://x", "custom_parameters": [1]}),
        json!({"name": "x", "stream_url": "wss://x", "on_stream_end": {"action": "dance"}}),
        json!({"name": "x", "stream_url": "wss://x", "on_stream_end": {"action": "connect"}}),
        json!({"name": "x", "stream_url": "wss://x", "on_stream_end": {"action": "connect", "destination": "tel:123"}}),
    ] {
        assert_err(&post(bad.clone()).await, 400, 1002);
    }

    let got = api.call("GET", &format!("/flows/{id}"), None).await;
    assert_eq!(data(&got)["name"], "support bot");
    assert_err(&api.call("GET", "/flows/FLnope", None).await, 404, 1000);
    assert_err(
        &api.call_as(ACC2, "key2", "tok2", "GET", &format!("/flows/{id}"), None)
            .await,
        404,
        1000,
    );
    assert_eq!(list_data(&api.call("GET", "/flows", None).await).len(), 1);

    let up = api
        .call(
            "PUT",
            &format!("/flows/{id}"),
            Some(json!({"direction": "unidirectional", "on_stream_end": {"action": "hangup"}})),
        )
        .await;
    let u = data(&up);
    assert_eq!(u["direction"], "unidirectional");
    assert_eq!(u["name"], "support bot", "PUT keeps absent fields");
    assert_eq!(u["on_stream_end"], json!({"action": "hangup"}));
    assert_err(
        &api.call(
            "PUT",
            &format!("/flows/{id}"),
            Some(json!({"stream_url": "ftp://x"})),
        )
        .await,
        400,
        1002,
    );
    assert_err(
        &api.call("PUT", "/flows/FLnope", Some(json!({}))).await,
        404,
        1000,
    );

    // In use by a number: refused until the number goes.
    let sid = api.trunk("a").await;
    let n = api
        .call(
            "POST",
            &format!("/trunks/{sid}/phone-numbers"),
            Some(json!({"phone_number": "+918000000001", "mode": "flow", "flow_id": id})),
        )
        .await;
    let nid = data(&n)["id"].as_str().unwrap().to_string();
    let snap = api.store.snapshot().await.unwrap();
    assert!(snap.flow(&id).is_some());
    assert_err(
        &api.call("DELETE", &format!("/flows/{id}"), None).await,
        400,
        1002,
    );
    data(
        &api.call(
            "DELETE",
            &format!("/trunks/{sid}/phone-numbers/{nid}"),
            None,
        )
        .await,
    );
    let before = api.changes();
    data(&api.call("DELETE", &format!("/flows/{id}"), None).await);
    assert_eq!(api.changes(), before + 1);
    assert_err(
        &api.call("DELETE", &format!("/flows/{id}"), None).await,
        404,
        1000,
    );
}

#[tokio::test]
async fn flow_escalation_fields_default_update_and_validate() {
    let api = api().await;
    // Without the fields: the defaults.
    let plain = api
        .call(
            "POST",
            "/flows",
            Some(json!({"name": "plain", "stream_url": "wss://bot.example/ws"})),
        )
        .await;
    let plain = data(&plain).clone();
    assert_eq!(plain["agent_assist"], false);
    assert_eq!(plain["fallback"], "hangup");

    // With them.
    let got = api
        .call(
            "POST",
            "/flows",
            Some(json!({
                "name": "assisted",
                "stream_url": "wss://bot.example/ws",
                "on_stream_end": {"action": "connect", "destination": "sip:agent@pbx.example"},
                "agent_assist": true,
                "fallback": "bot"
            })),
        )
        .await;
    let f = data(&got).clone();
    let id = f["id"].as_str().unwrap().to_string();
    assert_eq!(f["agent_assist"], true);
    assert_eq!(f["fallback"], "bot");
    let read = api.call("GET", &format!("/flows/{id}"), None).await;
    assert_eq!(data(&read)["agent_assist"], true);
    assert_eq!(data(&read)["fallback"], "bot");
    let listed = list_data(&api.call("GET", "/flows", None).await);
    // Flows created in the same second list in id order: look this one up by its id.
    let listed_flow = listed
        .iter()
        .find(|f| f["id"] == id.as_str())
        .expect("the flow is listed");
    assert_eq!(listed_flow["fallback"], "bot");
    // The SIP side sees them.
    let snap = api.store.snapshot().await.unwrap();
    let rec = snap.flow(&id).unwrap();
    assert!(rec.agent_assist);
    assert_eq!(rec.fallback, FlowFallback::Bot);

    // PUT keeps them when absent, changes each alone, and `null` means the default.
    let path = format!("/flows/{id}");
    let put = |b: Value| api.call("PUT", &path, Some(b));
    let u = put(json!({"name": "renamed"})).await;
    assert_eq!(
        (
            data(&u)["agent_assist"].clone(),
            data(&u)["fallback"].clone()
        ),
        (json!(true), json!("bot"))
    );
    let u = put(json!({"fallback": "hangup"})).await;
    assert_eq!(
        (
            data(&u)["agent_assist"].clone(),
            data(&u)["fallback"].clone()
        ),
        (json!(true), json!("hangup"))
    );
    let u = put(json!({"agent_assist": "false", "fallback": "bot"})).await;
    assert_eq!(
        (
            data(&u)["agent_assist"].clone(),
            data(&u)["fallback"].clone()
        ),
        (json!(false), json!("bot"))
    );
    let u = put(json!({"agent_assist": true})).await;
    assert_eq!(data(&u)["agent_assist"], true);
    let u = put(json!({"agent_assist": null, "fallback": null})).await;
    assert_eq!(
        (
            data(&u)["agent_assist"].clone(),
            data(&u)["fallback"].clone()
        ),
        (json!(false), json!("hangup"))
    );
    let rec = api.store.flow(ACC, &id).await.unwrap().unwrap();
    assert!(!rec.agent_assist);
    assert_eq!(rec.fallback, FlowFallback::Hangup);

    // Invalid values: 1002 in the envelope, on POST and on PUT, and nothing changes.
    let before = api.changes();
    for bad in [
        json!({"agent_assist": "yes"}),
        json!({"agent_assist": 1}),
        json!({"agent_assist": [true]}),
        json!({"fallback": "agent"}),
        json!({"fallback": "Bot"}),
        json!({"fallback": true}),
        json!({"fallback": ""}),
    ] {
        let mut post = bad.clone();
        post["name"] = json!("x");
        post["stream_url"] = json!("wss://x");
        assert_err(&api.call("POST", "/flows", Some(post)).await, 400, 1002);
        assert_err(&put(bad).await, 400, 1002);
    }
    assert_eq!(api.changes(), before);
    let rec = api.store.flow(ACC, &id).await.unwrap().unwrap();
    assert!(!rec.agent_assist);
    assert_eq!(rec.fallback, FlowFallback::Hangup);
}

#[tokio::test]
async fn flow_destination_may_be_one_of_the_accounts_trunks() {
    let api = api().await;
    let sid = api.trunk("agents").await;
    let connect = |destination: &str| {
        json!({
            "name": "bot",
            "stream_url": "wss://bot.example/ws",
            "on_stream_end": {"action": "connect", "destination": destination}
        })
    };
    let got = api
        .call("POST", "/flows", Some(connect(&format!("trunk:{sid}"))))
        .await;
    let f = data(&got).clone();
    let id = f["id"].as_str().unwrap().to_string();
    assert_eq!(
        f["on_stream_end"],
        json!({"action": "connect", "destination": format!("trunk:{sid}")})
    );
    assert_eq!(
        api.store
            .flow(ACC, &id)
            .await
            .unwrap()
            .unwrap()
            .on_stream_end,
        OnStreamEnd::Connect {
            destination: format!("trunk:{sid}")
        }
    );
    data(
        &api.call("POST", "/flows", Some(connect("sips:agent@pbx.example")))
            .await,
    );

    // A trunk of another account, an unknown one, or none at all: 1002.
    let (s, v) = api
        .call_as(
            ACC2,
            "key2",
            "tok2",
            "POST",
            "/trunks",
            Some(
                json!({"trunk_name": "theirs", "nso_code": "ANY-ANY", "domain_name": "b.example"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let theirs = v["response"]["data"]["trunk_sid"]
        .as_str()
        .unwrap()
        .to_string();
    for bad in [
        format!("trunk:{theirs}"),
        "trunk:TRnope".to_string(),
        "trunk:".to_string(),
        format!("trunk: {sid}"),
    ] {
        assert_err(
            &api.call("POST", "/flows", Some(connect(&bad))).await,
            400,
            1002,
        );
        assert_err(
            &api.call(
                "PUT",
                &format!("/flows/{id}"),
                Some(json!({"on_stream_end": {"action": "connect", "destination": bad}})),
            )
            .await,
            400,
            1002,
        );
    }

    // Once the trunk is gone the flow can still be edited (its calls fail at hand-off).
    data(&api.call("DELETE", &format!("/trunks/{sid}"), None).await);
    let u = api
        .call(
            "PUT",
            &format!("/flows/{id}"),
            Some(json!({"fallback": "bot"})),
        )
        .await;
    assert_eq!(data(&u)["fallback"], "bot");
}

#[tokio::test]
async fn on_change_fires_once_per_successful_write_only() {
    let api = api().await;
    assert_eq!(api.changes(), 0);
    let sid = api.trunk("a").await;
    assert_eq!(api.changes(), 1);
    list_data(&api.call("GET", "/trunks", None).await);
    data(&api.call("GET", &format!("/trunks/{sid}"), None).await);
    assert_eq!(api.changes(), 1, "reads do not fire");
    data(
        &api.call(
            "POST",
            &format!("/trunks/{sid}/whitelisted-ips"),
            Some(json!({"ip": "10.0.0.1"})),
        )
        .await,
    );
    assert_eq!(api.changes(), 2);
    assert_err(
        &api.call(
            "POST",
            &format!("/trunks/{sid}/whitelisted-ips"),
            Some(json!({"ip": "10.0.0.1"})),
        )
        .await,
        409,
        1008,
    );
    assert_eq!(api.changes(), 2);
}

#[tokio::test]
async fn serves_over_a_real_listener() {
    let api = api().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /v2/accounts/{ACC}/trunks HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic("key1", "tok1")
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"http_code\":200"), "{out}");
    server.abort();
}

#[tokio::test]
async fn more_settings_than_one_request_may_carry_are_refused_whole() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let settings: Vec<Value> = (0..=MAX_ITEMS_PER_REQUEST)
        .map(|i| json!({"name": format!("s{i}"), "value": "v"}))
        .collect();
    let before = api.changes();
    let got = api
        .call(
            "POST",
            &format!("/trunks/{sid}/settings"),
            Some(json!({ "settings": settings })),
        )
        .await;
    assert_err(&got, 413, 1013);
    assert_eq!(api.changes(), before, "nothing was written");
}

#[tokio::test]
async fn a_trunk_holds_at_most_its_share_of_whitelisted_ips() {
    let api = api().await;
    let sid = api.trunk("a").await;
    let base = format!("/trunks/{sid}/whitelisted-ips");
    for i in 0..MAX_IPS_PER_TRUNK {
        let ip = format!("10.0.{}.{}", i / 250, i % 250 + 1);
        let got = api.call("POST", &base, Some(json!({ "ip": ip }))).await;
        assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    }
    let got = api
        .call("POST", &base, Some(json!({"ip": "192.0.2.1"})))
        .await;
    assert_err(&got, 400, 1012);
}
