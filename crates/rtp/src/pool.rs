//! The RTP port pool: even RTP ports with RTCP on the next odd port, taken from the configured
//! range and given back when the call's [`RtpPorts`] is dropped, so a port cannot leak.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("no free RTP port in {min}-{max}")]
    Exhausted { min: u16, max: u16 },
}

/// Hands out RTP/RTCP socket pairs. Shared by all calls; touched only at call setup and end.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    in_use: Vec<bool>, // indexed by (port - min) / 2
    cursor: usize,
}

/// A call's bound RTP and RTCP sockets. The port pair goes back to the pool when the lease
/// drops; fields drop in declaration order, so the sockets are closed before the pair is free.
#[derive(Debug)]
pub struct RtpPorts {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub lease: PortLease,
}

impl RtpPorts {
    pub fn rtp_port(&self) -> u16 {
        self.lease.rtp_port()
    }
}

/// The claim on one port pair; dropping it frees the pair.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
    slot: usize,
}

impl PortLease {
    pub fn rtp_port(&self) -> u16 {
        self.pool.port_of(self.slot)
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(used) = state.in_use.get_mut(self.slot) {
            *used = false;
        }
    }
}

impl PortPool {
    /// `min..=max`; RTP ports are the even ones whose odd neighbour is also in range.
    pub fn new(min: u16, max: u16) -> Arc<Self> {
        let first = min + (min % 2);
        let slots = if max > first {
            (max - first).div_ceil(2) as usize
        } else {
            0
        };
        Arc::new(PortPool {
            min: first,
            max,
            state: Mutex::new(PoolState {
                in_use: vec![false; slots],
                cursor: 0,
            }),
        })
    }

    pub fn capacity(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_use
            .len()
    }

    pub fn in_use(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_use.iter().filter(|u| **u).count()
    }

    fn port_of(&self, slot: usize) -> u16 {
        self.min + (slot as u16) * 2
    }

    /// Binds the next free pair on `ip`. Ports that another process holds are skipped.
    pub fn allocate(self: &Arc<Self>, ip: IpAddr) -> Result<RtpPorts, PoolError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let slots = state.in_use.len();
        for step in 0..slots {
            let slot = (state.cursor + step) % slots;
            if state.in_use[slot] {
                continue;
            }
            let port = self.port_of(slot);
            let Ok(rtp) = UdpSocket::bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)) else {
                continue;
            };
            if rtp.set_nonblocking(true).is_err() || rtcp.set_nonblocking(true).is_err() {
                continue;
            }
            state.in_use[slot] = true;
            // Rotate so a just-freed port is not reused at once (late packets of the old call).
            state.cursor = (slot + 1) % slots;
            let lease = PortLease {
                pool: self.clone(),
                slot,
            };
            return Ok(RtpPorts { rtp, rtcp, lease });
        }
        Err(PoolError::Exhausted {
            min: self.min,
            max: self.max,
        })
    }
}

/// A range of `len` ports nobody holds now, for tests (found from an OS-chosen port).
#[cfg(test)]
pub(crate) fn free_range(len: u16) -> (u16, u16) {
    loop {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port() & !1;
        drop(probe);
        if base < 60000 && (base..base + len).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + len - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn even_rtp_odd_rtcp_and_release_on_drop() {
        let (min, max) = free_range(8);
        let pool = PortPool::new(min, max);
        assert_eq!(pool.capacity(), 4);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let a = pool.allocate(ip).unwrap();
        assert_eq!(a.rtp_port() % 2, 0);
        assert_eq!(a.rtcp.local_addr().unwrap().port(), a.rtp_port() + 1);
        let held: Vec<_> = (0..3).map(|_| pool.allocate(ip).unwrap()).collect();
        assert_eq!(
            pool.allocate(ip).unwrap_err(),
            PoolError::Exhausted { min, max }
        );
        drop(a);
        assert_eq!(pool.in_use(), 3);
        let again = pool.allocate(ip).unwrap();
        drop(held);
        drop(again);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn more_calls_than_ports_in_sequence_never_leak() {
        let (min, max) = free_range(4);
        let pool = PortPool::new(min, max);
        for _ in 0..50 {
            let ports = pool.allocate(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
            drop(ports);
        }
        assert_eq!(pool.in_use(), 0);
    }
}
