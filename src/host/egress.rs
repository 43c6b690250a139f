//! Egress of a network's pools beyond the host: the forwarding sysctls a
//! build checks (and turns on when asked), and the lifetime of the
//! network's egress table (`link::nft`'s `inet podnet-<bridge>-egress`),
//! which the store's two notes ([`EgressNote`]) track across processes.
//! `build()` makes the table, and so does a create if gc took it away;
//! gc and `Network::remove()` delete it once no sandbox needs it.
//! docs/egress.md says why.

use std::net::IpAddr;
use std::os::fd::AsFd;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::host::NetInner;
use crate::ipam::EgressNote;
use crate::link::nft::{egress_table, Nft};
use crate::netns;

/// The sysctls egress needs, per family: (IPv4 or not, name, file).
const SYSCTLS: [(bool, &str, &str); 2] = [
    (true, "net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    (
        false,
        "net.ipv6.conf.all.forwarding",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ),
];

/// The forwarding sysctls of the families the network has a pool of
/// (`v4`, `v6`) that are off in the *calling thread's* network namespace
/// (`/proc/sys/net` is the namespace of the thread that opens it), as
/// (name, file).
fn forwarding_off(v4: bool, v6: bool) -> Result<Vec<(&'static str, &'static str)>> {
    let mut off = Vec::new();
    for (is_v4, name, file) in SYSCTLS {
        if (is_v4 && !v4) || (!is_v4 && !v6) {
            continue;
        }
        let value = std::fs::read_to_string(file).map_err(|e| Error::io("read sysctl", file, e))?;
        if value.trim() == "0" {
            off.push((name, file));
        }
    }
    Ok(off)
}

/// For `build()`, before anything is made: fail with
/// [`Error::ForwardingOff`] if forwarding is off in the calling thread's
/// namespace (the host's) for a family of the pools and the builder may
/// not turn it on. Reads only; [`NetInner::build_egress`] turns it on, as
/// the last step of the build.
pub(crate) fn check_forwarding(network: &str, v4: bool, v6: bool, enable: bool) -> Result<()> {
    match forwarding_off(v4, v6)?.first() {
        Some(&(sysctl, _)) if !enable => Err(Error::ForwardingOff {
            network: network.to_owned(),
            sysctl,
        }),
        _ => Ok(()),
    }
}

impl NetInner {
    /// The pools as (network address, prefix), IPv4 first.
    fn egress_pools(&self) -> Vec<(IpAddr, u8)> {
        self.v4
            .iter()
            .chain(self.v6.iter())
            .map(|p| (p.network().network(), p.prefix()))
            .collect()
    }

    /// Run `f` on a blocking thread with an nf_tables socket of the host
    /// namespace (opened once, by this thread moved in for the call).
    async fn with_egress_nft<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Nft, &str) -> std::result::Result<T, Errno> + Send + 'static,
    ) -> Result<T> {
        let table = egress_table(&self.bridge);
        let bridge = self.bridge.clone();
        self.with_host_nft(&self.egress_nft, Nft::open, op, table, move |nft| {
            f(nft, &bridge)
        })
        .await
    }

    /// Make the egress table (again: it holds exactly this network's rules
    /// afterwards) between the store's two notes. Call under the store's
    /// lock, so that no gc deletes it meanwhile. If nf_tables refuses, the
    /// kernel made nothing (a batch is all or nothing), and a `Table` note
    /// this call wrote is taken away again.
    pub(crate) async fn make_egress(&self) -> Result<()> {
        let noted = self.store.egress_noted(EgressNote::Table)?;
        self.store.note_egress(EgressNote::Table)?;
        failpoint("egress-noted");
        let pools = self.egress_pools();
        let made = self
            .with_egress_nft("nf_tables: make egress table", move |nft, bridge| {
                nft.replace_egress(bridge, &pools)
            })
            .await;
        if let Err(e) = made {
            if !noted {
                // Best effort: a note left behind costs gc one delete.
                let _ = self.store.unnote_egress(EgressNote::Table);
            }
            return Err(e);
        }
        failpoint("egress-table");
        self.store.note_egress(EgressNote::Made)
    }

    /// For `build()` with egress, its last step: under the store's lock,
    /// make the egress table, then turn on forwarding where it is off (if
    /// `enable`, else fail with [`Error::ForwardingOff`], as it was on when
    /// the build began). Nothing can fail after forwarding is on, so a
    /// build never turns it off again; if a step fails, a table that no
    /// note stood for before this build is deleted with its notes, and one
    /// that did (another process's, which its sandboxes use) stays.
    pub(crate) async fn build_egress(&self, enable: bool) -> Result<()> {
        let _lock = self.store.lock().await?;
        let before = self.store.egress_noted(EgressNote::Table)?;
        // Made and as it should be (every build after the first): read,
        // not written again.
        if self.store.egress_noted(EgressNote::Made)? {
            let pools = self.egress_pools();
            let holds = self
                .with_egress_nft("nf_tables: list egress table", move |nft, bridge| {
                    nft.egress_holds(bridge, &pools)
                })
                .await?;
            if holds {
                return self.turn_on_forwarding(enable);
            }
        }
        let built = match self.make_egress().await {
            Ok(()) => self.turn_on_forwarding(enable),
            Err(e) => Err(e),
        };
        if built.is_err() && !before {
            let _ = self.drop_egress().await;
        }
        built
    }

    /// Turn on forwarding in the host namespace (this thread moves in for
    /// it) for each family of the pools where it is off, if `enable`; else
    /// fail with [`Error::ForwardingOff`]. Only a sysctl that reads 0 is
    /// written; if a second write fails, the first is written back to 0 at
    /// once, so a failure leaves both as they were.
    fn turn_on_forwarding(&self, enable: bool) -> Result<()> {
        let what = format!("host namespace of network {:?}", self.bridge);
        let _host = netns::enter(self.host_ns.as_fd(), &what)?;
        let off = forwarding_off(self.v4.is_some(), self.v6.is_some())?;
        if let (Some(&(sysctl, _)), false) = (off.first(), enable) {
            return Err(Error::ForwardingOff {
                network: self.bridge.clone(),
                sysctl,
            });
        }
        let mut written: Vec<&str> = Vec::new();
        for (name, file) in off {
            if let Err(e) = std::fs::write(file, "1") {
                for file in written {
                    let _ = std::fs::write(file, "0");
                }
                return Err(Error::io("turn on IP forwarding", file, e));
            }
            tracing::info!(network = %self.bridge, sysctl = name, "turned on forwarding for egress");
            written.push(file);
        }
        Ok(())
    }

    /// For a create of this process, under the store's lock: make the
    /// egress table if the network asked for egress and the store has no
    /// note that it is made (gc took it away when the network had no
    /// sandbox, or its maker died half-way). The usual case is one
    /// `stat(2)` of the note.
    pub(crate) async fn egress_for_create(&self) -> Result<()> {
        if !self.egress || self.store.egress_noted(EgressNote::Made)? {
            return Ok(());
        }
        self.make_egress().await
    }

    /// Delete the egress table if the store's note says it may exist, the
    /// notes around it (`Made` first, `Table` last, so a crash in between
    /// leaves a `Table` note that the next call clears). Call under the
    /// store's lock with no sandbox left. Whether there was a table.
    ///
    /// Without a `Table` note there is no table, and nf_tables is not
    /// touched: a network that never had egress needs nothing of it. Where
    /// nf_tables is not there at all, there is no table to delete either.
    pub(crate) async fn drop_egress(&self) -> Result<bool> {
        self.store.unnote_egress(EgressNote::Made)?;
        if !self.store.egress_noted(EgressNote::Table)? {
            return Ok(false);
        }
        let deleted = self
            .with_egress_nft("nf_tables: delete egress table", |nft, bridge| {
                nft.delete_egress(bridge)
            })
            .await;
        let deleted = match deleted {
            Err(e) if e.errno().is_some_and(nf_tables_missing) => false,
            other => other?,
        };
        failpoint("egress-deleted");
        self.store.unnote_egress(EgressNote::Table)?;
        Ok(deleted)
    }
}

/// Whether `errno`, from opening an nf_tables socket or sending it a
/// request, means that this kernel or namespace has no nf_tables: then it
/// has no table either.
pub(super) fn nf_tables_missing(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT
    )
}
