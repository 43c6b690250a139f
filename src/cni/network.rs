//! The network a CNI configuration describes, as a [`NetworkBuilder`]:
//! what of a `bridge` + `host-local` configuration podnet keeps, and what
//! it refuses (code 2) rather than ignore.

use std::net::IpAddr;

use super::config::NetConf;
use super::error::CniError;
use crate::{Network, NetworkBuilder};

/// The bridge of a configuration that names none, as the reference
/// `bridge` plugin's.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// The network a configuration describes, as a builder.
///
/// # Errors
/// Code 2 for a range podnet cannot keep: two ranges in one set or two
/// sets of one family (podnet has one pool per family), a gateway other
/// than the subnet's first address, a `rangeStart`/`rangeEnd` narrower
/// than the subnet, a route other than a default route.
pub fn network_builder(conf: &NetConf) -> Result<NetworkBuilder, CniError> {
    let bridge = conf.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE);
    let mut b = Network::builder(bridge).dns(false);
    let (mut v4, mut v6) = (false, false);
    for (i, set) in conf.ipam.ranges.iter().enumerate() {
        let field = format!("ipam.ranges[{i}]");
        let [r] = set.as_slice() else {
            return Err(CniError::unsupported_field(
                &field,
                format!("{} ranges", set.len()),
                "podnet allocates from one range per family: a range set of several ranges \
                 is not supported",
            ));
        };
        let seen = if r.subnet.is_ipv4() { &mut v4 } else { &mut v6 };
        if std::mem::replace(seen, true) {
            return Err(CniError::unsupported_field(
                &field,
                r.subnet,
                "podnet allocates from one range per family: a second range set of this \
                 family is not supported",
            ));
        }
        let whole = super::config::Range {
            subnet: r.subnet,
            range_start: None,
            range_end: None,
            gateway: None,
        };
        if r.gateway_or_default() != whole.gateway_or_default() {
            return Err(CniError::unsupported_field(
                &format!("{field}[0].gateway"),
                r.gateway_or_default(),
                format!(
                    "podnet's gateway is the subnet's first address, {}, not {}",
                    whole.gateway_or_default(),
                    r.gateway_or_default()
                ),
            ));
        }
        // The gateway is never handed out, so a range starting right after
        // it spans what podnet allocates from.
        let first_ok = r.range_start.is_none_or(|s| {
            s == whole.first() || Some(s) == next_after(whole.gateway_or_default())
        });
        if !first_ok || r.range_end.is_some_and(|e| e != whole.last()) {
            return Err(CniError::unsupported_field(
                &format!("{field}[0]"),
                format!("{}-{}", r.first(), r.last()),
                "podnet allocates from the whole subnet: rangeStart and rangeEnd narrower \
                 than it are not supported",
            ));
        }
        b = b.subnet(r.subnet);
    }
    for (i, route) in conf.ipam.routes.iter().enumerate() {
        let default = route.dst.prefix() == 0;
        if !default {
            return Err(CniError::unsupported_field(
                &format!("ipam.routes[{i}]"),
                route.dst,
                format!(
                    "podnet routes the pool and, through the gateway, the default route; \
                     route {} is not supported",
                    route.dst
                ),
            ));
        }
    }
    if let Some(mtu) = conf.mtu {
        b = b.mtu(mtu);
    }
    if conf.ip_masq {
        b = b.egress(true).enable_forwarding(true);
    }
    if let Some(dir) = &conf.data_dir {
        b = b.state_dir(dir);
    }
    Ok(b)
}

/// The address after `ip`, if there is one.
fn next_after(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}
