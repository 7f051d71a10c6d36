//! SIP over UDP, TCP and TLS: listeners that turn bytes into [`Incoming`] messages, and a
//! [`Sender`] that puts bytes back on the wire (responses over the connection they came on)
//! and opens connections of its own ([`Sender::connect`]), served exactly like accepted ones.
//!
//! Bad input is dealt with here, where the bytes are: an answerable malformed request gets
//! `400 <what was wrong>`, an unparseable datagram is dropped and counted, and a stream whose
//! framing is lost is closed. Nothing here waits on a call, so one peer cannot stall another.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::framing::{Frame, Framer, FramingError};
use crate::limits::{
    AcceptBackoff, ConnectionCounts, ConnectionSlot, IdleClock, LogLimiter, StreamLimits,
};
use crate::message::{self, Message, Method, ParseError, Request};

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

/// An open stream connection, accepted or opened by us.
struct Connection {
    tx: mpsc::Sender<Bytes>,
    transport: TransportKind,
    remote: SocketAddr,
    local: SocketAddr,
    /// None for connections we opened.
    close: Option<Arc<CloseSignal>>,
}

/// Tells an accepted connection's reader to stop; its queued answers are still written.
#[derive(Default)]
struct CloseSignal {
    requested: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CloseSignal {
    fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
        // A stored permit: a reader between two reads still sees it.
        self.notify.notify_one();
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Connections {
    by_id: HashMap<u64, Connection>,
    /// The connection to reuse for a remote (the newest when there are several).
    by_remote: HashMap<RemoteKey, u64>,
}

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

    /// Where to send requests to `remote` over `transport`: for UDP our socket; for TCP and TLS
    /// a live connection to it (opened by either side), else a new one, served like an
    /// accepted connection so that what arrives on it reaches the handler. TLS verifies the
    /// certificate against `server_name`, or the IP address when None. Send on the returned
    /// [`Source`] with [`send_to`](Self::send_to).
    pub async fn connect(
        &self,
        transport: TransportKind,
        remote: SocketAddr,
        server_name: Option<&str>,
    ) -> std::io::Result<Source> {
        if transport == TransportKind::Udp {
            let local = match &self.inner.udp {
                Some(sock) => {
                    // send_to never waits, so make sure the socket can take a datagram: a
                    // fresh one is not known to be writable until the reactor has seen it.
                    sock.writable().await?;
                    sock.local_addr()?
                }
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "no UDP socket (sip.udp is not set)",
                    ))
                }
            };
            return Ok(Source {
                transport,
                remote,
                local,
                connection: None,
            });
        }
        if let Some(source) = self.live_connection(transport, remote) {
            return Ok(source);
        }
        let key = (transport, remote);
        let gate = self
            .inner
            .connecting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let result = {
            let _turn = gate.lock().await;
            match self.live_connection(transport, remote) {
                Some(source) => Ok(source),
                None => self.open(transport, remote, server_name).await,
            }
        };
        let mut connecting = self
            .inner
            .connecting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Forget the gate unless someone else is still waiting on it.
        if connecting
            .get(&key)
            .is_some_and(|g| Arc::ptr_eq(g, &gate) && Arc::strong_count(&gate) == 2)
        {
            connecting.remove(&key);
        }
        result
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn live_connection(&self, transport: TransportKind, remote: SocketAddr) -> Option<Source> {
        let connections = self.connections();
        let id = *connections.by_remote.get(&(transport, remote))?;
        let connection = connections.by_id.get(&id)?;
        if connection.tx.is_closed() {
            return None;
        }
        Some(Source {
            transport,
            remote,
            local: connection.local,
            connection: Some(id),
        })
    }

    async fn open(
        &self,
        transport: TransportKind,
        remote: SocketAddr,
        server_name: Option<&str>,
    ) -> std::io::Result<Source> {
        let tls = match transport {
            TransportKind::Tls => {
                let name = match server_name {
                    Some(name) => rustls::pki_types::ServerName::try_from(name.to_string())
                        .map_err(|e| {
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidInput,
                                format!("bad TLS server name {name:?}: {e}"),
                            )
                        })?,
                    None => rustls::pki_types::ServerName::from(remote.ip()),
                };
                Some((self.tls_client()?, name))
            }
            _ => None,
        };
        let opening = async {
            let stream = TcpStream::connect(remote).await?;
            let _ = stream.set_nodelay(true);
            let source = Source {
                transport,
                remote,
                local: stream.local_addr()?,
                connection: Some(self.inner.next_id.fetch_add(1, Ordering::Relaxed)),
            };
            match tls {
                Some((config, name)) => {
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, stream)
                        .await?;
                    self.attach_stream(stream, source, None);
                }
                None => self.attach_stream(stream, source, None),
            }
            Ok(source)
        };
        let timeout = self.inner.outbound.connect_timeout;
        let result = match tokio::time::timeout(timeout, opening).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting took longer than {timeout:?}"),
            )),
        };
        match &result {
            Ok(source) => {
                debug!(%remote, transport = ?transport, id = ?source.connection, "SIP connection opened")
            }
            Err(e) => debug!(%remote, transport = ?transport, error = %e, "SIP connection failed"),
        }
        result
    }

    fn tls_client(&self) -> std::io::Result<Arc<rustls::ClientConfig>> {
        if let Some(config) = &self.inner.outbound.tls {
            return Ok(config.clone());
        }
        if let Some(config) = self.inner.default_tls_client.get() {
            return Ok(config.clone());
        }
        let config = client_tls_config(None, false).map_err(std::io::Error::other)?;
        Ok(self.inner.default_tls_client.get_or_init(|| config).clone())
    }

    /// Registers an open stream (so that [`send_to`](Self::send_to) reaches it at once) and
    /// serves it on its own task: the one path for accepted connections (holding their
    /// `slot` in the counts) and opened ones (None).
    fn attach_stream<S>(&self, stream: S, source: Source, slot: Option<Accepted>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = source.connection.unwrap_or_default();
        let (reader, mut writer) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        let close = slot.as_ref().map(|_| Arc::new(CloseSignal::default()));
        {
            let mut connections = self.connections();
            connections.by_id.insert(
                id,
                Connection {
                    tx,
                    transport: source.transport,
                    remote: source.remote,
                    local: source.local,
                    close: close.clone(),
                },
            );
            connections
                .by_remote
                .insert((source.transport, source.remote), id);
        }
        let last_write = Arc::new(AtomicU64::new(0));
        let write_stamp = last_write.clone();
        let epoch = self.inner.epoch;
        let write_task = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
                write_stamp.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            let _ = writer.shutdown().await;
        });
        let now = Instant::now();
        let clock = match slot {
            Some(_) => IdleClock::accepted(now, &self.inner.limits),
            None => IdleClock::opened(now, &self.inner.limits),
        };
        let stream = ServedStream {
            source,
            clock,
            last_write,
            write_task,
            close,
            _slot: slot,
        };
        tokio::spawn(serve_stream(reader, stream, self.clone()));
    }

    fn detach_stream(&self, id: u64) {
        let mut connections = self.connections();
        let Some(gone) = connections.by_id.remove(&id) else {
            return;
        };
        let key = (gone.transport, gone.remote);
        if connections.by_remote.get(&key) == Some(&id) {
            // Fall back on another connection to the same remote, if one is open.
            let other = connections
                .by_id
                .iter()
                .find(|(_, c)| (c.transport, c.remote) == key)
                .map(|(other, _)| *other);
            match other {
                Some(other) => connections.by_remote.insert(key, other),
                None => connections.by_remote.remove(&key),
            };
        }
    }
}

/// A rustls client configuration for SIP over TLS: the ring provider, the webpki roots and the
/// PEM certificates in `extra_ca_pem` (for carriers with private CAs). `insecure_skip_verify`
/// accepts any certificate, for tests only. Build it once and share it.
pub fn client_tls_config(
    extra_ca_pem: Option<&[u8]>,
    insecure_skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if insecure_skip_verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("bad PEM in the CA certificates: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate among the CA certificates".into());
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// Accepts any server certificate but still checks the handshake signatures, so the session
/// is at least bound to the key the server showed. Tests only.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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

/// What every connection of one stream listener shares.
struct StreamContext {
    kind: TransportKind,
    local: SocketAddr,
    sender: Sender,
}

/// Accepts connections, sets each up with `open` (TLS handshake, or nothing for TCP) on its
/// own task, then serves it. Connections over the caps are closed at once; failed accepts
/// (out of descriptors, typically) are retried after a growing pause, never in a spin.
async fn accept_loop<S, F, Fut>(listener: TcpListener, ctx: StreamContext, open: F)
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
struct Accepted {
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
    if request.method == Method::Ack {
        return; // ACKs are never answered
    }
    message::stamp_received(&mut request.headers, source.remote);
    let response = request
        .response(status, reason)
        .header("Server", sender.user_agent());
    sender.send_response(&request.headers, source, response.to_bytes());
}

/// One stream connection as its reading task holds it.
struct ServedStream {
    source: Source,
    clock: IdleClock,
    /// When the writer last wrote, in milliseconds since [`SenderInner::epoch`].
    last_write: Arc<AtomicU64>,
    write_task: tokio::task::JoinHandle<()>,
    /// None for connections we opened.
    close: Option<Arc<CloseSignal>>,
    /// An accepted connection's place under the caps, given back when serving ends.
    _slot: Option<Accepted>,
}

/// Reads one stream connection until it closes, goes quiet too long, or loses its framing;
/// then forgets it.
async fn serve_stream<R>(mut reader: R, stream: ServedStream, sender: Sender)
where
    R: AsyncRead + Unpin,
{
    let ServedStream {
        source,
        mut clock,
        last_write,
        write_task,
        close,
        _slot,
    } = stream;
    let id = source.connection.unwrap_or_default();
    let max = sender.inner.max_message_bytes;
    let handler = sender.inner.handler.clone();
    let epoch = sender.inner.epoch;
    let mut buf = BytesMut::with_capacity(8192);
    let mut framer = Framer::default();
    let outcome = 'read: loop {
        loop {
            match framer.check(&buf, max) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive(n)) => {
                    // A double-CRLF ping gets a single-CRLF pong (RFC 5626 §3.5.1).
                    if n >= 4 {
                        sender.send_to(&source, source.remote, Bytes::from_static(b"\r\n"));
                    }
                    clock.on_activity(Instant::now());
                    buf.advance(n);
                }
                Ok(Frame::Message(n)) => {
                    clock.on_message(Instant::now());
                    let frame = buf.split_to(n);
                    if !deliver(&frame, source, &sender, handler.as_ref()) {
                        break 'read Err("unparseable message".to_string());
                    }
                    // Messages behind the one that got the connection closed are not read.
                    if close.as_ref().is_some_and(|c| c.is_requested()) {
                        break 'read closed_on_request(&sender, &source);
                    }
                }
                Err(FramingError::BadContentLength(head)) => {
                    // The header block alone still names the request: answer it with the
                    // parser's 400, then close (the body's end is unknown, RFC 3261 §18.3).
                    deliver(&buf[..head], source, &sender, handler.as_ref());
                    break 'read Err("Content-Length is not a number".to_string());
                }
                Err(e) => break 'read Err(e.to_string()),
            }
        }
        let read = loop {
            let reading =
                tokio::time::timeout_at(clock.deadline().into(), reader.read_buf(&mut buf));
            let read = match &close {
                Some(close) => tokio::select! {
                    biased;
                    _ = close.notify.notified() => {
                        break 'read closed_on_request(&sender, &source);
                    }
                    read = reading => read,
                },
                None => reading.await,
            };
            match read {
                Ok(read) => break read,
                Err(_) => {
                    let written = Duration::from_millis(last_write.load(Ordering::Relaxed));
                    clock.on_activity(epoch + written);
                    if let Some(why) = clock.expired(Instant::now()) {
                        sender
                            .inner
                            .stats
                            .connections_timed_out
                            .fetch_add(1, Ordering::Relaxed);
                        debug!(remote = %source.remote, transport = ?source.transport, why, "closing SIP connection");
                        break 'read Ok(());
                    }
                }
            }
        };
        match read {
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
    // Forgetting the connection drops its queue's sender, so the writer ends once it has
    // written what is queued: answers to the messages before a bad one still go out. A peer
    // that does not read cannot hold the connection open past the drain bound.
    sender.detach_stream(id);
    let mut write_task = write_task;
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut write_task)
        .await
        .is_err()
    {
        write_task.abort();
    }
}

/// Counts a close asked for with [`Sender::close_connections_from`]: not an error.
fn closed_on_request(sender: &Sender, source: &Source) -> Result<(), String> {
    sender
        .inner
        .stats
        .connections_closed_on_request
        .fetch_add(1, Ordering::Relaxed);
    debug!(remote = %source.remote, transport = ?source.transport, "closing SIP connection on request");
    Ok(())
}

/// How long queued answers may take to be written once a connection is closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands every message to the test.
    struct Collect(mpsc::UnboundedSender<Incoming>);

    impl Handler for Collect {
        fn on_message(&self, incoming: Incoming) {
            let _ = self.0.send(incoming);
        }
    }

    fn listen(udp: bool, tcp: bool, tls: bool) -> ListenConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        ListenConfig {
            udp: udp.then_some(any),
            tcp: tcp.then_some(any),
            tls: tls.then_some(any),
            max_message_bytes: 65_535,
            user_agent: "voicegate-test".into(),
            limits: StreamLimits::default(),
        }
    }

    async fn endpoint(
        config: ListenConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        outbound: OutboundConfig,
    ) -> (Sender, LocalAddrs, mpsc::UnboundedReceiver<Incoming>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (sender, local) = start(config, tls, outbound, Arc::new(Collect(tx)))
            .await
            .unwrap();
        (sender, local, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Incoming>) -> Incoming {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .expect("handler alive")
    }

    fn options(transport: TransportKind, branch: &str) -> Bytes {
        Bytes::from(format!(
            "OPTIONS sip:carrier@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/{} 127.0.0.1:5060;branch=z9hG4bK-{branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:gw@127.0.0.1>;tag=1\r\n\
             To: <sip:carrier@127.0.0.1>\r\n\
             Call-ID: {branch}@127.0.0.1\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            transport.as_via()
        ))
    }

    /// The client connects and asks; the server's answer comes back on the same connection;
    /// asking again reuses it, from either side.
    async fn exchange(
        client: &Sender,
        client_rx: &mut mpsc::UnboundedReceiver<Incoming>,
        server: &Sender,
        server_rx: &mut mpsc::UnboundedReceiver<Incoming>,
        transport: TransportKind,
        remote: SocketAddr,
        server_name: Option<&str>,
    ) {
        let source = client
            .connect(transport, remote, server_name)
            .await
            .unwrap();
        assert_eq!(source.transport, transport);
        assert_eq!(source.remote, remote);
        assert!(source.connection.is_some());
        assert_ne!(source.local.port(), 0);
        client.send_to(&source, source.remote, options(transport, "a"));

        let incoming = next(server_rx).await;
        let Message::Request(request) = incoming.message else {
            panic!("expected a request")
        };
        assert_eq!(request.method, "OPTIONS");
        assert_eq!(incoming.source.transport, transport);
        assert_eq!(incoming.source.remote, source.local);
        let response = request.response(200, "OK").to_bytes();
        server.send_response(&request.headers, &incoming.source, response);

        let answer = next(client_rx).await;
        let Message::Response(response) = answer.message else {
            panic!("expected a response")
        };
        assert_eq!(response.status, 200);
        assert_eq!(answer.source, source);

        // Reuse: the same connection again, and the server finds it too.
        let again = client
            .connect(transport, remote, server_name)
            .await
            .unwrap();
        assert_eq!(again.connection, source.connection);
        let back = server
            .connect(transport, incoming.source.remote, None)
            .await
            .unwrap();
        assert_eq!(back.connection, incoming.source.connection);
        server.send_to(&back, back.remote, options(transport, "b"));
        let Message::Request(request) = next(client_rx).await.message else {
            panic!("expected a request from the server")
        };
        assert_eq!(request.call_id(), "b@127.0.0.1");
        assert_eq!(client.stats().send_failures.load(Ordering::Relaxed), 0);
        assert_eq!(server.stats().send_failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn tcp_connect_send_and_reuse() {
        let (server, server_local, mut server_rx) =
            endpoint(listen(false, true, false), None, OutboundConfig::default()).await;
        let (client, _, mut client_rx) =
            endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
        let remote = server_local.tcp.unwrap();
        exchange(
            &client,
            &mut client_rx,
            &server,
            &mut server_rx,
            TransportKind::Tcp,
            remote,
            None,
        )
        .await;
    }

    #[tokio::test]
    async fn concurrent_connects_share_one_connection() {
        let (_server, server_local, _server_rx) =
            endpoint(listen(false, true, false), None, OutboundConfig::default()).await;
        let (client, _, _client_rx) =
            endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
        let remote = server_local.tcp.unwrap();
        let (a, b) = tokio::join!(
            client.connect(TransportKind::Tcp, remote, None),
            client.connect(TransportKind::Tcp, remote, None)
        );
        assert_eq!(a.unwrap().connection, b.unwrap().connection);
        assert!(client.inner.connecting.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn udp_connect_is_the_socket() {
        let (server, server_local, mut server_rx) =
            endpoint(listen(true, false, false), None, OutboundConfig::default()).await;
        let (client, client_local, mut client_rx) =
            endpoint(listen(true, false, false), None, OutboundConfig::default()).await;
        let remote = server_local.udp.unwrap();
        let source = client
            .connect(TransportKind::Udp, remote, None)
            .await
            .unwrap();
        assert_eq!(
            source,
            Source {
                transport: TransportKind::Udp,
                remote,
                local: client_local.udp.unwrap(),
                connection: None,
            }
        );
        client.send_to(&source, remote, options(TransportKind::Udp, "u"));
        let incoming = next(&mut server_rx).await;
        let Message::Request(request) = incoming.message else {
            panic!("expected a request")
        };
        // The Via's sent-by is not the client's port and there is no rport: answer to the
        // source address.
        server.send_to(
            &incoming.source,
            incoming.source.remote,
            request.response(200, "OK").to_bytes(),
        );
        assert!(matches!(
            next(&mut client_rx).await.message,
            Message::Response(r) if r.status == 200
        ));
        // A closed port is an error, not a hang.
        let refused = server
            .connect(TransportKind::Tcp, "127.0.0.1:1".parse().unwrap(), None)
            .await;
        assert!(refused.is_err());
        // Without a UDP socket there is nothing to send on.
        let (no_udp, _, _rx) =
            endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
        assert_eq!(
            no_udp
                .connect(TransportKind::Udp, remote, None)
                .await
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotConnected
        );
    }

    /// Hands every message to the test and declines the addresses the test lists.
    struct Gatekeeper {
        tx: mpsc::UnboundedSender<Incoming>,
        declined: Mutex<Vec<IpAddr>>,
    }

    impl Handler for Gatekeeper {
        fn on_message(&self, incoming: Incoming) {
            let _ = self.tx.send(incoming);
        }

        fn accepts_connection_from(&self, ip: IpAddr) -> bool {
            !self.declined.lock().unwrap().contains(&ip)
        }
    }

    fn request_call_id(incoming: Incoming) -> String {
        let Message::Request(request) = incoming.message else {
            panic!("expected a request")
        };
        request.call_id().to_string()
    }

    async fn connect_from(source_ip: &str, target: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{source_ip}:0").parse().unwrap())
            .unwrap();
        socket.connect(target).await.unwrap()
    }

    /// What the peer reads until the connection is closed (EOF or reset), None if it is still
    /// open after 2 s.
    async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .ok()?;
        Some(String::from_utf8_lossy(&got).into_owned())
    }

    #[tokio::test]
    async fn connections_from_an_address_are_closed_and_declined_on_request() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let gatekeeper = Arc::new(Gatekeeper {
            tx,
            declined: Mutex::new(Vec::new()),
        });
        let (server, local) = start(
            listen(false, true, false),
            None,
            OutboundConfig::default(),
            gatekeeper.clone(),
        )
        .await
        .unwrap();
        let tcp = local.tcp.unwrap();
        let blocked: IpAddr = "127.0.0.2".parse().unwrap();
        let mut first = connect_from("127.0.0.2", tcp).await;
        let mut second = connect_from("127.0.0.2", tcp).await;
        let mut other = connect_from("127.0.0.3", tcp).await;
        // Its pong shows the second connection is being served.
        second.write_all(b"\r\n\r\n").await.unwrap();
        let mut pong = [0u8; 2];
        second.read_exact(&mut pong).await.unwrap();

        // An answer queued just before the close is still written, then the connection closes.
        first
            .write_all(&options(TransportKind::Tcp, "c1"))
            .await
            .unwrap();
        let incoming = next(&mut rx).await;
        let Message::Request(request) = incoming.message else {
            panic!("expected a request")
        };
        server.send_response(
            &request.headers,
            &incoming.source,
            request.response(200, "OK").to_bytes(),
        );
        // A connection we opened to that address stays: only accepted ones are closed.
        let peer = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let outbound = server
            .connect(TransportKind::Tcp, peer.local_addr().unwrap(), None)
            .await
            .unwrap();
        let (_held, _) = peer.accept().await.unwrap();
        assert_eq!(server.close_connections_from(blocked), 2);
        assert_eq!(server.close_connections_from(blocked), 0, "asked once");
        let answer = read_to_close(&mut first).await.expect("closed");
        assert!(answer.starts_with("SIP/2.0 200 "), "{answer:?}");
        assert_eq!(read_to_close(&mut second).await.as_deref(), Some(""));
        let closed = &server.stats().connections_closed_on_request;
        for _ in 0..100 {
            if closed.load(Ordering::Relaxed) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(closed.load(Ordering::Relaxed), 2);
        assert!(server
            .live_connection(TransportKind::Tcp, outbound.remote)
            .is_some());

        // Another address is not touched.
        other
            .write_all(&options(TransportKind::Tcp, "c2"))
            .await
            .unwrap();
        assert_eq!(request_call_id(next(&mut rx).await), "c2@127.0.0.1");

        // Declined: closed at once, nothing read.
        gatekeeper.declined.lock().unwrap().push(blocked);
        let mut third = connect_from("127.0.0.2", tcp).await;
        let _ = third.write_all(&options(TransportKind::Tcp, "c3")).await;
        assert!(read_to_close(&mut third).await.is_some(), "closed at once");
        assert_eq!(
            server.stats().connections_declined.load(Ordering::Relaxed),
            1
        );
        // Accepted again once the handler says so.
        gatekeeper.declined.lock().unwrap().clear();
        let mut fourth = connect_from("127.0.0.2", tcp).await;
        fourth
            .write_all(&options(TransportKind::Tcp, "c4"))
            .await
            .unwrap();
        assert_eq!(request_call_id(next(&mut rx).await), "c4@127.0.0.1");
        assert!(
            rx.try_recv().is_err(),
            "the declined connection's request was not read"
        );
    }

    fn self_signed() -> (Arc<rustls::ServerConfig>, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_pem = certified.cert.pem();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        (Arc::new(config), cert_pem)
    }

    #[tokio::test]
    async fn tls_connect_send_and_reuse() {
        let (server_tls, ca_pem) = self_signed();
        let (server, server_local, mut server_rx) = endpoint(
            listen(false, false, true),
            Some(server_tls),
            OutboundConfig::default(),
        )
        .await;
        let outbound = OutboundConfig {
            tls: Some(client_tls_config(Some(ca_pem.as_bytes()), false).unwrap()),
            ..OutboundConfig::default()
        };
        let (client, _, mut client_rx) =
            endpoint(listen(false, false, false), None, outbound).await;
        let remote = server_local.tls.unwrap();
        exchange(
            &client,
            &mut client_rx,
            &server,
            &mut server_rx,
            TransportKind::Tls,
            remote,
            Some("localhost"),
        )
        .await;
    }

    #[tokio::test]
    async fn tls_certificate_is_checked() {
        let (server_tls, ca_pem) = self_signed();
        let (_server, server_local, _server_rx) = endpoint(
            listen(false, false, true),
            Some(server_tls),
            OutboundConfig::default(),
        )
        .await;
        let remote = server_local.tls.unwrap();
        // The webpki roots alone do not know a self-signed certificate.
        let (plain, _, _rx) =
            endpoint(listen(false, false, false), None, OutboundConfig::default()).await;
        assert!(plain
            .connect(TransportKind::Tls, remote, Some("localhost"))
            .await
            .is_err());
        // The right CA but the wrong name (the IP, which the certificate does not carry).
        let trusting = OutboundConfig {
            tls: Some(client_tls_config(Some(ca_pem.as_bytes()), false).unwrap()),
            ..OutboundConfig::default()
        };
        let (client, _, _rx) = endpoint(listen(false, false, false), None, trusting).await;
        assert!(client
            .connect(TransportKind::Tls, remote, None)
            .await
            .is_err());
        assert!(client
            .connect(TransportKind::Tls, remote, Some("bad name!"))
            .await
            .is_err());
        // Tests may skip verification.
        let insecure = OutboundConfig {
            tls: Some(client_tls_config(None, true).unwrap()),
            ..OutboundConfig::default()
        };
        let (client, _, _rx) = endpoint(listen(false, false, false), None, insecure).await;
        assert!(client
            .connect(TransportKind::Tls, remote, None)
            .await
            .is_ok());
        assert!(client_tls_config(Some(b"not pem"), false).is_err());
    }

    #[tokio::test]
    async fn handshake_that_never_ends_times_out() {
        // A TCP listener that accepts and never speaks TLS.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let remote = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let outbound = OutboundConfig {
            tls: Some(client_tls_config(None, true).unwrap()),
            connect_timeout: Duration::from_millis(200),
        };
        let (client, _, _rx) = endpoint(listen(false, false, false), None, outbound).await;
        let err = client
            .connect(TransportKind::Tls, remote, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        hold.abort();
    }
}
