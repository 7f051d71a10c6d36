//! A trunk's phone numbers and where each goes (`pstn` or a flow).

use super::*;

pub(super) fn number_json(n: &NumberRecord) -> Value {
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
/// `mode` (null or "pstn" → PSTN; "flow" needs `flow_id`).
pub(super) fn number_mode(obj: &Map<String, Value>) -> Result<Mode, ApiError> {
    match opt_str(obj, "mode")?.as_deref() {
        None | Some("") | Some("pstn") => Ok(Mode::Pstn),
        Some("flow") => Ok(Mode::Flow {
            flow_id: req_str(obj, "flow_id")?,
        }),
        Some(_) => Err(ApiError::invalid("mode must be pstn or flow")),
    }
}

pub(super) async fn create_number(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    body: Bytes,
) -> Response {
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

pub(super) async fn list_numbers(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    Query(q): QueryMap,
) -> Response {
    let store = &st.store;
    let result = trunk_page(
        &st,
        &ctx,
        (&p, &q),
        "Phone number",
        number_json,
        |sid, page| async move { store.list_numbers(&sid, page).await },
    )
    .await;
    ctx.reply(result)
}

pub(super) async fn get_number(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = async {
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        one_found(
            "Phone number",
            number_json,
            st.store.number(&trunk.sid, param(&p, "id")).await,
        )
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn update_number(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    body: Bytes,
) -> Response {
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

pub(super) async fn delete_number(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
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
