//! Reserving a request's host ports ([`reserve`]): every socket bound in
//! the network's host namespace before anything else changes, all or
//! none, held as [`Reserved`] until the mappings start.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use nix::errno::Errno;
use tokio::net::{TcpListener, UdpSocket};

use super::engine::{forwarder_gone, Engine, EngineCell};
use super::mapping::{plan, Forwarder, PortMapping, Protocol, PublishedPort};
use super::target::Host;
use crate::error::{Error, Result};

/// Host ports bound for a request, not forwarding yet. Dropping it closes
/// them.
#[derive(Debug, Default)]
pub(crate) struct Reserved(pub(super) Vec<Bound>);

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
/// namespace of the network (`host_ns`). No mapping: no forwarder is
/// started and nothing is bound.
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
