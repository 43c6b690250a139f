//! The two rules that let the userspace forwarder show a pod its clients'
//! own addresses (`crate::link::client`): a connection the forwarder makes
//! from a client's address carries [`SOCKET_MARK`]; the first rule keeps
//! that mark in the connection's conntrack entry as it leaves, the second
//! gives the pod's replies [`ROUTE_MARK`], which a policy rule routes to
//! this namespace's own sockets. Filter chains of their own in the
//! network's table, at the mangle priority (after conntrack, -200).

use super::rules::{Attr, Exprs, REG1};
use crate::link::client::{ROUTE_MARK, SOCKET_MARK};

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const PRIO_MANGLE: i32 = -150;
const NFT_META_MARK: u32 = 3;
const NFT_CT_MARK: u32 = 3;
/// `meta` and `ct` attributes (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_SREG: u16 = 4;

/// The chains: name, hook, priority (type filter).
pub(super) const CLIENT_CHAINS: [(&str, u32, i32); 2] = [
    ("client-output", NF_INET_LOCAL_OUT, PRIO_MANGLE),
    ("client-prerouting", NF_INET_PRE_ROUTING, PRIO_MANGLE),
];

/// Comment of the two rules: not podnet's port-rule tag (`"podnet "`), so
/// gc's sweep of unclaimed port rules leaves them alone.
pub(super) const CLIENT_COMMENT: &str = "podnet-client-addresses";

/// `meta mark == SOCKET_MARK ct mark set meta mark` in `client-output`;
/// `ct mark == SOCKET_MARK meta mark set ROUTE_MARK` in
/// `client-prerouting`.
pub(super) fn client_rules() -> [(&'static str, Exprs); 2] {
    let mut out = Exprs::default();
    out.meta(NFT_META_MARK)
        .cmp(true, &SOCKET_MARK.to_ne_bytes())
        .push(
            "ct",
            vec![
                (NFTA_CT_KEY, Attr::Be32(NFT_CT_MARK)),
                (NFTA_CT_SREG, Attr::Be32(REG1)),
            ],
        );
    let mut pre = Exprs::default();
    pre.push(
        "ct",
        vec![
            (NFTA_CT_DREG, Attr::Be32(REG1)),
            (NFTA_CT_KEY, Attr::Be32(NFT_CT_MARK)),
        ],
    )
    .cmp(true, &SOCKET_MARK.to_ne_bytes())
    .imm(REG1, &ROUTE_MARK.to_ne_bytes())
    .push(
        "meta",
        vec![
            (NFTA_META_KEY, Attr::Be32(NFT_META_MARK)),
            (NFTA_META_SREG, Attr::Be32(REG1)),
        ],
    );
    [(CLIENT_CHAINS[0].0, out), (CLIENT_CHAINS[1].0, pre)]
}
