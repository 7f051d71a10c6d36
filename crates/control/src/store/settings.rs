//! A trunk's settings (name and value pairs).

use super::*;

/// One trunk setting, e.g. `trunk_external_alias` (the outbound caller ID).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct SettingRecord {
    pub trunk_sid: String,
    pub name: String,
    pub value: String,
    pub date_updated: String,
}

table!(SettingRecord = "trunk_settings" by "trunk_sid" order "name" {
    trunk_sid, name, value, date_updated
});

impl Store {
    /// Sets (inserts or replaces) one setting of the trunk.
    pub async fn set_setting(
        &self,
        trunk_sid: &str,
        name: &str,
        value: &str,
    ) -> StoreResult<SettingRecord> {
        let (mut w, _) = self.write_under(trunk_sid).await?;
        let rec = SettingRecord {
            trunk_sid: trunk_sid.to_string(),
            name: name.to_string(),
            value: value.to_string(),
            date_updated: now_iso8601(),
        };
        sqlx::query("DELETE FROM trunk_settings WHERE trunk_sid = ? AND name = ?")
            .bind(trunk_sid)
            .bind(name)
            .execute(&mut *w.tx)
            .await?;
        w.insert(&rec).await?;
        w.commit().await?;
        Ok(rec)
    }

    /// The trunk's settings, by name.
    pub async fn list_settings(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<SettingRecord>> {
        self.list_of(trunk_sid, page).await
    }
}
