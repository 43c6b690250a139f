//! Attachments: a network namespace that another program made and holds
//! (a container runtime's pause container, named by a path such as
//! `/run/netns/<id>` or `/proc/<pid>/ns/net`), wired to the network as a
//! sandbox is, but without a podnet holder. An attachment is keyed by
//! (container ID, interface name), as CNI keys them, and lives until it is
//! detached, or until gc finds its namespace gone: its record names the
//! namespace by path and nsfs inode, and its host veth exists as long as
//! the namespace does.

mod end;
mod look;
mod make;

pub(crate) use end::{detach, retain};
pub(crate) use look::{check, list};

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::host::NetInner;
use crate::ipam::{Attached, Record};
use crate::names::fnv1a;
use crate::ports::{self, PortMapping};

/// Configuration of one attachment; made by
/// [`Network::attach`](crate::Network::attach), carried out by
/// [`attach`](AttachBuilder::attach).
#[derive(Debug)]
#[must_use = "an AttachBuilder does nothing until .attach() is awaited"]
pub struct AttachBuilder {
    net: Arc<NetInner>,
    container_id: String,
    ifname: String,
    netns: PathBuf,
    ips: Vec<IpAddr>,
    mac: Option<[u8; 6]>,
    mtu: Option<u32>,
    default_routes: bool,
    hairpin: bool,
    probe_host_ports: bool,
    aliases: Vec<String>,
    ports: Vec<PortMapping>,
}

impl AttachBuilder {
    pub(crate) fn new(
        net: Arc<NetInner>,
        container_id: String,
        ifname: String,
        netns: PathBuf,
    ) -> AttachBuilder {
        AttachBuilder {
            net,
            container_id,
            ifname,
            netns,
            ips: Vec::new(),
            mac: None,
            mtu: None,
            default_routes: true,
            hairpin: false,
            probe_host_ports: true,
            aliases: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// Whether `attach()` refuses a mapped host port that a socket of the
    /// host namespace holds (the default: a sandbox mapping of this
    /// network holds one, in any process). A runtime that reserves its
    /// containers' host ports itself (rootful podman binds them and keeps
    /// them open) turns this off; conflicts between attachments are found
    /// from the store either way.
    pub fn probe_host_ports(mut self, yes: bool) -> Self {
        self.probe_host_ports = yes;
        self
    }

    /// Put the host end's bridge port in hairpin mode, so that a frame can
    /// go back out of the port it came in by (a container reaching itself
    /// at a host port mapped to its own address; CNI's `hairpinMode`).
    pub fn hairpin(mut self, yes: bool) -> Self {
        self.hairpin = yes;
        self
    }

    /// Ask for this address instead of the pool's next free one (one per
    /// family). It must be in the network's pool and free.
    pub fn ip(mut self, addr: IpAddr) -> Self {
        self.ips.push(addr);
        self
    }

    /// The MAC address of the interface inside (a unicast one); else the
    /// kernel picks a random one.
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }

    /// The MTU of the veth pair; else the network's.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Whether the namespace gets default routes via the network's
    /// gateways (the default, as a sandbox does), or only the route to the
    /// pool that its address brings (CNI's `isDefaultGateway: false`).
    pub fn default_routes(mut self, yes: bool) -> Self {
        self.default_routes = yes;
        self
    }

    /// An extra DNS name of the attachment (a DNS-1123 label).
    pub fn alias(mut self, name: impl Into<String>) -> Self {
        self.aliases.push(name.into());
        self
    }

    /// Map a host port (or range) of the network's host namespace to a
    /// port of the attachment (CNI's `portMappings`), by kernel DNAT rules
    /// alone, which outlive the process that attached: they are in the
    /// network's table of attachments' mappings, `inet
    /// podnet-<bridge>-aports`, until [`Network::detach`](crate::Network::detach),
    /// [`Network::retain_attachments`](crate::Network::retain_attachments)
    /// or [`Network::gc`](crate::Network::gc) ends the attachment.
    ///
    /// Connections from other hosts, from the network's pods and from the
    /// host namespace itself to one of its addresses are forwarded, over
    /// IPv4 for a host address of `0.0.0.0` and over both families for
    /// `::` (each where the attachment has an address of the family). The
    /// host namespace reaches `0.0.0.0`, `::` and `127.0.0.0/8` mappings at
    /// `127.0.0.1` too: for that, podnet turns on
    /// `net.ipv4.conf.<bridge>.route_localnet` on the attachment's bridge
    /// while it needs it (and back off after, if podnet turned it on).
    /// There is no socket behind the rules, so
    /// [`attach`](AttachBuilder::attach) refuses, as
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig), what only a
    /// socket serves: host port 0, the host address `::1` (the kernel
    /// never routes IPv6 loopback to another interface), a
    /// [`real_host`](PortMapping::real_host) port, a UDP idle timeout; and
    /// more than 32 mappings. See `docs/port-forwarding.md`.
    pub fn port(mut self, mapping: PortMapping) -> Self {
        self.ports.push(mapping);
        self
    }
}

/// An attachment, as made or as its record and its namespace show it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attachment {
    /// The runtime's container ID.
    pub container_id: String,
    /// The interface inside the namespace.
    pub ifname: String,
    /// The namespace, as the runtime named it.
    pub netns: PathBuf,
    /// The host end of the veth pair (a port of one of the network's
    /// bridges).
    pub host_interface: String,
    /// The MAC address of the host end, if it was looked at.
    pub host_mac: Option<[u8; 6]>,
    /// The MAC address of the interface inside, if it was looked at.
    pub mac: Option<[u8; 6]>,
    /// Its addresses with the pool's prefix length, IPv4 first.
    pub addresses: Vec<IpNetwork>,
    /// The network's gateways for them, in the same order.
    pub gateways: Vec<IpAddr>,
    /// Whether the namespace has default routes via the gateways.
    pub default_routes: bool,
    /// Its extra DNS names.
    pub aliases: Vec<String>,
    /// Its port mappings, as asked for (see [`AttachBuilder::port`]).
    pub ports: Vec<PortMapping>,
}

impl Attachment {
    /// What the record says of it (no MAC addresses: those are looked at).
    fn from_record(net: &NetInner, rec: &Record, a: &Attached) -> Attachment {
        let mut addresses = Vec::new();
        let mut gateways = Vec::new();
        let ips = [rec.ipv4.map(IpAddr::V4), rec.ipv6.map(IpAddr::V6)];
        for (pool, ip) in [&net.v4, &net.v6].into_iter().zip(ips) {
            if let (Some(pool), Some(ip)) = (pool, ip) {
                if let Ok(n) = IpNetwork::new(ip, pool.prefix()) {
                    addresses.push(n);
                    gateways.push(pool.gateway());
                }
            }
        }
        Attachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            netns: a.netns.clone(),
            host_interface: rec.veth.clone(),
            host_mac: None,
            mac: None,
            addresses,
            gateways,
            default_routes: a.default_routes,
            aliases: rec.aliases.clone(),
            ports: a.ports.iter().map(ports::from_record).collect(),
        }
    }
}

/// The store's name of the attachment keyed (`container_id`, `ifname`): a
/// sandbox name (`c` and 11 hex digits of their hash), so that its veth is
/// `<name>-<tag>` like a sandbox's. Two keys of one name are told apart by
/// the key the record keeps.
pub(crate) fn record_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(format!("{container_id}/{ifname}").as_bytes());
    format!("c{:011x}", h >> 20)
}

/// The key of an attachment, for errors: `<container ID>/<ifname>`.
fn key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_name_is_a_sandbox_name_and_depends_on_both_halves_of_the_key() {
        let a = record_name("0123abcd", "eth0");
        assert!(crate::names::validate_name(&a).is_ok(), "{a}");
        assert_eq!(a, record_name("0123abcd", "eth0"));
        assert_ne!(a, record_name("0123abcd", "eth1"));
        assert_ne!(a, record_name("0123abce", "eth0"));
    }
}
