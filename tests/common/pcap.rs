//! Just enough of the classic pcap format to read RTP out of captures (SIPp's, and tcpdump's
//! of what voicegate sent) and to write a transcoded copy of one.

/// One UDP datagram of a capture.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub time_us: u64,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
    /// Where the UDP payload starts in the file (for patching a copy).
    pub file_offset: usize,
}

/// Reads IPv4/UDP datagrams from a little- or big-endian classic pcap (Ethernet, Linux
/// cooked or raw IP link types). Other records are skipped.
pub fn read(bytes: &[u8]) -> Vec<Datagram> {
    let mut out = Vec::new();
    if bytes.len() < 24 {
        return out;
    }
    let big = match &bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] => true,
        _ => return out,
    };
    let u32_at = |off: usize| {
        let b = [bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]];
        if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let link = u32_at(20);
    let link_header = match link {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked
        101 => 0,  // raw IP
        _ => return out,
    };
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let (secs, usecs, incl) = (
            u32_at(off) as u64,
            u32_at(off + 4) as u64,
            u32_at(off + 8) as usize,
        );
        let record = off + 16;
        off = record + incl;
        if off > bytes.len() || incl < link_header + 28 {
            continue;
        }
        let ip = record + link_header;
        if bytes[ip] >> 4 != 4 || bytes[ip + 9] != 17 {
            continue;
        }
        let udp = ip + (bytes[ip] & 0x0f) as usize * 4;
        let udp_len = u16::from_be_bytes([bytes[udp + 4], bytes[udp + 5]]) as usize;
        let end = (udp + udp_len).min(off);
        if udp + 8 > end {
            continue;
        }
        out.push(Datagram {
            time_us: secs * 1_000_000 + usecs,
            src_port: u16::from_be_bytes([bytes[udp], bytes[udp + 1]]),
            dst_port: u16::from_be_bytes([bytes[udp + 2], bytes[udp + 3]]),
            payload: bytes[udp + 8..end].to_vec(),
            file_offset: udp + 8,
        });
    }
    out
}

/// A copy of `bytes` with every RTP datagram's payload rewritten by `rewrite(pt, payload)`
/// (same length), e.g. to turn an A-law capture into a mu-law one.
pub fn rewrite_rtp(bytes: &[u8], mut rewrite: impl FnMut(&mut u8, &mut [u8])) -> Vec<u8> {
    let mut copy = bytes.to_vec();
    for d in read(bytes) {
        if d.payload.len() < 12 {
            continue;
        }
        let start = d.file_offset;
        let (head, rest) = copy[start..start + d.payload.len()].split_at_mut(12);
        let mut pt = head[1] & 0x7f;
        rewrite(&mut pt, rest);
        head[1] = (head[1] & 0x80) | pt;
    }
    copy
}
