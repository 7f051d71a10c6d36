//! The WebSocket client to the bot: URL handling, TLS, Basic auth, handshake timeout and retry.
//!
//! A bot is named by a `ws://` or `wss://` URL. Credentials in the URL (`user:pass@`) become an
//! `Authorization: Basic` header and are removed from the URL that is sent; the query parameter
//! `sample-rate` (or `sample_rate`) picks the Exotel session rate; the other query parameters
//! (at most 3 pairs, 256 characters in all) become the `custom_parameters` of the `start`
//! message. [`connect`] bounds each handshake attempt by a timeout and retries once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// An open WebSocket connection to a bot, plain or TLS.
pub type BotSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Session sample rates a bot URL may ask for (Exotel: `sample-rate`).
pub const SAMPLE_RATES: [u32; 3] = [8000, 16000, 24000];
/// The sample rate when the URL names none.
pub const DEFAULT_SAMPLE_RATE: u32 = 8000;
/// At most this many custom parameters are passed on (Exotel's limit).
pub const MAX_CUSTOM_PARAMETERS: usize = 3;
/// At most this many characters (keys and values together) of custom parameters are passed on.
pub const MAX_CUSTOM_PARAMETER_CHARS: usize = 256;

/// Errors of the bot WebSocket client. None of them carries the URL's credentials.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The bot URL is malformed or not `ws://` / `wss://`.
    #[error("invalid bot URL: {0}")]
    InvalidUrl(String),
    /// The URL asks for a sample rate other than 8000, 16000 or 24000.
    #[error("unsupported sample rate `{0}` in bot URL (use 8000, 16000 or 24000)")]
    SampleRate(String),
    /// The TLS client configuration could not be built (e.g. unreadable extra CA file).
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Every handshake attempt failed or timed out; `reason` is the last attempt's.
    #[error("WebSocket handshake with the bot failed after {attempts} attempt(s): {reason}")]
    Handshake { attempts: u32, reason: String },
}

/// A parsed bot URL: what to connect to, with what header, and the session parameters it sets.
#[derive(Clone, PartialEq, Eq)]
pub struct BotUrl {
    /// The URL sent in the request: credentials and fragment removed, query kept.
    url: url::Url,
    sample_rate: u32,
    custom_parameters: Vec<(String, String)>,
    /// `Basic base64(user:pass)`, from the URL's userinfo.
    authorization: Option<String>,
}

impl BotUrl {
    /// Parse a bot URL (`ws://` or `wss://` only).
    pub fn parse(input: &str) -> Result<BotUrl, WsError> {
        // url::ParseError never echoes its input, so credentials cannot leak into the message.
        let mut url =
            url::Url::parse(input.trim()).map_err(|e| WsError::InvalidUrl(e.to_string()))?;
        match url.scheme() {
            "ws" | "wss" => {}
            other => {
                return Err(WsError::InvalidUrl(format!(
                    "scheme `{other}` is not supported (use ws:// or wss://)"
                )))
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(WsError::InvalidUrl("no host".into()));
        }

        let authorization = if !url.username().is_empty() || url.password().is_some() {
            let user = percent_decode(url.username());
            let pass = percent_decode(url.password().unwrap_or(""));
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            // Setting these can only fail for URLs that cannot have a host, excluded above.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            Some(format!("Basic {token}"))
        } else {
            None
        };
        // A WebSocket URI has no fragment (RFC 6455, 3).
        url.set_fragment(None);

        let mut sample_rate = DEFAULT_SAMPLE_RATE;
        let mut custom_parameters = Vec::new();
        let mut chars = 0usize;
        let mut dropped = Vec::new();
        for (key, value) in url.query_pairs() {
            if key == "sample-rate" || key == "sample_rate" {
                sample_rate = value
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|rate| SAMPLE_RATES.contains(rate))
                    .ok_or_else(|| WsError::SampleRate(value.to_string()))?;
                continue;
            }
            let len = key.chars().count() + value.chars().count();
            if custom_parameters.len() >= MAX_CUSTOM_PARAMETERS
                || chars + len > MAX_CUSTOM_PARAMETER_CHARS
            {
                dropped.push(key.into_owned());
                continue;
            }
            chars += len;
            custom_parameters.push((key.into_owned(), value.into_owned()));
        }
        let parsed = BotUrl {
            url,
            sample_rate,
            custom_parameters,
            authorization,
        };
        if !dropped.is_empty() {
            // Values may hold tokens: name the keys only.
            tracing::warn!(
                bot = %parsed,
                dropped = ?dropped,
                "bot URL has more than {MAX_CUSTOM_PARAMETERS} custom parameters or more than \
                 {MAX_CUSTOM_PARAMETER_CHARS} characters of them; keeping the first ones"
            );
        }
        Ok(parsed)
    }

    /// The full URL sent to the bot (credentials removed, query kept).
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// Whether this is a `wss://` URL.
    pub fn is_tls(&self) -> bool {
        self.url.scheme() == "wss"
    }

    /// The session sample rate: 8000 (default), 16000 or 24000.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The query parameters other than the sample rate, percent-decoded, in URL order.
    pub fn custom_parameters(&self) -> &[(String, String)] {
        &self.custom_parameters
    }

    /// The `Authorization` header value (`Basic ...`) built from the URL's credentials.
    /// Never log it.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// The handshake request: the URL plus the `Authorization` header when there is one.
    pub fn request(&self) -> Result<Request, WsError> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| WsError::InvalidUrl(e.to_string()))?;
        if let Some(auth) = &self.authorization {
            let mut value = HeaderValue::from_str(auth)
                .map_err(|_| WsError::InvalidUrl("credentials are not a valid header".into()))?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }
}

impl FromStr for BotUrl {
    type Err = WsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BotUrl::parse(s)
    }
}

/// For logs: scheme, host, port and path; no credentials and no query (which may hold tokens).
impl fmt::Display for BotUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}",
            self.url.scheme(),
            self.url.host_str().unwrap_or("")
        )?;
        if let Some(port) = self.url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(self.url.path())?;
        if self.url.query().is_some() {
            f.write_str("?…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BotUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotUrl")
            .field("url", &self.url.as_str())
            .field("sample_rate", &self.sample_rate)
            .field("custom_parameters", &self.custom_parameters)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Decode `%XX` escapes (userinfo of a URL); invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to connect to bots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Bound on each attempt: TCP connect, TLS and the WebSocket handshake together.
    pub handshake_timeout: Duration,
    /// Further attempts after a failed or timed-out one.
    pub retries: u32,
    /// PEM certificates trusted for `wss://` besides the webpki roots (for private bots).
    pub extra_ca_file: Option<PathBuf>,
    /// Largest message (and frame) accepted from the bot; a larger one ends the bot step with
    /// Close 1009. tungstenite's own default (64 MiB) would let one bot take that much memory.
    pub max_message_bytes: usize,
}

/// tungstenite's read buffer for a bot's socket. It zeroes the buffer's free part before every
/// read, so its default (128 KiB) cost a 128 KiB memset per read and 128 KiB per call. Bot
/// messages are a few KB (100 ms of 8 kHz audio is about 2.2 KB in base64); a larger one still
/// arrives, the buffer grows for it.
pub(crate) const READ_BUFFER_BYTES: usize = 8 * 1024;
/// tungstenite writes its queued frames once they exceed this. Every send flushes, so it only
/// matters for frames fed together: small, so those cannot make the write buffer (which keeps its
/// largest size) reach tungstenite's default of 128 KiB.
pub(crate) const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// The WebSocket buffers for a bot's connection, either side (see [`READ_BUFFER_BYTES`]).
pub(crate) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
}

/// Owned text frames for the bot without an allocation each: a frame built in a reused `String`
/// is copied into one buffer and split off it, and its space is taken back once the writer has
/// sent the frame and dropped it. (A `String` per frame cost an allocation and a free each.)
///
/// A frame still held when the buffer runs out (the bot is not reading) makes it start a new
/// buffer; the old one is freed with the last of its frames.
#[derive(Debug)]
pub struct TextFrames {
    buf: BytesMut,
}

/// [`TextFrames`]' buffer: a few usual frames (100 ms of 8 kHz audio in base64 is about
/// 2.2 KB), so a frame still in the writer's hands rarely forces a new one; larger frames make
/// it grow. Per call, so kept small.
const TEXT_FRAMES_BYTES: usize = 8 * 1024;

impl TextFrames {
    /// An empty buffer of [`TEXT_FRAMES_BYTES`] (larger frames make it grow).
    pub fn new() -> Self {
        TextFrames {
            buf: BytesMut::with_capacity(TEXT_FRAMES_BYTES),
        }
    }

    /// `text` as an owned text frame's payload (`Message::Text`).
    pub fn frame(&mut self, text: &str) -> Utf8Bytes {
        // Takes back the space of the frames already dropped when it runs out.
        self.buf.extend_from_slice(text.as_bytes());
        let bytes = self.buf.split().freeze();
        // A copy of a `&str` is UTF-8: the check (about 100 ns for a frame) always passes, and
        // keeps this free of `unsafe`.
        Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from(text.to_owned()))
    }
}

impl Default for TextFrames {
    fn default() -> Self {
        Self::new()
    }
}

/// The default [`ClientConfig::max_message_bytes`]: ten times Exotel's largest chunk (100 KB,
/// base64 and JSON around it), about 30 s of 16 kHz audio in one message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            handshake_timeout: Duration::from_secs(10),
            retries: 1,
            extra_ca_file: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// The rustls client configuration for `wss://` bots: ring provider, the webpki roots and the
/// PEM certificates of `extra_ca_file`. Build it once and share it.
pub fn tls_connector(extra_ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, WsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| WsError::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
        let mut added = 0usize;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert
                .map_err(|e| WsError::Tls(format!("bad PEM in CA file {}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| {
                WsError::Tls(format!(
                    "bad certificate in CA file {}: {e}",
                    path.display()
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(WsError::Tls(format!(
                "no PEM certificate in CA file {}",
                path.display()
            )));
        }
        tracing::debug!(file = %path.display(), added, "extra CA certificates for bots loaded");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Open the WebSocket to the bot: each attempt bounded by `config.handshake_timeout`, up to
/// `1 + config.retries` attempts. For `wss://` the TLS configuration is built from
/// `config.extra_ca_file` (see [`tls_connector`]).
pub async fn connect(url: &BotUrl, config: &ClientConfig) -> Result<BotSocket, WsError> {
    let tls = if url.is_tls() {
        Some(tls_connector(config.extra_ca_file.as_deref())?)
    } else {
        None
    };
    connect_with_tls(url, config, tls).await
}

/// [`connect`] with a TLS configuration built beforehand (used for `wss://` only; `None` then
/// means the webpki roots alone). `config.extra_ca_file` is not read.
pub async fn connect_with_tls(
    url: &BotUrl,
    config: &ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<BotSocket, WsError> {
    let connector = if url.is_tls() {
        Some(Connector::Rustls(match tls {
            Some(tls) => tls,
            None => tls_connector(None)?,
        }))
    } else {
        None
    };
    let attempts = config.retries.saturating_add(1);
    let mut reason = String::new();
    let limits = socket_config()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    for attempt in 1..=attempts {
        let request = url.request()?;
        let connector = connector.clone();
        let handshake = async move {
            let stream = open_tcp(&request).await?;
            tokio_tungstenite::client_async_tls_with_config(
                request,
                stream,
                Some(limits),
                connector,
            )
            .await
        };
        match tokio::time::timeout(config.handshake_timeout, handshake).await {
            Ok(Ok((socket, response))) => {
                tracing::debug!(bot = %url, attempt, status = %response.status(), "bot WebSocket open");
                return Ok(socket);
            }
            Ok(Err(e)) => reason = e.to_string(),
            Err(_) => {
                reason = format!(
                    "no handshake within {} ms",
                    config.handshake_timeout.as_millis()
                )
            }
        }
        tracing::warn!(bot = %url, attempt, of = attempts, %reason, "bot WebSocket handshake failed");
    }
    Err(WsError::Handshake { attempts, reason })
}

/// The kernel's send buffer for a bot's connection. Linux would grow it to 4 MiB for a bot
/// that stops reading; this bounds what one such bot holds, and makes it show as stalled
/// within seconds. Twice the bandwidth-delay product of a 24 kHz stream at 500 ms round trip.
const BOT_SEND_BUFFER: u32 = 128 * 1024;

/// The TCP connection to the request's host: each of its addresses in turn, as tungstenite's
/// own connect does, with [`BOT_SEND_BUFFER`] and no Nagle delay.
async fn open_tcp(request: &Request) -> Result<TcpStream, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::error::UrlError;
    use tokio_tungstenite::tungstenite::Error;
    let uri = request.uri();
    let host = uri.host().ok_or(Error::Url(UrlError::NoHostName))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_send_buffer_size(BOT_SEND_BUFFER)?;
        match socket.connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the bot's host has no address",
        )
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{Request as SRequest, Response};
    use tokio_tungstenite::tungstenite::Message;

    #[test]
    fn credentials_become_basic_header_and_are_stripped() {
        let url = BotUrl::parse("wss://alice:s%40cret@bot.example.com:8443/ws?x=1").unwrap();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s@cret")
        );
        assert_eq!(url.authorization(), Some(expected.as_str()));
        assert_eq!(url.as_str(), "wss://bot.example.com:8443/ws?x=1");
        assert!(url.is_tls());
        let request = url.request().unwrap();
        assert_eq!(
            request.headers().get(AUTHORIZATION).unwrap(),
            expected.as_str()
        );
        assert!(!request.uri().to_string().contains("alice"));
        // Neither Debug nor Display shows the secret.
        let debug = format!("{url:?}");
        assert!(
            !debug.contains("s@cret") && !debug.contains(&expected),
            "{debug}"
        );
        assert!(debug.contains("<redacted>"));
        let shown = url.to_string();
        assert_eq!(shown, "wss://bot.example.com:8443/ws?…");
    }

    #[test]
    fn no_credentials_no_header() {
        let url = BotUrl::parse("ws://127.0.0.1:9000/bot").unwrap();
        assert_eq!(url.authorization(), None);
        assert!(url
            .request()
            .unwrap()
            .headers()
            .get(AUTHORIZATION)
            .is_none());
        assert!(!url.is_tls());
        assert_eq!(url.sample_rate(), 8000);
        assert!(url.custom_parameters().is_empty());
        // user without password
        let url = BotUrl::parse("ws://bob@h/").unwrap();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:")
        );
        assert_eq!(url.authorization(), Some(expected.as_str()));
    }

    #[test]
    fn sample_rate_variants() {
        assert_eq!(BotUrl::parse("ws://h/").unwrap().sample_rate(), 8000);
        assert_eq!(
            BotUrl::parse("ws://h/?sample-rate=16000")
                .unwrap()
                .sample_rate(),
            16000
        );
        assert_eq!(
            BotUrl::parse("ws://h/?sample_rate=24000")
                .unwrap()
                .sample_rate(),
            24000
        );
        let url = BotUrl::parse("ws://h/?sample-rate=8000&a=b").unwrap();
        assert_eq!(url.sample_rate(), 8000);
        assert_eq!(url.custom_parameters(), &[("a".into(), "b".into())]);
        // the rate stays in the URL sent
        assert_eq!(url.as_str(), "ws://h/?sample-rate=8000&a=b");
    }

    #[test]
    fn bad_sample_rate_is_named() {
        for bad in ["44100", "abc", ""] {
            let err = BotUrl::parse(&format!("ws://h/?sample-rate={bad}")).unwrap_err();
            assert!(
                matches!(&err, WsError::SampleRate(v) if v == bad),
                "{err:?}"
            );
            assert!(err.to_string().contains(&format!("`{bad}`")));
        }
    }

    #[test]
    fn custom_parameters_decoded_and_limited() {
        let url =
            BotUrl::parse("ws://h/p?lang=en%2DIN&name=J%C3%BCrgen+M&sample-rate=16000").unwrap();
        assert_eq!(
            url.custom_parameters(),
            &[
                ("lang".to_string(), "en-IN".to_string()),
                ("name".to_string(), "Jürgen M".to_string())
            ]
        );
        assert_eq!(url.sample_rate(), 16000);

        let url = BotUrl::parse("ws://h/?a=1&b=2&c=3&d=4&e=5").unwrap();
        let keys: Vec<&str> = url
            .custom_parameters()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["a", "b", "c"]);

        let long = "v".repeat(250);
        let url = BotUrl::parse(&format!("ws://h/?a={long}&bb=12345&c=1")).unwrap();
        let keys: Vec<&str> = url
            .custom_parameters()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        // 251 + 7 > 256: `bb` is dropped, `c` (2 more) still fits
        assert_eq!(keys, ["a", "c"]);
    }

    #[test]
    fn bad_urls() {
        for bad in [
            "http://h/",
            "https://u:p@h/",
            "sip:bot@h",
            "not a url",
            "",
            "ws://",
        ] {
            let err = BotUrl::parse(bad).unwrap_err();
            assert!(matches!(err, WsError::InvalidUrl(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains(":p@"), "{err}");
        }
        assert!("ws://h/".parse::<BotUrl>().is_ok());
    }

    #[test]
    fn percent_decode_edges() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn client_config_defaults() {
        let config = ClientConfig::default();
        assert_eq!(config.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.retries, 1);
        assert_eq!(config.extra_ca_file, None);
        assert_eq!(config.max_message_bytes, 1 << 20);
    }

    #[tokio::test]
    async fn silent_server_times_out_twice() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(stream); // never answer, never close
            }
        });
        let url = BotUrl::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
        let config = ClientConfig {
            handshake_timeout: Duration::from_millis(150),
            ..ClientConfig::default()
        };
        let started = std::time::Instant::now();
        let err = connect(&url, &config).await.unwrap_err();
        let elapsed = started.elapsed();
        match &err {
            WsError::Handshake { attempts, reason } => {
                assert_eq!(*attempts, 2);
                assert!(reason.contains("150 ms"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        server.abort();
    }

    #[tokio::test]
    async fn refused_connection_is_retried_once() {
        // Bind then drop: the port refuses connections.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = BotUrl::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
        let err = connect(&url, &ClientConfig::default()).await.unwrap_err();
        assert!(
            matches!(err, WsError::Handshake { attempts: 2, .. }),
            "{err:?}"
        );
        let no_retry = ClientConfig {
            retries: 0,
            ..ClientConfig::default()
        };
        let err = connect(&url, &no_retry).await.unwrap_err();
        assert!(
            matches!(err, WsError::Handshake { attempts: 1, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn second_attempt_succeeds_after_dropped_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            // First connection: closed at once, the handshake fails.
            drop(listener.accept().await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            ws.send(Message::text("hello")).await.unwrap();
            let _ = ws.next().await;
        });
        let url = BotUrl::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
        let mut socket = connect(&url, &ClientConfig::default()).await.unwrap();
        let msg = socket.next().await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), "hello");
        socket.close(None).await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn messages_larger_than_the_read_buffer_arrive() {
        // Well past READ_BUFFER_BYTES, well within max_message_bytes: the buffer grows.
        let big = "x".repeat(40 * READ_BUFFER_BYTES);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = big.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            ws.send(Message::text(sent.clone())).await.unwrap();
            let back = ws.next().await.unwrap().unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), sent);
            let _ = ws.next().await;
        });
        let url = BotUrl::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
        let mut socket = connect(&url, &ClientConfig::default()).await.unwrap();
        let msg = socket.next().await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), big);
        socket.send(Message::text(big)).await.unwrap();
        socket.close(None).await.unwrap();
        server.await.unwrap();
    }

    #[test]
    fn text_frames_reuse_their_buffer_once_frames_are_dropped() {
        let mut frames = TextFrames::new();
        let text = "y".repeat(3000);
        let first = frames.frame(&text);
        assert_eq!(first.as_str(), text);
        let start = first.as_ptr();
        drop(first);
        // Dropped as soon as built (the writer keeping up): the frames cycle through the same
        // buffer.
        for i in 0..100 {
            let text = format!("{i}:{text}");
            let frame = frames.frame(&text);
            assert_eq!(frame.as_str(), text);
            let offset = frame.as_ptr() as usize - start as usize;
            assert!(offset + frame.len() <= TEXT_FRAMES_BYTES, "frame {i} moved");
        }
        // Frames held stay intact while later ones are built, in whatever buffer.
        let held: Vec<_> = (0..20)
            .map(|i| (i, frames.frame(&format!("{i}{text}"))))
            .collect();
        for (i, frame) in &held {
            assert_eq!(frame.as_str(), format!("{i}{text}"));
        }
        // A frame larger than the buffer is whole.
        let big = "z".repeat(5 * TEXT_FRAMES_BYTES);
        assert_eq!(frames.frame(&big).as_str(), big);
        assert_eq!(frames.frame("").as_str(), "");
    }

    /// What the test server saw of the handshake request.
    #[derive(Default, Clone)]
    struct Seen {
        uri: String,
        authorization: Option<String>,
    }

    async fn accept_recording(
        stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        seen: Arc<Mutex<Seen>>,
    ) -> WebSocketStream<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> {
        // The error type is tungstenite's, not ours.
        #[allow(clippy::result_large_err)]
        let callback = move |req: &SRequest, resp: Response| {
            let mut seen = seen.lock().unwrap();
            seen.uri = req.uri().to_string();
            seen.authorization = req
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string());
            Ok(resp)
        };
        tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn server_receives_authorization_header() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let server_seen = seen.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = accept_recording(stream, server_seen).await;
            let msg = ws.next().await.unwrap().unwrap();
            ws.send(msg).await.unwrap();
            let _ = ws.next().await;
        });
        let url = BotUrl::parse(&format!(
            "ws://bot:pa%3Ass@127.0.0.1:{port}/voice?sample-rate=16000"
        ))
        .unwrap();
        let mut socket = connect(&url, &ClientConfig::default()).await.unwrap();
        socket.send(Message::text("ping")).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), "ping");
        socket.close(None).await.unwrap();
        server.await.unwrap();

        let seen = seen.lock().unwrap().clone();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bot:pa:ss")
        );
        assert_eq!(seen.authorization.as_deref(), Some(expected.as_str()));
        assert_eq!(seen.uri, "/voice?sample-rate=16000");
    }

    /// A self-signed certificate for `localhost`, written as PEM to a fresh file.
    fn self_signed(tag: &str) -> (rcgen::CertifiedKey, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let path = std::env::temp_dir().join(format!(
            "voicegate-ws-test-{}-{tag}.pem",
            std::process::id()
        ));
        std::fs::write(&path, certified.cert.pem()).unwrap();
        (certified, path)
    }

    /// A wss server for one or more connections; each gets a greeting text.
    async fn wss_server(certified: &rcgen::CertifiedKey) -> (u16, tokio::task::JoinHandle<()>) {
        use tokio_rustls::rustls;
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return; // client refused our certificate
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    let _ = ws.send(Message::text("secure hello")).await;
                    let _ = ws.next().await;
                });
            }
        });
        (port, handle)
    }

    #[tokio::test]
    async fn wss_with_extra_ca_is_accepted() {
        let (certified, ca_file) = self_signed("ok");
        let (port, server) = wss_server(&certified).await;
        let url = BotUrl::parse(&format!("wss://localhost:{port}/bot")).unwrap();
        let config = ClientConfig {
            extra_ca_file: Some(ca_file.clone()),
            ..ClientConfig::default()
        };
        let mut socket = connect(&url, &config).await.unwrap();
        assert!(matches!(socket.get_ref(), MaybeTlsStream::Rustls(_)));
        let msg = socket.next().await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), "secure hello");
        socket.close(None).await.unwrap();
        server.abort();
        let _ = std::fs::remove_file(ca_file);
    }

    #[tokio::test]
    async fn wss_without_extra_ca_is_refused() {
        let (certified, ca_file) = self_signed("refused");
        let (port, server) = wss_server(&certified).await;
        let url = BotUrl::parse(&format!("wss://localhost:{port}/bot")).unwrap();
        let config = ClientConfig {
            retries: 0,
            ..ClientConfig::default()
        };
        let err = connect(&url, &config).await.unwrap_err();
        match &err {
            WsError::Handshake { attempts, reason } => {
                assert_eq!(*attempts, 1);
                assert!(reason.to_lowercase().contains("certificate"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        server.abort();
        let _ = std::fs::remove_file(ca_file);
    }

    #[test]
    fn tls_connector_errors() {
        let missing = std::env::temp_dir().join("voicegate-ws-test-missing-ca.pem");
        assert!(matches!(
            tls_connector(Some(&missing)),
            Err(WsError::Tls(_))
        ));
        let empty = std::env::temp_dir().join(format!(
            "voicegate-ws-test-{}-empty.pem",
            std::process::id()
        ));
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let err = tls_connector(Some(&empty)).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_file(empty);
        assert!(tls_connector(None).is_ok());
    }
}
