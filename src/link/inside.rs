//! Inside a sandbox: `lo` up, `eth0` up with its addresses and default
//! routes in one batch, and listing the addresses a namespace holds.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::delete::index_blocking;
use super::veth::{ethtool_set, no_ipv6_addresses, ETHTOOL_SGRO};
use super::*;
use crate::error::{Error, Result};

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

/// A namespace's addresses with their prefixes and gateways (v4, v6), as
/// [`Inside`] takes them.
pub(crate) type InsideAddresses = (
    Option<(Ipv4Addr, u8, Ipv4Addr)>,
    Option<(Ipv6Addr, u8, Ipv6Addr)>,
);

/// The inside of a sandbox: its address(es) and gateway(s).
#[derive(Debug)]
pub(crate) struct Inside<'a> {
    pub ipv4: Option<(Ipv4Addr, u8, Ipv4Addr)>,
    pub ipv6: Option<(Ipv6Addr, u8, Ipv6Addr)>,
    pub sandbox: &'a str,
    /// The interface: `eth0` in a sandbox of podnet's own.
    pub ifname: &'a str,
    /// Whether `lo` is set up too (a namespace of podnet's own; a
    /// runtime's is left as it is).
    pub loopback: bool,
    /// Whether default routes go via the gateways (else the pool's own
    /// route, which the address brings, is the only one).
    pub default_routes: bool,
    /// Receive by NAPI (see [`Veth::napi_receive`]): GRO on for `eth0`.
    pub napi_receive: bool,
}

/// Configure a sandbox over `nl` (a socket opened inside it): `lo` up (if
/// asked), `eth0` (or `cfg.ifname`) up, the addresses, default routes (if
/// asked), all in one `sendmsg` whose answers are read at once. `eth0` is the index [`create_veth`] learnt; if
/// it learnt none, it is looked up first (one more round trip).
pub(crate) fn configure_inside(nl: &mut Nl, eth0: Option<u32>, cfg: &Inside<'_>) -> Result<()> {
    let s = cfg.sandbox;
    let ifname = cfg.ifname;
    let eth0_obj = || format!("{ifname} in sandbox {s:?}");
    // Without the echo, eth0's index is looked up, not assumed: the kernel
    // ignores the index asked for a veth peer, and a new namespace may
    // already hold tunnel devices (tunl0, sit0, gre0 when
    // net.core.fb_tunnels_only_for_init_net is 0) that take the low indexes.
    let index = match eth0 {
        Some(i) => i,
        None => index_blocking(nl, ifname, &eth0_obj())?
            .ok_or_else(|| errno_err("get link", &eth0_obj(), Errno::ENODEV))?,
    };
    if cfg.napi_receive {
        // GRO makes eth0's veth receive on a NAPI queue of its own.
        ethtool_set(nl, ifname, ETHTOOL_SGRO, true)
            .map_err(|errno| errno_err("turn GRO on for", &eth0_obj(), errno))?;
    }
    let up = |i: u32| RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(i).up().build());
    let create = NLM_F_CREATE | NLM_F_EXCL;
    // What each request is, for errors: (op, object, EEXIST is fine).
    let mut what: Vec<(&'static str, String, bool)> = Vec::new();
    let mut reqs = Vec::new();
    if cfg.loopback {
        what.push(("set up", format!("lo in sandbox {s:?}"), false));
        reqs.push((up(LO_INDEX), 0));
    }
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
        if !cfg.default_routes {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoData, InfoVeth, LinkFlags};
    use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

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
                ifname: ETH0,
                loopback: true,
                default_routes: true,
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
