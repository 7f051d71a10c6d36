//! RTP media for voicegate: the UDP port pool, RTP legs, in-order release of a caller's
//! packets for bots, RFC 4733 DTMF and RTCP.

pub mod arrival;
pub mod dtmf;
pub mod echo;
pub mod latch;
pub mod leg;
pub mod pool;
pub mod rtcp;
pub mod stats;

pub use echo::{EchoHandle, LegConfig, LegControl, LegReport, MediaEvent, Renumber};
pub use leg::{LegSetup, LegSockets, LegState, MediaLeg, RtcpDemux, RtpHeader, RtpWriter};
pub use pool::{PoolError, PortLease, PortPool, RtpPorts};
