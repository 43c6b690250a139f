//! nf_tables over netlink (NETLINK_NETFILTER), by hand: the kernel DNAT
//! path of port mappings, beside `link.rs` so netlink is spoken in one
//! place only. This file: the [`Nft`] socket of a network and the
//! operations on the table it owns; the wire format is in `msg`, the rules
//! of a port in `rules`, the socket's I/O in `sock`.

mod aports;
mod client;
mod egress;
mod msg;
mod policy;
mod rules;
mod sock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use rtnetlink::sys::Socket;

#[cfg(feature = "internals")]
use crate::error::Error;
use crate::error::Result;

use client::{client_rules, CLIENT_CHAINS, CLIENT_COMMENT};
use msg::NFT_MSG_GETTABLE;
#[cfg(feature = "internals")]
use msg::{attrs, cstr};
use msg::{
    comment_tlv, error_code, messages, parse_rule, Msg, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_TABLE, NFTA_RULE_USERDATA,
    NFTA_TABLE_FLAGS, NFTA_TABLE_NAME, NFT_MSG_DELRULE, NFT_MSG_DELTABLE, NFT_MSG_GETRULE,
    NFT_MSG_NEWTABLE, NFT_TABLE_F_OWNER, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use rules::CHAINS;
use sock::{recv_within, send, socket, ANSWER_WAIT, SHORT_WAIT};

pub(crate) use aports::aports_table;
pub(crate) use egress::egress_table;
pub(crate) use msg::Found;
pub(crate) use policy::policy_table;
pub(crate) use rules::Dnat;

/// Prefix of every podnet rule comment (the format is [`Dnat::comment`]'s).
pub(crate) const TAG: &str = "podnet ";

/// An nf_tables socket bound to the namespace it was opened in, and the
/// table it owns (once [`ensure_table`](Nft::ensure_table) made it): the
/// kernel deletes that table when this socket closes, that is when the
/// last `Arc<Nft>` is dropped or the process ends.
///
/// One table per network *and per process*, `inet podnet-<bridge>-<port
/// id>` (the netlink port id of the socket that made it, unique in the
/// namespace while that socket is open), made with `NFT_TABLE_F_OWNER`
/// (Linux 5.12): only the socket that made it may change it, and the
/// kernel deletes it, with every rule in it, when that socket closes,
/// whether the process removed its sandboxes, returned from `main`, or was
/// killed. So a network keeps its socket open for as long as it lives in
/// the process, and no rule outlives the process.
///
/// The socket is blocking, and every wait for the kernel's answer is
/// bounded.
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

impl Nft {
    /// Open an nf_tables socket in the calling thread's network namespace
    /// (the namespace is fixed at creation, netlink(7), so it may be used
    /// from any thread after) for a table of network `bridge` that this
    /// socket will own: `podnet-<bridge>-<port id>`. Nothing is made yet.
    pub(crate) fn open(bridge: &str) -> Result<Nft> {
        let (sock, port_id) = socket(|| format!("nf_tables socket for network {bridge:?}"))?;
        // Extended acks are not needed: errors are reported by errno.
        // At most 7 + 15 + 1 + 10 bytes: far below NFT_NAME_MAXLEN (256).
        Ok(Nft::with_socket(sock, format!("podnet-{bridge}-{port_id}")))
    }

    /// An `Nft` of table `table` over `sock`.
    fn with_socket(sock: Socket, table: String) -> Nft {
        Nft {
            sock: Mutex::new(sock),
            table,
            seq: AtomicU32::new(1),
        }
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
        for chain in CHAINS {
            msgs.push(Msg::base_chain(self.next_seq(), &self.table, chain, "nat"));
        }
        match self.batch(msgs) {
            // Kernels before 5.12 take no table flag but DORMANT, and say
            // EINVAL (5.12 made it EOPNOTSUPP): no owner, no kernel path.
            // The messages are fixed, so this is not a malformed request.
            Err(Errno::EINVAL) => Err(Errno::EOPNOTSUPP),
            other => other,
        }
    }

    /// Add the chains and the two rules that route the pod's replies to
    /// connections the forwarder makes from its clients' addresses
    /// (`client` has them), in one batch. Once per table: a second call
    /// would add the rules again.
    pub(crate) fn add_client_rules(&self) -> std::result::Result<(), Errno> {
        let mut msgs = Vec::new();
        for chain in CLIENT_CHAINS {
            msgs.push(Msg::base_chain(
                self.next_seq(),
                &self.table,
                chain,
                "filter",
            ));
        }
        for (chain, exprs) in client_rules() {
            let mut r = Msg::append_rule(self.next_seq(), &self.table, chain);
            exprs.write(&mut r);
            r.attr(NFTA_RULE_USERDATA, &comment_tlv(CLIENT_COMMENT));
            msgs.push(r);
        }
        self.batch(msgs)
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
        self.exists(&self.table)
    }

    /// Whether inet table `table` exists.
    pub(crate) fn exists(&self, table: &str) -> std::result::Result<bool, Errno> {
        let seq = self.next_seq();
        let mut t = Msg::nft(NFT_MSG_GETTABLE, NLM_F_ACK, seq);
        t.str(NFTA_TABLE_NAME, table);
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
        self.add_after(Vec::new(), ports)
    }

    /// [`add`](Nft::add), with `head` (the table and its chains) first in
    /// the first batch.
    fn add_after(&self, head: Vec<Msg>, ports: &[Dnat]) -> std::result::Result<(), Errno> {
        // This crate's tests: rules the kernel refuses (ENOENT, as for an
        // expression whose module is missing).
        #[cfg(feature = "failpoints")]
        let refused = std::env::var("PODNET_FAILPOINT").as_deref() == Ok("nft-rule");
        let mut msgs = head;
        for p in ports {
            for (chain, exprs) in p.rules() {
                #[cfg(feature = "failpoints")]
                let chain = if refused {
                    "podnet-no-such-chain"
                } else {
                    chain
                };
                let mut r = Msg::append_rule(self.next_seq(), &self.table, chain);
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
        self.list_of(&self.table)
    }

    /// Every rule of inet table `table` with a podnet comment, over this
    /// socket (a read: no transaction). A missing table has none.
    pub(crate) fn list_of(&self, table: &str) -> std::result::Result<Vec<Found>, Errno> {
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        list_rules(&sock, self.next_seq(), table)
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
    ///
    /// A batch (NFNL_MSG_BATCH_BEGIN … END) is applied by the kernel all or
    /// nothing. Only the last message asks for an ack (the kernel reports a
    /// failing message whatever its flags), so a batch of thousands of
    /// rules (a wide port range) is answered by one ack instead of one per
    /// rule, which could overflow the socket's receive buffer.
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

/// Most bytes of messages in one batch: a batch is one datagram, and
/// netlink refuses one larger than the socket's send buffer (EMSGSIZE; the
/// default `wmem_default` is 208 KiB).
const BATCH_BYTES: usize = 96 * 1024;

/// `msgs` in batches of at most [`BATCH_BYTES`] (one message at least).
fn chunks(msgs: Vec<Msg>) -> Vec<Vec<Msg>> {
    let mut out: Vec<Vec<Msg>> = Vec::new();
    let mut size = 0;
    for m in msgs {
        let len = m.len();
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
