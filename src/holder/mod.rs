//! The holder (pause) process of a sandbox: the `Holder` handle, what to
//! make one with (`HolderSpec`), `prepare`, and the re-exports of its parts.
//! Only this module forks by hand, in `clone.rs` (on the thread that starts
//! a holder, or on the main or a spawner thread for one with a parent-death
//! signal); the child makes raw system calls only, then execs `image.rs`.

mod child;
mod clone;
mod exit;
mod fds;
mod find;
mod image;
mod lifeline;
mod spawn;
mod spawner;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use child::STEPS;
use clone::{new_stack, Launch, SPARE_STACKS};
use exit::sigkill;
use fds::{devnull, holder_exe};
use lifeline::self_pidfd;
use spawner::spawner_submit;

pub(crate) use exit::{end, exit_status, exited, Ending, Exit};
pub(crate) use find::{find_holders, pidfd_of, Found};
pub(crate) use image::HOLDER_COMM;
pub(crate) use spawn::{spawn_here, start, Spawning};
#[cfg(feature = "internals")]
pub use spawner::flush_spawner;
pub(crate) use spawner::spawn_tied;

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

    /// Hand the ending of this holder to someone else (`release::later`): its
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
        exited(self.pid, &self.pidfd).await?;
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
            if exited(pid, &pidfd).await.is_ok() {
                let _ = waitid(
                    Id::PIDFd(pidfd.as_fd()),
                    WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
                );
            }
        });
    }
}

/// Make what every holder's clone uses, once per process: the holder
/// program's memfd and the /dev/null of its stdio, the pidfd of its
/// lifeline, and a child stack. Called when a network is built, so that a
/// process refused them (a seccomp filter on memfd_create) learns it
/// there, and its first create does not pay for them.
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
