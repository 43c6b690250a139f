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
                && x.name()
                    .to_ascii()
                    .eq_ignore_ascii_case(&y.name().to_ascii())
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn zone() -> Zone {
        let mut z = Zone::new("podnet.internal", vec!["10.88.0.0/16".parse().unwrap()]);
        z.insert(super::super::zone::Entry {
            name: "web".into(),
            named: true,
            aliases: vec![],
            ipv4: Some("10.88.0.2".parse().unwrap()),
            ipv6: None,
        });
        z
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn reply(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pods_name_with_no_address_of_the_type_is_nodata_not_nxdomain() {
        let r = reply(respond(
            &query("web", RecordType::AAAA),
            Transport::Udp,
            true,
            false,
            &zone(),
        ));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert!(r.metadata.authoritative);
    }

    #[test]
    fn a_header_that_does_not_parse_is_formerr_with_its_id() {
        let mut p = query("web", RecordType::A);
        p[5] = 9; // nine questions, one there
        let r = reply(respond(&p, Transport::Udp, true, false, &zone()));
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.metadata.id, u16::from_be_bytes([p[0], p[1]]));
    }

    #[test]
    fn a_response_or_a_runt_is_dropped() {
        let mut p = query("web", RecordType::A);
        p[2] |= 0x80;
        assert!(matches!(
            respond(&p, Transport::Udp, true, true, &zone()),
            Outcome::Drop
        ));
        assert!(matches!(
            respond(&p[..11], Transport::Udp, true, true, &zone()),
            Outcome::Drop
        ));
    }

    #[test]
    fn a_query_from_outside_is_refused_even_for_a_pods_name() {
        let r = reply(respond(
            &query("web", RecordType::A),
            Transport::Udp,
            false,
            true,
            &zone(),
        ));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn another_name_is_forwarded_only_with_an_upstream() {
        let q = query("example.com.", RecordType::A);
        assert!(matches!(
            respond(&q, Transport::Udp, true, true, &zone()),
            Outcome::Forward(_)
        ));
        let r = reply(respond(&q, Transport::Udp, true, false, &zone()));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn an_upstream_reply_must_carry_the_id_and_the_question() {
        let q = query("example.com.", RecordType::A);
        let parsed = Message::from_vec(&q).unwrap();
        let mut r = Message::response(7, OpCode::Query);
        r.add_queries(parsed.queries.iter().cloned());
        let r = r.to_vec().unwrap();
        assert!(answers(&r, 7, &parsed));
        assert!(!answers(&r, 8, &parsed));
        let mut other = Message::response(7, OpCode::Query);
        other.add_query(Query::query(
            Name::from_ascii("evil.com.").unwrap(),
            RecordType::A,
        ));
        assert!(!answers(&other.to_vec().unwrap(), 7, &parsed));
    }

    proptest! {
        #[test]
        fn any_bytes_are_answered_or_dropped_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1500),
            allowed: bool,
            tcp: bool,
        ) {
            let t = if tcp { Transport::Tcp } else { Transport::Udp };
            if let Outcome::Reply(b) = respond(&bytes, t, allowed, true, &zone()) {
                prop_assert!(tcp || b.len() <= usize::from(MAX_UDP));
            }
            let q = Message::from_vec(&query("a.test", RecordType::A)).unwrap();
            let _ = answers(&bytes, 1, &q);
        }

        #[test]
        fn a_query_with_its_bytes_changed_never_panics(
            at in 0usize..40, value: u8, cut in 0usize..40,
        ) {
            let mut p = query("web.podnet.internal.", RecordType::A);
            let at = at % p.len();
            p[at] = value;
            p.truncate(p.len() - cut.min(p.len()));
            let _ = respond(&p, Transport::Udp, true, true, &zone());
        }
    }
}
