//! Spawner threads: a few per process (one per CPU, at most four, used in
//! turn), each living as long as the process, so that a parent-death signal
//! set in a child forked there fires when the process exits, not when the
//! thread that forked it ends (prctl(2)). Forked here: the holders that
//! carry that signal (`spawn.rs`) and the commands of `spawn_tied`.

use std::sync::{mpsc, Mutex, OnceLock};

use nix::errno::Errno;

use crate::error::{Error, Result};

/// Spawn `cmd` from the spawner thread, which lives as long as the process:
/// a `PR_SET_PDEATHSIG` set in the child's `pre_exec` then fires when the
/// process exits, not when some runtime thread that happened to fork ends.
/// The child is registered with the caller's tokio runtime.
pub(crate) async fn spawn_tied(
    mut cmd: tokio::process::Command,
) -> Result<std::io::Result<tokio::process::Child>> {
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner_submit(Box::new(move || {
        if tx.is_closed() {
            return;
        }
        let _entered = runtime.enter();
        // A child whose caller went away is killed when dropped here.
        cmd.kill_on_drop(true);
        let _ = tx.send(cmd.spawn());
    }))?;
    rx.await.map_err(|_| Error::Sys {
        op: "spawn process",
        object: "the spawner thread went away".into(),
        errno: Errno::ECHILD,
    })
}

/// Wait until the spawner threads have run every job submitted before this
/// call (with a holder of a cancelled spawn ended). For tests.
///
/// A job goes to each running thread's queue by hand: the round-robin turn
/// is shared by every caller in the process, so N jobs through
/// [`spawner_submit`] could land twice on one thread and miss another.
#[cfg(feature = "internals")]
pub async fn flush_spawner() -> Result<()> {
    let me = std::process::id();
    let queues: Vec<mpsc::Sender<Job>> = {
        let guard = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(s) if s.pid == me => s.queues.clone(),
            _ => Vec::new(),
        }
    };
    for queue in queues {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if queue
            .send(Box::new(move || {
                let _ = tx.send(());
            }))
            .is_err()
        {
            // That thread is gone, and its queue with it.
            continue;
        }
        rx.await.map_err(|_| Error::Sys {
            op: "flush holder spawner",
            object: "the spawner thread went away".into(),
            errno: Errno::ECHILD,
        })?;
    }
    Ok(())
}

type Job = Box<dyn FnOnce() + Send>;

/// The spawner threads' queues, with the PID of the process that started
/// them (a child forked from a podnet process has no spawner thread), and
/// the next one to use.
static SPAWNER: Mutex<Option<Spawners>> = Mutex::new(None);

struct Spawners {
    pid: u32,
    queues: Vec<mpsc::Sender<Job>>,
    next: usize,
}

/// How many spawner threads a process runs at most: clones in flight at
/// once run on as many CPUs (a clone is kernel work: a namespace and an
/// exec), and each thread lives as long as the process (its exit would fire
/// the death signal of every holder it made), so they are few. Asked once:
/// `available_parallelism` reads the cgroup's CPU quota (three files).
fn spawner_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
}

pub(super) fn spawner_submit(job: Job) -> Result<()> {
    let mut guard = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::process::id();
    if guard.as_ref().is_none_or(|s| s.pid != me) {
        *guard = Some(Spawners {
            pid: me,
            queues: Vec::new(),
            next: 0,
        });
    }
    let spawners = guard.as_mut().ok_or(Error::Sys {
        op: "spawn holder",
        object: "no spawner".into(),
        errno: Errno::ECHILD,
    })?;
    // Round robin; a thread is started when its turn first comes.
    let i = spawners.next % spawner_threads();
    spawners.next = spawners.next.wrapping_add(1);
    let job = match spawners.queues.get(i) {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("podnet-spawner".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                // This thread must outlive every job: its exit would fire
                // PR_SET_PDEATHSIG on every holder it made.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })
        .map_err(|e| Error::io("start the holder spawner thread", "", e))?;
    tx.send(job).map_err(|_| Error::Sys {
        op: "spawn holder",
        object: "the spawner thread went away".into(),
        errno: Errno::ECHILD,
    })?;
    if i < spawners.queues.len() {
        spawners.queues[i] = tx;
    } else {
        spawners.queues.push(tx);
    }
    Ok(())
}
