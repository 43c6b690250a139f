//! Labels, label selectors and network policies with Kubernetes'
//! semantics: which sandboxes a policy selects, which peers and ports it
//! lets in or out, and the plan of kernel sets
//! and rules they make. No I/O.

mod labels;
pub(crate) mod plan;
mod rule;
mod selector;

pub use labels::Labels;
pub(crate) use rule::parse_cidr;
pub use rule::{IpBlock, Peer, Policy, Port, Protocol, Rule};
pub use selector::{Requirement, Selector};
