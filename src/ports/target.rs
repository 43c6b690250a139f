//! The two ends a request's mappings connect: the network whose host
//! namespace publishes the ports ([`Host`]) and the sandbox they are
//! forwarded to ([`Target`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use super::mapping::PortForwarding;

/// Where a sandbox's mappings forward to, and how to know it has ended.
pub(crate) struct Target<'a> {
    /// The sandbox's name, for rule comments and errors.
    pub name: &'a str,
    /// The sandbox instance (its record id): mappings are kept by it.
    pub id: &'a str,
    /// The pools' gateways and prefixes (v4, v6): clients from them are
    /// masqueraded by the kernel path.
    pub subnets: [Option<(IpAddr, u8)>; 2],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub holder_pid: Pid,
    pub holder_pidfd: &'a OwnedFd,
}

impl Target<'_> {
    /// The sandbox address of the host address's family if it has one.
    pub(super) fn pod_ip(&self, host: IpAddr) -> IpAddr {
        match (host, self.ipv4, self.ipv6) {
            (IpAddr::V6(_), _, Some(a)) => IpAddr::V6(a),
            (_, Some(a), _) => IpAddr::V4(a),
            (_, None, Some(a)) => IpAddr::V6(a),
            (_, None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// The network whose host namespace publishes the ports: what the
/// forwarder is started with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Host<'a> {
    /// The host network namespace.
    pub netns: &'a OwnedFd,
    /// The network's bridge.
    pub bridge: &'a str,
    /// Kernel or userspace forwarding.
    pub forwarding: PortForwarding,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_address_follows_the_host_address_family() {
        let pidfd = crate::netns::thread_netns().unwrap();
        let t = Target {
            name: "x",
            id: "x",
            subnets: [None, None],
            ipv4: Some(Ipv4Addr::new(10, 88, 0, 2)),
            ipv6: Some("fd00:88::2".parse().unwrap()),
            holder_pid: Pid::this(),
            holder_pidfd: &pidfd,
        };
        assert_eq!(
            t.pod_ip("0.0.0.0".parse().unwrap()).to_string(),
            "10.88.0.2"
        );
        assert_eq!(t.pod_ip("::".parse().unwrap()).to_string(), "fd00:88::2");
        let v4only = Target { ipv6: None, ..t };
        assert_eq!(
            v4only.pod_ip("::".parse().unwrap()).to_string(),
            "10.88.0.2"
        );
    }
}
