//! A network's policy table, `inet podnet-<bridge>-policy`, written from
//! a plan (`policy::plan`): address sets, a chain per policy and
//! direction, and three base chains (forward, input, output) that let
//! replies pass and send the first packet of a connection through the
//! egress policies of its source and then the ingress policies of its
//! destination. No owner, like the egress table: it is the network's, in
//! every process. Every change is one batch: the kernel applies it whole
//! or not at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;

use nix::errno::Errno;

use super::msg::{
    comment_tlv, Msg, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_USERDATA, NFTA_TABLE_NAME,
    NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWTABLE, NLM_F_ACK, NLM_F_CREATE,
};
use super::rules::{
    mask, octets, Attr, Exprs, NFT_META_L4PROTO, NFT_META_NFPROTO, NFT_PAYLOAD_NETWORK_HEADER,
    NFT_PAYLOAD_TRANSPORT_HEADER, REG1,
};
use super::{Nft, TAG};
use crate::policy::plan::{
    set_name, Allow, Compiled, PeerMatch, EGRESS_ISOLATED, INGRESS_ISOLATED,
};
use crate::policy::Port;

/// The name of network `bridge`'s policy table (family inet): it cannot
/// be another network's table of port mappings, whose name ends in
/// digits, nor its egress table.
pub(crate) fn policy_table(bridge: &str) -> String {
    format!("podnet-{bridge}-policy")
}

const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
/// nft's own type numbers of the keys (shown by `nft list set`).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NFT_CT_STATE: u32 = 0;
/// `ct state established,related`: the bits of IP_CT_ESTABLISHED (0)
/// and IP_CT_RELATED (1), each `1 << (ctinfo + 1)`.
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: u32 = (-3i32) as u32;
const NFT_GOTO: u32 = (-4i32) as u32;
const NFT_CMP_GTE: u32 = 5;
const NFT_CMP_LTE: u32 = 3;

const FORWARD: (&str, u32, i32) = ("forward", NF_INET_FORWARD, 0);
const INPUT: (&str, u32, i32) = ("input", NF_INET_LOCAL_IN, 0);
const OUTPUT: (&str, u32, i32) = ("output", NF_INET_LOCAL_OUT, 0);
/// The chain of the egress policies: a jump per policy, then drop.
const EGRESS: &str = "egress";
/// The chain of the ingress policies: a jump per policy, then drop.
const INGRESS: &str = "ingress";
/// Where an allowed egress goes on: the destination's ingress, if it is
/// isolated, else accept.
const AFTER_EGRESS: &str = "egress-allowed";

/// The most set elements in one message: a nest's length is 16 bits.
const ELEMS_PER_MSG: usize = 1000;

/// The families a network has pools of: (v4, v6).
pub(crate) type Families = (bool, bool);

/// Messages of one batch, with the ids of the sets it makes.
struct Batch<'a> {
    nft: &'a Nft,
    table: &'a str,
    msgs: Vec<Msg>,
    set_ids: HashMap<String, u32>,
}

impl Batch<'_> {
    fn rule(&mut self, chain: &str, e: &Exprs, comment: &str) {
        let mut r = Msg::append_rule(self.nft.next_seq(), self.table, chain);
        e.write(&mut r);
        r.attr(NFTA_RULE_USERDATA, &comment_tlv(&format!("{TAG}{comment}")));
        self.msgs.push(r);
    }

    fn chain(&mut self, name: &str) {
        let mut c = Msg::nft(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE | NLM_F_ACK,
            self.nft.next_seq(),
        );
        c.str(NFTA_CHAIN_TABLE, self.table)
            .str(NFTA_CHAIN_NAME, name);
        self.msgs.push(c);
    }

    fn set(&mut self, name: &str, v6: bool) {
        let id = u32::try_from(self.set_ids.len() + 1).unwrap_or(u32::MAX);
        let mut m = Msg::nft(
            NFT_MSG_NEWSET,
            NLM_F_CREATE | NLM_F_ACK,
            self.nft.next_seq(),
        );
        m.str(NFTA_SET_TABLE, self.table)
            .str(NFTA_SET_NAME, name)
            .be32(
                NFTA_SET_KEY_TYPE,
                if v6 { TYPE_IP6ADDR } else { TYPE_IPADDR },
            )
            .be32(NFTA_SET_KEY_LEN, if v6 { 16 } else { 4 })
            .be32(NFTA_SET_ID, id);
        self.msgs.push(m);
        self.set_ids.insert(name.to_owned(), id);
    }

    /// Add (or delete) `addrs` in set `set`.
    fn elements(&mut self, kind: u16, set: &str, addrs: &[IpAddr]) {
        for part in addrs.chunks(ELEMS_PER_MSG) {
            let flags = if kind == NFT_MSG_NEWSETELEM {
                NLM_F_CREATE | NLM_F_ACK
            } else {
                NLM_F_ACK
            };
            let mut m = Msg::nft(kind, flags, self.nft.next_seq());
            m.str(NFTA_SET_ELEM_LIST_TABLE, self.table)
                .str(NFTA_SET_ELEM_LIST_SET, set)
                .begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            for a in part {
                m.begin(NFTA_LIST_ELEM)
                    .begin(NFTA_SET_ELEM_KEY)
                    .attr(NFTA_DATA_VALUE, &octets(*a))
                    .end()
                    .end();
            }
            m.end();
            self.msgs.push(m);
        }
    }
}

/// `meta nfproto <family>`.
fn family(e: &mut Exprs, v6: bool) -> &mut Exprs {
    e.meta(NFT_META_NFPROTO)
        .cmp(true, &[if v6 { 10 } else { 2 }])
}

/// Load the source (or destination) address of family `v6` into REG1.
fn addr(e: &mut Exprs, v6: bool, dest: bool) -> &mut Exprs {
    let (off, len) = match (v6, dest) {
        (false, false) => (12, 4),
        (false, true) => (16, 4),
        (true, false) => (8, 16),
        (true, true) => (24, 16),
    };
    e.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len)
}

/// `<family> <saddr|daddr> @set`.
fn in_set(e: &mut Exprs, set: &str, v6: bool, dest: bool) {
    family(e, v6);
    addr(e, v6, dest);
    e.push(
        "lookup",
        vec![(1, Attr::Str(set.to_owned())), (2, Attr::Be32(REG1))],
    );
}

/// `ct state established,related`.
fn replies(e: &mut Exprs) {
    e.push(
        "ct",
        vec![(1, Attr::Be32(REG1)), (2, Attr::Be32(NFT_CT_STATE))],
    );
    e.and(&CT_ESTABLISHED_RELATED.to_ne_bytes());
    e.cmp(false, &[0; 4]);
}

fn verdict(e: &mut Exprs, code: u32) {
    e.push(
        "immediate",
        vec![(1, Attr::Be32(0)), (2, Attr::Verdict(code))],
    );
}

fn to_chain(e: &mut Exprs, code: u32, chain: &str) {
    e.push(
        "immediate",
        vec![
            (1, Attr::Be32(0)),
            (2, Attr::ToChain(code, chain.to_owned())),
        ],
    );
}

/// `l4proto P [th dport first-last]`.
fn port(e: &mut Exprs, p: &Port) {
    e.meta(NFT_META_L4PROTO).cmp(true, &[p.protocol().number()]);
    if let Some((first, last)) = p.ports() {
        e.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
        if first == last {
            e.cmp(true, &first.to_be_bytes());
        } else {
            e.cmp_op(NFT_CMP_GTE, &first.to_be_bytes());
            e.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
            e.cmp_op(NFT_CMP_LTE, &last.to_be_bytes());
        }
    }
}

/// The expressions of `allow` for family `v6` (`None` if it cannot match
/// that family: a block of the other one), the peer being the source
/// (ingress) or the destination (egress).
fn allow_exprs(allow: &Allow, v6: bool, egress: bool) -> Option<Exprs> {
    let mut e = Exprs::default();
    match &allow.peer {
        None => {
            // No peer: one rule for both families; the v4 pass makes it.
            if v6 {
                return None;
            }
        }
        Some(PeerMatch::Set(base)) => in_set(&mut e, &set_name(base, v6), v6, egress),
        Some(PeerMatch::Block(b)) => {
            let (net, prefix) = b.cidr();
            if net.is_ipv6() != v6 {
                return None;
            }
            family(&mut e, v6);
            addr(&mut e, v6, egress)
                .and(&mask(net, prefix))
                .cmp(true, &octets(net));
            for &(x, xp) in b.excepted() {
                addr(&mut e, v6, egress)
                    .and(&mask(x, xp))
                    .cmp(false, &octets(x));
            }
        }
    }
    if let Some(p) = &allow.port {
        port(&mut e, p);
    }
    Some(e)
}

impl Nft {
    /// Make network `bridge`'s policy table exactly the plan: `compiled`
    /// policies, with `elements` (set name, addresses) in their sets. One
    /// batch (one datagram, however large): the old table is deleted and
    /// the new made in the same transaction, so a packet meets the old
    /// rules or the new, and a crash leaves one of them whole. With no
    /// policy, the table is deleted.
    pub(crate) fn replace_policy(
        &self,
        bridge: &str,
        families: Families,
        compiled: &[Compiled],
        elements: &[(String, Vec<IpAddr>)],
    ) -> std::result::Result<(), Errno> {
        let table = policy_table(bridge);
        let new_table = |seq| {
            let mut t = Msg::nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, seq);
            t.str(NFTA_TABLE_NAME, &table);
            t
        };
        let mut b = Batch {
            nft: self,
            table: &table,
            msgs: vec![new_table(self.next_seq())],
            set_ids: HashMap::new(),
        };
        let mut del = Msg::nft(NFT_MSG_DELTABLE, NLM_F_ACK, self.next_seq());
        del.str(NFTA_TABLE_NAME, &table);
        b.msgs.push(del);
        if compiled.is_empty() {
            return self.batch_whole(b.msgs);
        }
        b.msgs.push(new_table(self.next_seq()));
        let fams: Vec<bool> = [(families.0, false), (families.1, true)]
            .into_iter()
            .filter(|(has, _)| *has)
            .map(|(_, v6)| v6)
            .collect();
        // Sets first, so the rules' lookups find them.
        let mut bases = vec![INGRESS_ISOLATED.to_owned(), EGRESS_ISOLATED.to_owned()];
        for c in compiled {
            bases.push(c.selected.clone());
            for allow in c.ingress.iter().chain(c.egress.iter()).flatten() {
                if let Some(PeerMatch::Set(s)) = &allow.peer {
                    if !bases.contains(s) {
                        bases.push(s.clone());
                    }
                }
            }
        }
        for base in &bases {
            for &v6 in &fams {
                b.set(&set_name(base, v6), v6);
            }
        }
        for (set, addrs) in elements {
            if b.set_ids.contains_key(set) && !addrs.is_empty() {
                b.elements(NFT_MSG_NEWSETELEM, set, addrs);
            }
        }
        // Regular chains, then the rules that jump to them.
        for name in [INGRESS, EGRESS, AFTER_EGRESS] {
            b.chain(name);
        }
        for c in compiled {
            for (egress, rules) in [(false, &c.ingress), (true, &c.egress)] {
                if rules.is_some() {
                    b.chain(&c.chain(egress));
                }
            }
        }
        for c in compiled {
            for (egress, rules) in [(false, &c.ingress), (true, &c.egress)] {
                let Some(rules) = rules else { continue };
                let chain = c.chain(egress);
                for &v6 in &fams {
                    let mut e = Exprs::default();
                    // The selected sandbox is the source of what it sends
                    // (egress) and the destination of what it takes.
                    in_set(&mut e, &set_name(&c.selected, v6), v6, !egress);
                    to_chain(&mut e, NFT_JUMP, &chain);
                    b.rule(
                        if egress { EGRESS } else { INGRESS },
                        &e,
                        &format!("policy {}", c.name),
                    );
                }
                for allow in rules {
                    for &v6 in &fams {
                        if let Some(mut e) = allow_exprs(allow, v6, egress) {
                            if egress {
                                to_chain(&mut e, NFT_GOTO, AFTER_EGRESS);
                            } else {
                                verdict(&mut e, NF_ACCEPT);
                            }
                            b.rule(&chain, &e, &format!("policy {}", c.name));
                        }
                    }
                }
            }
        }
        for chain in [INGRESS, EGRESS] {
            let mut e = Exprs::default();
            e.drop_verdict();
            b.rule(chain, &e, "isolated");
        }
        for &v6 in &fams {
            let mut e = Exprs::default();
            in_set(&mut e, &set_name(INGRESS_ISOLATED, v6), v6, true);
            to_chain(&mut e, NFT_GOTO, INGRESS);
            b.rule(AFTER_EGRESS, &e, "isolated ingress");
        }
        let mut e = Exprs::default();
        verdict(&mut e, NF_ACCEPT);
        b.rule(AFTER_EGRESS, &e, "not isolated");
        // The base chains: replies pass; a new connection is checked
        // against its source's egress (forward, input) and its
        // destination's ingress (forward, output).
        for (chain, egress, ingress) in [
            (FORWARD, true, true),
            (INPUT, true, false),
            (OUTPUT, false, true),
        ] {
            b.msgs
                .push(Msg::base_chain(self.next_seq(), &table, chain, "filter"));
            let mut e = Exprs::default();
            replies(&mut e);
            verdict(&mut e, NF_ACCEPT);
            b.rule(chain.0, &e, "replies");
            for &v6 in &fams {
                if egress {
                    let mut e = Exprs::default();
                    in_set(&mut e, &set_name(EGRESS_ISOLATED, v6), v6, false);
                    to_chain(&mut e, NFT_JUMP, EGRESS);
                    b.rule(chain.0, &e, "isolated egress");
                }
                if ingress {
                    let mut e = Exprs::default();
                    in_set(&mut e, &set_name(INGRESS_ISOLATED, v6), v6, true);
                    to_chain(&mut e, NFT_JUMP, INGRESS);
                    b.rule(chain.0, &e, "isolated ingress");
                }
            }
        }
        self.batch_whole(b.msgs)
    }

    /// Add and delete set elements of network `bridge`'s policy table, in
    /// one batch (a sandbox made, removed or relabelled). ENOENT if an
    /// element to delete or a set is missing: the table is not what the
    /// store says, and nothing was changed.
    pub(crate) fn policy_elements(
        &self,
        bridge: &str,
        add: &[(String, IpAddr)],
        del: &[(String, IpAddr)],
    ) -> std::result::Result<(), Errno> {
        if add.is_empty() && del.is_empty() {
            return Ok(());
        }
        let table = policy_table(bridge);
        let mut b = Batch {
            nft: self,
            table: &table,
            msgs: Vec::new(),
            set_ids: HashMap::new(),
        };
        for (kind, list) in [(NFT_MSG_DELSETELEM, del), (NFT_MSG_NEWSETELEM, add)] {
            let mut by_set: Vec<(&str, Vec<IpAddr>)> = Vec::new();
            for (set, a) in list {
                match by_set.iter_mut().find(|(s, _)| s == set) {
                    Some((_, v)) => v.push(*a),
                    None => by_set.push((set, vec![*a])),
                }
            }
            for (set, addrs) in by_set {
                b.elements(kind, set, &addrs);
            }
        }
        self.batch_whole(b.msgs)
    }

    /// Whether network `bridge`'s policy table exists.
    pub(crate) fn policy_table_exists(&self, bridge: &str) -> std::result::Result<bool, Errno> {
        self.exists(&policy_table(bridge))
    }

    /// [`batch`](Nft::batch) as one datagram whatever its size: the
    /// socket's send buffer is raised to hold it (SO_SNDBUFFORCE, as
    /// `nft -f` does; SO_SNDBUF up to `wmem_max` without CAP_NET_ADMIN).
    fn batch_whole(&self, msgs: Vec<Msg>) -> std::result::Result<(), Errno> {
        let size: usize = msgs.iter().map(Msg::len).sum::<usize>() + 64 * 1024;
        {
            use nix::sys::socket::{setsockopt, sockopt};
            let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
            if setsockopt(&sock.as_fd(), sockopt::SndBufForce, &size).is_err() {
                let _ = setsockopt(&sock.as_fd(), sockopt::SndBuf, &size);
            }
        }
        self.batch(msgs)
    }
}
