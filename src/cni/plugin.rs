//! The verbs of `podnet-cni` over the library: a parsed request becomes a
//! [`Network`] built from the configuration (the same bridge and store
//! that library users of that bridge share) and one call on it: ADD is
//! [`Network::attach`], DEL [`Network::detach`], CHECK
//! [`Network::check_attachment`] compared with `prevResult`, GC
//! [`Network::retain_attachments`] and [`Network::gc`], STATUS a build and
//! a write to the store. Library errors become the spec's codes here.

use std::ffi::OsString;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::config::NetConf;
use super::env::Command;
use super::error::CniError;
use super::request::{parse_request, NetworkRequest, Request};
use super::result::{CniResult, Interface, IpConfig, Route};
use super::version::requested;
use crate::{Attachment, Error, Network};

pub use super::codes;
pub use super::network::{network_builder, DEFAULT_BRIDGE};

/// What one invocation prints on stdout, and whether it succeeded (exit
/// status 0) or not (1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The result, VERSION's or STATUS's answer, or the error JSON.
    pub stdout: String,
    /// Whether the verb succeeded.
    pub success: bool,
}

/// Run one invocation: the CNI environment `vars` and the configuration
/// `stdin`. Never panics on any input; every failure is the spec's error
/// JSON in the requested version.
pub fn run(vars: impl IntoIterator<Item = (OsString, OsString)>, stdin: &[u8]) -> Outcome {
    let answered = match parse_request(vars, stdin) {
        Ok(Request::Version { reply }) => Ok(reply),
        Ok(Request::Network(req)) => on_runtime(*req, stdin),
        Err(e) => Err(e),
    };
    match answered {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => Outcome {
            stdout: e.to_json(requested(stdin)),
            success: false,
        },
    }
}

/// A verb on a current-thread runtime of its own; `stdin` is the
/// configuration as it came (for the DNS server an ADD may start).
fn on_runtime(req: NetworkRequest, stdin: &[u8]) -> Result<String, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::io("cannot start a runtime", e.to_string()))?;
    let deadline = deadline();
    let command = req.env.command;
    let answered = rt.block_on(async { tokio::time::timeout(deadline, verb(req, stdin)).await });
    // A verb cut short may leave a blocking thread waiting for the store's
    // lock: not waited for (the process ends with it).
    rt.shutdown_background();
    answered.unwrap_or_else(|_| {
        Err(CniError::try_again(
            format!("{} did not finish within {deadline:?}", command.as_str()),
            "the network's store or the kernel is busy (another process holds the \
             store's lock); nothing was made that the next call cannot take away",
        ))
    })
}

/// How long a verb may take before it gives up with code 11: 30 s, or
/// `PODNET_CNI_TIMEOUT` seconds.
fn deadline() -> std::time::Duration {
    let secs = std::env::var("PODNET_CNI_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(30.0);
    std::time::Duration::from_secs_f64(secs)
}

async fn verb(req: NetworkRequest, stdin: &[u8]) -> Result<String, CniError> {
    let conf = &req.config;
    match req.env.command {
        Command::Add => add(&req, stdin).await,
        Command::Del => del(&req).await.map(|()| String::new()),
        Command::Check => check(&req).await.map(|()| String::new()),
        Command::Gc => gc(conf).await.map(|()| String::new()),
        Command::Status => status(conf).await.map(|()| String::new()),
        Command::Version => Err(CniError::internal(
            "VERSION reached the network verbs",
            "it is answered before any network is built",
        )),
    }
}

/// Whether the container gets default routes: `isDefaultGateway`, or a
/// default route in `ipam.routes` (podman's conflists ask for it so).
fn default_routes(conf: &NetConf) -> bool {
    conf.is_default_gateway || conf.ipam.routes.iter().any(|r| r.dst.prefix() == 0)
}

async fn build(conf: &NetConf) -> Result<Network, CniError> {
    network_builder(conf)?.build().await.map_err(from_error)
}

/// The attachment's key from the environment (present for ADD, DEL and
/// CHECK: the request checked it).
fn key(req: &NetworkRequest) -> Result<(&str, &str), CniError> {
    match (&req.env.container_id, &req.env.ifname) {
        (Some(c), Some(i)) => Ok((c, i)),
        _ => Err(CniError::missing_env(&["CNI_CONTAINERID", "CNI_IFNAME"])),
    }
}

async fn add(req: &NetworkRequest, stdin: &[u8]) -> Result<String, CniError> {
    let conf = &req.config;
    let (cid, ifname) = key(req)?;
    let netns = req
        .env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::missing_env(&["CNI_NETNS"]))?;
    refuse_own_namespace(netns)?;
    let ips = conf.static_ips(req.env.arg("IP"))?;
    let mac = conf.mac(req.env.arg("MAC"))?;
    let net = build(conf).await?;
    let mut b = net
        .attach(cid, ifname, netns)
        .default_routes(default_routes(conf))
        .hairpin(conf.hairpin_mode)
        // The runtime reserves its host ports (podman binds them).
        .probe_host_ports(false);
    for ip in ips {
        b = b.ip(ip);
    }
    if let Some(mac) = mac {
        b = b.mac(mac);
    }
    if let Some(mtu) = conf.mtu {
        b = b.mtu(mtu);
    }
    for alias in dns_names(req) {
        b = b.alias(alias);
    }
    let v6 = net.subnets().iter().any(IpNetwork::is_ipv6);
    for mapping in port_mappings(conf, v6)? {
        b = b.port(mapping);
    }
    let att = match b.attach().await {
        Err(Error::NotFound {
            what: "network namespace",
            name,
        }) => {
            return Err(CniError::invalid_env(
                "CNI_NETNS",
                format!("no network namespace at {name}"),
            ))
        }
        other => other.map_err(from_error)?,
    };
    let mut result = result_of(conf, req.prev_result.clone().unwrap_or_default(), &att);
    if let Some(dns) = &conf.dns_server {
        if let Err(e) = super::dns::ensure(&net, stdin) {
            // Without its server the attachment is not what was asked.
            let _ = net.detach(cid, ifname).await;
            return Err(e);
        }
        let domain = dns.domain.as_deref().unwrap_or(crate::DEFAULT_DOMAIN);
        result.dns = super::result::Dns {
            nameservers: net.gateways(),
            domain: Some(domain.to_owned()),
            search: vec![domain.to_owned()],
            options: Vec::new(),
        };
    }
    result.to_json_at(conf.cni_version)
}

/// The runtime's `portMappings` as podnet's: a mapping without `hostIP`
/// listens on every address of both families (`::`) where the network
/// has an IPv6 pool, else on `0.0.0.0`, as the `portmap` plugin's does.
///
/// # Errors
/// Code 2 naming an SCTP mapping (podnet maps TCP and UDP).
fn port_mappings(conf: &NetConf, v6: bool) -> Result<Vec<crate::PortMapping>, CniError> {
    use super::config::Protocol as Cni;
    let any = if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let mut out = Vec::new();
    for (i, m) in conf.runtime_config.port_mappings.iter().enumerate() {
        let protocol = match m.protocol {
            Cni::Tcp => crate::Protocol::Tcp,
            Cni::Udp => crate::Protocol::Udp,
            Cni::Sctp => {
                return Err(CniError::unsupported_field(
                    &format!("runtimeConfig.portMappings[{i}].protocol"),
                    "sctp",
                    "podnet maps TCP and UDP ports",
                ))
            }
        };
        out.push(
            crate::PortMapping::new(protocol, m.host_port, m.container_port)
                .host_ip(m.host_ip.unwrap_or(any)),
        );
    }
    Ok(out)
}

/// The DNS names an ADD gives its attachment: the runtime's aliases and
/// the pod's name (`K8S_POD_NAME` in `CNI_ARGS`, where podman and the CRI
/// put it), lowercased; a name that is not a DNS-1123 label is left out
/// (podman allows `_` and `.` in container names).
fn dns_names(req: &NetworkRequest) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let given = req
        .env
        .arg("K8S_POD_NAME")
        .into_iter()
        .map(str::to_owned)
        .chain(req.config.runtime_config.aliases.iter().cloned());
    for name in given {
        let name = name.to_ascii_lowercase();
        if crate::names::validate_alias(&name).is_ok() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// CNI_NETNS must not be the plugin's own network namespace (the host's:
/// wiring it would take the host's interface name and routes), unless
/// `CNI_NETNS_OVERRIDE=1`, as libcni's `skel` checks.
fn refuse_own_namespace(netns: &std::path::Path) -> Result<(), CniError> {
    if std::env::var("CNI_NETNS_OVERRIDE").as_deref() == Ok("1") {
        return Ok(());
    }
    let id = |p: &std::path::Path| nix::sys::stat::stat(p).map(|st| (st.st_dev, st.st_ino));
    match (
        id(netns),
        id(std::path::Path::new("/proc/thread-self/ns/net")),
    ) {
        (Ok(theirs), Ok(ours)) if theirs == ours => Err(CniError::invalid_env(
            "CNI_NETNS",
            format!(
                "{} is the plugin's own network namespace (set CNI_NETNS_OVERRIDE=1 to \
                 mean it)",
                netns.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// The result of an ADD: `prev`'s (a plugin before podnet in the chain)
/// with the attachment's interfaces, addresses, routes and DNS added.
pub fn result_of(conf: &NetConf, mut prev: CniResult, att: &Attachment) -> CniResult {
    prev.interfaces.push(Interface {
        name: att.host_interface.clone(),
        mac: att.host_mac,
        mtu: conf.mtu,
        sandbox: None,
    });
    let inside = prev.interfaces.len();
    prev.interfaces.push(Interface {
        name: att.ifname.clone(),
        mac: att.mac,
        mtu: conf.mtu,
        sandbox: Some(att.netns.display().to_string()),
    });
    for (addr, gw) in att.addresses.iter().zip(&att.gateways) {
        prev.ips.push(IpConfig {
            address: *addr,
            gateway: Some(*gw),
            interface: Some(inside),
        });
        if att.default_routes {
            let any = match gw {
                IpAddr::V4(_) => IpNetwork::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
                IpAddr::V6(_) => IpNetwork::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
            };
            // A /0 is always a valid network.
            if let Ok(dst) = any {
                prev.routes.push(Route { dst, gw: Some(*gw) });
            }
        }
    }
    // The runtime's `dns` capability first, then the network's `dns`.
    let dns = [&conf.runtime_config.dns, &conf.dns]
        .into_iter()
        .find(|d| !d.is_empty());
    if let (true, Some(dns)) = (prev.dns.is_empty(), dns) {
        prev.dns = dns.clone();
    }
    prev
}

async fn del(req: &NetworkRequest) -> Result<(), CniError> {
    let (cid, ifname) = key(req)?;
    let net = build(&req.config).await?;
    net.detach(cid, ifname).await.map_err(from_error)?;
    Ok(())
}

async fn check(req: &NetworkRequest) -> Result<(), CniError> {
    let (cid, ifname) = key(req)?;
    let net = build(&req.config).await?;
    let att = match net.check_attachment(cid, ifname).await {
        Err(Error::NotFound { name, .. }) => {
            return Err(CniError::unknown_container(
                format!("no attachment {name} on network {:?}", req.config.name),
                "ADD did not make it, or DEL or GC ended it",
            ))
        }
        other => other.map_err(from_error)?,
    };
    let Some(prev) = &req.prev_result else {
        return Err(CniError::missing_config(
            "prevResult",
            "CHECK needs the result of the ADD it checks",
        ));
    };
    let missing = compare(prev, &att);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            codes::BROKEN,
            format!("attachment {cid}/{ifname} is not as ADD made it"),
            missing.join("; "),
        ))
    }
}

/// What `prev` (the ADD's result) says that `att` (as the kernel shows
/// it) does not bear out, one item each.
pub fn compare(prev: &CniResult, att: &Attachment) -> Vec<String> {
    let mut missing = Vec::new();
    let inside = prev
        .interfaces
        .iter()
        .position(|i| i.name == att.ifname && i.sandbox.is_some());
    match inside {
        None => missing.push(format!(
            "prevResult lists no interface {} inside the container",
            att.ifname
        )),
        Some(i) => {
            if let (Some(want), Some(got)) = (prev.interfaces[i].mac, att.mac) {
                if want != got {
                    missing.push(format!(
                        "interface {} has MAC {}, not {} as prevResult says",
                        att.ifname,
                        super::mac::format_mac(&got),
                        super::mac::format_mac(&want)
                    ));
                }
            }
            for ip in prev.ips.iter().filter(|ip| ip.interface == Some(i)) {
                if !att.addresses.contains(&ip.address) {
                    missing.push(format!(
                        "address {} of prevResult is not on {}",
                        ip.address, att.ifname
                    ));
                }
            }
        }
    }
    missing
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let keep: Vec<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let net = build(conf).await?;
    let mut errors = Vec::new();
    if let Err(e) = net.retain_attachments(&keep).await {
        errors.push(e.to_string());
    }
    if let Err(e) = net.gc().await {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::io(
            format!("GC of network {:?} met errors", conf.name),
            errors.join("; "),
        ))
    }
}

async fn status(conf: &NetConf) -> Result<(), CniError> {
    let b = network_builder(conf)?;
    let net = b.build().await.map_err(|e| {
        CniError::not_available(
            format!("network {:?} cannot be made", conf.name),
            e.to_string(),
        )
    })?;
    probe_store(&net).map_err(|e| {
        CniError::not_available(
            format!(
                "the address store of network {:?} is not writable",
                conf.name
            ),
            e,
        )
    })?;
    // ADD can work; are the containers it made still wired?
    let mut broken = Vec::new();
    for att in net.attachments().map_err(from_error)? {
        if let Err(e) = net.check_attachment(&att.container_id, &att.ifname).await {
            broken.push(e.to_string());
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(CniError::limited_connectivity(
            format!(
                "{} container(s) of network {:?} are not wired as ADD made them",
                broken.len(),
                conf.name
            ),
            broken.join("; "),
        ))
    }
}

/// Write and remove a file where the store lives.
fn probe_store(net: &Network) -> Result<(), String> {
    let probe = net
        .store_path()
        .join(format!(".status-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| format!("{}: {e}", probe.display()))?;
    std::fs::remove_file(&probe).map_err(|e| format!("{}: {e}", probe.display()))
}

/// A library error as the spec's: bad input is 7 (or 4 for the
/// environment), a taken or exhausted resource one of podnet's codes, a
/// store that cannot be read or written 5, a lock another holds 11.
pub fn from_error(e: Error) -> CniError {
    let details = e.to_string();
    match &e {
        Error::InvalidName {
            what: "interface", ..
        } => CniError::invalid_env("CNI_IFNAME", details),
        Error::InvalidName {
            what: "container ID",
            ..
        } => CniError::invalid_env("CNI_CONTAINERID", details),
        Error::InvalidName { .. } | Error::InvalidConfig { .. } | Error::NotABridge { .. } => {
            CniError::new(
                CniError::INVALID_CONFIG,
                "invalid network configuration",
                details,
            )
        }
        Error::AddressNotInPool { .. } => CniError::new(
            CniError::INVALID_CONFIG,
            "a static address asked for is not in the network's subnet",
            details,
        ),
        Error::AlreadyExists {
            what: "interface", ..
        } => CniError::new(
            codes::INTERFACE_EXISTS,
            "the interface exists already",
            details,
        ),
        Error::AlreadyExists { .. } => CniError::new(
            codes::ATTACHMENT_EXISTS,
            "the attachment exists already",
            details,
        ),
        Error::AddressTaken { .. } => {
            CniError::new(codes::ADDRESS_TAKEN, "the address is taken", details)
        }
        Error::PoolExhausted { .. } => {
            CniError::new(codes::POOL_EXHAUSTED, "no address is free", details)
        }
        Error::PortInUse { .. } => {
            CniError::new(codes::PORT_IN_USE, "a host port is mapped already", details)
        }
        Error::ForwardingOff { .. } => {
            CniError::new(codes::FORWARDING_OFF, "IP forwarding is off", details)
        }
        Error::NotPermitted { .. } => CniError::new(codes::NOT_PERMITTED, "not permitted", details),
        Error::Broken { .. } => CniError::new(codes::BROKEN, "the attachment is broken", details),
        Error::NotFound { .. } => CniError::unknown_container("not found", details),
        Error::StateCorrupt { .. } | Error::Io { .. } => {
            CniError::io("the address store cannot be used", details)
        }
        Error::Sys { errno, .. } | Error::Netlink { errno, .. }
            if matches!(*errno, nix::errno::Errno::EAGAIN | nix::errno::Errno::EBUSY) =>
        {
            CniError::try_again("the kernel is busy", details)
        }
        _ => CniError::new(codes::KERNEL, "the kernel refused a request", details),
    }
}
