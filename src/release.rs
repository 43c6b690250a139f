//! The deferred, batched release of removed sandboxes: their network
//! namespaces' fds and their holders are kept a moment and let go in
//! batches, so the kernel destroys namespaces together instead of one in
//! the way of each next removal's veth deletion.

use std::os::fd::OwnedFd;

use nix::unistd::Pid;

/// Keep the network namespace `ns` of a removed sandbox open, and its
/// holder (`holder`, from `Holder::end_later`) alive, for a moment, so the
/// kernel destroys namespaces in batches and the next veth deletions do not
/// wait for them: the kernel destroys a namespace as soon as the last
/// reference goes, on a worker that takes the locks a veth's deletion waits
/// for, and a holder's exit leaves work that the next deletion's
/// `rcu_barrier()` waits for (`docs/performance.md` measures teardown).
/// Both are let go by the releaser's thread once [`BATCH`] are kept, or
/// [`IDLE`] after the last one came.
///
/// Only while [`runs`]: otherwise nothing would let them go.
pub(crate) fn later(ns: Option<OwnedFd>, holder: Option<crate::holder::Ending>) {
    if ns.is_none() && holder.is_none() {
        return;
    }
    let releaser = &*RELEASER;
    if !runs() {
        // No thread to let them go (it could not be started, or this is a
        // forked child): now, then.
        crate::holder::end(holder.as_slice());
        return;
    }
    let mut g = releaser.state.lock().unwrap_or_else(|p| p.into_inner());
    g.namespaces.extend(ns);
    g.holders.extend(holder);
    g.last = Some(std::time::Instant::now());
    drop(g);
    releaser.wake.notify_one();
}

/// Namespaces (or holders) kept at most before they are let go.
const BATCH: usize = 64;

/// How long they are kept after the last one came.
const IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether this process's releaser thread runs, so that what is kept is let
/// go (a forked child has the releaser of its parent, but not its thread).
pub(crate) fn runs() -> bool {
    RELEASER.pid == std::process::id()
}

/// Whether the holder `pid` was handed to [`later`] by this process and is
/// not ended yet (gc leaves it alone).
pub(crate) fn pending(pid: Pid) -> bool {
    let releaser = &*RELEASER;
    runs()
        && releaser
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holders
            .iter()
            .any(|h| h.pid == pid)
}

#[derive(Default)]
struct Kept {
    namespaces: Vec<OwnedFd>,
    /// Holders to kill and reap.
    holders: Vec<crate::holder::Ending>,
    /// When the last one came.
    last: Option<std::time::Instant>,
}

impl Kept {
    fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.holders.is_empty()
    }

    /// A batch is full: let go at once.
    fn full(&self) -> bool {
        self.namespaces.len().max(self.holders.len()) >= BATCH
    }
}

struct Releaser {
    state: std::sync::Mutex<Kept>,
    wake: std::sync::Condvar,
    /// The process whose thread empties it (0: none could be started).
    pid: u32,
}

/// The releaser, with the thread that empties it when a batch is full or it
/// has been idle for [`IDLE`] (started with the first release; it
/// sleeps while empty). Holders are killed first, then the namespaces'
/// fds closed, outside the lock.
static RELEASER: std::sync::LazyLock<Releaser> = std::sync::LazyLock::new(|| {
    let started = std::thread::Builder::new()
        .name("podnet-release".into())
        .spawn(|| {
            let releaser = &*RELEASER;
            let mut g = releaser.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if g.is_empty() {
                    g = releaser.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                let idle = g.last.map_or(IDLE, |t| t.elapsed());
                if g.full() || idle >= IDLE {
                    let batch = std::mem::take(&mut *g);
                    drop(g);
                    crate::holder::end(&batch.holders);
                    drop(batch);
                    g = releaser.state.lock().unwrap_or_else(|p| p.into_inner());
                } else {
                    g = releaser
                        .wake
                        .wait_timeout(g, IDLE - idle)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        });
    Releaser {
        state: std::sync::Mutex::new(Kept::default()),
        wake: std::sync::Condvar::new(),
        pid: if started.is_ok() {
            std::process::id()
        } else {
            0
        },
    }
});
