//! Veth deletions asked while another is in flight go to the kernel
//! together.
//!
//! The kernel deletes a veth inside the request, then waits for the network
//! stack to let go of both ends: ~20 ms, nearly all of it waiting, and
//! deletions sent at once from many threads mostly wait one after another.
//! So a network sends one deletion at a time: the first removal to ask
//! sends its own (one by one, nothing changes), and those that ask
//! meanwhile queue here; when it returns, its thread sends all of them in
//! one kernel operation (`link::delete_links_blocking`), and so on until
//! the queue is empty. Each removal still returns only once its veth is
//! gone, so its name and address can be used again at once. A batch of 8
//! costs the kernel about what one deletion does (README, "How it is
//! built", with the command that shows it).
//!
//! The group that carries a batch is random (31 bits), so a link of
//! anybody else is in it only if they picked the same number for a group
//! of their own.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use tokio::sync::oneshot;

use super::NetInner;
use crate::error::{Error, Result};
use crate::link;

/// The deletions of a network's veths waiting for the one in flight.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    queue: Mutex<Queue>,
    /// Signalled when a deletion is queued.
    arrived: Condvar,
}

/// How long the thread sending deletions waits, after a batch, for its
/// callers' next deletions: a fraction of what a batch takes in the kernel
/// (15-40 ms), and only while deletions are queued meanwhile (so never
/// for removals one after another).
const LINGER: Duration = Duration::from_millis(1);

/// The most deletions in one batch. Each `RTM_SETLINK` of a batch is
/// acknowledged, and the kernel drops acknowledgements that do not fit the
/// socket's receive buffer (`net.core.rmem_default`, 212,992 bytes here:
/// a few hundred acknowledgements); a batch well under that also keeps
/// each wait short.
const BATCH_MAX: usize = 64;

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Whether a thread is sending deletions (and will take `waiting`).
    busy: bool,
    /// Each batch sent, for this crate's tests: its size, and whether the
    /// kernel deleted it in one operation.
    #[cfg(feature = "internals")]
    batches: Vec<(usize, bool)>,
}

#[derive(Debug)]
struct Waiting {
    name: String,
    object: String,
    done: oneshot::Sender<Result<bool>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note a batch sent, for this crate's tests (nothing otherwise).
    fn record(&self, _size: usize, _together: bool) {
        #[cfg(feature = "internals")]
        self.lock().batches.push((_size, _together));
    }
}

impl NetInner {
    /// Delete the host-side veth `name` (and so its peer), in a batch with
    /// the other deletions asked meanwhile; `object` names it in errors.
    /// `Ok(false)` if it was gone already.
    ///
    /// # Cancel safety
    /// The deletion goes on if the future is dropped.
    pub(crate) async fn delete_veth(self: &Arc<Self>, name: &str, object: String) -> Result<bool> {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.reaper.lock();
            queue.waiting.push(Waiting {
                name: name.to_owned(),
                object,
                done,
            });
            !std::mem::replace(&mut queue.busy, true)
        };
        self.reaper.arrived.notify_one();
        if lead {
            start(self.clone());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Error::sys("delete veth", name, Errno::EINTR)))
    }
}

/// Send the queued deletions from a blocking thread until none is left.
fn start(net: Arc<NetInner>) {
    let sender = Sender { net, done: false };
    match tokio::runtime::Handle::try_current() {
        // A closure the runtime drops unrun (it is shutting down) drops the
        // sender with it, which frees the queue.
        Ok(rt) => drop(rt.spawn_blocking(move || sender.run())),
        Err(_) => sender.run(),
    }
}

/// The one thread sending a network's deletions. If it ends before the
/// queue is empty (it unwinds, or its closure is never run), it leaves
/// the queue free, and the waiting deletions fail (their answer channels
/// are dropped) rather than wait for nobody.
struct Sender {
    net: Arc<NetInner>,
    done: bool,
}

impl Drop for Sender {
    fn drop(&mut self) {
        if !self.done {
            let mut queue = self.net.reaper.lock();
            queue.busy = false;
            queue.waiting.clear();
        }
    }
}

impl Sender {
    fn run(mut self) {
        let net = &self.net;
        // How many the last batch had, once it is sent.
        let mut sent = 0;
        loop {
            let nl = net.host_nl();
            let batch = {
                let mut queue = net.reaper.lock();
                if sent > 0 && !queue.waiting.is_empty() {
                    // Deletions came while the last batch was in flight:
                    // its callers are being answered now and may each ask
                    // for another. Give them a moment to join this batch.
                    let want = (queue.waiting.len() + sent).min(BATCH_MAX);
                    queue = net
                        .reaper
                        .arrived
                        .wait_timeout_while(queue, LINGER, |q| q.waiting.len() < want)
                        .map_or_else(|p| p.into_inner().0, |(q, _)| q);
                }
                let take = match &nl {
                    Ok(_) => queue.waiting.len().min(BATCH_MAX),
                    // One waiting removal gets this error; the next may fare better.
                    Err(_) => queue.waiting.len().min(1),
                };
                if take == 0 {
                    queue.busy = false;
                    self.done = true;
                    return;
                }
                queue.waiting.drain(..take).collect::<Vec<_>>()
            };
            sent = batch.len();
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
            net.reaper.record(sent, together);
            for (w, result) in batch.into_iter().zip(results) {
                let _ = w.done.send(result);
            }
        }
    }
}

/// A link group number for one batch: random, with the top bit set, far
/// from the small numbers people give their own groups
/// (`/etc/iproute2/group`), so that no other link is in it.
fn fresh_group() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    // RandomState's keys come from the OS once per thread, then step by one:
    // hashing makes each value unrelated to the last.
    let [a, b, c, d, ..] = h.finish().to_le_bytes();
    u32::from_le_bytes([a, b, c, d]) | 0x8000_0000
}

/// For this crate's tests.
#[cfg(feature = "internals")]
impl Reaper {
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
        let mut queue = net.reaper.lock();
        (!std::mem::replace(&mut queue.busy, true)).then(|| Held(net.clone()))
    }
}

/// See [`Reaper::hold`].
#[cfg(feature = "internals")]
#[derive(Debug)]
pub(crate) struct Held(Arc<NetInner>);

#[cfg(feature = "internals")]
impl Drop for Held {
    fn drop(&mut self) {
        start(self.0.clone());
    }
}
