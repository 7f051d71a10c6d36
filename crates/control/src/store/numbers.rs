//! A trunk's phone numbers and their mode (`pstn` or a flow).

use super::*;

/// A phone number mapped to a trunk.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NumberRecord {
    pub id: String,
    pub account_sid: String,
    pub trunk_sid: String,
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
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let trunk = Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::check_flow(&mut tx, &trunk.account_sid, mode).await?;
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
        sqlx::query(
            "INSERT INTO phone_numbers (id, account_sid, trunk_sid, number, mode, flow_id, \
             date_created, date_updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.account_sid)
        .bind(&rec.trunk_sid)
        .bind(&rec.number)
        .bind(&rec.mode)
        .bind(&rec.flow_id)
        .bind(&rec.date_created)
        .bind(&rec.date_updated)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn number(&self, trunk_sid: &str, id: &str) -> StoreResult<Option<NumberRecord>> {
        Ok(
            sqlx::query_as("SELECT * FROM phone_numbers WHERE id = ? AND trunk_sid = ?")
                .bind(id)
                .bind(trunk_sid)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn list_numbers(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<NumberRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM phone_numbers WHERE trunk_sid = ? \
             ORDER BY date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces a mapping's number and mode; `None` if there is no such mapping on the trunk.
    pub async fn update_number(
        &self,
        trunk_sid: &str,
        id: &str,
        number: &str,
        mode: &Mode,
    ) -> StoreResult<Option<NumberRecord>> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let Some(mut rec): Option<NumberRecord> =
            sqlx::query_as("SELECT * FROM phone_numbers WHERE id = ? AND trunk_sid = ?")
                .bind(id)
                .bind(trunk_sid)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        Self::check_flow(&mut tx, &rec.account_sid, mode).await?;
        let (mode_s, flow_id) = Self::mode_columns(mode);
        rec.number = number.to_string();
        rec.mode = mode_s.to_string();
        rec.flow_id = flow_id;
        rec.date_updated = now_iso8601();
        sqlx::query(
            "UPDATE phone_numbers SET number = ?, mode = ?, flow_id = ?, date_updated = ? \
             WHERE id = ?",
        )
        .bind(&rec.number)
        .bind(&rec.mode)
        .bind(&rec.flow_id)
        .bind(&rec.date_updated)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(rec))
    }

    pub async fn delete_number(
        &self,
        trunk_sid: &str,
        id: &str,
    ) -> StoreResult<Option<NumberRecord>> {
        self.delete_found::<NumberRecord>(
            "SELECT * FROM phone_numbers WHERE id = ? AND trunk_sid = ?",
            "DELETE FROM phone_numbers WHERE id = ?",
            id,
            trunk_sid,
        )
        .await
    }
}
