//! SIP signalling for voicegate: transports, transactions, dialogs and SDP offer/answer.
//!
//! Protocol pieces are plain data and functions ([`message`], [`accept`], [`framing`], [`limits`],
//! [`sdp`], [`transaction`], [`dialog`], [`contact`], [`info`]); only [`transport`] touches sockets.

pub mod accept;
pub mod contact;
pub mod dialog;
pub mod digest;
pub mod framing;
pub mod info;
pub mod limits;
pub mod message;
pub mod sdp;
pub mod session_timer;
pub mod transaction;
pub mod transport;
