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
        assert!(p.check("10.89.0.2".parse().unwrap()).is_err());
        assert!(p.check("fd00::2".parse().unwrap()).is_err());
        assert!(p.check("10.88.255.254".parse().unwrap()).is_ok());
        let p6 = pool("fd00:88::/64");
        assert!(p6
            .check("fd00:88::ffff:ffff:ffff:ffff".parse().unwrap())
            .is_ok());
    }
}
