//! Showing a pod its clients' own addresses through the userspace
//! forwarder: the forwarder's connection (or UDP flow) to the pod is
//! bound to the client's address with `IP_TRANSPARENT` and marked for the
//! routing of the replies (`crate::link::client`), for clients whose
//! address the pod can be shown ([`Shown::source`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::link::client::SOCKET_MARK;

/// That the pod is shown its clients' addresses where it can be, and the
/// network's pools (gateway, prefix), whose addresses are pods'.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shown {
    pub(super) pools: [Option<(IpAddr, u8)>; 2],
}

impl Shown {
    /// Where to connect to `to` from for `client`: its own address and
    /// port, if the pod can be shown it. Not for a loopback, unspecified,
    /// multicast or IPv6 link-local address (loopback sources cannot cross
    /// the veth, a link-local one means nothing past its link), nor one of
    /// another family than `to`'s, nor one of the network's pools (that is
    /// a pod's, which would answer it itself).
    pub(super) fn source(&self, client: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        let ip = client.ip().to_canonical();
        let link_local = matches!(ip, IpAddr::V6(a) if a.is_unicast_link_local());
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local {
            return None;
        }
        if ip.is_ipv4() != to.is_ipv4() {
            return None;
        }
        let in_pool = self
            .pools
            .iter()
            .flatten()
            .any(|(net, prefix)| same_prefix(ip, *net, *prefix));
        (!in_pool).then_some(SocketAddr::new(ip, client.port()))
    }
}

/// Whether `a` and `b` share their first `prefix` bits.
fn same_prefix(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            (u32::from(a) ^ u32::from(b)) & mask == 0
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            (u128::from(a) ^ u128::from(b)) & mask == 0
        }
        _ => false,
    }
}

/// Make `sock` able to bind a non-local address, and mark it.
fn transparent(sock: &impl AsFd, v6: bool) -> io::Result<()> {
    let err = |e: Errno| io::Error::from_raw_os_error(e as i32);
    if v6 {
        crate::sys::set_ipv6_transparent(sock.as_fd()).map_err(err)?;
    } else {
        setsockopt(sock, sockopt::IpTransparent, &true).map_err(err)?;
    }
    setsockopt(sock, sockopt::Mark, &SOCKET_MARK).map_err(err)
}

/// Bind `sock` to `src`, or to its address alone if the port is taken.
fn bind_from(src: SocketAddr, bind: impl Fn(SocketAddr) -> io::Result<()>) -> io::Result<()> {
    match bind(src) {
        Err(e) if e.raw_os_error() == Some(Errno::EADDRINUSE as i32) && src.port() != 0 => {
            bind(SocketAddr::new(src.ip(), 0))
        }
        other => other,
    }
}

/// A TCP connection to `to` from `src`. `Err(None)`: no socket could be
/// bound there (so connect from the forwarder's own address instead);
/// `Err(Some(e))`: the connection failed.
pub(super) async fn connect_from(
    src: SocketAddr,
    to: SocketAddr,
) -> Result<TcpStream, Option<io::Error>> {
    let mut from = src;
    loop {
        let sock = if from.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|_| None)?;
        transparent(&sock, from.is_ipv6()).map_err(|_| None)?;
        bind_from(from, |a| sock.bind(a)).map_err(|_| None)?;
        match sock.connect(to).await {
            // The client's port is in use with the pod's (another
            // mapping's connection from the same client port): any port.
            Err(e) if e.raw_os_error() == Some(Errno::EADDRNOTAVAIL as i32) && from.port() != 0 => {
                from = SocketAddr::new(from.ip(), 0);
            }
            got => return got.map_err(Some),
        }
    }
}

/// A UDP socket bound to `src` (its port, or another if that is taken),
/// for a flow to the pod.
pub(super) fn udp_from(src: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if src.is_ipv4() {
        nix::sys::socket::AddressFamily::Inet
    } else {
        nix::sys::socket::AddressFamily::Inet6
    };
    let fd = nix::sys::socket::socket(
        domain,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    transparent(&fd, src.is_ipv6())?;
    let sock = std::net::UdpSocket::from(fd);
    // std's UdpSocket cannot bind after it is made: bind through nix.
    bind_from(src, |a| {
        let r = match a {
            SocketAddr::V4(a) => nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &nix::sys::socket::SockaddrIn::from(a),
            ),
            SocketAddr::V6(a) => nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &nix::sys::socket::SockaddrIn6::from(a),
            ),
        };
        r.map_err(|e| io::Error::from_raw_os_error(e as i32))
    })?;
    UdpSocket::from_std(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_the_pod_can_be_shown_get_their_own_address() {
        let shown = Shown {
            pools: [
                Some(("10.88.0.1".parse().unwrap(), 16)),
                Some(("fd00:88::1".parse().unwrap(), 64)),
            ],
        };
        let v4: SocketAddr = "10.88.0.2:80".parse().unwrap();
        let v6: SocketAddr = "[fd00:88::2]:80".parse().unwrap();
        let from = |c: &str, to| shown.source(c.parse().unwrap(), to);
        assert_eq!(
            from("198.18.0.5:4000", v4),
            Some("198.18.0.5:4000".parse().unwrap())
        );
        assert_eq!(
            from("[::ffff:198.18.0.5]:4000", v4),
            Some("198.18.0.5:4000".parse().unwrap()),
            "an IPv4 client of a dual-stack port"
        );
        assert_eq!(
            from("[2001:db8::5]:1", v6),
            Some("[2001:db8::5]:1".parse().unwrap())
        );
        for (client, to) in [
            ("127.0.0.1:4000", v4),
            ("[::1]:4000", v6),
            ("[::ffff:127.0.0.1]:4000", v4),
            ("10.88.7.7:4000", v4),
            ("[fd00:88::9]:4000", v6),
            ("[fe80::1]:4000", v6),
            ("198.18.0.5:4000", v6),
            ("[2001:db8::5]:1", v4),
        ] {
            assert_eq!(from(client, to), None, "{client} to {to}");
        }
        assert_eq!(
            from("10.89.0.1:1", v4),
            Some("10.89.0.1:1".parse().unwrap())
        );
    }
}
