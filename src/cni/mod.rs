//! The CNI specification layer: environment, configuration, versions,
//! results and errors, with no networking.
//!
//! Built with the `cni` feature. It follows the CNI spec 1.1.0 (SPEC.md of
//! containernetworking/cni) and the versions runtimes still send (0.3.0,
//! 0.3.1, 0.4.0, 1.0.0); where the spec leaves a choice open it does what
//! libcni's `skel` and the reference plugins do, and says so.

pub mod config;
pub mod env;
pub mod error;
mod json;
pub mod mac;
pub mod plugin;
pub mod request;
pub mod result;
pub mod version;

pub use config::{Attachment, CniArgs, Ipam, NetConf, PortMapping, Protocol, Range, RuntimeConfig};
pub use env::{Command, Env};
pub use error::CniError;
pub use request::{parse_request, NetworkRequest, Request};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{SpecVersion, Version};
