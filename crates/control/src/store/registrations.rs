//! Registrar bindings in the store: saved, refreshed, removed and read back after a restart.

use super::{Store, StoreResult};

/// One Contact registered for an address of record.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Binding {
    pub trunk_sid: String,
    pub aor: String,
    pub contact: String,
    pub source: String,
    pub call_id: String,
    pub cseq: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Store {
    /// Adds or refreshes a binding (same trunk, AOR and contact).
    pub async fn save_binding(&self, binding: &Binding) -> StoreResult<()> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM registrations WHERE trunk_sid = ? AND aor = ? AND contact = ?")
            .bind(&binding.trunk_sid)
            .bind(&binding.aor)
            .bind(&binding.contact)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO registrations (trunk_sid, aor, contact, source, call_id, cseq, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&binding.trunk_sid)
        .bind(&binding.aor)
        .bind(&binding.contact)
        .bind(&binding.source)
        .bind(&binding.call_id)
        .bind(binding.cseq)
        .bind(binding.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes one contact, or every contact of the AOR when `contact` is None (`Contact: *`).
    pub async fn remove_bindings(
        &self,
        trunk_sid: &str,
        aor: &str,
        contact: Option<&str>,
    ) -> StoreResult<u64> {
        let _w = self.write.lock().await;
        let result = match contact {
            Some(contact) => {
                sqlx::query(
                    "DELETE FROM registrations WHERE trunk_sid = ? AND aor = ? AND contact = ?",
                )
                .bind(trunk_sid)
                .bind(aor)
                .bind(contact)
                .execute(&self.pool)
                .await?
            }
            None => {
                sqlx::query("DELETE FROM registrations WHERE trunk_sid = ? AND aor = ?")
                    .bind(trunk_sid)
                    .bind(aor)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(result.rows_affected())
    }

    /// Bindings still valid at `now_secs`, oldest AOR first.
    pub async fn bindings(&self, now_secs: i64) -> StoreResult<Vec<Binding>> {
        Ok(sqlx::query_as(
            "SELECT * FROM registrations WHERE expires_at > ? ORDER BY trunk_sid, aor, contact",
        )
        .bind(now_secs)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Forgets expired bindings; returns how many.
    pub async fn purge_expired_bindings(&self, now_secs: i64) -> StoreResult<u64> {
        let _w = self.write.lock().await;
        let result = sqlx::query("DELETE FROM registrations WHERE expires_at <= ?")
            .bind(now_secs)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, expires_at: i64) -> Binding {
        Binding {
            trunk_sid: "TR1".into(),
            aor: "sip:pbx@example.com".into(),
            contact: contact.into(),
            source: "udp:203.0.113.5:5060".into(),
            call_id: "c1".into(),
            cseq: 1,
            expires_at,
        }
    }

    #[tokio::test]
    async fn save_refresh_remove_and_expire() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store
            .save_binding(&binding("sip:pbx@10.0.0.5:5060", 1000))
            .await
            .unwrap();
        store
            .save_binding(&binding("sip:pbx@10.0.0.6:5060", 2000))
            .await
            .unwrap();
        // Refreshing replaces, never duplicates.
        store
            .save_binding(&binding("sip:pbx@10.0.0.5:5060", 3000))
            .await
            .unwrap();
        let live = store.bindings(1500).await.unwrap();
        assert_eq!(live.len(), 2);
        assert!(live.iter().any(|b| b.expires_at == 3000));
        assert_eq!(store.bindings(2500).await.unwrap().len(), 1);
        assert_eq!(
            store
                .remove_bindings("TR1", "sip:pbx@example.com", Some("sip:pbx@10.0.0.6:5060"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.purge_expired_bindings(4000).await.unwrap(), 1);
        assert!(store.bindings(0).await.unwrap().is_empty());
        store.save_binding(&binding("a", 10)).await.unwrap();
        store.save_binding(&binding("b", 10)).await.unwrap();
        assert_eq!(
            store
                .remove_bindings("TR1", "sip:pbx@example.com", None)
                .await
                .unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn bindings_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("vg-reg-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("s.db").display());
        {
            let store = Store::open(&url).await.unwrap();
            store
                .save_binding(&binding("sip:pbx@10.0.0.5:5060", i64::MAX))
                .await
                .unwrap();
            store.close().await;
        }
        let store = Store::open(&url).await.unwrap();
        assert_eq!(store.bindings(0).await.unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
