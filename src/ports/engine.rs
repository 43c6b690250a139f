//! The forwarder of a network ([`Engine`]): its thread in the host
//! namespace with a current-thread runtime, the table of the mappings it
//! serves, and what callers read of that table.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use tokio::sync::{oneshot, OnceCell};
use tokio::task::{AbortHandle, JoinHandle};

use super::kernel::open_kernel;
use super::mapping::{PortForwarding, PublishedPort};
use crate::error::{Error, Result};
use crate::link::nft::Nft;

/// The network's forwarder, started with its first mapping.
pub(crate) type EngineCell = OnceCell<Engine>;

/// The forwarder thread of a network, and the mappings it serves.
///
/// One forwarder per network, started with its first mapping: an OS thread
/// that enters the network's host namespace once and runs a current-thread
/// tokio runtime there. A socket keeps the namespace it was made in
/// (socket(7) takes `current->nsproxy->net_ns` at creation), so every socket
/// the forwarder makes (the host-side listeners and the connections to the
/// sandbox) lives in the host namespace, whichever thread asked for the
/// mapping, and the caller's runtime (current-thread or not) plays no part in
/// moving bytes. Each mapping is a task on that runtime.
///
/// A mapping ends when its sandbox is removed, when its holder dies (the
/// forwarder watches the holder's pidfd, so this holds whoever removed the
/// sandbox), when the last handle to the network is dropped, or with the
/// process: its rules are deleted then. The rules are in a table owned by
/// the network's nf_tables socket in this process, so the kernel deletes
/// them when the process ends, however it ends. Nothing is on disk.
pub(crate) struct Engine {
    pub(super) s: Arc<EngineState>,
    /// Dropping it ends the thread, whose runtime then drops every task and
    /// with them every socket.
    _stop: oneshot::Sender<()>,
}

/// What the engine's tasks share with it.
pub(super) struct EngineState {
    pub(super) rt: tokio::runtime::Handle,
    /// The network's nf_tables socket and the table it owns, when the
    /// kernel forwards: decided (and the table made) by the first mapping
    /// that gets past its binds, so a taken port changes nothing, not even
    /// the table. The socket stays open as long as the engine (the
    /// network) lives; the kernel deletes the table when it closes.
    pub(super) kernel: std::sync::OnceLock<Option<Arc<Nft>>>,
    /// Whether the pod can be shown its clients' own addresses: decided
    /// by the first real-host mapping (`shows_clients`).
    clients: OnceCell<bool>,
    bridge: String,
    pub(super) mode: PortForwarding,
    pub(super) table: Mutex<Table>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// What the engine serves, and the kernel rules it stands behind: every
/// podnet rule of the table is claimed by a live mapping or by a request
/// adding it (by the serial in its comment); gc deletes any other (left by
/// a deletion that failed). A request whose caller went away while its
/// rules were being added deletes them (`Installed`).
#[derive(Default)]
pub(super) struct Table {
    /// Live mappings by sandbox instance id.
    pub(super) entries: HashMap<String, Entry>,
    /// Serials of mappings whose rules are being added: not live yet, but
    /// not garbage either (gc leaves them alone).
    pub(super) installing: HashSet<u64>,
}

impl Table {
    /// Whether a rule of mapping `serial` stands for a mapping that is
    /// live or being made; any other podnet rule in the table is garbage.
    pub(super) fn claims(&self, serial: u64) -> bool {
        self.installing.contains(&serial)
            || self
                .entries
                .values()
                .any(|e| e.ports.iter().any(|l| l.serial == Some(serial)))
    }
}

pub(super) struct Entry {
    /// The sandbox's name (gc leaves the mappings of a sandbox whose record
    /// is corrupt alone).
    pub(super) name: String,
    pub(super) ports: Vec<ServedPort>,
    /// Ends the entry when the holder dies.
    pub(super) watcher: AbortHandle,
}

/// One published port being served: its task, and its kernel rules.
pub(super) struct ServedPort {
    pub(super) port: PublishedPort,
    /// The serial its kernel rules carry, if the kernel forwards it.
    pub(super) serial: Option<u64>,
    pub(super) task: JoinHandle<()>,
}

pub(super) fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn forwarder_gone() -> Error {
    Error::sys(
        "port forwarder",
        "its thread has ended (the network is being dropped)",
        Errno::ESHUTDOWN,
    )
}

impl EngineState {
    /// The kernel path, if decided and on.
    pub(super) fn nft(&self) -> Option<Arc<Nft>> {
        self.kernel.get().cloned().flatten()
    }

    /// The kernel path: decided at the first call, on the forwarder's
    /// thread, whose namespace the nf_tables socket then belongs to.
    pub(super) async fn kernel(&self) -> Result<Option<Arc<Nft>>> {
        if let Some(k) = self.kernel.get() {
            return Ok(k.clone());
        }
        let (bridge, mode) = (self.bridge.clone(), self.mode);
        let k = self
            .rt
            .spawn(async move { open_kernel(&bridge, mode) })
            .await
            .map_err(|_| forwarder_gone())??;
        Ok(self.kernel.get_or_init(|| k).clone())
    }
}

impl EngineState {
    /// Whether the forwarder can show pods their clients' own addresses:
    /// the kernel path must be on (the network's table takes the two rules
    /// that mark the pod's replies, `Nft::add_client_rules`), and the host
    /// namespace must take the policy rules and routes that deliver them
    /// (`link::client`). Decided once, on the forwarder's thread (the
    /// routing socket is opened in its namespace); a refusal is not an
    /// error: the pod then sees the gateway's address, as without.
    pub(super) async fn shows_clients(&self) -> bool {
        let decided = self.clients.get_or_init(|| async {
            let Ok(Some(nft)) = self.kernel().await else {
                return false;
            };
            let made = self.rt.spawn(async move {
                nft.add_client_rules().map_err(|errno| errno.to_string())?;
                let mut nl = crate::link::Nl::here().map_err(|e| e.to_string())?;
                crate::link::client::route_client_replies(&mut nl).map_err(|e| e.to_string())
            });
            match made.await {
                Ok(Ok(())) => true,
                Ok(Err(why)) => {
                    tracing::debug!(%why, "ports: pods are not shown their clients' addresses");
                    false
                }
                Err(_) => false,
            }
        });
        *decided.await
    }
}

impl Engine {
    /// Start the forwarder thread in the host namespace `host_ns`, with the
    /// kernel path of network `bridge` if `mode` asks for it and the kernel
    /// allows it.
    pub(super) async fn start(
        host_ns: &OwnedFd,
        bridge: &str,
        mode: PortForwarding,
    ) -> Result<Engine> {
        let ns = host_ns
            .try_clone()
            .map_err(|e| Error::io("duplicate host netns fd for the port forwarder", "", e))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("podnet-ports".into())
            .spawn(move || {
                // The thread stays in the host namespace until it ends, so
                // there is nothing to restore.
                if let Err(errno) = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(Error::sys(
                        "enter the host network namespace",
                        "for the port forwarder",
                        errno,
                    )));
                    return;
                }
                drop(ns);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::io(
                            "start the port forwarder's runtime",
                            "",
                            e,
                        )));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                // Serve until the network is dropped. Dropping `rt` then
                // drops every task and closes every socket; the nf_tables
                // socket closes with the last handle to it (the engine's),
                // and the kernel deletes the table with every rule in it.
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| Error::io("start the port forwarder thread", "", e))?;
        let rt = ready_rx.await.map_err(|_| forwarder_gone())??;
        Ok(Engine {
            s: Arc::new(EngineState {
                rt,
                kernel: std::sync::OnceLock::new(),
                clients: OnceCell::new(),
                bridge: bridge.to_owned(),
                mode,
                table: Mutex::default(),
            }),
            _stop: stop_tx,
        })
    }
}

/// The nf_tables socket of the network whose forwarder is in `slot`, and
/// the table it owns, if the kernel forwards its mappings.
pub(crate) fn nft_of(slot: &EngineCell) -> Option<Arc<Nft>> {
    slot.get().and_then(|e| e.s.nft())
}

/// The live mappings of sandbox instance `id`.
pub(crate) fn list(slot: &EngineCell, id: &str) -> Vec<PublishedPort> {
    let Some(engine) = slot.get() else {
        return Vec::new();
    };
    lock(&engine.s.table)
        .entries
        .get(id)
        .map(|e| e.ports.iter().map(|l| l.port).collect())
        .unwrap_or_default()
}

/// How many mappings' rules are being added at the time of the call (for this crate's tests).
#[cfg(feature = "internals")]
pub(crate) fn installing(slot: &EngineCell) -> usize {
    slot.get().map_or(0, |e| lock(&e.s.table).installing.len())
}

#[cfg(test)]
mod tests {
    use super::super::mapping::{Forwarder, Protocol};
    use super::*;

    #[test]
    fn a_rule_is_claimed_while_its_mapping_is_being_added_or_live_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _in = rt.enter();
        let mut table = Table::default();
        assert!(!table.claims(1));
        table.installing.insert(1);
        assert!(table.claims(1) && !table.claims(2));
        let live = |serial| ServedPort {
            port: PublishedPort {
                protocol: Protocol::Tcp,
                host: "0.0.0.0:1".parse().unwrap(),
                netns: super::super::mapping::PortNetns::Network,
                pod_port: 1,
                forwarder: Forwarder::Kernel,
                client_addresses: false,
            },
            serial,
            task: tokio::spawn(async {}),
        };
        table.entries.insert(
            "id".into(),
            Entry {
                name: "web".into(),
                ports: vec![live(Some(2)), live(None)],
                watcher: tokio::spawn(async {}).abort_handle(),
            },
        );
        assert!(table.claims(1) && table.claims(2) && !table.claims(3));
        table.installing.clear();
        assert!(!table.claims(1) && table.claims(2));
    }
}
