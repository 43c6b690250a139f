//! `Network`, the public handle of one network: its builder, its
//! sandboxes as any process sees them, gc and removal. The host is the
//! network namespace of the thread that builds it, captured as an fd then;
//! nothing assumes other threads are in that namespace.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use crate::attach::{self, AttachBuilder, Attachment};
use crate::error::{Error, Result};
use crate::holder::Holder;
use crate::ipam::{Pool, Store};
use crate::names::{check_mtu, tag, validate_ifname};
use crate::ports::PortForwarding;
use crate::sandbox::{Phase, Sandbox, SandboxBuilder, SandboxInfo};
use crate::{link, netns, rootless};

use crate::host::gc::{self, liveness, Liveness};
pub use crate::host::gc::{Damaged, GcReport};
use crate::host::{egress, NetInner};

/// A network: a Linux bridge in the host namespace with one IPv4 and/or one
/// IPv6 pool, from which sandboxes get their addresses.
///
/// Cloning is cheap and gives another handle to the same network. The
/// netlink connection lives until the last handle (and the last
/// [`Sandbox`](crate::Sandbox) made from it) is dropped. Dropping a network
/// removes nothing: the bridge, the gateway addresses and the sandboxes stay.
///
/// ```no_run
/// # async fn f() -> podnet::Result<()> {
/// let net = podnet::Network::builder("podnet0")
///     .subnet("10.88.0.0/16".parse().unwrap())
///     .subnet("fd00:88::/64".parse().unwrap())
///     .build()
///     .await?;
/// assert_eq!(net.gateways().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Network {
    pub(crate) inner: Arc<NetInner>,
}

/// Configures a [`Network`]; made by [`Network::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .build().await"]
pub struct NetworkBuilder {
    bridge: String,
    subnets: Vec<IpNetwork>,
    state_dir: Option<PathBuf>,
    mtu: Option<u32>,
    port_forwarding: PortForwarding,
    dns: crate::dns::Config,
    egress: bool,
    enable_forwarding: bool,
}

impl Network {
    /// Start configuring the network whose bridge is called `bridge`.
    pub fn builder(bridge: impl Into<String>) -> NetworkBuilder {
        NetworkBuilder {
            bridge: bridge.into(),
            subnets: Vec::new(),
            state_dir: None,
            mtu: None,
            port_forwarding: PortForwarding::Auto,
            dns: crate::dns::Config::default(),
            egress: false,
            enable_forwarding: false,
        }
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.inner.bridge
    }

    /// The pools, IPv4 first.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        self.pools().map(|p| p.network()).collect()
    }

    /// The gateway addresses on the bridge (the first address of each pool), IPv4 first.
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.pools().map(|p| p.gateway()).collect()
    }

    /// Where the network's DNS answers (its gateways, IPv4 first), or
    /// nothing if it was built with `.dns(false)`. A `run()` closure or an
    /// `enter()` guard, which see this process's resolv.conf, can query
    /// these directly.
    pub fn dns_servers(&self) -> Vec<IpAddr> {
        self.inner
            .dns
            .as_ref()
            .map(|d| d.settings.servers.clone())
            .unwrap_or_default()
    }

    /// The network's DNS domain, unless it was built with `.dns(false)`.
    pub fn dns_domain(&self) -> Option<&str> {
        self.inner.dns.as_ref().map(|d| d.settings.domain.as_str())
    }

    /// The addresses that a pod of this network gets for `name` (a
    /// sandbox's name or alias, bare or under the DNS domain): what its DNS
    /// answers now, from the sandboxes of every process, without a packet.
    /// IPv4 first per sandbox; an alias's sandboxes in the order that turns
    /// with each lookup.
    ///
    /// # Errors
    /// [`Error::NotFound`] if no live sandbox has that name, or the network
    /// has no DNS.
    pub fn resolve(&self, name: &str) -> Result<Vec<IpAddr>> {
        let found = self
            .inner
            .dns
            .as_ref()
            .map(|d| d.resolve(name))
            .unwrap_or_default();
        if found.is_empty() {
            return Err(Error::NotFound {
                what: "DNS name",
                name: name.to_owned(),
            });
        }
        Ok(found)
    }

    fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.inner.v4.iter().chain(self.inner.v6.iter())
    }

    /// Remove the network: delete its bridge (if podnet made it: a bridge
    /// that was there before is left alone), this process's nf_tables table
    /// of its port mappings, its table of attachments' port mappings and
    /// its egress table (whoever made them; forwarding is left as it is),
    /// `route_localnet` back off on the bridges where podnet turned it on
    /// for attachments, and its address store (and the state
    /// directory, if that is then empty). Refused while the store
    /// still has sandboxes (remove them first). Other handles to the network
    /// must not be used afterwards.
    ///
    /// It first waits for the veths of sandboxes that this network (any of
    /// its clones) removed to be deleted
    /// ([`Sandbox::remove`](crate::Sandbox::remove) leaves that to the
    /// background), then deletes any that this process failed to delete, or
    /// whose remover died (as [`gc`](Self::gc) does), so when it returns,
    /// nothing of the network is left but the veths that other live
    /// processes are deleting.
    ///
    /// # Errors
    /// [`Error::Busy`] naming the sandboxes left; [`Error::Netlink`] or
    /// [`Error::Io`] naming what could not be deleted, including veths of
    /// removed sandboxes (then nothing else is done).
    ///
    /// # Cancel safety
    /// Idempotent: a cancelled remove can be run again.
    pub async fn remove(&self) -> Result<()> {
        let inner = &self.inner;
        let _lock = inner.store.lock().await?;
        let sandboxes = inner.store.sandbox_names()?;
        if !sandboxes.is_empty() {
            return Err(Error::Busy {
                network: inner.bridge.clone(),
                sandboxes,
            });
        }
        // A removal queues its veth's deletion before it lets go of its
        // record, so with no record left, every deletion is queued: wait
        // for them, then delete what they failed to.
        let _ = inner.deletions.settled(&inner.bridge).await;
        let (_, mut errors) = inner.delete_dying_links().await;
        match errors.len() {
            0 => {}
            1 => return Err(errors.remove(0)),
            _ => {
                return Err(Error::Multiple {
                    op: format!("remove network {:?}", inner.bridge),
                    errors,
                })
            }
        }
        // The policies and their table, whichever process made them.
        inner.store.write_policies(&[])?;
        inner.install_policies(&[])?;
        // The egress table, whichever process made it: no sandbox is left
        // to need it.
        inner.drop_egress().await?;
        // The table of attachments' port mappings, whichever process made
        // it: no attachment is left to have a rule in it.
        inner.drop_attachment_ports().await?;
        // route_localnet on the bridges where podnet turned it on for
        // attachments, none of which is left.
        inner.localnet_off_unneeded()?;
        // This process's nf_tables table of the network's port mappings
        // (its rules went with the sandboxes); it would go when the network
        // is dropped anyway.
        inner
            .with_nft("delete the table of port mappings", |nft| {
                nft.delete_table()
            })
            .await?;
        // The shards are podnet's, whoever made the network's bridge.
        inner.remove_shards().await?;
        // A bridge that was there before podnet came is left as it was found.
        if inner.store.bridge_is_ours() {
            let object = format!("bridge {:?}", inner.bridge);
            link::delete_link(&inner.conn.handle, &inner.bridge, &object).await?;
        }
        inner.store.destroy()
    }

    /// The sandboxes of this network, from any process, with their phase;
    /// attachments ([`attach`](Network::attach)) too, under their store
    /// names (`c` and 11 hex digits), with no holder, Running while their
    /// namespace lives ([`attachments`](Network::attachments) lists them
    /// by their keys).
    ///
    /// # Errors
    /// [`Error::Io`] if the store cannot be listed. A record that cannot be
    /// read is listed with [`Phase::Unknown`].
    pub async fn sandboxes(&self) -> Result<Vec<SandboxInfo>> {
        let store = &self.inner.store;
        let mut out = Vec::new();
        for name in store.sandbox_names()? {
            let (rec, phase) = match liveness(store, &name) {
                Liveness::Live(r) => (Some(r), Phase::Running),
                Liveness::Pending(r) => (Some(r), Phase::Pending),
                Liveness::Gone => continue,
                Liveness::Dead(r) => (Some(r), Phase::Failed),
                Liveness::Corrupt { .. } => (None, Phase::Unknown),
            };
            out.push(SandboxInfo {
                name,
                ipv4: rec.as_ref().and_then(|r| r.ipv4),
                ipv6: rec.as_ref().and_then(|r| r.ipv6),
                holder_pid: rec
                    .as_ref()
                    .and_then(|r| r.holder)
                    .and_then(|h| u32::try_from(h.pid).ok()),
                persistent: rec.as_ref().is_some_and(|r| r.persistent),
                phase,
                labels: rec
                    .as_ref()
                    .and_then(|r| store.read_labels(&r.owner()).ok())
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// A handle for sandbox `name`, made by this process or another one
    /// (for example before a restart): join, phase and remove all work. Its
    /// holder must be alive; a sandbox made by a process that has exited
    /// survives only if it was [`persistent`](SandboxBuilder::persistent).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::HolderDied`] if its holder is gone
    /// ([`gc`](Network::gc) reclaims it); [`Error::StateCorrupt`] naming the
    /// record if it cannot be read.
    pub async fn open_sandbox(&self, name: &str) -> Result<Sandbox> {
        let store = &self.inner.store;
        let not_found = || Error::NotFound {
            what: "sandbox",
            name: name.to_owned(),
        };
        crate::names::validate_name(name).map_err(|_| not_found())?;
        let rec = store.read_record(name)?.ok_or_else(not_found)?;
        // An attachment's namespace is its runtime's: no sandbox to open.
        if rec.attached.is_some() {
            return Err(not_found());
        }
        let Some(ident) = rec.holder else {
            return Err(Error::HolderDied {
                sandbox: name.to_owned(),
                status: "it was never completed (its creator is making it, or died doing so)"
                    .into(),
            });
        };
        match Holder::adopt(nix::unistd::Pid::from_raw(ident.pid), ident.start)? {
            Some(holder) => Ok(Sandbox::from_record(self.inner.clone(), rec, holder)),
            None => Err(Error::HolderDied {
                sandbox: name.to_owned(),
                status: "gone".into(),
            }),
        }
    }

    /// Reclaim what dead holders and crashed callers left behind: sandboxes
    /// whose holder died (their veth, addresses and record), sandboxes whose
    /// creator died half-way, addresses owned by no sandbox, holders and
    /// host-side veths of this network that no live sandbox claims, veths
    /// of removed sandboxes (renamed `<tag>~...`, named in their alias)
    /// whose remover died or whose deletion by this process failed, the
    /// port rules of attachments whose record is gone or whose namespace
    /// died, and the table of attachments' port mappings once no
    /// attachment has one (see [`AttachBuilder::port`]), `route_localnet`
    /// that podnet turned on for attachments none of which needs it any
    /// longer, the network's egress table once no sandbox is left to need it (see
    /// [`NetworkBuilder::egress`]), and temporary files of dead writers. A
    /// live sandbox, or one that a live process is still creating, is never
    /// touched, whichever process owns it.
    ///
    /// An address is released only when no live or pending record owns or
    /// names it, no damaged record may own it, and no live holder of this
    /// network has it on an interface. Store entries that cannot be
    /// believed are left in place and listed in [`GcReport::corrupt`]
    /// (docs/state-and-gc.md says how to clear them).
    ///
    /// # Errors
    /// Every step is attempted; if any fails, [`Error::Multiple`] lists the
    /// failures (what was reclaimed before stays reclaimed).
    ///
    /// # Cancel safety
    /// Each step is idempotent: a cancelled gc can be run again.
    pub async fn gc(&self) -> Result<GcReport> {
        gc::run(&self.inner).await
    }

    /// The directory of this network's store (its records, address
    /// reservations and notes; docs/state-and-gc.md).
    pub fn store_path(&self) -> &std::path::Path {
        self.inner.store.dir()
    }

    /// Start configuring an attachment of the network namespace at
    /// `netns`, which another program made and holds (a container
    /// runtime's, as CNI passes it in `CNI_NETNS`), keyed by
    /// (`container_id`, `ifname`): its interface inside will be called
    /// `ifname`. It is made by [`AttachBuilder::attach`] and lives until
    /// [`detach`](Network::detach), whichever process made it, or until
    /// [`gc`](Network::gc) finds its namespace gone; it shares the pool and
    /// the store with the network's sandboxes.
    pub fn attach(
        &self,
        container_id: impl Into<String>,
        ifname: impl Into<String>,
        netns: impl Into<PathBuf>,
    ) -> AttachBuilder {
        AttachBuilder::new(
            self.inner.clone(),
            container_id.into(),
            ifname.into(),
            netns.into(),
        )
    }

    /// End the attachment keyed (`container_id`, `ifname`): the rules of
    /// its port mappings, its veth pair (if its namespace still holds it),
    /// its addresses and its record, in that order. `Ok(false)` if there
    /// was none, so that a second call succeeds too. A record that cannot
    /// be read is ended all the same, by the names its key gives.
    ///
    /// # Errors
    /// [`Error::Netlink`] if the rules or the veth cannot be deleted (then
    /// nothing after is done), [`Error::Io`] if the store cannot be
    /// written.
    pub async fn detach(&self, container_id: &str, ifname: &str) -> Result<bool> {
        attach::detach(&self.inner, container_id, ifname).await
    }

    /// The attachment keyed (`container_id`, `ifname`), checked against the
    /// kernel: its namespace is the one attached, the interface is in it
    /// with its addresses (and default routes, if it got them), the host
    /// end is on a bridge of the network, and every rule of its port
    /// mappings is in the network's table of attachments' mappings.
    ///
    /// # Errors
    /// [`Error::NotFound`] if there is no such attachment; [`Error::Broken`]
    /// listing everything that is missing.
    pub async fn check_attachment(&self, container_id: &str, ifname: &str) -> Result<Attachment> {
        attach::check(&self.inner, container_id, ifname).await
    }

    /// The completed attachments of the network, made by any process (as
    /// their records say; [`check_attachment`](Network::check_attachment)
    /// looks at the kernel).
    ///
    /// # Errors
    /// [`Error::Io`] if the store cannot be listed.
    pub fn attachments(&self) -> Result<Vec<Attachment>> {
        attach::list(&self.inner)
    }

    /// End every attachment whose key is not in `keep` (CNI's GC with its
    /// `cni.dev/valid-attachments`), port rules first, as
    /// [`detach`](Network::detach) does; the keys of those it ended.
    /// Sandboxes are not touched.
    ///
    /// # Errors
    /// Every attachment is attempted; [`Error::Multiple`] lists the
    /// failures.
    pub async fn retain_attachments(
        &self,
        keep: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        attach::retain(&self.inner, keep).await
    }

    /// Start configuring a sandbox called `name` on this network.
    ///
    /// `name` must be a DNS-1123 label (lowercase letters, digits and `-`,
    /// starting and ending with a letter or digit) of at most 12 characters,
    /// so the host end of its veth pair (`<name>-<2 chars>`) fits IFNAMSIZ.
    /// It is checked by `create()`.
    pub fn sandbox(&self, name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder::new(self.inner.clone(), name.into())
    }
}

impl NetworkBuilder {
    /// Add an address pool: one IPv4 and/or one IPv6 network. The first
    /// address is the gateway (on the bridge); sandboxes get the others.
    pub fn subnet(mut self, subnet: IpNetwork) -> Self {
        self.subnets.push(subnet);
        self
    }

    /// Keep the address store under `dir` instead of the default
    /// (`$PODNET_STATE_DIR` if set, else `/run/podnet` as root, else
    /// `$XDG_RUNTIME_DIR/podnet`, else `/tmp/podnet-<uid>`). It is made 0700
    /// if missing, must belong to us, and is removed by [`Network::remove`]
    /// once empty. A relative `dir` is taken from the working directory at
    /// `build()`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// MTU of the bridge and, unless a sandbox says otherwise, of every veth.
    ///
    /// Unset, it is the MTU of the interface the host namespace's default
    /// route leaves by, as netavark does: pods then send what the way out
    /// carries (65520 behind pasta, whose interface has that MTU); without
    /// a default route, the kernel's 1500.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// How published ports are forwarded: by the kernel's nf_tables DNAT
    /// where the host namespace allows it, else by podnet's userspace
    /// forwarder (the default, [`PortForwarding::Auto`]); by the kernel
    /// only ([`PortForwarding::Kernel`], which makes a mapping fail if
    /// nf_tables refuses); or by the forwarder only
    /// ([`PortForwarding::Userspace`]). The kernel's rules are in a table
    /// owned by this process, which the kernel deletes when the process
    /// exits; `docs/port-forwarding.md` says what they ask of the host.
    pub fn port_forwarding(mut self, how: PortForwarding) -> Self {
        self.port_forwarding = how;
        self
    }

    /// Whether the network has DNS (the default): its pods' names, and
    /// forwarding of other names, on the gateway addresses' port 53, and a
    /// resolv.conf and /etc/hosts naming them in every sandbox.
    /// docs/dns.md says how it works.
    pub fn dns(mut self, enabled: bool) -> Self {
        self.dns.enabled = enabled;
        self
    }

    /// The search domain of the network's pods: `<name>.<domain>` resolves
    /// as `<name>` does. Default [`DEFAULT_DOMAIN`](crate::DEFAULT_DOMAIN).
    pub fn dns_domain(mut self, domain: impl Into<String>) -> Self {
        self.dns.domain = domain.into();
        self
    }

    /// Where names other than the pods' are forwarded; default the host's
    /// `/etc/resolv.conf` ([`DnsUpstream::HostResolvConf`](crate::DnsUpstream)).
    pub fn dns_upstream(mut self, upstream: crate::DnsUpstream) -> Self {
        self.dns.upstream = upstream;
        self
    }

    /// Let the network's pods reach destinations beyond the host (default
    /// off). Traffic from the pools to anything outside them is
    /// masqueraded to the address of the host's interface it leaves by;
    /// pod-to-pod and pod-to-host traffic keep their addresses. The rules
    /// are in the nf_tables table `inet podnet-<bridge>-egress`, shared by
    /// every process of the network and kept while it has sandboxes
    /// (persistent ones too); gc and [`Network::remove`] delete it once no
    /// sandbox needs it.
    ///
    /// It needs IP forwarding on in the host namespace for each family of
    /// the pools (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`):
    /// `build()` fails with [`Error::ForwardingOff`] if it is off, unless
    /// [`enable_forwarding`](Self::enable_forwarding) lets podnet turn it
    /// on. Off by default because it changes how the host treats traffic
    /// that is not its own; docs/egress.md says what it does, and about
    /// the host's own firewall.
    ///
    /// `egress(false)` asks for nothing: it does not take away a table that
    /// another process of the network made.
    pub fn egress(mut self, enabled: bool) -> Self {
        self.egress = enabled;
        self
    }

    /// With [`egress`](Self::egress): let `build()` turn on IP forwarding
    /// in the host namespace where it is off (default: fail instead). It
    /// does so as its last step, once everything else is made, so a build
    /// that fails leaves forwarding as it found it; podnet never turns it
    /// off, since other networks and programs of the host may rely on it
    /// from the moment it is on.
    pub fn enable_forwarding(mut self, enable: bool) -> Self {
        self.enable_forwarding = enable;
        self
    }

    /// Validate, then make sure the bridge exists and is up with the gateway
    /// addresses, and open the address store.
    ///
    /// The calling thread's network namespace becomes the host of this
    /// network. A bridge of that name is reused if it exists (it is then
    /// left as it is, but for being set up); a link of another kind under
    /// that name is refused.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidConfig`] for bad input, before
    /// anything is made; [`Error::NotPermitted`] without privilege;
    /// [`Error::NotABridge`]; [`Error::ForwardingOff`] with egress, before
    /// anything is made, and [`Error::Uplink`] with egress in a rootless
    /// host whose uplink has ended (see [`rootless::uplink`]); [`Error::Netlink`] or [`Error::Io`] naming what
    /// failed (then what this build made is undone, and forwarding is as
    /// it was).
    ///
    /// # Cancel safety
    /// Each step is idempotent: a cancelled build can be run again. A
    /// build with egress cancelled in its last step may leave the egress
    /// table, which gc deletes while the network has no sandbox.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub async fn build(self) -> Result<Network> {
        let span = tracing::info_span!("podnet.network.build", bridge = %self.bridge);
        tracing::Instrument::instrument(self.build_traced(), span).await
    }

    async fn build_traced(self) -> Result<Network> {
        validate_ifname("bridge", &self.bridge)?;
        let (mut v4, mut v6) = (None, None);
        for subnet in &self.subnets {
            let slot = if subnet.is_ipv4() { &mut v4 } else { &mut v6 };
            if slot.is_some() {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "more than one {} pool",
                        if subnet.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                });
            }
            // Addresses go no further into the pool than the sandboxes
            // need: to the first NAPI one, then a shard at a time.
            *slot = Some(
                Pool::new(*subnet)?
                    .with_regions(crate::host::shard::NAPI_FROM, crate::host::shard::SPAN),
            );
        }
        if v4.is_none() && v6.is_none() {
            return Err(Error::InvalidConfig {
                reason: format!("network {:?} has no subnet: call .subnet()", self.bridge),
            });
        }
        if let Some(mtu) = self.mtu {
            check_mtu(mtu)?;
        }
        if self.dns.enabled {
            crate::dns::validate_domain(&self.dns.domain)?;
        }
        rootless::check_privilege(&format!("build network {:?}", self.bridge))?;
        crate::holder::prepare()?;
        crate::ident::creator()?;

        let host_ns = netns::thread_netns()?;
        let host_key = format!("netns-{}", netns::netns_cookie()?);
        // Before anything is made (and before the first await: this thread
        // is still in the host namespace, whose /proc/sys/net it reads).
        if self.egress {
            // A way out that has ended: say so now, not as pods that hang.
            rootless::uplink()?;
            egress::check_forwarding(
                &self.bridge,
                v4.is_some(),
                v6.is_some(),
                self.enable_forwarding,
            )?;
        }
        // Absolute, so that a command spawned with another working
        // directory (or in a pod's mount namespace) finds the same store.
        let root = self.state_dir.unwrap_or_else(crate::paths::default_root);
        let root = std::path::absolute(&root)
            .map_err(|e| Error::io("make the state directory absolute", &root, e))?;
        // Netlink first, the store last, so bad input (a non-bridge of that
        // name) leaves nothing behind; a bridge made here goes if a later
        // step fails.
        let conn = link::connect()?;
        let nl = link::Nl::here().map_err(|e| Error::io("open netlink socket", "", e))?;
        // Unset: the MTU of the interface the host's default route leaves
        // by, as netavark does (behind pasta, its 65520), else the kernel's.
        let mtu = match self.mtu {
            Some(mtu) => Some(mtu),
            None => link::default_route_mtu(&conn.handle)
                .await?
                .filter(|m| check_mtu(*m).is_ok()),
        };
        let (bridge_index, created) =
            link::ensure_bridge(&conn.handle, &self.bridge, None, mtu).await?;
        let object = format!("bridge {:?}", self.bridge);
        let rest = async {
            for pool in v4.iter().chain(v6.iter()) {
                link::ensure_address(
                    &conn.handle,
                    bridge_index,
                    pool.gateway(),
                    pool.prefix(),
                    &object,
                )
                .await?;
            }
            let store = Store::open(&root, &host_key, &self.bridge)?;
            store.forget_earlier_boot().await?;
            if created {
                store.mark_bridge_ours()?;
            }
            Ok(store)
        };
        let store = match rest.await {
            Ok(store) => store,
            Err(e) => {
                if created {
                    let _ = link::delete_link(&conn.handle, &self.bridge, &object).await;
                }
                return Err(e);
            }
        };
        let dns = if self.dns.enabled {
            let scope = crate::dns::Scope {
                bridge: self.bridge.clone(),
                bridge_index,
                gateways: v4.iter().chain(v6.iter()).map(Pool::gateway).collect(),
                pools: v4.iter().chain(v6.iter()).map(Pool::network).collect(),
            };
            match crate::dns::Dns::start(&self.dns, scope, &store) {
                Ok(dns) => Some(dns),
                Err(e) => {
                    if created {
                        let object = format!("bridge {:?}", self.bridge);
                        let _ = link::delete_link(&conn.handle, &self.bridge, &object).await;
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        let net = Network {
            inner: Arc::new(NetInner {
                key: format!("{host_key}/{}", self.bridge),
                tag: tag(&self.bridge),
                bridge: self.bridge,
                bridge_index,
                v4,
                v6,
                mtu,
                conn,
                nl_pool: std::sync::Mutex::new(vec![nl]),
                store,
                host_ns,
                ports: Default::default(),
                port_forwarding: self.port_forwarding,
                shards: Default::default(),
                deletions: Default::default(),
                dns,
                egress: self.egress,
                egress_nft: Default::default(),
                aports_nft: Default::default(),
                policy_nft: Default::default(),
            }),
        };
        if !net.inner.egress {
            return Ok(net);
        }
        match net.inner.build_egress(self.enable_forwarding).await {
            Ok(()) => Ok(net),
            Err(e) => {
                let inner = &net.inner;
                if created {
                    let object = format!("bridge {:?}", inner.bridge);
                    let _ = link::delete_link(&inner.conn.handle, &inner.bridge, &object).await;
                }
                Err(e)
            }
        }
    }
}
