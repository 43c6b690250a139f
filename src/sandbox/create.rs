//! Making a sandbox: `create()`, its undo list and the crash points of the
//! `failpoints` feature. The store gives an address, the holder a namespace,
//! `link` wires them. A step that fails unwinds the undo list; a cancelled
//! `create()` unwinds what needs no await (the holder is killed, whereupon
//! the kernel deletes its veth pair with its namespace; the address is released).

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sched::CloneFlags;

use super::builder::SandboxBuilder;
use super::{Sandbox, SbInner, State};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::holder::{self, Holder, HolderSpec, HOLDER_COMM};
use crate::host::NetInner;
use crate::ident::{creator, instance_id, Ident};
use crate::ipam::{Record, RecordFile};
use crate::link::{self, Inside, Veth};
use crate::netns;
use crate::ports;

impl SandboxBuilder {
    /// Make the sandbox: a holder with a fresh network namespace, a veth
    /// pair from its `eth0` to the bridge, an address from each pool (or the
    /// requested one), `lo` and `eth0` up, default routes via the gateways.
    /// Returns once the sandbox is Running and reachable.
    ///
    /// # Errors
    /// Bad input changes nothing: [`Error::InvalidName`], [`Error::InvalidConfig`],
    /// [`Error::AddressNotInPool`], [`Error::AddressTaken`],
    /// [`Error::AlreadyExists`] (a sandbox of that name, or a link with its
    /// veth name), [`Error::PortInUse`] (a host port of a
    /// [`port`](SandboxBuilder::port) mapping is taken),
    /// [`Error::PrivilegedPort`] (one on the real host is privileged there).
    /// [`Error::PoolExhausted`], [`Error::NotPermitted`]. A
    /// failure part-way ([`Error::Netlink`], [`Error::Sys`], [`Error::Io`]
    /// naming the step) undoes what was made before it is returned.
    ///
    /// # Cancel safety
    /// Dropping the future part-way kills the holder (the kernel then
    /// deletes the veth with its namespace) and releases the address and the
    /// record. Only if the process dies meanwhile is anything left, and
    /// then the record names it for gc. Kernel rules of port mappings that
    /// were being added when the future was dropped are deleted once the
    /// kernel has taken them (and would go with the process's table).
    pub async fn create(self) -> Result<Sandbox> {
        let span = tracing::info_span!("podnet.create", sandbox = %self.name);
        tracing::Instrument::instrument(self.create_traced(), span).await
    }

    async fn create_traced(self) -> Result<Sandbox> {
        let (veth, _, _) = self.validate()?;
        let labels = crate::policy::Labels::from_pairs(self.labels.iter().map(|(k, v)| (k, v)))?;
        // Host ports before anything else: a taken one changes nothing.
        // Dropped (closed) if a later step fails or the future is dropped.
        let reserved = ports::reserve(
            &self.net.ports,
            &self.net.port_host(),
            &self.name,
            &self.ports,
        )
        .await?;
        // A port an attachment maps (its rules bind nothing).
        self.net
            .refuse_attachment_ports(&self.name, &reserved.ports())?;
        // Privilege was checked when the network was built; an EPERM from
        // the kernel later still becomes Error::NotPermitted.
        let net = self.net.clone();
        let mut record = Record {
            name: self.name.clone(),
            id: instance_id(),
            creator: creator()?,
            holder: None,
            ipv4: None,
            ipv6: None,
            veth: veth.clone(),
            persistent: self.persistent,
            aliases: self.aliases.clone(),
            attached: None,
        };
        // The holder's clone (a new namespace: the longest step); its child
        // sets itself up and execs while this thread does the store work and
        // the wiring. Its argv names its creator, so gc leaves it alone
        // until the record claims it, while the creator lives.
        let spawning = holder::start(HolderSpec {
            argv: vec![
                HOLDER_COMM.into(),
                net.key.clone(),
                self.name.clone(),
                format!("{}:{}", record.creator.pid, record.creator.start),
            ],
            namespaces: CloneFlags::CLONE_NEWNET | self.extra_namespaces,
            die_with_creator: !self.persistent,
        })?;
        // The record and the reservations are made under the store's lock,
        // so a concurrent gc sees either none of them or a record whose
        // creator is alive (and leaves all of it alone).
        let lock = net.store.lock().await?;
        let file = net.store.create_record(&record)?;
        failpoint("record");
        let mut undo = Undo {
            net: net.clone(),
            name: self.name.clone(),
            id: record.id.clone(),
            veth: None,
            ips: Vec::new(),
            holder: None,
            armed: true,
        };
        if !labels.is_empty() {
            if let Err(e) = net.store.write_labels(&record.owner(), &labels) {
                undo.rollback().await;
                return Err(e);
            }
        }
        match self
            .build(&mut undo, &mut record, &file, lock, spawning)
            .await
        {
            Ok(veth_index) => {
                // The kernel rules of the mappings may still fail: then
                // the sandbox is undone like any other step.
                let started = match &undo.holder {
                    Some(holder) => {
                        ports::start(
                            &net.ports,
                            &ports::Target {
                                name: &self.name,
                                id: &record.id,
                                subnets: net.subnets(),
                                ipv4: record.ipv4,
                                ipv6: record.ipv6,
                                holder_pid: holder.pid(),
                                holder_pidfd: holder.pidfd(),
                            },
                            reserved,
                        )
                        .await
                    }
                    None => Err(Error::sys("create", "holder", Errno::EINVAL)),
                };
                if let Err(e) = started {
                    undo.rollback().await;
                    return Err(e);
                }
                undo.armed = false;
                let holder = undo
                    .holder
                    .take()
                    .ok_or_else(|| Error::sys("create", "holder", Errno::EINVAL))?;
                Ok(Sandbox {
                    inner: Arc::new(SbInner {
                        net,
                        name: self.name,
                        id: record.id,
                        ipv4: record.ipv4,
                        ipv6: record.ipv6,
                        veth,
                        veth_index,
                        holder,
                        state: Mutex::new(State::Running),
                        command_mounts: Mutex::new(None),
                    }),
                    remove_on_drop: self.remove_on_drop,
                })
            }
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
        file: &RecordFile,
        lock: impl Sized,
        spawning: holder::Spawning,
    ) -> Result<Option<u32>> {
        let net = &self.net;
        let name = &self.name;
        let owner = record.owner();
        let (_, want4, want6) = self.validate()?;
        if let Some(pool) = &net.v4 {
            let addr = net.store.allocate_locked(pool, &owner, want4)?;
            undo.ips.push(addr);
            failpoint("address");
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
        // The bridge of the sandbox's shard, made under the lock if it is
        // the shard's first sandbox.
        // The address that decides: the IPv4 one where there are both.
        let addr = record.ipv4.map(IpAddr::V4).or(record.ipv6.map(IpAddr::V6));
        let shard = addr.map_or(0, |a| net.shard_of(a));
        let (bridge, bridge_name) = net.shard_bridge(shard).await?;
        let napi_receive = addr.is_some_and(|a| net.napi_receive(a));
        // The network's egress table, if gc took it away while the network
        // had no sandbox (usually one stat of the store's note).
        net.egress_for_create().await?;
        // The record is not rewritten here: if this process dies before its
        // `done=` line is written, gc releases reservations that no live
        // record owns, kills holders by their argv and deletes the veth the
        // record names.
        drop(lock);
        let holder = spawning.wait().await?;
        let holder_pid = holder.pid();
        let holder_ident = Ident {
            pid: holder_pid.as_raw(),
            start: holder.start_time(),
        };
        let pidfd = holder.pidfd().clone();
        undo.holder = Some(holder);
        failpoint("holder");

        // The veth and the inside, while the holder's child sets itself up
        // and execs alongside (its namespaces exist from the clone on).
        let wired: Result<Option<u32>> = async {
            let veth = Veth {
                host: &record.veth,
                bridge,
                bridge_name: &bridge_name,
                peer_ns: link::PeerNs::Pid(u32::try_from(holder_pid.as_raw()).unwrap_or(0)),
                peer_name: link::ETH0,
                peer_mac: None,
                hairpin: false,
                mtu: self.mtu.or(net.mtu),
                sandbox: name,
                napi_receive,
            };
            let created = link::create_veth(&mut *net.host_nl()?, &veth);
            let made = match created {
                // Our record for this name is fresh, so no live sandbox of this
                // network owns a veth of this name: one on our bridge is left
                // from an earlier sandbox whose namespace the kernel is still
                // tearing down (or a crash). Take it out of the way once.
                Err(Error::AlreadyExists { what: "link", .. })
                    if link::master_of(&net.conn.handle, &record.veth).await? == Some(bridge) =>
                {
                    let object = format!("leftover veth {} on bridge {bridge_name:?}", record.veth);
                    link::delete_link(&net.conn.handle, &record.veth, &object).await?;
                    link::create_veth(&mut *net.host_nl()?, &veth)?
                }
                other => other?,
            };
            undo.veth = Some(record.veth.clone());
            failpoint("veth");

            // A netlink socket is bound to the namespace it is made in: make one
            // inside, on this thread, without yielding while inside.
            let mut inside_nl = {
                let _inside = netns::enter(pidfd.as_fd(), &format!("sandbox {name:?}"))?;
                link::Nl::here()
                    .map_err(|e| Error::io("open netlink socket in sandbox", name, e))?
            };
            let (v4, v6) = net.inside_addresses(record.ipv4, record.ipv6);
            link::configure_inside(
                &mut inside_nl,
                made.eth0,
                &Inside {
                    ipv4: v4,
                    ipv6: v6,
                    sandbox: name,
                    ifname: link::ETH0,
                    loopback: true,
                    default_routes: true,
                    napi_receive,
                },
            )?;
            drop(inside_nl);
            Ok(made.host)
        }
        .await;
        // If the child failed, that is also why a step above failed (no
        // veth goes to a namespace whose holder has exited): its error is
        // the one to give.
        if let Some(holder) = undo.holder.as_mut() {
            holder.started()?;
        }
        let veth_index = wired?;
        failpoint("inside");
        record.holder = Some(holder_ident);
        net.store.set_done(file, record)?;
        failpoint("done");
        // The network's policies take the sandbox in (its addresses into
        // the sets its labels select it for) before any member can run in
        // it: under the lock, after the done line, so a policy change made
        // meanwhile by any process counts it too.
        // Without a policies file, no lock: a policy applied after this
        // look writes the file first and then reads this done record.
        if net.store.has_policies() {
            let labels =
                crate::policy::Labels::from_pairs(self.labels.iter().map(|(k, v)| (k, v)))?;
            let _lock = net.store.lock().await?;
            net.policy_update(None, Some((&record.addresses(), &labels)))?;
        }
        Ok(veth_index)
    }
}

/// What `create()` has made so far, and how to unmake it.
struct Undo {
    net: Arc<NetInner>,
    name: String,
    id: String,
    veth: Option<String>,
    ips: Vec<IpAddr>,
    holder: Option<Holder>,
    armed: bool,
}

impl Undo {
    /// Undo everything, awaiting the veth's deletion so the host is as it
    /// was when this returns. Errors are dropped: the caller reports the
    /// failure that made us roll back.
    async fn rollback(mut self) {
        if let Some(veth) = self.veth.take() {
            let _ = link::delete_link(&self.net.conn.handle, &veth, "").await;
        }
        if let Some(holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait().await;
        }
        self.release_sync();
    }

    fn release_sync(&mut self) {
        if let Some(holder) = self.holder.take() {
            holder.discard();
        }
        let owner = format!("{}@{}", self.name, self.id);
        for ip in self.ips.drain(..) {
            let _ = self.net.store.release(ip, &owner);
        }
        let _ = self.net.store.remove_labels(&owner);
        let _ = self.net.store.remove_record_if(&self.name, &self.id);
        self.armed = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Reached armed only when create() was cancelled mid-way.
        if self.armed {
            self.release_sync();
        }
    }
}
