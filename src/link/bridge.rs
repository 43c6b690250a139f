//! The network's bridges: made (or adopted) with a pinned MAC, shard
//! bridges found by alias, trunks joining them, gateway addresses, and
//! the ports of a bridge.
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use nix::errno::Errno;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};

use super::veth::veth_pair;
use super::*;
use crate::error::{Error, Result};

/// A locally administered unicast MAC derived from the bridge's name. Pinned
/// on the bridge so its address no longer follows its lowest port's (which
/// changes as sandboxes come and go and breaks the sandboxes' ARP caches).
pub(super) fn bridge_mac(name: &str) -> Vec<u8> {
    let h = crate::names::fnv1a(name.as_bytes()).to_be_bytes();
    vec![0x02, h[3], h[4], h[5], h[6], h[7]]
}

/// Make sure bridge `name` exists and is up; return its index and whether
/// it was made now. A bridge that exists already is reused; a non-bridge of
/// that name is refused. With an `alias`, the bridge is made with that
/// `IFLA_IFALIAS`, and an existing one is reused only if it carries it (a
/// shard of a network is recognised by its alias).
pub(crate) async fn ensure_bridge(
    h: &Handle,
    name: &str,
    alias: Option<&str>,
    mtu: Option<u32>,
) -> Result<(u32, bool)> {
    if let Some(link) = get_link(h, name).await? {
        let index = link.header.index;
        let found = link_alias(&link);
        return match link_kind(&link) {
            // A shard of some network is no network's bridge.
            Some(InfoKind::Bridge) if alias.is_none() && found.is_some_and(is_shard_alias) => {
                Err(Error::InvalidConfig {
                    reason: format!(
                        "bridge {name:?} is a shard of another network ({:?})",
                        found.unwrap_or_default()
                    ),
                })
            }
            // Made for a shard by a create that died (or was cancelled)
            // before it set the alias: no alias and no port. Adopted.
            Some(InfoKind::Bridge)
                if alias.is_some()
                    && found.is_none()
                    && bridge_ports(h, index).await?.is_empty() =>
            {
                let set = LinkUnspec::new_with_index(index)
                    .alias(alias.unwrap_or_default())
                    .up()
                    .build();
                set_link(h, set, "set alias of bridge", name).await?;
                Ok((index, true))
            }
            Some(InfoKind::Bridge) if alias.is_none_or(|a| found == Some(a)) => {
                if !link.header.flags.contains(LinkFlags::Up) {
                    let up = LinkUnspec::new_with_index(index).up().build();
                    set_link(h, up, "set up bridge", name).await?;
                }
                Ok((index, false))
            }
            Some(InfoKind::Bridge) => Err(Error::AlreadyExists {
                what: "bridge (not this network's shard)",
                name: name.to_owned(),
            }),
            kind => Err(Error::NotABridge {
                name: name.to_owned(),
                kind: kind.map_or_else(
                    || "link of unknown kind".into(),
                    |k| format!("{k:?}").to_lowercase(),
                ),
            }),
        };
    }
    let mut msg = LinkBridge::new(name).address(bridge_mac(name));
    if let Some(mtu) = mtu {
        msg = msg.mtu(mtu);
    }
    match h.link().add(msg.build()).execute().await {
        Ok(()) => {}
        // Made by someone else meanwhile: check it like any existing link.
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == Errno::EEXIST as i32 => {
            return Box::pin(ensure_bridge(h, name, alias, mtu)).await;
        }
        Err(e) => return Err(nl_err("create bridge", name, e)),
    }
    let index = match get_link(h, name).await? {
        Some(link) => link.header.index,
        None => {
            return Err(Error::Netlink {
                op: "get link",
                object: name.to_owned(),
                errno: Errno::ENODEV,
            })
        }
    };
    // The kernel takes IFLA_IFALIAS only when changing a link, not with
    // RTM_NEWLINK's creation.
    if let Some(alias) = alias {
        let set = LinkUnspec::new_with_index(index).alias(alias).build();
        if let Err(e) = set_link(h, set, "set alias of bridge", name).await {
            let _ = delete_link(h, name, "").await;
            return Err(e);
        }
    }
    Ok((index, true))
}

/// Make bridge `name` (`index`) pass the frames it forwards through the
/// IPv4 and IPv6 netfilter hooks (the bridge's own `nf_call_iptables`
/// and `nf_call_ip6tables`, as the namespace-wide
/// `net.bridge.bridge-nf-call-iptables` does for every bridge), so a
/// network's policies see pod-to-pod traffic, with connection tracking.
pub(crate) async fn call_netfilter(h: &Handle, index: u32, name: &str) -> Result<()> {
    use netlink_packet_route::link::{InfoBridge, InfoData};
    let mut msg = LinkUnspec::new_with_index(index).build();
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Bridge),
        LinkInfo::Data(InfoData::Bridge(vec![
            InfoBridge::NfCallIpTables(true),
            InfoBridge::NfCallIp6Tables(true),
        ])),
    ]));
    set_link(h, msg, "make bridge call netfilter", name).await
}

/// Whether `alias` is one podnet gives a network's shard.
pub(super) fn is_shard_alias(alias: &str) -> bool {
    alias.starts_with("podnet ") && alias.contains(" shard ")
}

pub(super) fn link_alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) => Some(s.as_str()),
        _ => None,
    })
}

/// The bridges of this namespace whose alias starts with `prefix`: index,
/// name and alias of each, from one dump filtered by kind in the kernel.
pub(crate) async fn bridges_with_alias(
    h: &Handle,
    prefix: &str,
) -> Result<Vec<(u32, String, String)>> {
    let mut req = h.link().get();
    req.message_mut()
        .attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    let links: Vec<LinkMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list bridges", prefix, e))?;
    Ok(links
        .iter()
        .filter(|l| link_kind(l) == Some(&InfoKind::Bridge))
        .filter_map(|l| {
            let alias = link_alias(l).filter(|a| a.starts_with(prefix))?;
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            Some((l.header.index, name, alias.to_owned()))
        })
        .collect())
}

/// A veth pair joining two bridges into one segment (a trunk between a
/// shard of a network and its parent).
#[derive(Debug)]
pub(crate) struct Trunk<'a> {
    /// The end on the parent's bridge, and that bridge's index.
    pub parent_end: &'a str,
    pub parent: u32,
    /// The end on the shard's bridge, and that bridge's index.
    pub shard_end: &'a str,
    pub shard: u32,
    pub mtu: Option<u32>,
}

/// Make sure the trunk exists with both ends enslaved and up. Idempotent:
/// the pair is made if its parent end is missing, then the shard end is
/// (again) enslaved and set up, which also mends a pair whose maker died
/// between the two requests.
pub(crate) async fn ensure_trunk(h: &Handle, t: &Trunk<'_>) -> Result<()> {
    let object = || format!("trunk {}/{}", t.parent_end, t.shard_end);
    if get_link(h, t.parent_end).await?.is_none() {
        let msg = veth_pair(
            LinkVeth::new(t.parent_end, t.shard_end)
                .controller(t.parent)
                .up(),
            LinkUnspec::new_with_name(t.shard_end),
            t.mtu,
        );
        match h.link().add(msg).execute().await {
            Ok(()) => {}
            // The parent end is missing, so the other name is taken by a
            // link that is not this trunk's: never enslave it.
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == Errno::EEXIST as i32 => {
                return Err(Error::AlreadyExists {
                    what: "link (not this network's trunk)",
                    name: t.shard_end.to_owned(),
                })
            }
            Err(e) => return Err(nl_err("create veth", &object(), e)),
        }
    }
    let set = LinkUnspec::new_with_name(t.shard_end)
        .controller(t.shard)
        .up()
        .build();
    set_link(h, set, "enslave and set up", &object()).await
}

/// Add `addr/prefix` to link `index` unless it is there already. IPv6
/// addresses skip duplicate address detection (they are ours to give).
pub(crate) async fn ensure_address(
    h: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
    object: &str,
) -> Result<()> {
    let mut req = h.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == Errno::EEXIST as i32 => Ok(()),
        Err(e) => Err(nl_err(
            "add address",
            &format!("{addr}/{prefix} to {object}"),
            e,
        )),
    }
}

/// Names of the ports of bridge `index`, from one filtered dump.
pub(crate) async fn bridge_ports(h: &Handle, index: u32) -> Result<Vec<String>> {
    let mut req = h.link().get();
    req.message_mut()
        .attributes
        .push(LinkAttribute::Controller(index));
    let links: Vec<LinkMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list ports of bridge", &index.to_string(), e))?;
    Ok(links
        .iter()
        .filter(|l| l.attributes.contains(&LinkAttribute::Controller(index)))
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        })
        .collect())
}
