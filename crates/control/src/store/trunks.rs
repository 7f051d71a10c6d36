//! Trunks: their rows and what creating, listing, updating and deleting them does.

use super::*;

/// A trunk row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrunkRecord {
    pub sid: String,
    pub account_sid: String,
    pub name: String,
    pub nso_code: String,
    pub domain_name: String,
    /// "active" or "inactive".
    pub status: String,
    pub auth_type: String,
    pub registration_enabled: bool,
    pub edge_preference: String,
    /// "enabled" (TLS + SRTP) or "disabled".
    pub secure_trunking: String,
    pub max_concurrent_calls: Option<i64>,
    pub calls_per_minute: i64,
    pub date_created: String,
    pub date_updated: String,
}

impl TrunkRecord {
    /// The admission view of this trunk, without whitelist or credentials.
    pub fn to_model(&self) -> Trunk {
        let mut t = Trunk::new(self.sid.clone(), self.name.clone());
        t.active = self.status == "active";
        t.max_concurrent_calls = self
            .max_concurrent_calls
            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX));
        t.calls_per_minute = u32::try_from(self.calls_per_minute.max(0)).unwrap_or(u32::MAX);
        t
    }
}

/// What creating a trunk needs. [`NewTrunk::new`] fills Exotel's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrunk {
    pub name: String,
    pub nso_code: String,
    pub domain_name: String,
    pub status: String,
    pub auth_type: String,
    pub registration_enabled: bool,
    pub edge_preference: String,
    pub secure_trunking: String,
    pub max_concurrent_calls: Option<u32>,
    pub calls_per_minute: u32,
}

impl NewTrunk {
    /// Active, IP-whitelist auth, no registration, edge "auto", not secure, no concurrent
    /// limit, [`DEFAULT_CALLS_PER_MINUTE`].
    pub fn new(
        name: impl Into<String>,
        nso_code: impl Into<String>,
        domain_name: impl Into<String>,
    ) -> Self {
        NewTrunk {
            name: name.into(),
            nso_code: nso_code.into(),
            domain_name: domain_name.into(),
            status: "active".into(),
            auth_type: "IP-whitelist".into(),
            registration_enabled: false,
            edge_preference: "auto".into(),
            secure_trunking: "disabled".into(),
            max_concurrent_calls: None,
            calls_per_minute: DEFAULT_CALLS_PER_MINUTE,
        }
    }
}

/// Changes to a trunk; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkUpdate {
    pub name: Option<String>,
    pub nso_code: Option<String>,
    pub domain_name: Option<String>,
    pub status: Option<String>,
    pub secure_trunking: Option<String>,
    pub registration_enabled: Option<bool>,
    /// `Some(None)` removes the limit.
    pub max_concurrent_calls: Option<Option<u32>>,
    pub calls_per_minute: Option<u32>,
}

impl Store {
    pub async fn create_trunk(
        &self,
        account_sid: &str,
        new: &NewTrunk,
    ) -> StoreResult<TrunkRecord> {
        let now = now_iso8601();
        let rec = TrunkRecord {
            sid: new_id("TR"),
            account_sid: account_sid.to_string(),
            name: new.name.clone(),
            nso_code: new.nso_code.clone(),
            domain_name: new.domain_name.clone(),
            status: new.status.clone(),
            auth_type: new.auth_type.clone(),
            registration_enabled: new.registration_enabled,
            edge_preference: new.edge_preference.clone(),
            secure_trunking: new.secure_trunking.clone(),
            max_concurrent_calls: new.max_concurrent_calls.map(i64::from),
            calls_per_minute: i64::from(new.calls_per_minute),
            date_created: now.clone(),
            date_updated: now,
        };
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO trunks ({TRUNK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&rec.sid)
        .bind(&rec.account_sid)
        .bind(&rec.name)
        .bind(&rec.nso_code)
        .bind(&rec.domain_name)
        .bind(&rec.status)
        .bind(&rec.auth_type)
        .bind(rec.registration_enabled)
        .bind(&rec.edge_preference)
        .bind(&rec.secure_trunking)
        .bind(rec.max_concurrent_calls)
        .bind(rec.calls_per_minute)
        .bind(&rec.date_created)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The trunk `sid` if it belongs to `account_sid`.
    pub async fn trunk(&self, account_sid: &str, sid: &str) -> StoreResult<Option<TrunkRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {TRUNK_COLUMNS} FROM trunks WHERE sid = ? AND account_sid = ?"
        ))
        .bind(sid)
        .bind(account_sid)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The account's trunks, oldest first.
    pub async fn list_trunks(
        &self,
        account_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<TrunkRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(&format!(
            "SELECT {TRUNK_COLUMNS} FROM trunks WHERE account_sid = ? \
             ORDER BY date_created, sid LIMIT ? OFFSET ?"
        ))
        .bind(account_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies `update`; `None` if the trunk is not the account's.
    pub async fn update_trunk(
        &self,
        account_sid: &str,
        sid: &str,
        update: &TrunkUpdate,
    ) -> StoreResult<Option<TrunkRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(mut rec) = Self::trunk_in_tx(&mut tx, sid).await? else {
            return Ok(None);
        };
        if rec.account_sid != account_sid {
            return Ok(None);
        }
        if let Some(v) = &update.name {
            rec.name = v.clone();
        }
        if let Some(v) = &update.nso_code {
            rec.nso_code = v.clone();
        }
        if let Some(v) = &update.domain_name {
            rec.domain_name = v.clone();
        }
        if let Some(v) = &update.status {
            rec.status = v.clone();
        }
        if let Some(v) = &update.secure_trunking {
            rec.secure_trunking = v.clone();
        }
        if let Some(v) = update.registration_enabled {
            rec.registration_enabled = v;
        }
        if let Some(v) = update.max_concurrent_calls {
            rec.max_concurrent_calls = v.map(i64::from);
        }
        if let Some(v) = update.calls_per_minute {
            rec.calls_per_minute = i64::from(v);
        }
        rec.date_updated = now_iso8601();
        sqlx::query(
            "UPDATE trunks SET name = ?, nso_code = ?, domain_name = ?, status = ?, \
             secure_trunking = ?, registration_enabled = ?, max_concurrent_calls = ?, \
             calls_per_minute = ?, date_updated = ? WHERE sid = ?",
        )
        .bind(&rec.name)
        .bind(&rec.nso_code)
        .bind(&rec.domain_name)
        .bind(&rec.status)
        .bind(&rec.secure_trunking)
        .bind(rec.registration_enabled)
        .bind(rec.max_concurrent_calls)
        .bind(rec.calls_per_minute)
        .bind(&rec.date_updated)
        .bind(sid)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    /// Deletes the trunk and everything under it in one transaction; returns the deleted
    /// trunk, or `None` if it is not the account's.
    pub async fn delete_trunk(
        &self,
        account_sid: &str,
        sid: &str,
    ) -> StoreResult<Option<TrunkRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(rec) = Self::trunk_in_tx(&mut tx, sid).await? else {
            return Ok(None);
        };
        if rec.account_sid != account_sid {
            return Ok(None);
        }
        for table in [
            "phone_numbers",
            "whitelisted_ips",
            "destination_uris",
            "credentials",
            "trunk_settings",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE trunk_sid = ?"))
                .bind(sid)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM trunks WHERE sid = ?")
            .bind(sid)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }
}
