//! SIP signalling for voicegate: transports, transactions, dialogs and SDP offer/answer.

pub mod sdp;
pub mod transaction;
