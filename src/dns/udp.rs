//! UDP in batches: `recvmmsg(2)` takes what is queued on a server socket
//! (up to `BATCH` datagrams, each with its source and arrival interface)
//! and `sendmmsg(2)` sends the replies, one call each, so a server under
//! load pays for its system calls per batch rather than per query. A
//! batch of one costs what `recvmsg` and `sendto` did: the socket is
//! non-blocking, nothing waits for a batch to fill, and one reply goes
//! out with `sendto`.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams taken, and replies sent, per system call.
pub(crate) const BATCH: usize = 32;
/// A datagram longer than this is cut, and dropped.
const MAX_DATAGRAM: usize = 4096;

/// What the kernel said of one datagram.
#[derive(Debug, Clone, Copy)]
struct Meta {
    len: usize,
    src: Option<SocketAddr>,
    ifindex: Option<u32>,
    cut: bool,
}

/// The buffers of `recvmmsg`, made once per socket and reused.
pub(crate) struct Inbox {
    /// `BATCH` slots of `MAX_DATAGRAM` bytes.
    bufs: Box<[u8]>,
    headers: MultiHeaders<SockaddrStorage>,
    got: Vec<Meta>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("got", &self.got).finish()
    }
}

fn headers() -> MultiHeaders<SockaddrStorage> {
    MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(libc::in6_pktinfo)))
}

impl Inbox {
    pub(crate) fn new() -> Inbox {
        Inbox {
            bufs: vec![0u8; BATCH * MAX_DATAGRAM].into_boxed_slice(),
            headers: headers(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Take the datagrams queued on `fd` (a non-blocking socket with
    /// `IP_PKTINFO` or `IPV6_RECVPKTINFO` set), up to `BATCH`, without
    /// waiting for more: how many. `WouldBlock` if there were none.
    pub(crate) fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let Inbox { bufs, headers, got } = self;
        got.clear();
        let mut slots = bufs.chunks_mut(MAX_DATAGRAM);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        let mut stale = false;
        let msgs = socket::recvmmsg(
            fd.as_raw_fd(),
            headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        for m in msgs {
            let ifindex = m.cmsgs().ok().and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::Ipv4PacketInfo(pi) => u32::try_from(pi.ipi_ifindex).ok(),
                    ControlMessageOwned::Ipv6PacketInfo(pi) => Some(pi.ipi6_ifindex),
                    _ => None,
                })
            });
            let src = m.address.as_ref().and_then(std_addr);
            // recvmmsg leaves in each header the lengths the kernel wrote
            // back (msg_controllen, msg_namelen) as the next call's room,
            // and nix does not reset them (nix-rust/nix PR #2813): a slot
            // that once came without its pktinfo would have no room for
            // it again. Never seen with pktinfo on; if it is, start anew.
            stale |= ifindex.is_none() || src.is_none();
            got.push(Meta {
                len: m.bytes,
                src,
                ifindex,
                cut: m.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        if stale {
            *headers = self::headers();
        }
        Ok(got.len())
    }

    /// Datagram `i` of the last `recv`: its bytes, source and arrival
    /// interface; `None` if it is to be dropped (longer than the buffer,
    /// or without its source or interface: it cannot be checked).
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr, u32)> {
        let m = self.got.get(i)?;
        if m.cut {
            return None;
        }
        let at = i * MAX_DATAGRAM;
        Some((self.bufs.get(at..at + m.len)?, m.src?, m.ifindex?))
    }
}

/// `addr` as std's, if it is an IP address.
fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(SocketAddr::V4(SocketAddrV4::from(*v4)))
    } else {
        addr.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}

/// Replies waiting to be sent, reused from batch to batch.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    bufs: Vec<Vec<u8>>,
    to: Vec<SockaddrStorage>,
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        Outbox {
            bufs: Vec::with_capacity(BATCH),
            to: Vec::with_capacity(BATCH),
        }
    }

    pub(crate) fn push(&mut self, reply: Vec<u8>, to: SocketAddr) {
        self.bufs.push(reply);
        self.to.push(SockaddrStorage::from(to));
    }

    /// Send every reply from `fd` (non-blocking) and empty the box. A
    /// reply that cannot go is lost, as a `sendto` that failed would
    /// lose it: the rest of them if the socket's buffer is full, else
    /// that one alone.
    pub(crate) fn flush(&mut self, fd: BorrowedFd<'_>) {
        use std::os::fd::AsRawFd;
        if let ([one], [to]) = (self.bufs.as_slice(), self.to.as_slice()) {
            let _ = socket::sendto(fd.as_raw_fd(), one, to, MsgFlags::empty());
        } else {
            let mut at = 0;
            while at < self.bufs.len() {
                match crate::sys::send_datagrams(fd, &self.bufs[at..], &self.to[at..]) {
                    Ok(sent) => at += sent.max(1),
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => break,
                    Err(_) => at += 1,
                }
            }
        }
        self.bufs.clear();
        self.to.clear();
    }
}
