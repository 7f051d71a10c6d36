//! Calls in progress: a row per call a node has up, from admission to the call's record, so
//! that a start after a crash can close out what the last run left (see `calls_in_progress`
//! in the migrations).

use super::{Store, StoreResult};

/// What the store keeps of a call that is up.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CallInProgress {
    pub call_sid: String,
    pub node: String,
    pub call_id: String,
    pub trunk_sid: Option<String>,
    pub number: String,
    /// Where the caller's requests came from ("203.0.113.5:5060").
    pub remote: String,
    /// "UDP", "TCP" or "TLS".
    pub transport: String,
    pub direction: String,
    /// Unix milliseconds.
    pub started_at: i64,
    pub answered_at: Option<i64>,
}

/// One change to the calls in progress; changes are written in batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallChange {
    Started(CallInProgress),
    Answered {
        call_sid: String,
        at: i64,
    },
    /// The call's record is written: the row goes.
    Ended {
        call_sid: String,
    },
}

impl Store {
    /// Writes a batch of changes in one transaction, in order (an `Answered` or `Ended` for a
    /// call whose `Started` is in the same batch is fine).
    pub async fn apply_call_changes(&self, changes: &[CallChange]) -> StoreResult<()> {
        let _w = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        for change in changes {
            match change {
                CallChange::Started(c) => {
                    sqlx::query(
                        "INSERT OR REPLACE INTO calls_in_progress (call_sid, node, call_id, trunk_sid, \
                         number, remote, transport, direction, started_at, answered_at) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&c.call_sid)
                    .bind(&c.node)
                    .bind(&c.call_id)
                    .bind(&c.trunk_sid)
                    .bind(&c.number)
                    .bind(&c.remote)
                    .bind(&c.transport)
                    .bind(&c.direction)
                    .bind(c.started_at)
                    .bind(c.answered_at)
                    .execute(&mut *tx)
                    .await?;
                }
                CallChange::Answered { call_sid, at } => {
                    sqlx::query("UPDATE calls_in_progress SET answered_at = ? WHERE call_sid = ?")
                        .bind(at)
                        .bind(call_sid)
                        .execute(&mut *tx)
                        .await?;
                }
                CallChange::Ended { call_sid } => {
                    sqlx::query("DELETE FROM calls_in_progress WHERE call_sid = ?")
                        .bind(call_sid)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The calls `node` had up, oldest first.
    pub async fn calls_in_progress(&self, node: &str) -> StoreResult<Vec<CallInProgress>> {
        Ok(sqlx::query_as(
            "SELECT * FROM calls_in_progress WHERE node = ? ORDER BY started_at, call_sid",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(sid: &str, node: &str, started_at: i64) -> CallInProgress {
        CallInProgress {
            call_sid: sid.into(),
            node: node.into(),
            call_id: format!("{sid}@pbx"),
            trunk_sid: Some("TR1".into()),
            number: "+14155550100".into(),
            remote: "203.0.113.5:5060".into(),
            transport: "UDP".into(),
            direction: "inbound".into(),
            started_at,
            answered_at: None,
        }
    }

    #[tokio::test]
    async fn a_call_stays_from_start_to_record_and_each_node_sees_its_own() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store
            .apply_call_changes(&[
                CallChange::Started(call("B", "node-1", 2_000)),
                CallChange::Started(call("A", "node-1", 1_000)),
                CallChange::Started(call("C", "node-2", 1_500)),
                CallChange::Answered {
                    call_sid: "A".into(),
                    at: 1_800,
                },
            ])
            .await
            .unwrap();
        let up = store.calls_in_progress("node-1").await.unwrap();
        assert_eq!(
            up.iter().map(|c| c.call_sid.as_str()).collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert_eq!(up[0].answered_at, Some(1_800));
        assert_eq!(up[1].answered_at, None);

        store
            .apply_call_changes(&[CallChange::Ended {
                call_sid: "A".into(),
            }])
            .await
            .unwrap();
        let up = store.calls_in_progress("node-1").await.unwrap();
        assert_eq!(up, vec![call("B", "node-1", 2_000)]);
        assert_eq!(store.calls_in_progress("node-2").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_call_started_and_ended_in_one_batch_leaves_nothing() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        store
            .apply_call_changes(&[
                CallChange::Started(call("A", "n", 1)),
                CallChange::Answered {
                    call_sid: "A".into(),
                    at: 2,
                },
                CallChange::Ended {
                    call_sid: "A".into(),
                },
            ])
            .await
            .unwrap();
        assert!(store.calls_in_progress("n").await.unwrap().is_empty());
    }
}
