//! The nf_tables netlink wire format: the numbers of the messages and
//! attributes podnet uses, the encoder of a message ([`Msg`]) and the
//! parsers of the kernel's answers (datagrams, attributes, rules and their
//! comments). No socket here.

use nix::errno::Errno;

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_GETTABLE: u16 = 1;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFT_MSG_DELRULE: u16 = 8;

pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const NFPROTO_INET: u8 = 1;
pub(super) const NFPROTO_IPV4: u8 = 2;
pub(super) const NFPROTO_IPV6: u8 = 10;

// Attributes (linux/netfilter/nf_tables.h).
pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_TABLE_FLAGS: u16 = 2;
/// The table belongs to the socket that made it (Linux 5.12).
pub(super) const NFT_TABLE_F_OWNER: u32 = 0x2;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(super) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
/// nftnl's userdata TLV type of a rule comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// A netlink message being written: header, nfgenmsg, attributes.
pub(super) struct Msg {
    buf: Vec<u8>,
    /// Offsets of nests still open.
    nests: Vec<usize>,
}

impl Msg {
    pub(super) fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    pub(super) fn nft(msg: u16, flags: u16, seq: u32) -> Msg {
        Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            seq,
            NFPROTO_INET,
            0,
        )
    }

    /// A base chain `(name, hook, priority)` of type `kind` ("nat",
    /// "filter") in `table`, made if it is not there.
    pub(super) fn base_chain(seq: u32, table: &str, chain: (&str, u32, i32), kind: &str) -> Msg {
        let (name, hook, prio) = chain;
        let mut c = Msg::nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK, seq);
        c.str(NFTA_CHAIN_TABLE, table)
            .str(NFTA_CHAIN_NAME, name)
            .begin(NFTA_CHAIN_HOOK)
            .be32(NFTA_HOOK_HOOKNUM, hook)
            .attr(NFTA_HOOK_PRIORITY, &prio.to_be_bytes())
            .end()
            .str(NFTA_CHAIN_TYPE, kind);
        c
    }

    /// A rule appended to `chain` of `table`, its expressions and comment
    /// still to be written.
    pub(super) fn append_rule(seq: u32, table: &str, chain: &str) -> Msg {
        let mut r = Msg::nft(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
            seq,
        );
        r.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
        r
    }

    pub(super) fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        // Attributes are at most a few hundred bytes (names, comments).
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub(super) fn str(&mut self, kind: u16, s: &str) -> &mut Msg {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(kind, &data)
    }

    pub(super) fn be32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_be_bytes())
    }

    pub(super) fn begin(&mut self, kind: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub(super) fn end(&mut self) -> &mut Msg {
        if let Some(at) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// Its length so far, in bytes.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A rule found in a network's table: where it is and its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub chain: String,
    pub handle: u64,
    pub comment: String,
}

/// The netlink messages of a datagram: (type, seq, payload after the header).
pub(super) fn messages(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let seq = u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
        out.push((kind, seq, &buf[at + 16..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// The (negative) errno of an NLMSG_ERROR payload, made positive.
pub(super) fn error_code(body: &[u8]) -> i32 {
    body.get(0..4).map_or(Errno::EIO as i32, |b| {
        -i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    })
}

/// The attributes of `buf`: (type without flags, payload).
pub(super) fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= buf.len() {
        let len = usize::from(u16::from_ne_bytes([buf[at], buf[at + 1]]));
        let kind = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & 0x3fff;
        if len < 4 || at + len > buf.len() {
            break;
        }
        out.push((kind, &buf[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// Chain, handle and comment of an NFT_MSG_NEWRULE payload.
pub(super) fn parse_rule(body: &[u8]) -> Option<Found> {
    let mut chain = None;
    let mut handle = None;
    let mut comment = String::new();
    for (kind, data) in attrs(body.get(4..)?) {
        match kind {
            NFTA_RULE_CHAIN => {
                chain = Some(cstr(data));
            }
            NFTA_RULE_HANDLE => {
                handle = Some(u64::from_be_bytes(data.get(0..8)?.try_into().ok()?));
            }
            NFTA_RULE_USERDATA => comment = parse_comment(data),
            _ => {}
        }
    }
    Some(Found {
        chain: chain?,
        handle: handle?,
        comment,
    })
}

pub(super) fn cstr(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// nftnl's userdata: TLVs of one byte type, one byte length.
pub(super) fn comment_tlv(comment: &str) -> Vec<u8> {
    // Comments are made by podnet and short (NFT_USERDATA_MAXLEN is 256).
    let bytes = &comment.as_bytes()[..comment.len().min(250)];
    let mut out = vec![
        NFTNL_UDATA_RULE_COMMENT,
        u8::try_from(bytes.len() + 1).unwrap_or(u8::MAX),
    ];
    out.extend_from_slice(bytes);
    out.push(0);
    out
}

fn parse_comment(mut data: &[u8]) -> String {
    while data.len() >= 2 {
        let (kind, len) = (data[0], usize::from(data[1]));
        let Some(value) = data.get(2..2 + len) else {
            break;
        };
        if kind == NFTNL_UDATA_RULE_COMMENT {
            return cstr(value);
        }
        data = &data[2 + len..];
    }
    String::new()
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[test]
    fn comments_round_trip_through_the_userdata_tlv() {
        let c = "podnet web@1-2-3 tcp 0.0.0.0:8080 12:34";
        assert_eq!(parse_comment(&comment_tlv(c)), c);
        assert_eq!(parse_comment(&[]), "");
        assert_eq!(parse_comment(&[0, 200, 1]), "");
    }

    #[test]
    fn messages_are_padded_and_nests_sized() {
        let mut m = Msg::nft(NFT_MSG_NEWRULE, 0, 7);
        m.str(NFTA_RULE_TABLE, "t").begin(NFTA_RULE_EXPRESSIONS);
        m.be32(1, 5).end();
        let bytes = m.finish();
        assert_eq!(bytes.len() % 4, 0);
        let got = messages(&bytes);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 7);
        let a = attrs(&got[0].2[4..]);
        assert_eq!(a[0], (NFTA_RULE_TABLE, &b"t\0"[..]));
        assert_eq!(a[1].0, NFTA_RULE_EXPRESSIONS);
        assert_eq!(attrs(a[1].1), [(1, &5u32.to_be_bytes()[..])]);
    }

    /// An attribute type as [`attrs`] gives it back: without the two flag
    /// bits (nested, network byte order).
    fn kind() -> impl Strategy<Value = u16> {
        0u16..0x4000
    }

    /// A table, chain or comment: no NUL (a C string ends there) and at
    /// most 240 bytes, under the 250 that [`comment_tlv`] keeps.
    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,60}"
    }

    /// Attributes: type and payload.
    fn attributes(most: usize) -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
        vec((kind(), vec(any::<u8>(), 0..most)), 0..8)
    }

    /// A rule as the kernel dumps it: table, chain, handle, expressions
    /// (here opaque attributes in the nest) and the comment's userdata.
    fn rule(table: &str, f: &Found, exprs: &[(u16, Vec<u8>)], seq: u32) -> Vec<u8> {
        let mut m = Msg::nft(NFT_MSG_NEWRULE, 0, seq);
        m.str(NFTA_RULE_TABLE, table)
            .str(NFTA_RULE_CHAIN, &f.chain)
            .attr(NFTA_RULE_HANDLE, &f.handle.to_be_bytes())
            .begin(NFTA_RULE_EXPRESSIONS);
        for (k, d) in exprs {
            m.attr(*k, d);
        }
        m.end().attr(NFTA_RULE_USERDATA, &comment_tlv(&f.comment));
        m.finish()
    }

    fn found() -> impl Strategy<Value = Found> {
        (text(), any::<u64>(), text()).prop_map(|(chain, handle, comment)| Found {
            chain,
            handle,
            comment,
        })
    }

    /// Every parser over `buf`, as a datagram and as attributes: none may
    /// panic, whatever the bytes.
    fn parse_all(buf: &[u8]) {
        for (_, _, body) in messages(buf) {
            let _ = error_code(body);
            let _ = parse_rule(body);
            for (_, data) in attrs(body.get(4..).unwrap_or_default()) {
                for (_, inner) in attrs(data) {
                    let _ = attrs(inner);
                }
                let _ = (cstr(data), parse_comment(data));
            }
        }
        let _ = (error_code(buf), parse_rule(buf), attrs(buf));
        let _ = (cstr(buf), parse_comment(buf));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_comment_round_trips_through_the_userdata_tlv(c in text()) {
            prop_assert_eq!(parse_comment(&comment_tlv(&c)), c);
        }

        #[test]
        fn attributes_and_nests_parse_back_as_encoded(
            msg in 0u16..0x100,
            flags in any::<u16>(),
            seq in any::<u32>(),
            top in attributes(300),
            nest in kind(),
            inner in attributes(64),
            name in (kind(), text()),
        ) {
            let mut m = Msg::nft(msg, flags, seq);
            for (k, d) in &top {
                m.attr(*k, d);
            }
            m.begin(nest);
            for (k, d) in &inner {
                m.attr(*k, d);
            }
            m.end().str(name.0, &name.1);
            let bytes = m.finish();
            prop_assert_eq!(bytes.len() % 4, 0);
            let got = messages(&bytes);
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(got[0].0, (NFNL_SUBSYS_NFTABLES << 8) | msg);
            prop_assert_eq!(got[0].1, seq);
            let a = attrs(&got[0].2[4..]);
            prop_assert_eq!(a.len(), top.len() + 2);
            for ((k, d), (gk, gd)) in top.iter().zip(&a) {
                prop_assert_eq!((*k, &d[..]), (*gk, *gd));
            }
            prop_assert_eq!(a[top.len()].0, nest);
            let nested = attrs(a[top.len()].1);
            prop_assert_eq!(nested.len(), inner.len());
            for ((k, d), (gk, gd)) in inner.iter().zip(&nested) {
                prop_assert_eq!((*k, &d[..]), (*gk, *gd));
            }
            prop_assert_eq!(a[top.len() + 1].0, name.0);
            prop_assert_eq!(cstr(a[top.len() + 1].1), name.1);
        }

        #[test]
        fn rules_in_one_datagram_parse_back_in_order(
            table in text(),
            rules in vec((found(), attributes(32)), 0..6),
        ) {
            let mut datagram = Vec::new();
            for (i, (f, exprs)) in rules.iter().enumerate() {
                let seq = u32::try_from(i).unwrap();
                datagram.extend(rule(&table, f, exprs, seq));
            }
            let got = messages(&datagram);
            prop_assert_eq!(got.len(), rules.len());
            for (i, ((kind, seq, body), (f, _))) in got.iter().zip(&rules).enumerate() {
                prop_assert_eq!(*kind, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE);
                prop_assert_eq!(*seq, u32::try_from(i).unwrap());
                prop_assert_eq!(parse_rule(body), Some(f.clone()));
            }
        }

        #[test]
        fn the_parsers_survive_arbitrary_bytes(buf in vec(any::<u8>(), 0..600)) {
            parse_all(&buf);
        }

        #[test]
        fn the_parsers_survive_a_sized_header_over_arbitrary_bytes(
            mut buf in vec(any::<u8>(), 16..600),
        ) {
            // A length that frames the whole buffer, so the body is read.
            let len = u32::try_from(buf.len()).unwrap();
            buf[0..4].copy_from_slice(&len.to_ne_bytes());
            parse_all(&buf);
        }

        #[test]
        fn the_parsers_survive_a_damaged_rule(
            f in found(),
            exprs in attributes(32),
            damage in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = rule("t", &f, &exprs, 1);
            for (at, byte) in damage {
                let i = at.index(buf.len());
                buf[i] = byte;
            }
            let keep = cut.index(buf.len() + 1);
            parse_all(&buf[..keep]);
            parse_all(&buf);
        }
    }
}
