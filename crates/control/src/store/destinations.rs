//! A trunk's destination URIs, with priority and weight.

use super::*;

/// A destination URI of a trunk (where outbound calls to the trunk go).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DestinationRecord {
    pub id: String,
    pub trunk_sid: String,
    /// With its `sip:` prefix, e.g. `sip:203.0.113.5:5061;transport=tls`.
    pub uri: String,
    /// Lower first.
    pub priority: i64,
    pub weight: i64,
    pub date_created: String,
}

impl Store {
    /// Adds a destination URI (already validated, with its `sip:` prefix). `priority`
    /// defaults to the number of destinations the trunk already has (so later ones come
    /// after), `weight` to 1.
    pub async fn add_destination(
        &self,
        trunk_sid: &str,
        uri: &str,
        priority: Option<i64>,
        weight: Option<i64>,
    ) -> StoreResult<DestinationRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        let priority = match priority {
            Some(p) => p,
            None => {
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM destination_uris WHERE trunk_sid = ?")
                        .bind(trunk_sid)
                        .fetch_one(&mut *tx)
                        .await?;
                n
            }
        };
        let rec = DestinationRecord {
            id: new_id("DU"),
            trunk_sid: trunk_sid.to_string(),
            uri: uri.to_string(),
            priority,
            weight: weight.unwrap_or(1),
            date_created: now_iso8601(),
        };
        sqlx::query(
            "INSERT INTO destination_uris (id, trunk_sid, uri, priority, weight, date_created) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.trunk_sid)
        .bind(&rec.uri)
        .bind(rec.priority)
        .bind(rec.weight)
        .bind(&rec.date_created)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The trunk's destinations, lowest priority first.
    pub async fn list_destinations(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<DestinationRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM destination_uris WHERE trunk_sid = ? \
             ORDER BY priority, date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete_destination(
        &self,
        trunk_sid: &str,
        id: &str,
    ) -> StoreResult<Option<DestinationRecord>> {
        self.delete_found::<DestinationRecord>(
            "SELECT * FROM destination_uris WHERE id = ? AND trunk_sid = ?",
            "DELETE FROM destination_uris WHERE id = ?",
            id,
            trunk_sid,
        )
        .await
    }
}
