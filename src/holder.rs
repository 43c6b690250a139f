//! Spawning and watching the holder (pause) process of a sandbox.
//!
//! This is the only file that forks by hand. A holder is made by one
//! `clone(CLONE_VM | CLONE_FILES | CLONE_PIDFD | CLONE_CHILD_CLEARTID |
//! CLONE_NEW*)`: the kernel makes the namespaces and returns a pidfd for the
//! child, which then calls `execve` on a tiny program of our own (kept in a
//! sealed memfd) while we go on: the namespaces can be entered and given
//! links at once. The child shares our fd table until its first call makes
//! it a table of its own with only our lowest fds (`close_range(..,
//! CLOSE_RANGE_UNSHARE)`), which it closes in its next calls but for podnet's
//! own (the program, `/dev/null`, the lifeline): a fork would copy every fd
//! of the creator (a cost that grows
//! with its sandboxes) and hold its sockets open until the exec. The child
//! runs on a stack we allocated and makes only raw system calls, without
//! glibc, whose wrappers would set `errno` in the thread-local storage it
//! shares with the thread that cloned it; everything it uses is prepared
//! before the clone, in memory the `Holder` owns until the kernel clears a
//! word of it at the child's exec or exit (`CLONE_CHILD_CLEARTID`), which
//! [`Holder::started`] waits for before it reads the step and errno a failed
//! child stored there. Where those raw calls are not written (aarch64), the
//! clone also has `CLONE_VFORK`, which suspends us until then (glibc's
//! `posix_spawn` does the same).
//!
//! Why exec at all: a plain fork of a multi-threaded runtime shares its whole
//! heap copy-on-write, and keeps all of it alive once the creator exits. The
//! program we exec is 86 bytes of code: it names itself `podnet-pause`, then
//! polls its fd 3 and exits once that is readable, or, without an fd 3,
//! calls `pause()` forever. Its signal dispositions are set before the exec:
//! SIGTERM and SIGINT end it (default action), SIGCHLD is ignored so the
//! kernel reaps any child it adopts, every other fd but its lifeline (fd 3)
//! is closed and its stdio is `/dev/null`. Like Kubernetes' `pause.c`, minus the C runtime.
//!
//! A holder that dies with its creator gets as fd 3 a pidfd of the creator
//! process (its *lifeline*, [`lifeline`]), which polls readable when that
//! process exits, so it is cloned on whatever thread creates the sandbox.
//! A parent-death signal (`PR_SET_PDEATHSIG`) would fire when the *thread*
//! that cloned it exits (prctl(2)), not the process: where the holder
//! program has no lifeline (aarch64), or the kernel refuses `pidfd_open`,
//! those holders are cloned on a few dedicated threads per process instead
//! (one per CPU, at most four, used in turn), or on the main thread.

use std::ffi::{c_char, c_int, c_void, CString};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use nix::errno::Errno;
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::ident::{is_alive, proc_start_time};

/// The name the holder gives itself (`ps -o comm`).
pub(crate) const HOLDER_COMM: &str = "podnet-pause";

/// What to make a holder with.
#[derive(Debug, Clone)]
pub(crate) struct HolderSpec {
    /// `argv` of the holder: its name, then whatever identifies it (see `Sandbox`).
    pub argv: Vec<String>,
    /// The namespaces the holder gets (`CLONE_NEWNET`, ...).
    pub namespaces: CloneFlags,
    /// Whether the holder ends when the creating process exits.
    pub die_with_creator: bool,
}

impl HolderSpec {
    /// How errors name the holder: its argv after its name (the network,
    /// the sandbox, the creator).
    fn object(&self) -> String {
        format!("[{}]", self.argv.get(1..).unwrap_or_default().join(" "))
    }
}

/// A running (or dead, not yet reaped) holder, owned by its pidfd.
#[derive(Debug)]
pub(crate) struct Holder {
    pid: Pid,
    /// Shared with commands and threads that join the sandbox through it.
    pidfd: Arc<OwnedFd>,
    start_time: u64,
    /// Whether we are its parent, so `waitid` can reap it.
    child: bool,
    /// Whether it dies with this process (its lifeline, or
    /// `PR_SET_PDEATHSIG`): a child of ours made so, never an adopted one.
    dies_with_us: bool,
    /// Whether it has been reaped (only meaningful for our children).
    reaped: std::sync::atomic::AtomicBool,
    /// Until [`started`](Holder::started): the memory our child may still
    /// be running on before its exec.
    launch: Option<Launch>,
}

/// How a holder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// It died, but it was not our child, so its status is not ours to read.
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Exit::Unknown => f.write_str("exit status unknown"),
        }
    }
}

impl Holder {
    /// The holder's PID.
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22):
    /// with the PID, an identity that survives PID reuse.
    pub(crate) fn start_time(&self) -> u64 {
        self.start_time
    }

    /// The pidfd, which `setns(2)` accepts to enter the holder's namespaces.
    pub(crate) fn pidfd(&self) -> &Arc<OwnedFd> {
        &self.pidfd
    }

    /// Has it exited? Reaps it if so (when it is our child). Never blocks.
    /// `Err` when that cannot be told.
    pub(crate) fn try_exit(&self) -> std::result::Result<Option<Exit>, Errno> {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        // A pidfd polls readable once the process has exited (pidfd_open(2)).
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)? {
            0 => Ok(None),
            _ => Ok(Some(self.reap())),
        }
    }

    /// Reap an exited holder and say how it ended.
    fn reap(&self) -> Exit {
        if !self.child {
            return Exit::Unknown;
        }
        let status = waitid(
            Id::PIDFd(self.pidfd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        );
        if matches!(
            status,
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::ECHILD)
        ) {
            self.reaped.store(true, Ordering::Relaxed);
        }
        match status {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
            // ECHILD: reaped already by an earlier call; the status was reported then.
            _ => Exit::Unknown,
        }
    }

    /// Wait until our child has exec'd the holder program (at once, if it
    /// has: it runs alongside its creator, see `clone_holder`), and say
    /// whether a step before failed; then it is reaped. Until this
    /// returns, the holder's namespaces exist (they can be entered and
    /// given links) but it may not be running the holder program yet.
    pub(crate) fn started(&mut self) -> Result<()> {
        let Some(launch) = self.launch.take() else {
            return Ok(());
        };
        let Some((step, errno)) = launch.wait() else {
            return Ok(());
        };
        let _ = waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED);
        self.reaped.store(true, Ordering::Relaxed);
        let op = usize::try_from(step)
            .ok()
            .and_then(|s| STEPS.get(s))
            .copied()
            .unwrap_or("spawn holder");
        Err(Error::sys(op, &launch.object, Errno::from_raw(errno)))
    }

    /// Send SIGKILL. A holder that is already gone is not an error.
    pub(crate) fn kill(&self) -> Result<()> {
        sigkill(&self.pidfd).map_err(|errno| Error::sys("kill holder", self.pid.to_string(), errno))
    }

    /// Hand the ending of this holder to someone else (`netns::bury`): its
    /// pidfd, to kill it and reap it with `end`, if it is a child of ours
    /// that dies with this process anyway (so it cannot outlive us if that
    /// is never done). `None` for any other holder: end it now.
    pub(crate) fn end_later(&self) -> Option<Ending> {
        if !self.child || !self.dies_with_us || self.reaped.swap(true, Ordering::Relaxed) {
            return None;
        }
        Some(Ending {
            pid: self.pid,
            pidfd: self.pidfd.clone(),
        })
    }

    /// Wait until the holder has exited, reap it, and say how it ended.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is consumed until the holder has exited.
    pub(crate) async fn wait(&self) -> Result<Exit> {
        if let Ok(Some(exit)) = self.try_exit() {
            return Ok(exit);
        }
        wait_exit(self.pid, &self.pidfd).await?;
        Ok(self.reap())
    }

    /// Adopt a holder we did not create, checking that `pid` still is the
    /// process that started at `start_time` (so a reused PID is refused).
    pub(crate) fn adopt(pid: Pid, start_time: u64) -> Result<Option<Holder>> {
        let Some(pidfd) = pidfd_of(pid, start_time)? else {
            return Ok(None);
        };
        // Our own child (re-opened by the process that made it) is ours to reap.
        let child = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse::<i32>().ok()
            })
            == Some(nix::unistd::getpid().as_raw());
        Ok(Some(Holder {
            pid,
            pidfd: Arc::new(pidfd),
            start_time,
            child,
            dies_with_us: false,
            reaped: false.into(),
            launch: None,
        }))
    }
}

/// A pidfd of the process `pid` that started at `start_time`, or `None`
/// if it is gone (a reused PID has another start time).
pub(crate) fn pidfd_of(pid: Pid, start_time: u64) -> Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
    // JUSTIFICATION: nix 0.31 has no pidfd_open wrapper.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return match Errno::last() {
            Errno::ESRCH => Ok(None),
            errno => Err(Error::sys("pidfd_open holder", pid.to_string(), errno)),
        };
    }
    let fd = RawFd::try_from(fd).map_err(|_| Error::sys("pidfd_open", "", Errno::EBADF))?;
    // SAFETY: the syscall returned a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The pidfd pins the process it was opened for; if that process still
    // has the start time we recorded, it is the holder, not a reused PID.
    Ok(is_alive(pid.as_raw(), start_time).then_some(pidfd))
}

/// A holder found by [`find_holders`].
#[derive(Debug)]
pub(crate) struct Found {
    pub pid: Pid,
    pub start: u64,
    /// The sandbox it holds.
    pub name: String,
    /// The process that made it, `(pid, start time)`, if its argv says.
    pub creator: Option<(i32, u64)>,
}

/// Holders of the network `key` (their argv is `podnet-pause KEY NAME
/// CREATOR_PID:CREATOR_START`), found by scanning `/proc`.
pub(crate) fn find_holders(key: &str) -> Vec<Found> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        if args.next() != Some(HOLDER_COMM.as_bytes()) || args.next() != Some(key.as_bytes()) {
            continue;
        }
        let Some(name) = args.next().and_then(|n| std::str::from_utf8(n).ok()) else {
            continue;
        };
        let creator = args
            .next()
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.split_once(':'))
            .and_then(|(p, s)| Some((p.parse().ok()?, s.parse().ok()?)));
        let pid = Pid::from_raw(pid);
        if let Some(start) = proc_start_time(pid) {
            out.push(Found {
                pid,
                start,
                name: name.to_owned(),
                creator,
            });
        }
    }
    out
}

impl Drop for Holder {
    /// A handle going away leaves the holder running (sandboxes outlive
    /// their handles), but a child of ours must still be reaped when it
    /// ends, or it stays a zombie for the life of the process: a task on
    /// the current runtime waits for that. (Without a runtime, it is reaped
    /// when this process exits.)
    fn drop(&mut self) {
        if !self.child || self.reaped.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(Some(_)) = self.try_exit() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Mark this handle done: the task below reaps, holding only the
        // pidfd (no Holder, so a task dropped unrun cannot recurse).
        self.reaped.store(true, Ordering::Relaxed);
        let (pid, pidfd) = (self.pid, self.pidfd.clone());
        rt.spawn(async move {
            if wait_exit(pid, &pidfd).await.is_ok() {
                let _ = waitid(
                    Id::PIDFd(pidfd.as_fd()),
                    WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
                );
            }
        });
    }
}

/// SIGKILL to the process behind `pidfd`; one that is gone already
/// (ESRCH) counts as killed.
fn sigkill(pidfd: &OwnedFd) -> std::result::Result<(), Errno> {
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, a valid signal
    // number, a null siginfo and no flags touches no memory of ours.
    // JUSTIFICATION: nix 0.31 has no pidfd_send_signal wrapper.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match (rc, Errno::last()) {
        (0, _) | (_, Errno::ESRCH) => Ok(()),
        (_, errno) => Err(errno),
    }
}

/// A holder to end later (from [`Holder::end_later`]): a child of ours.
#[derive(Debug)]
pub(crate) struct Ending {
    pub(crate) pid: Pid,
    pidfd: Arc<OwnedFd>,
}

/// Kill the holders `ending`, then reap those the signal reached (or that
/// were gone already). Blocking, briefly: a killed process exits at once.
/// One the kill did not reach (a security module refusing it) is left to
/// exit with this process, unreaped, rather than waited for.
pub(crate) fn end(ending: &[Ending]) {
    let killed: Vec<&Ending> = ending
        .iter()
        .filter(|h| sigkill(&h.pidfd).is_ok())
        .collect();
    for h in killed {
        // ECHILD: a `Sandbox::wait` reaped it first.
        let _ = waitid(Id::PIDFd(h.pidfd.as_fd()), WaitPidFlag::WEXITED);
    }
}

/// Wait until the holder behind `pidfd` (PID `pid`) has exited and say how,
/// without reaping it (its `Holder` does that).
pub(crate) async fn wait_for_exit(pid: u32, pidfd: &OwnedFd) -> Result<String> {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(0));
    wait_exit(pid, pidfd).await?;
    let status = waitid(
        Id::PIDFd(pidfd.as_fd()),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    );
    Ok(match status {
        Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
        _ => Exit::Unknown,
    }
    .to_string())
}

/// Wait until the process behind `pidfd` has exited (its pidfd polls
/// readable then, pidfd_open(2)); reaps nothing.
pub(crate) async fn wait_exit(pid: Pid, pidfd: &OwnedFd) -> Result<()> {
    let dup = pidfd
        .try_clone()
        .map_err(|e| Error::io("duplicate pidfd of holder", pid.to_string(), e))?;
    // SAFETY: an OwnedFd stays open and returns the same fd until the
    // AsyncFd (which owns it) is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("watch pidfd of holder", pid.to_string(), e.into()))?;
    let _ready = fd
        .readable()
        .await
        .map_err(|e| Error::io("watch pidfd of holder", pid.to_string(), e))?;
    Ok(())
}

/// Start a holder with fresh namespaces.
///
/// # Cancel safety
/// If cancelled after the clone was made or handed to a spawner thread, the
/// holder is killed and reaped; nothing is left.
#[cfg(test)]
pub(crate) async fn spawn(spec: HolderSpec) -> Result<Holder> {
    let mut holder = start(spec)?.wait().await?;
    holder.started()?;
    Ok(holder)
}

/// A holder cloned on the calling thread or being cloned on a spawner
/// thread; [`wait`](Spawning::wait) for it. Dropped unwaited, it ends the
/// holder (or the clone never runs).
#[derive(Debug)]
pub(crate) struct Spawning(SpawningInner);

#[derive(Debug)]
enum SpawningInner {
    /// Being cloned on a spawner thread.
    Queued(tokio::sync::oneshot::Receiver<Result<Unclaimed>>),
    /// Cloned on the calling thread already.
    Done(Result<Unclaimed>),
}

/// Clone a holder, at once (unlike [`spawn`], which does so when first
/// polled): on this thread, or, for a holder that would carry a
/// parent-death signal, on the main thread or a spawner thread, while the
/// caller does other work.
pub(crate) fn start(spec: HolderSpec) -> Result<Spawning> {
    // Clone here, without two thread hand-offs (on a busy machine, the
    // wait for the spawner thread to get a CPU), unless the holder would
    // carry a death signal and this thread may end before the process:
    // the main thread lives as long as the process.
    let signal = spec.die_with_creator && lifeline(&spec).is_none();
    if !signal || nix::unistd::gettid() == nix::unistd::getpid() {
        let result = clone_holder(&spec).map(|h| Unclaimed(Some(h)));
        return Ok(Spawning(SpawningInner::Done(result)));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner_submit(Box::new(move || {
        if tx.is_closed() {
            // Cancelled before its turn: nothing to start.
            return;
        }
        let result = clone_holder(&spec).map(|h| Unclaimed(Some(h)));
        // If the caller is gone, the value comes back and is dropped here;
        // if it goes later, the value is dropped with the channel: either
        // way `Unclaimed` ends the holder.
        let _ = tx.send(result);
    }))?;
    Ok(Spawning(SpawningInner::Queued(rx)))
}

impl Spawning {
    /// The holder, once it is made.
    ///
    /// # Cancel safety
    /// If cancelled, the holder is killed and reaped (by a task, or by the
    /// spawner thread).
    pub(crate) async fn wait(self) -> Result<Holder> {
        let rx = match self.0 {
            SpawningInner::Queued(rx) => rx,
            SpawningInner::Done(result) => return result.map(Unclaimed::take)?,
        };
        let unclaimed = rx.await.map_err(|_| Error::Sys {
            op: "spawn holder",
            object: "the spawner thread went away".into(),
            errno: Errno::ECHILD,
        })??;
        unclaimed.take()
    }
}

impl Unclaimed {
    fn take(mut self) -> Result<Holder> {
        self.0.take().ok_or(Error::Sys {
            op: "spawn holder",
            object: "holder already taken".into(),
            errno: Errno::EINVAL,
        })
    }
}

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

/// Start a holder from the calling thread, without the spawner thread, for
/// a process that must stay single-threaded (joining a user namespace
/// refuses a multi-threaded process). Only for persistent holders: a death
/// signal would be tied to this thread.
pub(crate) fn spawn_here(spec: &HolderSpec) -> Result<Holder> {
    debug_assert!(!spec.die_with_creator);
    let mut holder = clone_holder(spec)?;
    holder.started()?;
    Ok(holder)
}

/// A holder on its way to the caller; ended if the caller never takes it.
#[derive(Debug)]
pub(crate) struct Unclaimed(Option<Holder>);

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(holder) = self.0.take() {
            holder.discard();
        }
    }
}

impl Holder {
    /// Kill the holder and have it reaped without blocking the caller: by a
    /// task with a runtime, by the spawner thread without. For rollbacks
    /// and drops.
    pub(crate) fn discard(self) {
        let _ = self.kill();
        // With a runtime, Drop reaps it on a task. Without one, Drop would
        // leave it (a live holder could take forever); this one was just
        // SIGKILLed, so the spawner thread waits only briefly.
        if self.child && tokio::runtime::Handle::try_current().is_err() {
            if let Ok(Some(_)) = self.try_exit() {
                return;
            }
            self.reaped.store(true, Ordering::Relaxed);
            let pidfd = self.pidfd.clone();
            let _ = spawner_submit(Box::new(move || {
                let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
            }));
        }
    }
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

/// Stack size of the cloned child. It runs a handful of raw syscalls.
const CHILD_STACK: usize = 64 * 1024;

/// A child stack with every page in memory: the child's first touch of a
/// page would be a page fault inside the clone, which waits for it (in a
/// virtual machine, a costly one).
fn new_stack() -> Vec<u8> {
    let mut stack = vec![0u8; CHILD_STACK];
    for page in stack.chunks_mut(4096) {
        // SAFETY: a write of the byte it holds, in bounds; volatile, so it
        // is made even though the allocator gave zeroed memory.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
    }
    stack
}

fn spawner_submit(job: Job) -> Result<()> {
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

/// Everything the cloned child reads, prepared before the clone. The child
/// sees it through the shared address space (`CLONE_VM`).
struct ChildArgs {
    exe: RawFd,
    devnull: RawFd,
    argv: *const *const c_char,
    envp: *const *const c_char,
    root: *const c_char,
    die_with_creator: bool,
    /// A pidfd of the creator process that the holder keeps as its fd 3 and
    /// watches (see [`lifeline`]), or -1: then it has a parent-death signal
    /// if it dies with its creator.
    lifeline: RawFd,
    creator: libc::pid_t,
    sig_default: KernelSigaction,
    sig_ignore: KernelSigaction,
    /// An empty signal set, as the kernel takes it (64 bits).
    empty_mask: u64,
    /// Set by the child when a step fails: which step, and the errno.
    failed_step: AtomicI32,
    failed_errno: AtomicI32,
}

/// `struct sigaction` as `rt_sigaction(2)` takes it on x86_64 and aarch64
/// (not glibc's layout).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The steps of the child, for error messages.
const STEPS: [&str; 8] = [
    "",
    "unshare fd table of holder",
    "set parent-death signal of holder",
    "creator exited while spawning holder",
    "set up stdio of holder",
    "chdir / in holder",
    "exec holder program",
    "keep the pidfd of its creator in holder",
];

/// Whether holders that die with their creator watch it through a pidfd
/// (their fd 3, which the holder program polls) rather than a parent-death
/// signal, which fires when the *thread* that cloned them exits (prctl(2)),
/// so that any thread may clone them: where the holder program does so.
const LIFELINE: bool = cfg!(target_arch = "x86_64");

/// The pidfd that the holder made from `spec` keeps to watch its creator,
/// if it dies with it and lifelines are to be had.
fn lifeline(spec: &HolderSpec) -> Option<RawFd> {
    if LIFELINE && spec.die_with_creator {
        self_pidfd()
    } else {
        None
    }
}

/// A pidfd of this process, for lifelines: opened once per process (a
/// child forked since opens its own), numbered 4 or more (`above_3`);
/// `None` where the kernel or a seccomp filter refuses `pidfd_open`, and
/// then holders die with their creator by a parent-death signal.
fn self_pidfd() -> Option<RawFd> {
    static SELF: Mutex<Option<(Pid, Option<OwnedFd>)>> = Mutex::new(None);
    let me = nix::unistd::getpid();
    let mut current = SELF.lock().unwrap_or_else(|p| p.into_inner());
    if current.as_ref().map(|(pid, _)| *pid) != Some(me) {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd
        // (close-on-exec) that nothing else owns.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, me.as_raw(), 0) };
        let fd = c_int::try_from(fd)
            .ok()
            .filter(|fd| *fd >= 0)
            // SAFETY: as above.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .and_then(|fd| above_3(fd).ok());
        *current = Some((me, fd));
    }
    current
        .as_ref()
        .and_then(|(_, fd)| fd.as_ref().map(AsRawFd::as_raw_fd))
}

/// Whether the child runs alongside the thread that cloned it (no
/// `CLONE_VFORK`): where its system calls are made without glibc, which
/// would set `errno` in the thread-local storage the child shares with
/// that thread. Elsewhere the thread waits until the child has exec'd.
const CONCURRENT_CHILD: bool = cfg!(target_arch = "x86_64");

/// A system call that gives `-errno` on failure and writes no `errno`.
///
/// # Safety
/// The call and its arguments must be valid; see syscall(2).
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall(nr: libc::c_long, args: [usize; 6]) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the caller's contract; `syscall` clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The same through glibc, for a child that runs while its creator's thread
/// waits (`CONCURRENT_CHILD` is false), so its `errno` is free to use.
///
/// # Safety
/// The call and its arguments must be valid; see syscall(2).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn raw_syscall(nr: libc::c_long, args: [usize; 6]) -> libc::c_long {
    // SAFETY: the caller's contract.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    if ret < 0 {
        -libc::c_long::from(Errno::last_raw())
    } else {
        ret
    }
}

/// Runs in the cloned child, alongside the creator's threads (see
/// [`CONCURRENT_CHILD`]): only raw system calls through [`raw_syscall`], no
/// allocation, no locks, no `errno`; see the module docs.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points to the ChildArgs of the `Launch` that
    // `clone_holder` made; it is neither moved, written nor freed until the
    // kernel has cleared its `running` word, i.e. until we exec or exit.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let sys = |nr: libc::c_long, args: [usize; 6]| -> std::result::Result<usize, i32> {
        // SAFETY: each call below passes values prepared before the clone
        // that outlive the child (see above), or plain integers.
        let ret = unsafe { raw_syscall(nr, args) };
        usize::try_from(ret).map_err(|_| i32::try_from(-ret).unwrap_or(libc::EINVAL))
    };
    let fail = |step: i32, errno: i32| -> c_int {
        a.failed_errno.store(errno, Ordering::SeqCst);
        a.failed_step.store(step, Ordering::SeqCst);
        let _ = sys(libc::SYS_exit_group, [127, 0, 0, 0, 0, 0]);
        127
    };
    let int = |v: c_int| v as usize;
    // We share the creator's fd table (CLONE_FILES): first take a table of
    // our own holding only the fds up to `exe` and `devnull` (the kernel
    // copies just those, rounded up to a multiple of 64 on some kernels:
    // close_range(2) does not copy a range it closes up to ~0), so the cost
    // does not grow with the creator's fds; then let go of the copies of its
    // fds below ours at once rather than at the exec. So a socket the
    // creator closes is not held open by a holder being made, but for the
    // few system calls until then if it is numbered below podnet's two fds.
    let close = |first: c_int, last: c_int, flags: libc::c_uint| {
        sys(
            libc::SYS_close_range,
            [
                int(first),
                last as libc::c_uint as usize,
                flags as usize,
                0,
                0,
                0,
            ],
        )
    };
    // The fds we keep: podnet's two and the lifeline, all above 3
    // (`above_3`), in order (no allocation here).
    let mut keep = [a.exe, a.devnull, a.lifeline];
    for (i, j) in [(0, 1), (1, 2), (0, 1)] {
        if keep[i] > keep[j] {
            keep.swap(i, j);
        }
    }
    if close(keep[2] + 1, -1, libc::CLOSE_RANGE_UNSHARE).is_err() {
        // close_range refused (a seccomp profile that predates it): a
        // private copy of the whole table, as a fork makes.
        if let Err(errno) = sys(libc::SYS_unshare, [int(libc::CLONE_FILES), 0, 0, 0, 0, 0]) {
            return fail(1, errno);
        }
    }
    // Our stdio next, so the creator's fds 0-2 are let go at once too
    // (`devnull` is never 0-3: see `above_3`).
    for fd in 0..3 {
        if let Err(errno) = sys(libc::SYS_dup3, [int(a.devnull), fd, 0, 0, 0, 0]) {
            return fail(4, errno);
        }
    }
    // Then the creator's fds between ours (a missing lifeline, -1, is
    // skipped).
    let mut next = 3;
    for fd in keep {
        if fd >= next {
            if fd > next {
                let _ = close(next, fd - 1, 0);
            }
            next = fd + 1;
        }
    }
    if a.lifeline >= 0 {
        // The creator's pidfd as fd 3, kept across the exec: the holder
        // program exits once it polls readable (the creator exited, even
        // before this). Opened by the creator before the clone, it is the
        // creator's whatever happened since.
        if let Err(errno) = sys(libc::SYS_dup3, [int(a.lifeline), 3, 0, 0, 0, 0]) {
            return fail(7, errno);
        }
    } else {
        // Nothing at fd 3, so the program pauses (the closes above may
        // have been refused with close_range).
        let _ = sys(libc::SYS_close, [3, 0, 0, 0, 0, 0]);
        if a.die_with_creator {
            let pdeathsig = [int(libc::PR_SET_PDEATHSIG), int(libc::SIGKILL), 0, 0, 0, 0];
            if let Err(errno) = sys(libc::SYS_prctl, pdeathsig) {
                return fail(2, errno);
            }
            // The creator may have died before the prctl: then we were
            // reparented and must not live on.
            if sys(libc::SYS_getppid, [0; 6]) != Ok(int(a.creator)) {
                return fail(3, libc::ESRCH);
            }
        }
    }
    // Out of the creator's session, so a terminal's ^C reaches the creator
    // (and, once it exits, us) but not persistent holders.
    let _ = sys(libc::SYS_setsid, [0; 6]);
    // Handlers of the creator must not run here; exec would reset caught
    // signals anyway, but not ignored ones (SIGTERM ignored by the creator
    // must still end the holder). SIGCHLD ignored = the kernel reaps.
    let action = |sig: c_int, act: &KernelSigaction| {
        let act = act as *const KernelSigaction as usize;
        sys(libc::SYS_rt_sigaction, [int(sig), act, 0, 8, 0, 0])
    };
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let _ = action(sig, &a.sig_default);
        }
    }
    let _ = action(libc::SIGCHLD, &a.sig_ignore);
    // Everything else closes at exec: the holder holds nothing open but
    // its lifeline (fd 3), if it has one.
    let _ = close(4, -1, libc::CLOSE_RANGE_CLOEXEC);
    if let Err(errno) = sys(libc::SYS_chdir, [a.root as usize, 0, 0, 0, 0, 0]) {
        return fail(5, errno);
    }
    let mask = &a.empty_mask as *const u64 as usize;
    let _ = sys(
        libc::SYS_rt_sigprocmask,
        [int(libc::SIG_SETMASK), mask, 0, 8, 0, 0],
    );
    let exec = [
        int(a.exe),
        c"".as_ptr() as usize,
        a.argv as usize,
        a.envp as usize,
        int(libc::AT_EMPTY_PATH),
        0,
    ];
    match sys(libc::SYS_execveat, exec) {
        Ok(_) => fail(6, libc::EINVAL),
        Err(errno) => fail(6, errno),
    }
}

/// The memory a cloned child runs on until it has exec'd the holder
/// program: its stack and what it reads. Owned by the `Holder` until then.
struct Launch {
    /// A box of ours (`Box::into_raw`), freed by Drop once the child is
    /// done with it: a raw pointer, as the child reads it while the
    /// `Launch` moves (a `Box` would claim unique access).
    mem: std::ptr::NonNull<LaunchMem>,
    /// The child's pidfd, once it is cloned.
    pidfd: Option<Arc<OwnedFd>>,
    /// What errors name the holder by.
    object: String,
}

struct LaunchMem {
    args: ChildArgs,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp: [*const c_char; 1],
    stack: Vec<u8>,
    /// 1 until the child has exec'd or exited: then the kernel writes 0 and
    /// wakes a futex waiter (`CLONE_CHILD_CLEARTID`).
    running: std::sync::atomic::AtomicU32,
}

// SAFETY: the memory is a box owned by the Launch alone (its raw pointers
// point into the same box: argv strings, argv array, envp); the child only
// reads it, but for the atomics, until the Launch's Drop has waited for it.
unsafe impl Send for Launch {}
// SAFETY: as for Send; `&Launch` gives shared reads and atomics only.
unsafe impl Sync for Launch {}

impl fmt::Debug for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launch")
            .field("running", &self.mem().running)
            .finish()
    }
}

impl Launch {
    /// Take ownership of `mem` before the clone, so that every way out
    /// of `clone_holder` frees it only once the child is done with it.
    fn new(mem: Box<LaunchMem>, object: String) -> Launch {
        Launch {
            // SAFETY: Box::into_raw never gives null.
            mem: unsafe { std::ptr::NonNull::new_unchecked(Box::into_raw(mem)) },
            pidfd: None,
            object,
        }
    }

    fn mem(&self) -> &LaunchMem {
        // SAFETY: the box lives until Drop; shared access only (see Send).
        unsafe { self.mem.as_ref() }
    }

    /// Wait until the child has exec'd or exited; then its failure, if any:
    /// (step, errno).
    fn wait(&self) -> Option<(i32, i32)> {
        let word = &self.mem().running;
        while word.load(Ordering::Acquire) != 0 {
            // SAFETY: futex(2) FUTEX_WAIT on a u32 we own, no timeout. Not
            // FUTEX_PRIVATE: the kernel's wake at exit or exec is shared.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAIT,
                    1u32,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
        let a = &self.mem().args;
        match a.failed_step.load(Ordering::SeqCst) {
            0 => None,
            step => Some((step, a.failed_errno.load(Ordering::SeqCst))),
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        // The child may still run on this memory: end it first. (Without
        // a pidfd there was no child, and `running` was cleared.)
        if self.mem().running.load(Ordering::Acquire) != 0 {
            if let Some(pidfd) = &self.pidfd {
                let _ = sigkill(pidfd);
            }
            self.wait();
        }
        // SAFETY: from Box::into_raw in `new`; the child is done with it,
        // and this is the only place that frees it.
        let mut mem = unsafe { Box::from_raw(self.mem.as_ptr()) };
        let stack = std::mem::take(&mut mem.stack);
        let mut spare = SPARE_STACKS.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_STACKS_MAX {
            spare.push(stack);
        }
    }
}

/// Child stacks whose children have exec'd, for the next clones (their
/// pages are in memory already).
static SPARE_STACKS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const SPARE_STACKS_MAX: usize = 8;

fn take_stack() -> Vec<u8> {
    let spare = SPARE_STACKS.lock().unwrap_or_else(|p| p.into_inner()).pop();
    spare.unwrap_or_else(new_stack)
}

/// Clone the holder. The child runs its setup and exec alongside the
/// caller (`CONCURRENT_CHILD`), so the holder comes back at once, its
/// namespaces made; [`Holder::started`] waits for the exec and says
/// whether it failed.
fn clone_holder(spec: &HolderSpec) -> Result<Holder> {
    let exe = holder_exe()?;
    let devnull = devnull()?;
    let argv = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| Error::sys("holder argv", a, Errno::EINVAL)))
        .collect::<Result<Vec<_>>>()?;
    let sig = |handler: usize| KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    let mut mem = Box::new(LaunchMem {
        args: ChildArgs {
            exe: exe.as_raw_fd(),
            devnull: devnull.as_raw_fd(),
            argv: std::ptr::null(),
            envp: std::ptr::null(),
            root: c"/".as_ptr(),
            die_with_creator: spec.die_with_creator,
            lifeline: lifeline(spec).unwrap_or(-1),
            creator: nix::unistd::getpid().as_raw(),
            sig_default: sig(libc::SIG_DFL),
            sig_ignore: sig(libc::SIG_IGN),
            empty_mask: 0,
            failed_step: AtomicI32::new(0),
            failed_errno: AtomicI32::new(0),
        },
        argv_ptrs: argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect(),
        _argv: argv,
        envp: [std::ptr::null()],
        stack: take_stack(),
        running: 1.into(),
    });
    mem.args.argv = mem.argv_ptrs.as_ptr();
    mem.args.envp = mem.envp.as_ptr();
    // The stack grows down on every architecture we build for; keep 16-byte alignment.
    let top = mem.stack.as_mut_ptr_range().end as usize & !15;
    let mut launch = Launch::new(mem, spec.object());
    let mem = launch.mem();
    let vfork = if CONCURRENT_CHILD {
        0
    } else {
        libc::CLONE_VFORK
    };
    let flags = libc::CLONE_VM
        | libc::CLONE_FILES
        | libc::CLONE_PIDFD
        | libc::CLONE_CHILD_CLEARTID
        | vfork
        | spec.namespaces.bits();
    let mut pidfd: c_int = -1;
    // SAFETY: all-zero is a valid sigset_t; sigfillset fills it.
    let (full_mask, mut old_mask) = unsafe {
        let mut full: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut full);
        (full, std::mem::zeroed::<libc::sigset_t>())
    };
    // SAFETY: the child runs `child_main` on `mem.stack` and reads
    // `mem.args`, both in a box that the returned Holder owns (its Launch)
    // until the kernel has cleared `mem.running` at the child's exec or
    // exit (CLONE_CHILD_CLEARTID), and that nothing writes meanwhile. All
    // signals are blocked around the clone so no handler of ours can run on
    // the child's stack before it resets them, but glibc's two (32 and 33,
    // which it never blocks), whose handlers return at once for a signal
    // not sent by their own process. With CLONE_PIDFD the kernel stores the
    // pidfd in `pidfd` (clone(2)).
    let pid = unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &full_mask, &mut old_mask);
        let pid = libc::clone(
            child_main,
            top as *mut c_void,
            flags | libc::SIGCHLD,
            &mem.args as *const ChildArgs as *mut c_void,
            &mut pidfd as *mut c_int,
            std::ptr::null_mut::<c_void>(),
            mem.running.as_ptr(),
        );
        let errno = Errno::last();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
        if pid < 0 {
            // No child runs on the memory.
            mem.running.store(0, Ordering::Release);
            return Err(Error::sys("clone holder", spec.object(), errno));
        }
        pid
    };
    // SAFETY: the kernel gave us this pidfd (CLONE_PIDFD) and nothing else owns it.
    let pidfd = Arc::new(unsafe { OwnedFd::from_raw_fd(pidfd) });
    launch.pidfd = Some(pidfd.clone());
    let pid = Pid::from_raw(pid);
    // The start time is fixed at clone and never changes.
    let start_time = proc_start_time(pid).unwrap_or(0);
    Ok(Holder {
        pid,
        pidfd,
        start_time,
        child: true,
        dies_with_us: spec.die_with_creator,
        reaped: false.into(),
        launch: Some(launch),
    })
}

/// Make what every holder's clone uses, once per process: the holder
/// program's memfd and the /dev/null of its stdio, and a child stack. Called when a network is built, so that a process
/// refused them (a seccomp filter on memfd_create) learns it there, and its
/// first create does not pay for them.
pub(crate) fn prepare() -> Result<()> {
    holder_exe()?;
    devnull()?;
    self_pidfd();
    let mut spare = SPARE_STACKS.lock().unwrap_or_else(|p| p.into_inner());
    if spare.is_empty() {
        spare.push(new_stack());
    }
    Ok(())
}

fn devnull() -> Result<&'static OwnedFd> {
    static DEVNULL: OnceLock<std::result::Result<OwnedFd, Errno>> = OnceLock::new();
    let fd = DEVNULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|f| above_3(f.into()))
    });
    fd.as_ref()
        .map_err(|errno| Error::sys("open", "/dev/null", *errno))
}

/// The holder program, in a sealed memfd made once per process.
fn holder_exe() -> Result<&'static OwnedFd> {
    static EXE: OnceLock<std::result::Result<OwnedFd, (&'static str, Errno)>> = OnceLock::new();
    EXE.get_or_init(make_holder_memfd)
        .as_ref()
        .map_err(|(op, errno)| Error::sys(op, "holder program memfd", *errno))
}

fn make_holder_memfd() -> std::result::Result<OwnedFd, (&'static str, Errno)> {
    let image = holder_image();
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    // MFD_EXEC (Linux 6.3) keeps it executable where vm.memfd_noexec asks
    // for the opposite default; older kernels reject the flag, so retry without.
    let mut fd = unsafe { libc::memfd_create(c"podnet-pause".as_ptr(), flags | libc::MFD_EXEC) };
    if fd < 0 && Errno::last() == Errno::EINVAL {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(c"podnet-pause".as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(("memfd_create", Errno::last()));
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    use std::io::Write;
    (&file).write_all(&image).map_err(|e| {
        (
            "write holder program",
            Errno::from_raw(e.raw_os_error().unwrap_or(5)),
        )
    })?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) on an fd we own with a seal bitmask.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(("seal holder program", Errno::last()));
    }
    above_3(file.into()).map_err(|errno| ("fcntl(F_DUPFD_CLOEXEC) holder program", errno))
}

/// `fd`, or a copy numbered 4 or more if it is 0-3: the child puts
/// /dev/null on 0-2 (a creator may have started with stdio closed) and its
/// lifeline on 3.
fn above_3(fd: OwnedFd) -> std::result::Result<OwnedFd, Errno> {
    if fd.as_raw_fd() > 3 {
        return Ok(fd);
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own; the new fd is ours.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4) };
    if copy < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fcntl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Load address of the image.
const BASE: u64 = 0x40_0000;
/// Sizes of the ELF header and of one program header (ELF-64).
const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;

/// Machine code of the holder, then its NUL-terminated name. It polls its
/// fd 3 (a pidfd of its creator: see [`lifeline`]) and exits once that is
/// readable; without an fd 3 (`POLLNVAL`), or if `poll` fails but for
/// EINTR, it pauses forever.
///
/// ```text
///  0: bf 0f 00 00 00           mov  edi, 15             ; PR_SET_NAME
///  5: 48 8d 35 4a 00 00 00     lea  rsi, [rip + 74]     ; -> name at 86
/// 12: b8 9d 00 00 00           mov  eax, 157            ; SYS_prctl
/// 17: 0f 05                    syscall
/// 19: 48 b8 03 00 00 00        movabs rax, 0x100000003  ; struct pollfd:
///     01 00 00 00                                       ;  fd 3, POLLIN
/// 29: 50                       push rax
/// 30: 48 89 e7                 mov  rdi, rsp
/// 33: be 01 00 00 00     poll: mov  esi, 1              ; one fd
/// 38: ba ff ff ff ff           mov  edx, -1             ; no timeout
/// 43: b8 07 00 00 00           mov  eax, 7              ; SYS_poll
/// 48: 0f 05                    syscall
/// 50: 48 83 f8 fc              cmp  rax, -4             ; -EINTR: again
/// 54: 74 e9                    je   poll
/// 56: 48 85 c0                 test rax, rax
/// 59: 7e 10                    jle  pause               ; another error
/// 61: f6 44 24 06 20           test byte [rsp + 6], 0x20 ; revents POLLNVAL
/// 66: 75 09                    jnz  pause
/// 68: 31 ff                    xor  edi, edi
/// 70: b8 e7 00 00 00           mov  eax, 231            ; SYS_exit_group
/// 75: 0f 05                    syscall
/// 77: b8 22 00 00 00    pause: mov  eax, 34             ; SYS_pause
/// 82: 0f 05                    syscall
/// 84: eb f7                    jmp  pause
/// 86: "podnet-pause\0"
/// ```
#[cfg(target_arch = "x86_64")]
const CODE: &[u8] = &[
    0xbf, 0x0f, 0x00, 0x00, 0x00, // mov edi, 15
    0x48, 0x8d, 0x35, 0x4a, 0x00, 0x00, 0x00, // lea rsi, [rip+74]
    0xb8, 0x9d, 0x00, 0x00, 0x00, // mov eax, 157
    0x0f, 0x05, // syscall
    0x48, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // movabs rax
    0x50, // push rax
    0x48, 0x89, 0xe7, // mov rdi, rsp
    0xbe, 0x01, 0x00, 0x00, 0x00, // mov esi, 1
    0xba, 0xff, 0xff, 0xff, 0xff, // mov edx, -1
    0xb8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
    0x0f, 0x05, // syscall
    0x48, 0x83, 0xf8, 0xfc, // cmp rax, -4
    0x74, 0xe9, // je -23
    0x48, 0x85, 0xc0, // test rax, rax
    0x7e, 0x10, // jle +16
    0xf6, 0x44, 0x24, 0x06, 0x20, // test byte [rsp+6], 0x20
    0x75, 0x09, // jnz +9
    0x31, 0xff, // xor edi, edi
    0xb8, 0xe7, 0x00, 0x00, 0x00, // mov eax, 231
    0x0f, 0x05, // syscall
    0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34
    0x0f, 0x05, // syscall
    0xeb, 0xf7, // jmp -9
];
#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62; // EM_X86_64

/// For AArch64, which has no `pause` syscall: `ppoll(NULL, 0, NULL, NULL)`
/// sleeps until a signal, as `pause` does. No lifeline here (its holders
/// die with their creator by a parent-death signal): it only pauses.
///
/// ```text
///  0: d28001e0   mov  x0, #15           ; PR_SET_NAME
///  4: 10000141   adr  x1, #40           ; -> name at 44
///  8: d28014e8   mov  x8, #167          ; SYS_prctl
/// 12: d4000001   svc  #0
/// 16: d2800000   loop: mov x0, #0
/// 20: d2800001   mov  x1, #0
/// 24: d2800002   mov  x2, #0
/// 28: d2800003   mov  x3, #0
/// 32: d2800928   mov  x8, #73           ; SYS_ppoll
/// 36: d4000001   svc  #0
/// 40: 17fffffa   b    loop
/// 44: "podnet-pause\0"
/// ```
#[cfg(target_arch = "aarch64")]
const CODE: &[u8] = &[
    0xe0, 0x01, 0x80, 0xd2, 0x41, 0x01, 0x00, 0x10, 0xe8, 0x14, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4,
    0x00, 0x00, 0x80, 0xd2, 0x01, 0x00, 0x80, 0xd2, 0x02, 0x00, 0x80, 0xd2, 0x03, 0x00, 0x80, 0xd2,
    0x28, 0x09, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4, 0xfa, 0xff, 0xff, 0x17,
];
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183; // EM_AARCH64

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("podnet's holder program exists for x86_64 and aarch64 only");

/// A static ELF-64 executable: one header, one read+execute `PT_LOAD`
/// segment mapping the whole file, then `CODE` and the holder's name.
pub(crate) fn holder_image() -> Vec<u8> {
    let code_off = usize::from(EHDR_SIZE + PHDR_SIZE);
    let total = code_off + CODE.len() + HOLDER_COMM.len() + 1;
    let size = total as u64;
    let mut e = Vec::with_capacity(total);
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // e_type = ET_EXEC
    e.extend_from_slice(&MACHINE.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes()); // e_version
    e.extend_from_slice(&(BASE + code_off as u64).to_le_bytes()); // e_entry
    e.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    e.extend_from_slice(&EHDR_SIZE.to_le_bytes());
    e.extend_from_slice(&PHDR_SIZE.to_le_bytes());
    e.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    e.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    e.extend_from_slice(&1u32.to_le_bytes()); // p_type = PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // p_flags = R | X
    e.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    e.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    e.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    e.extend_from_slice(&size.to_le_bytes()); // p_filesz
    e.extend_from_slice(&size.to_le_bytes()); // p_memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    e.extend_from_slice(CODE);
    e.extend_from_slice(HOLDER_COMM.as_bytes());
    e.push(0);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_a_well_formed_elf() {
        let img = holder_image();
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(
            img.len(),
            usize::from(EHDR_SIZE + PHDR_SIZE) + CODE.len() + HOLDER_COMM.len() + 1
        );
        let entry = u64::from_le_bytes(img[24..32].try_into().unwrap());
        assert_eq!(entry, BASE + u64::from(EHDR_SIZE + PHDR_SIZE));
        assert!(img.ends_with(b"podnet-pause\0"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn name_is_where_the_code_points() {
        // lea rsi, [rip+disp]: disp is relative to the next instruction (offset 12).
        let disp = u32::from_le_bytes(CODE[8..12].try_into().unwrap()) as usize;
        assert_eq!(12 + disp, CODE.len());
    }

    #[test]
    fn start_time_of_self_is_readable() {
        assert!(proc_start_time(nix::unistd::getpid()).is_some());
    }

    /// A holder without new namespaces (which needs no privilege), argv
    /// `podnet-pause unit <tag>`, once it has named itself: the exec names
    /// it after its memfd ("memfd:podnet-pa"), its first instruction
    /// renames it.
    async fn spawn_named(tag: &str, die_with_creator: bool) -> Holder {
        let holder = spawn(HolderSpec {
            argv: vec![HOLDER_COMM.into(), "unit".into(), tag.into()],
            namespaces: CloneFlags::empty(),
            die_with_creator,
        })
        .await
        .expect("spawn holder");
        let pid = holder.pid();
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        wait_until(|| comm().trim() == HOLDER_COMM);
        assert_eq!(comm().trim(), HOLDER_COMM);
        holder
    }

    /// Poll `cond` every millisecond, for up to 10 s.
    fn wait_until(cond: impl Fn() -> bool) {
        let t = std::time::Instant::now();
        while !cond() && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The open fds of process `pid`, sorted.
    fn fds_of(pid: Pid) -> Vec<String> {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        fds.sort();
        fds
    }

    /// Spawn one, check what it is, end it, and see how it ended.
    #[tokio::test(flavor = "current_thread")]
    async fn holder_is_tiny_named_and_ends_on_sigterm() {
        let holder = spawn_named("test", true).await;
        let pid = holder.pid();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(cmdline, b"podnet-pause\0unit\0test\0");
        let want: &[&str] = if LIFELINE {
            &["0", "1", "2", "3"]
        } else {
            &["0", "1", "2"]
        };
        assert_eq!(fds_of(pid), want, "stdin, stdout, stderr and its lifeline");
        if LIFELINE {
            // A pidfd of this process, its creator.
            let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
            assert_eq!(fd3.to_string_lossy(), "anon_inode:[pidfd]");
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
            let me = format!("Pid:\t{}\n", std::process::id());
            assert!(info.contains(&me), "{info}");
        }
        assert_eq!(holder.start_time(), proc_start_time(pid).unwrap());
        assert_eq!(holder.try_exit(), Ok(None));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let exit = holder.wait().await.unwrap();
        assert_eq!(exit, Exit::Signal(libc::SIGTERM));
        assert_eq!(exit.to_string(), "killed by SIGTERM");
    }

    /// A holder that outlives its creator has no lifeline: the program
    /// finds no fd 3 and pauses.
    #[tokio::test(flavor = "current_thread")]
    async fn a_persistent_holder_pauses_without_a_lifeline() {
        let holder = spawn_named("persistent", false).await;
        let pid = holder.pid();
        // Past its poll: sleeping in pause, not exited.
        let syscall = || std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap();
        // pause(2) on x86_64, ppoll(2) on aarch64, as /proc numbers them.
        let sleeping = if cfg!(target_arch = "x86_64") {
            "34 "
        } else {
            "73 "
        };
        wait_until(|| syscall().starts_with(sleeping));
        assert!(syscall().starts_with(sleeping), "asleep: {}", syscall());
        assert_eq!(holder.try_exit(), Ok(None));
        assert_eq!(fds_of(pid), ["0", "1", "2"], "only stdin, stdout, stderr");
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert_eq!(holder.wait().await.unwrap(), Exit::Signal(libc::SIGTERM));
    }
}
