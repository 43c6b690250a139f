//! The network's shared state in this process: the host namespace, its
//! netlink sockets, the bridges and shards, the port forwarder's slot, the
//! address store, the veth deletions in the background, and gc. Sandboxes
//! and the `Network` facade both build on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::ipam::{Pool, Store};
use crate::link::nft::Nft;
use crate::ports::{self, PortForwarding};
use crate::{link, netns};

pub(crate) mod aports;
pub(crate) mod deletions;
pub(crate) mod egress;
pub(crate) mod gc;
pub(crate) mod localnet;
mod nft_socket;
pub(crate) mod policy;
pub(crate) mod shard;

#[derive(Debug)]
pub(crate) struct NetInner {
    pub bridge: String,
    pub bridge_index: u32,
    pub v4: Option<Pool>,
    pub v6: Option<Pool>,
    pub mtu: Option<u32>,
    /// Two characters derived from the bridge name, suffixed to host-side
    /// interface names so two networks in one namespace do not collide.
    pub tag: String,
    /// Names this network in holders' argv: `netns-<cookie>/<bridge>`.
    pub key: String,
    pub conn: link::Conn,
    /// Blocking host-namespace sockets for the batched requests of
    /// `create()`, one per create in flight (at most `NL_POOL` are kept).
    pub nl_pool: std::sync::Mutex<Vec<link::Nl>>,
    pub store: Store,
    /// The host network namespace, as captured at build time.
    pub host_ns: OwnedFd,
    /// The port forwarder, started with the first port mapping, with the
    /// nf_tables socket that owns this network's table in this process
    /// (kept open as long as the network lives: its table goes with it).
    pub ports: crate::ports::EngineCell,
    /// Kernel or userspace forwarding of published ports.
    pub port_forwarding: PortForwarding,
    /// Bridge indexes of the shards (`k > 0`) this process has seen made.
    pub shards: std::sync::Mutex<std::collections::HashMap<u32, u32>>,
    /// Veth deletions waiting for the one in flight.
    pub deletions: deletions::VethDeletions,
    /// The network's DNS, unless it was built without.
    pub dns: Option<crate::dns::Dns>,
    /// Whether this process's handle asked for egress (its creates make the
    /// egress table if gc took it away).
    pub egress: bool,
    /// The nf_tables socket for the egress table, opened when first used.
    pub egress_nft: std::sync::Mutex<Option<std::sync::Arc<Nft>>>,
    /// The nf_tables socket for the table of attachments' port mappings,
    /// opened when first used.
    pub aports_nft: std::sync::Mutex<Option<std::sync::Arc<Nft>>>,
    /// The nf_tables socket for the policy table, opened when first used.
    pub policy_nft: std::sync::Mutex<Option<std::sync::Arc<Nft>>>,
}

impl NetInner {
    /// What the port forwarder of this network is started with.
    pub(crate) fn port_host(&self) -> ports::Host<'_> {
        ports::Host {
            netns: &self.host_ns,
            bridge: &self.bridge,
            forwarding: self.port_forwarding,
        }
    }

    /// What `link::configure_inside` gives a namespace of addresses
    /// `ipv4`/`ipv6`: each with its pool's prefix and gateway.
    pub(crate) fn inside_addresses(
        &self,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> link::InsideAddresses {
        let v4 = self.v4.as_ref().zip(ipv4).map(|(pool, a)| {
            let gw = match pool.gateway() {
                IpAddr::V4(g) => g,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            (a, pool.prefix(), gw)
        });
        let v6 = self.v6.as_ref().zip(ipv6).map(|(pool, a)| {
            let gw = match pool.gateway() {
                IpAddr::V6(g) => g,
                IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
            };
            (a, pool.prefix(), gw)
        });
        (v4, v6)
    }

    /// The pools' gateways and prefixes (v4, v6).
    pub(crate) fn subnets(&self) -> [Option<(IpAddr, u8)>; 2] {
        [
            self.v4.as_ref().map(|p| (p.gateway(), p.prefix())),
            self.v6.as_ref().map(|p| (p.gateway(), p.prefix())),
        ]
    }

    /// The comments of the port-mapping rules in the network's table, or
    /// `None` without a table (for this crate's tests).
    #[cfg(feature = "internals")]
    pub(crate) async fn port_rules(&self) -> Result<Option<Vec<String>>> {
        let got = self
            .with_nft("list rules", |nft| {
                if !nft.table_exists()? {
                    return Ok(None);
                }
                Ok(Some(nft.list()?.into_iter().map(|f| f.comment).collect()))
            })
            .await?;
        Ok(got.flatten())
    }

    /// Run `f` on a blocking thread with the network's nf_tables socket,
    /// the one that owns its table. `None` if this network has none (no
    /// kernel mapping was made by this process, or nf_tables refused):
    /// then it has no table either.
    pub(crate) async fn with_nft<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Nft) -> std::result::Result<T, Errno> + Send + 'static,
    ) -> Result<Option<T>> {
        let Some(nft) = ports::nft_of(&self.ports) else {
            return Ok(None);
        };
        let object = format!("table inet {} ({what})", nft.table());
        let got = tokio::task::spawn_blocking(move || f(&nft))
            .await
            .unwrap_or(Err(Errno::EINTR));
        got.map(Some).map_err(|errno| Error::Netlink {
            op: "nf_tables",
            object,
            errno,
        })
    }
}

/// How many idle host-namespace netlink sockets a network keeps.
const NL_POOL: usize = 8;

/// A host-namespace netlink socket lent by the network's pool; given back
/// when dropped.
#[derive(Debug)]
pub(crate) struct PooledNl<'a> {
    net: &'a NetInner,
    nl: Option<link::Nl>,
}

impl std::ops::Deref for PooledNl<'_> {
    type Target = link::Nl;
    fn deref(&self) -> &link::Nl {
        self.nl.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledNl<'_> {
    fn deref_mut(&mut self) -> &mut link::Nl {
        self.nl.as_mut().expect("present until drop")
    }
}

impl Drop for PooledNl<'_> {
    fn drop(&mut self) {
        let mut pool = self.net.nl_pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < NL_POOL {
            pool.extend(self.nl.take());
        }
    }
}

impl NetInner {
    /// Delete the veths of removed sandboxes (renamed `<tag>~...`) that
    /// nobody will: those whose remover is dead, and this process's own
    /// that are not queued for deletion (their deletion failed). Those of
    /// a live remover are its own. Returns the names deleted, and the
    /// errors.
    pub(crate) async fn delete_dying_links(&self) -> (Vec<String>, Vec<Error>) {
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        let links =
            match link::links_named(&self.conn.handle, &deletions::dying_prefix(&self.tag)).await {
                Ok(links) => links,
                Err(e) => return (deleted, vec![e]),
            };
        let me = crate::ident::creator().ok();
        for (name, alias) in links {
            let remover = alias.as_deref().and_then(deletions::dying_remover);
            let Some(remover) = remover.filter(|_| deletions::is_dying_name(&self.tag, &name))
            else {
                continue;
            };
            let ours = Some(remover) == me;
            if (ours && deletions::VethDeletions::deleting(&name))
                || (!ours && crate::ident::is_alive(remover.pid, remover.start))
            {
                continue;
            }
            let object = format!("veth {name} of a removed sandbox");
            match link::delete_link(&self.conn.handle, &name, &object).await {
                Ok(true) => deleted.push(name),
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        (deleted, errors)
    }

    /// A netlink socket in the host namespace, from the pool or made anew
    /// (this thread enters the host namespace for the `socket(2)` call).
    pub(crate) fn host_nl(&self) -> Result<PooledNl<'_>> {
        let pooled = self.nl_pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let nl = match pooled {
            Some(nl) => nl,
            None => {
                let what = format!("host namespace of network {:?}", self.bridge);
                let _host = netns::enter(std::os::fd::AsFd::as_fd(&self.host_ns), &what)?;
                link::Nl::here().map_err(|e| Error::io("open netlink socket", what, e))?
            }
        };
        Ok(PooledNl {
            net: self,
            nl: Some(nl),
        })
    }
}
