//! What the server says to one query: an answer from the zone, a refusal
//! or an error, or "forward it"; and the replies made for forwarded
//! queries (their checks, SERVFAIL). The wire format is hickory-proto's.
//! No I/O: every input is a packet and the zone.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::zone::{Lookup, Zone};

/// The largest UDP reply podnet sends (RFC 9715's advice for EDNS).
pub(crate) const MAX_UDP: u16 = 1232;
/// A reply to a query without EDNS fits this (RFC 1035).
const CLASSIC_UDP: u16 = 512;
/// Answers change at once (addresses are reused), so nobody caches them.
const TTL: u32 = 0;

/// How a query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What to do with a packet.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send this back.
    Reply(Vec<u8>),
    /// Not the network's name: send it upstream (the parsed query, to
    /// check the upstream's reply against and to answer SERVFAIL from).
    Forward(Box<Message>),
    /// Send nothing (not a query, or too broken to answer).
    Drop,
}

/// Answer `packet`, which came by `transport` from a pod of the network
/// (`allowed`) or from elsewhere; `forwarding` says whether other names
/// can go upstream.
pub(crate) fn respond(
    packet: &[u8],
    transport: Transport,
    allowed: bool,
    forwarding: bool,
    zone: &Zone,
) -> Outcome {
    // Not even a header, or a response (answering one could loop).
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Outcome::Drop;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let query = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return reply_code(id, ResponseCode::FormErr, transport),
    };
    if !allowed {
        return error(&query, ResponseCode::Refused, transport);
    }
    if query.metadata.op_code != OpCode::Query {
        return error(&query, ResponseCode::NotImp, transport);
    }
    let [q] = query.queries.as_slice() else {
        return error(&query, ResponseCode::FormErr, transport);
    };
    if q.query_class() != DNSClass::IN {
        return error(&query, ResponseCode::Refused, transport);
    }
    let qname = q.name().to_ascii();
    let mut reply = start_reply(&query);
    match zone.lookup(&qname) {
        Lookup::Found(entries) => {
            reply.metadata.authoritative = true;
            let qtype = q.query_type();
            for e in entries {
                let v4 = matches!(qtype, RecordType::A | RecordType::ANY)
                    .then_some(e.ipv4)
                    .flatten()
                    .map(|a| RData::A(A(a)));
                let v6 = matches!(qtype, RecordType::AAAA | RecordType::ANY)
                    .then_some(e.ipv6)
                    .flatten()
                    .map(|a| RData::AAAA(AAAA(a)));
                for rdata in v4.into_iter().chain(v6) {
                    reply.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
                }
            }
        }
        Lookup::Pointer(e) => {
            reply.metadata.authoritative = true;
            if q.query_type() == RecordType::PTR {
                if let Ok(target) = Name::from_ascii(zone.fqdn(e)) {
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
            }
        }
        Lookup::Apex => reply.metadata.authoritative = true,
        Lookup::NoSuchName => {
            reply.metadata.authoritative = true;
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        Lookup::Elsewhere if forwarding => return Outcome::Forward(Box::new(query)),
        Lookup::Elsewhere => return error(&query, ResponseCode::Refused, transport),
    }
    finish(reply, &query, transport)
}

/// A reply to `query` with its question, ID, RD and EDNS, and RA set.
fn start_reply(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.checking_disabled = query.metadata.checking_disabled;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP);
        reply.set_edns(edns);
    }
    reply
}

/// `reply` as bytes; over UDP cut to what the client takes (the answers
/// dropped and TC set, so it asks again over TCP).
fn finish(reply: Message, query: &Message, transport: Transport) -> Outcome {
    let Ok(bytes) = reply.to_vec() else {
        return error(query, ResponseCode::ServFail, transport);
    };
    let limit = match (transport, &query.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(CLASSIC_UDP, MAX_UDP)),
        (Transport::Udp, None) => usize::from(CLASSIC_UDP),
    };
    if bytes.len() <= limit {
        return Outcome::Reply(bytes);
    }
    match reply.truncate().to_vec() {
        Ok(cut) if cut.len() <= limit => Outcome::Reply(cut),
        _ => Outcome::Drop,
    }
}

/// An error reply to a parsed query.
pub(crate) fn error(query: &Message, code: ResponseCode, transport: Transport) -> Outcome {
    let mut reply = start_reply(query);
    reply.metadata.response_code = code;
    if query.metadata.op_code != OpCode::Query {
        reply.metadata.op_code = query.metadata.op_code;
    }
    finish(reply, query, transport)
}

/// An error reply with no question, to a query that did not parse.
fn reply_code(id: u16, code: ResponseCode, transport: Transport) -> Outcome {
    let reply = Message::error_msg(id, OpCode::Query, code);
    match reply.to_vec() {
        Ok(b) if transport == Transport::Tcp || b.len() <= usize::from(CLASSIC_UDP) => {
            Outcome::Reply(b)
        }
        _ => Outcome::Drop,
    }
}

/// Whether `reply` (from an upstream) answers `query`, sent with ID `id`:
/// a response with that ID and the same question.
pub(crate) fn answers(reply: &[u8], id: u16, query: &Message) -> bool {
    if reply.len() < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id {
        return false;
    }
    match Message::from_vec(reply) {
        Ok(m) => {
            m.metadata.message_type == MessageType::Response
                && same_questions(&m.queries, &query.queries)
        }
        Err(_) => false,
    }
}

fn same_questions(a: &[Query], b: &[Query]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.query_type() == y.query_type()
                && x.query_class() == y.query_class()
                && x.name().to_ascii().eq_ignore_ascii_case(&y.name().to_ascii())
        })
}

/// `packet` with its ID set to `id`.
pub(crate) fn with_id(packet: &[u8], id: u16) -> Vec<u8> {
    let mut out = packet.to_vec();
    if out.len() >= 2 {
        out[..2].copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// SERVFAIL for a forwarded query that no upstream answered.
pub(crate) fn servfail(query: &Message, transport: Transport) -> Option<Vec<u8>> {
    match error(query, ResponseCode::ServFail, transport) {
        Outcome::Reply(b) => Some(b),
        _ => None,
    }
}

/// Whether `src` is one of the network's pods: in a pool, and not a
/// gateway (the host namespace's own address on the bridge).
pub(crate) fn from_pod(src: IpAddr, pools: &[ipnetwork::IpNetwork], gateways: &[IpAddr]) -> bool {
    let src = match src {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(src, IpAddr::V4),
        v4 => v4,
    };
    pools.iter().any(|p| p.contains(src)) && !gateways.contains(&src)
}
