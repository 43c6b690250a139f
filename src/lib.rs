//! Kubernetes-style pod network sandboxes, as a library.
//!
//! A **sandbox** is a network namespace kept alive by a tiny holder process
//! (podnet's *pause*), wired by a veth pair to a Linux bridge, with a unique
//! address from the network's pool. Any number of processes, threads and
//! sockets **join** it and then share its `lo`, its address and its port
//! space, while the sandbox's network identity outlives them until it is
//! removed.
//!
//! ```
//! use podnet::{Network, Phase};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // A user and network namespace of our own: no root needed, and the
//!     // machine's real network is never touched.
//!     podnet::rootless::enter_private()?;
//!     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//!     rt.block_on(async {
//!         let state = std::env::temp_dir().join(format!("podnet-doc-{}", std::process::id()));
//!         let net = Network::builder("podnet0")
//!             .subnet("10.88.0.0/16".parse()?)
//!             .state_dir(&state)
//!             .build()
//!             .await?;
//!
//!         let pod = net.sandbox("web").create().await?; // holder + netns + veth + IP + routes
//!         println!("{} {} gw {} holder {} {}", pod.name(), pod.ip(), pod.gateway(),
//!                  pod.holder_pid(), pod.netns_path().display());
//!         assert_eq!(pod.phase(), Phase::Running);
//!
//!         // A closure on a thread inside: the listener lives in the sandbox.
//!         let listener = pod.run(|| std::net::TcpListener::bind("127.0.0.1:9000")).await??;
//!         // A process inside reaches it over the sandbox's localhost.
//!         let status = pod
//!             .command("bash")
//!             .args(["-c", "echo -n hello > /dev/tcp/127.0.0.1/9000"])
//!             .status()
//!             .await?;
//!         assert!(status.success());
//!         let mut got = String::new();
//!         std::io::Read::read_to_string(&mut listener.accept()?.0, &mut got)?;
//!         assert_eq!(got, "hello");
//!         {
//!             let _inside = pod.enter()?; // this thread is inside until the guard drops
//!         }
//!
//!         pod.remove().await?; // address and name free; veth unplugged, deleted soon after
//!         assert_eq!(pod.phase(), Phase::Succeeded);
//!         net.remove().await?; // the bridge and the store
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # Port mappings
//! [`SandboxBuilder::port`] and [`Sandbox::add_port`] publish a sandbox's
//! port on the network's host namespace ([`PortMapping`]: TCP or UDP, host
//! address, host port or 0 for an ephemeral one, ranges), forwarded by the
//! kernel (nf_tables DNAT rules podnet makes over netlink) where the host
//! namespace allows it and by a userspace forwarder of this process
//! otherwise ([`NetworkBuilder::port_forwarding`], [`PublishedPort::forwarder`]);
//! `docs/port-forwarding.md` explains the choice.
//!
//! # Privilege
//! podnet needs `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` over the host network
//! namespace (the one holding the bridge): be root, run under
//! `unshare --user --map-root-user --net`, or call [`rootless::enter`] first
//! thing in `main`. Without one of these every entry point fails at once with
//! [`Error::NotPermitted`], having changed nothing.
//!
//! # Runtime
//! The API is async on tokio, with I/O enabled (`enable_all()` or
//! `enable_io()`): a network owns a netlink connection task. Getters,
//! [`Sandbox::phase`] and [`Sandbox::enter`] are synchronous.

mod attach;
/// The CNI specification layer (feature `cni`): environment, network
/// configuration, versions, results and errors for `podnet-cni`.
#[cfg(feature = "cni")]
pub mod cni;
mod dns;
mod error;
mod failpoint;
mod holder;
mod host;
mod ident;
mod ipam;
mod link;
mod names;
mod netns;
mod network;
mod network_policy;
mod paths;
mod pod;
mod policy;
mod ports;
mod release;
pub mod rootless;
mod sandbox;
mod sys;

pub use attach::{AttachBuilder, Attachment};
pub use dns::{DnsUpstream, DEFAULT_DOMAIN};
pub use error::{Error, Result};
pub use policy::{IpBlock, Labels, Peer, Policy, Port, Requirement, Rule, Selector};

/// Hooks for this crate's own tests and benches; not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::holder::flush_spawner;
    pub use crate::ipam::internals::Ipam;

    /// The comments of the kernel port-mapping rules of the nf_tables
    /// table this process owns for `net` (`podnet <name>@<id> <proto>
    /// <host> #<serial>`), or `None` if it has no table.
    pub async fn port_rules(net: &crate::Network) -> crate::Result<Option<Vec<String>>> {
        net.inner.port_rules().await
    }

    /// The name of the nf_tables table this process owns for `net`, if it
    /// made one.
    pub fn port_table(net: &crate::Network) -> Option<String> {
        crate::ports::nft_of(&net.inner.ports).map(|n| n.table().to_owned())
    }

    /// Every `podnet-` inet table of the calling thread's network
    /// namespace, whichever process owns it, with its rules' comments.
    /// Blocking.
    pub fn podnet_tables() -> crate::Result<Vec<(String, Vec<String>)>> {
        crate::link::nft::podnet_tables()
    }

    /// Make the nf_tables table `inet <table>` in the calling thread's
    /// namespace with one srcnat chain and the masquerade rule of each of
    /// `pools` (traffic from it to anything outside it), as egress's table
    /// has, without a network: the hand-made baseline of
    /// `benches/egress.rs`. Blocking.
    pub fn masquerade_table(table: &str, pools: &[(std::net::IpAddr, u8)]) -> crate::Result<()> {
        let nft = crate::link::nft::Nft::open("bench")?;
        nft.replace_masquerade(table, pools)
            .map_err(|errno| crate::Error::Netlink {
                op: "nf_tables: make masquerade table",
                object: format!("table inet {table}"),
                errno,
            })
    }

    /// How many mappings of `net` have rules being added right now.
    pub fn installing(net: &crate::Network) -> usize {
        crate::ports::installing(&net.inner.ports)
    }

    /// The batches in which `net` has deleted removed sandboxes' veths in
    /// the background so far: how many, and whether the kernel deleted
    /// them in one operation, or with their namespaces before it (not one
    /// by one, the fallback).
    pub fn veth_batches(net: &crate::Network) -> Vec<(usize, bool)> {
        net.inner.deletions.batches()
    }

    /// How many veth deletions of `net` are waiting for the one in flight.
    pub fn veth_deletions_waiting(net: &crate::Network) -> usize {
        net.inner.deletions.waiting()
    }

    /// Wait until `net`'s veth deletions asked so far are done (as
    /// `Network::remove()` does after its busy check, where it ignores the
    /// errors); the errors of those that failed.
    pub async fn veth_deletions_settled(net: &crate::Network) -> crate::Result<()> {
        net.inner.deletions.settled(&net.inner.bridge).await
    }

    /// Hold `net`'s veth deletions as if one were in flight, until the
    /// returned value is dropped; `None` if one is.
    pub fn hold_veth_deletions(net: &crate::Network) -> Option<impl Send + std::fmt::Debug> {
        crate::host::deletions::VethDeletions::hold(&net.inner)
    }

    /// Make every operation on `net`'s table wait until the returned
    /// sender is dropped (`None` without a table).
    pub fn hold_port_table(net: &crate::Network) -> Option<std::sync::mpsc::Sender<()>> {
        crate::ports::nft_of(&net.inner.ports).map(|n| n.hold())
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

/// docs/egress.md's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/egress.md")]
mod egress_doc {}

/// docs/policy.md's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/policy.md")]
mod policy_doc {}

/// docs/uplink.md's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/uplink.md")]
mod uplink_doc {}
pub use ipnetwork;
pub use netns::Enter;
pub use network::{Damaged, GcReport};
pub use network::{Network, NetworkBuilder};
pub use pod::{
    Event, EventKind, KillReason, Member, MemberState, MemberStatus, Output, Pod, PodBuilder,
    Probe, ProbeKind, RestartPolicy, Volume,
};
pub use ports::{
    Forwarder, PortForwarding, PortMapping, PortNetns, Protocol, PublishedPort, DEFAULT_UDP_IDLE,
    MAX_UDP_FLOWS,
};
pub use sandbox::{Command, Phase, Sandbox, SandboxBuilder, SandboxInfo};
