//! Reserving a request's host ports ([`reserve`]): every socket bound in
//! the network's host namespace, or on the real host by `podnet-outer`,
//! before anything else changes, all or none, held as [`Reserved`] until
//! the mappings start.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use nix::errno::Errno;
use tokio::net::{TcpListener, UdpSocket};

use super::engine::{forwarder_gone, Engine, EngineCell};
use super::mapping::{plan, Forwarder, Planned, PortMapping, PortNetns, Protocol, PublishedPort};
use super::target::Host;
use crate::error::{Error, Result};
use crate::rootless::{listener_outside, Outside, SocketKind};

/// Host ports bound for a request, not forwarding yet. Dropping it closes
/// them.
#[derive(Debug, Default)]
pub(crate) struct Reserved(pub(super) Vec<Bound>);

impl Reserved {
    /// The ports bound, as they will be published.
    pub(crate) fn ports(&self) -> Vec<PublishedPort> {
        self.0.iter().map(|b| b.port).collect()
    }
}

#[derive(Debug)]
pub(super) struct Bound {
    pub(super) port: PublishedPort,
    pub(super) sock: Sock,
    pub(super) udp_idle: Duration,
}

#[derive(Debug)]
pub(super) enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Validate `mappings` and bind every host port they need, in the host
/// namespace of the network (`host_ns`), or, for a mapping on the real
/// host, in the namespace the process was in before it entered rootless
/// ones (a socket `podnet-outer` makes and binds there). No mapping: no
/// forwarder is started and nothing is bound.
///
/// Every host port of a request (a `create()` or an `add_port`) is bound
/// before anything else changes, and either all of them are or none: a
/// taken port is [`Error::PortInUse`] and the ports bound before it are
/// closed again.
///
/// The userspace forwarder's listening socket is always made: it is the
/// reservation of the host port (a kernel rule binds nothing, so without it
/// another program could take the port and a conflict would go unnoticed,
/// as podman and CNI's portmap also hold one), and it serves what the rules
/// leave to it: destinations on loopback (DNAT from 127.0.0.1 needs
/// `route_localnet` in the host namespace, a sysctl podnet does not change)
/// and clients of an address family the sandbox has no address of. The
/// kernel rules see the packets first (prerouting and output, before the
/// socket lookup), so everything else never reaches the socket.
pub(crate) async fn reserve(
    slot: &EngineCell,
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
        for p in plan {
            // On error, `out` is dropped and the ports bound before close.
            let (sock, netns) = bind_one(&sandbox, &p).await?;
            let local = match &sock {
                Sock::Tcp(l) => l.local_addr(),
                Sock::Udp(u) => u.local_addr(),
            }
            .map_err(|e| bind_error(&sandbox, p.protocol, p.host, &e))?;
            out.push(Bound {
                port: PublishedPort {
                    protocol: p.protocol,
                    host: local,
                    netns,
                    pod_port: p.pod_port,
                    forwarder: Forwarder::Userspace,
                    client_addresses: false,
                },
                sock,
                udp_idle: p.udp_idle,
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

/// Bind the host port of `p`, on the forwarder's thread: in the network's
/// host namespace, or on the real host through `podnet-outer` (which a
/// process that entered no rootless namespace does not have: its real
/// host is the network's host namespace). Says where it is bound.
async fn bind_one(sandbox: &str, p: &Planned) -> Result<(Sock, PortNetns)> {
    let (protocol, host) = (p.protocol, p.host);
    if p.netns == PortNetns::RealHost {
        let kind = match protocol {
            Protocol::Tcp => SocketKind::Tcp,
            Protocol::Udp => SocketKind::Udp,
        };
        // A blocking exchange with podnet-outer (bounded): off the
        // forwarder's runtime thread, which moves every mapping's bytes.
        let outside = tokio::task::spawn_blocking(move || listener_outside(kind, host))
            .await
            .map_err(|_| forwarder_gone())?;
        match outside {
            Some(Ok(fd)) => {
                let sock = match protocol {
                    Protocol::Tcp => TcpListener::from_std(fd.into()).map(Sock::Tcp),
                    Protocol::Udp => UdpSocket::from_std(fd.into()).map(Sock::Udp),
                };
                let sock = sock.map_err(|e| bind_error(sandbox, protocol, host, &e))?;
                return Ok((sock, PortNetns::RealHost));
            }
            Some(Err(Outside::Refused(errno))) => {
                return Err(real_host_error(sandbox, protocol, host, errno))
            }
            Some(Err(Outside::Broken(e))) => {
                return Err(Error::Sys {
                    op: "bind real-host port",
                    object: format!("{protocol} {host} for sandbox {sandbox:?}: {e}"),
                    errno: e.errno().unwrap_or(Errno::EIO),
                })
            }
            None => {}
        }
    }
    let sock = match protocol {
        Protocol::Tcp => TcpListener::bind(host).await.map(Sock::Tcp),
        Protocol::Udp => UdpSocket::bind(host).await.map(Sock::Udp),
    };
    let sock = sock.map_err(|e| bind_error(sandbox, protocol, host, &e))?;
    Ok((sock, PortNetns::Network))
}

/// What `podnet-outer`'s refusal to bind `address` on the real host is
/// reported as. Not [`Error::sys`]: its `NotPermitted` names ways to get
/// privilege over the network's host namespace, which do not help here.
fn real_host_error(sandbox: &str, protocol: Protocol, address: SocketAddr, errno: Errno) -> Error {
    let sandbox = sandbox.to_owned();
    match errno {
        Errno::EADDRINUSE => Error::PortInUse {
            sandbox,
            protocol,
            address,
            netns: PortNetns::RealHost,
            errno,
        },
        // Below 1024 the unprivileged port range is the cause; above it
        // (a real host that raised the sysctl, or a security module's
        // refusal) the errno says what there is to say.
        Errno::EACCES if address.port() < 1024 => Error::PrivilegedPort {
            sandbox,
            protocol,
            address,
            errno,
        },
        _ => Error::Sys {
            op: "bind real-host port",
            object: format!("{protocol} {address} for sandbox {sandbox:?}"),
            errno,
        },
    }
}

fn bind_error(sandbox: &str, protocol: Protocol, address: SocketAddr, e: &io::Error) -> Error {
    let errno = Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32));
    if errno == Errno::EADDRINUSE {
        return Error::PortInUse {
            sandbox: sandbox.to_owned(),
            protocol,
            address,
            netns: PortNetns::Network,
            errno,
        };
    }
    Error::sys(
        "bind host port",
        format!("{protocol} {address} for sandbox {sandbox:?}"),
        errno,
    )
}
