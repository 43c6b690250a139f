//! Sharding a network over several bridges (a bridge takes at most 1,023
//! ports): the address decides the shard, shard `k` hangs off shard
//! `(k - 1) / 2` by a veth trunk, and all of them are one Ethernet segment.
//! docs/architecture.md ("Shards", "Broadcast floods") says why.

use std::net::IpAddr;

use crate::error::Result;
use crate::host::NetInner;
use crate::link;

/// Addresses of the pool per shard: with three trunk ports, a bridge is
/// then at most full (1,023 ports).
pub(crate) const SPAN: u128 = 1020;
// No bridge holds more than 1,023 ports: SPAN sandboxes at most (fewer on
// shard 0), a trunk to the parent and two to children.
const _: () = assert!(SPAN + 3 <= 1023);

/// Shards at most (the tree is then 10 deep).
const MAX: u128 = 1024;

/// Sandboxes from this address of the pool on receive by NAPI: with at
/// most this many ports flooding into the CPU's backlog, a flood stays
/// under its 1,000 packets.
pub(crate) const NAPI_FROM: u128 = 900;

/// The shard a trunk joins shard `k > 0` to.
fn parent(k: u32) -> u32 {
    (k - 1) / 2
}

/// Names of shard `k`'s links.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Names {
    pub bridge: String,
    pub parent_end: String,
    pub shard_end: String,
}

/// The names of shard `k > 0` of network `bridge`: `<base>.<k>`, where the
/// base is the network's name if the longest (`<base>.<k>p`) fits IFNAMSIZ,
/// and else its start and the two characters of its tag (a hash of the
/// whole name), so two long names with one start do not share shards.
pub(crate) fn names(bridge: &str, k: u32) -> Names {
    let suffix = format!(".{k}");
    let room = crate::names::IFNAMSIZ_MAX - suffix.len() - 1;
    let base = if bridge.len() <= room {
        bridge.to_owned()
    } else {
        let mut cut = room - 2;
        while !bridge.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}{}", &bridge[..cut], crate::names::tag(bridge))
    };
    let base = format!("{base}{suffix}");
    Names {
        parent_end: format!("{base}p"),
        shard_end: format!("{base}s"),
        bridge: base,
    }
}

/// The alias of shard `k` of the network keyed `key`; the prefix of every
/// shard's alias without `k`.
pub(crate) fn alias(key: &str, k: Option<u32>) -> String {
    match k {
        Some(k) => format!("podnet {key} shard {k}"),
        None => format!("podnet {key} shard "),
    }
}

impl NetInner {
    /// The shard of `addr`, an address of one of the network's pools (the
    /// IPv4 one decides where a sandbox has both).
    pub(crate) fn shard_of(&self, addr: IpAddr) -> u32 {
        // The modulo keeps it below MAX.
        #[allow(clippy::cast_possible_truncation)]
        let k = (self.pool_index(addr) / SPAN % MAX) as u32;
        k
    }

    /// Whether the sandbox of `addr` receives by NAPI (see
    /// [`link::Veth::napi_receive`]): past the first `NAPI_FROM` addresses
    /// of the pool. The ports of the first ones, the only ones that use the
    /// CPU's backlog, are then too few for a flood to overflow it, however
    /// many sandboxes the network holds; and the sandboxes of a small
    /// network keep TSO on their host port (receiving bulk TCP by NAPI
    /// costs throughput: the host port segments what GRO then merges again).
    pub(crate) fn napi_receive(&self, addr: IpAddr) -> bool {
        self.pool_index(addr) >= NAPI_FROM
    }

    fn pool_index(&self, addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(_) => self.v4.as_ref().and_then(|p| p.index_of(addr)),
            IpAddr::V6(_) => self.v6.as_ref().and_then(|p| p.index_of(addr)),
        }
        .unwrap_or(0)
    }

    /// Index and name of shard `k`'s bridge, made (with its trunk, and its
    /// parents) if it is not there yet. Call it under the store's lock: two
    /// processes never make one shard at once.
    ///
    /// # Cancel safety
    /// A cancelled call may leave a shard's bridge without its trunk; the
    /// next call mends it.
    pub(crate) async fn shard_bridge(&self, k: u32) -> Result<(u32, String)> {
        if k == 0 {
            return Ok((self.bridge_index, self.bridge.clone()));
        }
        let known = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .copied();
        let names = names(&self.bridge, k);
        if let Some(index) = known {
            return Ok((index, names.bridge));
        }
        let (parent_index, _) = Box::pin(self.shard_bridge(parent(k))).await?;
        let h = &self.conn.handle;
        let (index, made) =
            link::ensure_bridge(h, &names.bridge, Some(&alias(&self.key, Some(k))), self.mtu)
                .await?;
        let trunk = link::Trunk {
            parent_end: &names.parent_end,
            parent: parent_index,
            shard_end: &names.shard_end,
            shard: index,
            mtu: self.mtu,
        };
        if let Err(e) = link::ensure_trunk(h, &trunk).await {
            if made {
                let _ = link::delete_link(h, &names.parent_end, "").await;
                let _ = link::delete_link(h, &names.bridge, "").await;
            }
            return Err(e);
        }
        // A network with policies has every bridge call netfilter
        // (host::policy); a new shard too (this runs under the lock).
        if made && self.store.has_policies() {
            if let Err(e) = link::call_netfilter(h, index, &names.bridge).await {
                let _ = link::delete_link(h, &names.parent_end, "").await;
                let _ = link::delete_link(h, &names.bridge, "").await;
                return Err(e);
            }
        }
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, index);
        Ok((index, names.bridge))
    }

    /// Every bridge of the network (its own first, then the shards found in
    /// the namespace by their alias): shard number, index and name.
    pub(crate) async fn all_bridges(&self) -> Result<Vec<(u32, u32, String)>> {
        let prefix = alias(&self.key, None);
        let mut out = vec![(0, self.bridge_index, self.bridge.clone())];
        for (index, name, alias) in link::bridges_with_alias(&self.conn.handle, &prefix).await? {
            if let Some(k) = alias[prefix.len()..].parse::<u32>().ok().filter(|k| *k > 0) {
                out.push((k, index, name));
            }
        }
        Ok(out)
    }

    /// The indexes of every bridge of the network ([`Self::all_bridges`]
    /// without the shard numbers and names): what a veth's controller is
    /// checked against to tell this network's veths from another's.
    pub(crate) async fn bridge_indexes(&self) -> Result<Vec<u32>> {
        Ok(self
            .all_bridges()
            .await?
            .into_iter()
            .map(|(_, index, _)| index)
            .collect())
    }

    /// Delete every shard of the network (trunk and bridge), for
    /// [`Network::remove`](crate::Network::remove), once no sandbox is left.
    pub(crate) async fn remove_shards(&self) -> Result<()> {
        let h = &self.conn.handle;
        for (k, _, name) in self.all_bridges().await? {
            if k == 0 {
                continue;
            }
            let names = names(&self.bridge, k);
            let object = format!("trunk {} of network {:?}", names.parent_end, self.bridge);
            link::delete_link(h, &names.parent_end, &object).await?;
            let object = format!("bridge {name:?}, shard {k} of network {:?}", self.bridge);
            link::delete_link(h, &name, &object).await?;
            self.shards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_differ_per_shard() {
        let n = names("podnet0", 3);
        assert_eq!(n.bridge, "podnet0.3");
        assert_eq!(n.parent_end, "podnet0.3p");
        assert_eq!(n.shard_end, "podnet0.3s");
        for bridge in ["a", "podnet0", "a23456789012345"] {
            for k in [1, 9, 10, 99, 100, 1023] {
                let n = names(bridge, k);
                assert!(n.parent_end.len() <= crate::names::IFNAMSIZ_MAX, "{n:?}");
                assert!(n.bridge.ends_with(&format!(".{k}")), "{n:?}");
                assert_ne!(names(bridge, k + 1).bridge, n.bridge);
            }
        }
        // Long names that start alike get shards of their own.
        assert_ne!(
            names("podnet-tenant-a", 1).bridge,
            names("podnet-tenant-b", 1).bridge
        );
    }

    #[test]
    fn shards_form_a_binary_tree() {
        assert_eq!((parent(1), parent(2), parent(3), parent(6)), (0, 0, 1, 2));
    }

    #[test]
    fn aliases_parse_back() {
        let prefix = alias("netns-1/podnet0", None);
        let a = alias("netns-1/podnet0", Some(12));
        assert_eq!(a[prefix.len()..].parse::<u32>(), Ok(12));
        // Another network's alias does not start with this prefix.
        assert!(!alias("netns-1/podnet00", Some(1)).starts_with(&prefix));
    }
}
