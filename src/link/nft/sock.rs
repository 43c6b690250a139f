//! The blocking NETLINK_NETFILTER socket of the calling thread's network
//! namespace: opening and binding it, sending a datagram, and receiving
//! one within a bounded wait.

use nix::errno::Errno;
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::{Error, Result};

/// A bound nf_tables socket of the calling thread's network namespace, and
/// its netlink port id.
pub(super) fn socket(object: impl Fn() -> String) -> Result<(Socket, u32)> {
    let err = |op: &'static str, e: std::io::Error| Error::Netlink {
        op,
        object: object(),
        errno: io_errno(e),
    };
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| err("open", e))?;
    sock.bind_auto().map_err(|e| err("bind", e))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(|e| err("connect", e))?;
    let mut addr = SocketAddr::new(0, 0);
    sock.get_address(&mut addr)
        .map_err(|e| err("getsockname", e))?;
    Ok((sock, addr.port_number()))
}

pub(super) fn send(sock: &Socket, buf: &[u8]) -> std::result::Result<(), Errno> {
    sock.send(buf, 0).map(|_| ()).map_err(io_errno)
}

/// The longest wait for the kernel's answer to a request (ms): it answers
/// at once, so this only bounds a bug or a wedged kernel.
pub(super) const ANSWER_WAIT: u16 = 10_000;
/// How long to wait for the rest of an answer after an error (ms).
pub(super) const SHORT_WAIT: u16 = 200;

/// The next datagram, or ETIMEDOUT after `ms` milliseconds without one.
pub(super) fn recv_within(sock: &Socket, ms: u16) -> std::result::Result<Vec<u8>, Errno> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Err(Errno::ETIMEDOUT),
        Ok(_) => recv(sock),
        Err(Errno::EINTR) => recv_within(sock, ms),
        Err(e) => Err(e),
    }
}

fn recv(sock: &Socket) -> std::result::Result<Vec<u8>, Errno> {
    let mut buf = Vec::with_capacity(64 * 1024);
    sock.recv(&mut buf, 0).map_err(io_errno)?;
    Ok(buf)
}

pub(super) fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))
}
