//! The CNI spec layer under arbitrary input: whatever bytes arrive on
//! stdin and whatever values the environment holds, parsing never panics
//! and either succeeds or fails with one of the codes the spec gives such
//! input; and a result rendered at any supported version reads back as
//! the same result.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStringExt;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use podnet::cni::{
    parse_request, version, CniError, CniResult, Dns, Interface, IpConfig, NetConf, Route,
    SpecVersion,
};
use proptest::prelude::*;
use serde_json::{json, Value};

/// The codes malformed environment or stdin may give: version (1),
/// unsupported field (2), environment (4), decoding (6), config (7).
const INPUT_CODES: [u32; 5] = [1, 2, 4, 6, 7];

const VERBS: [&str; 6] = ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"];

/// A valid environment for `verb`.
fn env_for(verb: &str) -> Vec<(OsString, OsString)> {
    [
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .iter()
    .map(|(k, v)| ((*k).into(), (*v).into()))
    .collect()
}

/// A valid configuration for every verb at 1.1.0.
fn valid_config() -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "n", "type": "podnet",
        "ipam": {"ranges": [[{"subnet": "10.88.0.0/16"}]]},
        "prevResult": {"ips": [{"address": "10.88.0.5/16"}]},
        "cni.dev/valid-attachments": []
    })
}

fn assert_input_code(r: &Result<impl std::fmt::Debug, CniError>) {
    if let Err(e) = r {
        assert!(
            INPUT_CODES.contains(&e.code),
            "unexpected code {}: {e}",
            e.code
        );
        let j: Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(j["code"], e.code);
    }
}

/// Any JSON value, biased towards the names and shapes the
/// configuration reader looks at.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        prop_oneof![
            Just("10.88.0.0/16".to_string()),
            Just("fd00:88::1".to_string()),
            Just("1.1.0".to_string()),
            Just("02:42:ac:11:00:02".to_string()),
            Just("tcp".to_string()),
            "\\PC{0,12}",
        ]
        .prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("subnet".to_string()),
        Just("gateway".to_string()),
        Just("ranges".to_string()),
        Just("rangeStart".to_string()),
        Just("hostPort".to_string()),
        Just("containerPort".to_string()),
        Just("protocol".to_string()),
        Just("address".to_string()),
        Just("interface".to_string()),
        Just("name".to_string()),
        Just("n".to_string()),
        "[a-zA-Z]{1,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((keys.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The configuration fields podnet reads, as paths from the top.
const FIELDS: [&[&str]; 22] = [
    &["cniVersion"],
    &["name"],
    &["type"],
    &["bridge"],
    &["mtu"],
    &["ipMasq"],
    &["isDefaultGateway"],
    &["dataDir"],
    &["dns"],
    &["ipam"],
    &["ipam", "type"],
    &["ipam", "ranges"],
    &["ipam", "subnet"],
    &["ipam", "routes"],
    &["runtimeConfig"],
    &["runtimeConfig", "portMappings"],
    &["runtimeConfig", "ips"],
    &["runtimeConfig", "mac"],
    &["runtimeConfig", "aliases"],
    &["args"],
    &["prevResult"],
    &["cni.dev/valid-attachments"],
];

/// `valid_config()` with the field at `path` replaced by `value`.
fn config_with(path: &[&str], value: Value) -> Value {
    let mut v = valid_config();
    let mut cur = &mut v;
    for seg in &path[..path.len() - 1] {
        let obj = cur.as_object_mut().unwrap();
        cur = obj.entry(*seg).or_insert_with(|| json!({}));
        if !cur.is_object() {
            *cur = json!({});
        }
    }
    cur.as_object_mut()
        .unwrap()
        .insert(path[path.len() - 1].to_string(), value);
    v
}

fn any_v4() -> impl Strategy<Value = IpNetwork> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, p)| IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(a), p).unwrap()))
}

fn any_v6() -> impl Strategy<Value = IpNetwork> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, p)| IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(a), p).unwrap()))
}

fn any_net() -> impl Strategy<Value = IpNetwork> {
    prop_oneof![any_v4(), any_v6()]
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
    ]
}

/// Any result libcni could have written: indexes in range, and no field
/// set to a value Go's `omitempty` writes as absent (an empty string, an
/// MTU of 0).
fn any_result() -> impl Strategy<Value = CniResult> {
    let interface = (
        "[a-z][a-z0-9]{0,14}",
        proptest::option::of(any::<[u8; 6]>()),
        proptest::option::of(1u32..=65535),
        proptest::option::of("/[a-z0-9/]{1,30}"),
    )
        .prop_map(|(name, mac, mtu, sandbox)| Interface {
            name,
            mac,
            mtu,
            sandbox,
        });
    let route = (any_net(), proptest::option::of(any_ip())).prop_map(|(dst, gw)| Route { dst, gw });
    let dns = (
        proptest::collection::vec(any_ip(), 0..3),
        proptest::option::of("[a-z][a-z.]{0,20}"),
        proptest::collection::vec("[a-z.]{1,20}", 0..3),
        proptest::collection::vec("[a-z:0-9]{1,10}", 0..3),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        });
    (
        proptest::collection::vec(interface, 0..4),
        proptest::collection::vec(route, 0..4),
        dns,
    )
        .prop_flat_map(|(interfaces, routes, dns)| {
            let n = interfaces.len();
            let index = if n == 0 {
                Just(None).boxed()
            } else {
                proptest::option::of(0..n).boxed()
            };
            let ip = (any_net(), proptest::option::of(any_ip()), index).prop_map(
                |(address, gateway, interface)| IpConfig {
                    address,
                    gateway,
                    interface,
                },
            );
            proptest::collection::vec(ip, 0..4).prop_map(move |ips| CniResult {
                interfaces: interfaces.clone(),
                ips,
                routes: routes.clone(),
                dns: dns.clone(),
            })
        })
}

/// `r` as version `v` can say it: before 1.1.0 results have no
/// interface MTU.
fn as_said_at(mut r: CniResult, v: SpecVersion) -> CniResult {
    if !v.has_interface_mtu() {
        for i in &mut r.interfaces {
            i.mtu = None;
        }
    }
    r
}

/// An environment value: mostly plausible, sometimes arbitrary bytes
/// (not UTF-8, empty, with '=' or ';').
fn env_value() -> impl Strategy<Value = Option<OsString>> {
    proptest::option::of(prop_oneof![
        proptest::sample::select(vec![
            "ADD",
            "DEL",
            "CHECK",
            "GC",
            "STATUS",
            "VERSION",
            "eth0",
            "c1",
            "/run/netns/x",
            "K=V;A=B",
            "",
            "a=b=c",
            "/opt/cni/bin:/usr/lib/cni",
        ])
        .prop_map(OsString::from),
        proptest::collection::vec(any::<u8>().prop_filter("no NUL in env", |b| *b != 0), 0..24)
            .prop_map(OsString::from_vec),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_stdin_bytes_never_panic(verb in proptest::sample::select(VERBS.to_vec()),
                                         bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        assert_input_code(&parse_request(env_for(verb), &bytes));
        assert_input_code(&NetConf::from_slice(&bytes));
        // Whatever stdin is, the version to answer in is a supported one.
        prop_assert!(version::SUPPORTED.contains(&version::requested(&bytes)));
    }

    #[test]
    fn arbitrary_values_at_known_fields_never_panic(
        verb in proptest::sample::select(VERBS.to_vec()),
        field in proptest::sample::select(FIELDS.to_vec()),
        value in any_json(),
    ) {
        let stdin = serde_json::to_vec(&config_with(field, value)).unwrap();
        assert_input_code(&parse_request(env_for(verb), &stdin));
    }

    #[test]
    fn arbitrary_json_configs_never_panic(value in any_json()) {
        assert_input_code(&NetConf::from_value(&value));
    }

    #[test]
    fn arbitrary_environments_never_panic(
        values in proptest::collection::vec(env_value(), 6),
        stdin_valid in any::<bool>(),
    ) {
        let names = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];
        let vars: Vec<(OsString, OsString)> = names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| v.map(|v| (OsString::from(*n), v)))
            .collect();
        let stdin = if stdin_valid { serde_json::to_vec(&valid_config()).unwrap() } else { b"{".to_vec() };
        assert_input_code(&parse_request(vars, &stdin));
    }

    #[test]
    fn arbitrary_prev_results_never_panic(value in any_json()) {
        if let Err(e) = CniResult::from_json(&value) {
            prop_assert!(e.code == 6 || e.code == 1, "code {}: {e}", e.code);
        }
    }

    #[test]
    fn a_result_reads_back_at_every_version(r in any_result()) {
        for v in SpecVersion::ALL {
            let text = r.to_json(v.as_str()).unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&value["cniVersion"], v.as_str());
            let back = CniResult::from_json(&value).unwrap();
            prop_assert_eq!(back, as_said_at(r.clone(), v), "at {}: {}", v, text);
        }
    }

    #[test]
    fn ip_version_fields_appear_exactly_before_1_0_0(r in any_result()) {
        for v in SpecVersion::ALL {
            let value: Value = serde_json::from_str(&r.to_json(v.as_str()).unwrap()).unwrap();
            let ips = value.get("ips").and_then(Value::as_array).cloned().unwrap_or_default();
            for (ip, want) in ips.iter().zip(&r.ips) {
                let family = if want.address.is_ipv4() { "4" } else { "6" };
                if v.is_legacy_result() {
                    prop_assert_eq!(&ip["version"], family);
                } else {
                    prop_assert!(ip.get("version").is_none());
                }
            }
        }
    }

    #[test]
    fn error_json_always_decodes(code in any::<u32>(), msg in "\\PC{0,40}", details in "\\PC{0,40}") {
        let e = CniError::new(code, msg.clone(), details.clone());
        let j: Value = serde_json::from_str(&e.to_json("0.4.0")).unwrap();
        prop_assert_eq!(&j["code"], code);
        prop_assert_eq!(&j["msg"], msg.as_str());
        prop_assert_eq!(j.get("details").is_some(), !details.is_empty());
    }
}
