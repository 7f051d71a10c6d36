//! RTP media for voicegate: the UDP port pool and RTP legs (the echo leg for now).

pub mod echo;
pub mod pool;

pub use echo::{EchoHandle, EchoStats, Renumber};
pub use pool::{PoolError, PortLease, PortPool, RtpPorts};
