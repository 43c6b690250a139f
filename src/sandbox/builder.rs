//! `SandboxBuilder`: what a sandbox is asked to be (name, addresses, MTU,
//! persistence, port mappings, a pod's namespaces) and the validation of
//! it, which changes nothing. `create()` is in `create`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::host::NetInner;
use crate::names::{check_mtu, validate_alias, validate_name, IFNAMSIZ_MAX};

/// The most aliases a sandbox may have (its record stays small).
const MAX_ALIASES: usize = 32;
use crate::ports::PortMapping;

/// Configures a sandbox; made by [`Network::sandbox`](crate::Network::sandbox).
#[derive(Debug)]
#[must_use = "a builder does nothing until .create().await"]
pub struct SandboxBuilder {
    pub(super) net: Arc<NetInner>,
    pub(super) name: String,
    ips: Vec<IpAddr>,
    pub(super) mtu: Option<u32>,
    pub(super) persistent: bool,
    pub(super) remove_on_drop: bool,
    /// Namespaces the holder keeps besides the network one (a pod's mount,
    /// UTS and IPC namespaces).
    pub(super) extra_namespaces: CloneFlags,
    pub(super) ports: Vec<PortMapping>,
    pub(super) aliases: Vec<String>,
    pub(super) labels: Vec<(String, String)>,
}

impl SandboxBuilder {
    pub(crate) fn new(net: Arc<NetInner>, name: String) -> SandboxBuilder {
        SandboxBuilder {
            net,
            name,
            ips: Vec::new(),
            mtu: None,
            persistent: false,
            remove_on_drop: false,
            extra_namespaces: CloneFlags::empty(),
            ports: Vec::new(),
            aliases: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Another DNS name of the sandbox (a DNS-1123 label, as podman's
    /// `--network-alias`): on a network with DNS, `<alias>` and
    /// `<alias>.<domain>` resolve to it. Several sandboxes may share one
    /// alias; it then resolves to all of them, in an order that turns
    /// with each query, as a headless Kubernetes service does.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        let alias = alias.into();
        if !self.aliases.contains(&alias) {
            self.aliases.push(alias);
        }
        self
    }

    /// Give the sandbox label `key` = `value` (Kubernetes' syntax: checked
    /// by `create()`, an [`Error::InvalidName`](crate::Error::InvalidName)
    /// naming the bad one). Every process of the network reads a
    /// sandbox's labels from the store; [`Sandbox::set_labels`] changes
    /// them while it runs.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// Publish a port of the sandbox on the network's host namespace, or
    /// on the real host (see [`PortMapping`] and
    /// [`PortMapping::real_host`]). Its host port(s) are bound first thing
    /// in `create()`, so a port that is taken fails the create with
    /// [`Error::PortInUse`] before anything is made. The ports the kernel
    /// chose for host port 0 are in [`Sandbox::ports`](crate::Sandbox::ports).
    pub fn port(mut self, mapping: PortMapping) -> Self {
        self.ports.push(mapping);
        self
    }

    /// Ask for this address instead of the next free one (at most one per
    /// address family). It must be in the network's pool and free.
    pub fn ip(mut self, addr: IpAddr) -> Self {
        self.ips.push(addr);
        self
    }

    /// MTU of the veth pair (default: the network's, else the kernel's).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Whether the holder outlives the process that created the sandbox
    /// (default `false`: it exits when that process exits, which it watches
    /// through a pidfd, so an exec of a new program by that process is no
    /// exit; on aarch64, or where `pidfd_open` is refused, it is killed by a
    /// parent-death signal, which such an exec does fire). A persistent
    /// sandbox stays until it is removed.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Remove the sandbox when its handle is dropped, also while a panic
    /// unwinds: the holder is killed and the address and state released at
    /// once. Inside a tokio runtime, the veth is taken off the bridge and
    /// renamed at once too, as [`remove`](crate::Sandbox::remove) does, and deleted
    /// in the background; outside one, the kernel deletes it with the
    /// namespace.
    pub fn remove_on_drop(mut self, remove: bool) -> Self {
        self.remove_on_drop = remove;
        self
    }

    /// Have the holder keep these namespaces too (for pods).
    pub(crate) fn extra_namespaces(mut self, namespaces: CloneFlags) -> Self {
        self.extra_namespaces = namespaces;
        self
    }

    /// Whether the network has DNS (so pods mount its files).
    pub(crate) fn network_has_dns(&self) -> bool {
        self.net.dns.is_some()
    }

    /// The sandbox's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The network's store directory (pod volumes live under it).
    pub(crate) fn store_dir(&self) -> &Path {
        self.net.store.dir()
    }

    /// Check the name, the requested addresses and the MTU: the host end's
    /// name and the addresses asked for, per family.
    pub(super) fn validate(&self) -> Result<(String, Option<IpAddr>, Option<IpAddr>)> {
        validate_name(&self.name)?;
        let veth = format!("{}-{}", self.name, self.net.tag);
        debug_assert!(veth.len() <= IFNAMSIZ_MAX);
        let (mut want4, mut want6) = (None, None);
        for ip in &self.ips {
            let (slot, pool) = match ip {
                IpAddr::V4(_) => (&mut want4, self.net.v4.as_ref()),
                IpAddr::V6(_) => (&mut want6, self.net.v6.as_ref()),
            };
            let Some(pool) = pool else {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "address {ip}: network {:?} has no pool of that family",
                        self.net.bridge
                    ),
                });
            };
            pool.check(*ip)?;
            if slot.replace(*ip).is_some() {
                return Err(Error::InvalidConfig {
                    reason: format!("more than one address of the family of {ip}"),
                });
            }
        }
        if let Some(mtu) = self.mtu {
            check_mtu(mtu)?;
        }
        if self.aliases.len() > MAX_ALIASES {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "sandbox {:?} has {} aliases, more than {MAX_ALIASES}",
                    self.name,
                    self.aliases.len()
                ),
            });
        }
        for a in &self.aliases {
            validate_alias(a)?;
        }
        Ok((veth, want4, want6))
    }
}
