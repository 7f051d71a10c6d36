//! What each call does, decided without doing any I/O: the [`Call`] over a [`call::env::CallEnv`]
//! that sends, resolves and runs the media for it; its dialog legs as plain data with time
//! passed in and bytes polled out.
//!
//! A leg is a dialog seen from both sides: [`Incoming`] answers the far end's requests the
//! same way for every call shape, [`Outgoing`] carries ours (BYE, NOTIFY, re-INVITE). The
//! caller's leg ([`CallerLeg`]) starts from its INVITE; a leg we place ([`OutboundLeg`]) from
//! ours; the other party of a B2BUA call ([`Peer`]) tries its next hops in turn.

pub mod call;
pub mod caller;
pub mod flow;
pub mod hop;
pub mod incoming;
pub mod outbound;
pub mod outgoing;
pub mod peer;
pub mod record;
pub mod route;
pub mod settings;
pub mod transfer;

pub use call::Call;
pub use caller::{CallerEvent, CallerLeg, CallerRequest, CallerState};
pub use hop::{moves_on, with_user, NextHop, Target};
pub use incoming::{Answer, Arrival, Incoming, Transmit};
pub use outbound::{Hop, InviteParams, OutState, OutboundEvent, OutboundLeg, SessionDue};
pub use outgoing::{Identity, Outgoing, OutgoingEvent};
pub use peer::{AfterFailure, Failure, Peer, PeerDeadline, PeerRole};
pub use record::CallRecord;
pub use transfer::{take_refer, ReferContext};

#[cfg(test)]
mod testing;
