//! Garbage collection of one network: what dead holders and crashed callers
//! left behind is reclaimed, and nothing that may still be owned is freed.
//! An address, a name or a veth goes back only when no live or pending
//! record names it, no unreadable record might, and no live holder of this
//! network holds it; entries gc cannot believe are reported, never freed.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::holder::{self, Holder};
use crate::host::NetInner;
use crate::ident::{is_alive, Ident};
use crate::ipam::{parse_owner, Attached, Record, Store, Volumes};
use crate::ports;
use crate::{link, netns, release};

/// What [`Network::gc`](crate::Network::gc) reclaimed, and what it left
/// because it could not believe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Sandboxes whose holder was dead, or whose creator died half-way:
    /// their records are gone.
    pub sandboxes: Vec<String>,
    /// Addresses released back to the pool.
    pub addresses: Vec<IpAddr>,
    /// Host-side interfaces deleted (veths of dead or unknown sandboxes, and
    /// veths of removed sandboxes, renamed `<tag>~...`, whose remover died or
    /// whose deletion failed).
    pub links: Vec<String>,
    /// PIDs of holders killed because no live sandbox claims them.
    pub holders: Vec<u32>,
    /// Entries of the store that cannot be believed: records that cannot be
    /// read or fail their check, and address reservations that are not what
    /// the store writes. Each is left where it is, with everything it might
    /// own; [`Damaged`] says what it keeps from reuse.
    pub corrupt: Vec<Damaged>,
    /// Volume directories of pods whose sandbox is gone, deleted.
    pub volumes: Vec<PathBuf>,
    /// Kernel port-mapping rules deleted (their comments: sandbox or
    /// attachment instance, port, number): from this process's table of
    /// the network's sandbox mappings, those of sandboxes that are gone
    /// (their mappings in this process are ended too) and those no live
    /// mapping claims (a deletion that had failed); from the network's
    /// shared table of attachments' mappings (`inet
    /// podnet-<bridge>-aports`), those of attachments whose record is gone
    /// or whose namespace died, whichever process made them. Sandbox rules
    /// of processes that exited are never there to reclaim: the kernel
    /// deletes their tables when they exit.
    pub port_rules: Vec<String>,
    /// Whether the network's table of attachments' port mappings was
    /// deleted because no attachment with a mapping was left.
    pub port_table: bool,
    /// Whether the network's egress table (`inet podnet-<bridge>-egress`)
    /// was deleted because no sandbox was left to need it.
    pub egress: bool,
}

impl GcReport {
    /// Whether nothing was reclaimed (damaged entries are only reported).
    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty()
            && self.addresses.is_empty()
            && self.links.is_empty()
            && self.holders.is_empty()
            && self.volumes.is_empty()
            && self.port_rules.is_empty()
            && !self.port_table
            && !self.egress
    }
}

/// An entry of the store that gc found and could not believe. It is left in
/// place, and so is what it keeps from reuse, until an operator looks at it
/// (docs/state-and-gc.md says how to clear one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damaged {
    /// The file, directory or symlink.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
    /// The sandbox name it keeps from reuse: a damaged record's.
    pub name: Option<String>,
    /// The addresses it keeps from the pool: a damaged reservation's own,
    /// or those reserved under a damaged record's name.
    pub addresses: Vec<IpAddr>,
}

/// How gc (and [`Network::sandboxes`](crate::Network::sandboxes)) sees one
/// record.
pub(crate) enum Liveness {
    /// The holder lives: never touched.
    Live(Record),
    /// No holder yet and the creator lives: a create in progress.
    Pending(Record),
    /// Holder dead, or creator died before there was one.
    Dead(Record),
    /// The record cannot be read, or fails its check.
    Corrupt { path: PathBuf, reason: String },
    /// Removed since it was listed: nothing to do.
    Gone,
}

pub(crate) fn liveness(store: &Store, name: &str) -> Liveness {
    match store.read_record(name) {
        Ok(Some(rec)) => match (&rec.attached, rec.holder) {
            (Some(a), _) if a.done => match attachment_alive(a, &rec.veth) {
                true => Liveness::Live(rec),
                false => Liveness::Dead(rec),
            },
            (None, Some(h)) if is_alive(h.pid, h.start) => Liveness::Live(rec),
            (_, None) if is_alive(rec.creator.pid, rec.creator.start) => Liveness::Pending(rec),
            _ => Liveness::Dead(rec),
        },
        Ok(None) => Liveness::Gone,
        Err(Error::StateCorrupt { path, reason }) => Liveness::Corrupt { path, reason },
        Err(e) => Liveness::Corrupt {
            path: store.record_file(name),
            reason: e.to_string(),
        },
    }
}

/// Whether the namespace of an attachment may still live: while its host
/// veth exists (the kernel deletes the pair with the namespace), or while
/// its path still names the namespace it named (same nsfs device and
/// inode), or while the path cannot be looked at. Either sign keeps it:
/// gc must never free an address a live namespace may use.
fn attachment_alive(a: &Attached, veth: &str) -> bool {
    if nix::net::if_::if_nametoindex(veth).is_ok() {
        return true;
    }
    match nix::sys::stat::stat(&a.netns) {
        Ok(st) => st.st_dev == a.netns_dev && st.st_ino == a.netns_ino,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => false,
        Err(_) => true,
    }
}

/// One gc run: what it learnt so far, what it reclaimed, what failed.
struct Sweep<'a> {
    inner: &'a NetInner,
    report: GcReport,
    errors: Vec<Error>,
    /// Names whose holders must be left alone, with the holder a record
    /// names (`None`: any holder of that name, for a record being made or
    /// one that cannot be read).
    keep: HashMap<String, Option<Ident>>,
    /// Reservations (`<name>@<id>`) that live or pending records stand
    /// behind.
    owned: HashSet<String>,
    /// Addresses that live or pending records name.
    named: HashSet<IpAddr>,
    /// Names of damaged records: what they might own stays.
    damaged_names: HashSet<String>,
    /// Records whose sandbox is dead.
    dead: Vec<Record>,
    /// Holders of this network that stay alive after this run, with their
    /// sandbox names.
    live_holders: Vec<holder::Found>,
    /// The indexes of the network's bridges (every shard).
    bridges: Vec<u32>,
    /// Whether a live or pending attachment has port mappings (so the
    /// table of attachments' mappings stays).
    attachment_ports: bool,
}

/// Reclaim what is dead in `inner`'s network; see [`Network::gc`](crate::Network::gc).
pub(crate) async fn run(inner: &NetInner) -> Result<GcReport> {
    let span = tracing::info_span!("podnet.gc", network = %inner.bridge);
    tracing::Instrument::instrument(sweep(inner), span).await
}

async fn sweep(inner: &NetInner) -> Result<GcReport> {
    let store = &inner.store;
    // Excludes other gcs and allocations (not creates as a whole: a create
    // in progress is recognised by its live creator).
    let _lock = store.lock().await?;
    let mut sweep = Sweep {
        inner,
        report: GcReport::default(),
        errors: Vec::new(),
        keep: HashMap::new(),
        owned: HashSet::new(),
        named: HashSet::new(),
        damaged_names: HashSet::new(),
        dead: Vec::new(),
        live_holders: Vec::new(),
        bridges: Vec::new(),
        attachment_ports: false,
    };
    sweep.read_records()?;
    match inner.bridge_indexes().await {
        Ok(b) => sweep.bridges = b,
        Err(e) => sweep.errors.push(e),
    }
    sweep.end_orphan_holders();
    // Before the records they name go: a record gone with its rules left
    // would let a new attachment map their ports behind them.
    sweep.end_orphan_attachment_rules().await;
    sweep.reclaim_dead().await;
    let reserved = sweep.release_unowned_addresses()?;
    // The allocation windows, back to what the addresses still reserved
    // need.
    for pool in inner.v4.iter().chain(inner.v6.iter()) {
        if let Err(e) = store.fit_window(pool, &reserved) {
            sweep.errors.push(e);
        }
    }
    sweep.remove_orphan_volumes()?;
    sweep.remove_orphan_labels()?;
    // The policy table, rebuilt from the store: the addresses of
    // sandboxes gone in a crash leave its sets (one read if the network
    // has no policy).
    if let Err(e) = inner.sync_policies() {
        sweep.errors.push(e);
    }
    sweep.delete_orphan_veths().await;
    // Veths of removed sandboxes whose deletion in the background never
    // happened: their remover died first, or the deletion failed.
    let (deleted, failed) = inner.delete_dying_links().await;
    sweep.report.links.extend(deleted);
    sweep.errors.extend(failed);
    sweep.end_orphan_port_rules().await;
    sweep.end_unneeded_egress().await;
    sweep.end_unneeded_attachment_ports().await;
    // route_localnet that podnet turned on for attachments gone now.
    if let Err(e) = inner.localnet_off_unneeded() {
        sweep.errors.push(e);
    }
    store.remove_stale_temp_files();
    let r = &sweep.report;
    if !r.is_empty() {
        tracing::info!(
            sandboxes = ?r.sandboxes,
            addresses = ?r.addresses,
            links = ?r.links,
            holders = ?r.holders,
            volumes = r.volumes.len(),
            port_rules = r.port_rules.len(),
            port_table = r.port_table,
            egress = r.egress,
            "gc reclaimed"
        );
    }
    for d in &r.corrupt {
        tracing::warn!(path = %d.path.display(), reason = %d.reason, addresses = ?d.addresses, "gc left a damaged store entry");
    }
    for e in &sweep.errors {
        tracing::warn!(error = %e, "gc step failed");
    }
    if sweep.errors.is_empty() {
        Ok(sweep.report)
    } else {
        Err(Error::Multiple {
            op: format!("gc of network {:?}", inner.bridge),
            errors: sweep.errors,
        })
    }
}

impl Sweep<'_> {
    /// Sort the records: live and pending ones are kept with what they
    /// own, damaged ones are kept with whatever they might own, dead ones
    /// are reclaimed later.
    fn read_records(&mut self) -> Result<()> {
        let store = &self.inner.store;
        for name in store.sandbox_names()? {
            match liveness(store, &name) {
                Liveness::Live(rec) | Liveness::Pending(rec) => {
                    self.attachment_ports |=
                        rec.attached.as_ref().is_some_and(|a| !a.ports.is_empty());
                    self.owned.insert(rec.owner());
                    self.named.extend(rec.ipv4.map(IpAddr::V4));
                    self.named.extend(rec.ipv6.map(IpAddr::V6));
                    self.keep.insert(name, rec.holder);
                }
                Liveness::Corrupt { path, reason } => {
                    self.keep.insert(name.clone(), None);
                    self.damaged_names.insert(name.clone());
                    self.report.corrupt.push(Damaged {
                        path,
                        reason,
                        name: Some(name),
                        addresses: Vec::new(),
                    });
                }
                Liveness::Gone => {}
                Liveness::Dead(rec) => self.dead.push(rec),
            }
        }
        Ok(())
    }

    /// Kill the holders of this network that no live sandbox claims; learn
    /// the ones that stay.
    fn end_orphan_holders(&mut self) {
        for found in holder::find_holders(&self.inner.key) {
            let holder::Found {
                pid,
                start,
                ref name,
                creator,
            } = found;
            // Removed by this process, and ended soon with others
            // (release::later): not an orphan, and nothing of it is in use.
            if release::pending(pid) {
                continue;
            }
            // Its creator is still making it: create() starts the holder
            // before it writes the record (and a record of that name may
            // be another instance's, on its way out).
            let in_creation = creator.is_some_and(|(p, s)| is_alive(p, s));
            let claimed = match self.keep.get(name) {
                Some(Some(h)) => (h.pid == pid.as_raw() && h.start == start) || in_creation,
                Some(None) => true,
                None => in_creation,
            };
            if claimed {
                self.live_holders.push(found);
                continue;
            }
            if let Ok(Some(h)) = Holder::adopt(pid, start) {
                match h.kill() {
                    Ok(()) => {
                        self.report
                            .holders
                            .push(u32::try_from(pid.as_raw()).unwrap_or(0));
                        h.discard();
                    }
                    Err(e) => self.errors.push(e),
                }
            }
        }
    }

    /// Whether a live holder of this network holds sandbox name `name`.
    fn name_held(&self, name: &str) -> bool {
        self.live_holders.iter().any(|h| h.name == name)
    }

    /// Delete the veth and the record of each dead sandbox; its addresses
    /// are released with the other unowned reservations.
    async fn reclaim_dead(&mut self) {
        let inner = self.inner;
        let h = &inner.conn.handle;
        for rec in std::mem::take(&mut self.dead) {
            // A live holder of that name may be a sandbox being made again
            // (its create fails on the record, and a later gc has it).
            if self.name_held(&rec.name) {
                self.owned.insert(rec.owner());
                self.keep.insert(rec.name.clone(), None);
                continue;
            }
            // Only on one of this network's bridges (or on none): another
            // network whose tag is the same names its veths alike.
            match link::master_of(h, &rec.veth).await {
                Ok(Some(master)) if !self.bridges.contains(&master) => {}
                Ok(_) => self.delete_dead_veth(&rec).await,
                Err(e) => self.errors.push(e),
            }
            match inner.store.remove_record_if(&rec.name, &rec.id) {
                Ok(()) => self.report.sandboxes.push(rec.name),
                Err(e) => self.errors.push(e),
            }
        }
    }

    /// Delete the veth of the dead sandbox of `rec`.
    async fn delete_dead_veth(&mut self, rec: &Record) {
        let object = format!("veth {} of dead sandbox {:?}", rec.veth, rec.name);
        match link::delete_link(&self.inner.conn.handle, &rec.veth, &object).await {
            Ok(true) => self.report.links.push(rec.veth.clone()),
            Ok(false) => {}
            Err(e) => self.errors.push(e),
        }
    }

    /// Release the reservations that nothing may still own: those of dead
    /// sandboxes, and those whose owner has no record (a crash between the
    /// steps of a removal, or a hand-edited store). Returns the addresses
    /// that stay reserved.
    fn release_unowned_addresses(&mut self) -> Result<Vec<IpAddr>> {
        let store = &self.inner.store;
        let mut reserved = Vec::new();
        let mut candidates = Vec::new();
        for entry in store.reservations()? {
            let Some(addr) = entry.addr else {
                self.report.corrupt.push(Damaged {
                    path: entry.path,
                    reason: "its name is not an address as the store writes it".into(),
                    name: None,
                    addresses: Vec::new(),
                });
                continue;
            };
            let owner = match entry.target {
                Ok(owner) if parse_owner(&owner).is_some() => owner,
                Ok(owner) => {
                    self.blocked(
                        entry.path,
                        addr,
                        format!(
                            "it points to {owner:?}, which is not a sandbox instance \
                         (<name>@<id>)"
                        ),
                    );
                    reserved.push(addr);
                    continue;
                }
                Err(reason) => {
                    self.blocked(entry.path, addr, reason);
                    reserved.push(addr);
                    continue;
                }
            };
            let name = parse_owner(&owner).map_or("", |(n, _)| n);
            if self.damaged_names.contains(name) {
                // A damaged record may own it: it stays with the record.
                if let Some(d) = self
                    .report
                    .corrupt
                    .iter_mut()
                    .find(|d| d.name.as_deref() == Some(name))
                {
                    d.addresses.push(addr);
                }
                reserved.push(addr);
            } else if self.owned.contains(&owner) || self.named.contains(&addr) {
                reserved.push(addr);
            } else {
                candidates.push((entry.path, addr, owner));
            }
        }
        // The last check, made only when there is something to release:
        // an address on an interface inside a live sandbox of this network
        // is in use, whatever the store says.
        // If any namespace could not be read, nothing is released this run.
        let held = if candidates.is_empty() {
            Some(HashMap::new())
        } else {
            self.held_addresses()
        };
        for (path, addr, owner) in candidates {
            let Some(held) = &held else {
                self.blocked(
                    path,
                    addr,
                    format!(
                        "its owner {owner:?} has no record, and a live sandbox's \
                         addresses could not be read: kept until they can"
                    ),
                );
                reserved.push(addr);
                continue;
            };
            if let Some(name) = held.get(&addr) {
                self.blocked(
                    path,
                    addr,
                    format!(
                        "its owner {owner:?} has no record, but sandbox {name:?} of this \
                     network has the address on an interface"
                    ),
                );
                reserved.push(addr);
                continue;
            }
            match store.release(addr, &owner) {
                Ok(()) => self.report.addresses.push(addr),
                Err(e) => {
                    reserved.push(addr);
                    self.errors.push(e);
                }
            }
        }
        Ok(reserved)
    }

    /// Report the reservation at `path` of `addr` as damaged.
    fn blocked(&mut self, path: PathBuf, addr: IpAddr, reason: String) {
        self.report.corrupt.push(Damaged {
            path,
            reason,
            name: None,
            addresses: vec![addr],
        });
    }

    /// The addresses on the interfaces of the live holders' namespaces,
    /// with the sandbox of each (one netlink dump per holder); `None` if a
    /// live holder's namespace could not be read (the error is one of this
    /// run), since then any address may be in use.
    fn held_addresses(&mut self) -> Option<HashMap<IpAddr, String>> {
        let mut held = HashMap::new();
        let mut complete = true;
        for h in &self.live_holders {
            let what = format!("sandbox {:?} (holder {})", h.name, h.pid);
            match addresses_of(h.pid, h.start, &what) {
                Ok(addrs) => {
                    for a in addrs {
                        held.insert(a, h.name.clone());
                    }
                }
                Err(e) => {
                    complete = false;
                    self.errors.push(e);
                }
            }
        }
        complete.then_some(held)
    }

    /// Pod volumes of sandbox instances that are gone, and of no sandbox
    /// whose name lives.
    fn remove_orphan_volumes(&mut self) -> Result<()> {
        let volumes = Volumes::of(self.inner.store.dir());
        for owner in volumes.owners()? {
            if !self.is_orphan(&owner, volumes.dir(&owner)) {
                continue;
            }
            match volumes.remove(&owner) {
                Ok(()) => self.report.volumes.push(volumes.dir(&owner)),
                Err(e) => self.errors.push(e),
            }
        }
        Ok(())
    }

    /// Whether what sandbox instance `owner` keeps at `path` (volumes,
    /// labels) may go: no live, pending or damaged record of its name may
    /// be using it (a damaged entry's name looks like an earlier
    /// instance's, so it waits until the name is free). An `owner` that
    /// is no sandbox instance is reported damaged and kept.
    fn is_orphan(&mut self, owner: &str, path: PathBuf) -> bool {
        let Some((name, _)) = parse_owner(owner) else {
            self.report.corrupt.push(Damaged {
                path,
                reason: "its name is not a sandbox instance (<name>@<id>)".into(),
                name: None,
                addresses: Vec::new(),
            });
            return false;
        };
        !(self.owned.contains(owner) || self.keep.contains_key(name) || self.name_held(name))
    }

    /// Remove the labels of sandbox instances that no live, pending or
    /// damaged record may stand for (as [`remove_orphan_volumes`] does).
    fn remove_orphan_labels(&mut self) -> Result<()> {
        let store = &self.inner.store;
        for owner in store.labels_owners()? {
            if !self.is_orphan(&owner, store.dir().join("labels").join(&owner)) {
                continue;
            }
            if let Err(e) = store.remove_labels(&owner) {
                self.errors.push(e);
            }
        }
        Ok(())
    }

    /// Host ends of veths on the network's bridges that no live sandbox
    /// claims and no live holder's name is.
    async fn delete_orphan_veths(&mut self) {
        let inner = self.inner;
        let suffix = format!("-{}", inner.tag);
        for index in self.bridges.clone() {
            let ports = match link::bridge_ports(&inner.conn.handle, index).await {
                Ok(ports) => ports,
                Err(e) => {
                    self.errors.push(e);
                    continue;
                }
            };
            for port in ports {
                let Some(name) = port.strip_suffix(&suffix) else {
                    continue;
                };
                if self.keep.contains_key(name)
                    || self.name_held(name)
                    || self.report.links.contains(&port)
                {
                    continue;
                }
                let object = format!("veth {port} of no live sandbox");
                match link::delete_link(&inner.conn.handle, &port, &object).await {
                    Ok(true) => self.report.links.push(port),
                    Ok(false) => {}
                    Err(e) => self.errors.push(e),
                }
            }
        }
    }

    /// The network's egress table, once no sandbox may need it: no live,
    /// pending or damaged record is left, and no live holder of the
    /// network (a sandbox being made again under a dead record's name).
    /// Any process of the network deletes it (it has no owner socket).
    /// Under the store's lock, so no create is adding a sandbox meanwhile;
    /// one that comes later makes it again if its network asked for egress.
    async fn end_unneeded_egress(&mut self) {
        if !self.keep.is_empty() || !self.live_holders.is_empty() {
            return;
        }
        match self.inner.drop_egress().await {
            Ok(deleted) => self.report.egress = deleted,
            Err(e) => self.errors.push(e),
        }
    }

    /// The rules of the network's table of attachments' mappings that no
    /// live or pending record claims: those of attachments whose namespace
    /// died, or whose record is gone (a crash between the steps of an
    /// attach or a detach). A damaged record keeps the rules of its name.
    async fn end_orphan_attachment_rules(&mut self) {
        let (owned, damaged) = (&self.owned, &self.damaged_names);
        let claimed = |owner: &str| {
            owned.contains(owner)
                || parse_owner(owner).is_some_and(|(name, _)| damaged.contains(name))
        };
        match self.inner.delete_unclaimed_attachment_rules(claimed).await {
            Ok(rules) => self.report.port_rules.extend(rules),
            Err(e) => self.errors.push(e),
        }
    }

    /// The table of attachments' mappings, once no live or pending record
    /// has a mapping and no damaged record might. Under the store's lock:
    /// an attach in progress wrote its record (with its mappings) under it
    /// before it adds rules, so it is seen here.
    async fn end_unneeded_attachment_ports(&mut self) {
        if self.attachment_ports || !self.damaged_names.is_empty() {
            return;
        }
        match self.inner.drop_attachment_ports().await {
            Ok(deleted) => self.report.port_table = deleted,
            Err(e) => self.errors.push(e),
        }
    }

    /// This process's mappings of sandboxes without a live record, and
    /// rules of its table that no live mapping claims (a deletion that
    /// failed). A damaged record keeps what it might own. The rules of
    /// other processes are in tables they own: the kernel deletes those
    /// when the process exits, and no other process may touch them.
    async fn end_orphan_port_rules(&mut self) {
        let (owned, damaged) = (&self.owned, &self.damaged_names);
        let gone = ports::gc(&self.inner.ports, |name, owner| {
            !owned.contains(owner) && !damaged.contains(name)
        })
        .await;
        match gone {
            Ok(rules) => self.report.port_rules.extend(rules),
            Err(e) => self.errors.push(e),
        }
    }
}

/// The addresses inside the network namespace of holder `pid` (started at
/// `start`); none if it is gone. `what` names it for errors.
fn addresses_of(pid: Pid, start: u64, what: &str) -> Result<Vec<IpAddr>> {
    let Some(pidfd) = holder::pidfd_of(pid, start)? else {
        return Ok(Vec::new());
    };
    // A netlink socket is bound to the namespace it is made in: make one
    // inside, on this thread, without yielding while inside.
    let mut nl = {
        let _inside = netns::enter(pidfd.as_fd(), what)?;
        link::Nl::here().map_err(|e| Error::io("open netlink socket in", what, e))?
    };
    link::addresses_blocking(&mut nl, what)
}
