//! The CNI specification layer: environment, configuration, versions,
//! results and errors, with no networking.
//!
//! Built with the `cni` feature. It follows the CNI spec 1.1.0 (SPEC.md of
//! containernetworking/cni) and the versions runtimes still send (0.3.0,
//! 0.3.1, 0.4.0, 1.0.0); where the spec leaves a choice open it does what
//! libcni's `skel` and the reference plugins do, and says so.
//!
//! One concern per file:
//!
//! - `env`: the `CNI_*` variables per verb ([`Env`](crate::cni::Env),
//!   [`Command`](crate::cni::Command));
//! - `config`: the configuration on stdin ([`NetConf`](crate::cni::NetConf));
//! - `version`: versions and the verbs each has
//!   ([`SpecVersion`](crate::cni::SpecVersion));
//! - `result`: the ADD result per version ([`CniResult`](crate::cni::CniResult));
//! - `error`: the error result and its codes ([`CniError`](crate::cni::CniError));
//! - `request`: all of it for one invocation
//!   ([`parse_request`](crate::cni::parse_request)).
//!
//! A plugin's `main` reads the invocation, acts, and prints the result or
//! the error on stdout (exiting non-zero on error):
//!
//! ```
//! use podnet::cni::{
//!     parse_request, version, CniError, CniResult, Command, Interface, IpConfig, Request,
//! };
//!
//! fn run(vars: Vec<(std::ffi::OsString, std::ffi::OsString)>, stdin: &[u8]) -> Result<String, CniError> {
//!     let req = match parse_request(vars, stdin)? {
//!         Request::Version { reply } => return Ok(reply),
//!         Request::Network(req) => req,
//!     };
//!     match req.env.command {
//!         Command::Add => {
//!             let netns = req.env.netns.as_ref().map(|p| p.display().to_string());
//!             let range = &req.config.ipam.ranges[0][0];
//!             let result = CniResult {
//!                 interfaces: vec![Interface {
//!                     name: req.env.ifname.clone().unwrap_or_default(),
//!                     mac: Some([0x02, 0x42, 0x0a, 0x58, 0x00, 0x02]),
//!                     mtu: None,
//!                     sandbox: netns,
//!                 }],
//!                 ips: vec![IpConfig {
//!                     address: "10.88.0.2/16".parse().expect("a CIDR"),
//!                     gateway: Some(range.gateway_or_default()),
//!                     interface: Some(0),
//!                 }],
//!                 ..CniResult::default()
//!             };
//!             result.to_json_at(req.config.cni_version)
//!         }
//!         _ => Ok(String::new()),
//!     }
//! }
//!
//! let vars = [
//!     ("CNI_COMMAND", "ADD"),
//!     ("CNI_CONTAINERID", "c1"),
//!     ("CNI_NETNS", "/run/netns/c1"),
//!     ("CNI_IFNAME", "eth0"),
//! ]
//! .iter()
//! .map(|(k, v)| ((*k).into(), (*v).into()))
//! .collect();
//! let stdin = br#"{"cniVersion": "0.4.0", "name": "podnet", "type": "podnet",
//!                  "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}}"#;
//! let out = match run(vars, stdin) {
//!     Ok(out) => out,
//!     Err(e) => e.to_json(version::requested(stdin)),
//! };
//! assert!(out.contains(r#""version":"4""#) && out.contains(r#""gateway":"10.88.0.1""#));
//! ```

pub mod codes;
pub mod config;
pub mod dns;
pub mod env;
pub mod error;
mod json;
pub mod mac;
pub mod network;
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
