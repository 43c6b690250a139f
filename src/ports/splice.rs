//! Moving a forwarded TCP connection's bytes without copying them through
//! user space: `splice(2)` from one socket into a pipe and from the pipe
//! into the other socket, each direction on a pipe of its own, with
//! half-close passed on as the userspace copy does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A new pipe's capacity (16 pages), and so the most one `splice` moves
/// until the direction proves to carry bulk.
const FIRST_CAPACITY: usize = 64 * 1024;

/// The capacity a direction's pipe grows to once a `splice` has filled
/// it: fewer, larger splices for a bulk transfer. Only such directions
/// grow, so request/response connections keep a default pipe, and the
/// forwarder's most (64 connections, two pipes each) stays within half
/// the user's default soft limit on pipe pages (`pipe-user-pages-soft`,
/// 64 MiB). A refusal (`EPERM` over that limit) keeps the pipe as it is.
const BULK_CAPACITY: usize = 256 * 1024;

/// The two pipes of a connection (four fds): one per direction.
pub(super) struct Pipes([(OwnedFd, OwnedFd); 2]);

impl Pipes {
    /// Two non-blocking, close-on-exec pipes, or the errno (EMFILE).
    pub(super) fn new() -> Result<Pipes, Errno> {
        let flags = OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        Ok(Pipes([
            nix::unistd::pipe2(flags)?,
            nix::unistd::pipe2(flags)?,
        ]))
    }
}

/// Copy both ways between `a` and `b` until both directions have ended:
/// EOF from one side becomes `shutdown(SHUT_WR)` on the other while the
/// other direction goes on. The first error (a reset, say) ends both.
/// Returns the bytes moved a to b and b to a.
pub(super) async fn relay(a: &TcpStream, b: &TcpStream, pipes: Pipes) -> io::Result<(u64, u64)> {
    let [ab, ba] = pipes.0;
    tokio::try_join!(one_way(a, b, ab), one_way(b, a, ba))
}

/// Move bytes from `from` to `to` through `pipe` until EOF, then
/// half-close `to`.
async fn one_way(from: &TcpStream, to: &TcpStream, pipe: (OwnedFd, OwnedFd)) -> io::Result<u64> {
    let (out, into) = pipe;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let (mut queued, mut moved) = (0usize, 0u64);
    let (mut capacity, mut grown) = (FIRST_CAPACITY, false);
    loop {
        if queued == 0 {
            from.readable().await?;
            let got = from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, into.as_fd(), None, capacity, flags).map_err(io_error)
            });
            match got {
                Ok(0) => {
                    // EOF, and nothing left in the pipe.
                    shutdown(to.as_raw_fd(), Shutdown::Write).map_err(io_error)?;
                    return Ok(moved);
                }
                Ok(n) => {
                    queued = n;
                    if n == capacity && !grown {
                        grown = true;
                        capacity = grow(&into).unwrap_or(capacity);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        to.writable().await?;
        let sent = to.try_io(Interest::WRITABLE, || {
            splice(out.as_fd(), None, to.as_fd(), None, queued, flags).map_err(io_error)
        });
        match sent {
            Ok(n) => {
                queued -= n;
                moved += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Ask for `BULK_CAPACITY` on the pipe `end` belongs to; the capacity the
/// kernel gave (it rounds up to a power of two pages).
fn grow(end: &OwnedFd) -> Result<usize, Errno> {
    let size = i32::try_from(BULK_CAPACITY).unwrap_or(i32::MAX);
    let got = fcntl(end, FcntlArg::F_SETPIPE_SZ(size))?;
    Ok(usize::try_from(got).unwrap_or(FIRST_CAPACITY))
}

fn io_error(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_grows_to_at_least_the_bulk_capacity() {
        let (read_end, _write_end) = Pipes::new()
            .expect("pipes")
            .0
            .into_iter()
            .next()
            .expect("one");
        let before = fcntl(&read_end, FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ");
        assert_eq!(usize::try_from(before).ok(), Some(FIRST_CAPACITY));
        assert!(grow(&read_end).expect("F_SETPIPE_SZ") >= BULK_CAPACITY);
    }
}
