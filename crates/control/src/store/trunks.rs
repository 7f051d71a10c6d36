//! Trunks: their rows and what creating, listing, updating and deleting them does.

use super::*;

/// A trunk row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct TrunkRecord {
    #[serde(rename = "trunk_sid")]
    pub sid: String,
    #[serde(skip)]
    pub account_sid: String,
    #[serde(rename = "trunk_name")]
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

table!(TrunkRecord = "trunks" by "account_sid" order "date_created, sid" key sid {
    sid, account_sid, name, nso_code, domain_name, status, auth_type, registration_enabled,
    edge_preference, secure_trunking, max_concurrent_calls, calls_per_minute, date_created,
    date_updated
});

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
        let mut w = self.write().await?;
        w.insert(&rec).await?;
        w.commit().await?;
        Ok(rec)
    }

    /// The trunk `sid` if it belongs to `account_sid`.
    pub async fn trunk(&self, account_sid: &str, sid: &str) -> StoreResult<Option<TrunkRecord>> {
        self.find(sid, account_sid).await
    }

    /// The account's trunks, oldest first.
    pub async fn list_trunks(
        &self,
        account_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<TrunkRecord>> {
        self.list_of(account_sid, page).await
    }

    /// Applies `update`; `None` if the trunk is not the account's.
    pub async fn update_trunk(
        &self,
        account_sid: &str,
        sid: &str,
        update: &TrunkUpdate,
    ) -> StoreResult<Option<TrunkRecord>> {
        let mut w = self.write().await?;
        let Some(mut rec) = w.find::<TrunkRecord>(sid, account_sid).await? else {
            return Ok(None);
        };
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
        w.update(&rec).await?;
        w.commit().await?;
        Ok(Some(rec))
    }

    /// Deletes the trunk and everything under it in one transaction; returns the deleted
    /// trunk, or `None` if it is not the account's.
    pub async fn delete_trunk(
        &self,
        account_sid: &str,
        sid: &str,
    ) -> StoreResult<Option<TrunkRecord>> {
        let mut w = self.write().await?;
        let Some(rec) = w.find::<TrunkRecord>(sid, account_sid).await? else {
            return Ok(None);
        };
        for table in [
            NumberRecord::TABLE,
            IpRecord::TABLE,
            DestinationRecord::TABLE,
            CredentialRecord::TABLE,
            SettingRecord::TABLE,
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE trunk_sid = ?"))
                .bind(sid)
                .execute(&mut *w.tx)
                .await?;
        }
        w.delete(&rec).await?;
        w.commit().await?;
        Ok(Some(rec))
    }
}
