//! Small safe wrappers over the few system calls that nix does not wrap
//! and that modules other than the holder, netns and rootless need. Every
//! `unsafe` block outside those three modules lives here.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc;

/// Set a legacy ethtool value (`SIOCETHTOOL` with a `struct
/// ethtool_value { cmd, data }`) of interface `ifname`, through the socket
/// `fd`, in the socket's network namespace. EINVAL if the name does not
/// fit `IFNAMSIZ`.
pub(crate) fn ethtool_set_value(
    fd: BorrowedFd<'_>,
    ifname: &str,
    cmd: u32,
    data: u32,
) -> Result<(), Errno> {
    /// `struct ethtool_value`, include/uapi/linux/ethtool.h.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= ifr.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points
    // to, both alive for the call, through a socket fd we borrow.
    // JUSTIFICATION: nix 0.31 has no ethtool ioctl.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
    Errno::result(rc).map(drop)
}

/// Send `bufs[i]` to `to[i]` from the UDP socket `fd`, as many as one
/// `sendmmsg(2)` takes (at most 64): how many went. The first that did
/// not is `bufs[n]`, and its error comes from the next call; `Err` if not
/// even the first went. The socket's own flags say whether it blocks.
pub(crate) fn send_datagrams(
    fd: BorrowedFd<'_>,
    bufs: &[Vec<u8>],
    to: &[nix::sys::socket::SockaddrStorage],
) -> Result<usize, Errno> {
    use nix::sys::socket::SockaddrLike;
    const MAX: usize = 64;
    let n = bufs.len().min(to.len()).min(MAX);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX];
    // SAFETY: mmsghdr is plain data (pointers, lengths, flags); all zeroes
    // is a valid value: no name, no data, no control messages.
    let mut hdrs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for (i, (buf, addr)) in bufs.iter().zip(to).take(n).enumerate() {
        iov[i] = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_iov = &raw mut iov[i];
        h.msg_iovlen = 1;
        h.msg_name = addr.as_ptr().cast_mut().cast();
        h.msg_namelen = addr.len();
    }
    let count = libc::c_uint::try_from(n).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the first `n` headers point to `iov` entries, buffers and
    // addresses that all live until the call returns; sendmmsg reads
    // them and writes only the headers' msg_len, which we own.
    // JUSTIFICATION: nix 0.31's sendmmsg tells how many went only through
    // an iterator that reads its never-written address slots as
    // initialised (`MaybeUninit::assume_init`).
    let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), count, 0) };
    Errno::result(rc).map(|sent| usize::try_from(sent).unwrap_or(0))
}

/// Set `IPV6_TRANSPARENT` on the IPv6 socket `fd`: it may then bind an
/// address that is not local (ipv6(7)). Needs `CAP_NET_ADMIN` or
/// `CAP_NET_RAW` over the socket's network namespace.
pub(crate) fn set_ipv6_transparent(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let one: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: setsockopt reads `len` bytes of `one`, an int alive for the
    // call, through a socket fd we borrow.
    // JUSTIFICATION: nix 0.31 has IP_TRANSPARENT but not IPV6_TRANSPARENT.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&raw const one).cast(),
            len,
        )
    };
    Errno::result(rc).map(drop)
}

/// Register `fd` with the current tokio reactor for `interest`.
pub(crate) fn async_fd(
    fd: std::os::fd::OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd stays open and returns the same fd until the
    // AsyncFd (which owns it) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(Into::into)
}

/// Mount a copy of the file at `source` over `target` (`open_tree(2)` with
/// `OPEN_TREE_CLONE`, then `move_mount(2)`), in the calling thread's mount
/// namespace. Unlike a `MS_BIND` mount(2), a `target` that is a symlink is
/// covered itself, not followed: a dangling link is covered too, and a host
/// that replaces the link's target by a rename does not uncover it. The
/// source may be unlinked once this returns; the mount keeps the file.
pub(crate) fn mount_file_over(
    source: &std::path::Path,
    target: &std::path::Path,
) -> Result<(), Errno> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    /// include/uapi/linux/mount.h.
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let cstr =
        |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL);
    let (source, target) = (cstr(source)?, cstr(target)?);
    // SAFETY: open_tree(2) reads the NUL-terminated path, alive for the
    // call, and returns a new fd that nothing else owns.
    // JUSTIFICATION: nix 0.31 wraps neither open_tree nor move_mount.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let fd = Errno::result(fd)?;
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the fd was just returned to us and is owned here only.
    let tree = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: move_mount(2) borrows the tree fd and reads the two
    // NUL-terminated paths, all alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(rc).map(drop)
}

/// Make the child of `cmd` the leader of a session of its own (`setsid`
/// between fork and exec), so that it outlives its starter's session and
/// no terminal signal of that session reaches it.
#[cfg(feature = "cni")]
pub(crate) fn new_session_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the child calls only setsid(2), which
    // is async-signal-safe and touches no memory of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
}

/// Point fd 1 at `/dev/null`: a server that has said what it had to on
/// stdout lets go of the pipe its starter reads to the end.
#[cfg(feature = "cni")]
pub(crate) fn stdout_to_dev_null() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    #[test]
    fn a_file_mounted_over_a_symlink_covers_the_link_and_not_its_target() {
        std::thread::spawn(|| {
            if unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).is_err() {
                eprintln!("SKIPPED: cannot make a mount namespace here");
                return;
            }
            let flags = MsFlags::MS_REC | MsFlags::MS_SLAVE;
            mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).unwrap();
            let dir = std::env::temp_dir().join(format!("podnet-sys-{}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            let (source, link, target) = (dir.join("src"), dir.join("link"), dir.join("gone"));
            std::fs::write(&source, "mounted\n").unwrap();
            std::os::unix::fs::symlink(&target, &link).unwrap();
            let mounted = mount_file_over(&source, &link);
            std::fs::remove_file(&source).unwrap();
            let read = std::fs::read_to_string(&link);
            let target_made = target.exists();
            let _ = nix::mount::umount(&link);
            std::fs::remove_dir_all(&dir).unwrap();
            mounted.unwrap();
            assert_eq!(read.unwrap(), "mounted\n");
            assert!(!target_made, "the link's target was made");
        })
        .join()
        .unwrap();
    }
}
