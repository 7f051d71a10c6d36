//! A trunk's settings (name and value pairs).

use super::*;

impl Resource for SettingRecord {
    const NAME: &'static str = "Setting";

    fn change(&self) -> Change {
        Change::Trunk(self.trunk_sid.clone())
    }
}

pub(super) async fn set_settings(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
        let items = items(&obj, "settings", "{\"name\", \"value\"}")?;
        let trunk = own_trunk(&st, &ctx, param(&p, "trunk_sid")).await?;
        let (store, sid) = (&st.store, trunk.sid.as_str());
        let set = add_each(&st, sid, items, "setting", |item| async move {
            let name = req_str(&item, "name")?;
            if name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(ApiError::invalid(
                    "setting name must be lowercase letters, digits or '_'",
                ));
            }
            let value = req_str(&item, "value")?;
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
            store
                .set_setting(sid, &name, &value)
                .await
                .map_err(|e| ApiError::store(e, SettingRecord::NAME))
        })
        .await;
        Ok(set)
    }
    .await;
    ctx.reply(result)
}
