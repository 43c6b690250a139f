//! Port mappings made of kernel rules alone, with no socket and no
//! forwarder behind them: an attachment's (its process may exit at once).
//! Which mappings can be served so ([`check_rules_only`]), when two take
//! the same host port ([`overlaps`]), whether a host port is free in the
//! calling thread's namespace ([`probe_free`]), the DNAT rules of a
//! mapping ([`rule_dnats`]) and the record's form of a mapping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};

use super::mapping::{PortMapping, PortNetns, Protocol, DEFAULT_UDP_IDLE};
use crate::error::{Error, Result};
use crate::ipam::AttachedPort;
use crate::link::nft::{Dnat, TAG};

/// The most port mappings one attachment may have: its record, which
/// holds them, is at most 4 KiB (CNI's runtimes pass a handful).
pub(crate) const MOST_RULE_MAPPINGS: usize = 32;

/// Check that every one of `mappings` (of `what`, for errors) can be
/// served by kernel rules alone, and that no two take one host port.
/// Refused, as [`Error::InvalidConfig`]: what any mapping refuses (see
/// [`PortMapping`]), a host port 0 (an ephemeral port needs a socket to
/// hold it), the IPv6 loopback address (the kernel never routes `::1` to
/// another interface, whatever the sysctls; IPv4 loopback is served, see
/// [`needs_localnet`]), a real-host port (it opens outside
/// the network's host namespace, where the rules are), a UDP idle timeout
/// (conntrack's own applies), and more than [`MOST_RULE_MAPPINGS`].
pub(crate) fn check_rules_only(what: &str, mappings: &[PortMapping]) -> Result<()> {
    let refuse = |m: &PortMapping, why: &str| Error::InvalidConfig {
        reason: format!("port mapping {m} of {what}: {why}"),
    };
    if mappings.len() > MOST_RULE_MAPPINGS {
        return Err(Error::InvalidConfig {
            reason: format!(
                "{what} has {} port mappings, more than the {MOST_RULE_MAPPINGS} its record holds",
                mappings.len()
            ),
        });
    }
    for (i, m) in mappings.iter().enumerate() {
        m.pairs().map_err(|why| refuse(m, &why))?;
        if m.netns() == PortNetns::RealHost {
            return Err(refuse(
                m,
                "a real-host port cannot be mapped by kernel rules, which are in the \
                 network's host namespace",
            ));
        }
        if *m.host_ports().start() == 0 {
            return Err(refuse(
                m,
                "host port 0 (an ephemeral port) needs a socket to hold it, and an \
                 attachment's mappings are kernel rules only",
            ));
        }
        if m.host_address().is_loopback() && m.host_address().is_ipv6() {
            return Err(refuse(
                m,
                "the IPv6 loopback address cannot be reached through kernel DNAT rules: \
                 the kernel never routes ::1 to another interface (use 127.0.0.1, or \
                 :: for every address)",
            ));
        }
        if m.udp_idle() != DEFAULT_UDP_IDLE {
            return Err(refuse(
                m,
                "a UDP idle timeout applies to the userspace forwarder only (the \
                 kernel's conntrack times flows out)",
            ));
        }
        if let Some(other) = mappings[..i].iter().find(|o| overlaps(o, m)) {
            return Err(refuse(m, &format!("it takes a host port of {other} too")));
        }
    }
    Ok(())
}

/// Whether `m` is served at the host namespace's IPv4 loopback (host
/// address `0.0.0.0`, `::` or one of `127.0.0.0/8`), so that its IPv4
/// rules DNAT loopback destinations too: that needs `route_localnet` on
/// the network's bridge (`host::localnet`).
pub(crate) fn needs_localnet(m: &PortMapping) -> bool {
    match m.host_address() {
        IpAddr::V4(a) => a.is_unspecified() || a.is_loopback(),
        IpAddr::V6(a) => a.is_unspecified(),
    }
}

/// Whether `a` and `b` take a host port in common: the same protocol,
/// host port ranges that meet, and host addresses one of which covers the
/// other (`0.0.0.0` covers every IPv4 address, `::` every address).
pub(crate) fn overlaps(a: &PortMapping, b: &PortMapping) -> bool {
    let (ra, rb) = (a.host_ports(), b.host_ports());
    a.protocol() == b.protocol()
        && ra.start() <= rb.end()
        && rb.start() <= ra.end()
        && addresses_meet(a.host_address(), b.host_address())
}

fn addresses_meet(a: IpAddr, b: IpAddr) -> bool {
    let covers = |w: IpAddr, x: IpAddr| match w {
        IpAddr::V6(w) if w.is_unspecified() => true,
        IpAddr::V4(w) if w.is_unspecified() => {
            x.is_ipv4() || x == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        }
        w => w == x,
    };
    covers(a, b) || covers(b, a)
}

/// Check that every host port of `mappings` is free in the calling
/// thread's network namespace: a socket of the protocol binds it (and is
/// closed at once; a TCP one never listens). A listening socket there,
/// such as the one that holds a sandbox mapping's port, is
/// [`Error::PortInUse`] for `what`; a host address that is not one of the
/// namespace's is [`Error::InvalidConfig`]. Without `ipv6` (the network
/// has no IPv6 pool, so `::` gets IPv4 rules only) `::` is probed as
/// `0.0.0.0`, which needs no IPv6 in the namespace.
pub(crate) fn probe_free(what: &str, mappings: &[PortMapping], ipv6: bool) -> Result<()> {
    for m in mappings {
        let host = match m.host_address() {
            IpAddr::V6(a) if a.is_unspecified() && !ipv6 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            other => other,
        };
        for port in m.host_ports() {
            let addr = SocketAddr::new(host, port);
            probe_one(m.protocol(), addr).map_err(|errno| match errno {
                Errno::EADDRINUSE => Error::PortInUse {
                    sandbox: what.to_owned(),
                    protocol: m.protocol(),
                    address: addr,
                    netns: PortNetns::Network,
                    errno,
                },
                Errno::EADDRNOTAVAIL => Error::InvalidConfig {
                    reason: format!(
                        "port mapping {m} of {what}: {} is not an address of the \
                         network's host namespace",
                        m.host_address()
                    ),
                },
                errno => Error::sys(
                    "bind host port to see it is free",
                    format!("{} {addr} for {what}", m.protocol()),
                    errno,
                ),
            })?;
        }
    }
    Ok(())
}

/// Bind `addr` with a socket of `protocol`, then close it. TCP sets
/// SO_REUSEADDR, so a connection in TIME_WAIT is not a taker while a
/// listening socket still is; `::` is dual-stack (the namespace's
/// default), so it meets IPv4 takers too.
fn probe_one(protocol: Protocol, addr: SocketAddr) -> std::result::Result<(), Errno> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let kind = match protocol {
        Protocol::Tcp => SockType::Stream,
        Protocol::Udp => SockType::Datagram,
    };
    let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None)?;
    if protocol == Protocol::Tcp {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    // `fd` is open until the end of this function, after the call.
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
}

/// The DNAT rules of `mappings` of the attachment whose record is
/// `owner` (`<name>@<id>`), with addresses `ipv4` and `ipv6` in the pools
/// `subnets` (gateway and prefix, v4 and v6): for each pair of ports, one
/// set per family the host address covers and the attachment has an
/// address of, arriving traffic included (the rules outlive this moment,
/// and forwarding may be turned on later). Each carries the comment
/// `podnet <owner> <proto> <host addr:port> #<n>`, `n` its place in the
/// list, so the attachment's rules are found by their owner and each one
/// by its number. `bridge` is the network's bridge, the one that routes:
/// the IPv4 rules of a mapping that [`needs_localnet`] serve loopback
/// clients by it.
pub(crate) fn rule_dnats(
    owner: &str,
    mappings: &[PortMapping],
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    subnets: [Option<(IpAddr, u8)>; 2],
    bridge: &str,
) -> Vec<Dnat> {
    let mut out = Vec::new();
    for m in mappings {
        let l4 = match m.protocol() {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        };
        let host = m.host_address();
        let v4 = match host {
            IpAddr::V4(a) => Some(IpAddr::V4(a)),
            IpAddr::V6(a) if a.is_unspecified() => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            IpAddr::V6(_) => None,
        };
        let v6 = host.is_ipv6().then_some(host);
        let pairs = m.pairs().unwrap_or_default();
        for (host_port, pod_port) in pairs {
            for (host, pod, subnet) in [
                (v4, ipv4.map(IpAddr::V4), subnets[0]),
                (v6, ipv6.map(IpAddr::V6), subnets[1]),
            ] {
                let (Some(h), Some(pod), Some(subnet)) = (host, pod, subnet) else {
                    continue;
                };
                let n = out.len();
                out.push(Dnat {
                    l4,
                    host: h,
                    host_port,
                    pod,
                    pod_port,
                    subnet,
                    comment: format!(
                        "{TAG}{owner} {} {} #{n}",
                        m.protocol(),
                        SocketAddr::new(m.host_address(), host_port)
                    ),
                    arriving: true,
                    localnet: (h.is_ipv4() && needs_localnet(m)).then(|| bridge.to_owned()),
                });
            }
        }
    }
    out
}

/// The owner (`<name>@<id>`) a rule comment names, if it is a podnet
/// port rule's.
pub(crate) fn rule_owner(comment: &str) -> Option<&str> {
    super::kernel::parse_comment(comment).map(|c| c.owner)
}

/// A mapping as an attachment's record keeps it.
pub(crate) fn to_record(m: &PortMapping) -> AttachedPort {
    AttachedPort {
        udp: m.protocol() == Protocol::Udp,
        host: m.host_address(),
        host_ports: m.host_ports(),
        pod_ports: m.pod_ports(),
    }
}

/// A mapping from an attachment's record.
pub(crate) fn from_record(p: &AttachedPort) -> PortMapping {
    let protocol = if p.udp { Protocol::Udp } else { Protocol::Tcp };
    PortMapping::range(protocol, p.host_ports.clone(), p.pod_ports.clone()).host_ip(p.host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(m: PortMapping) -> String {
        match check_rules_only("attachment a/eth0", &[m]) {
            Err(Error::InvalidConfig { reason }) => reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn what_rules_alone_cannot_serve_is_refused_with_the_reason() {
        assert!(refused(PortMapping::tcp(8080, 80).real_host()).contains("real-host"));
        assert!(refused(PortMapping::tcp(0, 80)).contains("host port 0"));
        let lo6 = PortMapping::tcp(8080, 80).host_ip("::1".parse().unwrap());
        assert!(refused(lo6).contains("never routes ::1"));
        let lo = PortMapping::tcp(8080, 80).host_ip("127.0.0.1".parse().unwrap());
        assert!(check_rules_only("x", &[lo]).is_ok());
        let idle = PortMapping::udp(53, 53).udp_idle_timeout(std::time::Duration::from_secs(5));
        assert!(refused(idle).contains("idle"));
        assert!(refused(PortMapping::tcp(8080, 0)).contains("pod port 0"));
        let many: Vec<PortMapping> = (1..=33).map(|p| PortMapping::tcp(p, p)).collect();
        assert!(check_rules_only("x", &many).is_err());
        let twice = [
            PortMapping::range(Protocol::Tcp, 9000..=9009, 9000..=9009),
            PortMapping::tcp(9005, 80).host_ip("10.0.0.1".parse().unwrap()),
        ];
        assert!(check_rules_only("x", &twice).is_err());
        assert!(check_rules_only("x", &[PortMapping::tcp(8080, 80)]).is_ok());
    }

    #[test]
    fn mappings_overlap_on_protocol_ports_and_covering_addresses() {
        let at = |ip: &str, p: u16| PortMapping::tcp(p, 80).host_ip(ip.parse().unwrap());
        assert!(overlaps(&at("0.0.0.0", 80), &at("10.0.0.1", 80)));
        assert!(overlaps(&at("::", 80), &at("10.0.0.1", 80)));
        assert!(overlaps(&at("::", 80), &at("fd00::1", 80)));
        assert!(overlaps(&at("0.0.0.0", 80), &at("::", 80)));
        assert!(!overlaps(&at("0.0.0.0", 80), &at("fd00::1", 80)));
        assert!(!overlaps(&at("10.0.0.1", 80), &at("10.0.0.2", 80)));
        assert!(!overlaps(&at("0.0.0.0", 80), &at("0.0.0.0", 81)));
        assert!(!overlaps(
            &PortMapping::tcp(80, 80),
            &PortMapping::udp(80, 80)
        ));
        let range = PortMapping::range(Protocol::Tcp, 9000..=9009, 9000..=9009);
        assert!(overlaps(&range, &at("0.0.0.0", 9009)));
        assert!(!overlaps(&range, &at("0.0.0.0", 9010)));
    }

    #[test]
    fn rules_are_made_per_port_and_family_and_name_their_owner() {
        let subnets = [
            Some(("10.88.0.1".parse().unwrap(), 16)),
            Some(("fd00:88::1".parse().unwrap(), 64)),
        ];
        let v4 = Some(Ipv4Addr::new(10, 88, 0, 2));
        let v6 = Some("fd00:88::2".parse().unwrap());
        let both = [PortMapping::tcp(8080, 80).host_ip("::".parse().unwrap())];
        let d = rule_dnats("c1@1-2", &both, v4, v6, subnets, "pn0");
        assert_eq!(d.len(), 2);
        // Loopback is served over IPv4 only, by the attachment's bridge.
        assert_eq!(
            (d[0].localnet.as_deref(), d[1].localnet.as_deref()),
            (Some("pn0"), None)
        );
        assert_eq!(d[0].comment, "podnet c1@1-2 tcp [::]:8080 #0");
        assert_eq!(d[1].comment, "podnet c1@1-2 tcp [::]:8080 #1");
        assert!(d.iter().all(|d| rule_owner(&d.comment) == Some("c1@1-2")));
        // Only IPv4 for 0.0.0.0, and none for a family without an address.
        let range = [PortMapping::range(Protocol::Udp, 9000..=9002, 7000..=7002)];
        assert_eq!(
            rule_dnats("c1@1-2", &range, v4, None, subnets, "pn0").len(),
            3
        );
        let six = [PortMapping::tcp(80, 80).host_ip("fd00::9".parse().unwrap())];
        assert!(rule_dnats("c1@1-2", &six, v4, None, subnets, "pn0").is_empty());
        let elsewhere = [PortMapping::tcp(80, 80).host_ip("10.0.0.9".parse().unwrap())];
        let d = rule_dnats("c1@1-2", &elsewhere, v4, None, subnets, "pn0");
        assert_eq!(d[0].localnet, None);
        let back = from_record(&to_record(&range[0]));
        assert_eq!(back, range[0]);
    }
}
