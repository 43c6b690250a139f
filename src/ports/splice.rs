//! Moving a forwarded TCP connection's bytes without copying them through
//! user space: `splice(2)` from one socket into a pipe and from the pipe
//! into the other socket, each direction on a pipe of its own, with
//! half-close passed on as the userspace copy does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// grow, so request/response connections keep a default pipe. A refusal
/// (`EPERM` over the user's `pipe-user-pages-soft`) keeps the pipe as it is.
const BULK_CAPACITY: usize = 256 * 1024;

/// Most pipes of this process grown to [`BULK_CAPACITY`] at once (8 MiB).
/// The kernel counts pipe pages per user, not per process
/// (`pipe-user-pages-soft`, 64 MiB by default), and past that limit every
/// new pipe of that user, in any of its programs, gets a page or two: so
/// a process takes an eighth of it at most, and several podnet processes
/// of one user stay below it.
const MAX_GROWN: usize = 32;

/// Pipes of this process grown now.
static GROWN: AtomicUsize = AtomicUsize::new(0);

/// A place among the [`MAX_GROWN`], given back when dropped.
struct Grown;

impl Grown {
    fn take() -> Option<Grown> {
        GROWN
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_GROWN).then_some(n + 1)
            })
            .ok()
            .map(|_| Grown)
    }
}

impl Drop for Grown {
    fn drop(&mut self) {
        GROWN.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    let (mut capacity, mut tried) = (FIRST_CAPACITY, false);
    // Held while the pipe is grown, until this direction ends.
    let mut _grown = None;
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
                    if n == capacity && !tried {
                        tried = true;
                        if let Some(slot) = Grown::take() {
                            if let Ok(bigger) = grow(&into) {
                                capacity = bigger;
                                _grown = Some(slot);
                            }
                        }
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
        assert!(grow(&read_end).expect("F_SETPIPE_SZ") >= BULK_CAPACITY);
    }

    #[test]
    fn no_more_than_max_grown_pipes_at_once_and_a_dropped_one_frees_its_place() {
        let held: Vec<Grown> = std::iter::from_fn(Grown::take)
            .take(MAX_GROWN + 1)
            .collect();
        assert_eq!(held.len(), MAX_GROWN);
        drop(held);
        assert!(Grown::take().is_some());
    }
}
