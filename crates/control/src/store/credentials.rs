//! A trunk's digest credentials.

use super::*;

/// A digest credential of a trunk. The password is stored as given (digest auth needs it or
/// its HA1); the API never returns it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialRecord {
    pub id: String,
    pub trunk_sid: String,
    pub user_name: String,
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

impl Store {
    pub async fn add_credential(
        &self,
        trunk_sid: &str,
        new: &NewCredential,
    ) -> StoreResult<CredentialRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
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
        sqlx::query(
            "INSERT INTO credentials (id, trunk_sid, user_name, password, friendly_name, \
             date_created, date_updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.trunk_sid)
        .bind(&rec.user_name)
        .bind(&rec.password)
        .bind(&rec.friendly_name)
        .bind(&rec.date_created)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn list_credentials(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<CredentialRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM credentials WHERE trunk_sid = ? \
             ORDER BY date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    const CREDENTIAL_OF_ACCOUNT: &'static str = "SELECT c.id, c.trunk_sid, c.user_name, \
         c.password, c.friendly_name, c.date_created, c.date_updated FROM credentials c \
         JOIN trunks t ON t.sid = c.trunk_sid WHERE c.id = ? AND t.account_sid = ?";

    /// The credential `id` if its trunk belongs to `account_sid`.
    pub async fn credential(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        Ok(sqlx::query_as(Self::CREDENTIAL_OF_ACCOUNT)
            .bind(id)
            .bind(account_sid)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn update_credential(
        &self,
        account_sid: &str,
        id: &str,
        update: &CredentialUpdate,
    ) -> StoreResult<Option<CredentialRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(mut rec): Option<CredentialRecord> = sqlx::query_as(Self::CREDENTIAL_OF_ACCOUNT)
            .bind(id)
            .bind(account_sid)
            .fetch_optional(&mut *tx)
            .await?
        else {
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
        sqlx::query(
            "UPDATE credentials SET user_name = ?, password = ?, friendly_name = ?, \
             date_updated = ? WHERE id = ?",
        )
        .bind(&rec.user_name)
        .bind(&rec.password)
        .bind(&rec.friendly_name)
        .bind(&rec.date_updated)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    pub async fn delete_credential(
        &self,
        account_sid: &str,
        id: &str,
    ) -> StoreResult<Option<CredentialRecord>> {
        self.delete_found::<CredentialRecord>(
            Self::CREDENTIAL_OF_ACCOUNT,
            "DELETE FROM credentials WHERE id = ?",
            id,
            account_sid,
        )
        .await
    }
}
