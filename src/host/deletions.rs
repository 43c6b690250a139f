//! The veths of removed sandboxes, deleted in the background in batches:
//! one thread per network sends the first deletion alone, then whatever
//! queued meanwhile in one kernel operation, until the queue is empty.
//! docs/architecture.md ("Removal") says why and shows it.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use nix::errno::Errno;
use tokio::sync::Notify;

use super::NetInner;
use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::link;

/// The deletions of a network's veths waiting for the one in flight.
#[derive(Debug, Default)]
pub(crate) struct VethDeletions {
    queue: Mutex<Queue>,
    /// Notified when the queue is empty and no deletion is in flight.
    idle: Notify,
}

/// The most deletions in one batch. Each `RTM_SETLINK` of a batch is
/// acknowledged, and the kernel drops acknowledgements that do not fit the
/// socket's receive buffer (`net.core.rmem_default`, 212,992 bytes here:
/// a few hundred acknowledgements); a batch well under that also keeps
/// the kernel's hold of its lock for one batch short.
const BATCH_MAX: usize = 64;

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Whether a thread is sending deletions (and will take `waiting`).
    busy: bool,
    /// Deletions that failed since [`VethDeletions::settled`] last reported.
    failed: Vec<Error>,
    /// Each batch sent, for this crate's tests: its size, and whether the
    /// kernel deleted it in one operation (or had deleted it already), none
    /// of it one by one.
    #[cfg(feature = "internals")]
    batches: Vec<(usize, bool)>,
}

#[derive(Debug)]
struct Waiting {
    name: String,
    object: String,
}

impl VethDeletions {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note a batch sent: a diagnostic event, and for this crate's tests
    /// the batch itself.
    fn record(&self, size: usize, together: bool) {
        if together {
            tracing::debug!(
                veths = size,
                "deleted removed sandboxes' veths in one batch"
            );
        } else {
            tracing::warn!(veths = size, "veth batch deletion fell back to one by one");
        }
        #[cfg(feature = "internals")]
        self.lock().batches.push((size, together));
    }
}

impl VethDeletions {
    /// Delete the host-side veth `name` of network `net` (and so its peer)
    /// in the background, in a batch with the other deletions asked
    /// meanwhile; `object` names it in errors, which
    /// [`settled`](Self::settled) reports. `net` is the network these
    /// deletions belong to: its sender thread takes its host sockets.
    pub(crate) fn later(&self, net: &Arc<NetInner>, name: String, object: String) {
        let lead = {
            let mut queue = self.lock();
            in_process().insert(name.clone());
            queue.waiting.push(Waiting { name, object });
            !std::mem::replace(&mut queue.busy, true)
        };
        if lead {
            start(net.clone());
        }
    }

    /// Whether the deletion of veth `name` is queued or being sent by any
    /// network handle of this process (two handles of one network each
    /// have a queue, and neither takes the other's deletions for failed).
    pub(crate) fn deleting(name: &str) -> bool {
        in_process().contains(name)
    }

    /// Wait until the queue is empty and no deletion is in flight; the
    /// errors of the deletions that failed since the last call, if any.
    /// `bridge` names the network in them.
    pub(crate) async fn settled(&self, bridge: &str) -> Result<()> {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let mut queue = self.lock();
                if !queue.busy {
                    let mut errors = std::mem::take(&mut queue.failed);
                    return match errors.len() {
                        0 => Ok(()),
                        1 => Err(errors.remove(0)),
                        _ => Err(Error::Multiple {
                            op: format!("delete veths of removed sandboxes of {bridge:?}"),
                            errors,
                        }),
                    };
                }
            }
            idle.await;
        }
    }
}

/// A name for the veth of a removed sandbox until it is deleted: `<tag>~`
/// and 48 random bits in 12 hex digits (15 characters, as IFNAMSIZ
/// allows). No sandbox's veth looks like that: a sandbox name has no `~`.
pub(crate) fn dying_name(tag: &str) -> String {
    format!("{}{:012x}", dying_prefix(tag), random() & 0xffff_ffff_ffff)
}

/// What the names of [`dying_name`] start with.
pub(crate) fn dying_prefix(tag: &str) -> String {
    format!("{tag}~")
}

/// Whether `name` is one of [`dying_name`]'s for `tag`.
pub(crate) fn is_dying_name(tag: &str, name: &str) -> bool {
    name.strip_prefix(&dying_prefix(tag))
        .is_some_and(|rest| rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The alias a removed sandbox's veth gets: who removed it (and so will
/// delete it), by PID and start time, so gc tells a live remover's from
/// one whose remover died, PID reuse or not.
pub(crate) fn dying_alias(remover: Ident) -> String {
    format!("{DYING_ALIAS}{}:{}", remover.pid, remover.start)
}

const DYING_ALIAS: &str = "podnet removed by ";

/// The remover an alias of [`dying_alias`] names.
pub(crate) fn dying_remover(alias: &str) -> Option<Ident> {
    let (pid, start) = alias.strip_prefix(DYING_ALIAS)?.split_once(':')?;
    Some(Ident {
        pid: pid.parse().ok()?,
        start: start.parse().ok()?,
    })
}

/// Send the queued deletions from a blocking thread until none is left.
fn start(net: Arc<NetInner>) {
    let sender = Sender {
        net,
        done: false,
        in_flight: Vec::new(),
    };
    match tokio::runtime::Handle::try_current() {
        // A closure the runtime drops unrun (it is shutting down) drops the
        // sender with it, which sends the queue from there.
        Ok(rt) => drop(rt.spawn_blocking(move || sender.run())),
        Err(_) => sender.run(),
    }
}

/// The one thread sending a network's deletions. If its closure is never
/// run (the runtime is shutting down), its drop sends them. If it unwinds,
/// it leaves the queue free, and the deletions still waiting are reported
/// as failed (their veths are left to the end of their namespaces, or to
/// `Network::remove()` and gc).
struct Sender {
    net: Arc<NetInner>,
    done: bool,
    /// The names of the batch being sent.
    in_flight: Vec<String>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if !std::thread::panicking() {
            // Never run (the runtime is shutting down, and blocks for its
            // blocking work anyway): send them from here.
            self.send_all();
            return;
        }
        let mut queue = self.net.deletions.lock();
        queue.busy = false;
        let dropped: Vec<Waiting> = queue.waiting.drain(..).collect();
        {
            // Unwinding from the batch in flight: it is not being sent.
            let mut names = in_process();
            for n in self.in_flight.drain(..) {
                names.remove(&n);
            }
            for w in &dropped {
                names.remove(&w.name);
            }
        }
        queue.failed.extend(
            dropped
                .into_iter()
                .map(|w| Error::sys("delete", &w.object, Errno::ECANCELED)),
        );
        drop(queue);
        self.net.deletions.idle.notify_waiters();
    }
}

impl Sender {
    fn run(mut self) {
        self.send_all();
    }

    /// Send batches until the queue is empty; then free it.
    fn send_all(&mut self) {
        let net = self.net.clone();
        loop {
            let nl = net.host_nl();
            let batch = {
                let mut queue = net.deletions.lock();
                let take = match &nl {
                    Ok(_) => queue.waiting.len().min(BATCH_MAX),
                    // One deletion gets this error; the next may fare better.
                    Err(_) => queue.waiting.len().min(1),
                };
                if take == 0 {
                    queue.busy = false;
                    self.done = true;
                    drop(queue);
                    net.deletions.idle.notify_waiters();
                    return;
                }
                queue.waiting.drain(..take).collect::<Vec<_>>()
            };
            self.in_flight = batch.iter().map(|w| w.name.clone()).collect();
            let (results, together) = match nl {
                Ok(mut nl) => {
                    let links: Vec<(&str, &str)> = batch
                        .iter()
                        .map(|w| (w.name.as_str(), w.object.as_str()))
                        .collect();
                    link::delete_links_blocking(&mut nl, &links, fresh_group())
                }
                Err(e) => (vec![Err(e)], false),
            };
            net.deletions.record(batch.len(), together);
            {
                let mut names = in_process();
                for n in self.in_flight.drain(..) {
                    names.remove(&n);
                }
            }
            let failed: Vec<Error> = results.into_iter().filter_map(|r| r.err()).collect();
            for e in &failed {
                tracing::warn!(error = %e, "veth deletion in the background failed");
            }
            if !failed.is_empty() {
                net.deletions.lock().failed.extend(failed);
            }
        }
    }
}

/// The veths whose deletion a handle of this process has queued or is
/// sending, by their dying names (random, so unique).
fn in_process() -> MutexGuard<'static, HashSet<String>> {
    static NAMES: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);
    NAMES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A link group number for one batch: random, with the top bit set, far
/// from the small numbers people give their own groups
/// (`/etc/iproute2/group`), so that no other link is in it.
fn fresh_group() -> u32 {
    let [a, b, c, d, ..] = random().to_le_bytes();
    u32::from_le_bytes([a, b, c, d]) | 0x8000_0000
}

/// 64 random bits: RandomState's keys come from the OS once per thread,
/// then step by one, and hashing makes each value unrelated to the last.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// For this crate's tests.
#[cfg(feature = "internals")]
impl VethDeletions {
    /// The batches sent so far: size, and whether deleted together.
    pub(crate) fn batches(&self) -> Vec<(usize, bool)> {
        self.lock().batches.clone()
    }

    /// How many deletions are waiting.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Hold the queue as if a deletion were in flight, until the returned
    /// guard is dropped (then what queued meanwhile is sent together).
    pub(crate) fn hold(net: &Arc<NetInner>) -> Option<Held> {
        let mut queue = net.deletions.lock();
        (!std::mem::replace(&mut queue.busy, true)).then(|| Held(net.clone()))
    }
}

/// See [`VethDeletions::hold`].
#[cfg(feature = "internals")]
#[derive(Debug)]
pub(crate) struct Held(Arc<NetInner>);

#[cfg(feature = "internals")]
impl Drop for Held {
    fn drop(&mut self) {
        start(self.0.clone());
    }
}
