//! The network configuration a runtime passes on stdin: one plugin's
//! object out of a conflist, with `cniVersion` and `name` inserted and the
//! runtime's `runtimeConfig`, `prevResult` or `cni.dev/valid-attachments`.
//!
//! # Accepted shape
//! The reference `bridge` + `host-local` configuration parses as it is:
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0", "name": "podnet", "type": "podnet",
//!   "bridge": "cni0", "isGateway": true, "ipMasq": true, "mtu": 1500,
//!   "ipam": {
//!     "type": "host-local",
//!     "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
//!                [{"subnet": "fd00:88::/64"}]],
//!     "routes": [{"dst": "0.0.0.0/0"}],
//!     "dataDir": "/var/lib/cni/networks"
//!   },
//!   "capabilities": {"portMappings": true, "ips": true}
//! }
//! ```
//!
//! Addresses live in `ipam`, as host-local reads them: `ipam.ranges` (a
//! list of range sets, one address allocated from each set; a set's
//! ranges are of one family), and the older single range `ipam.subnet`
//! with `ipam.gateway`, `ipam.rangeStart`, `ipam.rangeEnd`, which comes
//! first, as host-local prepends it; `runtimeConfig.ipRanges` comes before
//! both. At least one range is required; there is no top-level `subnet`.
//! `ipam.type` may be absent, `host-local` or `podnet`: podnet allocates
//! addresses itself, so any other IPAM plugin (`dhcp`, `static`) is code 2
//! rather than being silently not run.
//!
//! # Values
//! A field podnet does not know is ignored. A known field with a bad
//! value is code 7 naming the field's path and showing the value:
//! a wrong JSON type, an unparseable subnet or one with host bits set or
//! smaller than /30 (/126), a gateway or range bound outside its subnet,
//! overlapping ranges, an `mtu` outside 68–65535 (a veth's limits), a
//! port of 0, a protocol other than tcp/udp/sctp, a MAC that is not a
//! unicast 6-byte address, a bridge name that is not an interface name, a
//! relative `dataDir`. JSON that does not decode, a top level that is not
//! an object, or a `cniVersion` that is not a string is code 6; an
//! unsupported `cniVersion` is code 1 (see [`SpecVersion::parse`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use super::env::validate_ifname;
use super::error::CniError;
use super::json::{join, shown, Reader};
use super::mac::parse_mac;
use super::result::{Dns, Route};
use super::version::SpecVersion;

const R: Reader = Reader::Config;

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`, the version to answer in.
    pub cni_version: SpecVersion,
    /// `name`: the network's name (alphanumeric first, then alphanumerics,
    /// `_`, `.` or `-`, as libcni's `ValidateNetworkName`).
    pub name: String,
    /// `type`: the plugin's binary name, when given.
    pub plugin_type: Option<String>,
    /// `bridge`: the bridge's name; `None` lets the plugin choose.
    pub bridge: Option<String>,
    /// `ipam`: the address ranges and routes.
    pub ipam: Ipam,
    /// `mtu` of the veth pair; `None` for the default.
    pub mtu: Option<u32>,
    /// `ipMasq`: masquerade traffic leaving the subnet.
    pub ip_masq: bool,
    /// `isGateway`: give the bridge the gateway address.
    pub is_gateway: bool,
    /// `isDefaultGateway`: also route the container's default route via
    /// the bridge (implies `isGateway`, as in the bridge plugin).
    pub is_default_gateway: bool,
    /// `hairpinMode`: let a container reach itself through the bridge.
    pub hairpin_mode: bool,
    /// `dataDir` (or `ipam.dataDir`): where the address store lives.
    pub data_dir: Option<PathBuf>,
    /// `dns`: the network's DNS settings, well-known per SPEC.md.
    pub dns: Dns,
    /// `runtimeConfig`: the runtime's capability arguments.
    pub runtime_config: RuntimeConfig,
    /// `args.cni`: the conventions' structured arguments.
    pub args: CniArgs,
    /// `prevResult` as given; [`crate::cni::CniResult::from_json`] reads it.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC): `None` when absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `ipam` section, host-local style.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ipam {
    /// Range sets in allocation order: one address from each.
    pub ranges: Vec<Vec<Range>>,
    /// `ipam.routes`: routes to add in the container.
    pub routes: Vec<Route>,
}

/// One address range of a subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The subnet, its address the network address.
    pub subnet: IpNetwork,
    /// `rangeStart`, the first address to hand out, inclusive.
    pub range_start: Option<IpAddr>,
    /// `rangeEnd`, the last address to hand out, inclusive.
    pub range_end: Option<IpAddr>,
    /// `gateway`; host-local's default is the subnet's first address.
    pub gateway: Option<IpAddr>,
}

impl Range {
    /// The gateway, or the subnet's first address as host-local defaults.
    pub fn gateway_or_default(&self) -> IpAddr {
        self.gateway.unwrap_or_else(|| nth(self.subnet, 1))
    }

    /// The first address to hand out: `rangeStart`, else the subnet's
    /// first address (host-local then skips the gateway).
    pub fn first(&self) -> IpAddr {
        self.range_start.unwrap_or_else(|| nth(self.subnet, 1))
    }

    /// The last address to hand out: `rangeEnd`, else the subnet's last
    /// address below the IPv4 broadcast (the last address for IPv6).
    pub fn last(&self) -> IpAddr {
        self.range_end.unwrap_or_else(|| {
            let last = span(self.subnet);
            nth(
                self.subnet,
                if self.subnet.is_ipv4() {
                    last.saturating_sub(1)
                } else {
                    last
                },
            )
        })
    }

    /// Whether `ip` is in this range (`first()..=last()`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.subnet.ip())
            && ord(self.first()) <= ord(ip)
            && ord(ip) <= ord(self.last())
    }
}

impl Ipam {
    /// The range (set index, range) holding `ip`, for a static address.
    pub fn range_of(&self, ip: IpAddr) -> Option<(usize, &Range)> {
        self.ranges
            .iter()
            .enumerate()
            .find_map(|(i, set)| set.iter().find(|r| r.contains(ip)).map(|r| (i, r)))
    }
}

/// The `runtimeConfig` capabilities podnet reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// `portMappings`.
    pub port_mappings: Vec<PortMapping>,
    /// `ips`: static addresses requested (`ip` or `ip/prefix`; the
    /// prefix is dropped, as host-local does: the range gives it).
    pub ips: Vec<IpAddr>,
    /// `mac`: the container interface's requested MAC.
    pub mac: Option<[u8; 6]>,
    /// `dns`: `{servers, searches, options}` by the conventions, mapped to
    /// nameservers, search and options.
    pub dns: Dns,
    /// `aliases`: names for this container on the network. Both the
    /// conventions' list and podman's map from network name to list are
    /// read; from a map, the entry for this network's `name`.
    pub aliases: Vec<String>,
}

/// One `portMappings` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    /// `hostPort`, 1–65535.
    pub host_port: u16,
    /// `containerPort`, 1–65535.
    pub container_port: u16,
    /// `protocol`; absent or empty is TCP, as Kubernetes' default.
    pub protocol: Protocol,
    /// `hostIP`; `None` (absent or empty) for every host address.
    pub host_ip: Option<IpAddr>,
}

/// A port mapping's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name, as the portmap plugin writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// `args.cni`: the conventions' structured arguments podnet reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniArgs {
    /// `args.cni.ips`: static addresses, as `runtimeConfig.ips`.
    pub ips: Vec<IpAddr>,
    /// `args.cni.mac`: a MAC, as the bridge plugin reads it.
    pub mac: Option<[u8; 6]>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    /// `containerID`.
    pub container_id: String,
    /// `ifname`.
    pub ifname: String,
}

impl NetConf {
    /// Decodes and validates stdin's bytes.
    ///
    /// # Errors
    /// Code 6 when the bytes are not a JSON object; otherwise as
    /// [`NetConf::from_value`].
    pub fn from_slice(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::decode("cannot decode the network configuration", e.to_string())
        })?;
        NetConf::from_value(&value)
    }

    /// Validates a decoded configuration (see the module docs).
    ///
    /// # Errors
    /// Code 6 for a non-object or a non-string `cniVersion`, 1 for an
    /// unsupported version, 2 for an `ipam.type` podnet does not run, 7
    /// for any other bad value, naming the field.
    pub fn from_value(value: &Value) -> Result<NetConf, CniError> {
        let obj = value.as_object().ok_or_else(|| {
            CniError::decode(
                "cannot decode the network configuration",
                format!("expected a JSON object, got {}", shown(value)),
            )
        })?;
        let cni_version = match Reader::get(obj, "cniVersion") {
            None => SpecVersion::parse("")?,
            Some(Value::String(s)) => SpecVersion::parse(s)?,
            Some(v) => {
                return Err(CniError::decode(
                    format!("cannot decode cniVersion {}", shown(v)),
                    "expected a string such as \"1.1.0\"",
                ))
            }
        };
        let name = R
            .opt_str(obj, "", "name")?
            .ok_or_else(|| R.missing("name"))?;
        validate_network_name(name).map_err(|why| R.bad("name", &obj["name"], why))?;
        let plugin_type = R.opt_str(obj, "", "type")?.map(String::from);
        let bridge = match R.opt_str(obj, "", "bridge")? {
            None => None,
            Some(b) => {
                validate_ifname(b).map_err(|why| R.bad("bridge", &obj["bridge"], why))?;
                Some(b.to_string())
            }
        };
        let mtu = match R.opt_uint(obj, "", "mtu", u64::MAX)? {
            None => None,
            Some(m) => Some(
                u32::try_from(m)
                    .ok()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| R.bad("mtu", &obj["mtu"], "a veth's MTU is 68 to 65535"))?,
            ),
        };
        let flag = |key: &str| R.opt_bool(obj, "", key).map(|b| b.unwrap_or(false));
        let is_default_gateway = flag("isDefaultGateway")?;

        let runtime = R.opt_object(obj, "", "runtimeConfig")?;
        let mut ranges = Vec::new();
        if let Some(rc) = runtime {
            ranges.extend(range_sets(rc, "runtimeConfig", "ipRanges")?);
        }
        let (ipam, ipam_dir) = read_ipam(obj, ranges)?;
        let data_dir = data_dir(obj, ipam_dir)?;
        let runtime_config = match runtime {
            None => RuntimeConfig::default(),
            Some(rc) => read_runtime(rc, name)?,
        };
        let dns = match R.opt_object(obj, "", "dns")? {
            None => Dns::default(),
            Some(d) => Dns::read(R, d, "dns")?,
        };
        let args = read_args(obj)?;
        let valid_attachments = match R.opt_array(obj, "", "cni.dev/valid-attachments")? {
            None => None,
            Some(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let path = format!("cni.dev/valid-attachments[{i}]");
                        let o = R.object(&path, v)?;
                        let field = |k: &str| {
                            R.opt_str(o, &path, k)?
                                .map(String::from)
                                .ok_or_else(|| R.missing(&join(&path, k)))
                        };
                        Ok(Attachment {
                            container_id: field("containerID")?,
                            ifname: field("ifname")?,
                        })
                    })
                    .collect::<Result<_, CniError>>()?,
            ),
        };

        Ok(NetConf {
            cni_version,
            name: name.to_string(),
            plugin_type,
            bridge,
            ipam,
            mtu,
            ip_masq: flag("ipMasq")?,
            is_gateway: flag("isGateway")? || is_default_gateway,
            is_default_gateway,
            hairpin_mode: flag("hairpinMode")?,
            data_dir,
            dns,
            runtime_config,
            args,
            prev_result: Reader::get(obj, "prevResult").cloned(),
            valid_attachments,
        })
    }

    /// The static addresses asked for, in host-local's order: `IP` in
    /// `CNI_ARGS` (`ip` or `ip/prefix`; podman passes a single static
    /// address there), then `args.cni.ips`, then `runtimeConfig.ips`,
    /// duplicates dropped.
    ///
    /// # Errors
    /// Code 4 naming CNI_ARGS when its `IP` is not an address.
    pub fn static_ips(&self, cni_args_ip: Option<&str>) -> Result<Vec<IpAddr>, CniError> {
        let mut out: Vec<IpAddr> = Vec::new();
        let from_env = match cni_args_ip.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(parse_ip_maybe_prefix(s).ok_or_else(|| {
                CniError::invalid_env("CNI_ARGS", format!("IP={s:?} is not an IP address"))
            })?),
        };
        for ip in from_env
            .into_iter()
            .chain(self.args.ips.iter().copied())
            .chain(self.runtime_config.ips.iter().copied())
        {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// The MAC asked for: `runtimeConfig.mac`, else `args.cni.mac`, else
    /// `MAC` in `CNI_ARGS`, the bridge plugin's order of precedence.
    ///
    /// # Errors
    /// Code 4 naming CNI_ARGS when its `MAC` is not a unicast MAC.
    pub fn mac(&self, cni_args_mac: Option<&str>) -> Result<Option<[u8; 6]>, CniError> {
        if let Some(m) = self.runtime_config.mac.or(self.args.mac) {
            return Ok(Some(m));
        }
        match cni_args_mac.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s) => parse_unicast_mac(s).map(Some).ok_or_else(|| {
                CniError::invalid_env(
                    "CNI_ARGS",
                    format!("MAC={s:?} is not a unicast MAC address"),
                )
            }),
        }
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]*$`, as libcni's `ValidateNetworkName`.
fn validate_network_name(name: &str) -> Result<(), &'static str> {
    let mut b = name.bytes();
    let first = b.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')) {
        Ok(())
    } else {
        Err("a network name starts with a letter or digit, followed by letters, digits, '_', '.' or '-'")
    }
}

/// Reads `ipam`, after `ranges` from `runtimeConfig.ipRanges`; returns
/// the section and its `dataDir`.
fn read_ipam(
    obj: &Map<String, Value>,
    mut ranges: Vec<Vec<Range>>,
) -> Result<(Ipam, Option<PathBuf>), CniError> {
    let Some(ipam) = R.opt_object(obj, "", "ipam")? else {
        if ranges.is_empty() {
            return Err(R.missing("ipam"));
        }
        check_overlaps(&ranges)?;
        return Ok((
            Ipam {
                ranges,
                routes: Vec::new(),
            },
            None,
        ));
    };
    const P: &str = "ipam";
    if let Some(t) = R.opt_str(ipam, P, "type")? {
        if !matches!(t, "host-local" | "podnet") {
            return Err(CniError::unsupported_field(
                "ipam.type",
                shown(&ipam["type"]),
                "podnet allocates addresses itself: give ipam.ranges or ipam.subnet \
                 with type host-local, podnet or no type",
            ));
        }
    }
    if Reader::get(ipam, "subnet").is_some() {
        let r = read_range(ipam, P)?;
        ranges.push(vec![r]);
    }
    ranges.extend(range_sets(ipam, P, "ranges")?);
    if ranges.is_empty() {
        return Err(CniError::missing_config(
            "ipam.ranges",
            "give ipam.ranges (a list of lists of {subnet, rangeStart, rangeEnd, gateway}) or ipam.subnet",
        ));
    }
    check_overlaps(&ranges)?;
    let routes = match R.opt_array(ipam, P, "routes")? {
        None => Vec::new(),
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let path = format!("ipam.routes[{i}]");
                let o = R.object(&path, v)?;
                Ok(Route {
                    dst: R.req_cidr(o, &path, "dst")?,
                    gw: R.opt_ip(o, &path, "gw")?,
                })
            })
            .collect::<Result<_, CniError>>()?,
    };
    let dir = R.opt_str(ipam, P, "dataDir")?.map(PathBuf::from);
    if let Some(d) = &dir {
        if !d.is_absolute() {
            return Err(R.bad(
                "ipam.dataDir",
                &ipam["dataDir"],
                "expected an absolute path",
            ));
        }
    }
    Ok((Ipam { ranges, routes }, dir))
}

/// `dataDir`, or `ipam.dataDir`; both may be given only if equal.
fn data_dir(
    obj: &Map<String, Value>,
    ipam_dir: Option<PathBuf>,
) -> Result<Option<PathBuf>, CniError> {
    let top = R.opt_str(obj, "", "dataDir")?.map(PathBuf::from);
    if let Some(d) = &top {
        if !d.is_absolute() {
            return Err(R.bad("dataDir", &obj["dataDir"], "expected an absolute path"));
        }
    }
    match (top, ipam_dir) {
        (Some(a), Some(b)) if a != b => Err(R.bad(
            "dataDir",
            &obj["dataDir"],
            format!("differs from ipam.dataDir {:?}; give one", b.display()),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// `obj[key]` as a list of range sets (`[[{subnet, ...}], ...]`).
fn range_sets(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Vec<Vec<Range>>, CniError> {
    let Some(sets) = R.opt_array(obj, path, key)? else {
        return Ok(Vec::new());
    };
    let base = join(path, key);
    sets.iter()
        .enumerate()
        .map(|(i, set)| {
            let set_path = format!("{base}[{i}]");
            let items = set
                .as_array()
                .ok_or_else(|| R.bad(&set_path, set, "expected a list of ranges"))?;
            if items.is_empty() {
                return Err(R.bad(&set_path, set, "a range set needs at least one range"));
            }
            let ranges = items
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let p = format!("{set_path}[{j}]");
                    read_range(R.object(&p, r)?, &p)
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ranges
                .iter()
                .any(|r| r.subnet.is_ipv4() != ranges[0].subnet.is_ipv4())
            {
                return Err(R.bad(
                    &set_path,
                    set,
                    "a range set's ranges must all be IPv4 or all IPv6",
                ));
            }
            Ok(ranges)
        })
        .collect()
}

/// One `{subnet, rangeStart, rangeEnd, gateway}`, checked as host-local's
/// `Range.Canonicalize` does, plus the gateway inside the subnet.
fn read_range(o: &Map<String, Value>, path: &str) -> Result<Range, CniError> {
    let subnet = R.req_cidr(o, path, "subnet")?;
    let sp = join(path, "subnet");
    if subnet.ip() != subnet.network() {
        return Err(R.bad(
            &sp,
            &o["subnet"],
            format!(
                "host bits are set; the network address is {}/{}",
                subnet.network(),
                subnet.prefix()
            ),
        ));
    }
    let bits = if subnet.is_ipv4() { 32 } else { 128 };
    if subnet.prefix() > bits - 2 {
        return Err(R.bad(&sp, &o["subnet"], "too small to allocate from"));
    }
    let inside = |key: &str| -> Result<Option<IpAddr>, CniError> {
        let Some(ip) = R.opt_ip(o, path, key)? else {
            return Ok(None);
        };
        if !same_family(ip, subnet.ip()) || !subnet.contains(ip) {
            return Err(R.bad(&join(path, key), &o[key], format!("not in subnet {subnet}")));
        }
        Ok(Some(ip))
    };
    let range = Range {
        subnet,
        range_start: inside("rangeStart")?,
        range_end: inside("rangeEnd")?,
        gateway: inside("gateway")?,
    };
    if ord(range.first()) > ord(range.last()) {
        return Err(R.bad(
            &join(path, "rangeStart"),
            o.get("rangeStart").unwrap_or(&Value::Null),
            format!("after the range's last address {}", range.last()),
        ));
    }
    Ok(range)
}

/// Refuses two ranges, in any sets, whose addresses overlap (host-local's
/// `RangeSet.Overlaps` check, across sets too).
fn check_overlaps(sets: &[Vec<Range>]) -> Result<(), CniError> {
    let all: Vec<(usize, usize, &Range)> = sets
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.iter().enumerate().map(move |(j, r)| (i, j, r)))
        .collect();
    for (n, (i, j, a)) in all.iter().enumerate() {
        for (k, l, b) in &all[n + 1..] {
            let overlap = same_family(a.first(), b.first())
                && ord(a.first()) <= ord(b.last())
                && ord(b.first()) <= ord(a.last());
            if overlap {
                return Err(CniError::invalid_config(
                    &format!("ipam.ranges[{k}][{l}]"),
                    format!("\"{}\"", b.subnet),
                    format!("overlaps ipam.ranges[{i}][{j}] ({}); ranges are numbered in allocation order", a.subnet),
                ));
            }
        }
    }
    Ok(())
}

/// Reads the capabilities in `runtimeConfig` (`name` picks podman's
/// aliases entry).
fn read_runtime(rc: &Map<String, Value>, name: &str) -> Result<RuntimeConfig, CniError> {
    const P: &str = "runtimeConfig";
    let port_mappings = match R.opt_array(rc, P, "portMappings")? {
        None => Vec::new(),
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| read_port(&format!("runtimeConfig.portMappings[{i}]"), v))
            .collect::<Result<_, _>>()?,
    };
    let ips = ip_list(rc, P, "ips")?;
    let mac = opt_mac(rc, P, "mac")?;
    let dns = match R.opt_object(rc, P, "dns")? {
        None => Dns::default(),
        Some(d) => {
            let p = "runtimeConfig.dns";
            let servers = match R.opt_array(d, p, "servers")? {
                None => Vec::new(),
                Some(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| R.ip(&format!("{p}.servers[{i}]"), v))
                    .collect::<Result<_, _>>()?,
            };
            Dns {
                nameservers: servers,
                domain: None,
                search: R.str_list(d, p, "searches")?,
                options: R.str_list(d, p, "options")?,
            }
        }
    };
    let aliases = match Reader::get(rc, "aliases") {
        None => Vec::new(),
        Some(Value::Object(by_net)) => match Reader::get(by_net, name) {
            None => Vec::new(),
            Some(_) => alias_list(by_net, "runtimeConfig.aliases", name)?,
        },
        Some(Value::Array(_)) => alias_list(rc, P, "aliases")?,
        Some(v) => {
            return Err(R.bad(
                "runtimeConfig.aliases",
                v,
                "expected a list of names or a map from network name to a list",
            ))
        }
    };
    Ok(RuntimeConfig {
        port_mappings,
        ips,
        mac,
        dns,
        aliases,
    })
}

/// A list of non-empty names without whitespace.
fn alias_list(obj: &Map<String, Value>, path: &str, key: &str) -> Result<Vec<String>, CniError> {
    let names = R.str_list(obj, path, key)?;
    if let Some((i, bad)) = names
        .iter()
        .enumerate()
        .find(|(_, n)| n.is_empty() || n.chars().any(char::is_whitespace))
    {
        return Err(R.bad(
            &format!("{}[{i}]", join(path, key)),
            &Value::String(bad.clone()),
            "an alias is a non-empty name without whitespace",
        ));
    }
    Ok(names)
}

/// One `{hostPort, containerPort, protocol, hostIP}`.
fn read_port(path: &str, v: &Value) -> Result<PortMapping, CniError> {
    let o = R.object(path, v)?;
    let port = |key: &str| -> Result<u16, CniError> {
        let p = join(path, key);
        match Reader::get(o, key) {
            None => Err(R.missing(&p)),
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n != 0)
                .ok_or_else(|| R.bad(&p, v, "a port is 1 to 65535")),
        }
    };
    let protocol = match R.opt_str(o, path, "protocol")? {
        None | Some("") => Protocol::Tcp,
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => {
                return Err(R.bad(
                    &join(path, "protocol"),
                    &o["protocol"],
                    "expected tcp, udp or sctp",
                ))
            }
        },
    };
    Ok(PortMapping {
        host_port: port("hostPort")?,
        container_port: port("containerPort")?,
        protocol,
        host_ip: R.opt_ip(o, path, "hostIP")?,
    })
}

/// `args.cni.{ips, mac}`; anything else in `args` is ignored.
fn read_args(obj: &Map<String, Value>) -> Result<CniArgs, CniError> {
    let Some(cni) = Reader::get(obj, "args")
        .and_then(Value::as_object)
        .and_then(|a| Reader::get(a, "cni"))
        .and_then(Value::as_object)
    else {
        return Ok(CniArgs::default());
    };
    Ok(CniArgs {
        ips: ip_list(cni, "args.cni", "ips")?,
        mac: opt_mac(cni, "args.cni", "mac")?,
    })
}

/// A list of `ip` or `ip/prefix` strings.
fn ip_list(obj: &Map<String, Value>, path: &str, key: &str) -> Result<Vec<IpAddr>, CniError> {
    let Some(items) = R.opt_array(obj, path, key)? else {
        return Ok(Vec::new());
    };
    let base = join(path, key);
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().and_then(parse_ip_maybe_prefix).ok_or_else(|| {
                R.bad(
                    &format!("{base}[{i}]"),
                    v,
                    "expected an IP address, with or without /prefix",
                )
            })
        })
        .collect()
}

/// An optional unicast MAC string (`""` is absent).
fn opt_mac(obj: &Map<String, Value>, path: &str, key: &str) -> Result<Option<[u8; 6]>, CniError> {
    match R.opt_str(obj, path, key)? {
        None | Some("") => Ok(None),
        Some(s) => parse_unicast_mac(s).map(Some).ok_or_else(|| {
            R.bad(
                &join(path, key),
                &obj[key],
                "expected a unicast MAC such as 02:42:ac:11:00:02",
            )
        }),
    }
}

/// A MAC an interface can have: not multicast, not all zeros.
fn parse_unicast_mac(s: &str) -> Option<[u8; 6]> {
    parse_mac(s).filter(|m| m[0] & 1 == 0 && *m != [0; 6])
}

/// `ip` or `ip/prefix`, the prefix checked and dropped.
fn parse_ip_maybe_prefix(s: &str) -> Option<IpAddr> {
    if s.contains('/') {
        IpNetwork::from_str(s).ok().map(|n| n.ip())
    } else {
        IpAddr::from_str(s).ok()
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// An address as a number, for ordering within one family.
fn ord(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// The number of addresses in `net`, less one (the offset of its last).
fn span(net: IpNetwork) -> u128 {
    let bits = if net.is_ipv4() { 32 } else { 128 };
    let host = bits - u32::from(net.prefix());
    // A prefix of 0 on IPv6 has 2^128 addresses; the last offset fits.
    if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    }
}

/// The address `offset` past `net`'s network address, within `net`.
fn nth(net: IpNetwork, offset: u128) -> IpAddr {
    let offset = offset.min(span(net));
    match net.network() {
        IpAddr::V4(v) => {
            // `offset <= span` and span < 2^32 for IPv4, so this fits.
            let base = u32::from(v);
            let off = u32::try_from(offset).unwrap_or(u32::MAX - base);
            IpAddr::V4(base.saturating_add(off).into())
        }
        IpAddr::V6(v) => IpAddr::V6(u128::from(v).saturating_add(offset).into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conf(v: Value) -> Result<NetConf, CniError> {
        NetConf::from_value(&v)
    }

    fn base() -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "podnet", "type": "podnet",
            "ipam": {"ranges": [[{"subnet": "10.88.0.0/16"}]]}
        })
    }

    /// `base()` with `key` (a JSON pointer's parent and last segment) set.
    fn with(pointer: &str, value: Value) -> Value {
        let mut v = base();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        let mut cur = &mut v;
        for seg in parent.split('/').filter(|s| !s.is_empty()) {
            cur = cur
                .as_object_mut()
                .expect("object")
                .entry(seg)
                .or_insert_with(|| json!({}));
        }
        cur.as_object_mut()
            .expect("object")
            .insert(key.into(), value);
        v
    }

    fn code_of(v: Value) -> (u32, String) {
        let e = conf(v).expect_err("invalid");
        (e.code, e.msg)
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_reference_bridge_config_parses_as_is() {
        // The bridge + host-local plugin of SPEC.md's example, as the
        // runtime passes it (with the spec's `keyA`, which podnet ignores).
        let c = conf(json!({
            "cniVersion": "1.1.0", "name": "dbnet", "type": "bridge", "bridge": "cni0",
            "keyA": ["some more", "plugin specific", "configuration"],
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1",
                     "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": {"nameservers": ["10.1.0.1"]}
        }))
        .expect("valid");
        assert_eq!(c.bridge.as_deref(), Some("cni0"));
        assert_eq!(c.ipam.ranges[0][0].subnet, net("10.1.0.0/16"));
        assert_eq!(c.ipam.ranges[0][0].gateway, Some(ip("10.1.0.1")));
        assert_eq!(
            c.ipam.routes,
            vec![Route {
                dst: net("0.0.0.0/0"),
                gw: None
            }]
        );
        assert_eq!(c.dns.nameservers, vec![ip("10.1.0.1")]);
    }

    #[test]
    fn podman_4_cni_config_parses_as_is() {
        // What podman's CNI backend writes for `podman network create`
        // (libnetwork/cni/cni_types.go), with the runtimeConfig it sends.
        let c = conf(json!({
            "cniVersion": "0.4.0", "name": "podnet-test", "type": "bridge",
            "bridge": "cni-podman1", "isGateway": true, "ipMasq": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                     "ranges": [[{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}]]},
            "capabilities": {"ips": true},
            "args": {"podman_labels": {"a": "b"}},
            "runtimeConfig": {
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "aliases": {"podnet-test": ["web", "www"]},
                "ips": ["10.89.0.5", "10.89.0.6"]
            }
        }))
        .expect("valid");
        assert!(c.is_gateway && c.ip_masq && c.hairpin_mode);
        assert_eq!(c.cni_version, SpecVersion::V0_4_0);
        assert_eq!(c.runtime_config.aliases, ["web", "www"]);
        assert_eq!(c.runtime_config.ips, vec![ip("10.89.0.5"), ip("10.89.0.6")]);
        assert_eq!(
            c.runtime_config.port_mappings,
            vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None
            }]
        );
    }

    #[test]
    fn dual_stack_ranges_give_one_set_per_family() {
        let c = conf(with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00:88::/64", "gateway": "fd00:88::1"}]]),
        ))
        .expect("valid");
        assert_eq!(c.ipam.ranges.len(), 2);
        assert!(c.ipam.ranges[1][0].subnet.is_ipv6());
    }

    #[test]
    fn the_old_single_subnet_comes_before_ranges() {
        let c = conf(with("/ipam/subnet", json!("10.90.0.0/24"))).expect("valid");
        assert_eq!(c.ipam.ranges[0][0].subnet, net("10.90.0.0/24"));
        assert_eq!(c.ipam.ranges[1][0].subnet, net("10.88.0.0/16"));
    }

    #[test]
    fn runtime_ip_ranges_come_first() {
        let c = conf(with(
            "/runtimeConfig/ipRanges",
            json!([[{"subnet": "10.91.0.0/24"}]]),
        ))
        .expect("valid");
        assert_eq!(c.ipam.ranges[0][0].subnet, net("10.91.0.0/24"));
    }

    #[test]
    fn the_default_gateway_is_the_subnets_first_address() {
        let c = conf(base()).expect("valid");
        assert_eq!(c.ipam.ranges[0][0].gateway_or_default(), ip("10.88.0.1"));
    }

    #[test]
    fn a_default_ipv4_range_stops_below_broadcast() {
        let c = conf(with("/ipam/ranges", json!([[{"subnet": "10.88.1.0/24"}]]))).expect("valid");
        let r = c.ipam.ranges[0][0];
        assert_eq!((r.first(), r.last()), (ip("10.88.1.1"), ip("10.88.1.254")));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(conf(with("/frobnicate", json!({"x": [1, 2]}))).is_ok());
        assert!(conf(with("/ipam/frobnicate", json!(1))).is_ok());
    }

    #[test]
    fn a_missing_name_is_code_7() {
        let mut v = base();
        v.as_object_mut().expect("object").remove("name");
        let (code, msg) = code_of(v);
        assert_eq!(code, 7);
        assert!(msg.contains("name"), "{msg}");
    }

    #[test]
    fn a_bad_network_name_is_code_7() {
        for n in ["-x", "a/b", "a b", ""] {
            assert_eq!(code_of(with("/name", json!(n))).0, 7, "{n:?}");
        }
    }

    #[test]
    fn undecodable_json_is_code_6() {
        for bytes in [&b"{"[..], b"", b"\xff\xfe", b"[1,2]", b"null", b"\"x\""] {
            assert_eq!(
                NetConf::from_slice(bytes).map_err(|e| e.code).err(),
                Some(6),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn a_non_string_cni_version_is_code_6() {
        assert_eq!(code_of(with("/cniVersion", json!(1.1))).0, 6);
    }

    #[test]
    fn an_unsupported_cni_version_is_code_1() {
        assert_eq!(code_of(with("/cniVersion", json!("0.2.0"))).0, 1);
    }

    #[test]
    fn a_missing_cni_version_is_0_1_0_and_code_1() {
        let mut v = base();
        v.as_object_mut().expect("object").remove("cniVersion");
        assert_eq!(code_of(v).0, 1);
    }

    #[test]
    fn a_wrong_type_is_code_7_naming_field_and_value() {
        let (code, msg) = code_of(with("/ipMasq", json!("yes")));
        assert_eq!(code, 7);
        assert!(msg.contains("ipMasq") && msg.contains("\"yes\""), "{msg}");
    }

    #[test]
    fn an_unparseable_subnet_is_code_7_naming_its_path() {
        let (code, msg) = code_of(with("/ipam/ranges", json!([[{"subnet": "10.88.0.0/33"}]])));
        assert_eq!(code, 7);
        assert!(
            msg.contains("ipam.ranges[0][0].subnet") && msg.contains("10.88.0.0/33"),
            "{msg}"
        );
    }

    #[test]
    fn a_subnet_with_host_bits_is_code_7() {
        assert_eq!(
            code_of(with("/ipam/ranges", json!([[{"subnet": "10.88.0.1/16"}]]))).0,
            7
        );
    }

    #[test]
    fn a_subnet_too_small_to_allocate_from_is_code_7() {
        for s in ["10.88.0.0/31", "10.88.0.0/32", "fd00::/127"] {
            assert_eq!(
                code_of(with("/ipam/ranges", json!([[{"subnet": s}]]))).0,
                7,
                "{s}"
            );
        }
    }

    #[test]
    fn a_gateway_outside_its_subnet_is_code_7() {
        let (code, msg) = code_of(with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/16", "gateway": "10.89.0.1"}]]),
        ));
        assert_eq!(code, 7);
        assert!(
            msg.contains("gateway") && msg.contains("10.89.0.1"),
            "{msg}"
        );
    }

    #[test]
    fn a_gateway_of_the_other_family_is_code_7() {
        let v = with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/16", "gateway": "fd00::1"}]]),
        );
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn a_range_start_after_its_end_is_code_7() {
        let v = with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/16", "rangeStart": "10.88.0.50", "rangeEnd": "10.88.0.10"}]]),
        );
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn overlapping_ranges_are_code_7() {
        let v = with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/16"}], [{"subnet": "10.88.1.0/24"}]]),
        );
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn disjoint_ranges_of_one_subnet_are_allowed() {
        let v = with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/24", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.19"},
                    {"subnet": "10.88.0.0/24", "rangeStart": "10.88.0.20", "rangeEnd": "10.88.0.29"}]]),
        );
        assert!(conf(v).is_ok());
    }

    #[test]
    fn a_range_set_of_mixed_families_is_code_7() {
        let v = with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/16"}, {"subnet": "fd00::/64"}]]),
        );
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn no_subnet_at_all_is_code_7() {
        assert_eq!(code_of(with("/ipam", json!({"type": "host-local"}))).0, 7);
        let mut v = base();
        v.as_object_mut().expect("object").remove("ipam");
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn another_ipam_plugin_is_code_2_naming_ipam_type() {
        let (code, msg) = code_of(with("/ipam/type", json!("dhcp")));
        assert_eq!(code, 2);
        assert!(msg.contains("ipam.type") && msg.contains("dhcp"), "{msg}");
    }

    #[test]
    fn ipam_type_host_local_podnet_or_none_is_accepted() {
        assert!(conf(with("/ipam/type", json!("host-local"))).is_ok());
        assert!(conf(with("/ipam/type", json!("podnet"))).is_ok());
        assert!(conf(base()).is_ok());
    }

    #[test]
    fn mtu_outside_68_to_65535_is_code_7() {
        for m in [
            json!(0),
            json!(67),
            json!(65536),
            json!(-1),
            json!(1500.5),
            json!("1500"),
        ] {
            let (code, msg) = code_of(with("/mtu", m.clone()));
            assert_eq!(code, 7, "{m}");
            assert!(msg.contains("mtu"), "{msg}");
        }
    }

    #[test]
    fn a_jumbo_mtu_is_accepted() {
        assert_eq!(
            conf(with("/mtu", json!(9000))).map(|c| c.mtu),
            Ok(Some(9000))
        );
    }

    #[test]
    fn a_bad_bridge_name_is_code_7() {
        for b in ["", "a-name-longer-than-15", "a b", "a/b"] {
            assert_eq!(code_of(with("/bridge", json!(b))).0, 7, "{b:?}");
        }
    }

    #[test]
    fn is_default_gateway_implies_is_gateway() {
        let c = conf(with("/isDefaultGateway", json!(true))).expect("valid");
        assert!(c.is_gateway && c.is_default_gateway);
    }

    #[test]
    fn a_port_of_0_is_code_7() {
        let v = with(
            "/runtimeConfig/portMappings",
            json!([{"hostPort": 0, "containerPort": 80}]),
        );
        let (code, msg) = code_of(v);
        assert_eq!(code, 7);
        assert!(
            msg.contains("runtimeConfig.portMappings[0].hostPort"),
            "{msg}"
        );
    }

    #[test]
    fn a_port_above_65535_is_code_7() {
        let v = with(
            "/runtimeConfig/portMappings",
            json!([{"hostPort": 80, "containerPort": 65536}]),
        );
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn a_protocol_other_than_tcp_udp_sctp_is_code_7() {
        let v = with(
            "/runtimeConfig/portMappings",
            json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
        );
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn protocols_read_in_any_case_and_default_to_tcp() {
        let v = with(
            "/runtimeConfig/portMappings",
            json!([{"hostPort": 1, "containerPort": 2, "protocol": "UDP", "hostIP": "127.0.0.1"},
                   {"hostPort": 3, "containerPort": 4, "protocol": "sctp"},
                   {"hostPort": 5, "containerPort": 6, "hostIP": ""}]),
        );
        let p = conf(v).expect("valid").runtime_config.port_mappings;
        assert_eq!(
            p.iter().map(|m| m.protocol).collect::<Vec<_>>(),
            [Protocol::Udp, Protocol::Sctp, Protocol::Tcp]
        );
        assert_eq!((p[0].host_ip, p[2].host_ip), (Some(ip("127.0.0.1")), None));
    }

    #[test]
    fn an_invalid_mac_is_code_7() {
        for m in [
            "zz:11:22:33:44:55",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "c2:11:22",
        ] {
            let (code, msg) = code_of(with("/runtimeConfig/mac", json!(m)));
            assert_eq!(code, 7, "{m}");
            assert!(msg.contains("runtimeConfig.mac"), "{msg}");
        }
    }

    #[test]
    fn a_mac_is_typed() {
        let c = conf(with("/runtimeConfig/mac", json!("C2:11:22:33:44:55"))).expect("valid");
        assert_eq!(
            c.runtime_config.mac,
            Some([0xc2, 0x11, 0x22, 0x33, 0x44, 0x55])
        );
    }

    #[test]
    fn static_ips_take_cidr_or_bare_addresses() {
        let c = conf(with(
            "/runtimeConfig/ips",
            json!(["10.88.0.5/16", "fd00:88::5"]),
        ))
        .expect("valid");
        assert_eq!(
            c.runtime_config.ips,
            vec![ip("10.88.0.5"), ip("fd00:88::5")]
        );
    }

    #[test]
    fn a_bad_static_ip_is_code_7() {
        assert_eq!(
            code_of(with("/runtimeConfig/ips", json!(["10.88.0.500"]))).0,
            7
        );
    }

    #[test]
    fn static_ips_merge_cni_args_args_and_runtime_config_in_host_local_order() {
        let mut v = with("/runtimeConfig/ips", json!(["10.88.0.5"]));
        v["args"] = json!({"cni": {"ips": ["10.88.0.6", "10.88.0.5"]}});
        let c = conf(v).expect("valid");
        assert_eq!(
            c.static_ips(Some("10.88.0.7/16")),
            Ok(vec![ip("10.88.0.7"), ip("10.88.0.6"), ip("10.88.0.5")])
        );
    }

    #[test]
    fn a_bad_cni_args_ip_is_code_4() {
        let c = conf(base()).expect("valid");
        assert_eq!(c.static_ips(Some("nope")).map_err(|e| e.code), Err(4));
    }

    #[test]
    fn runtime_mac_wins_over_args_and_cni_args() {
        let mut v = with("/runtimeConfig/mac", json!("02:00:00:00:00:01"));
        v["args"] = json!({"cni": {"mac": "02:00:00:00:00:02"}});
        let c = conf(v).expect("valid");
        assert_eq!(
            c.mac(Some("02:00:00:00:00:03")),
            Ok(Some([2, 0, 0, 0, 0, 1]))
        );
    }

    #[test]
    fn a_cni_args_mac_is_used_when_the_config_has_none() {
        let bare = conf(base()).expect("valid");
        assert_eq!(
            bare.mac(Some("02:00:00:00:00:03")),
            Ok(Some([2, 0, 0, 0, 0, 3]))
        );
    }

    #[test]
    fn a_multicast_cni_args_mac_is_code_4() {
        let bare = conf(base()).expect("valid");
        assert_eq!(
            bare.mac(Some("ff:ff:ff:ff:ff:ff")).map_err(|e| e.code),
            Err(4)
        );
    }

    #[test]
    fn range_of_finds_the_set_holding_an_address() {
        let v = with(
            "/ipam/ranges",
            json!([[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00:88::/64"}]]),
        );
        let c = conf(v).expect("valid");
        assert_eq!(c.ipam.range_of(ip("fd00:88::9")).map(|(i, _)| i), Some(1));
        assert_eq!(c.ipam.range_of(ip("10.99.0.1")), None);
    }

    #[test]
    fn runtime_dns_maps_servers_and_searches() {
        let c = conf(with(
            "/runtimeConfig/dns",
            json!({"servers": ["10.88.0.1"], "searches": ["cluster.local"], "options": ["ndots:5"]}),
        ))
        .expect("valid");
        assert_eq!(c.runtime_config.dns.nameservers, vec![ip("10.88.0.1")]);
        assert_eq!(c.runtime_config.dns.search, ["cluster.local"]);
        assert_eq!(c.runtime_config.dns.options, ["ndots:5"]);
    }

    #[test]
    fn a_bad_nameserver_is_code_7() {
        assert_eq!(
            code_of(with("/dns", json!({"nameservers": ["dns.example"]}))).0,
            7
        );
    }

    #[test]
    fn aliases_read_as_a_list_too() {
        let c = conf(with("/runtimeConfig/aliases", json!(["db"]))).expect("valid");
        assert_eq!(c.runtime_config.aliases, ["db"]);
    }

    #[test]
    fn podman_aliases_of_another_network_are_not_ours() {
        let c = conf(with("/runtimeConfig/aliases", json!({"other": ["db"]}))).expect("valid");
        assert!(c.runtime_config.aliases.is_empty());
    }

    #[test]
    fn a_bad_alias_is_code_7() {
        assert_eq!(code_of(with("/runtimeConfig/aliases", json!(["a b"]))).0, 7);
        assert_eq!(code_of(with("/runtimeConfig/aliases", json!("db"))).0, 7);
    }

    #[test]
    fn valid_attachments_are_read() {
        let mut v = base();
        v["cni.dev/valid-attachments"] = json!([{"containerID": "abc", "ifname": "eth0"}]);
        let c = conf(v).expect("valid");
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn a_valid_attachment_without_ifname_is_code_7() {
        let mut v = base();
        v["cni.dev/valid-attachments"] = json!([{"containerID": "abc"}]);
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn a_relative_data_dir_is_code_7() {
        assert_eq!(code_of(with("/dataDir", json!("var/lib"))).0, 7);
        assert_eq!(code_of(with("/ipam/dataDir", json!("var/lib"))).0, 7);
    }

    #[test]
    fn data_dir_comes_from_either_place() {
        let c = conf(with("/ipam/dataDir", json!("/var/lib/cni/networks"))).expect("valid");
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/cni/networks")));
    }

    #[test]
    fn differing_data_dirs_are_code_7() {
        let mut v = with("/ipam/dataDir", json!("/a"));
        v["dataDir"] = json!("/b");
        assert_eq!(code_of(v).0, 7);
    }

    #[test]
    fn prev_result_is_kept_raw() {
        let c = conf(with("/prevResult", json!({"ips": []}))).expect("valid");
        assert_eq!(c.prev_result, Some(json!({"ips": []})));
    }
}
