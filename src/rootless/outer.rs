//! Sockets of the namespaces a process was in before it entered rootless
//! ones: a small process forked just before stays there (`podnet-outer`)
//! and makes sockets on request, passing each back over a socket pair
//! (`SCM_RIGHTS`). A socket keeps the network namespace it was made in, so
//! one made there reaches what the process could reach before, from a
//! rootless host namespace that has no way out itself. It exits when the
//! process's end of the pair closes, that is when the process exits.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::socket::{
    recv, recvmsg, sendmsg, socket, socketpair, AddressFamily, ControlMessage, ControlMessageOwned,
    MsgFlags, SockFlag, SockType,
};

use crate::error::{Error, Result};

/// The kind of socket to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Udp,
    Tcp,
}

/// This process's socket maker, once it has entered rootless namespaces.
static OUTER: OnceLock<Outer> = OnceLock::new();

/// The process's end of the pair: one request and its reply at a time.
#[derive(Debug)]
pub(super) struct Outer {
    chan: Mutex<OwnedFd>,
}

/// A new socket (non-blocking, close-on-exec) of the IPv6 family if `v6`,
/// else IPv4, made in the network namespace this process was in before
/// [`enter`](super::enter) or [`enter_private`](super::enter_private);
/// `None` if it called neither.
pub(crate) fn socket_outside(v6: bool, kind: Kind) -> Option<Result<OwnedFd>> {
    OUTER.get().map(|outer| outer.request(v6, kind))
}

impl Outer {
    /// Fork the socket maker. Only while the process has one thread (the
    /// caller checks), before it changes namespaces.
    pub(super) fn start() -> Result<Outer> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::sys("make a socket pair for", "the outer socket maker", e))?;
        // SAFETY: the process has a single thread (checked by the caller:
        // `single_threaded`), so no lock or allocator state can be held by
        // another thread at the fork, and the child may run any code.
        match unsafe { nix::unistd::fork() } {
            Err(e) => Err(Error::sys("fork", "the outer socket maker", e)),
            Ok(nix::unistd::ForkResult::Child) => {
                drop(ours);
                serve(theirs)
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => Ok(Outer {
                chan: Mutex::new(ours),
            }),
        }
    }

    /// Keep it for the process's life (a second one, from a later entry,
    /// is dropped, and its maker exits: the first knows the way out).
    pub(super) fn keep(self) {
        let _ = OUTER.set(self);
    }

    fn request(&self, v6: bool, kind: Kind) -> Result<OwnedFd> {
        let what = "a socket from the outer socket maker";
        let err = |e| Error::sys("get", what, e);
        let chan = self.chan.lock().unwrap_or_else(|p| p.into_inner());
        let ask = [u8::from(v6), u8::from(kind == Kind::Tcp)];
        sendmsg::<()>(
            chan.as_raw_fd(),
            &[IoSlice::new(&ask)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(err)?;
        let mut errno = [0u8; 4];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut errno)];
        let msg = recvmsg::<()>(
            chan.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(err)?;
        if msg.bytes == 0 {
            return Err(err(Errno::EPIPE));
        }
        let mut got = None;
        for cmsg in msg.cmsgs().map_err(err)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in this
                    // process for this message; nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    got.get_or_insert(fd);
                }
            }
        }
        match i32::from_ne_bytes(errno) {
            0 => got.ok_or_else(|| err(Errno::EBADMSG)),
            code => Err(err(Errno::from_raw(code))),
        }
    }
}

/// The socket maker's life: one socket per request, until the pair closes.
fn serve(chan: OwnedFd) -> ! {
    let _ = nix::sys::prctl::set_name(c"podnet-outer");
    let chan = keep_only(chan);
    loop {
        let mut ask = [0u8; 2];
        match recv(chan.as_raw_fd(), &mut ask, MsgFlags::empty()) {
            Ok(2) => {}
            Err(Errno::EINTR) => continue,
            // The process's end closed (it exited), or nonsense: done.
            _ => exit_now(0),
        }
        let family = if ask[0] == 1 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let ty = if ask[1] == 1 {
            SockType::Stream
        } else {
            SockType::Datagram
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let made = socket(family, ty, flags, None);
        let code: i32 = made.as_ref().map_or_else(|e| *e as i32, |_| 0);
        let code = code.to_ne_bytes();
        let iov = [IoSlice::new(&code)];
        let sent = match &made {
            Ok(fd) => {
                let fds = [fd.as_raw_fd()];
                sendmsg::<()>(
                    chan.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
            }
            Err(_) => sendmsg::<()>(chan.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None),
        };
        if sent.is_err() {
            exit_now(0);
        }
    }
}

/// Keep only `chan` (as fd 3) and `/dev/null` as stdio: a copy of the
/// process's other fds (its listening sockets, its pipes) would keep them
/// open as long as this process lives.
fn keep_only(chan: OwnedFd) -> OwnedFd {
    use nix::libc;
    let chan = std::os::fd::IntoRawFd::into_raw_fd(chan);
    // SAFETY: plain fd calls on raw fds of this (single-threaded, forked)
    // process. `chan` is first copied above 9, out of the way of the
    // stdio slots and of 3; the copy is then placed at 3 and every fd
    // above 3 is closed, the originals included. The one fd returned is
    // 3, owned by the caller only.
    unsafe {
        let high = libc::fcntl(chan, libc::F_DUPFD_CLOEXEC, 10);
        if high < 0 {
            exit_now(1);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        if libc::dup3(high, 3, libc::O_CLOEXEC) != 3 {
            exit_now(1);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        OwnedFd::from_raw_fd(3)
    }
}

/// End the socket maker at once: no atexit handlers, no stdio flushing
/// (they belong to the process it was forked from).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions; it does not return.
    unsafe { nix::libc::_exit(code) }
}
