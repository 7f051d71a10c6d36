//! The TCP and TLS listeners: accepting connections within the caps and the handler's say,
//! setting each up (TLS handshake) on its own task, and counting those open.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{Sender, Source, TransportKind, TransportStats};
use crate::limits::{AcceptBackoff, ConnectionSlot, LogLimiter};

/// What every connection of one stream listener shares.
pub(super) struct StreamContext {
    pub(super) kind: TransportKind,
    pub(super) local: SocketAddr,
    pub(super) sender: Sender,
}

/// Accepts connections, sets each up with `open` (TLS handshake, or nothing for TCP) on its
/// own task, then serves it. Connections over the caps are closed at once; failed accepts
/// (out of descriptors, typically) are retried after a growing pause, never in a spin.
pub(super) async fn accept_loop<S, F, Fut>(listener: TcpListener, ctx: StreamContext, open: F)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    let inner = &ctx.sender.inner;
    let mut backoff = AcceptBackoff::default();
    let mut error_log = LogLimiter::new(Duration::from_secs(10));
    let mut refusal_log = LogLimiter::new(Duration::from_secs(10));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => {
                backoff.on_success();
                accepted
            }
            Err(e) => {
                inner.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                let pause = backoff.on_error();
                if let Some(held_back) = error_log.allow(Instant::now()) {
                    warn!(transport = ?ctx.kind, error = %e, ?pause, held_back, "SIP accept failed");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if !inner.handler.accepts_connection_from(remote.ip()) {
            decline(&inner.stats, remote, ctx.kind);
            drop(stream);
            continue;
        }
        let slot = match ConnectionSlot::admit(&inner.accepted, remote.ip(), &inner.limits) {
            Ok(slot) => slot,
            Err(refusal) => {
                inner
                    .stats
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = refusal_log.allow(Instant::now()) {
                    warn!(%remote, transport = ?ctx.kind, ?refusal, held_back, "SIP connection refused");
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let source = Source {
            transport: ctx.kind,
            remote,
            local: ctx.local,
            connection: Some(inner.next_id.fetch_add(1, Ordering::Relaxed)),
        };
        let sender = ctx.sender.clone();
        let opening = open(stream);
        let held = Accepted {
            _slot: slot,
            _open: OpenCount::new(&inner.stats),
        };
        tokio::spawn(async move {
            match opening.await {
                // The source may have been declined during a TLS handshake.
                Ok(_) if !sender.inner.handler.accepts_connection_from(remote.ip()) => {
                    decline(&sender.inner.stats, remote, source.transport)
                }
                Ok(stream) => sender.attach_stream(stream, source, Some(held)),
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        sender
                            .inner
                            .stats
                            .connections_timed_out
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    debug!(%remote, error = %e, transport = ?source.transport, "connection setup failed")
                }
            }
        });
    }
}

/// Counts a connection the handler declined; the handler logs why it declines a source.
fn decline(stats: &TransportStats, remote: SocketAddr, transport: TransportKind) {
    stats.connections_declined.fetch_add(1, Ordering::Relaxed);
    debug!(%remote, ?transport, "SIP connection declined");
}

/// What an accepted connection holds until it closes: its place under the caps, and its
/// count in `connections_open`.
pub(super) struct Accepted {
    _slot: ConnectionSlot,
    _open: OpenCount,
}

/// Counts an accepted connection in `connections_open` until dropped.
struct OpenCount(Arc<TransportStats>);

impl OpenCount {
    fn new(stats: &Arc<TransportStats>) -> Self {
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}
