//! Serves the trunk API with bounded connections: `axum::serve` has no cap and no timeout, so
//! 2,000 idle connections would stay open forever.
//!
//! - At most `max_connections` at once: when full, the loop stops accepting, and new
//!   connections wait in the kernel's backlog until one closes.
//! - At most `max_connections_per_ip` from one source address: more are closed at once, so one
//!   client cannot take every slot.
//! - A connection that does not complete a request head within `idle_timeout` (counted from
//!   its opening, or from the previous answer on a keep-alive connection) is closed: this ends
//!   both idle keep-alive connections and slowly dripped headers.
//! - Accept errors (e.g. out of file descriptors) are retried after a growing pause, never in
//!   a spin.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub idle_timeout: Duration,
}

/// Open connections per source address, within a cap. Plain data: the caller locks it.
#[derive(Debug, Default)]
pub struct PerIpCounts {
    max_per_ip: usize,
    open: HashMap<IpAddr, usize>,
}

impl PerIpCounts {
    pub fn new(max_per_ip: usize) -> Self {
        PerIpCounts {
            max_per_ip,
            open: HashMap::new(),
        }
    }

    /// Counts a new connection from `ip`; false (and nothing counted) if `ip` is at its cap.
    pub fn try_open(&mut self, ip: IpAddr) -> bool {
        let open = self.open.entry(ip).or_insert(0);
        if *open >= self.max_per_ip {
            return false;
        }
        *open += 1;
        true
    }

    /// Uncounts a connection that [`PerIpCounts::try_open`] counted.
    pub fn close(&mut self, ip: IpAddr) {
        if let Some(open) = self.open.get_mut(&ip) {
            *open -= 1;
            if *open == 0 {
                // Keeps the map as small as the set of clients connected right now.
                self.open.remove(&ip);
            }
        }
    }

    /// Connections open from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ip).copied().unwrap_or(0)
    }
}

/// Uncounts its connection when the connection task ends, however it ends.
struct PerIpSlot {
    counts: Arc<Mutex<PerIpCounts>>,
    ip: IpAddr,
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        lock(&self.counts).close(self.ip);
    }
}

fn lock(counts: &Mutex<PerIpCounts>) -> std::sync::MutexGuard<'_, PerIpCounts> {
    // The counts stay consistent even if a holder panicked: every update is one step.
    counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first pause after an accept error, and the longest.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` within `limits`, until the listener fails for good (never).
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(Mutex::new(PerIpCounts::new(limits.max_connections_per_ip)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // Waiting here (not refusing) leaves new connections in the backlog while full.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) => {
                tracing::warn!(error = %e, pause = ?backoff, "trunk API: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let ip = peer.ip();
        if !lock(&per_ip).try_open(ip) {
            tracing::debug!(%peer, "trunk API: too many connections from this address; closed");
            continue; // dropping the stream closes it
        }
        let ip_slot = PerIpSlot {
            counts: per_ip.clone(),
            ip,
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "trunk API connection ended");
            }
            drop((slot, ip_slot));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::PerIpCounts;
    use std::net::IpAddr;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_address_at_its_cap_is_refused_and_others_are_not() {
        let mut counts = PerIpCounts::new(2);
        assert!(counts.try_open(A));
        assert!(counts.try_open(A));
        assert!(!counts.try_open(A));
        assert_eq!(counts.open(A), 2, "a refusal counts nothing");
        assert!(counts.try_open(B));
    }

    #[test]
    fn a_closed_connection_frees_its_slot() {
        let mut counts = PerIpCounts::new(1);
        assert!(counts.try_open(A));
        counts.close(A);
        assert_eq!(counts.open(A), 0);
        assert!(counts.try_open(A));
    }

    #[test]
    fn closing_an_address_never_counted_changes_nothing() {
        let mut counts = PerIpCounts::new(1);
        counts.close(A);
        assert_eq!(counts.open(A), 0);
        assert!(counts.try_open(A));
        assert!(!counts.try_open(A));
    }
}
