//! From received bytes to the handler, for every transport: a parsed message is handed on, a
//! malformed request is answered `400`, and anything else is dropped or closes the stream.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tracing::debug;

use super::{Handler, Incoming, Sender, Source, TransportKind};
use crate::message::{self, Message, Method, ParseError, Request};

/// Parses one message and hands it on; returns false when a stream must be closed.
pub(super) fn deliver(
    bytes: &[u8],
    source: Source,
    sender: &Sender,
    handler: &dyn Handler,
) -> bool {
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

/// Counts and logs a datagram that is no SIP message we take.
pub(super) fn drop_datagram(sender: &Sender, remote: SocketAddr, why: &str) {
    let n = sender
        .inner
        .stats
        .datagrams_dropped
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    debug!(%remote, why, dropped_total = n, "dropped unparseable SIP datagram");
}
