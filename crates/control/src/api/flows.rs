//! Flows: where a number's calls stream to (a bot's WebSocket) and what follows.

use super::*;

pub(super) fn flow_json(f: &FlowRecord) -> Value {
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

pub(super) async fn create_flow(State(st): St, ctx: Ctx, body: Bytes) -> Response {
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

pub(super) async fn list_flows(State(st): St, ctx: Ctx, Query(q): QueryMap) -> Response {
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

pub(super) async fn get_flow(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = one_found(
        "Flow",
        flow_json,
        st.store.flow(&ctx.account_sid, param(&p, "flow_id")).await,
    );
    ctx.reply(result)
}

pub(super) async fn update_flow(State(st): St, ctx: Ctx, Path(p): Params, body: Bytes) -> Response {
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

pub(super) async fn delete_flow(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
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
