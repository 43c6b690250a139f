//! The crate's one error type. Variants are chosen by what a caller can do
//! about them; a failed system operation names the operation and the
//! object and keeps the errno as its `#[source]`. There is no blanket
//! `From<io::Error>`: every call site says what it was doing.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use nix::errno::Errno;

/// The three ways to run podnet with the privilege it needs.
pub(crate) const PRIVILEGE_HINT: &str = "podnet needs CAP_NET_ADMIN and CAP_SYS_ADMIN over the \
     host network namespace: run as root, run under `unshare --user --map-root-user --net`, or \
     call podnet::rootless::enter() first thing in main";

/// Everything that can go wrong in podnet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process lacks the privilege for `op`; `hint` names the three ways to get it.
    #[error("{op}: not permitted; {hint}")]
    NotPermitted {
        /// What was attempted.
        op: String,
        /// How to get the privilege.
        hint: &'static str,
    },

    /// A name (sandbox, bridge) is not acceptable.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// Which kind of name: "sandbox", "bridge".
        what: &'static str,
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// A setting is not acceptable (a pool too small, an MTU out of range).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },

    /// An object with that name exists already.
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// "sandbox", "link".
        what: &'static str,
        /// Its name.
        name: String,
    },

    /// A host port of a port mapping is taken (`EADDRINUSE`) by another
    /// socket of the namespace it was to open in (`netns`). Nothing was
    /// changed: ports of the same request bound before it were closed
    /// again.
    #[error(
        "{protocol} port {address}{} is already in use: cannot publish it for sandbox {sandbox:?}",
        on_real_host(*.netns)
    )]
    PortInUse {
        /// The sandbox the mapping was for.
        sandbox: String,
        /// The protocol of the mapping.
        protocol: crate::Protocol,
        /// The host address and port.
        address: std::net::SocketAddr,
        /// Where it is taken: the network's host namespace or the real
        /// host (a rootless user may hold the same port in both).
        netns: crate::PortNetns,
        /// `EADDRINUSE`.
        #[source]
        errno: Errno,
    },

    /// A host port of a mapping on the real host
    /// ([`PortMapping::real_host`](crate::PortMapping::real_host)) is
    /// privileged there: below the real host's
    /// `net.ipv4.ip_unprivileged_port_start` (1024 by default), which only a
    /// process with `CAP_NET_BIND_SERVICE` in the real host's user
    /// namespace may bind (`EACCES`). An unprivileged user's process does
    /// not have it, and no namespace it makes can give it. Nothing was
    /// changed. Said of an `EACCES` for a port below 1024; above, where
    /// the cause is another (a security module's refusal, a raised
    /// sysctl), the refusal is [`Error::Sys`] with its errno.
    #[error(
        "{protocol} port {address} on the real host is privileged: cannot publish it for sandbox \
         {sandbox:?} (use a port of at least net.ipv4.ip_unprivileged_port_start, 1024 by default, \
         or have root lower that sysctl, as for rootless podman)"
    )]
    PrivilegedPort {
        /// The sandbox the mapping was for.
        sandbox: String,
        /// The protocol of the mapping.
        protocol: crate::Protocol,
        /// The host address and port.
        address: std::net::SocketAddr,
        /// `EACCES`.
        #[source]
        errno: Errno,
    },

    /// The bridge name is held by a link of another kind.
    #[error("link {name:?} exists and is a {kind}, not a bridge")]
    NotABridge {
        /// The link's name.
        name: String,
        /// The kind it has ("veth", "unknown", ...).
        kind: String,
    },

    /// Egress needs IP forwarding in the network's host namespace, it is
    /// off there, and the builder was not asked to turn it on. Nothing was
    /// changed.
    #[error(
        "network {network:?}: egress needs {sysctl}=1 in the host network namespace, and it is \
         0; turn it on yourself (sysctl -w {sysctl}=1), or call .enable_forwarding(true) on the \
         network's builder to let podnet turn it on; nothing was changed"
    )]
    ForwardingOff {
        /// The network (bridge) name.
        network: String,
        /// The sysctl that is off: `net.ipv4.ip_forward` or
        /// `net.ipv6.conf.all.forwarding`.
        sysctl: &'static str,
    },

    /// The network still has sandboxes, so it cannot be removed.
    #[error("network {network:?} still has sandboxes: {}", .sandboxes.join(", "))]
    Busy {
        /// The network (bridge) name.
        network: String,
        /// The sandboxes left.
        sandboxes: Vec<String>,
    },

    /// An attachment's record is there but what it made is not all there
    /// (see [`Network::check_attachment`](crate::Network::check_attachment)).
    #[error("attachment {key:?} is broken: {}", .missing.join("; "))]
    Broken {
        /// `<container ID>/<interface>`.
        key: String,
        /// What is missing or not as it was made, one item each.
        missing: Vec<String>,
    },

    /// No object of that name exists.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// "sandbox".
        what: &'static str,
        /// Its name.
        name: String,
    },

    /// Every address of the pool is in use.
    #[error("address pool {pool} of network {network:?} is exhausted")]
    PoolExhausted {
        /// The network (bridge) name.
        network: String,
        /// The pool.
        pool: IpNetwork,
    },

    /// A bridge of the network has no port left for another sandbox: a
    /// Linux bridge takes at most 1,023 ports (`BR_MAX_PORTS`; the kernel
    /// answers EXFULL). A network spreads its sandboxes over up to 1,024
    /// bridges by address (1,020 addresses each), so this happens only in a
    /// pool of more than 1,044,480 addresses (an IPv4 pool wider than a /12,
    /// or an IPv6 pool) when the live sandboxes of one bridge's addresses,
    /// `1,020 × 1,024` apart, are more than it holds.
    #[error(
        "bridge {bridge:?} is full: a Linux bridge takes at most 1023 ports, and the addresses \
         of more than 1022 live sandboxes fall on it"
    )]
    BridgeFull {
        /// The bridge.
        bridge: String,
    },

    /// A requested address is outside the pool or is one that is never handed out.
    #[error("address {addr} cannot be assigned from pool {pool}: {reason}")]
    AddressNotInPool {
        /// The requested address.
        addr: IpAddr,
        /// The pool.
        pool: IpNetwork,
        /// Why: outside the pool, the gateway, the network or broadcast address.
        reason: &'static str,
    },

    /// A requested address is assigned to another sandbox.
    #[error("address {addr} is already taken by sandbox {owner:?}")]
    AddressTaken {
        /// The requested address.
        addr: IpAddr,
        /// The sandbox that holds it.
        owner: String,
    },

    /// The sandbox's holder process is gone, so the sandbox cannot be used.
    #[error("holder of sandbox {sandbox:?} has died ({status})")]
    HolderDied {
        /// The sandbox.
        sandbox: String,
        /// How it ended, as far as is known ("killed by SIGKILL", "exited with 0").
        status: String,
    },

    /// A state file could not be understood.
    #[error("state file {path} is corrupt: {reason}")]
    StateCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A netlink request failed with an errno.
    #[error("netlink: {op} {object}")]
    Netlink {
        /// The operation ("create veth", "add address").
        op: &'static str,
        /// What it was done to, with the sandbox it was for.
        object: String,
        /// The kernel's answer.
        #[source]
        errno: Errno,
    },

    /// A netlink request failed without an errno (the connection broke, a reply made no sense).
    #[error("netlink: {op} {object}: {detail}")]
    NetlinkProtocol {
        /// The operation.
        op: &'static str,
        /// What it was done to.
        object: String,
        /// What went wrong.
        detail: String,
    },

    /// A system call failed.
    #[error("{op} {object}")]
    Sys {
        /// The operation ("clone holder", "setns").
        op: &'static str,
        /// What it was done to.
        object: String,
        /// The errno.
        #[source]
        errno: Errno,
    },

    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// The operation ("create state directory").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Several steps of a teardown failed; each is listed.
    #[error("{op}: {} step(s) failed: {}", .errors.len(), list(.errors))]
    Multiple {
        /// What was being torn down.
        op: String,
        /// Every failure, in the order the steps ran.
        errors: Vec<Error>,
    },

    /// A program podnet runs for a feature is not installed (not found on
    /// `PATH`, or not executable where it was named).
    #[error(
        "{purpose} needs `{program}`, which is not installed here (Debian package `{package}`)"
    )]
    ProgramMissing {
        /// The program, as it was looked for.
        program: String,
        /// The Debian package that has it.
        package: &'static str,
        /// What it was needed for.
        purpose: &'static str,
    },

    /// The rootless host namespace's uplink (pasta) could not be started,
    /// or has ended since; the sandboxes and networks are untouched.
    #[error("the rootless uplink `{program}` {reason}")]
    Uplink {
        /// The program that provides it.
        program: String,
        /// What happened: how it failed to start (with its own message) or
        /// how it ended.
        reason: String,
    },
}

fn on_real_host(netns: crate::PortNetns) -> &'static str {
    match netns {
        crate::PortNetns::RealHost => " on the real host",
        _ => "",
    }
}

fn list(errors: &[Error]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| match e.errno() {
            Some(errno) => format!("{e} ({errno})"),
            None => e.to_string(),
        })
        .collect();
    parts.join("; ")
}

impl Error {
    /// The errno behind this error, if there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Netlink { errno, .. }
            | Error::Sys { errno, .. }
            | Error::PortInUse { errno, .. }
            | Error::PrivilegedPort { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// A failed system call; EPERM and EACCES become [`Error::NotPermitted`].
    pub(crate) fn sys(op: &'static str, object: impl Into<String>, errno: Errno) -> Error {
        let object = object.into();
        if matches!(errno, Errno::EPERM | Errno::EACCES) {
            return Error::not_permitted(format!("{op} {object}"));
        }
        Error::Sys { op, object, errno }
    }

    /// A failed file operation.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn not_permitted(op: impl Into<String>) -> Error {
        Error::NotPermitted {
            op: op.into(),
            hint: PRIVILEGE_HINT,
        }
    }
}

/// `Result` with podnet's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_operation_and_keeps_the_errno_as_source() {
        let e = Error::Netlink {
            op: "create veth",
            object: "web-k3/eth0 for sandbox \"web\"".into(),
            errno: Errno::EEXIST,
        };
        assert_eq!(
            e.to_string(),
            "netlink: create veth web-k3/eth0 for sandbox \"web\""
        );
        assert_eq!(e.errno(), Some(Errno::EEXIST));
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("EEXIST: File exists"));
    }

    #[test]
    fn eperm_becomes_not_permitted_with_the_three_ways() {
        let e = Error::sys("setns", "into sandbox \"web\"", Errno::EPERM);
        assert!(matches!(e, Error::NotPermitted { .. }));
        let text = e.to_string();
        assert!(text.contains("unshare --user --map-root-user --net"));
        assert!(text.contains("rootless::enter()"));
        assert!(text.contains("root"));
    }

    #[test]
    fn multiple_lists_every_step() {
        let e = Error::Multiple {
            op: "remove sandbox \"web\"".into(),
            errors: vec![
                Error::sys("kill holder", "1", Errno::EINVAL),
                Error::sys("delete", "x", Errno::EIO),
            ],
        };
        let text = e.to_string();
        assert!(text.contains("2 step(s) failed"), "{text}");
        assert!(text.contains("EINVAL") && text.contains("EIO"), "{text}");
    }
}
