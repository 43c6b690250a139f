//! Moving a forwarded TCP connection's bytes without copying them through
//! user space: `splice(2)` from one socket into a pipe and from the pipe
//! into the other socket, each direction on a pipe of its own, with
//! half-close passed on as the userspace copy does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most one `splice` call moves: a default pipe's capacity (16 pages).
const CHUNK: usize = 64 * 1024;

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
    loop {
        if queued == 0 {
            from.readable().await?;
            let got = from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, into.as_fd(), None, CHUNK, flags).map_err(io_error)
            });
            match got {
                Ok(0) => {
                    // EOF, and nothing left in the pipe.
                    shutdown(to.as_raw_fd(), Shutdown::Write).map_err(io_error)?;
                    return Ok(moved);
                }
                Ok(n) => queued = n,
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

fn io_error(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}
