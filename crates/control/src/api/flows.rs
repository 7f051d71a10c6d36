//! Flows: where a number's calls stream to (a bot's WebSocket) and what follows.

use super::*;

/// A flow as the API shows it: its record and its own URI.
#[derive(Serialize)]
struct FlowView<'a> {
    #[serde(flatten)]
    flow: &'a FlowRecord,
    uri: String,
}

impl Resource for FlowRecord {
    const NAME: &'static str = "Flow";

    fn change(&self) -> Change {
        Change::Flow(self.id.clone())
    }

    fn view(&self) -> Result<Value, ApiError> {
        to_view(&FlowView {
            flow: self,
            uri: format!("/v2/accounts/{}/flows/{}", self.account_sid, self.id),
        })
    }
}

impl OfAccount for FlowRecord {
    const ID: &'static str = "flow_id";

    async fn get(store: &Store, account_sid: &str, id: &str) -> Found<Self> {
        store.flow(account_sid, id).await
    }

    async fn delete(store: &Store, account_sid: &str, id: &str) -> Found<Self> {
        store.delete_flow(account_sid, id).await
    }
}

/// A flow from `obj`, starting from `base` (PUT) or from scratch (POST: `name` and
/// `stream_url` mandatory).
pub(super) fn flow_from(
    obj: &Map<String, Value>,
    base: Option<&FlowRecord>,
) -> Result<NewFlow, ApiError> {
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
pub(super) async fn check_destination_trunk(
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

pub(super) async fn create_flow(State(st): St, ctx: Ctx, JsonObject(obj): JsonObject) -> Response {
    let result = async {
        let new = flow_from(&obj, None)?;
        check_destination_trunk(&st, &ctx, &obj, &new).await?;
        let created = st.store.create_flow(&ctx.account_sid, &new).await;
        written(&st, created.map(Some)).await
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn list_flows(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
    let result = async {
        let pg = page(&q)?;
        let rows = st.store.list_flows(&ctx.account_sid, probe(pg)).await;
        list_out(&ctx, pg, rows, "")
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn update_flow(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
        let id = param(&p, "flow_id");
        let current = found(st.store.flow(&ctx.account_sid, id).await)?;
        let new = flow_from(&obj, Some(&current))?;
        check_destination_trunk(&st, &ctx, &obj, &new).await?;
        written(&st, st.store.update_flow(&ctx.account_sid, id, &new).await).await
    }
    .await;
    ctx.reply(result)
}
