//! Port mappings: an address and port of the network's host namespace (or
//! of the real host, for a rootless process) forwarded to a port of a
//! sandbox, over TCP or UDP, by the kernel (DNAT rules in an nf_tables
//! table this process owns for the network, `link::nft`) where the host
//! namespace allows it, and by a userspace forwarder otherwise. This file
//! names the parts and what callers use.

mod client;
mod end;
mod engine;
mod kernel;
mod mapping;
mod proxy;
mod publish;
mod reserve;
mod rules_only;
mod splice;
mod target;

pub use mapping::{
    Forwarder, PortForwarding, PortMapping, PortNetns, Protocol, PublishedPort, DEFAULT_UDP_IDLE,
};
pub use proxy::MAX_UDP_FLOWS;

pub(crate) use end::{abort_all, end_all, end_one, gc};
#[cfg(feature = "internals")]
pub(crate) use engine::installing;
pub(crate) use engine::{list, nft_of, EngineCell};
pub(crate) use publish::start;
pub(crate) use reserve::reserve;
pub(crate) use rules_only::{
    check_rules_only, from_record, needs_localnet, overlaps, probe_free, rule_dnats, rule_owner,
    to_record,
};
pub(crate) use target::{Host, Target};
// Reachable at `crate::ports::…` for any caller, though no other file names
// them: callers get them by inference (`Reserved`, `Engine` behind `EngineCell`),
// or use them inside `ports` only (the rule comment's parser).
#[allow(unused_imports)]
pub(crate) use {
    engine::Engine,
    kernel::{parse_comment, Comment},
    reserve::Reserved,
};
