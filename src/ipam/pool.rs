//! Pool arithmetic: which addresses of a subnet may be handed out (all but
//! the network address, the gateway and the IPv4 broadcast), the index of
//! each, and the allocation window that grows by regions. No I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::error::{Error, Result};

/// An address pool: every address of `net` except the network address, the
/// gateway (the first address) and, for IPv4, the broadcast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pool {
    net: IpNetwork,
    /// Where the allocation window may end (see [`Pool::with_regions`]).
    regions: Option<(u128, u128)>,
}

impl Pool {
    /// A pool for `net` (normalised to its network address). Refuses pools
    /// with no address left to hand out.
    pub(crate) fn new(net: IpNetwork) -> Result<Pool> {
        let (net, max_prefix) = match net {
            IpNetwork::V4(n) => (
                IpNetwork::V4(
                    ipnetwork::Ipv4Network::new(n.network(), n.prefix()).map_err(|e| {
                        Error::InvalidConfig {
                            reason: format!("pool {net}: {e}"),
                        }
                    })?,
                ),
                30,
            ),
            IpNetwork::V6(n) => (
                IpNetwork::V6(
                    ipnetwork::Ipv6Network::new(n.network(), n.prefix()).map_err(|e| {
                        Error::InvalidConfig {
                            reason: format!("pool {net}: {e}"),
                        }
                    })?,
                ),
                126,
            ),
        };
        if net.prefix() > max_prefix {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "pool {net} is too small: it needs room for the network address, the \
                     gateway and at least one sandbox (a prefix of /{max_prefix} at most)"
                ),
            });
        }
        Ok(Pool { net, regions: None })
    }

    /// Hand addresses out from a window `[first, top)` of the pool that
    /// grows only when every address in it is taken: first to index
    /// `first_end`, then by `step` (to the next multiple of it). Without
    /// regions, the window is the whole pool. So the live sandboxes, not
    /// the creates so far, decide how far into the pool addresses go, and
    /// what the network decides by address (its shards, which sandboxes
    /// receive by NAPI) follows how many sandboxes there are.
    pub(crate) fn with_regions(mut self, first_end: u128, step: u128) -> Pool {
        self.regions = Some((first_end, step.max(1)));
        self
    }

    /// The end (exclusive) of the window that follows one ending at `top`.
    pub(super) fn grow(&self, top: u128) -> u128 {
        let end = self.last().saturating_add(1);
        match self.regions {
            None => end,
            Some((first_end, _)) if top < first_end => first_end.min(end),
            Some((_, step)) => (top / step).saturating_add(1).saturating_mul(step).min(end),
        }
    }

    /// The smallest window that holds index `i` (and the first region).
    pub(super) fn window_for(&self, i: u128) -> u128 {
        let end = self.last().saturating_add(1);
        let mut top = self.grow(self.first());
        while top <= i && top < end {
            top = self.grow(top);
        }
        top
    }

    pub(crate) fn network(&self) -> IpNetwork {
        self.net
    }

    pub(crate) fn prefix(&self) -> u8 {
        self.net.prefix()
    }

    /// The gateway: the first address after the network address.
    pub(crate) fn gateway(&self) -> IpAddr {
        self.nth(1)
    }

    /// Indexes that may be handed out: `first..=last`.
    pub(super) fn first(&self) -> u128 {
        2
    }

    pub(super) fn last(&self) -> u128 {
        let host_bits = u32::from(self.max_prefix() - self.net.prefix());
        let size = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        match self.net {
            IpNetwork::V4(_) => size - 1, // no broadcast
            IpNetwork::V6(_) => size,
        }
    }

    fn max_prefix(&self) -> u8 {
        match self.net {
            IpNetwork::V4(_) => 32,
            IpNetwork::V6(_) => 128,
        }
    }

    /// The address of index `i` (the network address is 0), for `i` at
    /// most [`last`](Pool::last).
    pub(super) fn nth(&self, i: u128) -> IpAddr {
        match self.net {
            // Truncation is fine: i <= last() < 2^32 for an IPv4 pool.
            #[allow(clippy::cast_possible_truncation)]
            IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + i as u32)),
            IpNetwork::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + i)),
        }
    }

    /// The index of `addr` in the pool (the network address is 0).
    pub(crate) fn index_of(&self, addr: IpAddr) -> Option<u128> {
        match (self.net, addr) {
            (IpNetwork::V4(n), IpAddr::V4(a)) if n.contains(a) => {
                Some(u128::from(u32::from(a) - u32::from(n.network())))
            }
            (IpNetwork::V6(n), IpAddr::V6(a)) if n.contains(a) => {
                Some(u128::from(a) - u128::from(n.network()))
            }
            _ => None,
        }
    }

    /// Check that `addr` may be requested as a static address.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<()> {
        let reason = match self.index_of(addr) {
            None => "it is outside the pool",
            Some(0) => "it is the network address",
            Some(1) => "it is the gateway",
            Some(i) if i > self.last() => "it is the broadcast address",
            Some(_) => return Ok(()),
        };
        Err(Error::AddressNotInPool {
            addr,
            pool: self.net,
            reason,
        })
    }

    pub(super) fn family(&self) -> &'static str {
        match self.net {
            IpNetwork::V4(_) => "v4",
            IpNetwork::V6(_) => "v6",
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

    #[test]
    fn pool_bounds() {
        let p = pool("10.88.0.0/30");
        assert_eq!(p.gateway(), "10.88.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((p.first(), p.last()), (2, 2));
        assert!(Pool::new("10.88.0.0/31".parse().unwrap()).is_err());
        assert!(Pool::new("fd00:88::/127".parse().unwrap()).is_err());
        let p = pool("10.88.7.9/16");
        assert_eq!(p.network().to_string(), "10.88.0.0/16");
        assert!(p.check("10.88.0.0".parse().unwrap()).is_err());
        assert!(p.check("10.88.0.1".parse().unwrap()).is_err());
        assert!(p.check("10.88.255.255".parse().unwrap()).is_err());
        assert!(p.check("198.18.0.2".parse().unwrap()).is_err());
        assert!(p.check("fd00::2".parse().unwrap()).is_err());
        assert!(p.check("10.88.255.254".parse().unwrap()).is_ok());
        let p6 = pool("fd00:88::/64");
        assert!(p6
            .check("fd00:88::ffff:ffff:ffff:ffff".parse().unwrap())
            .is_ok());
    }

    /// A subnet with room for an address (a prefix of /30 or /126 at most),
    /// named by any address in it (host bits may be set), small ones often.
    fn subnet() -> impl Strategy<Value = IpNetwork> {
        let v4 = (any::<u32>(), prop_oneof![24u8..=30, 0u8..=30])
            .prop_map(|(a, p)| IpNetwork::new(IpAddr::V4(Ipv4Addr::from(a)), p).unwrap());
        let v6 = (any::<u128>(), prop_oneof![120u8..=126, 0u8..=126])
            .prop_map(|(a, p)| IpNetwork::new(IpAddr::V6(Ipv6Addr::from(a)), p).unwrap());
        prop_oneof![v4, v6]
    }

    /// The end of a first region, or a region's size: small, or anything.
    fn region() -> impl Strategy<Value = u128> {
        prop_oneof![0u128..64, 0u128..4096, any::<u128>()]
    }

    /// An index the pool may hand out, chosen by `x`: near the first, near
    /// the last, or anywhere between.
    fn index(p: &Pool, how: u8, x: u128) -> u128 {
        let (first, last) = (p.first(), p.last());
        let span = last - first;
        match how % 4 {
            0 => first + (x % 8).min(span),
            1 => last - (x % 8).min(span),
            _ => first + x % (span + 1),
        }
    }

    proptest! {
        #[test]
        fn every_index_is_an_address_of_the_subnet_that_maps_back_to_it(
            net in subnet(),
            how in any::<u8>(),
            x in any::<u128>(),
        ) {
            let p = Pool::new(net).unwrap();
            let n = p.network();
            let i = index(&p, how, x);
            let addr = p.nth(i);
            prop_assert!(n.contains(addr), "{} is outside {}", addr, n);
            prop_assert!(net.contains(addr), "{} is outside {}", addr, net);
            prop_assert_ne!(addr, n.network());
            prop_assert_ne!(addr, p.gateway());
            if let IpNetwork::V4(v4) = n {
                prop_assert_ne!(addr, IpAddr::V4(v4.broadcast()));
            }
            prop_assert_eq!(p.index_of(addr), Some(i));
            prop_assert!(p.check(addr).is_ok(), "{}", addr);
        }

        #[test]
        fn the_network_address_the_gateway_and_the_v4_broadcast_are_never_handed_out(
            net in subnet(),
        ) {
            let p = Pool::new(net).unwrap();
            let n = p.network();
            // Normalised to the network address, same prefix.
            prop_assert_eq!(n.network(), net.network());
            prop_assert_eq!(n.prefix(), net.prefix());
            prop_assert_eq!(p.prefix(), net.prefix());
            prop_assert!(1 < p.first() && p.first() <= p.last());
            prop_assert_eq!(p.index_of(n.network()), Some(0));
            prop_assert_eq!(p.index_of(p.gateway()), Some(1));
            prop_assert!(n.contains(p.gateway()));
            let refused = |a: IpAddr| matches!(p.check(a), Err(Error::AddressNotInPool { .. }));
            prop_assert!(refused(n.network()));
            prop_assert!(refused(p.gateway()));
            // The subnet's last address: the broadcast for IPv4, refused;
            // an address like any other for IPv6.
            let top = n.broadcast();
            match n {
                IpNetwork::V4(_) => {
                    prop_assert_eq!(p.index_of(top), Some(p.last() + 1));
                    prop_assert!(refused(top));
                }
                IpNetwork::V6(_) => {
                    prop_assert_eq!(p.index_of(top), Some(p.last()));
                    prop_assert!(p.check(top).is_ok());
                }
            }
        }

        #[test]
        fn addresses_outside_the_subnet_have_no_index_and_are_refused(
            net in subnet(),
            a4 in any::<u32>(),
            a6 in any::<u128>(),
        ) {
            let p = Pool::new(net).unwrap();
            let n = p.network();
            let mut outside = vec![IpAddr::V4(Ipv4Addr::from(a4)), IpAddr::V6(Ipv6Addr::from(a6))];
            // Just below and just above the subnet, and the other family.
            match n {
                IpNetwork::V4(v4) => outside.extend([
                    IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()).wrapping_sub(1))),
                    IpAddr::V4(Ipv4Addr::from(u32::from(v4.broadcast()).wrapping_add(1))),
                    IpAddr::V6(Ipv6Addr::from(u128::from(u32::from(v4.network())) + 2)),
                ]),
                IpNetwork::V6(v6) => outside.extend([
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6.network()).wrapping_sub(1))),
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6.broadcast()).wrapping_add(1))),
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                ]),
            }
            for addr in outside.into_iter().filter(|a| !n.contains(*a)) {
                prop_assert_eq!(p.index_of(addr), None, "{}", addr);
                let refused = matches!(p.check(addr), Err(Error::AddressNotInPool { .. }));
                prop_assert!(refused, "{}", addr);
            }
        }

        #[test]
        fn a_subnet_too_small_for_an_address_is_an_error_not_a_panic(
            a4 in any::<u32>(),
            p4 in 31u8..=32,
            a6 in any::<u128>(),
            p6 in 127u8..=128,
        ) {
            for net in [
                IpNetwork::new(IpAddr::V4(Ipv4Addr::from(a4)), p4).unwrap(),
                IpNetwork::new(IpAddr::V6(Ipv6Addr::from(a6)), p6).unwrap(),
            ] {
                let got = Pool::new(net);
                prop_assert!(matches!(got, Err(Error::InvalidConfig { .. })), "{}: {:?}", net, got);
            }
            // One prefix bit less is a pool of one (IPv4) or two (IPv6) addresses.
            let v4 = IpNetwork::new(IpAddr::V4(Ipv4Addr::from(a4)), 30).unwrap();
            let v4 = Pool::new(v4).unwrap();
            prop_assert_eq!((v4.first(), v4.last()), (2, 2));
            let v6 = IpNetwork::new(IpAddr::V6(Ipv6Addr::from(a6)), 126).unwrap();
            let v6 = Pool::new(v6).unwrap();
            prop_assert_eq!((v6.first(), v6.last()), (2, 3));
        }

        #[test]
        fn windows_grow_by_regions_up_to_the_end_of_the_pool_and_no_further(
            net in subnet(),
            first_end in region(),
            step in region(),
            x in any::<u128>(),
        ) {
            let whole = Pool::new(net).unwrap();
            let (first, end) = (whole.first(), whole.last().saturating_add(1));
            // Without regions, the window is the whole pool at once.
            prop_assert_eq!(whole.grow(first), end);
            let p = whole.with_regions(first_end, step);
            let step = step.max(1);
            // The first window holds the first address.
            let mut top = p.grow(first);
            prop_assert!(first < top && top <= end, "first window {}, end {}", top, end);
            // Each window is larger than the one before, until the pool's end.
            for _ in 0..64 {
                let next = p.grow(top);
                if top == end {
                    prop_assert_eq!(next, end);
                } else {
                    let grew = top < next && next <= end;
                    prop_assert!(grew, "{} grew to {}, end {}", top, next, end);
                }
                top = next;
            }
            // From any window end: to the end of the first region, or to the
            // next multiple of the region size (at most one region on).
            let top = first + x % (end - first + 1);
            let next = p.grow(top);
            if top == end {
                prop_assert_eq!(next, end);
            } else {
                prop_assert!(top < next && next <= end, "{} grew to {}, end {}", top, next, end);
            }
            if top < first_end {
                prop_assert_eq!(next, first_end.min(end));
            } else if next != end {
                prop_assert!(next % step == 0 && next - top <= step, "{} grew to {}", top, next);
            }
        }

        #[test]
        fn window_for_is_the_smallest_window_that_holds_the_index(
            net in subnet(),
            first_end in region(),
            step in region(),
            x in any::<u128>(),
            y in any::<u128>(),
        ) {
            let p = Pool::new(net).unwrap().with_regions(first_end, step);
            let step = step.max(1);
            let (first, end) = (p.first(), p.last().saturating_add(1));
            // Indexes a few hundred regions in at most, so that the walk
            // from the first window stays short.
            let reach = first_end
                .saturating_add(step.saturating_mul(256))
                .clamp(first, p.last());
            let i = first + x % (reach - first + 1);
            let j = first + y % (reach - first + 1);
            let w = p.window_for(i);
            prop_assert!(w <= end, "window {} past the end {}", w, end);
            prop_assert!(i < w || w == end, "window {} does not hold {}", w, i);
            // The first window, or the one that follows a window that does
            // not hold i.
            if w != p.grow(first) {
                let before = first_end.max((w - 1) / step * step);
                prop_assert!(before <= i, "window {} holds {} too", before, i);
                prop_assert_eq!(p.grow(before), w);
            }
            // A higher index never needs a smaller window.
            prop_assert!(p.window_for(i.min(j)) <= p.window_for(i.max(j)));
        }
    }
}
