//! Port mappings: an address and port of the network's host namespace
//! forwarded to a port of a sandbox, over TCP or UDP, by the kernel (DNAT
//! rules in an nf_tables table this process owns for the network,
//! `link/nft.rs`) where the host namespace allows it, and by a userspace
//! forwarder otherwise.
//!
//! The userspace forwarder's listening socket is always made: it is the
//! reservation of the host port (a kernel rule binds nothing, so without it
//! another program could take the port and a conflict would go unnoticed,
//! as podman and CNI's portmap also hold one), and it serves what the rules
//! leave to it: destinations on loopback (DNAT from 127.0.0.1 needs
//! `route_localnet` in the host namespace, a sysctl podnet does not change)
//! and clients of an address family the sandbox has no address of. The
//! kernel rules see the packets first (prerouting and output, before the
//! socket lookup), so everything else never reaches the socket.
//!
//! One forwarder per network, started with its first mapping: an OS thread
//! that enters the network's host namespace once and runs a current-thread
//! tokio runtime there. A socket keeps the namespace it was made in
//! (socket(7) takes `current->nsproxy->net_ns` at creation), so every socket
//! the forwarder makes (the host-side listeners and the connections to the
//! sandbox) lives in the host namespace, whichever thread asked for the
//! mapping, and the caller's runtime (current-thread or not) plays no part in
//! moving bytes. Each mapping is a task on that runtime.
//!
//! Invariants:
//! - Every host port of a request (a `create()` or an `add_port`) is bound
//!   before anything else changes, and either all of them are or none: a
//!   taken port is [`Error::PortInUse`] and the ports bound before it are
//!   closed again.
//! - A mapping ends when its sandbox is removed, when its holder dies (the
//!   forwarder watches the holder's pidfd, so this holds whoever removed the
//!   sandbox), when the last handle to the network is dropped, or with the
//!   process: its rules are deleted then. The rules are in a table owned by
//!   the network's nf_tables socket in this process, so the kernel deletes
//!   them when the process ends, however it ends. Nothing is on disk.
//! - Every podnet rule of the table is claimed by a live mapping or by a
//!   request adding it (by the serial in its comment); gc deletes any
//!   other (left by a deletion that failed). A request whose caller went
//!   away while its rules were being added deletes them (`Installed`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::unistd::Pid;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, OnceCell};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::link::nft::{self, Dnat, Nft};

/// Default idle timeout of a UDP flow: the kernel's own for unreplied UDP
/// conntrack entries (`nf_conntrack_udp_timeout`, 30 s).
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(30);

/// Most concurrent UDP flows (clients) of one mapped port; datagrams from
/// further clients are dropped until a flow idles out.
pub const MAX_UDP_FLOWS: usize = 4096;

/// Longest UDP idle timeout accepted (a day).
const MAX_UDP_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Per-direction buffer of a TCP connection: 64 KiB instead of tokio's
/// 8 KiB default, for fewer wake-ups per byte.
const TCP_BUF: usize = 64 * 1024;

/// How long a forwarded TCP connection may take to reach the sandbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The file descriptors the forwarder of this process may hold for
/// connections and flows: a quarter of the soft `RLIMIT_NOFILE`, so that
/// traffic from outside can never take the fds the rest of the process
/// (podnet's own netlink sockets, pidfds and store files included) needs.
/// A TCP connection takes two, a UDP flow one; past the budget, new
/// connections wait in the listen backlog and new UDP clients are dropped.
fn fd_budget() -> Arc<tokio::sync::Semaphore> {
    static BUDGET: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    BUDGET
        .get_or_init(|| {
            let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft);
            let quarter = usize::try_from(soft / 4).unwrap_or(usize::MAX);
            Arc::new(tokio::sync::Semaphore::new(quarter.clamp(16, 1 << 20)))
        })
        .clone()
}

/// Largest UDP payload.
const UDP_BUF: usize = 65_535;

/// The transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP: each connection to the host port gets one to the sandbox's port.
    Tcp,
    /// UDP: each client (source address and port) gets a flow of its own.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port mapping to declare: host address and port(s) of the network's
/// host namespace, forwarded to port(s) of a sandbox. Used with
/// [`SandboxBuilder::port`](crate::SandboxBuilder::port) and
/// [`Sandbox::add_port`](crate::Sandbox::add_port).
///
/// The host address defaults to `0.0.0.0` (every IPv4 address of the host
/// namespace, as Kubernetes' `hostIP`); `::` means every IPv4 and IPv6
/// address. Host port 0 asks for an ephemeral port, reported back as a
/// [`PublishedPort`].
///
/// ```
/// use podnet::{PortMapping, Protocol};
/// let web = PortMapping::tcp(8080, 80);                   // -p 8080:80
/// let dns = PortMapping::udp(0, 53);                      // an ephemeral host port
/// let range = PortMapping::range(Protocol::Tcp, 9000..=9002, 7000..=7002);
/// let local = PortMapping::tcp(8443, 443).host_ip("127.0.0.1".parse().unwrap());
/// assert_eq!(range.host_ports(), 9000..=9002);
/// # let _ = (web, dns, local);
/// ```
///
/// Nothing is checked until the mapping is used: then a pod port 0, a range
/// whose start is above its end, host and pod ranges of different lengths,
/// or a zero idle timeout are [`Error::InvalidConfig`], and nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMapping {
    protocol: Protocol,
    host_ip: IpAddr,
    host_ports: RangeInclusive<u16>,
    pod_ports: RangeInclusive<u16>,
    udp_idle: Duration,
}

impl PortMapping {
    /// Forward `host_port` (0: an ephemeral one) to `pod_port`.
    pub fn new(protocol: Protocol, host_port: u16, pod_port: u16) -> PortMapping {
        PortMapping::range(protocol, host_port..=host_port, pod_port..=pod_port)
    }

    /// Forward TCP `host_port` (0: an ephemeral one) to `pod_port`.
    pub fn tcp(host_port: u16, pod_port: u16) -> PortMapping {
        PortMapping::new(Protocol::Tcp, host_port, pod_port)
    }

    /// Forward UDP `host_port` (0: an ephemeral one) to `pod_port`.
    pub fn udp(host_port: u16, pod_port: u16) -> PortMapping {
        PortMapping::new(Protocol::Udp, host_port, pod_port)
    }

    /// Forward each port of `host` to the port of `pod` at the same offset;
    /// both ranges have the same length. `host` may be `0..=0`: each pod
    /// port then gets an ephemeral host port of its own (not contiguous).
    pub fn range(
        protocol: Protocol,
        host: RangeInclusive<u16>,
        pod: RangeInclusive<u16>,
    ) -> PortMapping {
        PortMapping {
            protocol,
            host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            host_ports: host,
            pod_ports: pod,
            udp_idle: DEFAULT_UDP_IDLE,
        }
    }

    /// Listen on this host address only (default `0.0.0.0`). It must be an
    /// address of the network's host namespace.
    pub fn host_ip(mut self, ip: IpAddr) -> PortMapping {
        self.host_ip = ip;
        self
    }

    /// How long a UDP flow (one client) lives without a datagram in either
    /// direction (default [`DEFAULT_UDP_IDLE`]). Ignored for TCP.
    pub fn udp_idle_timeout(mut self, idle: Duration) -> PortMapping {
        self.udp_idle = idle;
        self
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The host address listened on.
    pub fn host_address(&self) -> IpAddr {
        self.host_ip
    }

    /// The host ports (`0..=0`: ephemeral).
    pub fn host_ports(&self) -> RangeInclusive<u16> {
        self.host_ports.clone()
    }

    /// The sandbox's ports.
    pub fn pod_ports(&self) -> RangeInclusive<u16> {
        self.pod_ports.clone()
    }

    /// The idle timeout of a UDP flow.
    pub fn udp_idle(&self) -> Duration {
        self.udp_idle
    }

    /// Each (host port, pod port) pair, or why the mapping is refused.
    fn pairs(&self) -> std::result::Result<Vec<(u16, u16)>, String> {
        let (h0, h1) = (*self.host_ports.start(), *self.host_ports.end());
        let (p0, p1) = (*self.pod_ports.start(), *self.pod_ports.end());
        if p0 > p1 {
            return Err(format!("pod port range {p0}-{p1} is inverted"));
        }
        if h0 > h1 {
            return Err(format!("host port range {h0}-{h1} is inverted"));
        }
        if p0 == 0 {
            return Err("pod port 0 is not a port".into());
        }
        if self.protocol == Protocol::Udp && self.udp_idle.is_zero() {
            return Err("a UDP idle timeout of 0 would end every flow at once".into());
        }
        if self.udp_idle > MAX_UDP_IDLE {
            return Err(format!(
                "a UDP idle timeout of {:?} is more than the most, {MAX_UDP_IDLE:?}",
                self.udp_idle
            ));
        }
        if (h0, h1) == (0, 0) {
            return Ok((p0..=p1).map(|p| (0, p)).collect());
        }
        if h0 == 0 {
            return Err(format!(
                "host port range {h0}-{h1} includes 0 (ask for ephemeral ports with 0 alone)"
            ));
        }
        if h1 - h0 != p1 - p0 {
            return Err(format!(
                "host ports {h0}-{h1} and pod ports {p0}-{p1} differ in length"
            ));
        }
        Ok((h0..=h1).zip(p0..=p1).collect())
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |r: &RangeInclusive<u16>| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        };
        write!(
            f,
            "{} {}:{} -> {}",
            self.protocol,
            self.host_ip,
            range(&self.host_ports),
            range(&self.pod_ports)
        )
    }
}

/// How a network forwards its published ports; set with
/// [`NetworkBuilder::port_forwarding`](crate::NetworkBuilder::port_forwarding).
///
/// The kernel's rules live in an nf_tables table owned by this process
/// (one per network), which the kernel deletes with every rule in it when
/// the process exits, however it exits; see the README ("Kernel or
/// userspace forwarding") for what they ask of the host's firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PortForwarding {
    /// The kernel where nf_tables is there and allowed in the host
    /// namespace (Linux 5.12 or later, for table owners), the userspace
    /// forwarder otherwise (the default). The table is tried once per
    /// network, at its first mapping; a kernel that refuses the rules of a
    /// later request leaves that request's ports to the forwarder. Silent,
    /// but [`PublishedPort::forwarder`] says which serves each port.
    #[default]
    Auto,
    /// The kernel (nf_tables DNAT) only: a mapping fails if nf_tables
    /// refuses the table or the rules.
    Kernel,
    /// The userspace forwarder only: nothing is asked of the host's
    /// firewall, and the host namespace's connection tracking is left as
    /// it is.
    Userspace,
}

/// What forwards a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Forwarder {
    /// nf_tables DNAT rules of the network's table; destinations on
    /// loopback, and clients of a family the sandbox has no address of, are
    /// still served by the userspace forwarder's socket.
    Kernel,
    /// podnet's userspace forwarder (a tokio task per port).
    Userspace,
}

impl fmt::Display for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forwarder::Kernel => "kernel",
            Forwarder::Userspace => "userspace",
        })
    }
}

/// One forwarded port, as it is published: the host socket address (with
/// the port the kernel chose, if 0 was asked for), the sandbox's port, and
/// what forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PublishedPort {
    /// The protocol.
    pub protocol: Protocol,
    /// The address and port listened on in the network's host namespace.
    pub host: SocketAddr,
    /// The port of the sandbox it is forwarded to.
    pub pod_port: u16,
    /// The kernel or the userspace forwarder.
    pub forwarder: Forwarder,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.host, self.pod_port)
    }
}

/// Where a sandbox's mappings forward to, and how to know it has ended.
pub(crate) struct Target<'a> {
    /// The sandbox's name, for rule comments and errors.
    pub name: &'a str,
    /// The sandbox instance (its record id): mappings are kept by it.
    pub id: &'a str,
    /// The pools' gateways and prefixes (v4, v6): clients from them are
    /// masqueraded by the kernel path.
    pub subnets: [Option<(IpAddr, u8)>; 2],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub holder_pid: Pid,
    pub holder_pidfd: &'a OwnedFd,
}

impl Target<'_> {
    /// The sandbox address of the host address's family if it has one.
    fn pod_ip(&self, host: IpAddr) -> IpAddr {
        match (host, self.ipv4, self.ipv6) {
            (IpAddr::V6(_), _, Some(a)) => IpAddr::V6(a),
            (_, Some(a), _) => IpAddr::V4(a),
            (_, None, Some(a)) => IpAddr::V6(a),
            (_, None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// Host ports bound for a request, not forwarding yet. Dropping it closes
/// them.
#[derive(Debug, Default)]
pub(crate) struct Reserved(Vec<Bound>);

#[derive(Debug)]
struct Bound {
    port: PublishedPort,
    sock: Sock,
    udp_idle: Duration,
}

#[derive(Debug)]
enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// The network's forwarder, started with its first mapping.
pub(crate) type Slot = OnceCell<Engine>;

/// The forwarder thread of a network, and the mappings it serves.
pub(crate) struct Engine {
    s: Arc<Shared>,
    /// Dropping it ends the thread, whose runtime then drops every task and
    /// with them every socket.
    _stop: oneshot::Sender<()>,
}

/// What the engine's tasks share with it.
struct Shared {
    rt: tokio::runtime::Handle,
    /// The network's nf_tables socket and the table it owns, when the
    /// kernel forwards: decided (and the table made) by the first mapping
    /// that gets past its binds, so a taken port changes nothing, not even
    /// the table. The socket stays open as long as the engine (the
    /// network) lives; the kernel deletes the table when it closes.
    kernel: std::sync::OnceLock<Option<Arc<Nft>>>,
    bridge: String,
    mode: PortForwarding,
    table: Mutex<Table>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// What the engine serves, and the kernel rules it stands behind.
#[derive(Default)]
struct Table {
    /// Live mappings by sandbox instance id.
    entries: HashMap<String, Entry>,
    /// Serials of mappings whose rules are being added: not live yet, but
    /// not garbage either (gc leaves them alone).
    installing: HashSet<u64>,
}

impl Table {
    /// Whether a rule of mapping `serial` stands for a mapping that is
    /// live or being made; any other podnet rule in the table is garbage.
    fn claims(&self, serial: u64) -> bool {
        self.installing.contains(&serial)
            || self
                .entries
                .values()
                .any(|e| e.ports.iter().any(|l| l.serial == Some(serial)))
    }
}

struct Entry {
    /// The sandbox's name (gc leaves the mappings of a sandbox whose record
    /// is corrupt alone).
    name: String,
    ports: Vec<Live>,
    /// Ends the entry when the holder dies.
    watcher: AbortHandle,
}

struct Live {
    port: PublishedPort,
    /// The serial its kernel rules carry, if the kernel forwards it.
    serial: Option<u64>,
    task: JoinHandle<()>,
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// The network whose host namespace publishes the ports: what the
/// forwarder is started with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Host<'a> {
    /// The host network namespace.
    pub netns: &'a OwnedFd,
    /// The network's bridge.
    pub bridge: &'a str,
    /// Kernel or userspace forwarding.
    pub forwarding: PortForwarding,
}

/// Validate `mappings` and bind every host port they need, in the host
/// namespace of the network (`host_ns`); all or none. No mapping: no
/// forwarder is started and nothing is bound.
pub(crate) async fn reserve(
    slot: &Slot,
    host: &Host<'_>,
    sandbox: &str,
    mappings: &[PortMapping],
) -> Result<Reserved> {
    let plan = plan(sandbox, mappings)?;
    if plan.is_empty() {
        return Ok(Reserved::default());
    }
    let engine = slot
        .get_or_try_init(|| Engine::start(host.netns, host.bridge, host.forwarding))
        .await?;
    let sandbox = sandbox.to_owned();
    let bind = async move {
        let mut out = Vec::with_capacity(plan.len());
        for (protocol, host, pod_port, udp_idle) in plan {
            let sock = match protocol {
                Protocol::Tcp => TcpListener::bind(host).await.map(Sock::Tcp),
                Protocol::Udp => UdpSocket::bind(host).await.map(Sock::Udp),
            };
            // On error, `out` is dropped and the ports bound before close.
            let sock = sock.map_err(|e| bind_error(&sandbox, protocol, host, &e))?;
            let local = match &sock {
                Sock::Tcp(l) => l.local_addr(),
                Sock::Udp(u) => u.local_addr(),
            }
            .map_err(|e| bind_error(&sandbox, protocol, host, &e))?;
            out.push(Bound {
                port: PublishedPort {
                    protocol,
                    host: local,
                    pod_port,
                    forwarder: Forwarder::Userspace,
                },
                sock,
                udp_idle,
            });
        }
        Ok(Reserved(out))
    };
    engine
        .s
        .rt
        .spawn(bind)
        .await
        .map_err(|_| forwarder_gone())?
}

/// Every (protocol, host address, pod port, idle) of `mappings`, checked.
fn plan(
    sandbox: &str,
    mappings: &[PortMapping],
) -> Result<Vec<(Protocol, SocketAddr, u16, Duration)>> {
    let mut plan = Vec::new();
    for m in mappings {
        let pairs = m.pairs().map_err(|why| Error::InvalidConfig {
            reason: format!("port mapping {m} of sandbox {sandbox:?}: {why}"),
        })?;
        for (h, p) in pairs {
            let host = SocketAddr::new(m.host_ip, h);
            if h != 0
                && plan
                    .iter()
                    .any(|(proto, a, _, _)| (*proto, *a) == (m.protocol, host))
            {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "port mapping {m} of sandbox {sandbox:?}: {} {host} is asked for twice",
                        m.protocol
                    ),
                });
            }
            plan.push((m.protocol, host, p, m.udp_idle));
        }
    }
    Ok(plan)
}

fn bind_error(sandbox: &str, protocol: Protocol, address: SocketAddr, e: &io::Error) -> Error {
    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32));
    if errno == Errno::EADDRINUSE {
        return Error::PortInUse {
            sandbox: sandbox.to_owned(),
            protocol,
            address,
            errno,
        };
    }
    Error::sys(
        "bind host port",
        format!("{protocol} {address} for sandbox {sandbox:?}"),
        errno,
    )
}

fn forwarder_gone() -> Error {
    Error::sys(
        "port forwarder",
        "its thread has ended (the network is being dropped)",
        Errno::ESHUTDOWN,
    )
}

/// Open the nf_tables socket of network `bridge` in the calling thread's
/// namespace and make its table, owned by that socket; `None` if `mode`
/// lets the userspace forwarder stand in for a kernel that refuses.
fn open_kernel(bridge: &str, mode: PortForwarding) -> Result<Option<Arc<Nft>>> {
    if mode == PortForwarding::Userspace {
        return Ok(None);
    }
    let made = Nft::open(bridge).and_then(|nft| match nft.ensure_table() {
        Ok(()) => Ok(nft),
        Err(errno) => Err(nft_error(
            "nf_tables: create table (owned by this process) and nat chains",
            &format!("{} for network {bridge:?}", nft.table()),
            errno,
        )),
    });
    Ok(fallback(mode, made)?.map(Arc::new))
}

/// What `mode` makes of an attempt at the kernel path (making the table,
/// or adding a request's rules): with `Auto`, a refusal (nf_tables, or
/// one of the expressions the rules use, not there or not allowed) is the
/// userspace forwarder; anything else is kept.
fn fallback<T>(mode: PortForwarding, made: Result<T>) -> Result<Option<T>> {
    match made {
        Ok(k) => Ok(Some(k)),
        Err(Error::Netlink { errno, .. })
            if mode == PortForwarding::Auto && nft::refused(errno) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn nft_error(op: &'static str, object: &str, errno: Errno) -> Error {
    Error::Netlink {
        op,
        object: object.to_owned(),
        errno,
    }
}

/// A serial for a mapping's rules, unique in the process (so in its
/// tables).
fn next_serial() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A parsed podnet rule comment:
/// `podnet <name>@<id> <proto> <host addr:port> #<serial>`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Comment<'a> {
    pub owner: &'a str,
    pub id: &'a str,
    pub port: &'a str,
    pub serial: u64,
}

pub(crate) fn parse_comment(c: &str) -> Option<Comment<'_>> {
    let rest = c.strip_prefix(nft::TAG)?;
    let mut f = rest.split(' ');
    let owner = f.next()?;
    let id = owner.split_once('@')?.1;
    let proto = f.next()?;
    let host = f.next()?;
    let serial = f.next()?.strip_prefix('#')?.parse().ok()?;
    if f.next().is_some() {
        return None;
    }
    let port_len = proto.len() + 1 + host.len();
    let at = nft::TAG.len() + owner.len() + 1;
    Some(Comment {
        owner,
        id,
        port: c.get(at..at + port_len)?,
        serial,
    })
}

fn comment(target: &Target<'_>, port: &PublishedPort, serial: u64) -> String {
    format!(
        "{}{}@{} {} {} #{serial}",
        nft::TAG,
        target.name,
        target.id,
        port.protocol,
        port.host
    )
}

/// The DNAT rules for `port` of `target`: one per address family the host
/// address covers and the sandbox has an address of; none for loopback.
/// Each carries `serial` in its comment.
fn dnats(
    target: &Target<'_>,
    port: &PublishedPort,
    forwarding: [bool; 2],
    serial: u64,
) -> Vec<Dnat> {
    let host = port.host.ip();
    if host.is_loopback() {
        return Vec::new();
    }
    let l4 = match port.protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    };
    let v4 = match host {
        IpAddr::V4(a) => Some(IpAddr::V4(a)),
        // `::` takes IPv4 clients too (a dual-stack socket).
        IpAddr::V6(a) if a.is_unspecified() => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpAddr::V6(_) => None,
    };
    let v6 = match host {
        IpAddr::V6(a) => Some(IpAddr::V6(a)),
        IpAddr::V4(_) => None,
    };
    let mut out = Vec::new();
    for (host, pod, subnet, arriving) in [
        (
            v4,
            target.ipv4.map(IpAddr::V4),
            target.subnets[0],
            forwarding[0],
        ),
        (
            v6,
            target.ipv6.map(IpAddr::V6),
            target.subnets[1],
            forwarding[1],
        ),
    ] {
        if let (Some(host), Some(pod), Some(subnet)) = (host, pod, subnet) {
            out.push(Dnat {
                l4,
                host,
                host_port: port.host.port(),
                pod,
                pod_port: port.pod_port,
                subnet,
                comment: comment(target, port, serial),
                arriving,
            });
        }
    }
    out
}

/// Whether the sysctl `net/<name>` of the calling thread's network
/// namespace is on. podnet reads it and never writes it.
fn forwarding(name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/{name}")).is_ok_and(|v| v.trim() != "0")
}

/// Delete the rules of the mappings `serials` (blocking), trying three
/// times (a transient ENOBUFS or a lost answer is not the end); returns
/// the comments of the rules deleted. Rules left after a failure are
/// garbage that gc deletes, and the kernel deletes with the table when
/// the process ends (or the network is dropped).
fn delete_serials(nft: &Nft, serials: &[u64]) -> std::result::Result<Vec<String>, Errno> {
    let mut last = Errno::EIO;
    for pause in [0, 20, 200] {
        std::thread::sleep(Duration::from_millis(pause));
        match nft.delete_where(|c| parse_comment(c).is_some_and(|c| serials.contains(&c.serial))) {
            Ok(gone) => return Ok(gone),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Rules added for a request that its caller has not taken yet. Dropped
/// unaccepted (the caller's future was dropped while the rules were being
/// added), it deletes them: a cancelled request leaves no rule.
struct Installed {
    s: Arc<Shared>,
    nft: Arc<Nft>,
    serials: Vec<u64>,
    armed: bool,
}

impl Installed {
    /// The caller takes the rules: from now on they stand for live
    /// mappings of `table` (the caller holds its lock and adds them).
    fn accept(mut self, table: &mut Table) {
        for s in &self.serials {
            table.installing.remove(s);
        }
        self.armed = false;
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        {
            let mut table = lock(&self.s.table);
            for s in &self.serials {
                table.installing.remove(s);
            }
        }
        let (nft, serials) = (self.nft.clone(), std::mem::take(&mut self.serials));
        // On the forwarder's blocking pool, whatever thread drops this. If
        // it fails, or the network is going away, the rules are garbage
        // that gc, or the table's end with the network, deletes.
        self.s
            .rt
            .spawn_blocking(move || delete_serials(&nft, &serials));
    }
}

/// Add `rules` (of mappings `serials`) to the table of `nft` in one batch,
/// on the forwarder's blocking pool, where it runs to completion even if
/// the caller goes away; then the [`Installed`] guard deletes them again.
async fn install(
    s: &Arc<Shared>,
    nft: Arc<Nft>,
    rules: Vec<Dnat>,
    serials: Vec<u64>,
) -> std::result::Result<Installed, Errno> {
    lock(&s.table).installing.extend(&serials);
    let (tx, rx) = oneshot::channel();
    let s = s.clone();
    s.rt.clone().spawn_blocking(move || {
        let got = match nft.add(&rules) {
            Ok(()) => Ok(Installed {
                s,
                nft,
                serials,
                armed: true,
            }),
            Err(errno) => {
                // All or none: nothing of it is in the table.
                let mut table = lock(&s.table);
                for s in &serials {
                    table.installing.remove(s);
                }
                Err(errno)
            }
        };
        // A caller that went away drops the guard here, which deletes the
        // rules; one that goes away after this drops it with the channel.
        let _ = tx.send(got);
    });
    rx.await.unwrap_or(Err(Errno::ESHUTDOWN))
}

/// Take every mapping of sandbox instance `id` (or only `port` of it) out
/// of the table, and end it on the forwarder: its rules deleted first,
/// then its sockets closed. The returned task runs to the end whether or
/// not it is awaited; it gives the comments of the rules deleted. `None`
/// if nothing matched.
fn finish(
    s: &Shared,
    id: &str,
    port: Option<&PublishedPort>,
) -> Option<JoinHandle<std::result::Result<Vec<String>, Errno>>> {
    let (lives, watcher) = {
        let mut table = lock(&s.table);
        match port {
            None => {
                let entry = table.entries.remove(id)?;
                (entry.ports, Some(entry.watcher))
            }
            Some(port) => {
                let entry = table.entries.get_mut(id)?;
                let i = entry.ports.iter().position(|l| l.port == *port)?;
                (vec![entry.ports.remove(i)], None)
            }
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    let serials: Vec<u64> = lives.iter().filter_map(|l| l.serial).collect();
    let nft = s.nft();
    let rt = s.rt.clone();
    Some(s.rt.spawn(async move {
        let deleted = match nft {
            Some(nft) if !serials.is_empty() => rt
                .spawn_blocking(move || delete_serials(&nft, &serials))
                .await
                .unwrap_or(Err(Errno::ESHUTDOWN)),
            _ => Ok(Vec::new()),
        };
        // The sockets are closed even if the rules could not be deleted.
        for live in lives {
            live.task.abort();
            let _ = live.task.await;
        }
        deleted
    }))
}

impl Shared {
    /// The kernel path, if decided and on.
    fn nft(&self) -> Option<Arc<Nft>> {
        self.kernel.get().cloned().flatten()
    }

    /// The kernel path: decided at the first call, on the forwarder's
    /// thread, whose namespace the nf_tables socket then belongs to.
    async fn kernel(&self) -> Result<Option<Arc<Nft>>> {
        if let Some(k) = self.kernel.get() {
            return Ok(k.clone());
        }
        let (bridge, mode) = (self.bridge.clone(), self.mode);
        let k = self
            .rt
            .spawn(async move { open_kernel(&bridge, mode) })
            .await
            .map_err(|_| forwarder_gone())??;
        Ok(self.kernel.get_or_init(|| k).clone())
    }
}

impl Engine {
    /// Start the forwarder thread in the host namespace `host_ns`, with the
    /// kernel path of network `bridge` if `mode` asks for it and the kernel
    /// allows it.
    async fn start(host_ns: &OwnedFd, bridge: &str, mode: PortForwarding) -> Result<Engine> {
        let ns = host_ns
            .try_clone()
            .map_err(|e| Error::io("duplicate host netns fd for the port forwarder", "", e))?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("podnet-ports".into())
            .spawn(move || {
                // The thread stays in the host namespace until it ends, so
                // there is nothing to restore.
                if let Err(errno) = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(Error::sys(
                        "enter the host network namespace",
                        "for the port forwarder",
                        errno,
                    )));
                    return;
                }
                drop(ns);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::io(
                            "start the port forwarder's runtime",
                            "",
                            e,
                        )));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                // Serve until the network is dropped. Dropping `rt` then
                // drops every task and closes every socket; the nf_tables
                // socket closes with the last handle to it (the engine's),
                // and the kernel deletes the table with every rule in it.
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| Error::io("start the port forwarder thread", "", e))?;
        let rt = ready_rx.await.map_err(|_| forwarder_gone())??;
        Ok(Engine {
            s: Arc::new(Shared {
                rt,
                kernel: std::sync::OnceLock::new(),
                bridge: bridge.to_owned(),
                mode,
                table: Mutex::default(),
            }),
            _stop: stop_tx,
        })
    }
}

/// The nf_tables socket of the network whose forwarder is in `slot`, and
/// the table it owns, if the kernel forwards its mappings.
pub(crate) fn nft_of(slot: &Slot) -> Option<Arc<Nft>> {
    slot.get().and_then(|e| e.s.nft())
}

/// Start forwarding the ports of `reserved` to the sandbox `target`: the
/// kernel rules of all of them in one batch (all or none), then the
/// userspace tasks. On error nothing is published and the ports are closed.
/// With [`PortForwarding::Auto`], a kernel that refuses the rules leaves
/// this request's ports to the userspace forwarder.
///
/// Cancel safe: rules added for a caller that went away are deleted.
pub(crate) async fn start(
    slot: &Slot,
    target: &Target<'_>,
    mut reserved: Reserved,
) -> Result<Vec<PublishedPort>> {
    let Some(engine) = slot.get() else {
        return Ok(Vec::new()); // nothing was reserved
    };
    let s = &engine.s;
    if reserved.0.is_empty() {
        return Ok(Vec::new());
    }
    let mut serials: Vec<Option<u64>> = vec![None; reserved.0.len()];
    let mut installed = None;
    if let Some(nft) = s.kernel().await? {
        // Read on the forwarder's thread: /proc/sys/net is the namespace of
        // the thread that opens it.
        let forwarding =
            s.rt.spawn(async {
                [
                    forwarding("ipv4/ip_forward"),
                    forwarding("ipv6/conf/all/forwarding"),
                ]
            })
            .await
            .map_err(|_| forwarder_gone())?;
        let mut rules = Vec::new();
        for (b, serial) in reserved.0.iter().zip(&mut serials) {
            let s = next_serial();
            let d = dnats(target, &b.port, forwarding, s);
            if !d.is_empty() {
                *serial = Some(s);
            }
            rules.extend(d);
        }
        if !rules.is_empty() {
            let object = format!(
                "for sandbox {:?} in table inet {}",
                target.name,
                nft.table()
            );
            let all: Vec<u64> = serials.iter().flatten().copied().collect();
            let got = install(s, nft, rules, all)
                .await
                .map_err(|errno| nft_error("nf_tables: add DNAT rules", &object, errno));
            match fallback(s.mode, got)? {
                Some(guard) => {
                    installed = Some(guard);
                    for (b, serial) in reserved.0.iter_mut().zip(&serials) {
                        if serial.is_some() {
                            b.port.forwarder = Forwarder::Kernel;
                        }
                    }
                }
                // Refused: the userspace forwarder serves these ports.
                None => serials.iter_mut().for_each(|s| *s = None),
            }
        }
    }
    // From here on nothing awaits: the rules and the ports are published
    // together, or (on a panic) the guard deletes the rules.
    let mut published = Vec::with_capacity(reserved.0.len());
    let mut live = Vec::with_capacity(reserved.0.len());
    for (b, serial) in reserved.0.into_iter().zip(serials) {
        let to = SocketAddr::new(target.pod_ip(b.port.host.ip()), b.port.pod_port);
        let task = match b.sock {
            Sock::Tcp(l) => s.rt.spawn(serve_tcp(l, to)),
            Sock::Udp(u) => s.rt.spawn(serve_udp(u, to, b.udp_idle)),
        };
        published.push(b.port);
        live.push(Live {
            port: b.port,
            serial,
            task,
        });
    }
    let mut table = lock(&s.table);
    if let Some(guard) = installed {
        guard.accept(&mut table);
    }
    match table.entries.get_mut(target.id) {
        Some(entry) => entry.ports.extend(live),
        None => {
            let watcher = match target.holder_pidfd.try_clone() {
                Ok(pidfd) => {
                    s.rt.spawn(watch_holder(
                        target.holder_pid,
                        pidfd,
                        target.id.to_owned(),
                        s.clone(),
                    ))
                    .abort_handle()
                }
                // Without a watcher the mappings still end with remove().
                Err(_) => s.rt.spawn(async {}).abort_handle(),
            };
            table.entries.insert(
                target.id.to_owned(),
                Entry {
                    name: target.name.to_owned(),
                    ports: live,
                    watcher,
                },
            );
        }
    }
    Ok(published)
}

/// End the mappings of sandbox instance `id` once its holder has exited (a
/// pidfd polls readable then, pidfd_open(2)): its rules first, then its
/// sockets.
async fn watch_holder(pid: Pid, pidfd: OwnedFd, id: String, s: Arc<Shared>) {
    if crate::holder::wait_exit(pid, &pidfd).await.is_err() {
        // Cannot watch it (no fd left to dup): remove() still ends them.
        return;
    }
    // A task of its own, which aborting this watcher does not stop. A
    // failed deletion leaves garbage for gc (and the table's end).
    drop(finish(&s, &id, None));
}

/// The live mappings of sandbox instance `id`.
pub(crate) fn list(slot: &Slot, id: &str) -> Vec<PublishedPort> {
    let Some(engine) = slot.get() else {
        return Vec::new();
    };
    lock(&engine.s.table)
        .entries
        .get(id)
        .map(|e| e.ports.iter().map(|l| l.port).collect())
        .unwrap_or_default()
}

/// What a failed deletion of the rules of `what` in the table of `slot`
/// is reported as.
fn delete_error(slot: &Slot, what: String, errno: Errno) -> Error {
    let table = nft_of(slot).map_or_else(String::new, |n| n.table().to_owned());
    nft_error(
        "nf_tables: delete DNAT rules (left in this process's table until gc(), the network's drop or the process's exit)",
        &format!("{what} in table inet {table}"),
        errno,
    )
}

/// Stop forwarding `port` of sandbox instance `id`: its rules are deleted,
/// then its socket and its connections closed. `false` if it was not
/// published. If the rules cannot be deleted (after retries), the socket
/// is closed all the same and the error says so.
///
/// Cancel safe: the mapping is taken out at once and ended on the
/// forwarder whether or not this is awaited to the end.
pub(crate) async fn end_one(slot: &Slot, id: &str, port: &PublishedPort) -> Result<bool> {
    let Some(engine) = slot.get() else {
        return Ok(false);
    };
    let Some(job) = finish(&engine.s, id, Some(port)) else {
        return Ok(false);
    };
    match job.await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(errno)) => Err(delete_error(
            slot,
            format!("{port} of sandbox instance {id}"),
            errno,
        )),
        Err(_) => Err(forwarder_gone()),
    }
}

/// Stop every mapping of sandbox instance `id`: its rules are deleted, then
/// its sockets closed; returns once they are. The sockets are closed even
/// if the rules cannot be deleted (then the error says so). Cancel safe, as
/// [`end_one`].
pub(crate) async fn end_all(slot: &Slot, id: &str) -> Result<()> {
    let Some(engine) = slot.get() else {
        return Ok(());
    };
    // Nothing published, or the holder watch ended it.
    let Some(job) = finish(&engine.s, id, None) else {
        return Ok(());
    };
    match job.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(errno)) => Err(delete_error(
            slot,
            format!("every port of sandbox instance {id}"),
            errno,
        )),
        Err(_) => Err(forwarder_gone()),
    }
}

/// Stop every mapping of sandbox instance `id` without waiting (for Drop):
/// the rules are deleted and the sockets closed as soon as the forwarder
/// runs.
pub(crate) fn abort_all(slot: &Slot, id: &str) {
    if let Some(engine) = slot.get() {
        drop(finish(&engine.s, id, None));
    }
}

/// gc's share of the mappings of this process's network in `slot`: end
/// the mappings of sandbox instances for which `gone(name, owner)` holds
/// (`owner` is `<name>@<id>`), then delete every podnet rule of the
/// network's table that no live mapping claims (left by a deletion that
/// failed). Returns the comments of the rules deleted. Rules of other
/// processes are in tables of their own, which the kernel deletes when
/// they exit.
pub(crate) async fn gc(slot: &Slot, gone: impl Fn(&str, &str) -> bool) -> Result<Vec<String>> {
    let Some(engine) = slot.get() else {
        return Ok(Vec::new());
    };
    let s = &engine.s;
    let stale: Vec<String> = lock(&s.table)
        .entries
        .iter()
        .filter(|(id, e)| gone(&e.name, &format!("{}@{id}", e.name)))
        .map(|(id, _)| id.clone())
        .collect();
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for id in stale {
        if let Some(job) = finish(s, &id, None) {
            match job.await {
                Ok(Ok(gone)) => deleted.extend(gone),
                Ok(Err(errno)) => errors.push(delete_error(
                    slot,
                    format!("every port of gone sandbox instance {id}"),
                    errno,
                )),
                Err(_) => errors.push(forwarder_gone()),
            }
        }
    }
    if let Some(nft) = s.nft() {
        let shared = s.clone();
        let swept =
            s.rt.spawn_blocking(move || {
                let found = nft.list()?;
                // Claims are read after the listing: a rule listed was
                // added after its serial was claimed (installing), so it
                // is claimed now unless its mapping has ended since.
                let garbage: Vec<nft::Found> = {
                    let table = lock(&shared.table);
                    found
                        .into_iter()
                        .filter(|f| {
                            parse_comment(&f.comment).is_none_or(|c| !table.claims(c.serial))
                        })
                        .collect()
                };
                nft.delete(&garbage)?;
                Ok(garbage.into_iter().map(|f| f.comment).collect::<Vec<_>>())
            })
            .await
            .unwrap_or(Err(Errno::ESHUTDOWN));
        match swept {
            Ok(gone) => deleted.extend(gone),
            Err(errno) => errors.push(delete_error(
                slot,
                "rules no live mapping claims".to_owned(),
                errno,
            )),
        }
    }
    match errors.len() {
        0 => Ok(deleted),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Multiple {
            op: "delete stale port-mapping rules".to_owned(),
            errors,
        }),
    }
}

/// How many mappings' rules are being added now (for this crate's tests).
#[cfg(feature = "internals")]
pub(crate) fn installing(slot: &Slot) -> usize {
    slot.get().map_or(0, |e| lock(&e.s.table).installing.len())
}

/// Accept connections on `listener` and forward each to `to`. Dropping the
/// task drops the listener and every connection.
async fn serve_tcp(listener: TcpListener, to: SocketAddr) {
    let mut conns = JoinSet::new();
    let budget = fd_budget();
    loop {
        // Two fds per connection, taken before it is accepted.
        let permit = tokio::select! {
            permit = budget.clone().acquire_many_owned(2) => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    conns.spawn(async move {
                        forward_tcp(client, to).await;
                        drop(permit);
                    });
                }
                // Out of fds or memory for a moment (EMFILE, ENFILE,
                // ENOBUFS): the connection waits in the backlog. Back off
                // instead of spinning on an accept that fails again.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One TCP connection: connect to the sandbox, then copy both ways. EOF on
/// one side becomes `shutdown(SHUT_WR)` on the other while the other
/// direction goes on (half-close), which `copy_bidirectional` does.
async fn forward_tcp(mut client: TcpStream, to: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut pod = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        _ => {
            // Nothing listens in the sandbox: reset, as the pod's kernel
            // did to us, rather than accept and close cleanly.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = pod.set_nodelay(true);
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut pod, TCP_BUF, TCP_BUF).await;
    if copied.is_err() {
        // One side was reset: pass the reset on instead of a clean close.
        let _ = client.set_zero_linger();
        let _ = pod.set_zero_linger();
    }
}

/// One UDP flow: a socket connected to the sandbox for one client.
struct Flow {
    up: Arc<UdpSocket>,
    last: Arc<Mutex<Instant>>,
    task: AbortHandle,
    /// Its fd, in the process's budget.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Receive datagrams on `sock` and forward each client's through a flow of
/// its own (a socket connected to `to`, so replies come back to that client
/// only). A flow ends after `idle` without a datagram either way.
async fn serve_udp(sock: UdpSocket, to: SocketAddr, idle: Duration) {
    let sock = Arc::new(sock);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut tasks: JoinSet<SocketAddr> = JoinSet::new();
    let mut buf = vec![0u8; UDP_BUF];
    loop {
        tokio::select! {
            got = sock.recv_from(&mut buf) => {
                // An error here is an ICMP error for an earlier datagram:
                // nothing to do but go on.
                let Ok((n, client)) = got else { continue };
                if flows.get(&client).is_some_and(|f| f.task.is_finished()) {
                    flows.remove(&client);
                }
                if !flows.contains_key(&client) {
                    if flows.len() >= MAX_UDP_FLOWS {
                        continue;
                    }
                    let Ok(permit) = fd_budget().try_acquire_owned() else {
                        continue;
                    };
                    let Ok(flow) = new_flow(&sock, client, to, idle, &mut tasks, permit).await else {
                        continue;
                    };
                    flows.insert(client, flow);
                }
                if let Some(flow) = flows.get(&client) {
                    *flow.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    let _ = flow.up.send(&buf[..n]).await;
                }
            }
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(client) = ended {
                    if flows.get(&client).is_some_and(|f| f.task.is_finished()) {
                        flows.remove(&client);
                    }
                }
            }
        }
    }
}

async fn new_flow(
    sock: &Arc<UdpSocket>,
    client: SocketAddr,
    to: SocketAddr,
    idle: Duration,
    tasks: &mut JoinSet<SocketAddr>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> io::Result<Flow> {
    let any = match to {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let up = UdpSocket::bind(any).await?;
    up.connect(to).await?;
    let up = Arc::new(up);
    let last = Arc::new(Mutex::new(Instant::now()));
    let task = tasks.spawn(replies(
        up.clone(),
        sock.clone(),
        client,
        last.clone(),
        idle,
    ));
    Ok(Flow {
        up,
        last,
        task,
        _permit: permit,
    })
}

/// Send the sandbox's replies on flow `up` back to `client` through the
/// host socket, until the flow has been idle for `idle`; returns `client`.
async fn replies(
    up: Arc<UdpSocket>,
    host: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<Mutex<Instant>>,
    idle: Duration,
) -> SocketAddr {
    // Made at the first reply: a flow the pod never answers holds none.
    let mut buf = Vec::new();
    loop {
        let deadline = *last.lock().unwrap_or_else(|p| p.into_inner()) + idle;
        tokio::select! {
            ready = up.readable() => {
                if ready.is_err() {
                    // The runtime is going away.
                    return client;
                }
                if buf.is_empty() {
                    buf = vec![0u8; UDP_BUF];
                }
                let got = match up.try_recv(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    got => got,
                };
                // ECONNREFUSED: nothing listens in the sandbox (ICMP port
                // unreachable); the client sees silence, as it would.
                if let Ok(n) = got {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    let _ = host.send_to(&buf[..n], client).await;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let last = *last.lock().unwrap_or_else(|p| p.into_inner());
                if last + idle <= Instant::now() {
                    return client;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(m: PortMapping) -> String {
        match plan("web", &[m]) {
            Err(Error::InvalidConfig { reason }) => reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // inverted ranges are the point
    fn bad_mappings_are_refused_with_the_reason() {
        assert!(refused(PortMapping::tcp(8080, 0)).contains("pod port 0"));
        let inverted = PortMapping::range(Protocol::Tcp, 9002..=9000, 80..=82);
        assert!(refused(inverted).contains("inverted"));
        let inverted_pod = PortMapping::range(Protocol::Udp, 9000..=9002, 82..=80);
        assert!(refused(inverted_pod).contains("inverted"));
        let uneven = PortMapping::range(Protocol::Tcp, 9000..=9002, 80..=81);
        assert!(refused(uneven).contains("differ in length"));
        let zero_start = PortMapping::range(Protocol::Tcp, 0..=2, 80..=82);
        assert!(refused(zero_start).contains("includes 0"));
        let idle = PortMapping::udp(53, 53).udp_idle_timeout(Duration::ZERO);
        assert!(refused(idle).contains("idle"));
        let text = refused(PortMapping::tcp(1, 0));
        assert!(text.contains("\"web\"") && text.contains("tcp 0.0.0.0:1 -> 0"));
    }

    #[test]
    fn a_port_asked_for_twice_is_refused_but_protocols_and_ephemeral_ports_may_repeat() {
        let twice = [PortMapping::tcp(8080, 80), PortMapping::tcp(8080, 81)];
        assert!(matches!(
            plan("web", &twice),
            Err(Error::InvalidConfig { .. })
        ));
        let fine = [
            PortMapping::tcp(8080, 80),
            PortMapping::udp(8080, 80),
            PortMapping::tcp(0, 81),
            PortMapping::tcp(0, 82),
        ];
        assert_eq!(plan("web", &fine).unwrap().len(), 4);
    }

    #[test]
    fn ranges_pair_ports_in_order_and_ephemeral_ranges_get_one_each() {
        let r = PortMapping::range(Protocol::Tcp, 9000..=9002, 80..=82);
        assert_eq!(r.pairs().unwrap(), [(9000, 80), (9001, 81), (9002, 82)]);
        let e = PortMapping::range(Protocol::Udp, 0..=0, 53..=54);
        assert_eq!(e.pairs().unwrap(), [(0, 53), (0, 54)]);
        assert_eq!(
            PortMapping::range(Protocol::Tcp, 65535..=65535, 1..=1)
                .pairs()
                .unwrap(),
            [(65535, 1)]
        );
    }

    #[test]
    fn auto_falls_back_on_a_refusal_only_and_kernel_never() {
        // A refusal of the table, or of a request's rules (an expression
        // whose module is missing: ENOENT), is the same decision.
        for op in [
            "nf_tables: create table (owned by this process) and nat chains",
            "nf_tables: add DNAT rules",
        ] {
            let refused = |errno| {
                Err::<(), _>(Error::Netlink {
                    op,
                    object: "for network \"pn0\"".into(),
                    errno,
                })
            };
            for errno in [
                Errno::EPERM,
                Errno::EACCES,
                Errno::ENOENT,
                Errno::EOPNOTSUPP,
                Errno::EPROTONOSUPPORT,
                Errno::EAFNOSUPPORT,
            ] {
                assert!(matches!(
                    fallback(PortForwarding::Auto, refused(errno)),
                    Ok(None)
                ));
                let forced = fallback(PortForwarding::Kernel, refused(errno)).unwrap_err();
                assert_eq!(forced.errno(), Some(errno));
                assert!(forced.to_string().contains("nf_tables"), "{forced}");
            }
            // A bug (EINVAL: a malformed message) or a full socket buffer
            // is never hidden.
            for errno in [Errno::EINVAL, Errno::ENOBUFS, Errno::ETIMEDOUT] {
                assert!(fallback(PortForwarding::Auto, refused(errno)).is_err());
            }
        }
        assert!(matches!(
            fallback(PortForwarding::Auto, Ok(())),
            Ok(Some(()))
        ));
        assert_eq!(PortForwarding::default(), PortForwarding::Auto);
    }

    #[test]
    fn comments_name_sandbox_port_and_serial_and_parse_back() {
        let c = "podnet web@1f-2a-0 udp [::]:5300 #42";
        let got = parse_comment(c).unwrap();
        assert_eq!(got.owner, "web@1f-2a-0");
        assert_eq!(got.id, "1f-2a-0");
        assert_eq!(got.port, "udp [::]:5300");
        assert_eq!(got.serial, 42);
        assert_eq!(parse_comment("podnet web tcp 0.0.0.0:1 #2"), None);
        assert_eq!(parse_comment("podnet web@x tcp 0.0.0.0:1 42:1234"), None);
        assert_eq!(parse_comment("podnet web@x tcp 0.0.0.0:1 #2 more"), None);
        assert_eq!(parse_comment("someone else's rule"), None);
        let pidfd = crate::netns::thread_netns().unwrap();
        let t = Target {
            name: "web",
            id: "1f-2a-0",
            subnets: [Some(("10.88.0.1".parse().unwrap(), 16)), None],
            ipv4: Some(Ipv4Addr::new(10, 88, 0, 2)),
            ipv6: None,
            holder_pid: Pid::this(),
            holder_pidfd: &pidfd,
        };
        let port = PublishedPort {
            protocol: Protocol::Tcp,
            host: "0.0.0.0:8080".parse().unwrap(),
            pod_port: 80,
            forwarder: Forwarder::Userspace,
        };
        let made = comment(&t, &port, 7);
        let back = parse_comment(&made).unwrap();
        assert_eq!((back.id, back.port), ("1f-2a-0", "tcp 0.0.0.0:8080"));
        assert_eq!(back.serial, 7);
        assert_ne!(next_serial(), next_serial());
        // One rule set per family the host address covers and the pod has;
        // none for loopback; arriving traffic only where forwarding is on.
        assert_eq!(dnats(&t, &port, [true, true], 7).len(), 1);
        assert!(dnats(&t, &port, [false, false], 7)
            .iter()
            .all(|d| !d.arriving));
        let lo = PublishedPort {
            host: "127.0.0.1:8080".parse().unwrap(),
            ..port
        };
        assert!(dnats(&t, &lo, [true, true], 7).is_empty());
        let v6 = PublishedPort {
            host: "[fd00::1]:8080".parse().unwrap(),
            ..port
        };
        assert!(dnats(&t, &v6, [true, true], 7).is_empty()); // the pod has no IPv6
    }

    #[test]
    fn a_rule_is_claimed_while_its_mapping_is_being_added_or_live_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _in = rt.enter();
        let mut table = Table::default();
        assert!(!table.claims(1));
        table.installing.insert(1);
        assert!(table.claims(1) && !table.claims(2));
        let live = |serial| Live {
            port: PublishedPort {
                protocol: Protocol::Tcp,
                host: "0.0.0.0:1".parse().unwrap(),
                pod_port: 1,
                forwarder: Forwarder::Kernel,
            },
            serial,
            task: tokio::spawn(async {}),
        };
        table.entries.insert(
            "id".into(),
            Entry {
                name: "web".into(),
                ports: vec![live(Some(2)), live(None)],
                watcher: tokio::spawn(async {}).abort_handle(),
            },
        );
        assert!(table.claims(1) && table.claims(2) && !table.claims(3));
        table.installing.clear();
        assert!(!table.claims(1) && table.claims(2));
    }

    #[test]
    fn the_pod_address_follows_the_host_address_family() {
        let pidfd = crate::netns::thread_netns().unwrap();
        let t = Target {
            name: "x",
            id: "x",
            subnets: [None, None],
            ipv4: Some(Ipv4Addr::new(10, 88, 0, 2)),
            ipv6: Some("fd00:88::2".parse().unwrap()),
            holder_pid: Pid::this(),
            holder_pidfd: &pidfd,
        };
        assert_eq!(
            t.pod_ip("0.0.0.0".parse().unwrap()).to_string(),
            "10.88.0.2"
        );
        assert_eq!(t.pod_ip("::".parse().unwrap()).to_string(), "fd00:88::2");
        let v4only = Target { ipv6: None, ..t };
        assert_eq!(
            v4only.pod_ip("::".parse().unwrap()).to_string(),
            "10.88.0.2"
        );
    }
}
