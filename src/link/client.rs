//! The routing that lets the userspace forwarder show a pod its clients'
//! own addresses: the forwarder connects to the pod from a socket bound
//! to the client's address (`IP_TRANSPARENT`), marked [`SOCKET_MARK`];
//! nf_tables rules (`nft::Nft::add_client_rules`) give the pod's replies
//! to such connections [`ROUTE_MARK`]; and here, one policy rule per
//! family sends packets with that mark to a table whose one route makes
//! every address local, so the replies reach the forwarder's socket
//! instead of being routed on towards the client's address.
//!
//! A third rule, IPv4 only and one priority earlier, sends the same
//! packets' reverse-path lookups (`iif lo`) to `main`: with
//! `src_valid_mark` on (a new namespace copies it from the initial one,
//! where WireGuard's `wg-quick` sets it), the kernel checks a packet's
//! source with its mark, and the local table would make the pod's address
//! local: a martian source, dropped (`in_martian_src` in
//! `/proc/net/stat/rt_cache` counts them). Forwarded packets from the
//! pods come in on their bridge, never `lo`, so the rule sees only those
//! lookups; IPv6 checks no source on input.
//!
//! The rules and routes are the namespace's, not this process's: they
//! stay until the namespace goes (with `enter_private()`'s, or with the
//! shared host's `teardown()`). They touch only packets with
//! [`ROUTE_MARK`], which only the rules of a podnet table set.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::route::{RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::RouteMessageBuilder;

use super::{errno_err, io_nl_err, Nl, LO_INDEX};
use crate::error::Result;

/// The mark of the forwarder's sockets bound to a client's address
/// (`SO_MARK`), kept in their connections' conntrack entries ("pnc1").
pub(crate) const SOCKET_MARK: u32 = 0x706e_6331;
/// The mark of the pod's replies to those connections ("pnc2").
pub(crate) const ROUTE_MARK: u32 = 0x706e_6332;
/// The routing table of [`ROUTE_MARK`]: every address local.
const TABLE: u32 = 0x706e_6300;
/// The policy rule's priority: before `main` (32766), after `local` (0).
const PRIORITY: u32 = 0x706e;
/// The `main` routing table.
const MAIN: u32 = 254;

/// Add the policy rules (the IPv4 reverse-path one too) and the local
/// routes, IPv4 and IPv6, in the namespace of `nl`; those already there
/// are kept (EEXIST).
pub(crate) fn route_client_replies(nl: &mut Nl) -> Result<()> {
    let rule = |family, extra: Option<RuleAttribute>, priority, table| {
        let mut r = RuleMessage::default();
        r.header = RuleHeader {
            family,
            action: RuleAction::ToTable,
            ..RuleHeader::default()
        };
        r.attributes = vec![
            RuleAttribute::Priority(priority),
            RuleAttribute::FwMark(ROUTE_MARK),
            RuleAttribute::FwMask(u32::MAX),
            RuleAttribute::Table(table),
        ];
        r.attributes.extend(extra);
        RouteNetlinkMessage::NewRule(r)
    };
    let reverse_path = Some(RuleAttribute::Iifname("lo".to_owned()));
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(TABLE)
        .output_interface(LO_INDEX)
        .build();
    let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(TABLE)
        .output_interface(LO_INDEX)
        .build();
    let create = NLM_F_CREATE | NLM_F_EXCL;
    let reqs = vec![
        (RouteNetlinkMessage::NewRoute(v4), create),
        (RouteNetlinkMessage::NewRoute(v6), create),
        (
            rule(AddressFamily::Inet, reverse_path, PRIORITY - 1, MAIN),
            create,
        ),
        (rule(AddressFamily::Inet, None, PRIORITY, TABLE), create),
        (rule(AddressFamily::Inet6, None, PRIORITY, TABLE), create),
    ];
    let what = [
        ("add route", "local 0.0.0.0/0 dev lo (clients' addresses)"),
        ("add route", "local ::/0 dev lo (clients' addresses)"),
        ("add rule", "fwmark iif lo for IPv4 reverse-path lookups"),
        ("add rule", "fwmark for IPv4 clients' addresses"),
        ("add rule", "fwmark for IPv6 clients' addresses"),
    ];
    let answers = nl
        .batch(reqs)
        .map_err(|e| io_nl_err("route", "replies to clients' addresses", e))?;
    for (answer, (op, object)) in answers.into_iter().zip(what) {
        match answer {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno_err(op, object, errno)),
        }
    }
    Ok(())
}
