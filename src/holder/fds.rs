//! podnet's own fds that every holder's child keeps until its exec, opened
//! once per process: the holder program in a sealed memfd, and `/dev/null`
//! for its stdio; both numbered above 3 (`above_3`), as the child puts its
//! stdio on 0-2 and its lifeline on 3.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::libc;

use super::image::holder_image;
use crate::error::{Error, Result};

pub(super) fn devnull() -> Result<&'static OwnedFd> {
    static DEVNULL: OnceLock<std::result::Result<OwnedFd, Errno>> = OnceLock::new();
    let fd = DEVNULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|f| above_3(f.into()))
    });
    fd.as_ref()
        .map_err(|errno| Error::sys("open", "/dev/null", *errno))
}

/// The holder program, in a sealed memfd made once per process.
pub(super) fn holder_exe() -> Result<&'static OwnedFd> {
    static EXE: OnceLock<std::result::Result<OwnedFd, (&'static str, Errno)>> = OnceLock::new();
    EXE.get_or_init(make_holder_memfd)
        .as_ref()
        .map_err(|(op, errno)| Error::sys(op, "holder program memfd", *errno))
}

fn make_holder_memfd() -> std::result::Result<OwnedFd, (&'static str, Errno)> {
    let image = holder_image();
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    // MFD_EXEC (Linux 6.3) keeps it executable where vm.memfd_noexec asks
    // for the opposite default; older kernels reject the flag, so retry without.
    let mut fd = unsafe { libc::memfd_create(c"podnet-pause".as_ptr(), flags | libc::MFD_EXEC) };
    if fd < 0 && Errno::last() == Errno::EINVAL {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(c"podnet-pause".as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(("memfd_create", Errno::last()));
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    use std::io::Write;
    (&file).write_all(&image).map_err(|e| {
        (
            "write holder program",
            Errno::from_raw(e.raw_os_error().unwrap_or(5)),
        )
    })?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) on an fd we own with a seal bitmask.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(("seal holder program", Errno::last()));
    }
    above_3(file.into()).map_err(|errno| ("fcntl(F_DUPFD_CLOEXEC) holder program", errno))
}

/// `fd`, or a copy numbered 4 or more if it is 0-3: the child puts
/// /dev/null on 0-2 (a creator may have started with stdio closed) and its
/// lifeline on 3.
pub(super) fn above_3(fd: OwnedFd) -> std::result::Result<OwnedFd, Errno> {
    if fd.as_raw_fd() > 3 {
        return Ok(fd);
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd we own; the new fd is ours.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4) };
    if copy < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fcntl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}
