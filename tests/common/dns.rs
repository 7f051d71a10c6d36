//! A tiny authoritative DNS server over UDP on 127.0.0.1, answering from a fixed table, so
//! resolution tests exercise real DNS messages without touching the machine's resolver.
//!
//! A query for a name in the table gets that name's records of the asked type (possibly none:
//! NOERROR with an empty answer, as a real server says "the name exists, not this type"); a
//! name not in the table gets NXDOMAIN.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::SRV;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const TTL: u32 = 60;

fn name(s: &str) -> Name {
    let mut n = Name::from_ascii(s).expect("a valid DNS name");
    n.set_fqdn(true);
    n
}

/// An A or AAAA record (by the address's family).
pub fn addr(owner: &str, ip: &str) -> Record {
    let ip: IpAddr = ip.parse().expect("an IP address");
    Record::from_rdata(name(owner), TTL, RData::from(ip))
}

/// An SRV record: `owner` such as `_sip._udp.example.test`.
pub fn srv(owner: &str, priority: u16, weight: u16, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(owner),
        TTL,
        RData::SRV(SRV::new(priority, weight, port, name(target))),
    )
}

pub struct TestDns {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    task: JoinHandle<()>,
}

impl TestDns {
    /// Serves `records` until dropped.
    pub async fn start(records: Vec<Record>) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS socket");
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let seen = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                // Anything that is not a DNS query is ignored, as a real server would drop it.
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let reply = answer(&records, &request, &seen);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TestDns {
            addr,
            queries,
            task,
        }
    }

    /// Every question asked so far: (name without the final dot, type), in order.
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(
    records: &[Record],
    request: &Message,
    seen: &Mutex<Vec<(String, RecordType)>>,
) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    if let Some(edns) = &request.edns {
        reply.set_edns(edns.clone());
    }
    for query in &request.queries {
        seen.lock().unwrap().push((
            query.name().to_ascii().trim_end_matches('.').to_string(),
            query.query_type(),
        ));
        reply.add_query(query.clone());
        let mut owner = query.name().clone();
        owner.set_fqdn(true);
        let known = records.iter().any(|r| r.name == owner);
        if !known {
            reply.metadata.response_code = ResponseCode::NXDomain;
            continue;
        }
        for r in records
            .iter()
            .filter(|r| r.name == owner && r.record_type() == query.query_type())
        {
            reply.add_answer(r.clone());
        }
    }
    reply
}
