//! Pod DNS: every process that has a network answers its pods' names on
//! the gateway's port 53 (`SO_REUSEPORT`, so any live one serves), from the
//! shared store (`zone`, kept fresh by `watch`), and forwards other names
//! to the host's resolvers (`forward`, `upstream`); `udp` takes and sends
//! datagrams in batches.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::ipam::Store;

mod answer;
mod forward;
mod server;
mod udp;
mod upstream;
mod watch;
mod zone;

pub(crate) use server::Scope;

/// The search domain of a network's pods unless the builder sets another:
/// `.internal` is reserved for private use (ICANN, 2024), so it can never
/// be a real name.
pub const DEFAULT_DOMAIN: &str = "podnet.internal";

/// Where a network's DNS server sends the names that are not its pods'.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DnsUpstream {
    /// The `nameserver`s of the host's `/etc/resolv.conf`, read when the
    /// network is built and again whenever the file changes (the default).
    #[default]
    HostResolvConf,
    /// The `nameserver`s of this resolv.conf file, re-read when it changes.
    ResolvConf(PathBuf),
    /// These servers, in order. In a process that entered rootless
    /// namespaces they are reached from the namespaces it came from, as
    /// the host's resolvers are (docs/dns.md, "Rootless").
    Servers(Vec<SocketAddr>),
    /// None: other names are answered REFUSED at once (for test harnesses
    /// that must not resolve outside names).
    None,
}

/// How a network's DNS is configured (the builder's part).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub enabled: bool,
    pub domain: String,
    pub upstream: DnsUpstream,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            enabled: true,
            domain: DEFAULT_DOMAIN.to_owned(),
            upstream: DnsUpstream::HostResolvConf,
        }
    }
}

/// Check a search domain: dot-separated DNS-1123 labels, lowercase, at
/// most 190 characters (so a 63-character name under it fits a DNS name).
pub(crate) fn validate_domain(domain: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            what: "DNS domain",
            name: domain.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if domain.len() > 190 {
        return bad("it is longer than 190 characters");
    }
    if domain.is_empty() {
        return bad("it is empty");
    }
    for label in domain.split('.') {
        if crate::names::check_label("DNS domain", label, 63).is_err() {
            return bad(&format!(
                "label {label:?} is not a DNS-1123 label (a-z, 0-9 and '-', 1 to 63 characters, \
                 starting and ending with a letter or digit)"
            ));
        }
    }
    Ok(())
}

/// What the network's pods are told: the servers and the search domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The gateway addresses, IPv4 first: where the server answers.
    pub servers: Vec<IpAddr>,
    pub domain: String,
}

impl Settings {
    /// The resolv.conf a pod sees.
    pub(crate) fn resolv_conf(&self) -> String {
        let mut out = format!(
            "# made by podnet: the DNS server of this pod's network\nsearch {}\n",
            self.domain
        );
        for s in &self.servers {
            out += &format!("nameserver {s}\n");
        }
        out
    }

    /// The /etc/hosts a sandbox named `name` sees, with its addresses
    /// (and its `hostname`, if it has one of its own).
    pub(crate) fn hosts(&self, name: &str, hostname: Option<&str>, addrs: &[IpAddr]) -> String {
        let mut out = String::from(
            "# made by podnet\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        let other = hostname.filter(|h| *h != name);
        for a in addrs {
            out += &format!("{a}\t{name}.{} {name}", self.domain);
            if let Some(h) = other {
                out += &format!(" {h}");
            }
            out.push('\n');
        }
        out
    }
}

/// A network's DNS in this process: what its pods are told, the zone, and
/// the server that answers them (it stops when this is dropped).
#[derive(Debug)]
pub(crate) struct Dns {
    pub settings: Settings,
    live: Arc<Mutex<watch::Live>>,
    _server: server::Server,
}

impl Dns {
    /// Load the zone from `store` and start serving it on the gateways,
    /// from the calling thread's network namespace (the host's).
    pub(crate) fn start(config: &Config, scope: Scope, store: &Store) -> Result<Dns> {
        let zone = zone::Zone::new(&config.domain, scope.pools.clone());
        let live = Arc::new(Mutex::new(watch::Live::new(store.reader(), zone)?));
        let upstreams = upstream::Upstreams::new(&config.upstream, scope.gateways.clone());
        let fwd = forward::Forwarder::new(upstreams);
        let settings = Settings {
            servers: scope.gateways.clone(),
            domain: config.domain.clone(),
        };
        let server = server::start(scope, live.clone(), fwd)?;
        Ok(Dns {
            settings,
            live,
            _server: server,
        })
    }

    /// The addresses of the sandboxes that `name` (a sandbox's name or
    /// alias, bare or under the domain) resolves to now.
    pub(crate) fn resolve(&self, name: &str) -> Vec<IpAddr> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.sync();
        let mut out = Vec::new();
        for e in live.zone.resolve(name) {
            out.extend(e.ipv4.map(IpAddr::V4));
            out.extend(e.ipv6.map(IpAddr::V6));
        }
        out
    }
}
