//! Every netlink call podnet makes: the bridge, veth pairs, addresses,
//! routes, links up and down, deletion. Only this file (and `link/nft.rs`,
//! nf_tables for port mappings) speaks netlink.
//!
//! There is one strict-checking connection in the host namespace (opened when
//! the `Network` is built, on the thread whose namespace is the host) and a
//! short-lived one per sandbox, on a socket opened inside it. A sandbox is
//! wired with one request on the host side (the veth, its peer already
//! named `eth0` and moved into the sandbox, the host end enslaved and up) and
//! one pipelined batch inside (`lo` up, `eth0` up, addresses, default
//! routes). Errnos are translated here, where the operation is known.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::future::{BoxFuture, Either, FutureExt};
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::RouteMessage;
use nix::errno::Errno;
use rtnetlink::sys::{AsyncSocket, TokioSocket};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
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
            let errno = Errno::from_raw(-msg.raw_code());
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
        conn.handle
            .link()
            .set(LinkUnspec::new_with_index(LO_INDEX).up().build())
            .execute()
            .await
            .map_err(|e| nl_err("set up", "lo of the new host namespace", e))
    })
}

/// A netlink socket in the calling thread's network namespace, to be used
/// from any thread afterwards (netlink(7): the namespace is fixed at creation).
pub(crate) fn socket_here() -> Result<TokioSocket> {
    let mut socket = <TokioSocket as AsyncSocket>::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
        .map_err(|e| Error::io("open netlink socket in sandbox", "", e))?;
    socket
        .socket_mut()
        .set_netlink_get_strict_chk(true)
        .map_err(|e| Error::io("set NETLINK_GET_STRICT_CHK in sandbox", "", e))?;
    Ok(socket)
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
    let h = crate::network::fnv1a(name.as_bytes()).to_be_bytes();
    vec![0x02, h[3], h[4], h[5], h[6], h[7]]
}

/// Make sure bridge `name` exists and is up; return its index and whether
/// it was made now. A bridge that exists already is reused; a non-bridge of
/// that name is refused.
pub(crate) async fn ensure_bridge(h: &Handle, name: &str, mtu: Option<u32>) -> Result<(u32, bool)> {
    if let Some(link) = get_link(h, name).await? {
        return match link_kind(&link) {
            Some(InfoKind::Bridge) => {
                if !link.header.flags.contains(LinkFlags::Up) {
                    h.link()
                        .set(LinkUnspec::new_with_index(link.header.index).up().build())
                        .execute()
                        .await
                        .map_err(|e| nl_err("set up bridge", name, e))?;
                }
                Ok((link.header.index, false))
            }
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
            return Box::pin(ensure_bridge(h, name, mtu)).await;
        }
        Err(e) => return Err(nl_err("create bridge", name, e)),
    }
    match get_link(h, name).await? {
        Some(link) => Ok((link.header.index, true)),
        None => Err(Error::Netlink {
            op: "get link",
            object: name.to_owned(),
            errno: Errno::ENODEV,
        }),
    }
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
    /// PID of the holder whose network namespace gets the peer.
    pub holder_pid: u32,
    pub mtu: Option<u32>,
    /// The sandbox it is for, for errors.
    pub sandbox: &'a str,
}

/// Create the veth pair in one request: the host end enslaved to the
/// bridge and up, the peer named `eth0` in the holder's namespace. (The peer cannot be set up in the same message: veth_open()
/// answers ENOTCONN until both ends exist; that is done inside.)
pub(crate) async fn create_veth(h: &Handle, v: &Veth<'_>) -> Result<()> {
    let mut peer = LinkUnspec::new_with_name(ETH0).setns_by_pid(v.holder_pid);
    let mut host = LinkVeth::new(v.host, ETH0).controller(v.bridge).up();
    if let Some(mtu) = v.mtu {
        peer = peer.mtu(mtu);
        host = host.mtu(mtu);
    }
    let msg: LinkMessage = LinkMessageBuilder::<LinkVeth>::set_info_data(
        host,
        InfoData::Veth(InfoVeth::Peer(peer.build())),
    )
    .build();
    let object = format!("{}/{ETH0} for sandbox {:?}", v.host, v.sandbox);
    h.link().add(msg).execute().await.map_err(|e| match e {
        rtnetlink::Error::NetlinkError(m) if -m.raw_code() == Errno::EEXIST as i32 => {
            Error::AlreadyExists {
                what: "link",
                name: v.host.to_owned(),
            }
        }
        e => nl_err("create veth", &object, e),
    })
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
    match h.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(m))
            if [Errno::ENODEV as i32, Errno::ENOENT as i32].contains(&-m.raw_code()) =>
        {
            Ok(false)
        }
        Err(e) => Err(nl_err("delete link", object, e)),
    }
}

/// The inside of a sandbox: its address(es) and gateway(s).
#[derive(Debug)]
pub(crate) struct Inside<'a> {
    pub ipv4: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    pub ipv6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
    pub sandbox: &'a str,
}

/// Configure a sandbox over `socket` (opened inside it): `lo` up, `eth0` up,
/// the addresses, default routes. The requests are queued back to back and
/// the kernel handles them in order, without our waiting between them; but
/// netlink-proto 0.14 sends one queued request per poll of the connection,
/// so they still leave as separate `sendto` calls (strace: 4 sends, 3 rounds
/// of acks), where one `sendmsg` could carry them all.
pub(crate) async fn configure_inside(socket: TokioSocket, cfg: &Inside<'_>) -> Result<()> {
    let (conn, h, _) = rtnetlink::from_socket(socket);
    futures::pin_mut!(conn);
    let s = cfg.sandbox;
    let eth0 = format!("{ETH0} in sandbox {s:?}");
    // eth0's index is looked up, not assumed: the kernel ignores the index
    // asked for a veth peer, and a new namespace may already hold tunnel
    // devices (tunl0, sit0, gre0 when net.core.fb_tunnels_only_for_init_net
    // is 0) that take the low indexes.
    let lookup = get_link(&h, ETH0);
    let index = match futures::future::select(Box::pin(lookup), &mut conn).await {
        Either::Left((Ok(Some(link)), _)) => link.header.index,
        Either::Left((Ok(None), _)) => {
            return Err(Error::Netlink {
                op: "get link",
                object: eth0,
                errno: Errno::ENODEV,
            })
        }
        Either::Left((Err(e), _)) => return Err(e),
        Either::Right(((), _)) => {
            return Err(Error::NetlinkProtocol {
                op: "get link",
                object: eth0,
                detail: "the netlink connection closed".into(),
            })
        }
    };
    let set_up = |index: u32, object: String| {
        let req = h.link().set(LinkUnspec::new_with_index(index).up().build());
        async move {
            req.execute()
                .await
                .map_err(|e| nl_err("set up", &object, e))
        }
    };
    let default_route = |route: RouteMessage, gw: IpAddr| {
        let req = h.route().add(route);
        let object = format!("via {gw} in sandbox {s:?}");
        async move {
            req.execute()
                .await
                .map_err(|e| nl_err("add default route", &object, e))
        }
    };
    let add_address =
        |h: &Handle, addr: IpAddr, prefix: u8, object: &str| -> BoxFuture<'static, Result<()>> {
            let (h, object) = (h.clone(), object.to_owned());
            async move { ensure_address(&h, index, addr, prefix, &object).await }.boxed()
        };
    let mut steps: Vec<BoxFuture<'static, Result<()>>> = vec![
        set_up(LO_INDEX, format!("lo in sandbox {s:?}")).boxed(),
        set_up(index, eth0.clone()).boxed(),
    ];
    if let Some((addr, prefix, gw)) = cfg.ipv4 {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(gw)
            .build();
        steps.push(add_address(&h, addr.into(), prefix, &eth0));
        steps.push(default_route(route, gw.into()).boxed());
    }
    if let Some((addr, prefix, gw)) = cfg.ipv6 {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(index)
            .gateway(gw)
            .build();
        steps.push(add_address(&h, addr.into(), prefix, &eth0));
        steps.push(default_route(route, gw.into()).boxed());
    }
    // try_join_all polls the steps in order on its first poll, so the
    // requests go out in order; the connection future does the I/O.
    let all = futures::future::try_join_all(steps);
    match futures::future::select(all, conn).await {
        Either::Left((result, _)) => result.map(drop),
        Either::Right(((), _)) => Err(Error::NetlinkProtocol {
            op: "configure",
            object: format!("sandbox {s:?}"),
            detail: "the netlink connection closed".into(),
        }),
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
