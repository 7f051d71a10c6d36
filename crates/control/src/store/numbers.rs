//! A trunk's phone numbers and their mode (`pstn` or a flow).

use super::*;

/// A phone number mapped to a trunk.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct NumberRecord {
    pub id: String,
    #[serde(skip)]
    pub account_sid: String,
    pub trunk_sid: String,
    #[serde(rename = "phone_number")]
    pub number: String,
    /// "pstn" or "flow".
    pub mode: String,
    pub flow_id: Option<String>,
    pub date_created: String,
    pub date_updated: String,
}

impl NumberRecord {
    pub fn to_mode(&self) -> Mode {
        match (&*self.mode, &self.flow_id) {
            ("flow", Some(flow_id)) => Mode::Flow {
                flow_id: flow_id.clone(),
            },
            _ => Mode::Pstn,
        }
    }
}

table!(NumberRecord = "phone_numbers" by "trunk_sid" order "date_created, id" key id {
    id, account_sid, trunk_sid, number, mode, flow_id, date_created, date_updated
});

impl Store {
    /// Checks a flow-mode number's flow exists in `account_sid`.
    async fn check_flow(
        tx: &mut Transaction<'_, Sqlite>,
        account_sid: &str,
        mode: &Mode,
    ) -> StoreResult<()> {
        if let Mode::Flow { flow_id } = mode {
            let found: Option<(String,)> =
                sqlx::query_as("SELECT id FROM flows WHERE id = ? AND account_sid = ?")
                    .bind(flow_id)
                    .bind(account_sid)
                    .fetch_optional(&mut **tx)
                    .await?;
            if found.is_none() {
                return Err(StoreError::UnknownFlow(flow_id.clone()));
            }
        }
        Ok(())
    }

    fn mode_columns(mode: &Mode) -> (&'static str, Option<String>) {
        match mode {
            Mode::Pstn => ("pstn", None),
            Mode::Flow { flow_id } => ("flow", Some(flow_id.clone())),
        }
    }

    /// Maps `number` to the trunk. Errors: [`StoreError::NotFound`] (no such trunk),
    /// [`StoreError::UnknownFlow`], [`StoreError::Duplicate`] (the number is mapped already,
    /// on any trunk of any account).
    pub async fn add_number(
        &self,
        trunk_sid: &str,
        number: &str,
        mode: &Mode,
    ) -> StoreResult<NumberRecord> {
        let (mut w, trunk) = self.write_under(trunk_sid).await?;
        Self::check_flow(&mut w.tx, &trunk.account_sid, mode).await?;
        let (mode_s, flow_id) = Self::mode_columns(mode);
        let now = now_iso8601();
        let rec = NumberRecord {
            id: new_id("PN"),
            account_sid: trunk.account_sid,
            trunk_sid: trunk_sid.to_string(),
            number: number.to_string(),
            mode: mode_s.to_string(),
            flow_id,
            date_created: now.clone(),
            date_updated: now,
        };
        w.insert(&rec).await?;
        w.commit().await?;
        Ok(rec)
    }

    pub async fn number(&self, trunk_sid: &str, id: &str) -> StoreResult<Option<NumberRecord>> {
        self.find(id, trunk_sid).await
    }

    pub async fn list_numbers(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<NumberRecord>> {
        self.list_of(trunk_sid, page).await
    }

    /// Replaces a mapping's number and mode; `None` if there is no such mapping on the trunk.
    pub async fn update_number(
        &self,
        trunk_sid: &str,
        id: &str,
        number: &str,
        mode: &Mode,
    ) -> StoreResult<Option<NumberRecord>> {
        let mut w = self.write().await?;
        let Some(mut rec) = w.find::<NumberRecord>(id, trunk_sid).await? else {
            return Ok(None);
        };
        Self::check_flow(&mut w.tx, &rec.account_sid, mode).await?;
        let (mode_s, flow_id) = Self::mode_columns(mode);
        rec.number = number.to_string();
        rec.mode = mode_s.to_string();
        rec.flow_id = flow_id;
        rec.date_updated = now_iso8601();
        w.update(&rec).await?;
        w.commit().await?;
        Ok(Some(rec))
    }

    pub async fn delete_number(
        &self,
        trunk_sid: &str,
        id: &str,
    ) -> StoreResult<Option<NumberRecord>> {
        self.delete_of(id, trunk_sid).await
    }
}
