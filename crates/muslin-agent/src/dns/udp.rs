//! Queries over UDP, answered inline in the receive loop: a cluster name
//! is a table lookup, and handing each datagram to a task of its own (as
//! hickory's server does) cost more than the answer. Only forwarded
//! queries, which wait on upstream, become tasks, and at most
//! `FORWARDS_IN_FLIGHT` at once per network: a container flooding names
//! outside the cluster gets SERVFAIL, not the agent's memory.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use muslin_model::dns::NameIndex;

use super::answer::{NetHandler, Outcome};

const FORWARDS_IN_FLIGHT: usize = 256;

/// Receivers per socket, one per thread of the name service. Two sockets
/// on SO_REUSEPORT, one receiver each, were measured too: the kernel
/// spreads clients by flow, and a few busy clients (dnsperf's four) land
/// unevenly, for 10-20% fewer answers per second.
const RECEIVERS: usize = 2;

pub(super) fn spawn(socket: UdpSocket, handler: NetHandler) -> Vec<tokio::task::JoinHandle<()>> {
    let socket = Arc::new(socket);
    let handler = Arc::new(handler);
    let forwards = Arc::new(Semaphore::new(FORWARDS_IN_FLIGHT));
    (0..RECEIVERS)
        .map(|_| tokio::spawn(receive(socket.clone(), handler.clone(), forwards.clone())))
        .collect()
}

async fn receive(socket: Arc<UdpSocket>, h: Arc<NetHandler>, forwards: Arc<Semaphore>) {
    let mut buf = vec![0u8; 65_536];
    let mut index = h.fresh();
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(cause = %e, "DNS socket receive");
                continue;
            }
        };
        // Port 0 cannot be answered.
        if src.port() == 0 {
            continue;
        }
        h.current(&mut index);
        match first_pass(&h, &index.1, &buf[..n], src) {
            Step::Drop => {}
            Step::Reply(bytes) => {
                let _ = socket.send_to(&bytes, src).await;
            }
            Step::Forward(query) => match forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (socket, h) = (socket.clone(), h.clone());
                    tokio::spawn(async move {
                        let bytes = forward(&h, query).await;
                        let _ = socket.send_to(&bytes, src).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let bytes = finish(error(&query, ResponseCode::ServFail), &query);
                    let _ = socket.send_to(&bytes, src).await;
                }
            },
        }
    }
}

enum Step {
    Drop,
    Reply(Vec<u8>),
    Forward(Message),
}

/// The answer to one datagram, unless it must go upstream.
fn first_pass(h: &NetHandler, index: &NameIndex, bytes: &[u8], src: SocketAddr) -> Step {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        // No header, or a response: never answered (no reflection).
        return Step::Drop;
    }
    let query = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            let mut m = Message::response(u16::from_be_bytes([bytes[0], bytes[1]]), OpCode::Query);
            m.metadata.response_code = ResponseCode::FormErr;
            return Step::Reply(m.to_vec().unwrap_or_default());
        }
    };
    if query.metadata.message_type != MessageType::Query {
        return Step::Drop;
    }
    if query.metadata.op_code != OpCode::Query {
        return Step::Reply(finish(error(&query, ResponseCode::NotImp), &query));
    }
    if query.queries.len() != 1 {
        return Step::Reply(finish(error(&query, ResponseCode::FormErr), &query));
    }
    let q = &query.queries[0];
    let mut r = response(&query);
    match h.decide(index, src.ip(), q.name(), q.query_type()) {
        Outcome::Refused => r.metadata.response_code = ResponseCode::Refused,
        Outcome::Answer(records) => {
            r.metadata.authoritative = true;
            r.answers = records;
        }
        Outcome::Negative(code, soa) => {
            r.metadata.authoritative = true;
            r.metadata.response_code = code;
            r.authorities.push(*soa);
        }
        Outcome::Forward => return Step::Forward(query),
    }
    Step::Reply(finish(r, &query))
}

async fn forward(h: &NetHandler, query: Message) -> Vec<u8> {
    let q = &query.queries[0];
    let mut r = response(&query);
    match h.upstream().forward(q.name().clone(), q.query_type()).await {
        Ok(records) => r.answers = records,
        Err(code) => r.metadata.response_code = code,
    }
    finish(r, &query)
}

/// The response skeleton: the query echoed, EDNS when the client spoke it.
fn response(query: &Message) -> Message {
    let mut r = Message::response(query.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = query.metadata.recursion_desired;
    r.metadata.checking_disabled = query.metadata.checking_disabled;
    r.metadata.recursion_available = true;
    r.queries = query.queries.clone();
    if let Some(e) = &query.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(e.max_payload().clamp(512, 1232));
        r.edns = Some(ours);
    }
    r
}

fn error(query: &Message, code: ResponseCode) -> Message {
    let mut r = response(query);
    r.metadata.response_code = code;
    r
}

/// Encoded within what the client can take: 512 bytes without EDNS, its
/// buffer (at most 1232) with; beyond, the truncation bit and no records,
/// so it asks again over TCP.
fn finish(r: Message, query: &Message) -> Vec<u8> {
    let limit = query
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload().clamp(512, 1232)));
    match r.to_vec() {
        Ok(b) if b.len() <= limit => b,
        _ => {
            let mut t = response(query);
            t.metadata.response_code = r.metadata.response_code;
            t.metadata.authoritative = r.metadata.authoritative;
            t.metadata.truncation = true;
            t.to_vec().unwrap_or_default()
        }
    }
}
