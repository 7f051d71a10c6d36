//! The calls this node has up, mirrored in the store, so that a start after a crash or
//! `kill -9` closes out what the last run left: each such call gets its record, with the end
//! cause "interrupted".
//!
//! Calls never wait for the store: changes go through a bounded queue to one writer task that
//! writes them in batches, one transaction each. A change that finds the queue full is
//! dropped and counted; the worst it does is a missing or a spurious close-out record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use voicegate_call::call::env::CallStart;
use voicegate_call::CallRecord;
use voicegate_control::{CallChange, CallInProgress, Store};

use crate::clock::unix_millis;

/// Changes waiting for the writer; at a few per call this is seconds of call setups.
const QUEUE: usize = 4096;
/// Most changes written in one transaction.
const BATCH: usize = 256;

/// The handle calls use to report their start, answer and end.
pub struct CallsInProgress {
    node: String,
    queue: mpsc::Sender<CallChange>,
    /// Changes dropped because the queue was full or the writer had stopped.
    pub dropped: AtomicU64,
}

impl CallsInProgress {
    /// Starts the writer task for `node`'s calls.
    pub fn start(store: Arc<Store>, node: String) -> Self {
        let (queue, changes) = mpsc::channel(QUEUE);
        tokio::spawn(write_changes(store, changes));
        CallsInProgress {
            node,
            queue,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn started(&self, call: &CallStart<'_>) {
        self.send(CallChange::Started(CallInProgress {
            call_sid: call.call_sid.to_string(),
            node: self.node.clone(),
            call_id: call.call_id.to_string(),
            trunk_sid: call.trunk_sid.map(str::to_string),
            number: call.number.to_string(),
            remote: call.remote.to_string(),
            transport: call.transport.to_string(),
            direction: call.direction.to_string(),
            started_at: unix_millis(),
            answered_at: None,
        }));
    }

    pub fn answered(&self, call_sid: &str) {
        self.send(CallChange::Answered {
            call_sid: call_sid.to_string(),
            at: unix_millis(),
        });
    }

    /// The call's record is written.
    pub fn ended(&self, call_sid: &str) {
        self.send(CallChange::Ended {
            call_sid: call_sid.to_string(),
        });
    }

    fn send(&self, change: CallChange) {
        if self.queue.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_changes(store: Arc<Store>, mut changes: mpsc::Receiver<CallChange>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_error_logged: Option<tokio::time::Instant> = None;
    while changes.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(e) = store.apply_call_changes(&batch).await {
            // A store that is down fails every batch: one line a minute says so.
            let now = tokio::time::Instant::now();
            if last_error_logged.is_none_or(|at| now - at >= Duration::from_secs(60)) {
                last_error_logged = Some(now);
                tracing::error!(error = %e, changes = batch.len(), "could not write calls in progress to the store");
            }
        }
        batch.clear();
    }
}

/// Writes the record of every call `node` had up when it last stopped without ending them,
/// and forgets them. Returns how many there were.
pub async fn close_out_interrupted(store: &Store, node: &str) -> Result<usize, String> {
    let calls = store
        .calls_in_progress(node)
        .await
        .map_err(|e| e.to_string())?;
    let now = unix_millis();
    for call in &calls {
        let duration_ms = call.answered_at.map_or(0, |a| now.saturating_sub(a).max(0));
        // Every call's record, with what the store knew: how long it really lasted is unknown
        // past the crash, so the duration is up to now.
        let mut r = CallRecord::new(&call.call_id, &call.number);
        r.call_sid = call.call_sid.clone();
        r.remote = call.remote.clone();
        r.transport = call.transport.clone();
        if let Some(trunk) = &call.trunk_sid {
            r.trunk = trunk.clone();
        }
        r.direction = call.direction.clone();
        r.status = if call.answered_at.is_some() { 200 } else { 0 };
        r.setup_ms = call
            .answered_at
            .map_or(0, |a| a.saturating_sub(call.started_at).max(0)) as u64;
        r.duration_ms = duration_ms as u64;
        r.started_at_ms = call.started_at;
        r.end = "interrupted".into();
        crate::call::record::log(&r);
    }
    let ended: Vec<CallChange> = calls
        .iter()
        .map(|c| CallChange::Ended {
            call_sid: c.call_sid.clone(),
        })
        .collect();
    store
        .apply_call_changes(&ended)
        .await
        .map_err(|e| e.to_string())?;
    Ok(calls.len())
}

/// This node's name in the store when `store.node` is empty: the host name.
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "voicegate".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_reported_through_the_queue_reach_the_store_and_a_restart_closes_them_out() {
        let store = Arc::new(Store::open("sqlite::memory:").await.unwrap());
        let calls = CallsInProgress::start(store.clone(), "node-a".into());
        let remote = "203.0.113.5:5060".parse().unwrap();
        for sid in ["one", "two", "three"] {
            calls.started(&CallStart {
                call_sid: sid,
                call_id: "c@pbx",
                trunk_sid: Some("TR1"),
                number: "+14155550100",
                remote,
                transport: "UDP",
                direction: "inbound",
            });
        }
        calls.answered("one");
        calls.ended("two");
        // The writer is a task: wait until it has written what was queued.
        let mut up = Vec::new();
        for _ in 0..200 {
            up = store.calls_in_progress("node-a").await.unwrap();
            if up.len() == 2 && up.iter().any(|c| c.answered_at.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut sids: Vec<_> = up.iter().map(|c| c.call_sid.as_str()).collect();
        sids.sort();
        assert_eq!(sids, ["one", "three"]);
        assert_eq!(calls.dropped.load(Ordering::Relaxed), 0);

        // Another node's calls are not this node's to close out.
        assert_eq!(close_out_interrupted(&store, "node-b").await, Ok(0));
        assert_eq!(close_out_interrupted(&store, "node-a").await, Ok(2));
        assert!(store.calls_in_progress("node-a").await.unwrap().is_empty());
        assert_eq!(close_out_interrupted(&store, "node-a").await, Ok(0));
    }
}
