//! The Exotel-compatible trunk REST API (see `trunk-api.md`), plus voicegate's flows.
//!
//! [`router`] serves everything under `/v2/accounts/{account_sid}`:
//!
//! | method and path | |
//! |---|---|
//! | POST, GET `/trunks` | create; list (`page_size`, `offset`, optional `trunk_sid` filter) |
//! | DELETE `/trunks?trunk_sid=…` | delete with everything under it (also `DELETE /trunks/{sid}`) |
//! | GET, PUT `/trunks/{trunk_sid}` | get; update (voicegate extension: `status`, limits, …) |
//! | POST, GET `/trunks/{sid}/phone-numbers` | map; list |
//! | GET, PUT, DELETE `/trunks/{sid}/phone-numbers/{id}` | |
//! | POST, GET `/trunks/{sid}/whitelisted-ips`; DELETE `…/{id}` | |
//! | POST, GET `/trunks/{sid}/destination-uris`; DELETE `…/{id}` | multi-item POST |
//! | POST, GET `/trunks/{sid}/credentials` | |
//! | GET, PUT `/credentials/{id}`; DELETE `/credentials?id=…` (and `/credentials/{id}`) | |
//! | POST, GET `/trunks/{sid}/settings` | multi-item POST |
//! | POST, GET `/flows`; GET, PUT, DELETE `/flows/{flow_id}` | voicegate's flows |
//!
//! Underscore spellings (`phone_numbers`, `whitelisted_ips`, `destination_uris`) are accepted
//! too. Lists take `page_size` (default [`DEFAULT_PAGE_SIZE`], 1..=[`MAX_PAGE_SIZE`]) and
//! `offset` (default 0).
//!
//! Checks, in order: Basic auth against an [`ApiAccount`] whose sid is the path's (401 / 1010),
//! then for POST and PUT a JSON content type (415 / 1011) and a parseable JSON object body
//! (400 / 1007), then the parameters (1001 missing, 1002 invalid), then ownership (403 / 1003
//! for a trunk that is not the account's; 404 / 1000 for other missing ids). Duplicates answer
//! HTTP 409 with code 1008. After every successful write [`ApiState::on_change`] is called with
//! the [`Change`] it made.
//!
//! Sizes are bounded ([`MAX_BODY_BYTES`], [`MAX_URI_BYTES`], [`MAX_ITEMS_PER_REQUEST`], the
//! per-trunk limits), and every answer is in the envelope, including those axum makes itself
//! (405, 413, a path that is not UTF-8).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::admission::check_e164;
use crate::model::{IpNet, Mode};
use crate::store::{
    new_id, CredentialRecord, CredentialUpdate, DestinationRecord, FlowDirection, FlowFallback,
    FlowProtocol, FlowRecord, IpRecord, NewCredential, NewFlow, NewTrunk, NumberRecord,
    OnStreamEnd, Page, SettingRecord, Store, StoreError, TrunkRecord, TrunkUpdate,
};

/// Page size of a list when `page_size` is not given.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// The largest `page_size` accepted.
pub const MAX_PAGE_SIZE: u32 = 100;
/// The largest request body accepted (413 / 1013 beyond). Ample for [`MAX_ITEMS_PER_REQUEST`]
/// items; a bigger body is refused before it is read in full.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest request target (path and query) accepted (414 / 1014 beyond).
pub const MAX_URI_BYTES: usize = 2048;
/// The most items in one multi-item POST (destinations, settings): 413 / 1013 beyond.
pub const MAX_ITEMS_PER_REQUEST: usize = 100;
/// The most destination URIs one trunk may have: a POST that would exceed it is refused
/// whole (400 / 1012), so the snapshot every call reads stays small.
pub const MAX_DESTINATIONS_PER_TRUNK: usize = 100;
/// The most whitelisted IP ranges one trunk may have (400 / 1012 beyond).
pub const MAX_IPS_PER_TRUNK: usize = 100;

/// One account allowed to use the API: Basic auth user `api_key`, password `api_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAccount {
    pub account_sid: String,
    pub api_key: String,
    pub api_token: String,
}

/// What a successful write changed: the rows the SIP side must read again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A trunk or its sub-resources (numbers, IPs, destinations, credentials, settings).
    Trunk(String),
    /// A flow, by id.
    Flow(String),
    /// Anything: read everything again.
    All,
}

/// What [`ApiState::on_change`] returns.
pub type ChangeFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    /// With none, every request is refused (401 / 1010).
    pub accounts: Vec<ApiAccount>,
    /// Awaited after every successful write, with what it changed, and before the response,
    /// so the SIP snapshot is refreshed by the time the client hears back (a change is live
    /// for its next call).
    pub on_change: Arc<dyn Fn(Change) -> ChangeFuture + Send + Sync>,
}

impl ApiState {
    /// A state whose `on_change` does nothing.
    pub fn new(store: Arc<Store>, accounts: Vec<ApiAccount>) -> Self {
        ApiState {
            store,
            accounts,
            on_change: Arc::new(|_| Box::pin(async {})),
        }
    }

    async fn changed(&self, change: Change) {
        (self.on_change)(change).await;
    }

    async fn trunk_changed(&self, sid: &str) {
        self.changed(Change::Trunk(sid.to_string())).await;
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("accounts", &self.accounts.len())
            .finish_non_exhaustive()
    }
}

type St = State<Arc<ApiState>>;
type Params = Path<HashMap<String, String>>;
type QueryMap = Query<HashMap<String, String>>;

/// The API's routes, ready to serve (`axum::serve(listener, router(state))`).
pub fn router(state: ApiState) -> Router {
    let mut r: Router<Arc<ApiState>> = Router::new()
        .route(
            &format!("{PREFIX}/trunks"),
            post(create_trunk)
                .get(list_trunks)
                .delete(delete_trunk_query),
        )
        .route(
            &format!("{PREFIX}/trunks/{{trunk_sid}}"),
            get(get_trunk).put(update_trunk).delete(delete_trunk_path),
        )
        .route(
            &format!("{PREFIX}/trunks/{{trunk_sid}}/credentials"),
            post(create_credential).get(list_credentials),
        )
        .route(
            &format!("{PREFIX}/credentials"),
            delete(delete_credential_query),
        )
        .route(
            &format!("{PREFIX}/credentials/{{id}}"),
            get(get_credential)
                .put(update_credential)
                .delete(delete_credential_path),
        )
        .route(
            &format!("{PREFIX}/trunks/{{trunk_sid}}/settings"),
            post(set_settings).get(list_settings),
        )
        .route(
            &format!("{PREFIX}/flows"),
            post(create_flow).get(list_flows),
        )
        .route(
            &format!("{PREFIX}/flows/{{flow_id}}"),
            get(get_flow).put(update_flow).delete(delete_flow),
        );
    for name in ["phone-numbers", "phone_numbers"] {
        r = r
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}"),
                post(create_number).get(list_numbers),
            )
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}/{{id}}"),
                get(get_number).put(update_number).delete(delete_number),
            );
    }
    for name in ["whitelisted-ips", "whitelisted_ips"] {
        r = r
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}"),
                post(create_ip).get(list_ips),
            )
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}/{{id}}"),
                delete(delete_ip),
            );
    }
    for name in ["destination-uris", "destination_uris"] {
        r = r
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}"),
                post(create_destinations).get(list_destinations),
            )
            .route(
                &format!("{PREFIX}/trunks/{{trunk_sid}}/{name}/{{id}}"),
                delete(delete_destination),
            );
    }
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Extractor rejections (a body over the limit, a path that is not UTF-8, …) are
        // axum's plain-text answers; this puts them in the envelope like every other answer.
        .layer(axum::middleware::map_response(envelope_bare_answers))
        .layer(axum::middleware::from_fn(refuse_long_uri))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(state))
}

const PREFIX: &str = "/v2/accounts/{account_sid}";

// ---------------------------------------------------------------------------------------------
// Errors and envelopes

/// An API failure: HTTP status, Exotel error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub http: StatusCode,
    pub code: u16,
    pub message: String,
}

impl ApiError {
    fn new(http: StatusCode, code: u16, message: impl Into<String>) -> Self {
        ApiError {
            http,
            code,
            message: message.into(),
        }
    }
    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 1000, format!("{what} not found"))
    }
    fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("Mandatory parameter missing: {param}"),
        )
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 1002, message)
    }
    fn trunk_forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            1003,
            "Trunk not found for this account",
        )
    }
    fn unparseable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 1007, message)
    }
    fn duplicate(what: &str) -> Self {
        Self::new(StatusCode::CONFLICT, 1008, format!("{what} already exists"))
    }
    fn auth() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 1010, "Authentication failed")
    }
    fn content_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            1011,
            "Content-Type must be application/json",
        )
    }
    fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, 500, "Internal error")
    }
    fn method_not_allowed(method: &Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            1005,
            format!("Method {method} is not allowed on this path"),
        )
    }
    fn too_many_items(what: &str, max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            1013,
            format!("At most {max} {what} per request"),
        )
    }
    fn trunk_full(what: &str, max: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            1012,
            format!("A trunk may have at most {max} {what}"),
        )
    }
    /// An answer axum made without a handler (an extractor's rejection), by its status.
    fn from_bare(http: StatusCode, text: &str) -> Self {
        let text = text.trim();
        match http {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                http,
                1013,
                format!("Request body larger than {MAX_BODY_BYTES} bytes"),
            ),
            StatusCode::URI_TOO_LONG => Self::uri_too_long(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::content_type(),
            s if s.is_client_error() => Self::new(
                s,
                1002,
                if text.is_empty() {
                    "Invalid request"
                } else {
                    text
                },
            ),
            _ => Self::internal(),
        }
    }
    fn uri_too_long() -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            1014,
            format!("Request URI longer than {MAX_URI_BYTES} bytes"),
        )
    }

    fn description(&self) -> &'static str {
        match self.code {
            1000 => "The requested resource was not found",
            1001 => "A mandatory parameter is missing",
            1002 => "A parameter is invalid",
            1003 => "The trunk does not exist or belongs to another account",
            1007 => "The request body could not be parsed",
            1008 => "The resource already exists",
            1010 => "Authentication failed: use the API key and token of this account",
            1011 => "Unsupported content type",
            1005 => "The method is not allowed on this path",
            1012 => "A per-trunk limit would be exceeded",
            1013 => "The request is too large",
            1014 => "The request URI is too long",
            _ => "Internal error",
        }
    }

    /// Maps a store error; `what` names the resource for duplicates.
    fn store(e: StoreError, what: &str) -> Self {
        match e {
            StoreError::Duplicate(_) => Self::duplicate(what),
            StoreError::NotFound => Self::trunk_forbidden(),
            StoreError::UnknownFlow(id) => Self::invalid(format!("flow_id {id:?} not found")),
            StoreError::FlowInUse(n) => {
                Self::invalid(format!("Flow is used by {n} phone number(s)"))
            }
            other => {
                tracing::error!(error = %other, "control store failed");
                Self::internal()
            }
        }
    }
}

fn item_ok(http: StatusCode, data: Value) -> Value {
    json!({"code": http.as_u16(), "error_data": null, "status": "success", "data": data})
}

fn item_err(e: &ApiError) -> Value {
    json!({
        "code": e.http.as_u16(),
        "error_data": {"code": e.code, "message": e.message, "description": e.description()},
        "status": "failure",
        "data": null,
    })
}

/// A successful handler's output.
enum Out {
    One(Value),
    List { items: Vec<Value>, metadata: Value },
    Multi(Vec<Result<Value, ApiError>>),
}

/// The request facts every handler needs; extracting it authenticates the request.
struct Ctx {
    method: Method,
    path: String,
    account_sid: String,
    content_type: Option<String>,
}

impl Ctx {
    fn envelope(
        method: &Method,
        http: StatusCode,
        response: Value,
        metadata: Option<Value>,
    ) -> Response {
        let mut body = json!({
            "request_id": new_id(""),
            "method": method.as_str(),
            "http_code": http.as_u16(),
        });
        if let Some(m) = metadata {
            body["metadata"] = m;
        }
        body["response"] = response;
        (http, Json(body)).into_response()
    }

    fn error(method: &Method, e: &ApiError) -> Response {
        Self::envelope(method, e.http, item_err(e), None)
    }

    fn reply(&self, result: Result<Out, ApiError>) -> Response {
        match result {
            Err(e) => Self::error(&self.method, &e),
            Ok(Out::One(data)) => Self::envelope(
                &self.method,
                StatusCode::OK,
                item_ok(StatusCode::OK, data),
                None,
            ),
            Ok(Out::List { items, metadata }) => {
                let items = items
                    .into_iter()
                    .map(|d| item_ok(StatusCode::OK, d))
                    .collect();
                Self::envelope(
                    &self.method,
                    StatusCode::OK,
                    Value::Array(items),
                    Some(metadata),
                )
            }
            Ok(Out::Multi(results)) => {
                let total = results.len();
                let success = results.iter().filter(|r| r.is_ok()).count();
                let http = if success == total {
                    StatusCode::OK
                } else if success == 0 {
                    results
                        .iter()
                        .find_map(|r| r.as_ref().err().map(|e| e.http))
                        .unwrap_or(StatusCode::BAD_REQUEST)
                } else {
                    StatusCode::MULTI_STATUS
                };
                let items = results
                    .iter()
                    .map(|r| match r {
                        Ok(d) => item_ok(StatusCode::OK, d.clone()),
                        Err(e) => item_err(e),
                    })
                    .collect();
                Self::envelope(
                    &self.method,
                    http,
                    Value::Array(items),
                    Some(json!({"total": total, "success": success, "failed": total - success})),
                )
            }
        }
    }

    /// The request body as a JSON object: 415 / 1011 without a JSON content type, 400 / 1007
    /// if it does not parse as an object.
    fn json(&self, body: &Bytes) -> Result<Map<String, Value>, ApiError> {
        let is_json = self.content_type.as_deref().is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !is_json {
            return Err(ApiError::content_type());
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(ApiError::unparseable("Request body must be a JSON object")),
            Err(e) => Err(ApiError::unparseable(format!(
                "Request body is not valid JSON: {e}"
            ))),
        }
    }
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authenticate(state: &ApiState, parts: &Parts, account_sid: &str) -> bool {
    let Some(value) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    let (key, token) = (&decoded[..colon], &decoded[colon + 1..]);
    // Check every account (no early exit) so timing says nothing about which matched.
    state.accounts.iter().fold(false, |found, acc| {
        let ok = constant_time_eq(acc.api_key.as_bytes(), key)
            & constant_time_eq(acc.api_token.as_bytes(), token)
            & constant_time_eq(acc.account_sid.as_bytes(), account_sid.as_bytes());
        found | ok
    })
}

impl FromRequestParts<Arc<ApiState>> for Ctx {
    type Rejection = Response;

    fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        let result = Ctx::from_parts(parts, state)
            .ok_or_else(|| Ctx::error(&parts.method, &ApiError::auth()));
        std::future::ready(result)
    }
}

impl Ctx {
    /// The request's context if it authenticates for the path's account.
    fn from_parts(parts: &Parts, state: &ApiState) -> Option<Ctx> {
        let path = parts.uri.path().to_string();
        let mut segments = path.split('/');
        let account_sid = match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some(""), Some("v2"), Some("accounts"), Some(sid)) if !sid.is_empty() => {
                sid.to_string()
            }
            _ => return None,
        };
        if !authenticate(state, parts, &account_sid) {
            return None;
        }
        Some(Ctx {
            method: parts.method.clone(),
            path,
            account_sid,
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters

fn param<'a>(p: &'a HashMap<String, String>, name: &str) -> &'a str {
    p.get(name).map(String::as_str).unwrap_or_default()
}

/// A mandatory string: missing, null or empty → 1001; not a string → 1002.
fn req_str(obj: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(ApiError::missing(key)),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::missing(key)),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(ApiError::invalid(format!("{key} must be a string"))),
    }
}

/// An optional string: missing or null → None; not a string → 1002.
fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ApiError::invalid(format!("{key} must be a string"))),
    }
}

/// An optional boolean (a JSON boolean, or "true"/"false" as Exotel's strings).
fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::invalid(format!("{key} must be true or false"))),
    }
}

/// An optional non-negative integer (a JSON number or a numeric string), at most `max`.
fn opt_int(obj: &Map<String, Value>, key: &str, max: i64) -> Result<Option<i64>, ApiError> {
    let bad = || ApiError::invalid(format!("{key} must be an integer between 0 and {max}"));
    let n = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(bad)?,
        Some(Value::String(s)) => s.trim().parse::<i64>().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
    };
    if (0..=max).contains(&n) {
        Ok(Some(n))
    } else {
        Err(bad())
    }
}

fn page(q: &HashMap<String, String>) -> Result<Page, ApiError> {
    let limit = match q.get("page_size") {
        None => DEFAULT_PAGE_SIZE,
        Some(s) => s
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!("page_size must be between 1 and {MAX_PAGE_SIZE}"))
            })?,
    };
    let offset = match q.get("offset") {
        None => 0,
        Some(s) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| ApiError::invalid("offset must be a non-negative integer"))?,
    };
    Ok(Page { limit, offset })
}

/// One more than the page, to learn whether a next page exists.
fn probe(p: Page) -> Page {
    Page {
        limit: p.limit + 1,
        offset: p.offset,
    }
}

/// The list envelope's output from up to `page.limit + 1` rows.
fn list_out<T>(
    ctx: &Ctx,
    p: Page,
    mut rows: Vec<T>,
    extra_query: &str,
    to_json: impl Fn(&T) -> Value,
) -> Out {
    let has_more = rows.len() > p.limit as usize;
    rows.truncate(p.limit as usize);
    let uri = |offset: u32| {
        format!(
            "{}?page_size={}&offset={offset}{extra_query}",
            ctx.path, p.limit
        )
    };
    let prev = (p.offset > 0).then(|| uri(p.offset.saturating_sub(p.limit)));
    let next = has_more.then(|| uri(p.offset + p.limit));
    Out::List {
        items: rows.iter().map(to_json).collect(),
        metadata: json!({
            "page_size": p.limit,
            "first_page_uri": uri(0),
            "prev_page_uri": prev,
            "next_page_uri": next,
        }),
    }
}

fn check_trunk_name(name: &str) -> Result<(), ApiError> {
    if name.len() <= 16
        && !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "trunk_name must be 1 to 16 letters, digits or underscores",
        ))
    }
}

fn check_nso_code(code: &str) -> Result<(), ApiError> {
    if code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "nso_code must be letters, digits, '-' or '_' (e.g. ANY-ANY)",
        ))
    }
}

fn is_hostname(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_domain(domain: &str) -> Result<(), ApiError> {
    if is_hostname(domain) {
        Ok(())
    } else {
        Err(ApiError::invalid("domain_name must be a DNS name"))
    }
}

fn check_number(number: &str) -> Result<(), ApiError> {
    check_e164(number).map_err(|_| {
        ApiError::invalid("phone_number must be E.164 with a leading + (e.g. +919876543210)")
    })
}

fn choice(
    obj: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match opt_str(obj, key)? {
        None => Ok(None),
        Some(v) if allowed.contains(&v.as_str()) => Ok(Some(v)),
        Some(_) => Err(ApiError::invalid(format!(
            "{key} must be one of {}",
            allowed.join(", ")
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON views

fn trunk_json(t: &TrunkRecord) -> Value {
    let base = format!("/v2/accounts/{}/trunks/{}", t.account_sid, t.sid);
    json!({
        "trunk_sid": t.sid,
        "trunk_name": t.name,
        "status": t.status,
        "domain_name": t.domain_name,
        "nso_code": t.nso_code,
        "auth_type": t.auth_type,
        "registration_enabled": t.registration_enabled,
        "edge_preference": t.edge_preference,
        "secure_trunking": t.secure_trunking,
        "max_concurrent_calls": t.max_concurrent_calls,
        "calls_per_minute": t.calls_per_minute,
        "date_created": t.date_created,
        "date_updated": t.date_updated,
        "destination_uris": format!("{base}/destination-uris"),
        "whitelisted_ips": format!("{base}/whitelisted-ips"),
        "credentials": format!("{base}/credentials"),
        "phone_numbers": format!("{base}/phone-numbers"),
    })
}

fn number_json(n: &NumberRecord) -> Value {
    json!({
        "id": n.id,
        "trunk_sid": n.trunk_sid,
        "phone_number": n.number,
        "mode": n.mode,
        "flow_id": n.flow_id,
        "date_created": n.date_created,
        "date_updated": n.date_updated,
    })
}

fn ip_json(i: &IpRecord) -> Value {
    json!({
        "id": i.id,
        "trunk_sid": i.trunk_sid,
        "ip": i.ip,
        "mask": i.mask,
        "date_created": i.date_created,
    })
}

fn destination_json(d: &DestinationRecord) -> Value {
    json!({
        "id": d.id,
        "trunk_sid": d.trunk_sid,
        "destination": d.uri,
        "priority": d.priority,
        "weight": d.weight,
        "date_created": d.date_created,
    })
}

/// Never includes the password.
fn credential_json(c: &CredentialRecord) -> Value {
    json!({
        "id": c.id,
        "trunk_sid": c.trunk_sid,
        "user_name": c.user_name,
        "friendly_name": c.friendly_name,
        "date_created": c.date_created,
        "date_updated": c.date_updated,
    })
}

fn setting_json(s: &SettingRecord) -> Value {
    json!({
        "trunk_sid": s.trunk_sid,
        "name": s.name,
        "value": s.value,
        "date_updated": s.date_updated,
    })
}

fn flow_json(f: &FlowRecord) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "stream_url": f.stream_url,
        "protocol": f.protocol,
        "direction": f.direction,
        "custom_parameters": f.custom_parameters,
        "on_stream_end": f.on_stream_end,
        "agent_assist": f.agent_assist,
        "fallback": f.fallback,
        "date_created": f.date_created,
        "date_updated": f.date_updated,
        "uri": format!("/v2/accounts/{}/flows/{}", f.account_sid, f.id),
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn not_found(ctx: Ctx) -> Response {
    ctx.reply(Err(ApiError::not_found("Resource")))
}

/// Auth first, as everywhere: an unauthenticated request learns nothing about the paths.
async fn method_not_allowed(ctx: Ctx) -> Response {
    let e = ApiError::method_not_allowed(&ctx.method);
    ctx.reply(Err(e))
}

/// Refuses an over-long request target before routing or auth look at it.
async fn refuse_long_uri(request: Request, next: Next) -> Response {
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URI_BYTES {
        return Ctx::error(request.method(), &ApiError::uri_too_long());
    }
    next.run(request).await
}

/// Every answer is an envelope (JSON); any other is an extractor's rejection and is rewrapped.
async fn envelope_bare_answers(method: Method, response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let http = response.status();
    // Rejection texts are short; the cap only guards against a surprise.
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let e = ApiError::from_bare(http, &String::from_utf8_lossy(&text));
    Ctx::error(&method, &e)
}

/// Enough rows to tell whether a per-trunk limit of `max` is reached, and no more.
fn room_probe(max: usize) -> Page {
    Page {
        limit: u32::try_from(max).unwrap_or(u32::MAX),
        offset: 0,
    }
}

/// The trunk if it is the account's, else 403 / 1003.
async fn own_trunk(st: &ApiState, ctx: &Ctx, sid: &str) -> Result<TrunkRecord, ApiError> {
    st.store
        .trunk(&ctx.account_sid, sid)
        .await
        .map_err(|e| ApiError::store(e, "Trunk"))?
        .ok_or_else(ApiError::trunk_forbidden)
}

fn trunk_limits(obj: &Map<String, Value>) -> Result<(Option<Option<u32>>, Option<u32>), ApiError> {
    let max_concurrent = if obj.contains_key("max_concurrent_calls") {
        Some(opt_int(obj, "max_concurrent_calls", i64::from(u32::MAX))?.map(|n| n as u32))
    } else {
        None
    };
    let cpm = opt_int(obj, "calls_per_minute", i64::from(u32::MAX))?.map(|n| n as u32);
    Ok((max_concurrent, cpm))
}

async fn create_trunk(State(st): St, ctx: Ctx, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let name = req_str(&obj, "trunk_name")?;
        let nso_code = req_str(&obj, "nso_code")?;
        let domain_name = req_str(&obj, "domain_name")?;
        check_trunk_name(&name)?;
        check_nso_code(&nso_code)?;
        check_domain(&domain_name)?;
        let mut new = NewTrunk::new(name, nso_code, domain_name);
        if let Some(v) = choice(&obj, "secure_trunking", &["enabled", "disabled"])? {
            new.secure_trunking = v;
        }
        if let Some(v) = opt_bool(&obj, "registration_enabled")? {
            new.registration_enabled = v;
        }
        let (max_concurrent, cpm) = trunk_limits(&obj)?;
        new.max_concurrent_calls = max_concurrent.flatten();
        if let Some(cpm) = cpm {
            new.calls_per_minute = cpm;
        }
        let rec = st
            .store
            .create_trunk(&ctx.account_sid, &new)
            .await
            .map_err(|e| ApiError::store(e, "Trunk with this trunk_name"))?;
        st.trunk_changed(&rec.sid).await;
        Ok(Out::One(trunk_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn list_trunks(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = async {
        let p = page(&q)?;
        if let Some(sid) = q.get("trunk_sid").filter(|s| !s.is_empty()) {
            let rows: Vec<TrunkRecord> = st
                .store
                .trunk(&ctx.account_sid, sid)
                .await
                .map_err(|e| ApiError::store(e, "Trunk"))?
                .into_iter()
                .filter(|_| p.offset == 0)
                .collect();
            return Ok(list_out(
                &ctx,
                p,
                rows,
                &format!("&trunk_sid={sid}"),
                trunk_json,
            ));
        }
        let rows = st
            .store
            .list_trunks(&ctx.account_sid, probe(p))
            .await
            .map_err(|e| ApiError::store(e, "Trunk"))?;
        Ok(list_out(&ctx, p, rows, "", trunk_json))
    }
    .await;
    ctx.reply(result)
}

async fn get_trunk(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = own_trunk(&st, &ctx, param(&p, "trunk_sid"))
        .await
        .map(|t| Out::One(trunk_json(&t)));
    ctx.reply(result)
}

async fn update_trunk(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let name = opt_str(&obj, "trunk_name")?;
        if let Some(n) = &name {
            check_trunk_name(n)?;
        }
        let nso_code = opt_str(&obj, "nso_code")?;
        if let Some(c) = &nso_code {
            check_nso_code(c)?;
        }
        let domain_name = opt_str(&obj, "domain_name")?;
        if let Some(d) = &domain_name {
            check_domain(d)?;
        }
        let (max_concurrent_calls, calls_per_minute) = trunk_limits(&obj)?;
        let update = TrunkUpdate {
            name,
            nso_code,
            domain_name,
            status: choice(&obj, "status", &["active", "inactive"])?,
            secure_trunking: choice(&obj, "secure_trunking", &["enabled", "disabled"])?,
            registration_enabled: opt_bool(&obj, "registration_enabled")?,
            max_concurrent_calls,
            calls_per_minute,
        };
        let rec = st
            .store
            .update_trunk(&ctx.account_sid, param(&p, "trunk_sid"), &update)
            .await
            .map_err(|e| ApiError::store(e, "Trunk with this trunk_name"))?
            .ok_or_else(ApiError::trunk_forbidden)?;
        st.trunk_changed(&rec.sid).await;
        Ok(Out::One(trunk_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn delete_trunk(st: &ApiState, ctx: &Ctx, sid: Option<&str>) -> Result<Out, ApiError> {
    let sid = sid
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::missing("trunk_sid"))?;
    let rec = st
        .store
        .delete_trunk(&ctx.account_sid, sid)
        .await
        .map_err(|e| ApiError::store(e, "Trunk"))?
        .ok_or_else(ApiError::trunk_forbidden)?;
    st.trunk_changed(&rec.sid).await;
    Ok(Out::One(trunk_json(&rec)))
}

async fn delete_trunk_query(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = delete_trunk(&st, &ctx, q.get("trunk_sid").map(String::as_str)).await;
    ctx.reply(result)
}

async fn delete_trunk_path(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = delete_trunk(&st, &ctx, p.get("trunk_sid").map(String::as_str)).await;
    ctx.reply(result)
}

// --- phone numbers ---

/// `mode` (null or "pstn" → PSTN; "flow" needs `flow_id`).
fn number_mode(obj: &Map<String, Value>) -> Result<Mode, ApiError> {
    match opt_str(obj, "mode")?.as_deref() {
        None | Some("") | Some("pstn") => Ok(Mode::Pstn),
        Some("flow") => Ok(Mode::Flow {
            flow_id: req_str(obj, "flow_id")?,
        }),
        Some(_) => Err(ApiError::invalid("mode must be pstn or flow")),
    }
}

async fn create_number(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let number = req_str(&obj, "phone_number")?;
        check_number(&number)?;
        let mode = number_mode(&obj)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .add_number(&trunk.sid, &number, &mode)
            .await
            .map_err(|e| ApiError::store(e, "Phone number"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(number_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn list_numbers(State(st): St, ctx: Ctx, Path(p): Params, Query(q): QueryMap) -> Response {
    let result = async {
        let pg = page(&q)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rows = st
            .store
            .list_numbers(&trunk.sid, probe(pg))
            .await
            .map_err(|e| ApiError::store(e, "Phone number"))?;
        Ok(list_out(&ctx, pg, rows, "", number_json))
    }
    .await;
    ctx.reply(result)
}

async fn get_number(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .number(&trunk.sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Phone number"))?
            .ok_or_else(|| ApiError::not_found("Phone number"))?;
        Ok(Out::One(number_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn update_number(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let number = opt_str(&obj, "phone_number")?;
        if let Some(n) = &number {
            check_number(n)?;
        }
        let mode = if obj.contains_key("mode") {
            Some(number_mode(&obj)?)
        } else {
            None
        };
        let flow_id = opt_str(&obj, "flow_id")?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let current = st
            .store
            .number(&trunk.sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Phone number"))?
            .ok_or_else(|| ApiError::not_found("Phone number"))?;
        // Absent `mode` keeps the current one (a lone `flow_id` re-points a flow number).
        let mode = match (mode, current.to_mode(), flow_id) {
            (Some(m), _, _) => m,
            (None, Mode::Flow { .. }, Some(flow_id)) => Mode::Flow { flow_id },
            (None, m, _) => m,
        };
        let number = number.unwrap_or(current.number);
        let rec = st
            .store
            .update_number(&trunk.sid, &current.id, &number, &mode)
            .await
            .map_err(|e| ApiError::store(e, "Phone number"))?
            .ok_or_else(|| ApiError::not_found("Phone number"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(number_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn delete_number(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .delete_number(&trunk.sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Phone number"))?
            .ok_or_else(|| ApiError::not_found("Phone number"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(number_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

// --- whitelisted IPs ---

async fn create_ip(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let ip = req_str(&obj, "ip")?;
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| ApiError::invalid("ip must be an IPv4 or IPv6 address"))?;
        let default_mask = if addr.is_ipv4() { 32 } else { 128 };
        let mask = opt_int(&obj, "mask", 128)?.unwrap_or(default_mask);
        let net = IpNet::new(addr, mask as u8).map_err(|_| {
            let (min, max) = if addr.is_ipv4() {
                IpNet::V4_PREFIXES
            } else {
                IpNet::V6_PREFIXES
            };
            ApiError::invalid(format!("mask must be between {min} and {max}"))
        })?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let existing = st
            .store
            .list_ips(&trunk.sid, room_probe(MAX_IPS_PER_TRUNK))
            .await
            .map_err(|e| ApiError::store(e, "Whitelisted IP"))?
            .len();
        if existing >= MAX_IPS_PER_TRUNK {
            return Err(ApiError::trunk_full("whitelisted IPs", MAX_IPS_PER_TRUNK));
        }
        let rec = st
            .store
            .add_ip(&trunk.sid, net)
            .await
            .map_err(|e| ApiError::store(e, "Whitelisted IP"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(ip_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn list_ips(State(st): St, ctx: Ctx, Path(p): Params, Query(q): QueryMap) -> Response {
    let result = async {
        let pg = page(&q)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rows = st
            .store
            .list_ips(&trunk.sid, probe(pg))
            .await
            .map_err(|e| ApiError::store(e, "Whitelisted IP"))?;
        Ok(list_out(&ctx, pg, rows, "", ip_json))
    }
    .await;
    ctx.reply(result)
}

async fn delete_ip(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .delete_ip(&trunk.sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Whitelisted IP"))?
            .ok_or_else(|| ApiError::not_found("Whitelisted IP"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(ip_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

// --- destination URIs ---

/// A destination as stored (`sip:` or `sips:` prefix) and its host if that is an IP address.
///
/// Accepts `host`, `host:port`, `[v6]:port`, `user@host`, each with `;params` (a `transport`
/// must be udp, tcp or tls) and optionally already prefixed with `sip:` / `sips:`.
pub fn parse_destination(input: &str) -> Result<(String, Option<IpAddr>), String> {
    let input = input.trim();
    if input.is_empty() || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("destination must be host[:port][;params] without spaces".into());
    }
    let lower = input.to_ascii_lowercase();
    let (scheme, rest) = if lower.starts_with("sips:") {
        ("sips:", &input[5..])
    } else if lower.starts_with("sip:") {
        ("sip:", &input[4..])
    } else {
        ("sip:", input)
    };
    let (hostport, params) = match rest.split_once(';') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("unterminated IPv6 address in destination")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("bad port in destination")?),
        };
        (h, port)
    } else if hostport.matches(':').count() > 1 {
        (hostport, None) // a bare IPv6 address
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err("destination port must be 1..65535".into());
        }
    }
    let ip: Option<IpAddr> = host.parse().ok();
    if ip.is_none() && !is_hostname(host) {
        return Err("destination host must be an IP address or a DNS name".into());
    }
    for p in params.into_iter().flat_map(|p| p.split(';')) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        if k.is_empty() {
            return Err("empty URI parameter in destination".into());
        }
        if k.eq_ignore_ascii_case("transport")
            && !["udp", "tcp", "tls"].contains(&v.to_ascii_lowercase().as_str())
        {
            return Err("transport must be udp, tcp or tls".into());
        }
    }
    Ok((format!("{scheme}{rest}"), ip))
}

async fn create_destinations(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let items = match obj.get("destinations") {
            None | Some(Value::Null) => return Err(ApiError::missing("destinations")),
            Some(Value::Array(a)) if !a.is_empty() => a.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "destinations must be a non-empty array of {\"destination\": …}",
                ))
            }
        };
        if items.len() > MAX_ITEMS_PER_REQUEST {
            return Err(ApiError::too_many_items(
                "destinations",
                MAX_ITEMS_PER_REQUEST,
            ));
        }
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let existing = st
            .store
            .list_destinations(&trunk.sid, room_probe(MAX_DESTINATIONS_PER_TRUNK))
            .await
            .map_err(|e| ApiError::store(e, "Destination"))?
            .len();
        if existing + items.len() > MAX_DESTINATIONS_PER_TRUNK {
            return Err(ApiError::trunk_full(
                "destination URIs",
                MAX_DESTINATIONS_PER_TRUNK,
            ));
        }
        let whitelist: Vec<IpNet> = st
            .store
            .list_ips(&trunk.sid, Page::ALL)
            .await
            .map_err(|e| ApiError::store(e, "Destination"))?
            .iter()
            .filter_map(IpRecord::to_net)
            .collect();
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            let one = async {
                let Value::Object(item) = item else {
                    return Err(ApiError::invalid("each destination must be an object"));
                };
                let dest = req_str(item, "destination")?;
                let (uri, ip) = parse_destination(&dest).map_err(ApiError::invalid)?;
                if let Some(ip) = ip {
                    if !whitelist.iter().any(|net| net.contains(ip)) {
                        return Err(ApiError::invalid("Destination not whitelisted"));
                    }
                }
                let priority = opt_int(item, "priority", 65_535)?;
                let weight = opt_int(item, "weight", 65_535)?;
                let rec = st
                    .store
                    .add_destination(&trunk.sid, &uri, priority, weight)
                    .await
                    .map_err(|e| ApiError::store(e, "Destination"))?;
                Ok(destination_json(&rec))
            }
            .await;
            results.push(one);
        }
        if results.iter().any(Result::is_ok) {
            st.trunk_changed(&trunk.sid).await;
        }
        Ok(Out::Multi(results))
    }
    .await;
    ctx.reply(result)
}

async fn list_destinations(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    Query(q): QueryMap,
) -> Response {
    let result = async {
        let pg = page(&q)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rows = st
            .store
            .list_destinations(&trunk.sid, probe(pg))
            .await
            .map_err(|e| ApiError::store(e, "Destination"))?;
        Ok(list_out(&ctx, pg, rows, "", destination_json))
    }
    .await;
    ctx.reply(result)
}

async fn delete_destination(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .delete_destination(&trunk.sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Destination"))?
            .ok_or_else(|| ApiError::not_found("Destination"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(destination_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

// --- credentials ---

fn check_user_name(user: &str) -> Result<(), ApiError> {
    if user.chars().count() <= 64
        && user
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != ':')
    {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "user_name must be at most 64 characters without spaces or ':'",
        ))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() <= 128 && !password.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::invalid("password must be at most 128 characters"))
    }
}

fn check_friendly_name(name: &str) -> Result<(), ApiError> {
    if name.chars().count() <= 32 {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "friendly_name must be at most 32 characters",
        ))
    }
}

async fn create_credential(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let user_name = req_str(&obj, "user_name")?;
        let password = match obj.get("password") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(ApiError::missing("password"))
            }
            Some(_) => return Err(ApiError::invalid("password must be a string")),
        };
        let friendly_name = opt_str(&obj, "friendly_name")?;
        check_user_name(&user_name)?;
        check_password(&password)?;
        if let Some(f) = &friendly_name {
            check_friendly_name(f)?;
        }
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rec = st
            .store
            .add_credential(
                &trunk.sid,
                &NewCredential {
                    user_name,
                    password,
                    friendly_name,
                },
            )
            .await
            .map_err(|e| ApiError::store(e, "Credential with this user_name"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(credential_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn list_credentials(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    Query(q): QueryMap,
) -> Response {
    let result = async {
        let pg = page(&q)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rows = st
            .store
            .list_credentials(&trunk.sid, probe(pg))
            .await
            .map_err(|e| ApiError::store(e, "Credential"))?;
        Ok(list_out(&ctx, pg, rows, "", credential_json))
    }
    .await;
    ctx.reply(result)
}

async fn get_credential(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let rec = st
            .store
            .credential(&ctx.account_sid, param(&p, "id"))
            .await
            .map_err(|e| ApiError::store(e, "Credential"))?
            .ok_or_else(|| ApiError::not_found("Credential"))?;
        Ok(Out::One(credential_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn update_credential(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let user_name = opt_str(&obj, "user_name")?;
        if let Some(u) = &user_name {
            if u.is_empty() {
                return Err(ApiError::invalid("user_name must not be empty"));
            }
            check_user_name(u)?;
        }
        let password = match obj.get("password") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => {
                check_password(s)?;
                Some(s.clone())
            }
            Some(_) => return Err(ApiError::invalid("password must be a non-empty string")),
        };
        let friendly_name = if obj.contains_key("friendly_name") {
            let f = opt_str(&obj, "friendly_name")?;
            if let Some(f) = &f {
                check_friendly_name(f)?;
            }
            Some(f)
        } else {
            None
        };
        let rec = st
            .store
            .update_credential(
                &ctx.account_sid,
                param(&p, "id"),
                &CredentialUpdate {
                    user_name,
                    password,
                    friendly_name,
                },
            )
            .await
            .map_err(|e| ApiError::store(e, "Credential with this user_name"))?
            .ok_or_else(|| ApiError::not_found("Credential"))?;
        st.trunk_changed(&rec.trunk_sid).await;
        Ok(Out::One(credential_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn delete_credential(st: &ApiState, ctx: &Ctx, id: Option<&str>) -> Result<Out, ApiError> {
    let id = id
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::missing("id"))?;
    let rec = st
        .store
        .delete_credential(&ctx.account_sid, id)
        .await
        .map_err(|e| ApiError::store(e, "Credential"))?
        .ok_or_else(|| ApiError::not_found("Credential"))?;
    st.trunk_changed(&rec.trunk_sid).await;
    Ok(Out::One(credential_json(&rec)))
}

async fn delete_credential_query(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = delete_credential(&st, &ctx, q.get("id").map(String::as_str)).await;
    ctx.reply(result)
}

async fn delete_credential_path(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = delete_credential(&st, &ctx, p.get("id").map(String::as_str)).await;
    ctx.reply(result)
}

// --- settings ---

async fn set_settings(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let items = match obj.get("settings") {
            None | Some(Value::Null) => return Err(ApiError::missing("settings")),
            Some(Value::Array(a)) if !a.is_empty() => a.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "settings must be a non-empty array of {\"name\", \"value\"}",
                ))
            }
        };
        if items.len() > MAX_ITEMS_PER_REQUEST {
            return Err(ApiError::too_many_items("settings", MAX_ITEMS_PER_REQUEST));
        }
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            let one = async {
                let Value::Object(item) = item else {
                    return Err(ApiError::invalid("each setting must be an object"));
                };
                let name = req_str(item, "name")?;
                if name.len() > 64
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(ApiError::invalid(
                        "setting name must be lowercase letters, digits or '_'",
                    ));
                }
                let value = req_str(item, "value")?;
                if value.chars().count() > 256 {
                    return Err(ApiError::invalid(
                        "setting value must be at most 256 characters",
                    ));
                }
                if name == "trunk_external_alias" {
                    check_e164(&value).map_err(|_| {
                        ApiError::invalid("trunk_external_alias must be E.164 with a leading +")
                    })?;
                }
                let rec = st
                    .store
                    .set_setting(&trunk.sid, &name, &value)
                    .await
                    .map_err(|e| ApiError::store(e, "Setting"))?;
                Ok(setting_json(&rec))
            }
            .await;
            results.push(one);
        }
        if results.iter().any(Result::is_ok) {
            st.trunk_changed(&trunk.sid).await;
        }
        Ok(Out::Multi(results))
    }
    .await;
    ctx.reply(result)
}

async fn list_settings(State(st): St, ctx: Ctx, Path(p): Params, Query(q): QueryMap) -> Response {
    let result = async {
        let pg = page(&q)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let rows = st
            .store
            .list_settings(&trunk.sid, probe(pg))
            .await
            .map_err(|e| ApiError::store(e, "Setting"))?;
        Ok(list_out(&ctx, pg, rows, "", setting_json))
    }
    .await;
    ctx.reply(result)
}

// --- flows ---

/// A flow from `obj`, starting from `base` (PUT) or from scratch (POST: `name` and
/// `stream_url` mandatory).
fn flow_from(obj: &Map<String, Value>, base: Option<&FlowRecord>) -> Result<NewFlow, ApiError> {
    let name = match (opt_str(obj, "name")?, base) {
        (Some(n), _) if !n.is_empty() => n,
        (None, Some(b)) => b.name.clone(),
        _ => return Err(ApiError::missing("name")),
    };
    if name.chars().count() > 64 {
        return Err(ApiError::invalid("name must be at most 64 characters"));
    }
    let stream_url = match (opt_str(obj, "stream_url")?, base) {
        (Some(u), _) if !u.is_empty() => u,
        (None, Some(b)) => b.stream_url.clone(),
        _ => return Err(ApiError::missing("stream_url")),
    };
    let lower = stream_url.to_ascii_lowercase();
    let host = lower
        .strip_prefix("wss://")
        .or_else(|| lower.strip_prefix("ws://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    if host.is_none_or(str::is_empty) || stream_url.chars().any(char::is_whitespace) {
        return Err(ApiError::invalid(
            "stream_url must be a ws:// or wss:// URL",
        ));
    }
    let protocol = match opt_str(obj, "protocol")? {
        Some(p) => FlowProtocol::parse(&p)
            .ok_or_else(|| ApiError::invalid("protocol must be exotel or twilio"))?,
        None => base.map_or(FlowProtocol::Exotel, |b| b.protocol),
    };
    let direction = match opt_str(obj, "direction")? {
        Some(d) => FlowDirection::parse(&d).ok_or_else(|| {
            ApiError::invalid("direction must be bidirectional or unidirectional")
        })?,
        None => base.map_or(FlowDirection::Bidirectional, |b| b.direction),
    };
    let custom_parameters = match obj.get("custom_parameters") {
        Some(Value::Object(m)) => m.clone(),
        Some(Value::Null) => Map::new(),
        None => base
            .map(|b| b.custom_parameters.clone())
            .unwrap_or_default(),
        Some(_) => return Err(ApiError::invalid("custom_parameters must be an object")),
    };
    let on_stream_end = match obj.get("on_stream_end") {
        None => base.map_or(OnStreamEnd::Hangup, |b| b.on_stream_end.clone()),
        Some(Value::Null) => OnStreamEnd::Hangup,
        Some(v) => {
            let bad = || {
                ApiError::invalid(
                    "on_stream_end must be {\"action\":\"hangup\"} or \
                     {\"action\":\"connect\",\"destination\":\"sip:…\"} \
                     (or \"trunk:{trunk_sid}\")",
                )
            };
            let end: OnStreamEnd = serde_json::from_value(v.clone()).map_err(|_| bad())?;
            if let OnStreamEnd::Connect { destination } = &end {
                let d = destination.to_ascii_lowercase();
                let rest = ["sip:", "sips:", "trunk:"]
                    .iter()
                    .find_map(|scheme| d.strip_prefix(scheme));
                if rest.is_none_or(str::is_empty) || d.chars().any(char::is_whitespace) {
                    return Err(bad());
                }
            }
            end
        }
    };
    // `null` means the default, as for `on_stream_end`.
    let agent_assist = match obj.get("agent_assist") {
        None => base.is_some_and(|b| b.agent_assist),
        Some(_) => opt_bool(obj, "agent_assist")?.unwrap_or(false),
    };
    let fallback = match obj.get("fallback") {
        None => base.map_or(FlowFallback::Hangup, |b| b.fallback),
        Some(_) => match opt_str(obj, "fallback")? {
            None => FlowFallback::Hangup,
            Some(f) => FlowFallback::parse(&f)
                .ok_or_else(|| ApiError::invalid("fallback must be hangup or bot"))?,
        },
    };
    Ok(NewFlow {
        name,
        stream_url,
        protocol,
        direction,
        custom_parameters,
        on_stream_end,
        agent_assist,
        fallback,
    })
}

/// A `trunk:{trunk_sid}` destination sent in `obj` must name a trunk of this account. Checked
/// only when the request sets `on_stream_end`: a trunk deleted later must not block a PUT of
/// other fields (its calls fail at hand-off instead).
async fn check_destination_trunk(
    st: &ApiState,
    ctx: &Ctx,
    obj: &Map<String, Value>,
    new: &NewFlow,
) -> Result<(), ApiError> {
    let OnStreamEnd::Connect { destination } = &new.on_stream_end else {
        return Ok(());
    };
    if !obj.contains_key("on_stream_end") {
        return Ok(());
    }
    let Some(sid) = destination
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case("trunk:"))
        .map(|_| &destination[6..])
    else {
        return Ok(());
    };
    let found = st
        .store
        .trunk(&ctx.account_sid, sid)
        .await
        .map_err(|e| ApiError::store(e, "Flow"))?;
    match found {
        Some(_) => Ok(()),
        None => Err(ApiError::invalid(format!(
            "on_stream_end destination trunk {sid:?} not found"
        ))),
    }
}

async fn create_flow(State(st): St, ctx: Ctx, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let new = flow_from(&obj, None)?;
        check_destination_trunk(&st, &ctx, &obj, &new).await?;
        let rec = st
            .store
            .create_flow(&ctx.account_sid, &new)
            .await
            .map_err(|e| ApiError::store(e, "Flow"))?;
        st.changed(Change::Flow(rec.id.clone())).await;
        Ok(Out::One(flow_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn list_flows(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = async {
        let pg = page(&q)?;
        let rows = st
            .store
            .list_flows(&ctx.account_sid, probe(pg))
            .await
            .map_err(|e| ApiError::store(e, "Flow"))?;
        Ok(list_out(&ctx, pg, rows, "", flow_json))
    }
    .await;
    ctx.reply(result)
}

async fn get_flow(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let rec = st
            .store
            .flow(&ctx.account_sid, param(&p, "flow_id"))
            .await
            .map_err(|e| ApiError::store(e, "Flow"))?
            .ok_or_else(|| ApiError::not_found("Flow"))?;
        Ok(Out::One(flow_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn update_flow(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
    let result = async {
        let obj = ctx.json(&body)?;
        let id = param(&p, "flow_id");
        let current = st
            .store
            .flow(&ctx.account_sid, id)
            .await
            .map_err(|e| ApiError::store(e, "Flow"))?
            .ok_or_else(|| ApiError::not_found("Flow"))?;
        let new = flow_from(&obj, Some(&current))?;
        check_destination_trunk(&st, &ctx, &obj, &new).await?;
        let rec = st
            .store
            .update_flow(&ctx.account_sid, id, &new)
            .await
            .map_err(|e| ApiError::store(e, "Flow"))?
            .ok_or_else(|| ApiError::not_found("Flow"))?;
        st.changed(Change::Flow(rec.id.clone())).await;
        Ok(Out::One(flow_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

async fn delete_flow(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let rec = st
            .store
            .delete_flow(&ctx.account_sid, param(&p, "flow_id"))
            .await
            .map_err(|e| ApiError::store(e, "Flow"))?
            .ok_or_else(|| ApiError::not_found("Flow"))?;
        st.changed(Change::Flow(rec.id.clone())).await;
        Ok(Out::One(flow_json(&rec)))
    }
    .await;
    ctx.reply(result)
}

#[cfg(test)]
mod tests;
