//! A network's egress table, `inet podnet-<bridge>-egress`: one nat chain
//! on postrouting that masquerades what its pools send to anything outside
//! them. Unlike the table of port mappings it has no owner socket, so it
//! outlives the process that made it (persistent sandboxes keep their way
//! out); `host::egress` decides when it is made and when it goes.

use std::net::IpAddr;

use nix::errno::Errno;

use super::msg::{
    comment_tlv, Msg, NFTA_RULE_USERDATA, NFTA_TABLE_NAME, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE,
    NLM_F_ACK, NLM_F_CREATE,
};
use super::rules::{masquerade_leaving, EGRESS_CHAIN};
use super::{Nft, TAG};

/// The name of network `bridge`'s egress table (family inet): at most
/// 7 + 15 + 7 bytes, far below NFT_NAME_MAXLEN (256). It cannot be the
/// name of another network's table of port mappings,
/// `podnet-<bridge>-<port id>`, whose name ends in digits.
pub(crate) fn egress_table(bridge: &str) -> String {
    format!("podnet-{bridge}-egress")
}

impl Nft {
    /// Make network `bridge`'s egress table hold exactly the masquerade
    /// rule of each of `pools` (network address, prefix), in one batch:
    /// add the table (so the delete that follows finds it), delete it with
    /// whatever it held, add it again with its chain and rules. The kernel
    /// applies a batch all or nothing, so the table is never half-made and
    /// a second call changes nothing.
    pub(crate) fn replace_egress(
        &self,
        bridge: &str,
        pools: &[(IpAddr, u8)],
    ) -> std::result::Result<(), Errno> {
        self.replace_masquerade(&egress_table(bridge), pools)
    }

    /// [`replace_egress`](Nft::replace_egress) for table `table` (inet);
    /// also the hand-made baseline of `benches/egress.rs`.
    pub(crate) fn replace_masquerade(
        &self,
        table: &str,
        pools: &[(IpAddr, u8)],
    ) -> std::result::Result<(), Errno> {
        let new_table = |seq| {
            let mut t = Msg::nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, seq);
            t.str(NFTA_TABLE_NAME, table);
            t
        };
        let mut msgs = vec![new_table(self.next_seq())];
        let mut del = Msg::nft(NFT_MSG_DELTABLE, NLM_F_ACK, self.next_seq());
        del.str(NFTA_TABLE_NAME, table);
        msgs.push(del);
        msgs.push(new_table(self.next_seq()));
        msgs.push(Msg::base_chain(self.next_seq(), table, EGRESS_CHAIN, "nat"));
        for &(net, prefix) in pools {
            let mut r = Msg::append_rule(self.next_seq(), table, EGRESS_CHAIN.0);
            masquerade_leaving(net, prefix).write(&mut r);
            let comment = format!("{TAG}egress {net}/{prefix}");
            r.attr(NFTA_RULE_USERDATA, &comment_tlv(&comment));
            msgs.push(r);
        }
        self.batch(msgs)
    }

    /// Whether network `bridge`'s egress table holds exactly the rules
    /// [`replace_egress`](Nft::replace_egress) makes for `pools`, by their
    /// comments: a read, so that a build that finds the table as it should
    /// be makes no nf_tables transaction (the socket's close after one
    /// waits for the kernel to free the old state, a grace period of RCU:
    /// 9-12 ms of every `podnet-cni` ADD with `ipMasq` before this).
    pub(crate) fn egress_holds(
        &self,
        bridge: &str,
        pools: &[(IpAddr, u8)],
    ) -> std::result::Result<bool, Errno> {
        let mut found: Vec<String> = self
            .list_of(&egress_table(bridge))?
            .into_iter()
            .map(|f| f.comment)
            .collect();
        let mut want: Vec<String> = pools
            .iter()
            .map(|(net, prefix)| format!("{TAG}egress {net}/{prefix}"))
            .collect();
        found.sort();
        want.sort();
        Ok(!want.is_empty() && found == want)
    }

    /// Delete network `bridge`'s egress table; whether it was there.
    pub(crate) fn delete_egress(&self, bridge: &str) -> std::result::Result<bool, Errno> {
        let mut t = Msg::nft(NFT_MSG_DELTABLE, NLM_F_ACK, self.next_seq());
        t.str(NFTA_TABLE_NAME, &egress_table(bridge));
        match self.batch(vec![t]) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
