//! The one `clone` that makes a holder (`clone_holder`): the only place that
//! forks by hand, called from `spawn.rs` only. Also the memory its child
//! runs on until its exec (`Launch`: stack, arguments, the word the kernel
//! clears at exec or exit), which the `Holder` owns until then; the child
//! runs `child_main` on it and nothing else.

use std::ffi::{c_char, c_int, c_void, CString};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;

use super::child::{child_main, ChildArgs, KernelSigaction, CONCURRENT_CHILD};
use super::exit::sigkill;
use super::fds::{devnull, holder_exe};
use super::lifeline::lifeline;
use super::{Holder, HolderSpec};
use crate::error::{Error, Result};
use crate::ident::proc_start_time;

/// Stack size of the cloned child. It runs a handful of raw syscalls.
const CHILD_STACK: usize = 64 * 1024;

/// A child stack with every page in memory: the child's first touch of a
/// page would be a page fault inside the clone, which waits for it (in a
/// virtual machine, a costly one).
pub(super) fn new_stack() -> Vec<u8> {
    let mut stack = vec![0u8; CHILD_STACK];
    for page in stack.chunks_mut(4096) {
        // SAFETY: a write of the byte it holds, in bounds; volatile, so it
        // is made even though the allocator gave zeroed memory.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
    }
    stack
}

/// Child stacks whose children have exec'd, for the next clones (their
/// pages are in memory already).
pub(super) static SPARE_STACKS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const SPARE_STACKS_MAX: usize = 8;

fn take_stack() -> Vec<u8> {
    let spare = SPARE_STACKS.lock().unwrap_or_else(|p| p.into_inner()).pop();
    spare.unwrap_or_else(new_stack)
}

/// The memory a cloned child runs on until it has exec'd the holder
/// program: its stack and what it reads. Owned by the `Holder` until then.
pub(super) struct Launch {
    /// A box of ours (`Box::into_raw`), freed by Drop once the child is
    /// done with it: a raw pointer, as the child reads it while the
    /// `Launch` moves (a `Box` would claim unique access).
    mem: std::ptr::NonNull<LaunchMem>,
    /// The child's pidfd, once it is cloned.
    pidfd: Option<Arc<OwnedFd>>,
    /// What errors name the holder by.
    pub(super) object: String,
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
    pub(super) fn wait(&self) -> Option<(i32, i32)> {
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

/// Clone the holder, by one `clone(CLONE_VM | CLONE_FILES | CLONE_PIDFD |
/// CLONE_CHILD_CLEARTID | CLONE_NEW*)`: the kernel makes the namespaces and
/// returns a pidfd for the child, which then calls `execve` on the holder
/// program (kept in a sealed memfd) alongside the caller
/// (`CONCURRENT_CHILD`). So the holder comes back at once, its namespaces
/// made: they can be entered and given links; [`Holder::started`] waits
/// for the exec and says whether it failed.
///
/// The child shares our fd table until its first call makes it a table of
/// its own with only our lowest fds (`close_range(..,
/// CLOSE_RANGE_UNSHARE)`), which it closes in its next calls but for
/// podnet's own (the program, `/dev/null`, the lifeline): a fork would copy
/// every fd of the creator (a cost that grows with its sandboxes) and hold
/// its sockets open until the exec. The child runs on a stack we allocated
/// and makes only raw system calls, without glibc, whose wrappers would set
/// `errno` in the thread-local storage it shares with the thread that
/// cloned it; everything it uses is prepared before the clone, in memory
/// the `Holder` owns until the kernel clears a word of it at the child's
/// exec or exit (`CLONE_CHILD_CLEARTID`), which [`Holder::started`] waits
/// for before it reads the step and errno a failed child stored there.
/// Where those raw calls are not written (aarch64), the clone also has
/// `CLONE_VFORK`, which suspends us until then (glibc's `posix_spawn` does
/// the same).
pub(super) fn clone_holder(spec: &HolderSpec) -> Result<Holder> {
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
