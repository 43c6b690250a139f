//! What a port mapping is, as callers declare it ([`PortMapping`],
//! [`Protocol`], [`PortNetns`], [`PortForwarding`]) and as it is published
//! ([`PublishedPort`], [`Forwarder`]), and the check of a request's
//! mappings into the host ports to bind ([`plan`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default idle timeout of a UDP flow: the kernel's own for unreplied UDP
/// conntrack entries (`nf_conntrack_udp_timeout`, 30 s).
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(30);

/// Longest UDP idle timeout accepted (a day).
const MAX_UDP_IDLE: Duration = Duration::from_secs(24 * 3600);

pub use crate::policy::Protocol;

/// Which network namespace a mapping's host port opens in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PortNetns {
    /// The network's host namespace, the one it was built in (the
    /// default): the machine's own as root, the rootless host namespace
    /// after [`rootless::enter`](crate::rootless::enter).
    #[default]
    Network,
    /// The real host: the network namespace this process was in before
    /// [`rootless::enter`](crate::rootless::enter) or
    /// [`enter_private`](crate::rootless::enter_private) (the machine's
    /// own for a program a user started), as `podman run -p` publishes
    /// rootless. The port is bound there by `podnet-outer`, with the
    /// credentials the process had there, and served by the userspace
    /// forwarder. Asked for by [`PortMapping::real_host`].
    RealHost,
}

impl fmt::Display for PortNetns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortNetns::Network => "network host",
            PortNetns::RealHost => "real host",
        })
    }
}

/// A port mapping to declare: host address and port(s) of the network's
/// host namespace (or of the real host: [`real_host`](PortMapping::real_host)),
/// forwarded to port(s) of a sandbox. Used with
/// [`SandboxBuilder::port`](crate::SandboxBuilder::port) and
/// [`Sandbox::add_port`](crate::Sandbox::add_port).
///
/// The host address defaults to `0.0.0.0` (every IPv4 address of the host
/// namespace, as Kubernetes' `hostIP`); `::` means every IPv4 and IPv6
/// address. Host port 0 asks for an ephemeral port, reported back as a
/// [`PublishedPort`].
///
/// ```
/// use podnet::{PortMapping, Protocol};
/// let web = PortMapping::tcp(8080, 80);                   // -p 8080:80
/// let dns = PortMapping::udp(0, 53);                      // an ephemeral host port
/// let range = PortMapping::range(Protocol::Tcp, 9000..=9002, 7000..=7002);
/// let local = PortMapping::tcp(8443, 443).host_ip("127.0.0.1".parse().unwrap());
/// let rootless = PortMapping::tcp(8080, 80).real_host();  // podman -p, rootless
/// assert_eq!(range.host_ports(), 9000..=9002);
/// # let _ = (web, dns, local, rootless);
/// ```
///
/// Nothing is checked until the mapping is used: then a pod port 0, a range
/// whose start is above its end, host and pod ranges of different lengths,
/// or a zero idle timeout are [`Error::InvalidConfig`], and nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMapping {
    protocol: Protocol,
    host_ip: IpAddr,
    host_ports: RangeInclusive<u16>,
    pod_ports: RangeInclusive<u16>,
    udp_idle: Duration,
    netns: PortNetns,
}

impl PortMapping {
    /// Forward `host_port` (0: an ephemeral one) to `pod_port`.
    pub fn new(protocol: Protocol, host_port: u16, pod_port: u16) -> PortMapping {
        PortMapping::range(protocol, host_port..=host_port, pod_port..=pod_port)
    }

    /// Forward TCP `host_port` (0: an ephemeral one) to `pod_port`.
    pub fn tcp(host_port: u16, pod_port: u16) -> PortMapping {
        PortMapping::new(Protocol::Tcp, host_port, pod_port)
    }

    /// Forward UDP `host_port` (0: an ephemeral one) to `pod_port`.
    pub fn udp(host_port: u16, pod_port: u16) -> PortMapping {
        PortMapping::new(Protocol::Udp, host_port, pod_port)
    }

    /// Forward each port of `host` to the port of `pod` at the same offset;
    /// both ranges have the same length. `host` may be `0..=0`: each pod
    /// port then gets an ephemeral host port of its own (not contiguous).
    pub fn range(
        protocol: Protocol,
        host: RangeInclusive<u16>,
        pod: RangeInclusive<u16>,
    ) -> PortMapping {
        PortMapping {
            protocol,
            host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host_ports: host,
            pod_ports: pod,
            udp_idle: DEFAULT_UDP_IDLE,
            netns: PortNetns::Network,
        }
    }

    /// Listen on this host address only (default `0.0.0.0`). It must be an
    /// address of the namespace the port opens in (see
    /// [`real_host`](PortMapping::real_host)).
    pub fn host_ip(mut self, ip: IpAddr) -> PortMapping {
        self.host_ip = ip;
        self
    }

    /// Open the host port on the real host ([`PortNetns::RealHost`]): in
    /// the network namespace this process was in before
    /// [`rootless::enter`](crate::rootless::enter) or
    /// [`enter_private`](crate::rootless::enter_private), so that `-p
    /// 8080:80` of a rootless program answers on the user's own
    /// `localhost:8080`, as rootless podman's does. The host address is
    /// one of the real host's (`0.0.0.0`, `::`, `127.0.0.1`, ...).
    ///
    /// The userspace forwarder serves it (the kernel's rules live in the
    /// network's host namespace, which these connections never enter). The
    /// pod sees a client from a non-loopback address with its own address
    /// and port where the network has the kernel path
    /// ([`PublishedPort::client_addresses`]), and a loopback client, or any
    /// client without it, coming from the network's gateway address (see
    /// `docs/port-forwarding.md`). A port below the real host's
    /// `net.ipv4.ip_unprivileged_port_start` (1024 by default) needs
    /// `CAP_NET_BIND_SERVICE` there, which an unprivileged user lacks:
    /// [`Error::PrivilegedPort`].
    ///
    /// In a process that entered no rootless namespaces, the network's
    /// host namespace is as far out as it reaches, and the mapping is an
    /// ordinary one there ([`PublishedPort::netns`] says
    /// [`PortNetns::Network`]).
    pub fn real_host(mut self) -> PortMapping {
        self.netns = PortNetns::RealHost;
        self
    }

    /// How long a UDP flow (one client) lives without a datagram in either
    /// direction (default [`DEFAULT_UDP_IDLE`]). Ignored for TCP.
    pub fn udp_idle_timeout(mut self, idle: Duration) -> PortMapping {
        self.udp_idle = idle;
        self
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The host address listened on.
    pub fn host_address(&self) -> IpAddr {
        self.host_ip
    }

    /// The host ports (`0..=0`: ephemeral).
    pub fn host_ports(&self) -> RangeInclusive<u16> {
        self.host_ports.clone()
    }

    /// The sandbox's ports.
    pub fn pod_ports(&self) -> RangeInclusive<u16> {
        self.pod_ports.clone()
    }

    /// The idle timeout of a UDP flow.
    pub fn udp_idle(&self) -> Duration {
        self.udp_idle
    }

    /// The namespace the host port is asked for in.
    pub fn netns(&self) -> PortNetns {
        self.netns
    }

    /// Each (host port, pod port) pair, or why the mapping is refused.
    pub(super) fn pairs(&self) -> std::result::Result<Vec<(u16, u16)>, String> {
        let (h0, h1) = (*self.host_ports.start(), *self.host_ports.end());
        let (p0, p1) = (*self.pod_ports.start(), *self.pod_ports.end());
        if p0 > p1 {
            return Err(format!("pod port range {p0}-{p1} is inverted"));
        }
        if h0 > h1 {
            return Err(format!("host port range {h0}-{h1} is inverted"));
        }
        if p0 == 0 {
            return Err("pod port 0 is not a port".into());
        }
        if self.protocol == Protocol::Udp && self.udp_idle.is_zero() {
            return Err("a UDP idle timeout of 0 would end every flow at once".into());
        }
        if self.udp_idle > MAX_UDP_IDLE {
            return Err(format!(
                "a UDP idle timeout of {:?} is more than the most, {MAX_UDP_IDLE:?}",
                self.udp_idle
            ));
        }
        if (h0, h1) == (0, 0) {
            return Ok((p0..=p1).map(|p| (0, p)).collect());
        }
        if h0 == 0 {
            return Err(format!(
                "host port range {h0}-{h1} includes 0 (ask for ephemeral ports with 0 alone)"
            ));
        }
        if h1 - h0 != p1 - p0 {
            return Err(format!(
                "host ports {h0}-{h1} and pod ports {p0}-{p1} differ in length"
            ));
        }
        Ok((h0..=h1).zip(p0..=p1).collect())
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |r: &RangeInclusive<u16>| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        };
        write!(
            f,
            "{} {}:{} -> {}",
            self.protocol,
            self.host_ip,
            range(&self.host_ports),
            range(&self.pod_ports)
        )?;
        if self.netns == PortNetns::RealHost {
            f.write_str(" (real host)")?;
        }
        Ok(())
    }
}

/// How a network forwards its published ports; set with
/// [`NetworkBuilder::port_forwarding`](crate::NetworkBuilder::port_forwarding).
///
/// The kernel's rules live in an nf_tables table owned by this process
/// (one per network), which the kernel deletes with every rule in it when
/// the process exits, however it exits; see the README ("Kernel or
/// userspace forwarding") for what they ask of the host's firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PortForwarding {
    /// The kernel where nf_tables is there and allowed in the host
    /// namespace (Linux 5.12 or later, for table owners), the userspace
    /// forwarder otherwise (the default). The table is tried once per
    /// network, at its first mapping; a kernel that refuses the rules of a
    /// later request leaves that request's ports to the forwarder. Silent,
    /// but [`PublishedPort::forwarder`] says which serves each port.
    #[default]
    Auto,
    /// The kernel (nf_tables DNAT) only: a mapping fails if nf_tables
    /// refuses the table or the rules.
    Kernel,
    /// The userspace forwarder only: nothing is asked of the host's
    /// firewall, and the host namespace's connection tracking is left as
    /// it is.
    Userspace,
}

/// What forwards a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Forwarder {
    /// nf_tables DNAT rules of the network's table; destinations on
    /// loopback, and clients of a family the sandbox has no address of, are
    /// still served by the userspace forwarder's socket.
    Kernel,
    /// podnet's userspace forwarder (a tokio task per port). Always for a
    /// port on the real host ([`PortNetns::RealHost`]): its connections
    /// arrive in the real host's namespace, where the network's rules are
    /// not (they are in its host namespace), so the kernel cannot DNAT
    /// them to the pod; the forwarder accepts them there and connects to
    /// the pod from the host namespace.
    Userspace,
}

impl fmt::Display for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarder::Kernel => "kernel",
            Forwarder::Userspace => "userspace",
        })
    }
}

/// One forwarded port, as it is published: the host socket address (with
/// the port the kernel chose, if 0 was asked for) and the namespace it is
/// in, the sandbox's port, and what forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PublishedPort {
    /// The protocol.
    pub protocol: Protocol,
    /// The address and port listened on, in the namespace `netns` says.
    pub host: SocketAddr,
    /// The namespace the port is open in: the network's host namespace, or
    /// the real host.
    pub netns: PortNetns,
    /// The port of the sandbox it is forwarded to.
    pub pod_port: u16,
    /// The kernel or the userspace forwarder (always the userspace one on
    /// the real host).
    pub forwarder: Forwarder,
    /// Whether the pod sees this port's clients with their own addresses
    /// (a real-host port, where the forwarder can bind its connections to
    /// them: see [`PortMapping::real_host`]). Loopback clients, and
    /// clients of an address of the network's pools, are seen from the
    /// gateway's address all the same. Through the kernel, clients from
    /// other hosts keep their addresses without this.
    pub client_addresses: bool,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.host, self.pod_port)?;
        if self.netns == PortNetns::RealHost {
            f.write_str(" (real host)")?;
        }
        Ok(())
    }
}

/// One host port to bind, as [`plan`] makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Planned {
    pub(super) protocol: Protocol,
    pub(super) host: SocketAddr,
    pub(super) netns: PortNetns,
    pub(super) pod_port: u16,
    pub(super) udp_idle: Duration,
}

/// Every host port of `mappings` to bind, checked.
pub(super) fn plan(sandbox: &str, mappings: &[PortMapping]) -> Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for m in mappings {
        let pairs = m.pairs().map_err(|why| Error::InvalidConfig {
            reason: format!("port mapping {m} of sandbox {sandbox:?}: {why}"),
        })?;
        // Where the port really opens: without rootless namespaces the
        // real host is the network's host namespace.
        let netns = match m.netns {
            PortNetns::RealHost if !crate::rootless::has_outside() => PortNetns::Network,
            other => other,
        };
        for (h, p) in pairs {
            let host = SocketAddr::new(m.host_ip, h);
            if h != 0
                && plan
                    .iter()
                    .any(|p: &Planned| (p.protocol, p.host, p.netns) == (m.protocol, host, netns))
            {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "port mapping {m} of sandbox {sandbox:?}: {} {host} is asked for twice",
                        m.protocol
                    ),
                });
            }
            plan.push(Planned {
                protocol: m.protocol,
                host,
                netns,
                pod_port: p,
                udp_idle: m.udp_idle,
            });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(m: PortMapping) -> String {
        match plan("web", &[m]) {
            Err(Error::InvalidConfig { reason }) => reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // inverted ranges are the point
    fn bad_mappings_are_refused_with_the_reason() {
        assert!(refused(PortMapping::tcp(8080, 0)).contains("pod port 0"));
        let inverted = PortMapping::range(Protocol::Tcp, 9002..=9000, 80..=82);
        assert!(refused(inverted).contains("inverted"));
        let inverted_pod = PortMapping::range(Protocol::Udp, 9000..=9002, 82..=80);
        assert!(refused(inverted_pod).contains("inverted"));
        let uneven = PortMapping::range(Protocol::Tcp, 9000..=9002, 80..=81);
        assert!(refused(uneven).contains("differ in length"));
        let zero_start = PortMapping::range(Protocol::Tcp, 0..=2, 80..=82);
        assert!(refused(zero_start).contains("includes 0"));
        let idle = PortMapping::udp(53, 53).udp_idle_timeout(Duration::ZERO);
        assert!(refused(idle).contains("idle"));
        let text = refused(PortMapping::tcp(1, 0));
        assert!(text.contains("\"web\"") && text.contains("tcp 0.0.0.0:1 -> 0"));
        let text = refused(PortMapping::tcp(1, 0).real_host());
        assert!(text.contains("tcp 0.0.0.0:1 -> 0 (real host)"), "{text}");
    }

    #[test]
    fn a_port_asked_for_twice_is_refused_but_protocols_and_ephemeral_ports_may_repeat() {
        let twice = [PortMapping::tcp(8080, 80), PortMapping::tcp(8080, 81)];
        assert!(matches!(
            plan("web", &twice),
            Err(Error::InvalidConfig { .. })
        ));
        let fine = [
            PortMapping::tcp(8080, 80),
            PortMapping::udp(8080, 80),
            PortMapping::tcp(0, 81),
            PortMapping::tcp(0, 82),
        ];
        assert_eq!(plan("web", &fine).unwrap().len(), 4);
        // This process entered no rootless namespaces: its real host is the
        // network's host namespace, so these are one port twice.
        let same_namespace = [
            PortMapping::tcp(8080, 80),
            PortMapping::tcp(8080, 83).real_host(),
        ];
        assert!(matches!(
            plan("web", &same_namespace),
            Err(Error::InvalidConfig { .. })
        ));
        let twice_outside = [
            PortMapping::tcp(8080, 80).real_host(),
            PortMapping::tcp(8080, 81).real_host(),
        ];
        assert!(matches!(
            plan("web", &twice_outside),
            Err(Error::InvalidConfig { .. })
        ));
    }

    #[test]
    fn ranges_pair_ports_in_order_and_ephemeral_ranges_get_one_each() {
        let r = PortMapping::range(Protocol::Tcp, 9000..=9002, 80..=82);
        assert_eq!(r.pairs().unwrap(), [(9000, 80), (9001, 81), (9002, 82)]);
        let e = PortMapping::range(Protocol::Udp, 0..=0, 53..=54);
        assert_eq!(e.pairs().unwrap(), [(0, 53), (0, 54)]);
        assert_eq!(
            PortMapping::range(Protocol::Tcp, 65535..=65535, 1..=1)
                .pairs()
                .unwrap(),
            [(65535, 1)]
        );
    }
}
