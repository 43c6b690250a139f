//! Every netlink request podnet makes; only this module (with `nft`, for
//! port mappings) speaks netlink. One strict async connection per host
//! namespace serves the rare requests, blocking sockets ([`Nl`]) the hot
//! path of a create; errnos are translated where the operation is known.

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use nix::errno::Errno;
use rtnetlink::Handle;

use crate::error::{Error, Result};

/// nf_tables (the kernel DNAT path of port mappings): netlink too, so it
/// lives beside this file.
pub(crate) mod nft;

mod bridge;
/// Routing the pod's replies to connections made from clients' addresses.
pub(crate) mod client;
mod delete;
mod inside;
mod inspect;
mod nl;
mod route;
mod veth;

pub(crate) use bridge::{
    bridge_ports, bridges_with_alias, call_netfilter, ensure_address, ensure_bridge, ensure_trunk,
    Trunk,
};
pub(crate) use delete::{
    delete_link, delete_link_blocking, delete_link_index, delete_links_blocking, links_named,
    master_of, unplug_blocking, Unplugged,
};
pub(crate) use inside::{
    addresses_blocking, configure_inside, loopback_up_blocking, Inside, InsideAddresses,
};
pub(crate) use inspect::interface_blocking;
pub(crate) use nl::Nl;
pub(crate) use route::default_route_mtu;
pub(crate) use veth::{create_veth, PeerNs, Veth};

/// Index of `lo` in a new network namespace: the loopback device is
/// registered first in every namespace (net/core/dev.c).
pub(super) const LO_INDEX: u32 = 1;
/// Name of the sandbox end of the veth pair.
pub(crate) const ETH0: &str = "eth0";

/// Translate an rtnetlink error: EPERM/EACCES become `NotPermitted`, any
/// other errno is kept with the operation and object.
pub(super) fn nl_err(op: &'static str, object: &str, e: rtnetlink::Error) -> Error {
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

/// Send `msg` (an `RTM_SETLINK`) and wait for the answer; `op` and
/// `object` name it in the error.
pub(super) async fn set_link(
    h: &Handle,
    msg: LinkMessage,
    op: &'static str,
    object: &str,
) -> Result<()> {
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

pub(super) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// A netlink errno as an [`Error`]: EPERM/EACCES become `NotPermitted`,
/// any other errno is kept with the operation and object.
pub(super) fn errno_err(op: &'static str, object: &str, errno: Errno) -> Error {
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

pub(super) fn io_nl_err(op: &'static str, object: &str, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(raw) => errno_err(op, object, Errno::from_raw(raw)),
        None => Error::NetlinkProtocol {
            op,
            object: object.to_owned(),
            detail: e.to_string(),
        },
    }
}
