//! A trunk's whitelisted networks.

use super::*;

/// A whitelisted network on a trunk.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IpRecord {
    pub id: String,
    pub trunk_sid: String,
    /// The network address (host bits cleared).
    pub ip: String,
    pub mask: i64,
    pub date_created: String,
}

impl IpRecord {
    pub fn to_net(&self) -> Option<IpNet> {
        IpNet::new(self.ip.parse().ok()?, u8::try_from(self.mask).ok()?).ok()
    }
}

impl Store {
    /// Whitelists `net` on the trunk ([`StoreError::Duplicate`] if it already is).
    pub async fn add_ip(&self, trunk_sid: &str, net: IpNet) -> StoreResult<IpRecord> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        Self::trunk_in_tx(&mut tx, trunk_sid)
            .await?
            .ok_or(StoreError::NotFound)?;
        let rec = IpRecord {
            id: new_id("IP"),
            trunk_sid: trunk_sid.to_string(),
            ip: net.addr().to_string(),
            mask: i64::from(net.prefix()),
            date_created: now_iso8601(),
        };
        sqlx::query(
            "INSERT INTO whitelisted_ips (id, trunk_sid, ip, mask, date_created) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&rec.id)
        .bind(&rec.trunk_sid)
        .bind(&rec.ip)
        .bind(rec.mask)
        .bind(&rec.date_created)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn list_ips(&self, trunk_sid: &str, page: Page) -> StoreResult<Vec<IpRecord>> {
        let (limit, offset) = limit_offset(page);
        Ok(sqlx::query_as(
            "SELECT * FROM whitelisted_ips WHERE trunk_sid = ? \
             ORDER BY date_created, id LIMIT ? OFFSET ?",
        )
        .bind(trunk_sid)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn delete_ip(&self, trunk_sid: &str, id: &str) -> StoreResult<Option<IpRecord>> {
        self.delete_found::<IpRecord>(
            "SELECT * FROM whitelisted_ips WHERE id = ? AND trunk_sid = ?",
            "DELETE FROM whitelisted_ips WHERE id = ?",
            id,
            trunk_sid,
        )
        .await
    }
}
