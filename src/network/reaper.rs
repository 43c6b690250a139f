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
//! gone, so its name and address can be used again at once. In the kernel
//! a batch of 8 took 22-40 ms where one took ~15 ms; with 8 removals in
//! flight, 100 sandboxes' veths went in 16 batches.
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

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Whether a thread is sending deletions (and will take `waiting`).
    busy: bool,
    /// The size of each batch sent, for this crate's tests.
    #[cfg(feature = "internals")]
    batches: Vec<usize>,
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
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(move || send_all(&net))),
        Err(_) => send_all(&net),
    }
}

fn send_all(net: &NetInner) {
    // If this thread unwinds, the queue is not left busy with nobody to
    // take it: the waiting deletions fail (their senders are dropped).
    struct Unbusy<'a>(&'a Reaper);
    impl Drop for Unbusy<'_> {
        fn drop(&mut self) {
            let mut queue = self.0.lock();
            queue.busy = false;
            queue.waiting.clear();
        }
    }
    let unbusy = Unbusy(&net.reaper);
    // How many the last batch had, once it is sent.
    let mut sent = 0;
    loop {
        let nl = net.host_nl();
        let batch = {
            let mut queue = net.reaper.lock();
            if sent > 0 && !queue.waiting.is_empty() {
                // Deletions came while the last batch was in flight: its
                // callers are being answered now and may each ask for
                // another. Give them a moment to join this batch.
                let want = queue.waiting.len() + sent;
                queue = net
                    .reaper
                    .arrived
                    .wait_timeout_while(queue, LINGER, |q| q.waiting.len() < want)
                    .map_or_else(|p| p.into_inner().0, |(q, _)| q);
            }
            let take = match &nl {
                Ok(_) => queue.waiting.len(),
                // One waiting removal gets this error; the next may fare better.
                Err(_) => queue.waiting.len().min(1),
            };
            if take == 0 {
                queue.busy = false;
                std::mem::forget(unbusy);
                return;
            }
            #[cfg(feature = "internals")]
            queue.batches.push(take);
            queue.waiting.drain(..take).collect::<Vec<_>>()
        };
        sent = batch.len();
        let results = match nl {
            Ok(mut nl) => {
                let links: Vec<(&str, &str)> = batch
                    .iter()
                    .map(|w| (w.name.as_str(), w.object.as_str()))
                    .collect();
                link::delete_links_blocking(&mut nl, &links, fresh_group())
            }
            Err(e) => vec![Err(e)],
        };
        for (w, result) in batch.into_iter().zip(results) {
            let _ = w.done.send(result);
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
    /// The sizes of the batches sent so far.
    pub(crate) fn batches(&self) -> Vec<usize> {
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
