//! Finding holders that exist already: those of a network, by scanning
//! `/proc` for their argv, and a pidfd of one by its PID and start time
//! (so a reused PID is refused).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;

use super::image::HOLDER_COMM;
use crate::error::{Error, Result};
use crate::ident::{is_alive, proc_start_time};

/// A pidfd of the process `pid` that started at `start_time`, or `None`
/// if it is gone (a reused PID has another start time).
pub(crate) fn pidfd_of(pid: Pid, start_time: u64) -> Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
    // JUSTIFICATION: nix 0.31 has no pidfd_open wrapper.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return match Errno::last() {
            Errno::ESRCH => Ok(None),
            errno => Err(Error::sys("pidfd_open holder", pid.to_string(), errno)),
        };
    }
    let fd = RawFd::try_from(fd).map_err(|_| Error::sys("pidfd_open", "", Errno::EBADF))?;
    // SAFETY: the syscall returned a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The pidfd pins the process it was opened for; if that process still
    // has the start time we recorded, it is the holder, not a reused PID.
    Ok(is_alive(pid.as_raw(), start_time).then_some(pidfd))
}

/// A holder found by [`find_holders`].
#[derive(Debug)]
pub(crate) struct Found {
    pub pid: Pid,
    pub start: u64,
    /// The sandbox it holds.
    pub name: String,
    /// The process that made it, `(pid, start time)`, if its argv says.
    pub creator: Option<(i32, u64)>,
}

/// Holders of the network `key` (their argv is `podnet-pause KEY NAME
/// CREATOR_PID:CREATOR_START`), found by scanning `/proc`.
pub(crate) fn find_holders(key: &str) -> Vec<Found> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        if args.next() != Some(HOLDER_COMM.as_bytes()) || args.next() != Some(key.as_bytes()) {
            continue;
        }
        let Some(name) = args.next().and_then(|n| std::str::from_utf8(n).ok()) else {
            continue;
        };
        let creator = args
            .next()
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.split_once(':'))
            .and_then(|(p, s)| Some((p.parse().ok()?, s.parse().ok()?)));
        let pid = Pid::from_raw(pid);
        if let Some(start) = proc_start_time(pid) {
            out.push(Found {
                pid,
                start,
                name: name.to_owned(),
                creator,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_readable() {
        assert!(proc_start_time(nix::unistd::getpid()).is_some());
    }
}
