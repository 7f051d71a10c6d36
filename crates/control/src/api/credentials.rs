//! A trunk's digest credentials (the password is never shown back).

use super::*;

/// Shown without its password (see the record's serde form).
impl Resource for CredentialRecord {
    const NAME: &'static str = "Credential";
    const DUPLICATE: &'static str = "Credential with this user_name";

    fn change(&self) -> Change {
        Change::Trunk(self.trunk_sid.clone())
    }
}

impl OfAccount for CredentialRecord {
    const ID: &'static str = "id";

    async fn get(store: &Store, account_sid: &str, id: &str) -> Found<Self> {
        store.credential(account_sid, id).await
    }

    async fn delete(store: &Store, account_sid: &str, id: &str) -> Found<Self> {
        store.delete_credential(account_sid, id).await
    }
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
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
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
        let new = NewCredential {
            user_name,
            password,
            friendly_name,
        };
        written(
            &st,
            st.store.add_credential(&trunk.sid, &new).await.map(Some),
        )
        .await
    }
    .await;
    ctx.reply(result)
}

pub(super) async fn update_credential(
    State(st): St,
    ctx: Ctx,
    Path(p): Params,
    JsonObject(obj): JsonObject,
) -> Response {
    let result = async {
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
        let update = CredentialUpdate {
            user_name,
            password,
            friendly_name,
        };
        let id = param(&p, "id");
        written(
            &st,
            st.store
                .update_credential(&ctx.account_sid, id, &update)
                .await,
        )
        .await
    }
    .await;
    ctx.reply(result)
}
