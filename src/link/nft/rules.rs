//! The rules of one mapped port ([`Dnat`]) as nf_tables expressions, and
//! the three nat chains of a network's table they go in.

use std::net::IpAddr;

use super::msg::{
    Msg, NFPROTO_IPV4, NFPROTO_IPV6, NFTA_DATA_VALUE, NFTA_EXPR_DATA, NFTA_EXPR_NAME,
    NFTA_LIST_ELEM, NFTA_RULE_EXPRESSIONS,
};

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;

pub(super) const REG1: u32 = 1;
const REG2: u32 = 2;

/// The three nat chains of a network's table: name, hook, priority.
/// `prerouting` (dstnat) takes traffic arriving from outside or from the
/// bridge, `output` (dstnat) locally generated traffic, and `postrouting`
/// (srcnat) masquerades pod-subnet clients, so hairpin and pod-to-pod
/// traffic through a mapping gets its replies back through the host.
pub(super) const CHAINS: [(&str, u32, i32); 3] = [
    (PREROUTING, NF_INET_PRE_ROUTING, PRIO_DSTNAT),
    (OUTPUT, NF_INET_LOCAL_OUT, PRIO_DSTNAT),
    (POSTROUTING, NF_INET_POST_ROUTING, PRIO_SRCNAT),
];
/// The one chain of a network's egress table: srcnat on postrouting.
pub(super) const EGRESS_CHAIN: (&str, u32, i32) = (POSTROUTING, NF_INET_POST_ROUTING, PRIO_SRCNAT);
const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";

/// The expressions of one rule, as nested NFTA_LIST_ELEMs.
#[derive(Default)]
pub(super) struct Exprs(Vec<(&'static str, Vec<(u16, Attr)>)>);

pub(super) enum Attr {
    Be32(u32),
    Data(Vec<u8>),
    /// A verdict code (NF_DROP, ...), nested in NFTA_DATA_VERDICT.
    Verdict(u32),
    /// A string (a set's name).
    Str(String),
    /// A verdict code that names a chain (NFT_JUMP, NFT_GOTO).
    ToChain(u32, String),
}

impl Exprs {
    pub(super) fn push(&mut self, name: &'static str, attrs: Vec<(u16, Attr)>) -> &mut Exprs {
        self.0.push((name, attrs));
        self
    }

    /// `meta <key>` into REG1.
    pub(super) fn meta(&mut self, key: u32) -> &mut Exprs {
        self.push("meta", vec![(1, Attr::Be32(REG1)), (2, Attr::Be32(key))])
    }

    /// Load `len` bytes at `offset` of header `base` into REG1.
    pub(super) fn payload(&mut self, base: u32, offset: u32, len: u32) -> &mut Exprs {
        self.push(
            "payload",
            vec![
                (1, Attr::Be32(REG1)),
                (2, Attr::Be32(base)),
                (3, Attr::Be32(offset)),
                (4, Attr::Be32(len)),
            ],
        )
    }

    /// Compare REG1 with `data` (`eq` or not).
    pub(super) fn cmp(&mut self, eq: bool, data: &[u8]) -> &mut Exprs {
        self.push(
            "cmp",
            vec![
                (1, Attr::Be32(REG1)),
                (2, Attr::Be32(u32::from(!eq))),
                (3, Attr::Data(data.to_vec())),
            ],
        )
    }

    /// Compare REG1 with `data` by `op` (NFT_CMP_*: 0 eq, 1 neq, 2 lt,
    /// 3 lte, 4 gt, 5 gte; bytes compare as a big-endian number).
    pub(super) fn cmp_op(&mut self, op: u32, data: &[u8]) -> &mut Exprs {
        self.push(
            "cmp",
            vec![
                (1, Attr::Be32(REG1)),
                (2, Attr::Be32(op)),
                (3, Attr::Data(data.to_vec())),
            ],
        )
    }

    /// REG1 &= mask.
    pub(super) fn and(&mut self, mask: &[u8]) -> &mut Exprs {
        let len = u32::try_from(mask.len()).unwrap_or(0);
        self.push(
            "bitwise",
            vec![
                (1, Attr::Be32(REG1)),
                (2, Attr::Be32(REG1)),
                (3, Attr::Be32(len)),
                (4, Attr::Data(mask.to_vec())),
                (5, Attr::Data(vec![0; mask.len()])),
            ],
        )
    }

    /// Load `data` into `reg`.
    pub(super) fn imm(&mut self, reg: u32, data: &[u8]) -> &mut Exprs {
        self.push(
            "immediate",
            vec![(1, Attr::Be32(reg)), (2, Attr::Data(data.to_vec()))],
        )
    }

    /// `meta iifname` or `meta oifname` (`key`) is `name`: IFNAMSIZ bytes,
    /// the name padded with NULs, as nft itself compares.
    fn ifname(&mut self, key: u32, name: &str) -> &mut Exprs {
        let mut padded = [0u8; 16];
        let n = name.len().min(15);
        padded[..n].copy_from_slice(&name.as_bytes()[..n]);
        self.meta(key).cmp(true, &padded)
    }

    /// The verdict `drop`.
    pub(super) fn drop_verdict(&mut self) -> &mut Exprs {
        self.push(
            "immediate",
            vec![
                (1, Attr::Be32(NFT_REG_VERDICT)),
                (2, Attr::Verdict(NF_DROP)),
            ],
        )
    }

    /// Write the expressions into rule message `m`.
    pub(super) fn write(&self, m: &mut Msg) {
        m.begin(NFTA_RULE_EXPRESSIONS);
        for (name, attrs) in &self.0 {
            m.begin(NFTA_LIST_ELEM);
            m.str(NFTA_EXPR_NAME, name);
            m.begin(NFTA_EXPR_DATA);
            for (kind, attr) in attrs {
                match attr {
                    Attr::Be32(v) => {
                        m.be32(*kind, *v);
                    }
                    // Data values are nested in NFTA_DATA_VALUE.
                    Attr::Data(d) => {
                        m.begin(*kind).attr(NFTA_DATA_VALUE, d).end();
                    }
                    Attr::Verdict(code) => {
                        m.begin(*kind).begin(NFTA_DATA_VERDICT);
                        m.be32(NFTA_VERDICT_CODE, *code);
                        m.end().end();
                    }
                    Attr::Str(v) => {
                        m.str(*kind, v);
                    }
                    Attr::ToChain(code, chain) => {
                        m.begin(*kind).begin(NFTA_DATA_VERDICT);
                        m.be32(NFTA_VERDICT_CODE, *code);
                        m.str(NFTA_VERDICT_CHAIN, chain);
                        m.end().end();
                    }
                }
            }
            m.end().end();
        }
        m.end();
    }
}

const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
pub(super) const NFT_META_NFPROTO: u32 = 15;
pub(super) const NFT_REG_VERDICT: u32 = 0;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
pub(super) const NF_DROP: u32 = 0;
pub(super) const NFT_META_L4PROTO: u32 = 16;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 1 << 5;
const NFT_NAT_DNAT: u32 = 1;

/// One mapped port, as the kernel should see it.
#[derive(Debug, Clone)]
pub(crate) struct Dnat {
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub l4: u8,
    /// The host address: unspecified for every local address.
    pub host: IpAddr,
    pub host_port: u16,
    /// The sandbox's address, of the family of the rules.
    pub pod: IpAddr,
    pub pod_port: u16,
    /// The pod's subnet: clients from it are masqueraded (hairpin).
    pub subnet: (IpAddr, u8),
    /// The rule comment, carried as nft's own userdata TLV (shown by `nft
    /// list ruleset`): `podnet <name>@<id> <proto> <host addr>:<port>
    /// #<serial>`, naming the sandbox instance, the port and the mapping's
    /// serial in the process, so a removal deletes exactly its rules and gc
    /// finds the rules no live mapping claims.
    pub comment: String,
    /// Whether to DNAT arriving traffic too (prerouting), not only locally
    /// generated: only useful when the host namespace forwards this family
    /// (a DNATed packet from outside or from the bridge is forwarded).
    pub arriving: bool,
    /// For IPv4 rules only: the bridge that routes to the pod (its
    /// network's, whichever shard the pod is on), if locally generated
    /// traffic to loopback (`127.0.0.0/8`) is DNATed too. That needs
    /// `route_localnet` on the bridge (the caller's), a masquerade of
    /// loopback sources leaving by it (the pod could not answer
    /// `127.0.0.1`), and a guard: with `route_localnet` on, the bridge
    /// would deliver packets for `127.0.0.0/8` from the pods to the host's
    /// loopback services, so those are dropped.
    pub localnet: Option<String>,
}

impl Dnat {
    fn v4(&self) -> bool {
        self.pod.is_ipv4()
    }

    fn family_match(&self, e: &mut Exprs) {
        let proto = if self.v4() {
            NFPROTO_IPV4
        } else {
            NFPROTO_IPV6
        };
        e.meta(NFT_META_NFPROTO).cmp(true, &[proto]);
    }

    /// `l4proto P th dport = port`.
    fn port_match(&self, e: &mut Exprs, port: u16) {
        e.meta(NFT_META_L4PROTO).cmp(true, &[self.l4]);
        e.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
            .cmp(true, &port.to_be_bytes());
    }

    /// Offset and length of an address field in the network header.
    fn addr_field(&self, dest: bool) -> (u32, u32) {
        match (self.v4(), dest) {
            (true, true) => (16, 4),
            (true, false) => (12, 4),
            (false, true) => (24, 16),
            (false, false) => (8, 16),
        }
    }

    /// The destination is the host address, or any local address.
    fn daddr_match(&self, e: &mut Exprs) {
        if self.host.is_unspecified() {
            e.push(
                "fib",
                vec![
                    (1, Attr::Be32(REG1)),
                    (2, Attr::Be32(NFT_FIB_RESULT_ADDRTYPE)),
                    (3, Attr::Be32(NFTA_FIB_F_DADDR)),
                ],
            )
            .cmp(true, &RTN_LOCAL.to_ne_bytes());
        } else {
            let (off, len) = self.addr_field(true);
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len)
                .cmp(true, &octets(self.host));
        }
    }

    fn dnat(&self, e: &mut Exprs) {
        let family = if self.v4() {
            NFPROTO_IPV4
        } else {
            NFPROTO_IPV6
        };
        e.imm(REG1, &octets(self.pod))
            .imm(REG2, &self.pod_port.to_be_bytes());
        e.push(
            "nat",
            vec![
                (1, Attr::Be32(NFT_NAT_DNAT)),
                (2, Attr::Be32(u32::from(family))),
                (3, Attr::Be32(REG1)),
                (5, Attr::Be32(REG2)),
            ],
        );
    }

    /// The chains this port has a rule in, in the order of
    /// [`rules`](Dnat::rules).
    pub(crate) fn chains(&self) -> Vec<&'static str> {
        self.rules().into_iter().map(|(chain, _)| chain).collect()
    }

    /// Whether the host address is a loopback one: then nothing arriving
    /// is DNATed (no packet from another interface is for loopback).
    fn host_loopback(&self) -> bool {
        self.host.is_loopback()
    }

    /// The localnet bridge, for IPv4 rules that have one.
    fn localnet(&self) -> Option<&str> {
        self.localnet.as_deref().filter(|_| self.v4())
    }

    /// `ip daddr` (`dest`) or `ip saddr` is in `127.0.0.0/8`.
    fn loopback_v4(e: &mut Exprs, dest: bool) {
        let off = if dest { 16 } else { 12 };
        e.payload(NFT_PAYLOAD_NETWORK_HEADER, off, 4)
            .and(&[255, 0, 0, 0])
            .cmp(true, &[127, 0, 0, 0]);
    }

    /// The rules of this port: chain and expressions.
    pub(super) fn rules(&self) -> Vec<(&'static str, Exprs)> {
        // Arriving, but not from the pod itself: its packets to its own
        // mapping would have to go back out the bridge port they came in
        // by, which a bridge does only in hairpin mode (with br_netfilter
        // loaded they are bridged, not routed); they are left to the
        // forwarder's socket.
        let mut pre = Exprs::default();
        self.family_match(&mut pre);
        self.port_match(&mut pre, self.host_port);
        let (off, len) = self.addr_field(false);
        pre.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len)
            .cmp(false, &octets(self.pod));
        self.daddr_match(&mut pre);
        self.dnat(&mut pre);

        // Locally generated: loopback destinations are left to the
        // forwarder's socket (DNAT from 127.0.0.1 needs route_localnet),
        // unless the rules are localnet ones.
        let mut out = Exprs::default();
        self.family_match(&mut out);
        self.port_match(&mut out, self.host_port);
        if self.host.is_unspecified() && self.localnet().is_none() {
            let (off, len) = self.addr_field(true);
            e_payload_not_loopback(&mut out, self.v4(), off, len);
        }
        self.daddr_match(&mut out);
        self.dnat(&mut out);

        // Clients in the pod subnet reaching a pod through a mapping:
        // masquerade, so the reply comes back through the host's conntrack.
        let mut post = Exprs::default();
        self.family_match(&mut post);
        e_ct_dnat(&mut post);
        self.port_match(&mut post, self.pod_port);
        let (off, len) = self.addr_field(true);
        post.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len)
            .cmp(true, &octets(self.pod));
        let (off, len) = self.addr_field(false);
        let (net, prefix) = self.subnet;
        let mask = mask(net, prefix);
        let masked: Vec<u8> = octets(net).iter().zip(&mask).map(|(a, m)| a & m).collect();
        post.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len)
            .and(&mask)
            .cmp(true, &masked);
        post.push("masq", Vec::new());
        if !self.arriving {
            return vec![(OUTPUT, out)];
        }
        let Some(bridge) = self.localnet() else {
            return vec![(PREROUTING, pre), (OUTPUT, out), (POSTROUTING, post)];
        };
        // Arriving by the bridge for loopback: never a client of a
        // mapping, but with route_localnet on it would reach the host's
        // loopback services. First, before any DNAT of this attachment.
        let mut guard = Exprs::default();
        self.family_match(&mut guard);
        guard.ifname(NFT_META_IIFNAME, bridge);
        Self::loopback_v4(&mut guard, true);
        guard.drop_verdict();
        // Loopback clients DNATed to the pod, leaving by its bridge:
        // masquerade, as the pod cannot answer 127.0.0.1.
        let mut lo = Exprs::default();
        self.family_match(&mut lo);
        e_ct_dnat(&mut lo);
        self.port_match(&mut lo, self.pod_port);
        let (off, len) = self.addr_field(true);
        lo.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len)
            .cmp(true, &octets(self.pod));
        Self::loopback_v4(&mut lo, false);
        lo.ifname(NFT_META_OIFNAME, bridge);
        lo.push("masq", Vec::new());
        let mut rules = vec![(PREROUTING, guard)];
        if !self.host_loopback() {
            rules.push((PREROUTING, pre));
        }
        rules.extend([(OUTPUT, out), (POSTROUTING, post), (POSTROUTING, lo)]);
        rules
    }
}

/// The egress rule of pool `net`/`prefix`: `ip saddr <pool> ip daddr !=
/// <pool> masquerade` (or `ip6`), so traffic from the pool to anything
/// outside it leaves with the address of the interface it leaves by, and
/// pod-to-pod traffic keeps its addresses. Pod-to-host traffic never meets
/// the rule: it is delivered locally and never reaches postrouting.
pub(super) fn masquerade_leaving(net: IpAddr, prefix: u8) -> Exprs {
    let mut e = Exprs::default();
    let (v4, saddr, daddr) = match net {
        IpAddr::V4(_) => (NFPROTO_IPV4, (12, 4), (16, 4)),
        IpAddr::V6(_) => (NFPROTO_IPV6, (8, 16), (24, 16)),
    };
    e.meta(NFT_META_NFPROTO).cmp(true, &[v4]);
    let mask = mask(net, prefix);
    let masked: Vec<u8> = octets(net).iter().zip(&mask).map(|(a, m)| a & m).collect();
    e.payload(NFT_PAYLOAD_NETWORK_HEADER, saddr.0, saddr.1)
        .and(&mask)
        .cmp(true, &masked);
    e.payload(NFT_PAYLOAD_NETWORK_HEADER, daddr.0, daddr.1)
        .and(&mask)
        .cmp(false, &masked);
    e.push("masq", Vec::new());
    e
}

fn e_payload_not_loopback(e: &mut Exprs, v4: bool, off: u32, len: u32) {
    e.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len);
    if v4 {
        e.and(&[255, 0, 0, 0]).cmp(false, &[127, 0, 0, 0]);
    } else {
        e.cmp(false, &std::net::Ipv6Addr::LOCALHOST.octets());
    }
}

fn e_ct_dnat(e: &mut Exprs) {
    e.push(
        "ct",
        vec![(1, Attr::Be32(REG1)), (2, Attr::Be32(NFT_CT_STATUS))],
    )
    .and(&IPS_DST_NAT.to_ne_bytes())
    .cmp(false, &0u32.to_ne_bytes());
}

pub(super) fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub(super) fn mask(net: IpAddr, prefix: u8) -> Vec<u8> {
    let bytes = if net.is_ipv4() { 4 } else { 16 };
    (0..bytes)
        .map(|i| {
            let bits = i32::from(prefix) - i * 8;
            match bits {
                b if b >= 8 => 0xff,
                b if b <= 0 => 0,
                // 0 < b < 8
                b => 0xffu8 << (8 - b),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_the_prefix() {
        let v4: IpAddr = "10.88.0.0".parse().unwrap();
        assert_eq!(mask(v4, 16), [255, 255, 0, 0]);
        assert_eq!(mask(v4, 20), [255, 255, 240, 0]);
        assert_eq!(mask(v4, 0), [0, 0, 0, 0]);
        let v6: IpAddr = "fd00::".parse().unwrap();
        assert_eq!(
            mask(v6, 64)[..9],
            [255, 255, 255, 255, 255, 255, 255, 255, 0]
        );
    }
}
