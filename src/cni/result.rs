//! The ADD result: interfaces, IPs, routes and DNS, rendered in the shape
//! of the requested spec version and read back from a `prevResult`.
//!
//! Shapes, as libcni's `types/040` and `types/100` marshal them (fields in
//! that order; empty lists and unset fields left out):
//!
//! - 0.3.0, 0.3.1, 0.4.0: every IP has `"version": "4"` or `"6"`;
//!   `dns` is always present, `{}` when empty (Go's `omitempty` does not
//!   drop a struct).
//! - 1.0.0, 1.1.0: no `version`; an empty `dns` is left out, as libcni
//!   1.2 and later write it (libcni 1.1 wrote `{}`; both read either).
//! - Only 1.1.0 interfaces carry `mtu` (the spec added it in 1.1.0).
//!
//! `cniVersion` is the requested version. Reading accepts any supported
//! version's shape, with or without `cniVersion`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::CniError;
use super::json::{join, Reader};
use super::mac::{format_mac, parse_mac};
use super::version::SpecVersion;

/// A CNI success result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// Every interface the attachment made, host side included.
    pub interfaces: Vec<Interface>,
    /// The addresses assigned.
    pub ips: Vec<IpConfig>,
    /// The routes made.
    pub routes: Vec<Route>,
    /// DNS settings for the container.
    pub dns: Dns,
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// The interface's name.
    pub name: String,
    /// Its hardware address, when it has one.
    pub mac: Option<[u8; 6]>,
    /// Its MTU (rendered at 1.1.0 only; earlier results have no `mtu`).
    pub mtu: Option<u32>,
    /// The namespace path (`CNI_NETNS`) for an interface inside the
    /// container; `None` for one on the host.
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its prefix (`10.88.0.5/16`).
    pub address: IpNetwork,
    /// The subnet's gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface holding it.
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination (`0.0.0.0/0`).
    pub dst: IpNetwork,
    /// The next hop; when `None` an IP's gateway may be used.
    pub gw: Option<IpAddr>,
}

/// DNS settings, in a result or a configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    /// Name servers, in priority order.
    pub nameservers: Vec<IpAddr>,
    /// The local domain for short names.
    pub domain: Option<String>,
    /// Search domains, in priority order.
    pub search: Vec<String>,
    /// Resolver options (`ndots:5`).
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set (an empty `domain` counts as unset).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.as_deref().is_none_or(str::is_empty)
            && self.search.is_empty()
            && self.options.is_empty()
    }

    /// Reads `{nameservers, domain, search, options}` from `obj` at `path`.
    pub(crate) fn read(r: Reader, obj: &Map<String, Value>, path: &str) -> Result<Dns, CniError> {
        let nameservers = match r.opt_array(obj, path, "nameservers")? {
            None => Vec::new(),
            Some(items) => {
                let p = join(path, "nameservers");
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| r.ip(&format!("{p}[{i}]"), v))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(Dns {
            nameservers,
            domain: r
                .opt_str(obj, path, "domain")?
                .filter(|s| !s.is_empty())
                .map(String::from),
            search: r.str_list(obj, path, "search")?,
            options: r.str_list(obj, path, "options")?,
        })
    }
}

#[derive(Serialize)]
struct WireResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<WireInterface<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ips: Vec<WireIp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<WireRoute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<WireDns<'a>>,
}

#[derive(Serialize)]
struct WireInterface<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
}

#[derive(Serialize)]
struct WireIp {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
}

#[derive(Serialize)]
struct WireRoute {
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    gw: Option<String>,
}

#[derive(Serialize)]
struct WireDns<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nameservers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    search: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    options: &'a [String],
}

impl CniResult {
    /// The result JSON at `cni_version`, the request's `cniVersion`.
    ///
    /// # Errors
    /// Code 1 (or 6) when `cni_version` is not a supported version, as
    /// [`SpecVersion::parse`]; code 999 when an IP's `interface` index is
    /// past the end of `interfaces` (a bug in the caller).
    pub fn to_json(&self, cni_version: &str) -> Result<String, CniError> {
        self.to_json_at(SpecVersion::parse(cni_version)?)
    }

    /// The result JSON at `version`.
    ///
    /// # Errors
    /// Code 999 when an IP's `interface` index is out of range.
    pub fn to_json_at(&self, version: SpecVersion) -> Result<String, CniError> {
        let legacy = version.is_legacy_result();
        if let Some(ip) = self
            .ips
            .iter()
            .find(|ip| ip.interface.is_some_and(|i| i >= self.interfaces.len()))
        {
            return Err(CniError::internal(
                "result has an IP on an interface it does not list",
                format!(
                    "{} has interface index {:?}, {} interfaces",
                    ip.address,
                    ip.interface,
                    self.interfaces.len()
                ),
            ));
        }
        let wire = WireResult {
            cni_version: version.as_str(),
            interfaces: self
                .interfaces
                .iter()
                .map(|i| WireInterface {
                    name: &i.name,
                    mac: i.mac.as_ref().map(format_mac),
                    // Go's `omitempty` drops a zero MTU too.
                    mtu: i.mtu.filter(|&m| version.has_interface_mtu() && m != 0),
                    sandbox: i.sandbox.as_deref().filter(|s| !s.is_empty()),
                })
                .collect(),
            ips: self
                .ips
                .iter()
                .map(|ip| WireIp {
                    version: legacy.then_some(if ip.address.is_ipv4() { "4" } else { "6" }),
                    interface: ip.interface,
                    address: ip.address.to_string(),
                    gateway: ip.gateway.map(|g| g.to_string()),
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|r| WireRoute {
                    dst: r.dst.to_string(),
                    gw: r.gw.map(|g| g.to_string()),
                })
                .collect(),
            dns: (legacy || !self.dns.is_empty()).then(|| WireDns {
                nameservers: self
                    .dns
                    .nameservers
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                domain: self.dns.domain.as_deref().filter(|d| !d.is_empty()),
                search: &self.dns.search,
                options: &self.dns.options,
            }),
        };
        serde_json::to_string(&wire)
            .map_err(|e| CniError::internal("cannot encode the result", e.to_string()))
    }

    /// Reads a result of any supported version, such as a request's
    /// `prevResult` (for CHECK, DEL and chaining). Unknown fields are
    /// ignored; so is each IP's `version`, once checked to be `"4"` or
    /// `"6"`. An empty `mac`, `sandbox` or `domain`, and an `mtu` of 0,
    /// read as unset, as libcni writes them.
    ///
    /// # Errors
    /// Code 6 naming the field (`prevResult.ips[0].address`) when a field
    /// has the wrong type or value, a required one (`name`, `address`,
    /// `dst`) is missing, or an `interface` index is past the end of
    /// `interfaces`; code 1 when its `cniVersion` is not supported.
    pub fn from_json(value: &Value) -> Result<CniResult, CniError> {
        const P: &str = "prevResult";
        let r = Reader::Result;
        let obj = r.object(P, value)?;
        if let Some(v) = r.opt_str(obj, P, "cniVersion")? {
            SpecVersion::parse(v)?;
        }
        let interfaces = list(obj, P, "interfaces", |path, v| {
            let o = r.object(path, v)?;
            let name = r
                .opt_str(o, path, "name")?
                .ok_or_else(|| r.missing(&join(path, "name")))?;
            let mac = match r.opt_str(o, path, "mac")? {
                None | Some("") => None,
                Some(s) => Some(parse_mac(s).ok_or_else(|| {
                    r.bad(
                        &join(path, "mac"),
                        &o["mac"],
                        "expected a MAC such as 02:42:ac:11:00:02",
                    )
                })?),
            };
            let mtu = r
                .opt_uint(o, path, "mtu", u64::from(u32::MAX))?
                .and_then(|m| u32::try_from(m).ok())
                .filter(|&m| m != 0);
            let sandbox = r
                .opt_str(o, path, "sandbox")?
                .filter(|s| !s.is_empty())
                .map(String::from);
            Ok(Interface {
                name: name.to_string(),
                mac,
                mtu,
                sandbox,
            })
        })?;
        let ips = list(obj, P, "ips", |path, v| {
            let o = r.object(path, v)?;
            if let Some(ver) = r.opt_str(o, path, "version")? {
                if ver != "4" && ver != "6" {
                    return Err(r.bad(
                        &join(path, "version"),
                        &o["version"],
                        "expected \"4\" or \"6\"",
                    ));
                }
            }
            let interface = match r.opt_uint(o, path, "interface", u64::MAX)? {
                None => None,
                Some(i) => {
                    let n = obj
                        .get("interfaces")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    match usize::try_from(i) {
                        Ok(i) if i < n => Some(i),
                        _ => {
                            return Err(r.bad(
                                &join(path, "interface"),
                                &o["interface"],
                                format!("an index into interfaces, which has {n}"),
                            ))
                        }
                    }
                }
            };
            Ok(IpConfig {
                address: r.req_cidr(o, path, "address")?,
                gateway: r.opt_ip(o, path, "gateway")?,
                interface,
            })
        })?;
        let routes = list(obj, P, "routes", |path, v| {
            let o = r.object(path, v)?;
            Ok(Route {
                dst: r.req_cidr(o, path, "dst")?,
                gw: r.opt_ip(o, path, "gw")?,
            })
        })?;
        let dns = match r.opt_object(obj, P, "dns")? {
            None => Dns::default(),
            Some(d) => Dns::read(r, d, &join(P, "dns"))?,
        };
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }
}

/// Reads the optional list `obj[key]` item by item; each item's path is
/// `path.key[i]`.
fn list<T>(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    mut item: impl FnMut(&str, &Value) -> Result<T, CniError>,
) -> Result<Vec<T>, CniError> {
    let Some(items) = Reader::Result.opt_array(obj, path, key)? else {
        return Ok(Vec::new());
    };
    let base = join(path, key);
    items
        .iter()
        .enumerate()
        .map(|(i, v)| item(&format!("{base}[{i}]"), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// The bridge plugin's result in SPEC.md's "Add example".
    fn spec_example() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some([0x00, 0x11, 0x22, 0x33, 0x44, 0x55]),
                    ..Interface::default()
                },
                Interface {
                    name: "veth3243".into(),
                    mac: Some([0x55, 0x44, 0x33, 0x22, 0x11, 0x11]),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some([0x99, 0x88, 0x77, 0x66, 0x55, 0x44]),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/blue".into()),
                },
            ],
            ips: vec![IpConfig {
                address: net("10.1.0.5/16"),
                gateway: Some(ip("10.1.0.1")),
                interface: Some(2),
            }],
            routes: vec![Route {
                dst: net("0.0.0.0/0"),
                gw: None,
            }],
            dns: Dns {
                nameservers: vec![ip("10.1.0.1")],
                ..Dns::default()
            },
        }
    }

    fn rendered(r: &CniResult, v: &str) -> Value {
        serde_json::from_str(&r.to_json(v).expect("renders")).expect("json")
    }

    #[test]
    fn golden_1_0_0_matches_the_spec_example() {
        let want = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        assert_eq!(rendered(&spec_example(), "1.0.0"), want);
    }

    #[test]
    fn golden_1_1_0_adds_the_interface_mtu() {
        let mut want = rendered(&spec_example(), "1.0.0");
        want["cniVersion"] = json!("1.1.0");
        want["interfaces"][2]["mtu"] = json!(1500);
        assert_eq!(rendered(&spec_example(), "1.1.0"), want);
    }

    #[test]
    fn golden_0_4_0_has_ip_versions_and_no_mtu() {
        let want = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1",
                     "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        assert_eq!(rendered(&spec_example(), "0.4.0"), want);
    }

    #[test]
    fn fields_come_in_libcni_order() {
        let s = spec_example().to_json("0.4.0").expect("renders");
        let at = |k: &str| s.find(k).expect(k);
        assert!(at("\"cniVersion\"") < at("\"interfaces\""));
        assert!(at("\"interfaces\"") < at("\"ips\""));
        assert!(at("\"ips\"") < at("\"routes\""));
        assert!(at("\"routes\"") < at("\"dns\""));
        assert!(
            at("\"version\"") < at("\"interface\":") && at("\"interface\":") < at("\"address\"")
        );
    }

    #[test]
    fn ipv6_addresses_are_version_6_before_1_0_0() {
        let r = CniResult {
            ips: vec![IpConfig {
                address: net("fd00:88::5/64"),
                gateway: Some(ip("fd00:88::1")),
                interface: None,
            }],
            ..CniResult::default()
        };
        assert_eq!(rendered(&r, "0.3.1")["ips"][0]["version"], "6");
        assert!(rendered(&r, "1.1.0")["ips"][0].get("version").is_none());
    }

    #[test]
    fn empty_dns_is_an_empty_object_before_1_0_0_and_absent_after() {
        let r = CniResult::default();
        assert_eq!(
            rendered(&r, "0.4.0"),
            json!({"cniVersion": "0.4.0", "dns": {}})
        );
        assert_eq!(rendered(&r, "1.0.0"), json!({"cniVersion": "1.0.0"}));
    }

    #[test]
    fn cni_version_in_the_output_is_the_requested_one() {
        for v in super::super::version::SUPPORTED {
            assert_eq!(rendered(&spec_example(), v)["cniVersion"], v);
        }
    }

    #[test]
    fn an_unsupported_version_cannot_be_rendered() {
        assert_eq!(spec_example().to_json("0.2.0").map_err(|e| e.code), Err(1));
    }

    #[test]
    fn an_interface_index_out_of_range_is_refused() {
        let mut r = spec_example();
        r.ips[0].interface = Some(3);
        assert_eq!(r.to_json("1.1.0").map_err(|e| e.code), Err(999));
    }

    #[test]
    fn the_spec_example_reads_back_at_every_version() {
        for v in SpecVersion::ALL {
            let mut want = spec_example();
            if !v.has_interface_mtu() {
                want.interfaces[2].mtu = None;
            }
            let back = CniResult::from_json(&rendered(&spec_example(), v.as_str())).expect("reads");
            assert_eq!(back, want, "{v}");
        }
    }

    #[test]
    fn a_prev_result_without_cni_version_reads() {
        let v = json!({"ips": [{"address": "10.1.0.5/16"}]});
        let r = CniResult::from_json(&v).expect("reads");
        assert_eq!(r.ips[0].address, net("10.1.0.5/16"));
    }

    #[test]
    fn a_bad_address_is_code_6_naming_the_field() {
        let v = json!({"ips": [{"address": "10.1.0.5"}]});
        let e = CniResult::from_json(&v).expect_err("no prefix");
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("prevResult.ips[0].address"), "{}", e.msg);
    }

    #[test]
    fn an_interface_index_past_the_list_is_code_6() {
        let v = json!({"interfaces": [{"name": "eth0"}],
                       "ips": [{"address": "10.1.0.5/16", "interface": 1}]});
        assert_eq!(CniResult::from_json(&v).map_err(|e| e.code), Err(6));
    }

    #[test]
    fn an_ip_version_other_than_4_or_6_is_code_6() {
        let v = json!({"ips": [{"version": "5", "address": "10.1.0.5/16"}]});
        assert_eq!(CniResult::from_json(&v).map_err(|e| e.code), Err(6));
    }

    #[test]
    fn a_non_object_prev_result_is_code_6() {
        for v in [json!([]), json!("x"), json!(1)] {
            assert_eq!(CniResult::from_json(&v).map_err(|e| e.code), Err(6));
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let v = json!({"cniVersion": "1.1.0", "extra": 1,
                       "interfaces": [{"name": "eth0", "pciID": "0000:00:01.0", "socketPath": "/s"}],
                       "routes": [{"dst": "0.0.0.0/0", "mtu": 1400, "table": 7}]});
        let r = CniResult::from_json(&v).expect("reads");
        assert_eq!((r.interfaces.len(), r.routes.len()), (1, 1));
    }

    #[test]
    fn an_unsupported_prev_result_version_is_code_1() {
        let v = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/16"}});
        assert_eq!(CniResult::from_json(&v).map_err(|e| e.code), Err(1));
    }
}
