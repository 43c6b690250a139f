//! The clone child: `child_main`, what runs after `clone` until `execve`,
//! in the creator's memory and, until its first call, its fd table. It runs
//! alongside the creator's threads where `CONCURRENT_CHILD`, so it calls
//! only `raw_syscall`, on memory prepared before the clone (`ChildArgs`):
//! no allocation, no locks, no `errno`, no glibc.

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

#[cfg(not(target_arch = "x86_64"))]
use nix::errno::Errno;
use nix::libc;

/// Everything the cloned child reads, prepared before the clone. The child
/// sees it through the shared address space (`CLONE_VM`).
pub(super) struct ChildArgs {
    pub(super) exe: RawFd,
    pub(super) devnull: RawFd,
    pub(super) argv: *const *const c_char,
    pub(super) envp: *const *const c_char,
    pub(super) root: *const c_char,
    pub(super) die_with_creator: bool,
    /// A pidfd of the creator process that the holder keeps as its fd 3 and
    /// watches (see [`lifeline`](super::lifeline::lifeline)), or -1: then
    /// it has a parent-death signal if it dies with its creator.
    pub(super) lifeline: RawFd,
    pub(super) creator: libc::pid_t,
    pub(super) sig_default: KernelSigaction,
    pub(super) sig_ignore: KernelSigaction,
    /// An empty signal set, as the kernel takes it (64 bits).
    pub(super) empty_mask: u64,
    /// Set by the child when a step fails: which step, and the errno.
    pub(super) failed_step: AtomicI32,
    pub(super) failed_errno: AtomicI32,
}

/// `struct sigaction` as `rt_sigaction(2)` takes it on x86_64 and aarch64
/// (not glibc's layout).
#[repr(C)]
pub(super) struct KernelSigaction {
    pub(super) handler: usize,
    pub(super) flags: u64,
    pub(super) restorer: usize,
    pub(super) mask: u64,
}

/// The steps of the child, for error messages.
pub(super) const STEPS: [&str; 8] = [
    "",
    "unshare fd table of holder",
    "set parent-death signal of holder",
    "creator exited while spawning holder",
    "set up stdio of holder",
    "chdir / in holder",
    "exec holder program",
    "keep the pidfd of its creator in holder",
];

/// Whether the child runs alongside the thread that cloned it (no
/// `CLONE_VFORK`): where its system calls are made without glibc, which
/// would set `errno` in the thread-local storage the child shares with
/// that thread. Elsewhere the thread waits until the child has exec'd.
pub(super) const CONCURRENT_CHILD: bool = cfg!(target_arch = "x86_64");

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
/// allocation, no locks, no `errno`; see
/// [`clone_holder`](super::clone::clone_holder).
///
/// It sets what the holder program keeps across its exec: SIGTERM and
/// SIGINT end it (default action), SIGCHLD is ignored so the kernel reaps
/// any child it adopts, every other fd but its lifeline (fd 3) is closed
/// and its stdio is `/dev/null`.
pub(super) extern "C" fn child_main(arg: *mut c_void) -> c_int {
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
