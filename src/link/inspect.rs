//! Looking at one interface of the namespace a socket was opened in: its
//! index, MAC address and MTU, the addresses on it and the gateways of the
//! default routes out of it. For attachments, whose namespace podnet does
//! not hold and whose state it checks before it answers for it.

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use rtnetlink::LinkUnspec;

use super::*;
use crate::error::Result;

/// What the kernel says of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    pub index: u32,
    /// Its MAC address (all zeros if it has none).
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    /// The index of its bridge, if it is a bridge port.
    pub controller: Option<u32>,
    /// Every address on it, with its prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The gateways of the default routes (main table) out of it.
    pub default_gateways: Vec<IpAddr>,
}

/// Link `name` in `nl`'s namespace (one `RTM_GETLINK`), or `None` if
/// there is none of that name; `object` names it for errors.
pub(super) fn link_blocking(nl: &mut Nl, name: &str, object: &str) -> Result<Option<LinkMessage>> {
    let get = LinkUnspec::new_with_name(name).build();
    let answer = nl
        .batch(vec![(RouteNetlinkMessage::GetLink(get), 0)])
        .map_err(|e| io_nl_err("get link", object, e))?
        .pop()
        .unwrap_or(Err(Errno::EIO));
    match answer {
        Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })),
        Err(Errno::ENODEV | Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno_err("get link", object, errno)),
    }
}

/// The facts of interface `name`, or `None` if there is none of that
/// name; `object` names it for errors.
pub(crate) fn interface_blocking(nl: &mut Nl, name: &str, object: &str) -> Result<Option<Facts>> {
    let Some(link) = link_blocking(nl, name, object)? else {
        return Ok(None);
    };
    let index = link.header.index;
    let mut facts = Facts {
        index,
        mac: [0; 6],
        mtu: None,
        controller: None,
        addresses: Vec::new(),
        default_gateways: Vec::new(),
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => facts.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => facts.mtu = Some(*m),
            LinkAttribute::Controller(c) => facts.controller = Some(*c),
            _ => {}
        }
    }
    let addrs = nl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(|e| io_nl_err("list addresses of", object, e))?
        .map_err(|errno| errno_err("list addresses of", object, errno))?;
    for msg in addrs {
        let RouteNetlinkMessage::NewAddress(a) = msg else {
            continue;
        };
        if a.header.index != index {
            continue;
        }
        let ip = a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            facts.addresses.push((ip, a.header.prefix_len));
        }
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let routes = nl
            .dump(RouteNetlinkMessage::GetRoute(req))
            .map_err(|e| io_nl_err("list routes of", object, e))?
            .map_err(|errno| errno_err("list routes of", object, errno))?;
        for msg in routes {
            let RouteNetlinkMessage::NewRoute(r) = msg else {
                continue;
            };
            // The main table's default routes only (table 254).
            if r.header.destination_prefix_length != 0 || r.header.table != 254 {
                continue;
            }
            let out = r.attributes.contains(&RouteAttribute::Oif(index));
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
                _ => None,
            });
            if let (true, Some(gw)) = (out, gw) {
                facts.default_gateways.push(gw);
            }
        }
    }
    Ok(Some(facts))
}
