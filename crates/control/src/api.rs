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

// One module per resource: its JSON view and its handlers.
mod credentials;
mod destinations;
mod flows;
mod ips;
mod numbers;
mod settings;
mod trunks;

use credentials::*;
pub use destinations::parse_destination;
use destinations::*;
use flows::*;
use ips::*;
use numbers::*;
use settings::*;
use trunks::*;

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

/// One page of a trunk's `what` (phone numbers, IPs, …) for the list envelope: the trunk in
/// the path must be the account's; `read` gets up to a page and one more row.
async fn trunk_page<T, F, Fut>(
    st: &ApiState,
    ctx: &Ctx,
    (path, query): (&HashMap<String, String>, &HashMap<String, String>),
    what: &'static str,
    view: fn(&T) -> Value,
    read: F,
) -> Result<Out, ApiError>
where
    F: FnOnce(String, Page) -> Fut,
    Fut: Future<Output = crate::store::StoreResult<Vec<T>>>,
{
    let pg = page(query)?;
    let trunk = own_trunk(st, ctx, param(path, "trunk_sid")).await?;
    let rows = read(trunk.sid, probe(pg))
        .await
        .map_err(|e| ApiError::store(e, what))?;
    Ok(list_out(ctx, pg, rows, "", view))
}

/// One `what` as the API shows it, or 404 when the store found none.
fn one_found<T>(
    what: &'static str,
    view: fn(&T) -> Value,
    found: crate::store::StoreResult<Option<T>>,
) -> Result<Out, ApiError> {
    let rec = found
        .map_err(|e| ApiError::store(e, what))?
        .ok_or_else(|| ApiError::not_found(what))?;
    Ok(Out::One(view(&rec)))
}

#[cfg(test)]
mod tests;
