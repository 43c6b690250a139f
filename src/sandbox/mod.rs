//! `Sandbox`, the handle to a pod network sandbox: its getters, its phase,
//! joining it (`enter`, `run`), and `Phase` and `SandboxInfo`. Making one
//! is in `builder` and `create`, removing it in `remove`, commands that join
//! it in `command`, its published ports in `publish`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::holder::{Exit, Holder};
use crate::host::NetInner;
use crate::ipam::{Record, Volumes};
use crate::netns::{self, Enter};

mod builder;
mod command;
mod create;
mod files;
mod publish;
mod remove;

pub use builder::SandboxBuilder;
pub use command::Command;
pub(crate) use files::{make_mounts_slaves, NameFiles};

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
    /// Its labels (none if its record or labels cannot be read).
    pub labels: crate::Labels,
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
    /// The mount namespace of this handle's commands, with the sandbox's
    /// DNS files (see `files`), made at the first command: `None` until
    /// then, `Some(None)` if there is none to make (no DNS, or no right).
    command_mounts: Mutex<Option<Option<Arc<std::os::fd::OwnedFd>>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Failed(Exit),
    /// `remove()` has begun: the holder's end is expected, not a failure.
    Removing,
    Removed,
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
                command_mounts: Mutex::new(None),
            }),
            remove_on_drop: false,
        }
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its labels, as the store holds them now (another process may have
    /// changed them).
    ///
    /// # Errors
    /// [`Error::StateCorrupt`] naming the labels file if it is damaged;
    /// [`Error::Io`] if it cannot be read.
    pub fn labels(&self) -> Result<crate::Labels> {
        let owner = format!("{}@{}", self.inner.name, self.inner.id);
        self.inner.net.store.read_labels(&owner)
    }

    /// Replace its labels, for every process of the network at once (one
    /// rename in the store: a reader sees the old labels or the new).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the sandbox was removed; [`Error::Io`] if the
    /// store cannot be written.
    pub async fn set_labels(&self, labels: &crate::Labels) -> Result<()> {
        let store = &self.inner.net.store;
        // Under the lock, so that no removal or gc takes the record away
        // between the look and the write.
        let _lock = store.lock().await?;
        match store.read_record(&self.inner.name)? {
            Some(r) if r.id == self.inner.id => {}
            _ => {
                return Err(Error::NotFound {
                    what: "sandbox",
                    name: self.inner.name.clone(),
                })
            }
        }
        let owner = format!("{}@{}", self.inner.name, self.inner.id);
        let before = store.read_labels(&owner).unwrap_or_default();
        store.write_labels(&owner, labels)?;
        // The policies follow: the address moves between the sets the old
        // and the new labels select it for.
        let addrs = self.inner.addresses();
        let moved = self
            .inner
            .net
            .policy_update(Some((&addrs, &before)), Some((&addrs, labels)));
        if let Err(e) = moved {
            let _ = store.write_labels(&owner, &before);
            return Err(e);
        }
        Ok(())
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
    /// leaves, and can be used from anywhere. Only the network namespace
    /// changes: files the thread reads are the host's, its resolv.conf
    /// too, so look names of the network up with
    /// [`Network::resolve`](crate::Network::resolve).
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
    /// socket, a connection) is returned and usable from any thread. As
    /// with [`enter`](Sandbox::enter), `f` reads the host's files, its
    /// resolv.conf too: see [`Network::resolve`](crate::Network::resolve).
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

    /// This sandbox's DNS files (its own `hostname`, if it has one), or
    /// `None` if the network has no DNS.
    pub(crate) fn name_files(&self, hostname: Option<&str>) -> Option<NameFiles> {
        self.inner.name_files(hostname)
    }
}

impl SbInner {
    /// The mount namespace this handle's commands join, made at the first
    /// call: `None` if the network has no DNS, or if this process may not
    /// make mount namespaces (a warning says so once; the commands then
    /// see the host's files).
    pub(super) fn command_mounts(&self) -> Result<Option<Arc<std::os::fd::OwnedFd>>> {
        let mut slot = self
            .command_mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(known) = &*slot {
            return Ok(known.clone());
        }
        let Some(files) = self.name_files(None) else {
            *slot = Some(None);
            return Ok(None);
        };
        match files::namespace_with(&files) {
            Ok(ns) => {
                let ns = Arc::new(ns);
                *slot = Some(Some(ns.clone()));
                Ok(Some(ns))
            }
            Err(Error::NotPermitted { .. }) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        sandbox = %self.name,
                        "this process may not make mount namespaces: commands in sandboxes \
                         see the host's resolv.conf and /etc/hosts"
                    );
                });
                // Not tried again for each command of this handle.
                *slot = Some(None);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn name_files(&self, hostname: Option<&str>) -> Option<NameFiles> {
        NameFiles::of(&self.net, &self.name, hostname, &self.addresses())
    }

    /// Its addresses, IPv4 first.
    pub(super) fn addresses(&self) -> Vec<IpAddr> {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
            .collect()
    }

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
