//! The userspace forwarder's data path: a TCP connection to the sandbox
//! per accepted client, a UDP flow per client address, within the fd
//! budget of the process.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::client::{connect_from, udp_from, Shown};
use super::splice;

/// Most concurrent UDP flows (clients) of one mapped port; datagrams from
/// further clients are dropped until a flow idles out.
pub const MAX_UDP_FLOWS: usize = 4096;

/// Per-direction buffer of a TCP connection: 64 KiB instead of tokio's
/// 8 KiB default, for fewer wake-ups per byte.
const TCP_BUF: usize = 64 * 1024;

/// How long a forwarded TCP connection may take to reach the sandbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The file descriptors the forwarder of this process may hold for
/// connections and flows: a quarter of the soft `RLIMIT_NOFILE`, so that
/// traffic from outside can never take the fds the rest of the process
/// (podnet's own netlink sockets, pidfds and store files included) needs.
/// A TCP connection takes two, and four more for its pipes while the
/// budget has them (else it copies instead of splicing: [`MAX_SPLICED`]), a
/// UDP flow one;
/// past the budget, new connections wait in the listen backlog and new UDP
/// clients are dropped.
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

/// Most TCP connections of this process whose bytes are spliced at once;
/// the others are copied. Each holds two pipes of 64 KiB, and the kernel
/// counts pipe pages per user (`fs.pipe-user-pages-soft`, 16,384 pages: 64
/// MiB): past that, every new pipe of that user, in any of its programs,
/// gets 8 KiB. 64 connections hold 8 MiB of it, and up to 8 MiB more for
/// pipes grown for bulk transfers (`splice::MAX_GROWN`).
const MAX_SPLICED: usize = 64;

fn splicing() -> Arc<tokio::sync::Semaphore> {
    static SPLICING: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SPLICING
        .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(MAX_SPLICED)))
        .clone()
}

/// Largest UDP payload.
const UDP_BUF: usize = 65_535;

/// Accept connections on `listener` and forward each to `to`, from the
/// client's own address where `shown` allows. Dropping the task drops the
/// listener and every connection.
pub(super) async fn serve_tcp(listener: TcpListener, to: SocketAddr, shown: Option<Shown>) {
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
                Ok((client, peer)) => {
                    let from = shown.and_then(|s| s.source(peer, to));
                    conns.spawn(async move {
                        forward_tcp(client, from, to).await;
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

/// One TCP connection: connect to the sandbox, then move bytes both ways
/// (`splice`, or a copy). EOF on one side becomes `shutdown(SHUT_WR)` on
/// the other while the other direction goes on (half-close), as both do.
async fn forward_tcp(mut client: TcpStream, from: Option<SocketAddr>, to: SocketAddr) {
    let _ = client.set_nodelay(true);
    let connect = async {
        if let Some(from) = from {
            match connect_from(from, to).await {
                Ok(s) => return Ok(s),
                Err(Some(e)) => return Err(e),
                // Could not bind there: from the forwarder's own address.
                Err(None) => {}
            }
        }
        TcpStream::connect(to).await
    };
    let mut pod = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        _ => {
            // Nothing listens in the sandbox: reset, as the pod's kernel
            // did to us, rather than accept and close cleanly.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = pod.set_nodelay(true);
    // splice(2) through two pipes (four more fds, if the budget has them)
    // moves the bytes without copying them through this process; without
    // them, a copy through two 64 KiB buffers.
    let pipes = splicing()
        .try_acquire_owned()
        .ok()
        .zip(fd_budget().try_acquire_many_owned(4).ok())
        .and_then(|permits| Some((splice::Pipes::new().ok()?, permits)));
    let copied = match pipes {
        Some((pipes, _permits)) => splice::relay(&client, &pod, pipes).await.map(drop),
        None => tokio::io::copy_bidirectional_with_sizes(&mut client, &mut pod, TCP_BUF, TCP_BUF)
            .await
            .map(drop),
    };
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
/// only; bound to the client's own address where `shown` allows). A flow
/// ends after `idle` without a datagram either way.
pub(super) async fn serve_udp(
    sock: UdpSocket,
    to: SocketAddr,
    idle: Duration,
    shown: Option<Shown>,
) {
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
                    let from = shown.and_then(|s| s.source(client, to));
                    let made = new_flow(&sock, client, from, to, idle, &mut tasks, permit).await;
                    let Ok(flow) = made else {
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
    from: Option<SocketAddr>,
    to: SocketAddr,
    idle: Duration,
    tasks: &mut JoinSet<SocketAddr>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> io::Result<Flow> {
    let any = match to {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    // From the client's own address if it can be bound, else the
    // forwarder's.
    let up = match from.map(udp_from) {
        Some(Ok(up)) => up,
        _ => UdpSocket::bind(any).await?,
    };
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
