//! The control plane: trunks, numbers and flows as data, and the admission decision for each INVITE.
//!
//! Two pieces, both plain data and functions with no I/O and no clock of their own:
//!
//! - [`model`]: the in-memory [`Snapshot`] of trunks and number mappings the SIP path reads.
//!   A later step fills it from the database and the REST API (see `trunk-api.md`).
//! - [`admission`]: [`Admission::decide`] answers one INVITE with [`Decision::Admit`],
//!   [`Decision::Challenge`] (401) or [`Decision::Reject`], and keeps each trunk's live counters
//!   (concurrent calls, calls per minute). Time is an argument (`now: Instant`), so tests drive
//!   it by hand.
//!
//! ```
//! use std::time::Instant;
//! use voicegate_control::{Admission, Decision, InviteFacts, IpNet, Mode, Snapshot, Trunk};
//!
//! let mut trunk = Trunk::new("TR1", "acme");
//! trunk.whitelisted.push(IpNet::parse("10.0.0.0/16").unwrap());
//! let snapshot = Snapshot { trunks: vec![trunk], numbers: vec![] };
//! let mut admission = Admission::new();
//! let facts = InviteFacts {
//!     source: "10.0.3.4".parse().unwrap(),
//!     dialled: "+919876543210",
//!     authenticated_trunk: None,
//!     offered_credentials: false,
//! };
//! // An unmapped E.164 number from a known trunk is an outbound PSTN call on that trunk.
//! assert_eq!(
//!     admission.decide(&snapshot, &facts, Instant::now()),
//!     Decision::Admit { trunk_sid: "TR1".into(), mode: Mode::Pstn }
//! );
//! admission.call_ended("TR1");
//! ```

pub mod admission;
pub mod api;
pub mod model;
pub mod store;

pub use admission::{check_e164, Admission, Decision, InviteFacts, CPM_WINDOW};
pub use api::{parse_destination, router, ApiAccount, ApiError, ApiState, Change, ChangeFuture};
pub use model::{
    IpNet, IpNetError, Mode, NumberMapping, Snapshot, Trunk, DEFAULT_CALLS_PER_MINUTE,
};
pub use store::{
    Binding, CallChange, CallInProgress, ControlSnapshot, CredentialSecret, DestinationRecord,
    FlowDirection, FlowFallback, FlowProtocol, FlowRecord, NewCredential, NewFlow, NewTrunk,
    OnStreamEnd, Page, Store, StoreError, TrunkSlice, TrunkUpdate,
};
