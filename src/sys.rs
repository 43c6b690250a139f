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

/// Register `fd` with the current tokio reactor for `interest`.
pub(crate) fn async_fd(
    fd: std::os::fd::OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd stays open and returns the same fd until the
    // AsyncFd (which owns it) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(Into::into)
}
