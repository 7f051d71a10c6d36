//! A trunk's digest credentials.

use super::*;

/// A digest credential of a trunk. The password is stored as given (digest auth needs it or
/// its HA1); the API never returns it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct CredentialRecord {
    pub id: String,
    pub trunk_sid: String,
    pub user_name: String,
    #[serde(skip)]
    pub password: String,
    pub friendly_name: Option<String>,
    pub date_created: String,
    pub date_updated: String,
}

/// What creating a credential needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    pub user_name: String,
    pub password: String,
    pub friendly_name: Option<String>,
}

/// Changes to a credential; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialUpdate {
    pub user_name: Option<String>,
    pub password: Option<String>,
    /// `Some(None)` clears the friendly name.
    pub friendly_name: Option<Option<String>>,
}

table!(CredentialRecord = "credentials" by "trunk_sid" order "date_created, id" {
    id, trunk_sid, user_name, password, friendly_name, date_created, date_updated
});

impl Keyed for CredentialRecord {
    fn key(&self) -> &str {
        &self.id
    }

    /// By the account its trunk belongs to: credentials have ids of their own in the API.
    fn find_sql() -> String {
        "SELECT c.* FROM credentials c JOIN trunks t ON t.sid = c.trunk_sid \
         WHERE c.id = ? AND t.account_sid = ?"
            .into()
    }
}

impl Store {
    pub async fn add_credential(
        &self,
        trunk_sid: &str,
        new: &NewCredential,
    ) -> StoreResult<CredentialRecord> {
        let (mut w, _) = self.write_under(trunk_sid).await?;
        let now = now_iso8601();
        let rec = CredentialRecord {
            id: new_id("CR"),
            trunk_sid: trunk_sid.to_string(),
            user_name: new.user_name.clone(),
            password: new.password.clone(),
            friendly_name: new.friendly_name.clone(),
            date_created: now.clone(),
            date_updated: now,
        };
        w.insert(&rec).await?;
        w.commit().await?;
        Ok(rec)
    }

    pub async fn list_credentials(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<CredentialRecord>> {
        self.list_of(trunk_sid, page).await
    }

    /// The credential `id` if its trunk belongs to `account_sid`.
    pub async fn credential(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        self.find(id, account_sid).await
    }

    pub async fn update_credential(
        &self,
        account_sid: &str,
        id: &str,
        update: &CredentialUpdate,
    ) -> StoreResult<Option<CredentialRecord>> {
        let mut w = self.write().await?;
        let Some(mut rec) = w.find::<CredentialRecord>(id, account_sid).await? else {
            return Ok(None);
        };
        if let Some(v) = &update.user_name {
            rec.user_name = v.clone();
        }
        if let Some(v) = &update.password {
            rec.password = v.clone();
        }
        if let Some(v) = &update.friendly_name {
            rec.friendly_name = v.clone();
        }
        rec.date_updated = now_iso8601();
        w.update(&rec).await?;
        w.commit().await?;
        Ok(Some(rec))
    }

    pub async fn delete_credential(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        self.delete_of(id, account_sid).await
    }
}
