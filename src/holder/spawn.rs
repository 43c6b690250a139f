//! Starting a holder: `start` clones it at once, on the calling thread, or,
//! for one that would carry a parent-death signal, on the main thread or a
//! spawner thread; `Spawning` hands it over, and `Unclaimed` ends one whose
//! caller went away. `spawn_here` clones on this thread, for persistent
//! holders.

use nix::errno::Errno;

use super::clone::clone_holder;
use super::lifeline::lifeline;
use super::spawner::spawner_submit;
use super::{Holder, HolderSpec};
use crate::error::{Error, Result};

/// Start a holder with fresh namespaces.
///
/// # Cancel safety
/// If cancelled after the clone was made or handed to a spawner thread, the
/// holder is killed and reaped; nothing is left.
#[cfg(test)]
pub(super) async fn spawn(spec: HolderSpec) -> Result<Holder> {
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
pub(super) struct Unclaimed(Option<Holder>);

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(holder) = self.0.take() {
            holder.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::libc;
    use nix::sched::CloneFlags;
    use nix::unistd::Pid;

    use super::*;
    use crate::holder::lifeline::LIFELINE;
    use crate::holder::{Exit, HOLDER_COMM};
    use crate::ident::proc_start_time;

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
