//! A trunk's settings (name and value pairs).

use super::*;

/// One trunk setting, e.g. `trunk_external_alias` (the outbound caller ID).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SettingRecord {
    pub trunk_sid: String,
    pub name: String,
    pub value: String,
    pub date_updated: String,
}

impl Store {
    /// Sets (inserts or replaces) one setting of the trunk.
    pub async fn set_setting(
        &self,
        trunk_sid: &str,
        name: &str,
        value: &str,
    ) -> StoreResult<SettingRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        let rec = SettingRecord {
            trunk_sid: trunk_sid.to_string(),
            name: name.to_string(),
            value: value.to_string(),
            date_updated: now_iso8601(),
        };
        sqlx::query("DELETE FROM trunk_settings WHERE trunk_sid = ? AND name = ?")
            .bind(trunk_sid)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO trunk_settings (trunk_sid, name, value, date_updated) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&rec.trunk_sid)
        .bind(&rec.name)
        .bind(&rec.value)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The trunk's settings, by name.
    pub async fn list_settings(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<SettingRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM trunk_settings WHERE trunk_sid = ? ORDER BY name LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }
}
