//! Sockets of the namespaces a process was in before it entered rootless
//! ones: a small process forked just before stays there (`podnet-outer`)
//! and makes sockets on request, passing each back over a socket pair
//! (`SCM_RIGHTS`). A socket keeps the network namespace it was made in, so
//! one made there reaches what the process could reach before, from a
//! rootless host namespace that has no way out itself; a socket it also
//! binds (and listens on) is a port of that namespace, bound with the
//! credentials the process had there. It exits when the process's end of
//! the pair closes, that is when the process exits.
//!
//! One request and its reply at a time, each bounded by [`REPLY_WAIT`]. An
//! exchange that breaks half-way (a timeout, a short or oversized message)
//! would pair the next request with this one's late reply, so it ends the
//! maker for good: it is killed and reaped, and every later request fails.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, listen, recv, recvmsg, sendmsg, setsockopt, socket, socketpair, sockopt, AddressFamily,
    Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn,
    SockaddrIn6,
};
use nix::sys::time::TimeVal;
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// The kind of socket to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Udp,
    Tcp,
}

/// How long a request waits for the maker to take it and to answer. It
/// answers in microseconds (one `socket`, `bind`, `listen`); a maker that
/// has not answered in this long is stuck or stopped.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Listen backlog of a listening socket it makes (tokio's and mio's).
const BACKLOG: i32 = 1024;

/// A request: op, kind, family, 0, port (big-endian), 0, 0, address (16
/// bytes, IPv4 in the first 4), IPv6 scope id (native-endian).
const ASK_LEN: usize = 28;
const OP_SOCKET: u8 = 1;
const OP_LISTEN: u8 = 2;

/// This process's socket maker, once it has entered rootless namespaces.
static OUTER: OnceLock<Outer> = OnceLock::new();

/// The process's end of the pair, and the maker's PID and pidfd.
#[derive(Debug)]
pub(super) struct Outer {
    /// `None` once an exchange broke: the maker is gone for good.
    chan: Mutex<Option<OwnedFd>>,
    pid: Pid,
    /// Opened right after the fork, while the maker is certainly our
    /// unreaped child: it names that process even if another reaper of
    /// the program (a runtime's `waitpid(-1)`) collects it and its PID is
    /// reused. `None` if it could not be opened.
    pidfd: Option<OwnedFd>,
}

/// Why a socket could not be had from outside.
#[derive(Debug)]
pub(crate) enum Outside {
    /// The maker tried and the kernel refused: the errno of its `socket`,
    /// `bind` or `listen`.
    Refused(Errno),
    /// The maker could not be asked (the exchange broke, now or before).
    Broken(Error),
}

/// Whether this process entered rootless namespaces and so has a socket
/// maker outside them.
pub(crate) fn has_outside() -> bool {
    OUTER.get().is_some()
}

/// A new socket (non-blocking, close-on-exec) of the IPv6 family if `v6`,
/// else IPv4, made in the network namespace this process was in before
/// [`enter`](super::enter) or [`enter_private`](super::enter_private);
/// `None` if it called neither.
pub(crate) fn socket_outside(v6: bool, kind: Kind) -> Option<Result<OwnedFd>> {
    let family = if v6 {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    OUTER.get().map(|outer| {
        outer.request(OP_SOCKET, kind, family).map_err(|e| match e {
            Outside::Refused(errno) => Error::sys("make", "a socket outside", errno),
            Outside::Broken(e) => e,
        })
    })
}

/// A socket of `kind` bound to `addr` in the network namespace this
/// process was in before [`enter`](super::enter) or
/// [`enter_private`](super::enter_private), with the credentials it had
/// there (so a port below `net.ipv4.ip_unprivileged_port_start` is
/// `EACCES` unless they had `CAP_NET_BIND_SERVICE`). TCP sockets have
/// `SO_REUSEADDR` and are listening. Non-blocking, close-on-exec. `None`
/// if the process called neither.
pub(crate) fn listener_outside(
    kind: Kind,
    addr: SocketAddr,
) -> Option<std::result::Result<OwnedFd, Outside>> {
    OUTER
        .get()
        .map(|outer| outer.request(OP_LISTEN, kind, addr))
}

fn encode(op: u8, kind: Kind, addr: SocketAddr) -> [u8; ASK_LEN] {
    let mut ask = [0u8; ASK_LEN];
    ask[0] = op;
    ask[1] = u8::from(kind == Kind::Tcp);
    ask[4..6].copy_from_slice(&addr.port().to_be_bytes());
    match addr {
        SocketAddr::V4(a) => {
            ask[2] = 4;
            ask[8..12].copy_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            ask[2] = 6;
            ask[8..24].copy_from_slice(&a.ip().octets());
            ask[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    ask
}

/// The request `ask`, or `None` if it makes no sense.
fn decode(ask: &[u8; ASK_LEN]) -> Option<(u8, Kind, SocketAddr)> {
    let kind = match ask[1] {
        0 => Kind::Udp,
        1 => Kind::Tcp,
        _ => return None,
    };
    let port = u16::from_be_bytes([ask[4], ask[5]]);
    let addr = match ask[2] {
        4 => {
            let ip: [u8; 4] = ask[8..12].try_into().ok()?;
            SocketAddr::V4(SocketAddrV4::new(ip.into(), port))
        }
        6 => {
            let ip: [u8; 16] = ask[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(ask[24..28].try_into().ok()?);
            SocketAddr::V6(SocketAddrV6::new(ip.into(), port, 0, scope))
        }
        _ => return None,
    };
    matches!(ask[0], OP_SOCKET | OP_LISTEN).then_some((ask[0], kind, addr))
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
        let wait = TimeVal::new(i64::try_from(REPLY_WAIT.as_secs()).unwrap_or(5), 0);
        for opt in [
            setsockopt(&ours, sockopt::ReceiveTimeout, &wait),
            setsockopt(&ours, sockopt::SendTimeout, &wait),
        ] {
            opt.map_err(|e| Error::sys("set a timeout on", "the outer socket maker's pair", e))?;
        }
        // SAFETY: the process has a single thread (checked by the caller:
        // `single_threaded`), so no lock or allocator state can be held by
        // another thread at the fork, and the child may run any code.
        match unsafe { nix::unistd::fork() } {
            Err(e) => Err(Error::sys("fork", "the outer socket maker", e)),
            Ok(nix::unistd::ForkResult::Child) => {
                drop(ours);
                serve(theirs)
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let start = crate::ident::proc_start_time(child).unwrap_or(0);
                let pidfd = crate::holder::pidfd_of(child, start).ok().flatten();
                Ok(Outer {
                    chan: Mutex::new(Some(ours)),
                    pid: child,
                    pidfd,
                })
            }
        }
    }

    /// Keep it for the process's life (a second one, from a later entry,
    /// is dropped, and its maker exits: the first knows the way out).
    pub(super) fn keep(self) {
        let _ = OUTER.set(self);
    }

    fn request(
        &self,
        op: u8,
        kind: Kind,
        addr: SocketAddr,
    ) -> std::result::Result<OwnedFd, Outside> {
        let what = "a socket from the outer socket maker";
        let mut chan = self.chan.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = chan.as_ref() else {
            return Err(Outside::Broken(Error::Sys {
                op: "ask for",
                object: format!("{what} (it was ended when an earlier request broke)"),
                errno: Errno::EPIPE,
            }));
        };
        match exchange(fd, &encode(op, kind, addr)) {
            Ok(Reply::Made(fd)) => Ok(fd),
            Ok(Reply::Refused(errno)) => Err(Outside::Refused(errno)),
            // Whole reply read, pairing intact: the fd did not fit.
            Ok(Reply::Lost) => Err(Outside::Broken(Error::Sys {
                op: "receive",
                object: format!("{what} (no fd came: out of file descriptors?)"),
                errno: Errno::EMFILE,
            })),
            Err((step, errno)) => {
                // A late reply would answer the next request: end it.
                *chan = None;
                end_maker(self.pid, self.pidfd.as_ref());
                Err(Outside::Broken(Error::Sys {
                    op: step,
                    object: format!("{what} (it is ended: no more sockets from outside)"),
                    errno,
                }))
            }
        }
    }
}

impl Drop for Outer {
    /// A maker not kept (the entry failed after forking it, or a second
    /// one) ends with its handle, and is reaped: no zombie is left.
    fn drop(&mut self) {
        let chan = self.chan.get_mut().unwrap_or_else(|p| p.into_inner());
        if chan.take().is_some() {
            end_maker(self.pid, self.pidfd.as_ref());
        }
    }
}

/// Kill and reap the maker `pid`, through its pidfd: signalled only while
/// the pidfd says it has not exited (until it is reaped, its PID cannot be
/// reused), reaped by `waitid(P_PIDFD)`, which never waits for another
/// process. Without a pidfd, by PID: it is our child, reaped by no one
/// else unless the program reaps every child itself.
fn end_maker(pid: Pid, pidfd: Option<&OwnedFd>) {
    use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
    let kill = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    loop {
        let reaped = match pidfd {
            Some(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) {
                    let _ = kill();
                }
                waitid(Id::PIDFd(fd.as_fd()), WaitPidFlag::WEXITED)
            }
            None => {
                let _ = kill();
                waitpid(pid, None)
            }
        };
        if reaped != Err(Errno::EINTR) {
            return;
        }
    }
}

/// What the maker answered.
enum Reply {
    Made(OwnedFd),
    Refused(Errno),
    /// It made one, but its fd did not reach us (`MSG_CTRUNC`).
    Lost,
}

/// Send `ask` and read its reply; on `Err`, the step that failed and why:
/// the pair can no longer be trusted to pair replies with requests.
fn exchange(
    chan: &OwnedFd,
    ask: &[u8; ASK_LEN],
) -> std::result::Result<Reply, (&'static str, Errno)> {
    loop {
        match sendmsg::<()>(
            chan.as_raw_fd(),
            &[IoSlice::new(ask)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) if n == ask.len() => break,
            Ok(_) => return Err(("send a request for", Errno::EMSGSIZE)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(("send a request for", timed_out(e))),
        }
    }
    let mut errno = [0u8; 5];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (bytes, flags, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut errno)];
        match recvmsg::<()>(
            chan.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(got) = cmsg {
                            for fd in got {
                                // SAFETY: the kernel just installed `fd` in
                                // this process for this message; nothing
                                // else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                break (msg.bytes, msg.flags, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(("receive", timed_out(e))),
        }
    };
    // A reply is 4 bytes; 0 is the maker gone, 5 (or truncated) is not
    // one of its replies.
    if bytes != 4 || flags.contains(MsgFlags::MSG_TRUNC) {
        let errno = if bytes == 0 {
            Errno::EPIPE
        } else {
            Errno::EBADMSG
        };
        return Err(("receive", errno));
    }
    let code = i32::from_ne_bytes([errno[0], errno[1], errno[2], errno[3]]);
    let fd = fds.into_iter().next();
    match (code, fd) {
        (0, Some(fd)) => Ok(Reply::Made(fd)),
        (0, None) if flags.contains(MsgFlags::MSG_CTRUNC) => Ok(Reply::Lost),
        (0, None) => Err(("receive", Errno::EBADMSG)),
        (code, _) => Ok(Reply::Refused(Errno::from_raw(code))),
    }
}

/// A blocking call's timeout (`SO_RCVTIMEO`, `SO_SNDTIMEO`) says EAGAIN.
fn timed_out(e: Errno) -> Errno {
    if e == Errno::EAGAIN {
        Errno::ETIMEDOUT
    } else {
        e
    }
}

/// Make what `op` asks for: a socket of `kind` and of `addr`'s family,
/// and for [`OP_LISTEN`] bound to `addr` (TCP: with `SO_REUSEADDR`, as
/// tokio's and std's listeners, and listening).
fn make(op: u8, kind: Kind, addr: SocketAddr) -> std::result::Result<OwnedFd, Errno> {
    let family = match addr.ip() {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let ty = match kind {
        Kind::Tcp => SockType::Stream,
        Kind::Udp => SockType::Datagram,
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if op == OP_SOCKET {
        return Ok(fd);
    }
    if kind == Kind::Tcp {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
    }
    if kind == Kind::Tcp {
        listen(
            &fd.as_fd(),
            Backlog::new(BACKLOG).map_err(|_| Errno::EINVAL)?,
        )?;
    }
    Ok(fd)
}

/// The socket maker's life: one socket per request, until the pair closes.
fn serve(chan: OwnedFd) -> ! {
    let _ = nix::sys::prctl::set_name(c"podnet-outer");
    let chan = keep_only(chan);
    loop {
        let mut ask = [0u8; ASK_LEN];
        let request = match recv(chan.as_raw_fd(), &mut ask, MsgFlags::empty()) {
            Ok(ASK_LEN) => decode(&ask),
            Err(Errno::EINTR) => continue,
            // The process's end closed (it exited): done.
            _ => exit_now(0),
        };
        // Nonsense gets an answer all the same, so pairing holds.
        let made = match request {
            Some((op, kind, addr)) => make(op, kind, addr),
            None => Err(Errno::EINVAL),
        };
        let code: i32 = made.as_ref().map_or_else(|e| *e as i32, |_| 0);
        let code = code.to_ne_bytes();
        let iov = [IoSlice::new(&code)];
        let fds = made.as_ref().map(|fd| [fd.as_raw_fd()]);
        let rights = fds.as_ref().map(|fds| [ControlMessage::ScmRights(fds)]);
        let cmsgs: &[ControlMessage<'_>] = rights.as_ref().map_or(&[], |r| r.as_slice());
        loop {
            match sendmsg::<()>(chan.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => exit_now(0),
            }
        }
        // `made` closes here: the process holds the only copy.
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
        close_from(4);
        OwnedFd::from_raw_fd(3)
    }
}

/// Close every fd numbered `first` or more: `close_range(2)` (Linux 5.9),
/// else each fd `/proc/self/fd` lists, else every number up to the soft
/// `RLIMIT_NOFILE`. Only in the forked maker, which has one thread and may
/// allocate.
fn close_from(first: i32) {
    use nix::libc;
    let from = u32::try_from(first).unwrap_or(u32::MAX);
    // SAFETY: close_range takes plain integers and closes fds of this
    // process only, none of which is owned by a live Rust value here (the
    // caller keeps only fds below `first`).
    // JUSTIFICATION: nix 0.31 does not wrap close_range.
    if unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) } == 0 {
        return;
    }
    // ENOSYS before 5.9 (or a seccomp filter that refuses it).
    let listed: Option<Vec<i32>> = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect()
    });
    let fds = listed.unwrap_or_else(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        (first..i32::try_from(soft.min(1 << 20)).unwrap_or(1 << 20)).collect()
    });
    for fd in fds.into_iter().filter(|fd| *fd >= first) {
        // SAFETY: close(2) on a number; one not open (the listing's own
        // directory fd, closed by now) is EBADF, which is ignored.
        unsafe { libc::close(fd) };
    }
}

/// End the socket maker at once: no atexit handlers, no stdio flushing
/// (they belong to the process it was forked from).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions; it does not return.
    unsafe { nix::libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_says_the_same_after_the_trip() {
        for addr in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "[::]:53",
            "[fe80::1%7]:65535",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            for kind in [Kind::Tcp, Kind::Udp] {
                let got = decode(&encode(OP_LISTEN, kind, addr)).unwrap();
                assert_eq!(got, (OP_LISTEN, kind, addr));
            }
        }
    }

    #[test]
    fn a_request_that_makes_no_sense_is_refused() {
        let ok = encode(OP_SOCKET, Kind::Udp, "1.2.3.4:5".parse().unwrap());
        for (byte, value) in [(0, 9), (1, 2), (2, 5)] {
            let mut bad = ok;
            bad[byte] = value;
            assert_eq!(decode(&bad), None, "byte {byte} = {value}");
        }
    }
}
