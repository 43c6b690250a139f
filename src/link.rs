//! Every netlink call podnet makes: the bridge, veth pairs, addresses,
//! routes, links up and down, deletion. Only this file (and `link/nft.rs`,
//! nf_tables for port mappings) speaks netlink.
//!
//! There is one strict-checking async connection in the host namespace
//! (opened when the `Network` is built, on the thread whose namespace is the
//! host) for the rare requests, and blocking sockets ([`Nl`]) for the hot
//! path of `create()`: a sandbox is wired with two requests on the host side
//! (the veth, its peer already named `eth0` and made in the sandbox, the
//! host end enslaved, its echo telling both indexes; then the host end up
//! without IPv6 address generation) and one batch in one `sendmsg` on a
//! socket opened inside (`lo` up, `eth0` up, addresses, default routes).
//! Errnos are translated here, where the operation is known.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use nix::libc;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::{Error, Result};

/// nf_tables (the kernel DNAT path of port mappings): netlink too, so it
/// lives beside this file.
pub(crate) mod nft;

/// Index of `lo` in a new network namespace: the loopback device is
/// registered first in every namespace (net/core/dev.c).
const LO_INDEX: u32 = 1;
/// Name of the sandbox end of the veth pair.
pub(crate) const ETH0: &str = "eth0";

/// Translate an rtnetlink error: EPERM/EACCES become `NotPermitted`, any
/// other errno is kept with the operation and object.
fn nl_err(op: &'static str, object: &str, e: rtnetlink::Error) -> Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => {
            errno_err(op, object, Errno::from_raw(-msg.raw_code()))
        }
        other => Error::NetlinkProtocol {
            op,
            object: object.to_owned(),
            detail: other.to_string(),
        },
    }
}

/// A netlink connection whose I/O task is aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct Conn {
    pub handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Open a strict-checking connection in the calling thread's network
/// namespace (the socket is bound to the namespace it is created in).
pub(crate) fn connect() -> Result<Conn> {
    let (conn, handle, _) = rtnetlink::new_connection_with_strict_check()
        .map_err(|e| Error::io("open netlink socket", "", e))?;
    Ok(Conn {
        handle,
        task: tokio::spawn(conn),
    })
}

/// Set `lo` of the calling thread's namespace up, from synchronous code
/// (before the caller has a runtime). A current-thread runtime starts no
/// thread, so this is fine in a process that must stay single-threaded.
pub(crate) fn loopback_up_blocking() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("start a runtime to set up", "lo", e))?;
    rt.block_on(async {
        let conn = connect()?;
        let up = LinkUnspec::new_with_index(LO_INDEX).up().build();
        set_link(&conn.handle, up, "set up", "lo of the new host namespace").await
    })
}

/// Send `msg` (an `RTM_SETLINK`) and wait for the answer; `op` and
/// `object` name it in the error.
async fn set_link(h: &Handle, msg: LinkMessage, op: &'static str, object: &str) -> Result<()> {
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| nl_err(op, object, e))
}

/// The link called `name`, if any. A missing name arrives as ENODEV.
pub(crate) async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(msg)) if -msg.raw_code() == Errno::ENODEV as i32 => {
            Ok(None)
        }
        Err(e) => Err(nl_err("get link", name, e)),
    }
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// A locally administered unicast MAC derived from the bridge's name. Pinned
/// on the bridge so its address no longer follows its lowest port's (which
/// changes as sandboxes come and go and breaks the sandboxes' ARP caches).
fn bridge_mac(name: &str) -> Vec<u8> {
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

/// Whether `alias` is one podnet gives a network's shard.
fn is_shard_alias(alias: &str) -> bool {
    alias.starts_with("podnet ") && alias.contains(" shard ")
}

fn link_alias(link: &LinkMessage) -> Option<&str> {
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

/// What a veth pair is made of.
#[derive(Debug)]
pub(crate) struct Veth<'a> {
    /// Name of the host end.
    pub host: &'a str,
    /// Index of the bridge the host end is enslaved to.
    pub bridge: u32,
    /// Its name, for errors.
    pub bridge_name: &'a str,
    /// PID of the holder whose network namespace gets the peer.
    pub holder_pid: u32,
    pub mtu: Option<u32>,
    /// The sandbox it is for, for errors.
    pub sandbox: &'a str,
    /// Whether `eth0` receives by NAPI: the host end without TSO, `eth0`
    /// with GRO (see [`configure_inside`]). A veth without NAPI hands what
    /// it receives to the CPU's backlog, which drops what exceeds
    /// `net.core.netdev_max_backlog` (1,000): a bridge flooding one frame
    /// (an ARP request) to more ports than that loses the rest.
    pub napi_receive: bool,
}

/// Create the veth pair in one request: the host end enslaved to the
/// bridge, the peer named `eth0` in the holder's namespace; then set the
/// host end up without IPv6 addresses (and, for a NAPI sandbox, TSO off).
/// (The peer cannot be set up in the same message: veth_open() answers
/// ENOTCONN until both ends exist; that is done inside.) Returns the
/// indexes of both ends when the kernel tells them: the request asks for
/// an echo (`NLM_F_ECHO`, answered for links since Linux 6.3), whose
/// `IFLA_LINK` is the peer's index.
pub(crate) fn create_veth(nl: &mut Nl, v: &Veth<'_>) -> Result<VethIndexes> {
    // eth0 starts dormant, so that its IPv6 address generation can be
    // turned off in the request that sets it up (see `configure_inside`).
    let peer = LinkUnspec::new_with_name(ETH0)
        .setns_by_pid(v.holder_pid)
        .append_extra_attribute(LinkAttribute::OperState(State::Dormant));
    let msg = veth_pair(
        LinkVeth::new(v.host, ETH0).controller(v.bridge),
        peer,
        v.mtu,
    );
    let object = || format!("{}/{ETH0} for sandbox {:?}", v.host, v.sandbox);
    let answer = nl
        .batch(vec![(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        )])
        .map_err(|e| io_nl_err("create veth", &object(), e))?
        .pop()
        .unwrap_or(Err(Errno::EIO));
    let echo = match answer {
        Ok(echo) => echo,
        Err(Errno::EEXIST) => {
            return Err(Error::AlreadyExists {
                what: "link",
                name: v.host.to_owned(),
            })
        }
        // br_add_if() finds no free port number (net/bridge/br_if.c).
        Err(Errno::EXFULL) => {
            return Err(Error::BridgeFull {
                bridge: v.bridge_name.to_owned(),
            })
        }
        Err(errno) => return Err(errno_err("create veth", &object(), errno)),
    };
    // The echo: the host end's index, and its peer's (IFLA_LINK).
    let echoed = echo.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    });
    let peer = echoed.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Link(i) => Some(*i),
            _ => None,
        })
    });
    // The host end, a bridge port, needs no IPv6 address: it is set up
    // with address generation off (which RTM_NEWLINK does not take), so
    // it floods no DAD, MLD or router solicitation. A request of its own,
    // to the index the echo gives: sent with the creation, it would be
    // carried out even if the creation failed, on whatever link holds the
    // name.
    let link = match echoed {
        Some(l) => LinkUnspec::new_with_index(l.header.index),
        None => LinkUnspec::new_with_name(v.host),
    };
    let ready = nl
        .batch(vec![(no_ipv6_addresses(link.up()), 0)])
        .map_err(|e| io_nl_err("set up", &object(), e))
        .and_then(|mut answers| {
            let answer = answers.pop().unwrap_or(Err(Errno::EIO));
            answer.map_err(|errno| errno_err("set up", &object(), errno))
        })
        .and_then(|_| {
            // A frame sent by a TSO-capable veth never takes the peer's
            // NAPI queue (veth_skb_is_eligible_for_gro()).
            if !v.napi_receive {
                return Ok(());
            }
            ethtool_set(nl, v.host, ETHTOOL_STSO, false)
                .map_err(|errno| errno_err("turn TSO off on", &object(), errno))
        });
    if let Err(e) = ready {
        // Made but not ready: take it back (its peer goes with it).
        let _ = delete_link_blocking(nl, v.host, "");
        return Err(e);
    }
    Ok(VethIndexes {
        host: echoed.map(|l| l.header.index),
        eth0: peer,
    })
}

/// The indexes of a new veth pair's ends, if the kernel told them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VethIndexes {
    /// The host end, in the host namespace.
    pub host: Option<u32>,
    /// The peer, `eth0` in the sandbox.
    pub eth0: Option<u32>,
}

/// The `RTM_NEWLINK` of a veth pair: `end` with `peer`, both of `mtu`.
fn veth_pair(
    mut end: LinkMessageBuilder<LinkVeth>,
    mut peer: LinkMessageBuilder<LinkUnspec>,
    mtu: Option<u32>,
) -> LinkMessage {
    if let Some(mtu) = mtu {
        end = end.mtu(mtu);
        peer = peer.mtu(mtu);
    }
    // One queue each way, asked for: the kernel's default allocates a
    // queue per CPU, then cuts each end down to one after registering it
    // (veth_init_queues()), and cutting the queues of a registered link
    // waits for an RCU grace period (synchronize_net()) while holding the
    // lock every netlink request of the host takes.
    for q in [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)] {
        end = end.append_extra_attribute(q.clone());
        peer = peer.append_extra_attribute(q);
    }
    LinkMessageBuilder::<LinkVeth>::set_info_data(end, InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build()
}

/// A `RTM_SETLINK` of `link` that turns IPv6 address generation off
/// (`IN6_ADDR_GEN_MODE_NONE`): no link-local address, so no duplicate
/// address detection, MLD report or router solicitation when it comes up.
fn no_ipv6_addresses(link: LinkMessageBuilder<LinkUnspec>) -> RouteNetlinkMessage {
    let mut msg = link.build();
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    RouteNetlinkMessage::SetLink(msg)
}

/// `ETHTOOL_SGRO`: generic receive offload on or off.
const ETHTOOL_SGRO: u32 = 0x2c;
/// `ETHTOOL_STSO`: TCP segmentation offload on or off.
const ETHTOOL_STSO: u32 = 0x1f;

/// Set a legacy ethtool flag (`SIOCETHTOOL` with a `struct ethtool_value`)
/// of link `name` in `nl`'s namespace: the ioctl goes to the socket's
/// namespace, so the netlink socket serves.
fn ethtool_set(nl: &Nl, name: &str, cmd: u32, on: bool) -> std::result::Result<(), Errno> {
    use std::os::fd::AsRawFd;
    /// `struct ethtool_value`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points
    // to, both alive for the call.
    let rc = unsafe { libc::ioctl(nl.sock.as_raw_fd(), SIOCETHTOOL, &mut ifr) };
    Errno::result(rc).map(drop)
}

/// The index of the bridge link `name` is enslaved to, if any.
pub(crate) async fn master_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    Ok(get_link(h, name).await?.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        })
    }))
}

/// Delete link `name`; `object` describes it for errors. Returns whether
/// it existed (ENODEV: already gone).
pub(crate) async fn delete_link(h: &Handle, name: &str, object: &str) -> Result<bool> {
    let msg = LinkUnspec::new_with_name(name).build();
    deleted(h.link().del_with_message(msg).execute().await, object)
}

/// Delete link `index`; `object` describes it for errors. Returns whether
/// it existed.
pub(crate) async fn delete_link_index(h: &Handle, index: u32, object: &str) -> Result<bool> {
    deleted(h.link().del(index).execute().await, object)
}

/// What a deletion's answer means: `Ok(false)` if the link was gone
/// already (ENODEV, ENOENT).
fn deleted(answer: std::result::Result<(), rtnetlink::Error>, object: &str) -> Result<bool> {
    match answer {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(m))
            if [Errno::ENODEV as i32, Errno::ENOENT as i32].contains(&-m.raw_code()) =>
        {
            Ok(false)
        }
        Err(e) => Err(nl_err("delete link", object, e)),
    }
}

/// The index of link `name` in `nl`'s namespace (one `RTM_GETLINK`), or
/// `None` if there is none; `object` names it in errors.
fn index_blocking(nl: &mut Nl, name: &str, object: &str) -> Result<Option<u32>> {
    let get = LinkUnspec::new_with_name(name).build();
    let answer = nl
        .batch(vec![(RouteNetlinkMessage::GetLink(get), 0)])
        .map_err(|e| io_nl_err("get link", object, e))?
        .pop()
        .unwrap_or(Err(Errno::EIO));
    match answer {
        Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
            _ => None,
        })),
        Err(Errno::ENODEV | Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno_err("get link", object, errno)),
    }
}

/// [`delete_link`] over a blocking socket: the kernel deletes a veth inside
/// the request (both ends, waiting for the network stack to let go of them:
/// tens of ms), so it is for blocking threads (the deleting thread's
/// fallback by name) and rollbacks of a create that failed.
pub(crate) fn delete_link_blocking(nl: &mut Nl, name: &str, object: &str) -> Result<bool> {
    let msg = LinkUnspec::new_with_name(name).build();
    let answer = nl
        .batch(vec![(RouteNetlinkMessage::DelLink(msg), 0)])
        .map_err(|e| io_nl_err("delete link", object, e))?
        .pop()
        .unwrap_or(Err(Errno::EIO));
    match answer {
        Ok(_) => Ok(true),
        Err(Errno::ENODEV | Errno::ENOENT) => Ok(false),
        Err(errno) => Err(errno_err("delete link", object, errno)),
    }
}

/// What [`unplug_blocking`] did with a veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unplugged {
    /// It was gone already.
    Gone,
    /// It is off its bridge, down, and renamed: delete it by its new name.
    Renamed,
    /// Not both requests were carried out (or their answers were lost):
    /// delete it by this index, which is its own whatever its name.
    Stuck(u32),
}

/// Take the veth whose host end is `name` (index `index`, if known) out
/// of use at once, without waiting for the kernel to delete it: one
/// `sendmsg` of two `RTM_SETLINK`s to its index, one taking it off its
/// bridge (`IFLA_MASTER` 0), setting it down (so its peer loses carrier
/// and sends nothing more) and giving it the alias `alias` (who removed
/// it), one renaming it `dying` (the kernel renames only a link that is
/// down, and checks that before it changes the flags, so this is a request
/// of its own; and it looks a link up by the name in the request, so a
/// rename goes by index). Its name, its bridge port and its peer's address
/// are then free for others; the caller deletes it by `dying` later.
/// Without `index`, it is looked up by name first (one more round trip).
pub(crate) fn unplug_blocking(
    nl: &mut Nl,
    name: &str,
    index: Option<u32>,
    dying: &str,
    alias: &str,
    object: &str,
) -> Result<Unplugged> {
    let Some(index) = index.map_or_else(|| index_blocking(nl, name, object), |i| Ok(Some(i)))?
    else {
        return Ok(Unplugged::Gone);
    };
    let off = LinkUnspec::new_with_index(index)
        .nocontroller()
        .down()
        .alias(alias)
        .build();
    let rename = LinkUnspec::new_with_index(index).name(dying).build();
    let answers = nl.batch(vec![
        (RouteNetlinkMessage::SetLink(off), 0),
        (RouteNetlinkMessage::SetLink(rename), 0),
    ]);
    Ok(match answers.as_deref() {
        Ok([Err(Errno::ENODEV | Errno::ENOENT), _]) => Unplugged::Gone,
        Ok([Ok(_), Ok(_)]) => Unplugged::Renamed,
        _ => Unplugged::Stuck(index),
    })
}

/// Names and aliases of the links whose names start with `prefix`, from
/// one dump of every link (for gc, which is not on any hot path).
pub(crate) async fn links_named(h: &Handle, prefix: &str) -> Result<Vec<(String, Option<String>)>> {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list links", &format!("named {prefix}*"), e))?;
    Ok(links
        .iter()
        .filter_map(|l| {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) if n.starts_with(prefix) => Some(n.clone()),
                _ => None,
            })?;
            let alias = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) => Some(s.clone()),
                _ => None,
            });
            Some((name, alias))
        })
        .collect())
}

/// Delete the links named in `links` (name, object for errors), veth peers
/// included, in one kernel operation: one `sendmsg` puts each in link
/// group `group` (`RTM_SETLINK` with `IFLA_GROUP`), then one `RTM_DELLINK`
/// of the group has the kernel unregister them all at once
/// (`unregister_netdevice_many`), so they share one wait for the network
/// stack to let go of them, which one by one each waits for alone (most of
/// a veth deletion's ~20 ms). The group must be one that no other link of
/// the namespace is in (the caller picks it at random), and the batch small
/// enough that the acknowledgements fit the socket's receive buffer.
/// `Ok(false)` for a link that was gone already. A link that could not be
/// put in the group, or a group the kernel would not delete, is deleted by
/// name instead. Also says whether none had to be deleted by name.
pub(crate) fn delete_links_blocking(
    nl: &mut Nl,
    links: &[(&str, &str)],
    group: u32,
) -> (Vec<Result<bool>>, bool) {
    if let [(name, object)] = links {
        return (vec![delete_link_blocking(nl, name, object)], true);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Step {
        Grouped,
        Gone,
        ByName,
    }
    let set_group = |name: &str| {
        let mut msg = LinkUnspec::new_with_name(name).build();
        msg.attributes.push(LinkAttribute::Group(group));
        (RouteNetlinkMessage::SetLink(msg), 0)
    };
    let steps: Vec<Step> = match nl.batch(links.iter().map(|(name, _)| set_group(name)).collect()) {
        Ok(answers) => answers
            .into_iter()
            .map(|answer| match answer {
                Ok(_) => Step::Grouped,
                Err(Errno::ENODEV | Errno::ENOENT) => Step::Gone,
                Err(_) => Step::ByName,
            })
            .collect(),
        // Which of them the kernel put in the group is unknown: by name.
        Err(_) => vec![Step::ByName; links.len()],
    };
    // The group deleted, or none of it left to delete (ENODEV: the kernel
    // deleted them meanwhile with their namespaces).
    let group_gone = !steps.contains(&Step::Grouped) || {
        let mut del = LinkMessage::default();
        del.attributes.push(LinkAttribute::Group(group));
        nl.batch(vec![(RouteNetlinkMessage::DelLink(del), 0)])
            .ok()
            .and_then(|mut answers| answers.pop())
            .is_some_and(|answer| matches!(answer, Ok(_) | Err(Errno::ENODEV)))
    };
    let results = steps
        .iter()
        .zip(links)
        .map(|(step, (name, object))| match step {
            Step::Grouped if group_gone => Ok(true),
            Step::Gone => Ok(false),
            Step::Grouped | Step::ByName => delete_link_blocking(nl, name, object),
        })
        .collect();
    (results, group_gone && !steps.contains(&Step::ByName))
}

/// Every address on every interface of the namespace `nl` was opened in
/// (one `RTM_GETADDR` dump); `object` names the namespace for errors.
pub(crate) fn addresses_blocking(nl: &mut Nl, object: &str) -> Result<Vec<IpAddr>> {
    let req = RouteNetlinkMessage::GetAddress(AddressMessage::default());
    let msgs = nl
        .dump(req)
        .map_err(|e| io_nl_err("list addresses of", object, e))?
        .map_err(|errno| errno_err("list addresses of", object, errno))?;
    let mut out = Vec::new();
    for msg in msgs {
        let RouteNetlinkMessage::NewAddress(a) = msg else {
            continue;
        };
        for attr in a.attributes {
            if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = attr {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    Ok(out)
}

/// The inside of a sandbox: its address(es) and gateway(s).
#[derive(Debug)]
pub(crate) struct Inside<'a> {
    pub ipv4: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    pub ipv6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
    pub sandbox: &'a str,
    /// Receive by NAPI (see [`Veth::napi_receive`]): GRO on for `eth0`.
    pub napi_receive: bool,
}

/// Configure a sandbox over `nl` (a socket opened inside it): `lo` up,
/// `eth0` up, the addresses, default routes, all in one `sendmsg` whose
/// answers are read at once. `eth0` is the index [`create_veth`] learnt; if
/// it learnt none, it is looked up first (one more round trip).
pub(crate) fn configure_inside(nl: &mut Nl, eth0: Option<u32>, cfg: &Inside<'_>) -> Result<()> {
    let s = cfg.sandbox;
    let eth0_obj = || format!("{ETH0} in sandbox {s:?}");
    // Without the echo, eth0's index is looked up, not assumed: the kernel
    // ignores the index asked for a veth peer, and a new namespace may
    // already hold tunnel devices (tunl0, sit0, gre0 when
    // net.core.fb_tunnels_only_for_init_net is 0) that take the low indexes.
    let index = match eth0 {
        Some(i) => i,
        None => index_blocking(nl, ETH0, &eth0_obj())?
            .ok_or_else(|| errno_err("get link", &eth0_obj(), Errno::ENODEV))?,
    };
    if cfg.napi_receive {
        // GRO makes eth0's veth receive on a NAPI queue of its own.
        ethtool_set(nl, ETH0, ETHTOOL_SGRO, true)
            .map_err(|errno| errno_err("turn GRO on for", &eth0_obj(), errno))?;
    }
    let up = |i: u32| RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(i).up().build());
    let create = NLM_F_CREATE | NLM_F_EXCL;
    // What each request is, for errors: (op, object, EEXIST is fine).
    let mut what: Vec<(&'static str, String, bool)> =
        vec![("set up", format!("lo in sandbox {s:?}"), false)];
    let mut reqs = vec![(up(LO_INDEX), 0)];
    if cfg.ipv6.is_none() {
        // No IPv6 pool: no link-local address either, so eth0 coming up
        // floods no DAD, MLD or router solicitation to every port. In the
        // request that sets it up: the kernel changes the flags first, but
        // eth0 was made dormant (`create_veth`), so IPv6 waits for the
        // kernel to find its carrier (linkwatch, which runs once this
        // request lets go of the rtnl lock), and by then the address
        // generation is off.
        let eth0 = LinkUnspec::new_with_index(index).up();
        reqs.push((no_ipv6_addresses(eth0), 0));
        what.push((
            "set up, without IPv6 address generation,",
            eth0_obj(),
            false,
        ));
    } else {
        reqs.push((up(index), 0));
        what.push(("set up", eth0_obj(), false));
    }
    let mut add = |addr: IpAddr, prefix: u8, gw: IpAddr| {
        let mut a = match addr {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
        };
        if addr.is_ipv6() {
            // Ours to give: no duplicate address detection.
            a.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let route = match gw {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(index)
                .gateway(g)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(index)
                .gateway(g)
                .build(),
        };
        reqs.push((RouteNetlinkMessage::NewAddress(a), create));
        what.push((
            "add address",
            format!("{addr}/{prefix} to {}", eth0_obj()),
            true,
        ));
        reqs.push((RouteNetlinkMessage::NewRoute(route), create));
        what.push((
            "add default route",
            format!("via {gw} in sandbox {s:?}"),
            false,
        ));
    };
    if let Some((addr, prefix, gw)) = cfg.ipv4 {
        add(addr.into(), prefix, gw.into());
    }
    if let Some((addr, prefix, gw)) = cfg.ipv6 {
        add(addr.into(), prefix, gw.into());
    }
    let answers = nl
        .batch(reqs)
        .map_err(|e| io_nl_err("configure", &format!("sandbox {s:?}"), e))?;
    for (answer, (op, object, exist_ok)) in answers.into_iter().zip(what) {
        match answer {
            Ok(_) => {}
            Err(Errno::EEXIST) if exist_ok => {}
            Err(errno) => return Err(errno_err(op, &object, errno)),
        }
    }
    Ok(())
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

/// A blocking netlink socket that sends a batch of requests in one
/// `sendmsg` and reads every answer before it returns.
///
/// rtnetlink handles a request inside the `sendmsg` that carries it (the
/// socket's receive queue holds the answers when the call returns), so
/// "blocking" here never waits for anything but the kernel's own work, as a
/// `sendto` of the async connection's task does. What this saves is the
/// async connection's one request per poll: the inside of a sandbox is
/// configured with one `sendmsg` and one `recv`, as in the kernel floor.
#[derive(Debug)]
pub(crate) struct Nl {
    sock: rtnetlink::sys::Socket,
    seq: u32,
}

thread_local! {
    /// Where [`Nl::batch`] receives answers (64 KiB, as a netlink dump's
    /// messages): made once per thread, written only as far as answers go.
    static RECV_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(64 * 1024));
}

/// What the kernel answered to one request of a batch: the messages it sent
/// back for it (a reply to a get, an echo), or its errno.
type Answer = std::result::Result<Vec<RouteNetlinkMessage>, Errno>;

impl Nl {
    /// A socket in the calling thread's network namespace (it stays bound to
    /// it whichever thread uses it later, netlink(7)).
    pub(crate) fn here() -> std::io::Result<Nl> {
        let sock = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
        sock.set_netlink_get_strict_chk(true)?;
        Ok(Nl { sock, seq: 0 })
    }

    /// Send `reqs` (message, flags) in one `sendmsg`, every one with
    /// `NLM_F_ACK`, and collect the answer to each, in order.
    pub(crate) fn batch(
        &mut self,
        reqs: Vec<(RouteNetlinkMessage, u16)>,
    ) -> std::io::Result<Vec<Answer>> {
        let first = self.seq.wrapping_add(1);
        let mut msgs = Vec::with_capacity(reqs.len());
        for (inner, flags) in reqs {
            self.seq = self.seq.wrapping_add(1);
            let mut m = NetlinkMessage::from(inner);
            m.header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
            m.header.sequence_number = self.seq;
            m.finalize();
            msgs.push(m);
        }
        let len = msgs.iter().map(NetlinkMessage::buffer_len).sum();
        let mut buf = vec![0u8; len];
        let mut off = 0;
        for m in &msgs {
            m.serialize(&mut buf[off..off + m.buffer_len()]);
            off += m.buffer_len();
        }
        loop {
            match self.sock.send(&buf, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let n = msgs.len();
        let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
        let mut replies: Vec<Vec<RouteNetlinkMessage>> = (0..n).map(|_| Vec::new()).collect();
        let mut pending = n;
        if pending == 0 {
            return Ok(Vec::new());
        }
        self.receive(|msg| {
            // Answers to an earlier, abandoned batch are skipped.
            let Some(i) = usize::try_from(msg.header.sequence_number.wrapping_sub(first))
                .ok()
                .filter(|i| *i < n)
            else {
                return pending == 0;
            };
            match msg.payload {
                NetlinkPayload::Error(err) => {
                    if answers[i].is_none() {
                        pending -= 1;
                    }
                    answers[i] = Some(match err.code {
                        None => Ok(std::mem::take(&mut replies[i])),
                        Some(code) => Err(Errno::from_raw(-code.get())),
                    });
                }
                NetlinkPayload::InnerMessage(m) => replies[i].push(m),
                _ => {}
            }
            pending == 0
        })?;
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Err(Errno::EIO)))
            .collect())
    }

    /// Send `req` as a dump (`NLM_F_DUMP`) and collect what the kernel
    /// sends for it until its `NLMSG_DONE`, or its errno.
    pub(crate) fn dump(&mut self, req: RouteNetlinkMessage) -> std::io::Result<Answer> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut m = NetlinkMessage::from(req);
        m.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        m.header.sequence_number = seq;
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        loop {
            match self.sock.send(&buf, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let mut got = Vec::new();
        let mut answer = None;
        self.receive(|msg| {
            if msg.header.sequence_number == seq && answer.is_none() {
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => got.push(m),
                    NetlinkPayload::Done(_) => answer = Some(Ok(std::mem::take(&mut got))),
                    NetlinkPayload::Error(err) => {
                        answer = Some(Err(err
                            .code
                            .map_or(Errno::EIO, |c| Errno::from_raw(-c.get()))));
                    }
                    _ => {}
                }
            }
            answer.is_some()
        })?;
        Ok(answer.unwrap_or(Err(Errno::EIO)))
    }

    /// Receive datagrams, giving `on` each message in them, until `on` has
    /// said that it has all it waits for (at the end of that datagram).
    fn receive(
        &mut self,
        mut on: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> bool,
    ) -> std::io::Result<()> {
        // Received into a buffer of the thread's, not zeroed for each call.
        RECV_BUF.with_borrow_mut(|rbuf| loop {
            rbuf.clear();
            let got = loop {
                match self.sock.recv(rbuf, 0) {
                    Ok(got) => break got.min(rbuf.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            let mut off = 0;
            let mut done = false;
            while off < got {
                let data = &rbuf[off..got];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let step = usize::try_from(msg.header.length)
                    .unwrap_or(usize::MAX)
                    .next_multiple_of(4);
                if step == 0 {
                    break;
                }
                off = off.saturating_add(step);
                done |= on(msg);
            }
            if done {
                return Ok(());
            }
        })
    }
}

/// A netlink errno as an [`Error`]: EPERM/EACCES become `NotPermitted`,
/// any other errno is kept with the operation and object.
fn errno_err(op: &'static str, object: &str, errno: Errno) -> Error {
    if matches!(errno, Errno::EPERM | Errno::EACCES) {
        Error::not_permitted(format!("netlink: {op} {object}"))
    } else {
        Error::Netlink {
            op,
            object: object.to_owned(),
            errno,
        }
    }
}

fn io_nl_err(op: &'static str, object: &str, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(raw) => errno_err(op, object, Errno::from_raw(raw)),
        None => Error::NetlinkProtocol {
            op,
            object: object.to_owned(),
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inside configuration without the echoed index (kernels before
    /// 6.3) looks `eth0` up first. Run in a namespace of this test's own
    /// (skipped without privilege, unless `PODNET_REQUIRE_PRIV=1`), on a veth
    /// pair whose `eth0` end stays in the same namespace.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn inside_without_the_echoed_index_looks_eth0_up() {
        std::thread::spawn(|| {
            if let Err(errno) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                assert_ne!(
                    std::env::var("PODNET_REQUIRE_PRIV").as_deref(),
                    Ok("1"),
                    "cannot unshare a network namespace: {errno}"
                );
                eprintln!("SKIPPED: cannot unshare a network namespace ({errno})");
                return;
            }
            let mut nl = Nl::here().unwrap();
            let veth = LinkMessageBuilder::<LinkVeth>::set_info_data(
                LinkVeth::new("x0", ETH0),
                InfoData::Veth(InfoVeth::Peer(LinkUnspec::new_with_name(ETH0).build())),
            )
            .build();
            let created = nl
                .batch(vec![(
                    RouteNetlinkMessage::NewLink(veth),
                    NLM_F_CREATE | NLM_F_EXCL,
                )])
                .unwrap();
            assert!(created[0].is_ok(), "{created:?}");
            let cfg = Inside {
                ipv4: Some((Ipv4Addr::new(10, 88, 0, 2), 16, Ipv4Addr::new(10, 88, 0, 1))),
                ipv6: None,
                sandbox: "unit",
                napi_receive: true,
            };
            configure_inside(&mut nl, None, &cfg).unwrap();
            // Again: the address is there already (fine), the route too (an error).
            let err = configure_inside(&mut nl, None, &cfg).unwrap_err();
            assert_eq!(err.errno(), Some(Errno::EEXIST), "{err}");
            assert!(err.to_string().contains("default route"), "{err}");
            let mut get = LinkMessage::default();
            get.attributes.push(LinkAttribute::IfName(ETH0.into()));
            let answer = nl
                .batch(vec![(RouteNetlinkMessage::GetLink(get), 0)])
                .unwrap()
                .pop()
                .unwrap()
                .unwrap();
            let RouteNetlinkMessage::NewLink(link) = &answer[0] else {
                panic!("{answer:?}");
            };
            assert!(link.header.flags.contains(LinkFlags::Up));
        })
        .join()
        .unwrap();
    }
}
