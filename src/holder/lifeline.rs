//! The lifeline: a pidfd of the creator process that a holder dying with
//! its creator keeps as its fd 3 and polls (x86_64), so any thread may
//! clone it. Without one (aarch64, or `pidfd_open` refused) it gets a
//! parent-death signal instead, which ties it to the thread that clones it.

use std::ffi::c_int;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use nix::libc;
use nix::unistd::Pid;

use super::fds::above_3;
use super::HolderSpec;

/// Whether holders that die with their creator watch it through a pidfd
/// (their fd 3, which the holder program polls: it polls readable when the
/// creator process exits) rather than a parent-death signal, which fires
/// when the *thread* that cloned them exits (prctl(2)), not the process,
/// so that any thread may clone them: where the holder program does so.
/// Holders that get the signal instead (no lifeline, or `pidfd_open`
/// refused) are cloned on the main thread or a spawner thread.
pub(super) const LIFELINE: bool = cfg!(target_arch = "x86_64");

/// The pidfd that the holder made from `spec` keeps to watch its creator,
/// if it dies with it and lifelines are to be had.
pub(super) fn lifeline(spec: &HolderSpec) -> Option<RawFd> {
    if LIFELINE && spec.die_with_creator {
        self_pidfd()
    } else {
        None
    }
}

/// A pidfd of this process, for lifelines: opened once per process (a
/// process forked from this one opens its own), numbered 4 or more
/// (`above_3`);
/// `None` where the kernel or a seccomp filter refuses `pidfd_open`, and
/// then holders die with their creator by a parent-death signal.
pub(super) fn self_pidfd() -> Option<RawFd> {
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
