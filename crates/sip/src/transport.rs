//! SIP over UDP, TCP and TLS: listeners that turn bytes into [`Incoming`] messages, and a
//! [`Sender`] that puts bytes back on the wire (responses over the connection they came on)
//! and opens connections of its own ([`Sender::connect`]), served exactly like accepted ones.
//!
//! Bad input is dealt with here, where the bytes are: an answerable malformed request gets
//! `400 <what was wrong>`, an unparseable datagram is dropped and counted, and a stream whose
//! framing is lost is closed. Nothing here waits on a call, so one peer cannot stall another.

mod delivery;
mod listener;
mod outbound;
mod stream;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, info};

use crate::limits::{ConnectionCounts, StreamLimits};
use crate::message::{self, Message};

use listener::{accept_loop, StreamContext};
pub use outbound::client_tls_config;
use stream::Connections;
use udp::serve_udp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Udp,
    Tcp,
    Tls,
}

impl TransportKind {
    pub fn is_reliable(self) -> bool {
        !matches!(self, TransportKind::Udp)
    }

    /// As written in Via and in `transport=` URI parameters.
    pub fn as_via(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
        }
    }
}

/// Where a message came from, and so where its answers go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub transport: TransportKind,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The stream connection it arrived on (None for UDP).
    pub connection: Option<u64>,
}

#[derive(Debug)]
pub struct Incoming {
    pub message: Message,
    pub source: Source,
}

/// Receives every well-formed message. Called on the transport's task: it must not block.
pub trait Handler: Send + Sync + 'static {
    fn on_message(&self, incoming: Incoming);

    /// Asked once per accepted TCP/TLS connection, before anything is read from it (and again
    /// after a TLS handshake): false closes it at once. Keep it cheap: it runs in the accept loop.
    fn accepts_connection_from(&self, _ip: IpAddr) -> bool {
        true
    }
}

/// Counters of what the transports refused.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub datagrams_dropped: AtomicU64,
    pub bad_requests_answered: AtomicU64,
    pub streams_closed_on_error: AtomicU64,
    pub send_failures: AtomicU64,
    /// Accepted TCP/TLS connections open now (handshaking included).
    pub connections_open: AtomicU64,
    /// Accepted and closed at once: over `max_connections` or `max_connections_per_ip`.
    pub connections_refused: AtomicU64,
    /// Accepted and closed at once: the handler declined the source address.
    pub connections_declined: AtomicU64,
    /// Closed by [`Sender::close_connections_from`].
    pub connections_closed_on_request: AtomicU64,
    /// Closed for taking too long: TLS handshake, first message, or idle.
    pub connections_timed_out: AtomicU64,
    /// Failed accepts (e.g. out of file descriptors), each followed by a pause.
    pub accept_errors: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub max_message_bytes: usize,
    pub user_agent: String,
    /// Caps and timeouts for accepted TCP/TLS connections.
    pub limits: StreamLimits,
}

#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The config key that named the address (e.g. `sip.udp`).
    pub key: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Local addresses actually bound (ports are known after binding port 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalAddrs {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
}

/// How [`Sender::connect`] opens connections to others.
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// The TLS client configuration; None means the webpki roots alone
    /// ([`client_tls_config`]`(None, false)`), built on first use.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bounds the TCP connect and the TLS handshake together.
    pub connect_timeout: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Puts SIP messages on the wire. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

/// A peer as [`Sender::connect`] names it.
type RemoteKey = (TransportKind, SocketAddr);

struct SenderInner {
    udp: Option<Arc<UdpSocket>>,
    connections: Mutex<Connections>,
    stats: Arc<TransportStats>,
    user_agent: String,
    /// Where every connection's messages go, accepted or opened by us.
    handler: Arc<dyn Handler>,
    next_id: AtomicU64,
    max_message_bytes: usize,
    outbound: OutboundConfig,
    default_tls_client: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    /// One connection attempt at a time per remote, so concurrent callers share it.
    connecting: Mutex<HashMap<RemoteKey, Arc<tokio::sync::Mutex<()>>>>,
    limits: StreamLimits,
    /// Accepted connections open, in all and per source IP.
    accepted: Arc<Mutex<ConnectionCounts>>,
    /// The zero of the writers' last-write stamps (milliseconds since).
    epoch: Instant,
}

impl Sender {
    /// Sends a response to a request that arrived from `source`.
    pub fn send_response(&self, request_headers: &message::Headers, source: &Source, bytes: Bytes) {
        let target = message::response_target(
            request_headers,
            source.remote,
            source.transport.is_reliable(),
        );
        self.send_to(source, target, bytes);
    }

    /// Sends bytes back along `source`: the same stream connection, or UDP to `target`.
    pub fn send_to(&self, source: &Source, target: SocketAddr, bytes: Bytes) {
        let sent = match (source.transport, source.connection) {
            (TransportKind::Udp, _) => match &self.inner.udp {
                Some(sock) => sock.try_send_to(&bytes, target).is_ok(),
                None => false,
            },
            (_, Some(id)) => self
                .connections()
                .by_id
                .get(&id)
                .is_some_and(|c| c.tx.try_send(bytes).is_ok()),
            (_, None) => false,
        };
        if !sent {
            self.inner
                .stats
                .send_failures
                .fetch_add(1, Ordering::Relaxed);
            debug!(%target, transport = ?source.transport, "could not send SIP message");
        }
    }

    pub fn stats(&self) -> &TransportStats {
        &self.inner.stats
    }

    /// Closes every accepted TCP/TLS connection from `ip` (not those we opened): each stops
    /// reading at once and is closed once the answers already queued on it are written.
    /// Returns how many were asked to close.
    pub fn close_connections_from(&self, ip: IpAddr) -> usize {
        let connections = self.connections();
        let mut asked = 0;
        for connection in connections.by_id.values() {
            if let (Some(close), true) = (&connection.close, connection.remote.ip() == ip) {
                if !close.is_requested() {
                    close.request();
                    asked += 1;
                }
            }
        }
        asked
    }

    pub fn user_agent(&self) -> &str {
        &self.inner.user_agent
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn bind_error(key: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> BindError {
    move |source| BindError { key, addr, source }
}

/// Binds every configured transport and starts serving; messages go to `handler`, including
/// those arriving on connections opened later with [`Sender::connect`] (set up by `outbound`).
pub async fn start(
    config: ListenConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    outbound: OutboundConfig,
    handler: Arc<dyn Handler>,
) -> Result<(Sender, LocalAddrs), BindError> {
    let mut local = LocalAddrs::default();
    let udp = match config.udp {
        Some(addr) => {
            let sock = UdpSocket::bind(addr)
                .await
                .map_err(bind_error("sip.udp", addr))?;
            local.udp = sock.local_addr().ok();
            Some(Arc::new(sock))
        }
        None => None,
    };
    let tcp = match config.tcp {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(bind_error("sip.tcp", addr))?;
            local.tcp = l.local_addr().ok();
            Some(l)
        }
        None => None,
    };
    let tls_listener = match (config.tls, tls) {
        (Some(addr), Some(tls_config)) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(bind_error("sip.tls", addr))?;
            local.tls = l.local_addr().ok();
            Some((l, tokio_rustls::TlsAcceptor::from(tls_config)))
        }
        _ => None,
    };
    let sender = Sender {
        inner: Arc::new(SenderInner {
            udp: udp.clone(),
            connections: Mutex::new(Connections::default()),
            stats: Arc::new(TransportStats::default()),
            user_agent: config.user_agent.clone(),
            handler: handler.clone(),
            next_id: AtomicU64::new(1),
            max_message_bytes: config.max_message_bytes,
            outbound,
            default_tls_client: std::sync::OnceLock::new(),
            connecting: Mutex::new(HashMap::new()),
            limits: config.limits,
            accepted: Arc::new(Mutex::new(ConnectionCounts::default())),
            epoch: Instant::now(),
        }),
    };
    if let (Some(sock), Some(addr)) = (udp, local.udp) {
        tokio::spawn(serve_udp(
            sock,
            addr,
            sender.clone(),
            handler.clone(),
            config.max_message_bytes,
        ));
        info!(%addr, "SIP listening on UDP");
    }
    if let (Some(l), Some(addr)) = (tcp, local.tcp) {
        let ctx = StreamContext {
            kind: TransportKind::Tcp,
            local: addr,
            sender: sender.clone(),
        };
        tokio::spawn(accept_loop(l, ctx, |stream| async move { Ok(stream) }));
        info!(%addr, "SIP listening on TCP");
    }
    if let (Some((l, acceptor)), Some(addr)) = (tls_listener, local.tls) {
        let ctx = StreamContext {
            kind: TransportKind::Tls,
            local: addr,
            sender: sender.clone(),
        };
        let handshake_timeout = config.limits.tls_handshake_timeout;
        tokio::spawn(accept_loop(l, ctx, move |stream| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(result) => result,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                }
            }
        }));
        info!(%addr, "SIP listening on TLS");
    }
    Ok((sender, local))
}

#[cfg(test)]
mod tests;
