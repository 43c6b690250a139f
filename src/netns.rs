//! Namespace handles: the calling thread's namespace as an fd, a `!Send`
//! guard that moves the current thread into a sandbox and back, a closure
//! on a fresh thread inside, and joining a child on exec. `setns(2)` moves
//! one *thread*, so nothing reads `/proc/self/ns/net`; a sandbox is named
//! by its holder's pidfd (Linux 5.8), so no path and no PID-reuse race.

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{chdir, getppid, Pid};
use std::ffi::CString;

use crate::error::{Error, Result};

const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// The calling thread's network namespace.
pub(crate) fn thread_netns() -> Result<OwnedFd> {
    open(
        THREAD_NETNS,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| Error::sys("open", THREAD_NETNS, errno))
}

/// The network namespace of `target` (a pidfd), as an fd of its own: asked
/// of the pidfd (`PIDFD_GET_NET_NAMESPACE`, Linux 6.11), else by moving
/// this thread in and back (four system calls more).
pub(crate) fn netns_of(target: BorrowedFd<'_>, what: &str) -> Result<OwnedFd> {
    use nix::libc;
    // _IO(PIDFS_IOCTL_MAGIC 0xFF, 4), include/uapi/linux/pidfd.h.
    const PIDFD_GET_NET_NAMESPACE: libc::c_ulong = 0xFF04;
    // SAFETY: an ioctl with a zero argument on a pidfd we borrow; on success it
    // returns a new fd that nothing else owns.
    let fd = unsafe { libc::ioctl(target.as_raw_fd(), PIDFD_GET_NET_NAMESPACE as _, 0) };
    if fd >= 0 {
        // SAFETY: as above.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let _inside = enter(target, what)?;
    thread_netns()
}

/// `SO_NETNS_COOKIE` (Linux 5.14, include/uapi/asm-generic/socket.h); not
/// in the libc crate yet.
const SO_NETNS_COOKIE: nix::libc::c_int = 71;

/// The calling thread's network namespace's cookie: a 64-bit id the kernel
/// never hands out twice, unlike the nsfs inode, which is reused once the
/// namespace is gone (so a store keyed by inode could be inherited by a
/// stranger).
pub(crate) fn netns_cookie() -> Result<u64> {
    use nix::libc;
    // SAFETY: socket(2) with constant arguments returns a new fd or -1.
    // JUSTIFICATION: nix's socket() would need its `socket` feature for this one call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::sys(
            "socket",
            "to read the netns cookie",
            Errno::last(),
        ));
    }
    // SAFETY: the fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len: libc::socklen_t = 8; // size_of::<u64>()
                                      // SAFETY: getsockopt(2) writes at most `len` bytes into `cookie`, which
                                      // is a u64 of exactly that size, and updates `len`.
                                      // JUSTIFICATION: nix has no SO_NETNS_COOKIE sockopt.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::sys(
            "getsockopt SO_NETNS_COOKIE",
            "(Linux 5.14 or later is needed)",
            Errno::last(),
        ));
    }
    Ok(cookie)
}

thread_local! {
    /// How many `Enter` guards are alive on this thread, to catch out-of-order drops.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// The current thread is inside a sandbox's network namespace while this
/// guard lives; dropping it moves the thread back to where it was.
///
/// Made by [`Sandbox::enter`](crate::Sandbox::enter). The guard is `!Send`
/// (it belongs to the thread it moved) and guards nest: drop them in the
/// reverse order of creation.
///
/// Do not hold it across an `.await`: the task may resume on another thread,
/// and the worker thread would stay inside. Use
/// [`Sandbox::run`](crate::Sandbox::run) for work that is not a few lines.
///
/// # Panics
/// Dropping a guard while a guard made after it is alive panics, after
/// restoring the namespace this guard found (the later guards then do
/// nothing when dropped). If the previous namespace cannot be restored, the process
/// aborts: a thread left in the wrong namespace is worse than a crash.
#[must_use = "the thread leaves the sandbox as soon as the guard is dropped"]
#[derive(Debug)]
pub struct Enter {
    prev: OwnedFd,
    depth: usize,
    _not_send: PhantomData<*const ()>,
}

/// Move the current thread into the network namespace of `target` (a
/// pidfd or a namespace fd). `what` names it for errors.
pub(crate) fn enter(target: BorrowedFd<'_>, what: &str) -> Result<Enter> {
    let prev = thread_netns()?;
    setns(target, CloneFlags::CLONE_NEWNET).map_err(|errno| setns_error(what, errno))?;
    let depth = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    Ok(Enter {
        prev,
        depth,
        _not_send: PhantomData,
    })
}

fn setns_error(what: &str, errno: Errno) -> Error {
    Error::sys("enter network namespace of", what, errno)
}

impl Drop for Enter {
    fn drop(&mut self) {
        let current = DEPTH.with(Cell::get);
        if self.depth > current {
            // An outer guard was dropped first and already restored the
            // namespace from before it, which is also from before us.
            return;
        }
        if setns(self.prev.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            eprintln!("podnet: cannot restore a thread's network namespace; aborting");
            std::process::abort();
        }
        DEPTH.with(|d| d.set(self.depth - 1));
        if self.depth < current && !std::thread::panicking() {
            panic!("podnet::Enter guards dropped out of order (the thread is back where the outer one found it)");
        }
    }
}

/// Run `f` on a new OS thread inside the namespace of `target`, and return
/// its value. The thread ends with `f`, so it never goes back to a pool.
///
/// # Panics
/// A panic in `f` is resumed in the caller.
pub(crate) async fn run_inside<F, T>(target: Arc<OwnedFd>, what: String, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    run_in_namespaces(target, CloneFlags::CLONE_NEWNET, what, f).await
}

/// Make `cmd`'s child join the network namespace of `target` between fork
/// and exec. `target` is kept alive by the command.
pub(crate) fn join_on_exec(cmd: &mut tokio::process::Command, target: Arc<OwnedFd>) {
    let spec = JoinSpec {
        namespaces: CloneFlags::CLONE_NEWNET,
        mounts: None,
        cwd: None,
        die_with: None,
    };
    join_with_on_exec(cmd, target, spec);
}

/// How a pod's process joins its sandbox between fork and exec.
#[derive(Debug)]
pub(crate) struct JoinSpec {
    /// The holder's namespaces to join (network, and the pod's mount, UTS
    /// and IPC namespaces where it has them).
    pub namespaces: CloneFlags,
    /// A mount namespace to join first (one of a sandbox's commands, when
    /// `namespaces` has none). Needs `cwd`, as any mount namespace does.
    pub mounts: Option<Arc<OwnedFd>>,
    /// Directory to change to after joining: joining a mount namespace
    /// moves the process to that namespace's root.
    pub cwd: Option<Cwd>,
    /// Ask for SIGKILL when the parent (this process) exits; with the
    /// parent's PID to catch the race where it already has.
    pub die_with: Option<Pid>,
}

/// Where a child goes after joining a mount namespace.
#[derive(Debug)]
pub(crate) enum Cwd {
    /// This path, looked up inside.
    Path(CString),
    /// The path of the directory it was in, looked up again inside.
    Keep,
}

/// Make `cmd`'s child join the namespaces of `target` as `spec` says.
pub(crate) fn join_with_on_exec(
    cmd: &mut tokio::process::Command,
    target: Arc<OwnedFd>,
    spec: JoinSpec,
) {
    let join = move || -> std::io::Result<()> {
        if let Some(parent) = spec.die_with {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
        }
        let setns_all = || -> nix::Result<()> {
            if let Some(mounts) = &spec.mounts {
                setns(mounts.as_fd(), CloneFlags::CLONE_NEWNS)?;
            }
            setns(target.as_fd(), spec.namespaces)
        };
        match &spec.cwd {
            None => setns_all()?,
            Some(Cwd::Path(dir)) => {
                setns_all()?;
                chdir(dir.as_c_str())?;
            }
            Some(Cwd::Keep) => {
                // A buffer on the stack: no allocation after fork.
                let mut here = [0u8; nix::libc::PATH_MAX as usize];
                // SAFETY: getcwd(3) writes at most `len` bytes, NUL
                // included, into the buffer, which lives until the chdir.
                let p = unsafe { nix::libc::getcwd(here.as_mut_ptr().cast(), here.len()) };
                if p.is_null() {
                    return Err(std::io::Error::last_os_error());
                }
                setns_all()?;
                let dir = std::ffi::CStr::from_bytes_until_nul(&here)
                    .map_err(|_| std::io::Error::from(Errno::ENAMETOOLONG))?;
                chdir(dir)?;
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec. It calls
    // prctl(2), getppid(2), getcwd(3), setns(2) and chdir(2), all
    // async-signal-safe, with an fd and a string that the closure owns and
    // only borrows and a buffer on its stack; it does not allocate and
    // takes no locks. std reports an error through its own errno pipe.
    unsafe {
        cmd.pre_exec(join);
    }
}

/// Make every spawn of `cmd` fail with `errno` in the child, before exec:
/// for a command that must not start where it would be spawned.
pub(crate) fn refuse_on_exec(cmd: &mut tokio::process::Command, errno: Errno) {
    let raw = errno as i32;
    // SAFETY: the closure runs in the forked child before exec and only
    // builds an io::Error from a number (no allocation, no lock).
    unsafe {
        cmd.pre_exec(move || Err(std::io::Error::from_raw_os_error(raw)));
    }
}

/// Run `f` (a spawn) on a new OS thread that has joined the mount
/// namespace `mounts` and the network namespace of `target`, and changed
/// back to the directory the caller is in, looked up inside; with the
/// caller's tokio runtime entered, if it is in one. The caller waits: the
/// thread ends with `f`. So a child spawned there starts in both
/// namespaces without a hook between fork and exec (`posix_spawn`).
pub(crate) fn on_thread_in<T: Send>(
    mounts: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    what: &str,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    // None if it has been removed: the thread then stays at the root.
    let cwd = std::env::current_dir().ok();
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("podnet-spawn".into())
            .spawn_scoped(s, || {
                nix::sched::unshare(CloneFlags::CLONE_FS)
                    .and_then(|()| setns(mounts, CloneFlags::CLONE_NEWNS))
                    .map_err(|e| Error::sys("join the command mount namespace of", what, e))?;
                setns(target, CloneFlags::CLONE_NEWNET).map_err(|e| setns_error(what, e))?;
                // A directory that is not there inside leaves the thread at
                // the root, where a command that joins in its child would be.
                if let Some(dir) = &cwd {
                    let _ = std::env::set_current_dir(dir);
                }
                let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
                Ok(f())
            })
            .map_err(|e| Error::io("start a thread to spawn in", what, e))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Run `f` on a new OS thread that has joined `namespaces` of `target`,
/// mount namespace included (the thread first stops sharing its
/// filesystem context with the process, as setns(2) requires).
pub(crate) async fn run_in_namespaces<F, T>(
    target: Arc<OwnedFd>,
    namespaces: CloneFlags,
    what: String,
    f: F,
) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("podnet-run".into())
        .spawn(move || {
            let joined = if namespaces.contains(CloneFlags::CLONE_NEWNS) {
                nix::sched::unshare(CloneFlags::CLONE_FS)
            } else {
                Ok(())
            }
            .and_then(|()| setns(target.as_fd(), namespaces));
            // The thread exits after `f`: nothing to restore.
            let result = match joined {
                Ok(()) => Ok(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))),
                Err(errno) if namespaces == CloneFlags::CLONE_NEWNET => {
                    Err(setns_error(&what, errno))
                }
                Err(errno) => Err(Error::sys("join the namespaces of", what, errno)),
            };
            let _ = tx.send(result);
        })
        .map_err(|e| Error::io("start a thread for run()", "", e))?;
    match rx.await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(panic))) => std::panic::resume_unwind(panic),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::sys("run closure", "thread vanished", Errno::ECHILD)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn netns_of_a_pidfd_is_the_namespace_of_its_process() {
        use nix::libc;
        // SAFETY: pidfd_open(2) of our own PID; the new fd is ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        assert!(fd >= 0, "pidfd_open: {}", Errno::last());
        // SAFETY: as above.
        let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap()) };
        let ns = match netns_of(pidfd.as_fd(), "this process") {
            Ok(ns) => ns,
            // The fallback moves this thread into the (same) namespace,
            // which takes CAP_SYS_ADMIN on kernels before 6.11.
            Err(e) if e.errno() == Some(Errno::EPERM) => return,
            Err(e) => panic!("{e}"),
        };
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let got = std::fs::File::from(ns).metadata().unwrap();
        assert_eq!((got.dev(), got.ino()), (ours.dev(), ours.ino()));
    }

    #[test]
    fn the_netns_cookie_is_stable_and_differs_between_namespaces() {
        let here = netns_cookie().unwrap();
        assert_eq!(netns_cookie().unwrap(), here);
        let other = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).ok()?;
            netns_cookie().ok()
        })
        .join()
        .unwrap();
        if let Some(other) = other {
            assert_ne!(other, here);
        }
    }
}
