//! Forwarding the names that are not the network's: each query goes out
//! from a new socket (a random source port) with a random ID, to the
//! upstreams in turn, over the transport it came by; the reply must carry
//! that ID and the same question. In-flight queries are bounded in all
//! and per source, so one pod's flood cannot take every slot.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::answer::{answers, servfail, with_id, Transport};
use super::upstream::Upstreams;
use crate::rootless::SocketKind;

/// Queries in flight upstream, in all.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// Queries in flight upstream from one source address.
pub(crate) const MAX_PER_SOURCE: usize = 64;
/// How long one upstream gets to answer.
const TRY_TIMEOUT: Duration = Duration::from_millis(1000);
/// The longest a forwarded query waits before it is answered SERVFAIL.
const TOTAL_TIMEOUT: Duration = Duration::from_millis(2500);

/// The forwarder of one network's server.
#[derive(Debug)]
pub(crate) struct Forwarder {
    upstreams: Mutex<Upstreams>,
    in_flight: Mutex<InFlight>,
}

#[derive(Debug, Default)]
struct InFlight {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// A query's place in the in-flight table, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    fwd: Arc<Forwarder>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.fwd.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        t.total -= 1;
        if let Some(n) = t.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                t.per_source.remove(&self.source);
            }
        }
    }
}

impl Forwarder {
    pub(crate) fn new(upstreams: Upstreams) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            upstreams: Mutex::new(upstreams),
            in_flight: Mutex::default(),
        })
    }

    /// Whether other names are forwarded at all.
    pub(crate) fn forwarding(&self) -> bool {
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forwarding()
    }

    /// A slot for a query from `source`, if the table has room for it.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Slot> {
        let mut t = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mine = t.per_source.get(&source).copied().unwrap_or(0);
        if t.total >= MAX_IN_FLIGHT || mine >= MAX_PER_SOURCE {
            return None;
        }
        t.total += 1;
        *t.per_source.entry(source).or_default() += 1;
        Some(Slot {
            fwd: self.clone(),
            source,
        })
    }

    /// The reply to forwarded `query` (`packet` as the client sent it):
    /// the first upstream's that answers, with the client's ID, or
    /// SERVFAIL.
    pub(crate) async fn exchange(
        &self,
        query: &Message,
        packet: &[u8],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let servers = self
            .upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current();
        let each =
            TRY_TIMEOUT.min(TOTAL_TIMEOUT / u32::try_from(servers.len().max(1)).unwrap_or(1));
        for server in servers {
            let id = random_id();
            let sent = with_id(packet, id);
            let got = match transport {
                Transport::Udp => tokio::time::timeout(each, udp(server, &sent, id, query)).await,
                Transport::Tcp => tokio::time::timeout(each, tcp(server, &sent, id, query)).await,
            };
            match got {
                Ok(Some(reply)) => return Some(with_id(&reply, query.metadata.id)),
                Ok(None) => {
                    tracing::debug!(%server, "dns: upstream refused or failed");
                }
                Err(_) => tracing::debug!(%server, "dns: upstream timed out"),
            }
        }
        servfail(query, transport)
    }
}

/// One UDP exchange with `server`, from a new socket: the first reply
/// that answers `query` sent with ID `id`; `None` if the socket fails (an
/// ICMP unreachable comes back as ECONNREFUSED at once).
async fn udp(server: SocketAddr, packet: &[u8], id: u16, query: &Message) -> Option<Vec<u8>> {
    let sock = match outside(server, SocketKind::Udp).await? {
        Some(fd) => UdpSocket::from_std(std::net::UdpSocket::from(fd)).ok()?,
        None => {
            let any = match server {
                SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            };
            UdpSocket::bind(any).await.ok()?
        }
    };
    // Connecting binds a port the kernel picks at random.
    sock.connect(server).await.ok()?;
    sock.send(packet).await.ok()?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.ok()?;
        // Anything else (a stray or forged packet) is not the answer.
        if answers(&buf[..n], id, query) {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

/// One TCP exchange with `server`, on a new connection.
async fn tcp(server: SocketAddr, packet: &[u8], id: u16, query: &Message) -> Option<Vec<u8>> {
    let mut conn = match outside(server, SocketKind::Tcp).await? {
        Some(fd) => TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
            .connect(server)
            .await
            .ok()?,
        None => TcpStream::connect(server).await.ok()?,
    };
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    conn.write_all(&out).await.ok()?;
    let len = conn.read_u16().await.ok()?;
    let mut buf = vec![0u8; usize::from(len)];
    conn.read_exact(&mut buf).await.ok()?;
    answers(&buf, id, query).then_some(buf)
}

/// In a process that entered rootless namespaces, whose host namespace
/// has no way out, a socket for `server` from the namespace it was in
/// before (`Some(Some(fd))`, or `None` if that fails); elsewhere
/// `Some(None)`: the server's own namespace is the way out. The exchange
/// with `podnet-outer` blocks (for up to its 5 s bound if the maker is
/// stuck), so it runs off the server's thread, which answers every other
/// query meanwhile.
async fn outside(server: SocketAddr, kind: SocketKind) -> Option<Option<OwnedFd>> {
    if !crate::rootless::has_outside() {
        return Some(None);
    }
    let made = tokio::task::spawn_blocking(move || {
        crate::rootless::socket_outside(server.is_ipv6(), kind)
    })
    .await
    .ok()?;
    match made {
        None => Some(None),
        Some(Ok(fd)) => Some(Some(fd)),
        Some(Err(e)) => {
            tracing::debug!(%server, error = %e, "dns: no socket outside the rootless namespaces");
            None
        }
    }
}

/// A query ID from the kernel's random pool (RFC 5452: IDs and ports
/// that an off-path attacker cannot guess).
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        // No entropy (never on Linux ≥ 3.17): the time's low bits.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = t.to_le_bytes()[..2].try_into().unwrap_or([0, 0]);
    }
    u16::from_ne_bytes(b)
}
