//! A trunk's digest credentials (the password is never shown back).

use super::*;

/// Never includes the password.
pub(super) fn credential_json(c: &CredentialRecord) -> Value {
    json!({
        "id": c.id,
        "trunk_sid": c.trunk_sid,
        "user_name": c.user_name,
        "friendly_name": c.friendly_name,
        "date_created": c.date_created,
        "date_updated": c.date_updated,
    })
}
pub(super) fn check_user_name(user: &str) -> Result<(), ApiError> {
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

pub(super) fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() <= 128 && !password.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::invalid("password must be at most 128 characters"))
    }
}

pub(super) fn check_friendly_name(name: &str) -> Result<(), ApiError> {
    if name.chars().count() <= 32 {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "friendly_name must be at most 32 characters",
        ))
    }
}

pub(super) async fn create_credential(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    body: Bytes,
) -> Response {
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

pub(super) async fn list_credentials(
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
        "Credential",
        credential_json,
        |sid, page| async move { store.list_credentials(&sid, page).await },
    )
    .await;
    ctx.reply(result)
}

pub(super) async fn get_credential(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = one_found(
        "Credential",
        credential_json,
        st.store.credential(&ctx.account_sid, param(&p, "id")).await,
    );
    ctx.reply(result)
}

pub(super) async fn update_credential(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    body: Bytes,
) -> Response {
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

pub(super) async fn delete_credential(
    st: &ApiState,
    ctx: &Ctx,
    id: Option<&str>,
) -> Result<Out, ApiError> {
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

pub(super) async fn delete_credential_query(
    State(st): St,
    ctx: Ctx,
    Query(q): QueryMap,
) -> Response {
    let result = delete_credential(&st, &ctx, q.get("id").map(String::as_str)).await;
    ctx.reply(result)
}

pub(super) async fn delete_credential_path(State(st): St, ctx: Ctx, Path(p): Params) -> Response {
    let result = delete_credential(&st, &ctx, p.get("id").map(String::as_str)).await;
    ctx.reply(result)
}
