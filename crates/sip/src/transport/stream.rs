//! TCP and TLS connections, accepted or opened by us: the table that finds each one, and the
//! tasks that write its queued messages and read it until it closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::delivery::deliver;
use super::listener::Accepted;
use super::{RemoteKey, Sender, Source, TransportKind};
use crate::framing::{Frame, Framer, FramingError};
use crate::limits::IdleClock;

/// An open stream connection, accepted or opened by us.
pub(super) struct Connection {
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) transport: TransportKind,
    pub(super) remote: SocketAddr,
    pub(super) local: SocketAddr,
    /// None for connections we opened.
    pub(super) close: Option<Arc<CloseSignal>>,
}

/// Tells an accepted connection's reader to stop; its queued answers are still written.
#[derive(Default)]
pub(super) struct CloseSignal {
    requested: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CloseSignal {
    pub(super) fn request(&self) {
        self.requested.store(true, Ordering::Relaxed);
        // A stored permit: a reader between two reads still sees it.
        self.notify.notify_one();
    }

    pub(super) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(super) struct Connections {
    pub(super) by_id: HashMap<u64, Connection>,
    /// The connection to reuse for a remote (the newest when there are several).
    pub(super) by_remote: HashMap<RemoteKey, u64>,
}

impl Sender {
    /// Registers an open stream (so that [`send_to`](Self::send_to) reaches it at once) and
    /// serves it on its own task: the one path for accepted connections (holding their
    /// `slot` in the counts) and opened ones (None).
    pub(super) fn attach_stream<S>(&self, stream: S, source: Source, slot: Option<Accepted>)
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

/// One stream connection as its reading task holds it.
struct ServedStream {
    source: Source,
    clock: IdleClock,
    /// When the writer last wrote, in milliseconds since [`super::SenderInner::epoch`].
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
