//! A trunk's settings (name and value pairs).

use super::*;

pub(super) fn setting_json(s: &SettingRecord) -> Value {
    json!({
        "trunk_sid": s.trunk_sid,
        "name": s.name,
        "value": s.value,
        "date_updated": s.date_updated,
    })
}
pub(super) async fn set_settings(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    body: Bytes,
) -> Response {
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

pub(super) async fn list_settings(
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
        "Setting",
        setting_json,
        |sid, page| async move { store.list_settings(&sid, page).await },
    )
    .await;
    ctx.reply(result)
}
