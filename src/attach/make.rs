//! Making an attachment: the runtime's namespace opened by path (and known
//! from then on by that fd), the interface name checked free inside, a
//! record keyed by (container ID, interface), addresses, a veth pair whose
//! peer goes into the namespace by fd under the asked name, and the inside
//! configured, then its port mappings' rules added. A step that fails
//! undoes the ones before it.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstat, Mode};

use super::{key, record_name, AttachBuilder, Attachment};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::host::NetInner;
use crate::ident::{creator, instance_id};
use crate::ipam::{container_id_ok, netns_path_ok, Attached, Record};
use crate::link::{self, Inside, Nl, PeerNs, Veth};
use crate::names::{check_mtu, validate_alias, validate_ifname};
use crate::netns;
use crate::ports;

impl AttachBuilder {
    /// Attach the namespace: an address from each pool (or the asked
    /// ones), a veth pair from the asked interface inside to the network's
    /// bridge, the interface up with its addresses and (unless turned off)
    /// default routes via the gateways. `lo` is left as it is: the
    /// namespace is the runtime's. The attachment lives until
    /// [`Network::detach`](crate::Network::detach), whichever process
    /// made it; [`Network::gc`](crate::Network::gc) reclaims it only once
    /// its namespace is gone.
    ///
    /// # Errors
    /// Bad input changes nothing: [`Error::InvalidName`] (a container ID
    /// CNI would refuse, an interface name that is not one),
    /// [`Error::InvalidConfig`] (a relative or non-UTF-8 namespace path, a
    /// MAC that is not unicast, an MTU out of range, two addresses of one
    /// family, a port mapping kernel rules cannot serve, see
    /// [`port`](AttachBuilder::port), or one of a family the network has
    /// no pool of), [`Error::NotFound`] (no namespace at that path),
    /// [`Error::AlreadyExists`] (the interface exists inside, or the
    /// attachment is made already), [`Error::AddressNotInPool`],
    /// [`Error::AddressTaken`], [`Error::PoolExhausted`],
    /// [`Error::PortInUse`] (a host port another attachment of the network
    /// maps, or a socket of the host namespace holds, such as a sandbox
    /// mapping's). A failure
    /// part-way ([`Error::Netlink`], [`Error::Sys`], [`Error::Io`] naming
    /// the step) undoes what was made before it is returned.
    pub async fn attach(self) -> Result<Attachment> {
        let span = tracing::info_span!(
            "podnet.attach",
            container = %self.container_id,
            ifname = %self.ifname
        );
        tracing::Instrument::instrument(self.attach_traced(), span).await
    }

    /// The addresses asked for, by family, once checked.
    fn validate(&self) -> Result<(Option<IpAddr>, Option<IpAddr>)> {
        if !container_id_ok(&self.container_id) {
            return Err(Error::InvalidName {
                what: "container ID",
                name: self.container_id.clone(),
                reason: "it must start with a letter or digit and hold only letters, \
                         digits, '_', '.' and '-' (at most 256)"
                    .into(),
            });
        }
        validate_ifname("interface", &self.ifname)?;
        if !netns_path_ok(&self.netns) {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "network namespace path {:?} is not an absolute UTF-8 path without newlines",
                    self.netns
                ),
            });
        }
        if let Some(mtu) = self.mtu {
            check_mtu(mtu)?;
        }
        if let Some(mac) = self.mac {
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(Error::InvalidConfig {
                    reason: format!("MAC address {} is not a unicast address", show_mac(mac)),
                });
            }
        }
        for a in &self.aliases {
            validate_alias(a)?;
        }
        let what = format!("attachment {}", key(&self.container_id, &self.ifname));
        ports::check_rules_only(&what, &self.ports)?;
        for m in &self.ports {
            // `::` takes either family; an address of one needs its pool.
            let served = match m.host_address() {
                IpAddr::V6(a) if a.is_unspecified() => true,
                IpAddr::V6(_) => self.net.v6.is_some(),
                IpAddr::V4(_) => self.net.v4.is_some(),
            };
            if !served {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "port mapping {m} of {what}: network {:?} has no pool of the host \
                         address's family",
                        self.net.bridge
                    ),
                });
            }
        }
        let (mut v4, mut v6) = (None, None);
        for ip in &self.ips {
            let slot = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
            if slot.replace(*ip).is_some() {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "two addresses of one family asked for attachment {}",
                        key(&self.container_id, &self.ifname)
                    ),
                });
            }
        }
        Ok((v4, v6))
    }

    async fn attach_traced(self) -> Result<Attachment> {
        let (want4, want6) = self.validate()?;
        let net = self.net.clone();
        let what = format!("network namespace {}", self.netns.display());
        let ns = open_netns(&self.netns, &what)?;
        let st = fstat(ns.as_fd()).map_err(|errno| Error::sys("stat", what.clone(), errno))?;
        // ADD fails if the interface exists (and this learns that the path
        // is a network namespace: setns refuses anything else).
        let taken = {
            let _inside = netns::enter(ns.as_fd(), &what)?;
            let mut nl = Nl::here().map_err(|e| Error::io("open netlink socket in", &what, e))?;
            link::interface_blocking(&mut nl, &self.ifname, &what)?.is_some()
        };
        if taken {
            return Err(Error::AlreadyExists {
                what: "interface",
                name: format!("{} in {}", self.ifname, self.netns.display()),
            });
        }
        let name = record_name(&self.container_id, &self.ifname);
        let mut record = Record {
            veth: format!("{name}-{}", net.tag),
            name,
            id: instance_id(),
            creator: creator()?,
            holder: None,
            ipv4: None,
            ipv6: None,
            persistent: true,
            aliases: self.aliases.clone(),
            attached: Some(Attached {
                container_id: self.container_id.clone(),
                ifname: self.ifname.clone(),
                netns: self.netns.clone(),
                netns_dev: st.st_dev,
                netns_ino: st.st_ino,
                default_routes: self.default_routes,
                ports: self.ports.iter().map(ports::to_record).collect(),
                done: false,
            }),
        };
        let lock = net.store.lock().await?;
        if !self.ports.is_empty() {
            // Under the lock, so no other attach takes the ports meanwhile,
            // and before the record, which from then on keeps the ports
            // from another attachment (whatever process made it, wherever
            // it crashed) and the table from gc.
            let what = format!("attachment {}", key(&self.container_id, &self.ifname));
            if let Some(taken) = net.attachment_port_taken(&self.ports, Some(&record.name))? {
                return Err(taken.error(&what));
            }
            net.store.note_attach_ports()?;
        }
        let file = match net.store.create_record(&record) {
            Err(Error::AlreadyExists { .. }) => {
                return Err(Error::AlreadyExists {
                    what: "attachment",
                    name: key(&self.container_id, &self.ifname),
                })
            }
            other => other?,
        };
        failpoint("attach-record");
        let mut undo = Undo {
            net: net.clone(),
            name: record.name.clone(),
            id: record.id.clone(),
            veth: None,
            ips: Vec::new(),
            rules: false,
            localnet: false,
            armed: true,
        };
        let made = self
            .build(&mut undo, &mut record, lock, &ns, &what, (want4, want6))
            .await;
        match made {
            Ok(att) => match net.store.set_done(&file, &record) {
                Ok(()) => {
                    failpoint("attach-done");
                    undo.armed = false;
                    Ok(att)
                }
                Err(e) => {
                    undo.rollback().await;
                    Err(e)
                }
            },
            Err(e) => {
                undo.rollback().await;
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        undo: &mut Undo,
        record: &mut Record,
        lock: impl Sized,
        ns: &OwnedFd,
        what: &str,
        (want4, want6): (Option<IpAddr>, Option<IpAddr>),
    ) -> Result<Attachment> {
        let net = &self.net;
        if !self.ports.is_empty() && self.probe_host_ports {
            self.probe_ports()?;
        }
        let owner = record.owner();
        if let Some(pool) = &net.v4 {
            let addr = net.store.allocate_locked(pool, &owner, want4)?;
            undo.ips.push(addr);
            record.ipv4 = match addr {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            };
        }
        if let Some(pool) = &net.v6 {
            let addr = net.store.allocate_locked(pool, &owner, want6)?;
            undo.ips.push(addr);
            record.ipv6 = match addr {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            };
        }
        failpoint("attach-address");
        let addr = record.ipv4.map(IpAddr::V4).or(record.ipv6.map(IpAddr::V6));
        let shard = addr.map_or(0, |a| net.shard_of(a));
        let (bridge, bridge_name) = net.shard_bridge(shard).await?;
        let napi_receive = addr.is_some_and(|a| net.napi_receive(a));
        net.egress_for_create().await?;
        if record.ipv4.is_some() && self.ports.iter().any(ports::needs_localnet) {
            // Under the lock, so no detach or gc turns it off meanwhile:
            // from the record on, it keeps it on. On the network's bridge,
            // whatever the shard: the only one that routes.
            undo.localnet = true;
            net.localnet_on()?;
        }
        drop(lock);

        let veth = Veth {
            host: &record.veth,
            bridge,
            bridge_name: &bridge_name,
            peer_ns: PeerNs::Fd(ns.as_raw_fd()),
            peer_name: &self.ifname,
            peer_mac: self.mac,
            hairpin: self.hairpin,
            mtu: self.mtu.or(net.mtu),
            sandbox: &record.name,
            napi_receive,
        };
        let made = link::create_veth(&mut *net.host_nl()?, &veth)?;
        undo.veth = Some(record.veth.clone());
        failpoint("attach-veth");
        let host = link::interface_blocking(&mut *net.host_nl()?, &record.veth, &record.veth)?;

        let (v4, v6) = net.inside_addresses(record.ipv4, record.ipv6);
        let inside = {
            let _inside = netns::enter(ns.as_fd(), what)?;
            let mut nl = Nl::here().map_err(|e| Error::io("open netlink socket in", what, e))?;
            link::configure_inside(
                &mut nl,
                made.eth0,
                &Inside {
                    ipv4: v4,
                    ipv6: v6,
                    sandbox: &record.name,
                    ifname: &self.ifname,
                    default_routes: self.default_routes,
                    loopback: false,
                    napi_receive,
                },
            )?;
            link::interface_blocking(&mut nl, &self.ifname, what)?
        };
        failpoint("attach-inside");
        if !self.ports.is_empty() {
            let dnats = ports::rule_dnats(
                &record.owner(),
                &self.ports,
                record.ipv4,
                record.ipv6,
                net.subnets(),
                &net.bridge,
            );
            // Set first: a batch whose answer is lost may have been applied.
            undo.rules = true;
            net.add_attachment_rules(dnats).await?;
            failpoint("attach-port-rules");
        }
        if let Some(a) = record.attached.as_mut() {
            a.done = true;
        }
        let Some(a) = &record.attached else {
            return Err(Error::InvalidConfig {
                reason: "an attachment record without its key".into(),
            });
        };
        let mut att = Attachment::from_record(net, record, a);
        att.host_mac = host.map(|f| f.mac);
        att.mac = inside.map(|f| f.mac);
        Ok(att)
    }
}

impl AttachBuilder {
    /// Whether the host ports of the mappings asked for are held by no
    /// socket of the host namespace (a sandbox mapping holds a listening
    /// one on its host port, of this process or another). Called once this
    /// attachment's record is written: a sandbox binds its ports before it
    /// looks at the records, so of the two asking at once one sees the
    /// other.
    fn probe_ports(&self) -> Result<()> {
        let net = &self.net;
        let what = format!("attachment {}", key(&self.container_id, &self.ifname));
        let host = format!("host namespace of network {:?}", net.bridge);
        let _host = netns::enter(net.host_ns.as_fd(), &host)?;
        ports::probe_free(&what, &self.ports, net.v6.is_some())
    }
}

/// Open the namespace at `path`; a missing one is [`Error::NotFound`].
pub(super) fn open_netns(path: &std::path::Path, what: &str) -> Result<OwnedFd> {
    match open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(nix::errno::Errno::ENOENT) => Err(Error::NotFound {
            what: "network namespace",
            name: path.display().to_string(),
        }),
        Err(errno) => Err(Error::sys("open", what.to_owned(), errno)),
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn show_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// What `attach()` has made so far, and how to unmake it.
struct Undo {
    net: Arc<NetInner>,
    name: String,
    id: String,
    veth: Option<String>,
    ips: Vec<IpAddr>,
    /// Whether port rules may have been added.
    rules: bool,
    /// Whether `route_localnet` may have been turned on for it.
    localnet: bool,
    armed: bool,
}

impl Undo {
    /// Undo everything, awaiting the veth's deletion (its peer inside goes
    /// with it). Errors are dropped: the caller reports the failure that
    /// made us roll back.
    async fn rollback(mut self) {
        if self.rules {
            let owner = format!("{}@{}", self.name, self.id);
            let _ = self.net.delete_attachment_rules(move |o| o == owner).await;
        }
        if let Some(veth) = self.veth.take() {
            let _ = link::delete_link(&self.net.conn.handle, &veth, "").await;
        }
        self.release_sync();
        if self.localnet {
            // No record needs it for this attachment now.
            if let Ok(_lock) = self.net.store.lock().await {
                let _ = self.net.localnet_off_unneeded();
            }
        }
    }

    fn release_sync(&mut self) {
        let owner = format!("{}@{}", self.name, self.id);
        for ip in self.ips.drain(..) {
            let _ = self.net.store.release(ip, &owner);
        }
        let _ = self.net.store.remove_record_if(&self.name, &self.id);
        self.armed = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Reached armed only when attach() was cancelled mid-way: the veth,
        // any port rules and a route_localnet turned on are left to gc (its record is gone, its veth's
        // name is the network's, its rules name the record).
        if self.armed {
            self.release_sync();
        }
    }
}
