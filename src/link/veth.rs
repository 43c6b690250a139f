//! A sandbox's veth pair: made in one request with its peer already named
//! `eth0` inside the sandbox and the host end enslaved, then the host end
//! set up without IPv6 addresses, and the ethtool flags of NAPI receiving.

use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoPortData,
    InfoPortKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::*;
use crate::error::{Error, Result};

/// What a veth pair is made of.
#[derive(Debug)]
pub(crate) struct Veth<'a> {
    /// Name of the host end.
    pub host: &'a str,
    /// Index of the bridge the host end is enslaved to.
    pub bridge: u32,
    /// Its name, for errors.
    pub bridge_name: &'a str,
    /// The network namespace that gets the peer.
    pub peer_ns: PeerNs,
    /// The peer's name there (`eth0` in a sandbox of podnet's own).
    pub peer_name: &'a str,
    /// The peer's MAC address, if one is asked for (else the kernel's
    /// random one).
    pub peer_mac: Option<[u8; 6]>,
    /// Whether the bridge port is in hairpin mode (sends a frame back out
    /// of the port it came in by: a container reaching itself through a
    /// port mapping's DNAT to its own address).
    pub hairpin: bool,
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

/// Where the peer of a new veth pair goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerNs {
    /// The network namespace of this process (a holder).
    Pid(u32),
    /// The network namespace this fd (an nsfs file) names; it must stay
    /// open until [`create_veth`] returns.
    Fd(std::os::fd::RawFd),
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
    let peer = LinkUnspec::new_with_name(v.peer_name);
    let peer = match v.peer_ns {
        PeerNs::Pid(pid) => peer.setns_by_pid(pid),
        PeerNs::Fd(fd) => peer.setns_by_fd(fd),
    };
    let peer = match v.peer_mac {
        Some(mac) => peer.address(mac.to_vec()),
        None => peer,
    }
    .append_extra_attribute(LinkAttribute::OperState(State::Dormant));
    let msg = veth_pair(
        LinkVeth::new(v.host, v.peer_name).controller(v.bridge),
        peer,
        v.mtu,
    );
    let object = || format!("{}/{} for sandbox {:?}", v.host, v.peer_name, v.sandbox);
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
    let link = || match echoed {
        Some(l) => LinkUnspec::new_with_index(l.header.index),
        None => LinkUnspec::new_with_name(v.host),
    };
    let mut reqs = vec![(no_ipv6_addresses(link().up()), 0)];
    if v.hairpin {
        // A port option: RTM_NEWLINK on the existing link, with the
        // bridge's slave data (RTM_SETLINK does not read IFLA_LINKINFO).
        let mut msg = link().build();
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        reqs.push((RouteNetlinkMessage::NewLink(msg), 0));
    }
    let ready = nl
        .batch(reqs)
        .map_err(|e| io_nl_err("set up", &object(), e))
        .and_then(|answers| {
            for (answer, op) in answers.into_iter().zip(["set up", "set hairpin mode on"]) {
                answer.map_err(|errno| errno_err(op, &object(), errno))?;
            }
            Ok(())
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
pub(super) fn veth_pair(
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
pub(super) fn no_ipv6_addresses(link: LinkMessageBuilder<LinkUnspec>) -> RouteNetlinkMessage {
    let mut msg = link.build();
    msg.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    RouteNetlinkMessage::SetLink(msg)
}

/// `ETHTOOL_SGRO`: generic receive offload on or off.
pub(super) const ETHTOOL_SGRO: u32 = 0x2c;

/// `ETHTOOL_STSO`: TCP segmentation offload on or off.
pub(super) const ETHTOOL_STSO: u32 = 0x1f;

/// Set a legacy ethtool flag of link `name` in `nl`'s namespace: the ioctl
/// goes to the socket's namespace, so the netlink socket serves.
pub(super) fn ethtool_set(
    nl: &Nl,
    name: &str,
    cmd: u32,
    on: bool,
) -> std::result::Result<(), Errno> {
    crate::sys::ethtool_set_value(nl.fd(), name, cmd, u32::from(on))
}
