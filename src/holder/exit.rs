//! How a holder ends, through its pidfd: SIGKILL (`pidfd_send_signal`),
//! waiting until it has exited (a pidfd polls readable then), how it
//! ended (`Exit`), and ending the holders handed over by
//! `Holder::end_later` (`Ending`, `end`).

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::libc;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

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

/// SIGKILL to the process behind `pidfd`; one that is gone already
/// (ESRCH) counts as killed.
pub(super) fn sigkill(pidfd: &OwnedFd) -> std::result::Result<(), Errno> {
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

/// A holder to end later (from
/// [`Holder::end_later`](super::Holder::end_later)): a child of ours.
#[derive(Debug)]
pub(crate) struct Ending {
    pub(crate) pid: Pid,
    pub(super) pidfd: Arc<OwnedFd>,
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
pub(crate) async fn exit_status(pid: u32, pidfd: &OwnedFd) -> Result<String> {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(0));
    exited(pid, pidfd).await?;
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
pub(crate) async fn exited(pid: Pid, pidfd: &OwnedFd) -> Result<()> {
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
