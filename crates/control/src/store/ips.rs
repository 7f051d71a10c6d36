//! A trunk's whitelisted networks.

use super::*;

/// A whitelisted network on a trunk.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
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

table!(IpRecord = "whitelisted_ips" by "trunk_sid" order "date_created, id" key id {
    id, trunk_sid, ip, mask, date_created
});

impl Store {
    /// Whitelists `net` on the trunk ([`StoreError::Duplicate`] if it already is).
    pub async fn add_ip(&self, trunk_sid: &str, net: IpNet) -> StoreResult<IpRecord> {
        let (mut w, _) = self.write_under(trunk_sid).await?;
        let rec = IpRecord {
            id: new_id("IP"),
            trunk_sid: trunk_sid.to_string(),
            ip: net.addr().to_string(),
            mask: i64::from(net.prefix()),
            date_created: now_iso8601(),
        };
        w.insert(&rec).await?;
        w.commit().await?;
        Ok(rec)
    }

    pub async fn list_ips(&self, trunk_sid: &str, page: Page) -> StoreResult<Vec<IpRecord>> {
        self.list_of(trunk_sid, page).await
    }

    pub async fn delete_ip(&self, trunk_sid: &str, id: &str) -> StoreResult<Option<IpRecord>> {
        self.delete_of(id, trunk_sid).await
    }
}
