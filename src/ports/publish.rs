//! Starting a request's mappings on the forwarder ([`start`]): their
//! kernel rules in one batch, deleted again if the caller goes away before
//! taking them ([`Installed`]), a userspace task per port, and the watch
//! that ends them when the sandbox's holder exits.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::errno::Errno;
use nix::unistd::Pid;
use tokio::sync::oneshot;

use super::client::Shown;
use super::end::finish;
use super::engine::{forwarder_gone, lock, EngineCell, EngineState, Entry, ServedPort, Table};
use super::kernel::{delete_serials, dnats, fallback, forwarding, next_serial, nft_error};
use super::mapping::{Forwarder, PortNetns, PublishedPort};
use super::proxy::{serve_tcp, serve_udp};
use super::reserve::{Reserved, Sock};
use super::target::Target;
use crate::error::Result;
use crate::link::nft::{Dnat, Nft};

/// Rules added for a request that its caller has not taken yet. Dropped
/// unaccepted (the caller's future was dropped while the rules were being
/// added), it deletes them: a cancelled request leaves no rule.
struct Installed {
    s: Arc<EngineState>,
    nft: Arc<Nft>,
    serials: Vec<u64>,
    armed: bool,
}

impl Installed {
    /// The caller takes the rules: from now on they stand for live
    /// mappings of `table` (the caller holds its lock and adds them).
    fn accept(mut self, table: &mut Table) {
        for s in &self.serials {
            table.installing.remove(s);
        }
        self.armed = false;
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut table = lock(&self.s.table);
            for s in &self.serials {
                table.installing.remove(s);
            }
        }
        let (nft, serials) = (self.nft.clone(), std::mem::take(&mut self.serials));
        // On the forwarder's blocking pool, whatever thread drops this. If
        // it fails, or the network is going away, the rules are garbage
        // that gc, or the table's end with the network, deletes.
        self.s
            .rt
            .spawn_blocking(move || delete_serials(&nft, &serials));
    }
}

/// Add `rules` (of mappings `serials`) to the table of `nft` in one batch,
/// on the forwarder's blocking pool, where it runs to completion even if
/// the caller goes away; then the [`Installed`] guard deletes them again.
async fn install(
    s: &Arc<EngineState>,
    nft: Arc<Nft>,
    rules: Vec<Dnat>,
    serials: Vec<u64>,
) -> std::result::Result<Installed, Errno> {
    lock(&s.table).installing.extend(&serials);
    let (tx, rx) = oneshot::channel();
    let s = s.clone();
    s.rt.clone().spawn_blocking(move || {
        let got = match nft.add(&rules) {
            Ok(()) => Ok(Installed {
                s,
                nft,
                serials,
                armed: true,
            }),
            Err(errno) => {
                // All or none: nothing of it is in the table.
                let mut table = lock(&s.table);
                for s in &serials {
                    table.installing.remove(s);
                }
                Err(errno)
            }
        };
        // A caller that went away drops the guard here, which deletes the
        // rules; one that goes away after this drops it with the channel.
        let _ = tx.send(got);
    });
    rx.await.unwrap_or(Err(Errno::ESHUTDOWN))
}

/// Start forwarding the ports of `reserved` to the sandbox `target`: the
/// kernel rules of all of them in one batch (all or none), then the
/// userspace tasks. On error nothing is published and the ports are closed.
/// With [`PortForwarding::Auto`](super::PortForwarding::Auto), a kernel
/// that refuses the rules leaves this request's ports to the userspace
/// forwarder.
///
/// Cancel safe: rules added for a caller that went away are deleted.
pub(crate) async fn start(
    slot: &EngineCell,
    target: &Target<'_>,
    mut reserved: Reserved,
) -> Result<Vec<PublishedPort>> {
    let Some(engine) = slot.get() else {
        return Ok(Vec::new()); // nothing was reserved
    };
    let s = &engine.s;
    if reserved.0.is_empty() {
        return Ok(Vec::new());
    }
    let mut serials: Vec<Option<u64>> = vec![None; reserved.0.len()];
    let mut installed = None;
    // Real-host ports are never the kernel's (`dnats`), but their clients'
    // addresses need the network's table (`shows_clients`).
    let real_host = reserved
        .0
        .iter()
        .any(|b| b.port.netns == PortNetns::RealHost);
    let shown = if real_host && s.shows_clients().await {
        Some(Shown {
            pools: target.subnets,
        })
    } else {
        None
    };
    // A kernel path refused (`PortForwarding::Kernel`) fails a request
    // of ports it would serve only.
    let in_network = reserved
        .0
        .iter()
        .any(|b| b.port.netns == PortNetns::Network);
    let kernel = if in_network { s.kernel().await? } else { None };
    if let Some(nft) = kernel {
        // Read on the forwarder's thread: /proc/sys/net is the namespace of
        // the thread that opens it.
        let forwarding =
            s.rt.spawn(async {
                [
                    forwarding("ipv4/ip_forward"),
                    forwarding("ipv6/conf/all/forwarding"),
                ]
            })
            .await
            .map_err(|_| forwarder_gone())?;
        let mut rules = Vec::new();
        for (b, serial) in reserved.0.iter().zip(&mut serials) {
            let s = next_serial();
            let d = dnats(target, &b.port, forwarding, s);
            if !d.is_empty() {
                *serial = Some(s);
            }
            rules.extend(d);
        }
        if !rules.is_empty() {
            let object = format!(
                "for sandbox {:?} in table inet {}",
                target.name,
                nft.table()
            );
            let all: Vec<u64> = serials.iter().flatten().copied().collect();
            let got = install(s, nft, rules, all)
                .await
                .map_err(|errno| nft_error("nf_tables: add DNAT rules", &object, errno));
            match fallback(s.mode, got)? {
                Some(guard) => {
                    installed = Some(guard);
                    for (b, serial) in reserved.0.iter_mut().zip(&serials) {
                        if serial.is_some() {
                            b.port.forwarder = Forwarder::Kernel;
                        }
                    }
                }
                // Refused: the userspace forwarder serves these ports.
                None => serials.iter_mut().for_each(|s| *s = None),
            }
        }
    }
    // From here on nothing awaits: the rules and the ports are published
    // together, or (on a panic) the guard deletes the rules.
    let mut published = Vec::with_capacity(reserved.0.len());
    let mut live = Vec::with_capacity(reserved.0.len());
    for (b, serial) in reserved.0.into_iter().zip(serials) {
        let to = SocketAddr::new(target.pod_ip(b.port.host.ip()), b.port.pod_port);
        // Only real-host ports: the others' clients, where the kernel
        // does not serve them, are loopback or pods.
        let shown = shown.filter(|_| b.port.netns == PortNetns::RealHost);
        let mut port = b.port;
        port.client_addresses = shown.is_some();
        let task = match b.sock {
            Sock::Tcp(l) => s.rt.spawn(serve_tcp(l, to, shown)),
            Sock::Udp(u) => s.rt.spawn(serve_udp(u, to, b.udp_idle, shown)),
        };
        published.push(port);
        live.push(ServedPort { port, serial, task });
    }
    let mut table = lock(&s.table);
    if let Some(guard) = installed {
        guard.accept(&mut table);
    }
    match table.entries.get_mut(target.id) {
        Some(entry) => entry.ports.extend(live),
        None => {
            let watcher = match target.holder_pidfd.try_clone() {
                Ok(pidfd) => {
                    s.rt.spawn(watch_holder(
                        target.holder_pid,
                        pidfd,
                        target.id.to_owned(),
                        s.clone(),
                    ))
                    .abort_handle()
                }
                // Without a watcher the mappings still end with remove().
                Err(_) => s.rt.spawn(async {}).abort_handle(),
            };
            table.entries.insert(
                target.id.to_owned(),
                Entry {
                    name: target.name.to_owned(),
                    ports: live,
                    watcher,
                },
            );
        }
    }
    Ok(published)
}

/// End the mappings of sandbox instance `id` once its holder has exited (a
/// pidfd polls readable then, pidfd_open(2)): its rules first, then its
/// sockets.
async fn watch_holder(pid: Pid, pidfd: OwnedFd, id: String, s: Arc<EngineState>) {
    if crate::holder::exited(pid, &pidfd).await.is_err() {
        // Cannot watch it (no fd left to dup): remove() still ends them.
        return;
    }
    // A task of its own, which aborting this watcher does not stop. A
    // failed deletion leaves garbage for gc (and the table's end).
    drop(finish(&s, &id, None));
}
