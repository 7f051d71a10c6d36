//! SIP over UDP, TCP and TLS: listeners that turn bytes into [`Incoming`] messages, and a
//! [`Sender`] that puts bytes back on the wire (responses over the connection they came on).
//!
//! Bad input is dealt with here, where the bytes are: an answerable malformed request gets
//! `400 <what was wrong>`, an unparseable datagram is dropped and counted, and a stream whose
//! framing is lost is closed. Nothing here waits on a call, so one peer cannot stall another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::framing::{self, Frame};
use crate::message::{self, Message, ParseError, Request};

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
}

/// Counters of what the transports refused.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub datagrams_dropped: AtomicU64,
    pub bad_requests_answered: AtomicU64,
    pub streams_closed_on_error: AtomicU64,
    pub send_failures: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub max_message_bytes: usize,
    pub user_agent: String,
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

/// Puts SIP messages on the wire. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<SenderInner>,
}

struct SenderInner {
    udp: Option<Arc<UdpSocket>>,
    connections: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    stats: Arc<TransportStats>,
    user_agent: String,
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
            (_, Some(id)) => {
                let connections = self
                    .inner
                    .connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                connections
                    .get(&id)
                    .is_some_and(|tx| tx.try_send(bytes).is_ok())
            }
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

    pub fn user_agent(&self) -> &str {
        &self.inner.user_agent
    }
}

fn bind_error(key: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> BindError {
    move |source| BindError { key, addr, source }
}

/// Binds every configured transport and starts serving; messages go to `handler`.
pub async fn start(
    config: ListenConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
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
            connections: Mutex::new(HashMap::new()),
            stats: Arc::new(TransportStats::default()),
            user_agent: config.user_agent.clone(),
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
    let next_id = Arc::new(AtomicU64::new(1));
    let max = config.max_message_bytes;
    if let (Some(l), Some(addr)) = (tcp, local.tcp) {
        let ctx = StreamContext {
            kind: TransportKind::Tcp,
            local: addr,
            sender: sender.clone(),
            handler: handler.clone(),
            next_id: next_id.clone(),
            max,
        };
        tokio::spawn(accept_loop(l, ctx, |stream| async move { Ok(stream) }));
        info!(%addr, "SIP listening on TCP");
    }
    if let (Some((l, acceptor)), Some(addr)) = (tls_listener, local.tls) {
        let ctx = StreamContext {
            kind: TransportKind::Tls,
            local: addr,
            sender: sender.clone(),
            handler: handler.clone(),
            next_id,
            max,
        };
        tokio::spawn(accept_loop(l, ctx, move |stream| {
            let acceptor = acceptor.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
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

/// What every connection of one stream listener shares.
struct StreamContext {
    kind: TransportKind,
    local: SocketAddr,
    sender: Sender,
    handler: Arc<dyn Handler>,
    next_id: Arc<AtomicU64>,
    max: usize,
}

/// Accepts connections, sets each up with `open` (TLS handshake, or nothing for TCP) on its
/// own task, then serves it.
async fn accept_loop<S, F, Fut>(listener: TcpListener, ctx: StreamContext, open: F)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let source = Source {
            transport: ctx.kind,
            remote,
            local: ctx.local,
            connection: Some(ctx.next_id.fetch_add(1, Ordering::Relaxed)),
        };
        let (sender, handler, max) = (ctx.sender.clone(), ctx.handler.clone(), ctx.max);
        let opening = open(stream);
        tokio::spawn(async move {
            match opening.await {
                Ok(stream) => serve_stream(stream, source, sender, handler, max).await,
                Err(e) => {
                    debug!(%remote, error = %e, transport = ?source.transport, "connection setup failed")
                }
            }
        });
    }
}

async fn serve_udp(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    sender: Sender,
    handler: Arc<dyn Handler>,
    max: usize,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, remote) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port unreachable shows up here on some systems: not fatal.
            Err(e) => {
                debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        let datagram = &buf[..len];
        if datagram.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // keep-alive
        }
        let source = Source {
            transport: TransportKind::Udp,
            remote,
            local,
            connection: None,
        };
        if len > max {
            drop_datagram(&sender, remote, "larger than sip.max_message_bytes");
            continue;
        }
        deliver(datagram, source, &sender, handler.as_ref());
    }
}

fn drop_datagram(sender: &Sender, remote: SocketAddr, why: &str) {
    let n = sender
        .inner
        .stats
        .datagrams_dropped
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    debug!(%remote, why, dropped_total = n, "dropped unparseable SIP datagram");
}

/// Parses one message and hands it on; returns false when a stream must be closed.
fn deliver(bytes: &[u8], source: Source, sender: &Sender, handler: &dyn Handler) -> bool {
    match message::parse(bytes) {
        Ok(Message::Request(mut request)) => {
            message::stamp_received(&mut request.headers, source.remote);
            handler.on_message(Incoming {
                message: Message::Request(request),
                source,
            });
            true
        }
        Ok(response) => {
            handler.on_message(Incoming {
                message: response,
                source,
            });
            true
        }
        Err(ParseError::BadRequest {
            status,
            reason,
            request,
        }) => {
            answer_bad_request(sender, &source, *request, status, &reason);
            true
        }
        Err(ParseError::BadResponse(why)) => {
            debug!(remote = %source.remote, why, "dropped malformed SIP response");
            true
        }
        Err(ParseError::Unparseable(why)) => {
            if source.transport == TransportKind::Udp {
                drop_datagram(sender, source.remote, &why);
            }
            false
        }
    }
}

fn answer_bad_request(
    sender: &Sender,
    source: &Source,
    mut request: Request,
    status: u16,
    reason: &str,
) {
    let n = sender
        .inner
        .stats
        .bad_requests_answered
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    debug!(remote = %source.remote, status, reason, bad_requests_total = n, "answering bad request");
    if request.method == "ACK" {
        return; // ACKs are never answered
    }
    message::stamp_received(&mut request.headers, source.remote);
    let response = request
        .response(status, reason)
        .header("Server", sender.user_agent());
    sender.send_response(&request.headers, source, response.to_bytes());
}

async fn serve_stream<S>(
    stream: S,
    source: Source,
    sender: Sender,
    handler: Arc<dyn Handler>,
    max: usize,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let id = source.connection.unwrap_or_default();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    sender
        .inner
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    let write_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    let mut buf = BytesMut::with_capacity(8192);
    let outcome = 'read: loop {
        loop {
            match framing::check(&buf, max) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive(n)) => {
                    // A double-CRLF ping gets a single-CRLF pong (RFC 5626 §3.5.1).
                    if n >= 4 {
                        sender.send_to(&source, source.remote, Bytes::from_static(b"\r\n"));
                    }
                    buf.advance(n);
                }
                Ok(Frame::Message(n)) => {
                    let frame = buf.split_to(n);
                    if !deliver(&frame, source, &sender, handler.as_ref()) {
                        break 'read Err("unparseable message".to_string());
                    }
                }
                Err(e) => break 'read Err(e.to_string()),
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    if let Err(why) = outcome {
        sender
            .inner
            .stats
            .streams_closed_on_error
            .fetch_add(1, Ordering::Relaxed);
        warn!(remote = %source.remote, transport = ?source.transport, why, "closing SIP connection");
    }
    sender
        .inner
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    write_task.abort();
}
