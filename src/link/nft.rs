//! nf_tables over netlink (NETLINK_NETFILTER), by hand: the kernel DNAT
//! path of port mappings. A sibling of `link.rs`, so netlink is still spoken
//! in one place only.
//!
//! One table per network *and per process*, `inet podnet-<bridge>-<port
//! id>` (the netlink port id of the socket that made it, unique in the
//! namespace while that socket is open), made with `NFT_TABLE_F_OWNER`
//! (Linux 5.12): only the socket that made it may change it, and the
//! kernel deletes it, with every rule in it, when that socket closes,
//! whether the process removed its sandboxes, returned from `main`, or was
//! killed. So a network keeps its socket open for as long as it lives in
//! the process, and no rule outlives the process.
//!
//! Three nat chains: `prerouting` (dstnat, traffic arriving from outside
//! or from the bridge), `output` (dstnat, locally generated) and
//! `postrouting` (srcnat, masquerade of pod-subnet clients so hairpin and
//! pod-to-pod through a mapping get their replies back through the host).
//! Every rule carries a comment (nft's own userdata TLV, shown by
//! `nft list ruleset`) naming the sandbox instance, the port and the
//! mapping's serial in the process:
//! `podnet <name>@<id> <proto> <host addr>:<port> #<serial>`, so a removal
//! deletes exactly its rules and gc finds the rules no live mapping claims.
//!
//! Changes go in one batch (NFNL_MSG_BATCH_BEGIN … END), which the kernel
//! applies all or nothing. Only the last message asks for an ack (the
//! kernel reports a failing message whatever its flags), so a batch of
//! thousands of rules (a wide port range) is answered by one ack instead of
//! one per rule, which could overflow the socket's receive buffer. The
//! socket is blocking, and every wait for the kernel's answer is bounded.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
#[cfg(feature = "internals")]
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

// Attributes (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// The table belongs to the socket that made it (Linux 5.12).
const NFT_TABLE_F_OWNER: u32 = 0x2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
/// nftnl's userdata TLV type of a rule comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;

const REG1: u32 = 1;
const REG2: u32 = 2;

/// The three chains of a network's table: name, hook, priority.
const CHAINS: [(&str, u32, i32); 3] = [
    (PREROUTING, NF_INET_PRE_ROUTING, PRIO_DSTNAT),
    (OUTPUT, NF_INET_LOCAL_OUT, PRIO_DSTNAT),
    (POSTROUTING, NF_INET_POST_ROUTING, PRIO_SRCNAT),
];
const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";

/// Prefix of every podnet rule comment.
pub(crate) const TAG: &str = "podnet ";

/// A netlink message being written: header, nfgenmsg, attributes.
struct Msg {
    buf: Vec<u8>,
    /// Offsets of nests still open.
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
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

    fn nft(msg: u16, flags: u16, seq: u32) -> Msg {
        Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            seq,
            NFPROTO_INET,
            0,
        )
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Msg {
        // Attributes are at most a few hundred bytes (names, comments).
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Msg {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(kind, &data)
    }

    fn be32(&mut self, kind: u16, v: u32) -> &mut Msg {
        self.attr(kind, &v.to_be_bytes())
    }

    fn begin(&mut self, kind: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Msg {
        if let Some(at) = self.nests.pop() {
            let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// The expressions of one rule, as nested NFTA_LIST_ELEMs.
#[derive(Default)]
struct Exprs(Vec<(&'static str, Vec<(u16, Attr)>)>);

enum Attr {
    Be32(u32),
    Data(Vec<u8>),
}

impl Exprs {
    fn push(&mut self, name: &'static str, attrs: Vec<(u16, Attr)>) -> &mut Exprs {
        self.0.push((name, attrs));
        self
    }

    /// `meta <key>` into REG1.
    fn meta(&mut self, key: u32) -> &mut Exprs {
        self.push("meta", vec![(1, Attr::Be32(REG1)), (2, Attr::Be32(key))])
    }

    /// Load `len` bytes at `offset` of header `base` into REG1.
    fn payload(&mut self, base: u32, offset: u32, len: u32) -> &mut Exprs {
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
    fn cmp(&mut self, eq: bool, data: &[u8]) -> &mut Exprs {
        self.push(
            "cmp",
            vec![
                (1, Attr::Be32(REG1)),
                (2, Attr::Be32(u32::from(!eq))),
                (3, Attr::Data(data.to_vec())),
            ],
        )
    }

    /// REG1 &= mask.
    fn and(&mut self, mask: &[u8]) -> &mut Exprs {
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
    fn imm(&mut self, reg: u32, data: &[u8]) -> &mut Exprs {
        self.push(
            "immediate",
            vec![(1, Attr::Be32(reg)), (2, Attr::Data(data.to_vec()))],
        )
    }

    fn write(&self, m: &mut Msg) {
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
                }
            }
            m.end().end();
        }
        m.end();
    }
}

const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
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
    /// The rule comment (see the module docs).
    pub comment: String,
    /// Whether to DNAT arriving traffic too (prerouting), not only locally
    /// generated: only useful when the host namespace forwards this family
    /// (a DNATed packet from outside or from the bridge is forwarded).
    pub arriving: bool,
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

    /// The rules of this port: chain and expressions.
    fn rules(&self) -> Vec<(&'static str, Exprs)> {
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
        // forwarder's socket (DNAT from 127.0.0.1 needs route_localnet).
        let mut out = Exprs::default();
        self.family_match(&mut out);
        self.port_match(&mut out, self.host_port);
        if self.host.is_unspecified() {
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
        if self.arriving {
            vec![(PREROUTING, pre), (OUTPUT, out), (POSTROUTING, post)]
        } else {
            vec![(OUTPUT, out)]
        }
    }
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

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn mask(net: IpAddr, prefix: u8) -> Vec<u8> {
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

/// A rule found in a network's table: where it is and its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub chain: String,
    pub handle: u64,
    pub comment: String,
}

/// An nf_tables socket bound to the namespace it was opened in, and the
/// table it owns (once [`ensure_table`](Nft::ensure_table) made it): the
/// kernel deletes that table when this socket closes, that is when the
/// last `Arc<Nft>` is dropped or the process ends.
#[derive(Debug)]
pub(crate) struct Nft {
    sock: Mutex<Socket>,
    table: String,
    seq: AtomicU32,
}

/// Whether `errno` means "nf_tables is not there or not allowed here", so
/// the userspace forwarder should be used instead.
pub(crate) fn refused(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EPERM
            | Errno::EACCES
            | Errno::ENOENT
            | Errno::EOPNOTSUPP
            | Errno::EPROTONOSUPPORT
            | Errno::EAFNOSUPPORT
    )
}

/// A bound nf_tables socket of the calling thread's network namespace, and
/// its netlink port id.
fn socket(object: impl Fn() -> String) -> Result<(Socket, u32)> {
    let err = |op: &'static str, e: std::io::Error| Error::Netlink {
        op,
        object: object(),
        errno: io_errno(e),
    };
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| err("open", e))?;
    sock.bind_auto().map_err(|e| err("bind", e))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(|e| err("connect", e))?;
    let mut addr = SocketAddr::new(0, 0);
    sock.get_address(&mut addr)
        .map_err(|e| err("getsockname", e))?;
    Ok((sock, addr.port_number()))
}

impl Nft {
    /// Open an nf_tables socket in the calling thread's network namespace
    /// (the namespace is fixed at creation, netlink(7), so it may be used
    /// from any thread after) for a table of network `bridge` that this
    /// socket will own: `podnet-<bridge>-<port id>`. Nothing is made yet.
    pub(crate) fn open(bridge: &str) -> Result<Nft> {
        let (sock, port_id) = socket(|| format!("nf_tables socket for network {bridge:?}"))?;
        // Extended acks are not needed: errors are reported by errno.
        Ok(Nft {
            sock: Mutex::new(sock),
            // At most 7 + 15 + 1 + 10 bytes: far below NFT_NAME_MAXLEN (256).
            table: format!("podnet-{bridge}-{port_id}"),
            seq: AtomicU32::new(1),
        })
    }

    /// The table's name (family inet).
    pub(crate) fn table(&self) -> &str {
        &self.table
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Make the table, owned by this socket, and its chains if they are not
    /// there (idempotent: no NLM_F_EXCL, so a second call changes nothing).
    /// A kernel without table owners (before 5.12) refuses the flag, and so
    /// does a table of that name made without it: both are EOPNOTSUPP.
    pub(crate) fn ensure_table(&self) -> std::result::Result<(), Errno> {
        let mut msgs = Vec::new();
        let mut t = Msg::nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, self.next_seq());
        t.str(NFTA_TABLE_NAME, &self.table)
            .be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
        msgs.push(t);
        for (name, hook, prio) in CHAINS {
            let mut c = Msg::nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK, self.next_seq());
            c.str(NFTA_CHAIN_TABLE, &self.table)
                .str(NFTA_CHAIN_NAME, name)
                .begin(NFTA_CHAIN_HOOK)
                .be32(NFTA_HOOK_HOOKNUM, hook)
                .attr(NFTA_HOOK_PRIORITY, &prio.to_be_bytes())
                .end()
                .str(NFTA_CHAIN_TYPE, "nat");
            msgs.push(c);
        }
        match self.batch(msgs) {
            // Kernels before 5.12 take no table flag but DORMANT, and say
            // EINVAL (5.12 made it EOPNOTSUPP): no owner, no kernel path.
            // The messages are fixed, so this is not a malformed request.
            Err(Errno::EINVAL) => Err(Errno::EOPNOTSUPP),
            other => other,
        }
    }

    /// Delete the table with everything in it; a missing table is fine.
    pub(crate) fn delete_table(&self) -> std::result::Result<(), Errno> {
        let mut t = Msg::nft(NFT_MSG_DELTABLE, NLM_F_ACK, self.next_seq());
        t.str(NFTA_TABLE_NAME, &self.table);
        match self.batch(vec![t]) {
            Err(Errno::ENOENT) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    #[cfg(feature = "internals")]
    /// Whether the table exists.
    pub(crate) fn table_exists(&self) -> std::result::Result<bool, Errno> {
        let seq = self.next_seq();
        let mut t = Msg::nft(NFT_MSG_GETTABLE, NLM_F_ACK, seq);
        t.str(NFTA_TABLE_NAME, &self.table);
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        send(&sock, &t.finish())?;
        loop {
            for (kind, rseq, body) in messages(&recv_within(&sock, ANSWER_WAIT)?) {
                if rseq != seq {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    return match error_code(body) {
                        0 => Ok(true),
                        e if Errno::from_raw(e) == Errno::ENOENT => Ok(false),
                        e => Err(Errno::from_raw(e)),
                    };
                }
                // The table itself; the ack follows.
            }
        }
    }

    /// Add the rules of every port of `ports` in one batch: all or none.
    pub(crate) fn add(&self, ports: &[Dnat]) -> std::result::Result<(), Errno> {
        // This crate's tests: rules the kernel refuses (ENOENT, as for an
        // expression whose module is missing).
        #[cfg(feature = "failpoints")]
        let refused = std::env::var("PODNET_FAILPOINT").as_deref() == Ok("nft-rule");
        let mut msgs = Vec::new();
        for p in ports {
            for (chain, exprs) in p.rules() {
                #[cfg(feature = "failpoints")]
                let chain = if refused {
                    "podnet-no-such-chain"
                } else {
                    chain
                };
                let mut r = Msg::nft(
                    NFT_MSG_NEWRULE,
                    NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
                    self.next_seq(),
                );
                r.str(NFTA_RULE_TABLE, &self.table)
                    .str(NFTA_RULE_CHAIN, chain);
                exprs.write(&mut r);
                r.attr(NFTA_RULE_USERDATA, &comment_tlv(&p.comment));
                msgs.push(r);
            }
        }
        // A batch is one datagram, at most the socket's send buffer: a
        // wide range goes in several. If a later one fails, the rules of
        // the earlier ones are deleted again, so it is still all or none.
        let mut added = false;
        for chunk in chunks(msgs) {
            if let Err(e) = self.batch(chunk) {
                if added {
                    let ours: Vec<&str> = ports.iter().map(|p| p.comment.as_str()).collect();
                    let _ = self.delete_where(|c| ours.contains(&c));
                }
                return Err(e);
            }
            added = true;
        }
        Ok(())
    }

    /// Delete the rules `found` (from [`list`](Nft::list)) in one batch.
    /// Rules deleted meanwhile (ENOENT) are skipped.
    pub(crate) fn delete(&self, found: &[Found]) -> std::result::Result<(), Errno> {
        if found.is_empty() {
            return Ok(());
        }
        let make = |f: &Found| {
            let mut r = Msg::nft(NFT_MSG_DELRULE, NLM_F_ACK, self.next_seq());
            r.str(NFTA_RULE_TABLE, &self.table)
                .str(NFTA_RULE_CHAIN, &f.chain)
                .attr(NFTA_RULE_HANDLE, &f.handle.to_be_bytes());
            r
        };
        // A DELRULE is under 100 bytes: 1000 of them fit a datagram.
        for part in found.chunks(1000) {
            match self.batch(part.iter().map(make).collect()) {
                // One of them is gone (another process deleted it): the
                // batch was undone as a whole, so delete the others one by
                // one.
                Err(Errno::ENOENT) => {
                    for f in part {
                        match self.batch(vec![make(f)]) {
                            Ok(()) | Err(Errno::ENOENT) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Delete the rules whose comment satisfies `pick`; returns their
    /// comments. A missing table has no rules.
    pub(crate) fn delete_where(
        &self,
        pick: impl Fn(&str) -> bool,
    ) -> std::result::Result<Vec<String>, Errno> {
        let found: Vec<Found> = self
            .list()?
            .into_iter()
            .filter(|f| pick(&f.comment))
            .collect();
        self.delete(&found)?;
        Ok(found.into_iter().map(|f| f.comment).collect())
    }

    /// Every rule of the table with a podnet comment. A missing table has
    /// none.
    pub(crate) fn list(&self) -> std::result::Result<Vec<Found>, Errno> {
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        list_rules(&sock, self.next_seq(), &self.table)
    }

    /// Hold this socket (every operation on the table waits) until the
    /// returned sender is dropped; for this crate's tests.
    #[cfg(feature = "internals")]
    pub(crate) fn hold(self: &std::sync::Arc<Self>) -> std::sync::mpsc::Sender<()> {
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let nft = self.clone();
        std::thread::spawn(move || {
            let _sock = nft.sock.lock().unwrap_or_else(|p| p.into_inner());
            let _ = held_tx.send(());
            let _ = release_rx.recv();
        });
        let _ = held_rx.recv();
        release_tx
    }

    /// Send `msgs` (made with NLM_F_ACK) as one batch and return the
    /// first error of any of them.
    fn batch(&self, msgs: Vec<Msg>) -> std::result::Result<(), Errno> {
        let begin_seq = self.next_seq();
        let count = msgs.len();
        let mut last_seq = begin_seq;
        let mut ours = vec![begin_seq];
        let mut buf = Msg::new(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish();
        for (i, m) in msgs.into_iter().enumerate() {
            let mut bytes = m.finish();
            if i + 1 < count {
                // Acks of the others: only their errors are reported.
                let flags = u16::from_ne_bytes([bytes[6], bytes[7]]) & !NLM_F_ACK;
                bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
            }
            last_seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            ours.push(last_seq);
            buf.extend_from_slice(&bytes);
        }
        let end_seq = self.next_seq();
        ours.push(end_seq);
        buf.extend_from_slice(
            &Msg::new(
                NFNL_MSG_BATCH_END,
                NLM_F_REQUEST,
                end_seq,
                0,
                NFNL_SUBSYS_NFTABLES,
            )
            .finish(),
        );
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        send(&sock, &buf)?;
        let mut first_err = None;
        loop {
            // Once an error is in, the rest of the answer (the last
            // message's ack) is already queued if it comes at all.
            let wait = if first_err.is_some() {
                SHORT_WAIT
            } else {
                ANSWER_WAIT
            };
            let got = match recv_within(&sock, wait) {
                Ok(got) => got,
                Err(Errno::ETIMEDOUT) if first_err.is_some() => break,
                Err(e) => return Err(e),
            };
            let mut done = false;
            for (kind, seq, body) in messages(&got) {
                // A late answer to an earlier request that gave up waiting
                // is not this batch's.
                if kind != NLMSG_ERROR || !ours.contains(&seq) {
                    continue;
                }
                let code = error_code(body);
                if code != 0 && first_err.is_none() {
                    first_err = Some(Errno::from_raw(code));
                }
                // An error on the batch itself (no privilege over the
                // namespace: EPERM) ends it before any message is read.
                done |= seq == last_seq || seq == begin_seq || seq == end_seq;
            }
            if done {
                break;
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Every rule of `table` with a podnet comment, over `sock`. A missing
/// table has none.
fn list_rules(sock: &Socket, seq: u32, table: &str) -> std::result::Result<Vec<Found>, Errno> {
    let mut m = Msg::nft(NFT_MSG_GETRULE, NLM_F_DUMP, seq);
    m.str(NFTA_RULE_TABLE, table);
    send(sock, &m.finish())?;
    let mut out = Vec::new();
    loop {
        let buf = recv_within(sock, ANSWER_WAIT)?;
        for (kind, rseq, body) in messages(&buf) {
            if rseq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => match error_code(body) {
                    0 => return Ok(out),
                    e if Errno::from_raw(e) == Errno::ENOENT => return Ok(Vec::new()),
                    e => return Err(Errno::from_raw(e)),
                },
                _ => {
                    if let Some(f) = parse_rule(body) {
                        if f.comment.starts_with(TAG) {
                            out.push(f);
                        }
                    }
                }
            }
        }
    }
}

/// Every inet table of the calling thread's network namespace whose name
/// starts with `podnet-`, whoever made it, with the comments of its podnet
/// rules (read over a socket of our own: reading another socket's table is
/// allowed, changing it is not). For this crate's tests.
#[cfg(feature = "internals")]
pub(crate) fn podnet_tables() -> Result<Vec<(String, Vec<String>)>> {
    let object = || "inet tables of this thread's network namespace".to_owned();
    let (sock, _) = socket(object)?;
    let err = |errno| Error::Netlink {
        op: "nf_tables: list",
        object: object(),
        errno,
    };
    let seq = 1;
    send(&sock, &Msg::nft(NFT_MSG_GETTABLE, NLM_F_DUMP, seq).finish()).map_err(err)?;
    let mut names = Vec::new();
    'dump: loop {
        let buf = recv_within(&sock, ANSWER_WAIT).map_err(err)?;
        for (kind, rseq, body) in messages(&buf) {
            if rseq != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR => match error_code(body) {
                    0 => break 'dump,
                    e => return Err(err(Errno::from_raw(e))),
                },
                _ => {
                    let name = attrs(body.get(4..).unwrap_or_default())
                        .into_iter()
                        .find(|(k, _)| *k == NFTA_TABLE_NAME)
                        .map(|(_, d)| cstr(d));
                    names.extend(name.filter(|n| n.starts_with("podnet-")));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let seq = 2 + u32::try_from(i).unwrap_or(0);
        let rules = list_rules(&sock, seq, &name).map_err(err)?;
        out.push((name, rules.into_iter().map(|f| f.comment).collect()));
    }
    Ok(out)
}

fn send(sock: &Socket, buf: &[u8]) -> std::result::Result<(), Errno> {
    sock.send(buf, 0).map(|_| ()).map_err(io_errno)
}

/// Most bytes of messages in one batch: a batch is one datagram, and
/// netlink refuses one larger than the socket's send buffer (EMSGSIZE; the
/// default `wmem_default` is 208 KiB).
const BATCH_BYTES: usize = 96 * 1024;

/// `msgs` in batches of at most [`BATCH_BYTES`] (one message at least).
fn chunks(msgs: Vec<Msg>) -> Vec<Vec<Msg>> {
    let mut out: Vec<Vec<Msg>> = Vec::new();
    let mut size = 0;
    for m in msgs {
        let len = m.buf.len();
        match out.last_mut() {
            Some(last) if size + len <= BATCH_BYTES => last.push(m),
            _ => {
                out.push(vec![m]);
                size = 0;
            }
        }
        size += len;
    }
    out
}

/// The longest wait for the kernel's answer to a request (ms): it answers
/// at once, so this only bounds a bug or a wedged kernel.
const ANSWER_WAIT: u16 = 10_000;
/// How long to wait for the rest of an answer after an error (ms).
const SHORT_WAIT: u16 = 200;

/// The next datagram, or ETIMEDOUT after `ms` milliseconds without one.
fn recv_within(sock: &Socket, ms: u16) -> std::result::Result<Vec<u8>, Errno> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the fd belongs to `sock`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Err(Errno::ETIMEDOUT),
        Ok(_) => recv(sock),
        Err(Errno::EINTR) => recv_within(sock, ms),
        Err(e) => Err(e),
    }
}

fn recv(sock: &Socket) -> std::result::Result<Vec<u8>, Errno> {
    let mut buf = Vec::with_capacity(64 * 1024);
    sock.recv(&mut buf, 0).map_err(io_errno)?;
    Ok(buf)
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))
}

/// The netlink messages of a datagram: (type, seq, payload after the header).
fn messages(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
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
fn error_code(body: &[u8]) -> i32 {
    body.get(0..4).map_or(Errno::EIO as i32, |b| {
        -i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    })
}

/// The attributes of `buf`: (type without flags, payload).
fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
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
fn parse_rule(body: &[u8]) -> Option<Found> {
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

fn cstr(data: &[u8]) -> String {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// nftnl's userdata: TLVs of one byte type, one byte length.
fn comment_tlv(comment: &str) -> Vec<u8> {
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
}
