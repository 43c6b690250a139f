//! The host namespace's default route: which interface it leaves by, and
//! that interface's MTU, the MTU a network takes when none is asked for.

use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::Handle;

use super::nl_err;
use crate::error::Result;

/// The main routing table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u32 = 254;

/// The MTU of the interface the IPv4 default route of `h`'s namespace
/// leaves by (the IPv6 one if there is no IPv4 one); `None` without a
/// default route.
pub(crate) async fn default_route_mtu(h: &Handle) -> Result<Option<u32>> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let routes: Vec<RouteMessage> = h
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("list routes of", "the host namespace", e))?;
        let Some(oif) = routes.iter().find_map(default_oif) else {
            continue;
        };
        let links: Vec<_> = h
            .link()
            .get()
            .match_index(oif)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("get link of the default route", &oif.to_string(), e))?;
        let mtu = links
            .iter()
            .flat_map(|l| &l.attributes)
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            });
        return Ok(mtu);
    }
    Ok(None)
}

/// The output interface of `r` if it is a default route of the main table.
fn default_oif(r: &RouteMessage) -> Option<u32> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if r.header.destination_prefix_length != 0 || table != MAIN_TABLE {
        return None;
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}
