//! The kernel path of a network's mappings, over `link::nft`: opening the
//! table, the DNAT rules of a published port and the comment naming them,
//! the deletion of a mapping's rules, and when `Auto` leaves a refusal to
//! the userspace forwarder.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;

use super::mapping::{PortForwarding, PortNetns, Protocol, PublishedPort};
use super::target::Target;
use crate::error::{Error, Result};
use crate::link::nft::{self, Dnat, Nft};

/// Open the nf_tables socket of network `bridge` in the calling thread's
/// namespace and make its table, owned by that socket; `None` if `mode`
/// lets the userspace forwarder stand in for a kernel that refuses.
pub(super) fn open_kernel(bridge: &str, mode: PortForwarding) -> Result<Option<Arc<Nft>>> {
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
pub(super) fn fallback<T>(mode: PortForwarding, made: Result<T>) -> Result<Option<T>> {
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

pub(super) fn nft_error(op: &'static str, object: &str, errno: Errno) -> Error {
    Error::Netlink {
        op,
        object: object.to_owned(),
        errno,
    }
}

/// A serial for a mapping's rules, unique in the process (so in its
/// tables).
pub(super) fn next_serial() -> u64 {
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
pub(super) fn dnats(
    target: &Target<'_>,
    port: &PublishedPort,
    forwarding: [bool; 2],
    serial: u64,
) -> Vec<Dnat> {
    let host = port.host.ip();
    // Connections to a real-host port arrive in another namespace than
    // the network's, where these rules are: the userspace forwarder's.
    if host.is_loopback() || port.netns == PortNetns::RealHost {
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
                localnet: None,
            });
        }
    }
    out
}

/// Whether the sysctl `net/<name>` of the calling thread's network
/// namespace is on. podnet reads it and never writes it.
pub(super) fn forwarding(name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/{name}")).is_ok_and(|v| v.trim() != "0")
}

/// Delete the rules of the mappings `serials` (blocking), trying three
/// times (a transient ENOBUFS or a lost answer is not the end); returns
/// the comments of the rules deleted. Rules left after a failure are
/// garbage that gc deletes, and the kernel deletes with the table when
/// the process ends (or the network is dropped).
pub(super) fn delete_serials(
    nft: &Nft,
    serials: &[u64],
) -> std::result::Result<Vec<String>, Errno> {
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

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;

    use super::super::mapping::Forwarder;
    use super::*;

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
            netns: PortNetns::Network,
            pod_port: 80,
            forwarder: Forwarder::Userspace,
            client_addresses: false,
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
        let outside = PublishedPort {
            netns: PortNetns::RealHost,
            ..port
        };
        assert!(dnats(&t, &outside, [true, true], 7).is_empty());
    }
}
