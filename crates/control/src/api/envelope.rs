//! Every answer's envelope and every failure's code, and the request context whose extraction
//! authenticates the request; also the answers axum makes outside the handlers.

use super::*;

/// An API failure: HTTP status, Exotel error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub http: StatusCode,
    pub code: u16,
    pub message: String,
}

impl ApiError {
    pub(super) fn new(http: StatusCode, code: u16, message: impl Into<String>) -> Self {
        ApiError {
            http,
            code,
            message: message.into(),
        }
    }
    pub(super) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, 1000, format!("{what} not found"))
    }
    pub(super) fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            1001,
            format!("Mandatory parameter missing: {param}"),
        )
    }
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 1002, message)
    }
    pub(super) fn trunk_forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            1003,
            "Trunk not found for this account",
        )
    }
    pub(super) fn unparseable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 1007, message)
    }
    pub(super) fn duplicate(what: &str) -> Self {
        Self::new(StatusCode::CONFLICT, 1008, format!("{what} already exists"))
    }
    pub(super) fn auth() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 1010, "Authentication failed")
    }
    pub(super) fn content_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            1011,
            "Content-Type must be application/json",
        )
    }
    pub(super) fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, 500, "Internal error")
    }
    pub(super) fn method_not_allowed(method: &Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            1005,
            format!("Method {method} is not allowed on this path"),
        )
    }
    pub(super) fn too_many_items(what: &str, max: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            1013,
            format!("At most {max} {what} per request"),
        )
    }
    pub(super) fn trunk_full(what: &str, max: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            1012,
            format!("A trunk may have at most {max} {what}"),
        )
    }
    /// An answer axum made without a handler (an extractor's rejection), by its status.
    pub(super) fn from_bare(http: StatusCode, text: &str) -> Self {
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
    pub(super) fn uri_too_long() -> Self {
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
    pub(super) fn store(e: StoreError, what: &str) -> Self {
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
pub(super) enum Out {
    One(Value),
    List { items: Vec<Value>, metadata: Value },
    Multi(Vec<Result<Value, ApiError>>),
}

/// The request facts every handler needs; extracting it authenticates the request.
pub(super) struct Ctx {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) account_sid: String,
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

    pub(super) fn error(method: &Method, e: &ApiError) -> Response {
        Self::envelope(method, e.http, item_err(e), None)
    }

    pub(super) fn reply(&self, result: Result<Out, ApiError>) -> Response {
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
}

/// A POST or PUT body as a JSON object: 415 / 1011 without a JSON content type, 400 / 1007 if
/// it does not parse as an object. Extracted after [`Ctx`], so after auth.
pub(super) struct JsonObject(pub(super) Map<String, Value>);

impl FromRequest<Arc<ApiState>> for JsonObject {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<ApiState>) -> Result<Self, Response> {
        let method = request.method().clone();
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        // The body is read first, so one over the limit is 413 whatever its type.
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let parsed = if !is_json {
            Err(ApiError::content_type())
        } else {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(map)) => Ok(JsonObject(map)),
                Ok(_) => Err(ApiError::unparseable("Request body must be a JSON object")),
                Err(e) => Err(ApiError::unparseable(format!(
                    "Request body is not valid JSON: {e}"
                ))),
            }
        };
        parsed.map_err(|e| Ctx::error(&method, &e))
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
        })
    }
}

pub(super) async fn not_found(ctx: Ctx) -> Response {
    ctx.reply(Err(ApiError::not_found("Resource")))
}

/// Auth first, as everywhere: an unauthenticated request learns nothing about the paths.
pub(super) async fn method_not_allowed(ctx: Ctx) -> Response {
    let e = ApiError::method_not_allowed(&ctx.method);
    ctx.reply(Err(e))
}

/// Refuses an over-long request target before routing or auth look at it.
pub(super) async fn refuse_long_uri(request: Request, next: Next) -> Response {
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
pub(super) async fn envelope_bare_answers(method: Method, response: Response) -> Response {
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
