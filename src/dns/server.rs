//! The server of one network in this process: UDP and TCP sockets on each
//! gateway's port 53, shared with the network's other processes by
//! `SO_REUSEPORT` (the kernel spreads queries over the live ones), served
//! by a thread of its own with a current-thread runtime, so it answers
//! whatever the caller's runtime is doing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnetwork::IpNetwork;
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::answer::{from_pod, respond, Outcome, Transport};
use super::forward::Forwarder;
use super::udp::{Inbox, Outbox, BATCH};
use super::watch::Live;
use crate::error::{Error, Result};

/// DNS's port.
const PORT: u16 = 53;
/// TCP connections at once, in all and from one source.
const MAX_TCP: usize = 256;
const MAX_TCP_PER_SOURCE: usize = 8;
/// A TCP connection that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the server answers for.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub bridge: String,
    pub bridge_index: u32,
    pub gateways: Vec<IpAddr>,
    pub pools: Vec<IpNetwork>,
}

/// The running server; it stops when this is dropped.
#[derive(Debug)]
pub(crate) struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The thread closes the sockets and ends; nothing waits for it.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Bind the sockets (from the calling thread, which is in the network's
/// host namespace) and start the server's thread.
pub(crate) fn start(scope: Scope, live: Arc<Mutex<Live>>, fwd: Arc<Forwarder>) -> Result<Server> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for gw in &scope.gateways {
        let addr = SocketAddr::new(*gw, PORT);
        udp.push(bind(addr, SockType::Datagram, &scope.bridge)?);
        tcp.push(bind(addr, SockType::Stream, &scope.bridge)?);
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let name = format!("podnet-dns {}", scope.bridge);
    std::thread::Builder::new()
        .name("podnet-dns".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "dns: no runtime");
                    return;
                }
            };
            // A LocalSet: the UDP loops keep their recvmmsg headers (raw
            // pointers, not Send) across awaits, on this thread only.
            tokio::task::LocalSet::new().block_on(&rt, serve(scope, live, fwd, udp, tcp, stop_rx));
        })
        .map_err(|e| Error::io("start the DNS server thread", "", e))?;
    Ok(Server {
        stop: Some(stop_tx),
    })
}

/// A socket on `addr`, in the reuseport group of every process of the
/// network.
fn bind(addr: SocketAddr, ty: SockType, bridge: &str) -> Result<OwnedFd> {
    let proto = if ty == SockType::Datagram {
        "UDP"
    } else {
        "TCP"
    };
    let object = || format!("{proto} {addr} of network {bridge:?}");
    let sys = |op, e| Error::sys(op, object(), e);
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| sys("open the DNS server's socket", e))?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)
        .map_err(|e| sys("set SO_REUSEPORT on the DNS socket", e))?;
    if ty == SockType::Stream {
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
            .map_err(|e| sys("set SO_REUSEADDR on the DNS socket", e))?;
    }
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
            .map_err(|e| sys("set IPV6_V6ONLY on the DNS socket", e))?;
    }
    if ty == SockType::Datagram {
        let pktinfo = if addr.is_ipv4() {
            socket::setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)
        } else {
            socket::setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)
        };
        pktinfo.map_err(|e| sys("ask for the arrival interface on the DNS socket", e))?;
    }
    let sa = SockaddrStorage::from(addr);
    match socket::bind(fd.as_raw_fd(), &sa) {
        Ok(()) => {}
        Err(Errno::EADDRINUSE) => {
            return Err(Error::sys(
                "bind the DNS server (another server, of another user or without \
                 SO_REUSEPORT, holds the port; build the network with .dns(false) to do \
                 without) to",
                object(),
                Errno::EADDRINUSE,
            ))
        }
        Err(e) => return Err(sys("bind the DNS server to", e)),
    }
    if ty == SockType::Stream {
        socket::listen(
            &fd,
            socket::Backlog::new(128).unwrap_or(socket::Backlog::MAXCONN),
        )
        .map_err(|e| sys("listen on", e))?;
    }
    Ok(fd)
}

/// What every task of the server shares.
#[derive(Debug)]
struct Ctx {
    scope: Scope,
    live: Arc<Mutex<Live>>,
    fwd: Arc<Forwarder>,
    forwarding: bool,
    tcp: Mutex<TcpCount>,
}

#[derive(Debug, Default)]
struct TcpCount {
    total: usize,
    per_source: std::collections::HashMap<IpAddr, usize>,
}

impl Ctx {
    /// The outcome of `packet` from `src`, with the zone as of now.
    fn outcome(&self, packet: &[u8], transport: Transport, allowed: bool) -> Outcome {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.sync();
        respond(packet, transport, allowed, self.forwarding, &live.zone)
    }

    fn is_pod(&self, src: IpAddr) -> bool {
        from_pod(src, &self.scope.pools, &self.scope.gateways)
    }
}

async fn serve(
    scope: Scope,
    live: Arc<Mutex<Live>>,
    fwd: Arc<Forwarder>,
    udp: Vec<OwnedFd>,
    tcp: Vec<OwnedFd>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let forwarding = fwd.forwarding();
    let ctx = Arc::new(Ctx {
        scope,
        live,
        fwd,
        forwarding,
        tcp: Mutex::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch(ctx.clone()));
    for fd in udp {
        match UdpSocket::from_std(std::net::UdpSocket::from(fd)) {
            Ok(sock) => {
                tasks.spawn_local(serve_udp(ctx.clone(), Arc::new(sock)));
            }
            Err(e) => tracing::warn!(error = %e, "dns: UDP socket not served"),
        }
    }
    for fd in tcp {
        match TcpListener::from_std(std::net::TcpListener::from(fd)) {
            Ok(l) => {
                tasks.spawn(serve_tcp(ctx.clone(), l));
            }
            Err(e) => tracing::warn!(error = %e, "dns: TCP socket not served"),
        }
    }
    let _ = stop.await;
    tasks.abort_all();
}

/// How long the watcher lets changes gather before it takes them in
/// again: a burst of creates then wakes this thread a few times, not twice
/// per create, and leaves the CPUs to the creates.
const WATCH_BATCH: std::time::Duration = std::time::Duration::from_millis(20);

/// Take in changes as they come, so that the zone is fresh and the
/// inotify queue short when the queries are few. Correctness does not
/// rest on it: each query takes in what came before it anyway.
async fn watch(ctx: Arc<Ctx>) {
    let dup = ctx.live.lock().unwrap_or_else(|p| p.into_inner()).fd();
    let Ok(changes) = dup.and_then(|fd| crate::sys::async_fd(fd, Interest::READABLE)) else {
        tracing::warn!("dns: changes to the store are taken in only with queries");
        return;
    };
    loop {
        let Ok(mut ready) = changes.readable().await else {
            return;
        };
        // Cleared first: a change that comes during the sync is a new edge.
        ready.clear_ready();
        ctx.live.lock().unwrap_or_else(|p| p.into_inner()).sync();
        tokio::time::sleep(WATCH_BATCH).await;
    }
}

async fn serve_udp(ctx: Arc<Ctx>, sock: Arc<UdpSocket>) {
    let mut inbox = Inbox::new();
    let mut outbox = Outbox::new();
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        // Drain the queue before waiting again.
        loop {
            let mut n = 0;
            // A short batch means recvmmsg met an empty queue: readiness
            // is cleared then (WouldBlock), with no second call to learn
            // it. A datagram that comes after it wakes the reactor anew
            // (the socket is registered edge-triggered, and the reactor
            // runs on this thread only once this task waits).
            let got = sock.try_io(Interest::READABLE, || {
                n = inbox.recv(sock.as_fd())?;
                if n < BATCH {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            answer_batch(&ctx, &sock, &inbox, n, &mut outbox);
            outbox.flush(sock.as_fd());
            if got.is_err() {
                break;
            }
        }
    }
}

/// Answer the `n` datagrams of `inbox`, the replies into `outbox`; the
/// forwarded ones are sent by tasks of their own.
fn answer_batch(ctx: &Ctx, sock: &Arc<UdpSocket>, inbox: &Inbox, n: usize, outbox: &mut Outbox) {
    if n == 0 {
        return;
    }
    // One sync for the batch: every datagram of it had come before it.
    let mut live = ctx.live.lock().unwrap_or_else(|p| p.into_inner());
    live.sync();
    for i in 0..n {
        let Some((packet, src, ifindex)) = inbox.get(i) else {
            continue;
        };
        let allowed = ifindex == ctx.scope.bridge_index && ctx.is_pod(src.ip());
        match respond(packet, Transport::Udp, allowed, ctx.forwarding, &live.zone) {
            Outcome::Reply(reply) => outbox.push(reply, src),
            Outcome::Forward(query) => {
                let Some(slot) = ctx.fwd.admit(src.ip()) else {
                    if let Some(reply) = super::answer::servfail(&query, Transport::Udp) {
                        outbox.push(reply, src);
                    }
                    continue;
                };
                let packet = packet.to_vec();
                let (fwd, sock) = (ctx.fwd.clone(), sock.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Some(reply) = fwd.exchange(&query, &packet, Transport::Udp).await {
                        let _ = sock.send_to(&reply, src).await;
                    }
                });
            }
            Outcome::Drop => {}
        }
    }
}

async fn serve_tcp(ctx: Arc<Ctx>, listener: TcpListener) {
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            // Out of fds, say: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let source = peer.ip();
        {
            let mut t = ctx.tcp.lock().unwrap_or_else(|p| p.into_inner());
            let mine = t.per_source.get(&source).copied().unwrap_or(0);
            if t.total >= MAX_TCP || mine >= MAX_TCP_PER_SOURCE {
                continue; // closed: the client tries again
            }
            t.total += 1;
            *t.per_source.entry(source).or_default() += 1;
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let allowed = ctx.is_pod(source);
            let _ = serve_conn(&ctx, conn, source, allowed).await;
            let mut t = ctx.tcp.lock().unwrap_or_else(|p| p.into_inner());
            t.total -= 1;
            if let Some(n) = t.per_source.get_mut(&source) {
                *n -= 1;
                if *n == 0 {
                    t.per_source.remove(&source);
                }
            }
        });
    }
}

/// Queries on one connection, in turn, until it is closed or idle.
async fn serve_conn(
    ctx: &Ctx,
    mut conn: TcpStream,
    source: IpAddr,
    allowed: bool,
) -> io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, conn.read_u16()).await {
            Ok(len) => len?,
            Err(_) => return Ok(()),
        };
        let mut packet = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut packet))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let reply = match ctx.outcome(&packet, Transport::Tcp, allowed) {
            Outcome::Reply(r) => r,
            Outcome::Forward(query) => {
                let reply = match ctx.fwd.admit(source) {
                    Some(_slot) => ctx.fwd.exchange(&query, &packet, Transport::Tcp).await,
                    None => super::answer::servfail(&query, Transport::Tcp),
                };
                match reply {
                    Some(r) => r,
                    None => return Ok(()),
                }
            }
            Outcome::Drop => return Ok(()),
        };
        let len =
            u16::try_from(reply.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        conn.write_all(&out).await?;
    }
}
