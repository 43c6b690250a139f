//! `Sandbox`: making one (holder, veth, address, routes), joining it
//! (commands, closures on a thread, a guard for the current thread), its
//! phase, and removing it.
//!
//! Data flows one way: the network's store gives an address, the holder
//! gives a namespace, `link` wires it. `create()` keeps an undo list and
//! unwinds it when a step fails; a cancelled `create()` unwinds what can be
//! undone without awaiting (the holder is killed, whereupon the kernel
//! deletes its veth pair with its namespace; the address is released).

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::holder::{self, Exit, Holder, HolderSpec, HOLDER_COMM};
use crate::host::{reaper, NetInner};
use crate::ident::{creator, Ident};
use crate::ipam::{Record, RecordFile, Volumes};
use crate::link::{self, Inside, Unplugged, Veth};
use crate::names::{check_mtu, validate_name, IFNAMSIZ_MAX};
use crate::netns::{self, Enter};
use crate::ports::{self, PortMapping, PublishedPort};

/// Where a sandbox (or a pod) is in its life, as Kubernetes names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Being made.
    Pending,
    /// The holder is alive: the sandbox can be joined.
    Running,
    /// Removed on request.
    Succeeded,
    /// The holder died. A failed sandbox is never resurrected: remove it and
    /// create a new one.
    Failed,
    /// The state cannot be determined.
    Unknown,
}

/// What [`Network::sandboxes`](crate::Network::sandboxes) knows of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxInfo {
    /// Its name.
    pub name: String,
    /// Its IPv4 address, if it has one yet.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address, if it has one yet.
    pub ipv6: Option<Ipv6Addr>,
    /// PID of its holder, once it has one.
    pub holder_pid: Option<u32>,
    /// Whether its holder outlives its creator.
    pub persistent: bool,
    /// Pending while its creator is still making it; Running while its
    /// holder lives; Failed if the holder died or its creator died half-way
    /// (gc reclaims it); Unknown if its record cannot be read.
    pub phase: Phase,
}

/// Configures a sandbox; made by [`Network::sandbox`](crate::Network::sandbox).
#[derive(Debug)]
#[must_use = "a builder does nothing until .create().await"]
pub struct SandboxBuilder {
    net: Arc<NetInner>,
    name: String,
    ips: Vec<IpAddr>,
    mtu: Option<u32>,
    persistent: bool,
    remove_on_drop: bool,
    /// Namespaces the holder keeps besides the network one (a pod's mount,
    /// UTS and IPC namespaces).
    extra_namespaces: CloneFlags,
    ports: Vec<PortMapping>,
}

/// A pod network sandbox: a network namespace held by a holder process,
/// wired to the network's bridge, with its own address(es).
///
/// Processes join it with [`command`](Sandbox::command), closures with
/// [`run`](Sandbox::run), the current thread with [`enter`](Sandbox::enter).
/// Everything that joins shares its `lo`, its addresses and its port space.
///
/// # Drop
/// Dropping a `Sandbox` removes nothing and never blocks: the holder, the
/// veth and the address stay until [`remove`](Sandbox::remove) (runtimes
/// keep sandboxes beyond the life of a handle). Unless the sandbox was made
/// [`persistent`](SandboxBuilder::persistent), the holder dies with the
/// process that created it, which takes the namespace and the veth pair with
/// it. Test harnesses that want a sandbox cleaned up even when a test panics
/// ask for [`remove_on_drop`](SandboxBuilder::remove_on_drop).
#[derive(Debug)]
pub struct Sandbox {
    inner: Arc<SbInner>,
    remove_on_drop: bool,
}

#[derive(Debug)]
struct SbInner {
    net: Arc<NetInner>,
    name: String,
    /// Tells this sandbox from others of the same name, before or after it.
    id: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    veth: String,
    /// Index of the veth's host end, if the kernel told it at create.
    veth_index: Option<u32>,
    holder: Holder,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Failed(Exit),
    /// `remove()` has begun: the holder's end is expected, not a failure.
    Removing,
    Removed,
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
        }
    }

    /// Publish a port of the sandbox on the network's host namespace (see
    /// [`PortMapping`]). Its host port(s) are bound first thing in
    /// `create()`, so a port that is taken fails the create with
    /// [`Error::PortInUse`] before anything is made. The ports the kernel
    /// chose for host port 0 are in [`Sandbox::ports`].
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
    /// renamed at once too, as [`remove`](Sandbox::remove) does, and deleted
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

    /// The sandbox's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The network's store directory (pod volumes live under it).
    pub(crate) fn store_dir(&self) -> &Path {
        self.net.store.dir()
    }

    fn validate(&self) -> Result<(String, Option<IpAddr>, Option<IpAddr>)> {
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
        Ok((veth, want4, want6))
    }

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
    /// [`port`](SandboxBuilder::port) mapping is taken).
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
        let (veth, _, _) = self.validate()?;
        // Host ports before anything else: a taken one changes nothing.
        // Dropped (closed) if a later step fails or the future is dropped.
        let reserved = ports::reserve(
            &self.net.ports,
            &self.net.port_host(),
            &self.name,
            &self.ports,
        )
        .await?;
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
                holder_pid: u32::try_from(holder_pid.as_raw()).unwrap_or(0),
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
            let v4 = net.v4.as_ref().zip(record.ipv4).map(|(pool, a)| {
                let gw = match pool.gateway() {
                    IpAddr::V4(g) => g,
                    IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                };
                (a, pool.prefix(), gw)
            });
            let v6 = net.v6.as_ref().zip(record.ipv6).map(|(pool, a)| {
                let gw = match pool.gateway() {
                    IpAddr::V6(g) => g,
                    IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
                };
                (a, pool.prefix(), gw)
            });
            link::configure_inside(
                &mut inside_nl,
                made.eth0,
                &Inside {
                    ipv4: v4,
                    ipv6: v6,
                    sandbox: name,
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
        Ok(veth_index)
    }
}

/// Die here with SIGKILL if `PODNET_FAILPOINT` names this step, stop with
/// SIGSTOP if it is `stop:<step>` (a create caught in progress, until the
/// test sends SIGCONT or SIGKILL), or panic if it is `panic:<step>` (a
/// task that fails): crash tests (the `failpoints` feature, enabled for
/// this crate's own tests only).
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint(step: &str) {
    use nix::sys::signal::{raise, Signal};
    let Ok(want) = std::env::var("PODNET_FAILPOINT") else {
        return;
    };
    if want == step {
        let _ = raise(Signal::SIGKILL);
    } else if want.strip_prefix("stop:") == Some(step) {
        let _ = raise(Signal::SIGSTOP);
    } else if want.strip_prefix("panic:") == Some(step) {
        panic!("failpoint {step}");
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn failpoint(_step: &str) {}

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

/// A fresh id for a sandbox instance: unique per process by a counter, and
/// across processes by the PID and the clock.
fn instance_id() -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{:x}-{seq:x}", std::process::id(), nanos)
}

impl Sandbox {
    /// A handle for a sandbox made by another process (or an earlier one),
    /// from its record and its adopted holder.
    pub(crate) fn from_record(net: Arc<NetInner>, record: Record, holder: Holder) -> Sandbox {
        Sandbox {
            inner: Arc::new(SbInner {
                net,
                name: record.name,
                id: record.id,
                ipv4: record.ipv4,
                ipv6: record.ipv6,
                veth: record.veth,
                veth_index: None,
                holder,
                state: Mutex::new(State::Running),
            }),
            remove_on_drop: false,
        }
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its address: the IPv4 one if the network has an IPv4 pool, else the IPv6 one.
    pub fn ip(&self) -> IpAddr {
        self.inner
            .ipv4
            .map(IpAddr::V4)
            .or(self.inner.ipv6.map(IpAddr::V6))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Its IPv4 address, if the network has an IPv4 pool.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.inner.ipv4
    }

    /// Its IPv6 address, if the network has an IPv6 pool.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.inner.ipv6
    }

    /// The gateway of [`ip`](Sandbox::ip): the bridge's address in that pool.
    pub fn gateway(&self) -> IpAddr {
        let net = &self.inner.net;
        match self.ip() {
            IpAddr::V4(_) => net.v4.as_ref(),
            IpAddr::V6(_) => net.v6.as_ref(),
        }
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.gateway())
    }

    /// The host end of its veth pair (`<name>-<2 chars>`, on the bridge).
    pub fn host_interface(&self) -> &str {
        &self.inner.veth
    }

    /// PID of the holder process.
    pub fn holder_pid(&self) -> u32 {
        u32::try_from(self.inner.holder.pid().as_raw()).unwrap_or(0)
    }

    /// A path to its network namespace, for tools that take one
    /// (`nsenter --net=PATH`, `ip netns attach`). Valid while the holder lives.
    pub fn netns_path(&self) -> std::path::PathBuf {
        format!("/proc/{}/ns/net", self.inner.holder.pid()).into()
    }

    /// Where the sandbox is in its life. Never blocks: a holder that has
    /// died is seen at once (its pidfd is polled) and the phase is then
    /// Failed for good.
    pub fn phase(&self) -> Phase {
        self.inner.phase()
    }

    /// Wait until the sandbox leaves Running: its holder died (Failed) or it
    /// was removed (Succeeded). Returns the phase it reached.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> Phase {
        // Removed (or being removed): its holder may still be ending in
        // the background (see `remove`), but the sandbox is gone.
        if matches!(*self.inner.lock_state(), State::Removing | State::Removed) {
            return Phase::Succeeded;
        }
        match self.inner.holder.wait().await {
            Ok(exit) => self.inner.record_exit(exit),
            Err(_) => Phase::Unknown,
        }
    }

    /// Move the current thread into the sandbox until the guard is dropped.
    ///
    /// Everything the thread does meanwhile (binding sockets, connecting)
    /// happens inside; sockets made inside stay inside when the thread
    /// leaves, and can be used from anywhere.
    ///
    /// ```no_run
    /// # fn f(pod: &podnet::Sandbox) -> podnet::Result<()> {
    /// let listener = {
    ///     let _inside = pod.enter()?;
    ///     std::net::TcpListener::bind("127.0.0.1:8080").unwrap()
    /// }; // the thread is back; the listener stays in the sandbox
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::HolderDied`] if the sandbox has Failed; [`Error::NotFound`]
    /// once removed; [`Error::NotPermitted`].
    pub fn enter(&self) -> Result<Enter> {
        self.inner.check_alive()?;
        netns::enter(
            self.inner.holder.pidfd().as_fd(),
            &format!("sandbox {:?}", self.inner.name),
        )
        .map_err(|e| self.inner.holder_error(e))
    }

    /// Run `f` on a new OS thread inside the sandbox and return its value.
    ///
    /// The thread exists only for `f`. What `f` makes inside (a listening
    /// socket, a connection) is returned and usable from any thread.
    ///
    /// ```no_run
    /// # async fn f(pod: &podnet::Sandbox) -> podnet::Result<()> {
    /// let listener = pod.run(|| std::net::TcpListener::bind("0.0.0.0:9000")).await?.unwrap();
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`enter`](Sandbox::enter).
    ///
    /// # Panics
    /// A panic in `f` is resumed in the caller.
    ///
    /// # Cancel safety
    /// Dropping the future does not stop `f`; its value is then dropped.
    pub async fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.check_alive()?;
        netns::run_inside(
            self.inner.holder.pidfd().clone(),
            format!("sandbox {:?}", self.inner.name),
            f,
        )
        .await
        .map_err(|e| self.inner.holder_error(e))
    }

    /// A command whose process joins the sandbox: a
    /// [`tokio::process::Command`] that calls `setns(2)` between fork and
    /// exec.
    ///
    /// ```no_run
    /// # async fn f(pod: &podnet::Sandbox) -> podnet::Result<()> {
    /// let out = pod.command("cat").arg("/proc/net/dev").output().await?;
    /// assert!(String::from_utf8_lossy(&out.stdout).contains("eth0"));
    /// # Ok(()) }
    /// ```
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_string_lossy().into_owned(),
            inner: tokio::process::Command::new(program),
            sandbox: self.inner.clone(),
            joins_in_child: false,
        }
    }

    /// A command whose child joins these namespaces of the holder (a
    /// pod's); after joining a mount namespace it changes back to the
    /// directory it was in (this process's, or the one set with
    /// `current_dir`), looked up again inside.
    pub(crate) fn command_joining(
        &self,
        program: impl AsRef<OsStr>,
        namespaces: CloneFlags,
    ) -> Command {
        let program_name = program.as_ref().to_string_lossy().into_owned();
        let mut inner = tokio::process::Command::new(program);
        netns::join_with_on_exec(
            &mut inner,
            self.inner.holder.pidfd().clone(),
            netns::JoinSpec {
                namespaces,
                cwd: namespaces
                    .contains(CloneFlags::CLONE_NEWNS)
                    .then_some(netns::Cwd::Keep),
                die_with: None,
            },
        );
        Command {
            inner,
            program: program_name,
            sandbox: self.inner.clone(),
            joins_in_child: true,
        }
    }

    /// The holder's pidfd, which names its namespaces.
    pub(crate) fn pidfd(&self) -> Arc<std::os::fd::OwnedFd> {
        self.inner.holder.pidfd().clone()
    }

    /// Where this sandbox instance keeps its pod volumes: removed with the
    /// sandbox, and by gc once the sandbox is gone.
    pub(crate) fn volumes_dir(&self) -> std::path::PathBuf {
        Volumes::of(self.inner.net.store.dir())
            .dir(&format!("{}@{}", self.inner.name, self.inner.id))
    }

    /// Publish a port of the running sandbox on the network's host namespace
    /// (see [`PortMapping`]), and return what was published, one entry per
    /// port, with the ports the kernel chose for host port 0.
    ///
    /// Connections to the host port are forwarded to the sandbox's address
    /// (the one of the host address's family if it has one) by the kernel
    /// (nf_tables DNAT rules) or by podnet's userspace forwarder in this
    /// process, as the network's
    /// [`port_forwarding`](crate::NetworkBuilder::port_forwarding) and the
    /// host namespace allow; [`PublishedPort::forwarder`] says which. The
    /// host port is bound by this process either way. The mapping ends with
    /// [`remove_port`](Sandbox::remove_port), [`remove`](Sandbox::remove),
    /// the death of the holder, or this process.
    ///
    /// ```no_run
    /// # async fn f(pod: &podnet::Sandbox) -> podnet::Result<()> {
    /// let published = pod.add_port(podnet::PortMapping::tcp(0, 80)).await?;
    /// println!("curl http://{}/", published[0].host);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Nothing changes on error: [`Error::InvalidConfig`] for a bad mapping;
    /// [`Error::PortInUse`] if a host port is taken (ports of the same
    /// mapping bound before it are closed again); [`Error::NotPermitted`]
    /// for a port below 1024 without `CAP_NET_BIND_SERVICE` over the host
    /// namespace; [`Error::Sys`] naming the address for other bind
    /// failures (`EADDRNOTAVAIL`: not an address of the host namespace);
    /// [`Error::HolderDied`], [`Error::NotFound`] as for [`enter`](Sandbox::enter);
    /// [`Error::Netlink`] naming the nf_tables operation if the kernel
    /// refuses the rules with [`PortForwarding::Kernel`](crate::PortForwarding::Kernel),
    /// or fails them with an errno that is not a refusal (with
    /// [`PortForwarding::Auto`](crate::PortForwarding::Auto), a refusal
    /// leaves the ports to the userspace forwarder instead).
    ///
    /// # Cancel safety
    /// Dropping the future before it completes closes the ports bound so
    /// far and publishes nothing; kernel rules that were being added are
    /// deleted once the kernel has taken them.
    pub async fn add_port(&self, mapping: PortMapping) -> Result<Vec<PublishedPort>> {
        self.inner.check_alive()?;
        let net = &self.inner.net;
        let reserved = ports::reserve(
            &net.ports,
            &net.port_host(),
            &self.inner.name,
            std::slice::from_ref(&mapping),
        )
        .await?;
        ports::start(
            &net.ports,
            &ports::Target {
                name: &self.inner.name,
                id: &self.inner.id,
                subnets: net.subnets(),
                ipv4: self.inner.ipv4,
                ipv6: self.inner.ipv6,
                holder_pid: self.inner.holder.pid(),
                holder_pidfd: self.inner.holder.pidfd(),
            },
            reserved,
        )
        .await
    }

    /// Stop publishing `port` (one entry of [`ports`](Sandbox::ports)):
    /// its kernel rules are deleted, then its host socket and its
    /// connections closed; returns once they are.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it is not published for this sandbox.
    /// [`Error::Netlink`] if its kernel rules could not be deleted (tried
    /// three times): the mapping is ended all the same, and the rules are
    /// left in this process's table until [`gc`](crate::Network::gc), the
    /// drop of the network, or the end of the process, whichever comes
    /// first.
    ///
    /// # Cancel safety
    /// The mapping is ended when the call starts; a dropped future only
    /// stops waiting for its rules to be deleted and its sockets closed.
    pub async fn remove_port(&self, port: &PublishedPort) -> Result<()> {
        if ports::end_one(&self.inner.net.ports, &self.inner.id, port).await? {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "published port",
                name: format!("{port} of sandbox {:?}", self.inner.name),
            })
        }
    }

    /// The ports published for this sandbox by this process, in the order
    /// they were added. Mappings are served by the process that made them,
    /// so a handle from [`open_sandbox`](crate::Network::open_sandbox) in
    /// another process sees none of them.
    pub fn ports(&self) -> Vec<PublishedPort> {
        ports::list(&self.inner.net.ports, &self.inner.id)
    }

    /// Remove the sandbox: delete the veth pair, release the address(es)
    /// and the state, and stop the holder. Idempotent, and fine on a Failed
    /// sandbox. The name and the address can be used again when it returns.
    ///
    /// The veth pair is not waited for: the kernel takes ~20 ms to delete
    /// one, nearly all of it waiting for the network stack to let go. It is
    /// taken off the bridge, set down (so the sandbox's `eth0` has no
    /// carrier and nothing reaches it or leaves it) and renamed
    /// `<tag>~<12 hex digits>` before this returns, then deleted in the
    /// background, in one kernel operation with the other removals' veths
    /// that queued meanwhile. [`Network::remove`](crate::Network::remove)
    /// waits for those deletions; [`Network::gc`](crate::Network::gc)
    /// deletes any that a process did not live to finish.
    ///
    /// A holder that dies with this process (not
    /// [`persistent`](SandboxBuilder::persistent)) is killed and reaped in
    /// the background, with those of other removals: 100 ms after the last
    /// removal, or once 64 are waiting. So it may still run, in a namespace
    /// with `lo` and an `eth0` without carrier until its veth is deleted,
    /// when this returns; ending each at once would have
    /// the kernel destroy their namespaces one by one, in the way of the
    /// veth deletions (README "How it is built"). Any other holder is stopped
    /// before this returns.
    ///
    /// Processes that joined the sandbox are not killed; they are left with
    /// a namespace whose `eth0` has no carrier, and then only `lo`.
    ///
    /// # Errors
    /// Every step is attempted; if any fails, [`Error::Multiple`] lists them
    /// all and the sandbox stays as it was for the steps that failed (call
    /// `remove` again; but not for the veth, once the record is released:
    /// it is left to the end of the namespace, or to `gc`). A veth whose
    /// deletion in the background fails is deleted again by
    /// [`Network::remove`](crate::Network::remove) (or `gc`), which reports
    /// it only if that fails too. Objects already gone count as removed. Port
    /// mappings are the exception: they end whatever happens, and kernel
    /// rules that could not be deleted are left to
    /// [`gc`](crate::Network::gc) or to the end of the process, which takes
    /// its table with it.
    ///
    /// # Cancel safety
    /// Each step is idempotent: a cancelled remove can be run again.
    pub async fn remove(&self) -> Result<()> {
        self.inner.remove().await
    }

    /// [`remove`](Self::remove), the veth deleted before this returns: for
    /// rollbacks, which leave the host as they found it.
    pub(crate) async fn remove_now(&self) -> Result<()> {
        self.inner.remove_now().await
    }
}

/// When a removal's veth is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deletion {
    /// Before the removal returns.
    Now,
    /// In the background, once it is off the bridge, down and renamed.
    Background,
}

impl SbInner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> Phase {
        let state = *self.lock_state();
        match state {
            State::Removed | State::Removing => Phase::Succeeded,
            State::Failed(_) => Phase::Failed,
            State::Running => match self.holder.try_exit() {
                Ok(None) => Phase::Running,
                Ok(Some(exit)) => self.record_exit(exit),
                Err(_) => Phase::Unknown,
            },
        }
    }

    /// The holder ended with `exit`: the sandbox has Failed, unless it was
    /// removed on purpose.
    fn record_exit(&self, exit: Exit) -> Phase {
        let mut state = self.lock_state();
        match *state {
            State::Removed | State::Removing => Phase::Succeeded,
            State::Failed(_) => Phase::Failed,
            State::Running => {
                *state = State::Failed(exit);
                Phase::Failed
            }
        }
    }

    /// An error from joining: if the holder is gone, say so.
    fn holder_error(&self, e: Error) -> Error {
        if e.errno() == Some(Errno::ESRCH) || self.phase() == Phase::Failed {
            let status = match *self.lock_state() {
                State::Failed(exit) => exit.to_string(),
                _ => "gone".into(),
            };
            return Error::HolderDied {
                sandbox: self.name.clone(),
                status,
            };
        }
        e
    }

    async fn remove(&self) -> Result<()> {
        self.remove_with(Deletion::Background).await
    }

    /// [`remove`](Self::remove), the veth deleted before this returns
    /// (a rollback leaves the host as it found it).
    pub(crate) async fn remove_now(&self) -> Result<()> {
        self.remove_with(Deletion::Now).await
    }

    async fn remove_with(&self, deletion: Deletion) -> Result<()> {
        {
            let mut state = self.lock_state();
            match *state {
                State::Removed => return Ok(()),
                State::Running => *state = State::Removing,
                State::Failed(_) | State::Removing => {}
            }
        }
        // Port mappings first, so no new connection is forwarded to a
        // sandbox being taken down; returns once their sockets are closed.
        let mut errors: Vec<Error> = ports::end_all(&self.net.ports, &self.id)
            .await
            .err()
            .into_iter()
            .collect();
        // The veth is touched only while the name is still ours (it is
        // found by name unless this handle made it): a stale handle must
        // not take down a later sandbox of the same name. (Ours then goes
        // with our holder's namespace.)
        let ours = self.record_is_ours();
        if ours && deletion == Deletion::Now {
            let object = format!("veth {} of sandbox {:?}", self.veth, self.name);
            if let Err(e) = link::delete_link(&self.net.conn.handle, &self.veth, &object).await {
                errors.push(e);
            }
        } else if ours {
            // Off the bridge, down and renamed now; deleted in the background.
            let object = format!("veth {} of sandbox {:?}", self.veth, self.name);
            let h = &self.net.conn.handle;
            let deleted = match self.unplug(&object) {
                Ok(Unplugged::Renamed | Unplugged::Gone) => Ok(()),
                // Then it is deleted now, as it is.
                Ok(Unplugged::Stuck(index)) => {
                    link::delete_link_index(h, index, &object).await.map(drop)
                }
                Err(e) => match link::delete_link(h, &self.veth, &object).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(e),
                },
            };
            errors.extend(deleted.err());
        }
        // The namespace, and a holder that dies with this process anyway,
        // outlive the removal for a moment (netns::bury): namespaces are
        // destroyed in batches, and no holder's exit is in the way of the
        // veth deletions. Any other holder is ended now.
        let what = format!("sandbox {:?}", self.name);
        let ns = netns::netns_of(self.holder.pidfd().as_fd(), &what).ok();
        let later = self.holder.end_later();
        if later.is_none() {
            let ended = match self.holder.kill() {
                Ok(()) => self.holder.wait().await,
                Err(e) => Err(e),
            };
            match ended {
                Ok(exit) => {
                    self.record_exit(exit);
                }
                Err(e) => errors.push(e),
            }
        }
        errors.extend(self.release_state().err());
        netns::bury(ns, later);
        if errors.is_empty() {
            *self.lock_state() = State::Removed;
            Ok(())
        } else {
            Err(Error::Multiple {
                op: format!("remove sandbox {:?}", self.name),
                errors,
            })
        }
    }

    /// Whether the store's record of this name is still this sandbox's.
    fn record_is_ours(&self) -> bool {
        matches!(self.net.store.read_record(&self.name), Ok(Some(r)) if r.id == self.id)
    }

    /// Take the veth off the bridge, down and renamed (a blocking request
    /// of well under a millisecond), and queue its deletion by the new name.
    fn unplug(&self, object: &str) -> Result<Unplugged> {
        let dying = reaper::dying_name(&self.net.tag);
        let alias = reaper::dying_alias(creator()?);
        let mut nl = self.net.host_nl()?;
        let unplugged =
            link::unplug_blocking(&mut nl, &self.veth, self.veth_index, &dying, &alias, object)?;
        if unplugged == Unplugged::Renamed {
            let object = format!(
                "veth {dying} (was {}) of removed sandbox {:?}",
                self.veth, self.name
            );
            self.net.delete_veth_later(dying, object);
        }
        Ok(unplugged)
    }

    /// Release the address(es) and the record; synchronous and quick.
    fn release_state(&self) -> Result<()> {
        let store = &self.net.store;
        let owner = format!("{}@{}", self.name, self.id);
        let ips = self
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6));
        let mut errors: Vec<Error> = ips
            .filter_map(|ip| store.release(ip, &owner).err())
            .collect();
        errors.extend(Volumes::of(store.dir()).remove(&owner).err());
        errors.extend(store.remove_record_if(&self.name, &self.id).err());
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple {
                op: format!("release state of sandbox {:?}", self.name),
                errors,
            }),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.remove_on_drop || *self.inner.lock_state() == State::Removed {
            return;
        }
        // Nothing here may wait: take the veth off the bridge (one quick
        // request; its deletion goes to the background) if there is a
        // runtime for that, then kill, release the files, and leave the
        // rest (an await) to a task. Without a runtime, the veth goes with
        // the holder's namespace. (Unplugged first, as remove() does: once
        // the holder is killed, the kernel may delete the veth with the
        // namespace before it is renamed and queued.)
        let inner = &self.inner;
        let rt = tokio::runtime::Handle::try_current();
        if rt.is_ok() && inner.record_is_ours() {
            let object = format!("veth {} of sandbox {:?}", inner.veth, inner.name);
            let _ = inner.unplug(&object);
        }
        let _ = inner.holder.kill();
        ports::abort_all(&inner.net.ports, &inner.id);
        let _ = inner.release_state();
        match rt {
            Ok(rt) => {
                let inner = inner.clone();
                rt.spawn(async move { inner.remove().await });
            }
            Err(_) => *inner.lock_state() = State::Removed,
        }
    }
}

/// A [`tokio::process::Command`] whose child joins a sandbox; made by
/// [`Sandbox::command`]. The methods mirror tokio's; [`inner_mut`](Command::inner_mut)
/// reaches the rest.
///
/// The child is spawned from the calling thread moved into the sandbox's
/// network namespace for the call (and back), so it starts there with no
/// hook between fork and exec, and std spawns it as fast as any command
/// (`posix_spawn`). Once [`inner_mut`](Command::inner_mut) has been called,
/// the child joins in a `pre_exec` hook instead, so the tokio command joins
/// however it is spawned.
#[derive(Debug)]
pub struct Command {
    inner: tokio::process::Command,
    program: String,
    sandbox: Arc<SbInner>,
    /// Whether the child joins in a `pre_exec` hook (pod members, which
    /// join a mount namespace too, and commands whose `inner_mut` was
    /// taken) rather than by being spawned from inside.
    joins_in_child: bool,
}

impl Command {
    /// Add an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.inner.arg(arg);
        self
    }

    /// Add arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    /// Set an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> &mut Self {
        self.inner.env(key, val);
        self
    }

    /// Set environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.inner.envs(vars);
        self
    }

    /// Remove an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.inner.env_remove(key);
        self
    }

    /// Start from an empty environment.
    pub fn env_clear(&mut self) -> &mut Self {
        self.inner.env_clear();
        self
    }

    /// Working directory of the child.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.inner.current_dir(dir);
        self
    }

    /// The child's stdin.
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stdin(cfg);
        self
    }

    /// The child's stdout.
    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stdout(cfg);
        self
    }

    /// The child's stderr.
    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stderr(cfg);
        self
    }

    /// Kill the child when its [`tokio::process::Child`] is dropped.
    pub fn kill_on_drop(&mut self, kill: bool) -> &mut Self {
        self.inner.kill_on_drop(kill);
        self
    }

    /// Run the child as user `id` (it joins the sandbox first). Not for a
    /// pod's [`command`](crate::Pod::command) nor after
    /// [`inner_mut`](Command::inner_mut): their child joins in a `pre_exec`
    /// hook, std switches identity before such hooks run, and the join
    /// would then fail with EPERM.
    pub fn uid(&mut self, id: u32) -> &mut Self {
        self.inner.uid(id);
        self
    }

    /// Run the child as group `id`; as [`uid`](Command::uid).
    pub fn gid(&mut self, id: u32) -> &mut Self {
        self.inner.gid(id);
        self
    }

    /// Put the child in process group `pgroup` (0: a new group, led by it).
    pub fn process_group(&mut self, pgroup: i32) -> &mut Self {
        self.inner.process_group(pgroup);
        self
    }

    /// The wrapped tokio command, for everything else (more `pre_exec`
    /// hooks, which run after the sandbox is joined). From this call on the
    /// child joins in a `pre_exec` hook, so the tokio command joins the
    /// sandbox however it is spawned; it then starts by fork and exec,
    /// not `posix_spawn`, and may not switch `uid` or `gid`.
    pub fn inner_mut(&mut self) -> &mut tokio::process::Command {
        if !self.joins_in_child {
            netns::join_on_exec(&mut self.inner, self.sandbox.holder.pidfd().clone());
            self.joins_in_child = true;
        }
        &mut self.inner
    }

    fn spawn_error(&self, e: std::io::Error) -> Error {
        let e = Error::io("spawn in sandbox", &self.program, e);
        self.sandbox.holder_error(e)
    }

    /// `f` (a spawn of the tokio command), from this thread moved into the
    /// sandbox for the call unless the child joins by itself.
    fn spawn_inside<T>(&mut self, f: impl FnOnce(&mut tokio::process::Command) -> T) -> Result<T> {
        self.sandbox.check_alive()?;
        if self.joins_in_child {
            return Ok(f(&mut self.inner));
        }
        let what = format!("sandbox {:?}", self.sandbox.name);
        let _inside = netns::enter(self.sandbox.holder.pidfd().as_fd(), &what)
            .map_err(|e| self.sandbox.holder_error(e))?;
        Ok(f(&mut self.inner))
    }

    /// Start the child inside the sandbox.
    ///
    /// # Errors
    /// [`Error::HolderDied`] if the sandbox has Failed; [`Error::Io`] naming
    /// the program if it cannot be started.
    pub fn spawn(&mut self) -> Result<tokio::process::Child> {
        self.spawn_inside(tokio::process::Command::spawn)?
            .map_err(|e| self.spawn_error(e))
    }

    /// Run the child to completion, collecting its output.
    ///
    /// # Errors
    /// As [`spawn`](Command::spawn).
    pub async fn output(&mut self) -> Result<Output> {
        // tokio spawns the child when output() is called, not when polled.
        let running = self.spawn_inside(tokio::process::Command::output)?;
        running.await.map_err(|e| self.spawn_error(e))
    }

    /// Run the child to completion and return its exit status.
    ///
    /// # Errors
    /// As [`spawn`](Command::spawn).
    pub async fn status(&mut self) -> Result<ExitStatus> {
        let running = self.spawn_inside(tokio::process::Command::status)?;
        running.await.map_err(|e| self.spawn_error(e))
    }
}

impl SbInner {
    fn check_alive(&self) -> Result<()> {
        match self.phase() {
            Phase::Failed => Err(self.holder_error(Error::sys("join", &self.name, Errno::ESRCH))),
            Phase::Succeeded => Err(Error::NotFound {
                what: "sandbox",
                name: self.name.clone(),
            }),
            _ => Ok(()),
        }
    }
}
