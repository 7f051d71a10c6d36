//! A trunk's phone numbers and where each goes (`pstn` or a flow).

use super::*;

impl Resource for NumberRecord {
    const NAME: &'static str = "Phone number";

    fn change(&self) -> Change {
        Change::Trunk(self.trunk_sid.clone())
    }
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
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
        let number = req_str(&obj, "phone_number")?;
        check_number(&number)?;
        let mode = number_mode(&obj)?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let added = st.store.add_number(&trunk.sid, &number, &mode).await;
        written(&st, added.map(Some)).await
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn update_number(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
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
        let current = found(st.store.number(&trunk.sid, param(&p, "id")).await)?;
        // Absent `mode` keeps the current one (a lone `flow_id` re-points a flow number).
        let mode = match (mode, current.to_mode(), flow_id) {
            (Some(m), _, _) => m,
            (None, Mode::Flow { .. }, Some(flow_id)) => Mode::Flow { flow_id },
            (None, m, _) => m,
        };
        let number = number.unwrap_or(current.number);
        let updated = st
            .store
            .update_number(&trunk.sid, &current.id, &number, &mode)
            .await;
        written(&st, updated).await
    }
    .await;
    ctx.reply(result)
}
