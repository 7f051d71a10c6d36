//! A trunk's destination URIs, with priority and weight.

use super::*;

/// A destination URI of a trunk (where outbound calls to the trunk go).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct DestinationRecord {
    pub id: String,
    pub trunk_sid: String,
    /// With its `sip:` prefix, e.g. `sip:203.0.113.5:5061;transport=tls`.
    #[serde(rename = "destination")]
    pub uri: String,
    /// Lower first.
    pub priority: i64,
    pub weight: i64,
    pub date_created: String,
}

table!(DestinationRecord = "destination_uris" by "trunk_sid"
    order "priority, date_created, id" key id {
    id, trunk_sid, uri, priority, weight, date_created
});

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
        let (mut w, _) = self.write_under(trunk_sid).await?;
        let priority = match priority {
            Some(p) => p,
            None => {
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM destination_uris WHERE trunk_sid = ?")
                        .bind(trunk_sid)
                        .fetch_one(&mut *w.tx)
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
        w.insert(&rec).await?;
        w.commit().await?;
        Ok(rec)
    }

    /// The trunk's destinations, lowest priority first.
    pub async fn list_destinations(
        &self,
        trunk_sid: &str,
        page: Page,
    ) -> StoreResult<Vec<DestinationRecord>> {
        self.list_of(trunk_sid, page).await
    }

    pub async fn delete_destination(
        &self,
        trunk_sid: &str,
        id: &str,
    ) -> StoreResult<Option<DestinationRecord>> {
        self.delete_of(id, trunk_sid).await
    }
}
