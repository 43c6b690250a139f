//! A network's table of attachments' port mappings, `inet
//! podnet-<bridge>-aports`: the three nat chains of a table of port
//! mappings, holding the DNAT rules of every attachment of the network,
//! whichever process made it. Unlike a process's table of sandbox mappings
//! it has no owner socket, so its rules outlive the process that added
//! them (a CNI plugin exits at once); each rule's comment names its
//! attachment's record, and `host::aports` decides when the table goes.

use nix::errno::Errno;

use super::msg::{
    Msg, NFTA_TABLE_NAME, NFT_MSG_DELTABLE, NFT_MSG_NEWTABLE, NLM_F_ACK, NLM_F_CREATE,
};
use super::rules::{Dnat, CHAINS};
use super::sock::socket;
use super::Nft;
use crate::error::Result;

/// The name of network `bridge`'s table of attachments' port mappings
/// (family inet): at most 7 + 15 + 7 bytes, far below NFT_NAME_MAXLEN
/// (256). It is neither another network's egress table
/// (`podnet-<bridge>-egress`) nor a process's table of sandbox mappings
/// (`podnet-<bridge>-<port id>`, whose name ends in digits).
pub(crate) fn aports_table(bridge: &str) -> String {
    format!("podnet-{bridge}-aports")
}

impl Nft {
    /// Open an nf_tables socket in the calling thread's network namespace
    /// for network `bridge`'s table of attachments' port mappings (no
    /// owner: the socket may close, the table stays). Nothing is made yet.
    pub(crate) fn open_shared(bridge: &str) -> Result<Nft> {
        let table = aports_table(bridge);
        let (sock, _) = socket(|| format!("nf_tables socket for table inet {table}"))?;
        Ok(Nft::with_socket(sock, table))
    }

    /// Add the rules of `ports`, making the table and its chains first if
    /// they are not there, in one batch (in several only when the rules
    /// do not fit one datagram, and then the rules of the earlier ones are
    /// deleted again if a later one fails): all or none.
    pub(crate) fn add_shared(&self, ports: &[Dnat]) -> std::result::Result<(), Errno> {
        let mut head = Vec::new();
        // No NFTA_TABLE_FLAGS: no owner, and an existing table is left as
        // it is.
        let mut t = Msg::nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, self.next_seq());
        t.str(NFTA_TABLE_NAME, self.table());
        head.push(t);
        for chain in CHAINS {
            head.push(Msg::base_chain(self.next_seq(), self.table(), chain, "nat"));
        }
        self.add_after(head, ports)
    }

    /// Delete the table with every rule in it; whether it was there.
    pub(crate) fn delete_shared(&self) -> std::result::Result<bool, Errno> {
        let mut t = Msg::nft(NFT_MSG_DELTABLE, NLM_F_ACK, self.next_seq());
        t.str(NFTA_TABLE_NAME, self.table());
        match self.batch(vec![t]) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
