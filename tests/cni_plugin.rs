//! `podnet-cni`, the executable, run as a runtime runs it: the verb and
//! the attachment in `CNI_*` variables, the configuration on stdin, the
//! result or the spec's error JSON on stdout. Each test's namespace plays
//! the host (`common::in_netns`; the plugin is a child of the test's
//! thread, so it starts there), a `sleep` in a namespace of its own the
//! container (`common::RuntimeNetns`); the store is the test's
//! (`dataDir`).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{in_netns, Ctx, RuntimeNetns};
use serde_json::{json, Value};

const BRIDGE: &str = "pncni0";
const CID: &str = "8d3f0c1a9b2e4d5f6a7b8c9d0e1f2a3b";
const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A configuration as podman 4 writes one (bridge, host-local ranges, a
/// default route), at `version`, with its store in the test's directory.
fn conf(ctx: &Ctx, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "podnet-test",
        "type": "podnet",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "dataDir": ctx.state,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
}

/// The plugin with an empty environment, stdin and stdout piped: for
/// runs that set every variable themselves.
fn bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podnet-cni"));
    cmd.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped());
    cmd
}

/// The plugin as a runtime starts it for `command` on (`cid`, `ifname`):
/// `bare` with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_IFNAME` and
/// `CNI_PATH`; callers add `CNI_NETNS` and anything else with `.env`.
fn cni(command: &str, cid: &str, ifname: &str) -> Command {
    let mut cmd = bare();
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni");
    cmd
}

/// Run the plugin: `command` on (`CID`, `ifname`) in `netns` (`None`: no
/// `CNI_NETNS`), `stdin` the configuration; whether it exited 0, and what
/// it printed (JSON, or `Value::Null` for nothing).
fn plugin(
    command: &str,
    ifname: &str,
    netns: Option<&RuntimeNetns>,
    stdin: &Value,
) -> (bool, Value) {
    let mut cmd = cni(command, CID, ifname);
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", &ns.path);
    }
    run(cmd, stdin)
}

fn run(mut cmd: Command, stdin: &Value) -> (bool, Value) {
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    };
    (out.status.success(), value)
}

/// `conf` with `key` set to `value` (a runtime's additions).
fn with(mut conf: Value, key: &str, value: Value) -> Value {
    conf.as_object_mut().unwrap().insert(key.into(), value);
    conf
}

/// `conf` with the runtime's capability arguments `runtime` (its
/// `runtimeConfig`).
fn asking(conf: Value, runtime: Value) -> Value {
    with(conf, "runtimeConfig", runtime)
}

/// The error code of a failed run.
fn code(out: &(bool, Value)) -> u64 {
    assert!(!out.0, "it succeeded: {}", out.1);
    out.1["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no code in {}", out.1))
}

fn ipv4_inside(ns: &RuntimeNetns, ifname: &str) -> String {
    ns.run(&["ip", "-o", "-4", "addr", "show", "dev", ifname]).1
}

#[test]
fn version_answers_with_every_supported_version() {
    let mut cmd = bare();
    cmd.env("CNI_COMMAND", "VERSION");
    let (ok, out) = run(cmd, &json!({"cniVersion": "1.1.0"}));
    assert!(ok);
    assert_eq!(out["supportedVersions"], json!(SUPPORTED));
}

#[test]
fn add_answers_in_the_shape_of_each_version() {
    in_netns(|ctx| async move {
        for version in SUPPORTED {
            let ns = RuntimeNetns::new();
            let (ok, out) = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, version));
            assert!(ok, "{version}: {out}");
            assert_eq!(out["cniVersion"], version);
            let ip = &out["ips"][0];
            let legacy = version.starts_with("0.");
            assert_eq!(ip.get("version").is_some(), legacy, "{version}: {out}");
            let inside =
                &out["interfaces"][usize::try_from(ip["interface"].as_u64().unwrap()).unwrap()];
            assert_eq!(inside["name"], "eth0");
            assert_eq!(inside["sandbox"], ns.path.display().to_string());
            let addr = ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned();
            assert!(ipv4_inside(&ns, "eth0").contains(&addr), "{version}");
            assert!(plugin("DEL", "eth0", Some(&ns), &conf(&ctx, version)).0);
        }
    });
}

#[test]
fn check_with_the_result_of_add_succeeds() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let (ok, result) = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
        assert!(ok, "{result}");
        let check = with(conf(&ctx, "1.0.0"), "prevResult", result);
        let (ok, out) = plugin("CHECK", "eth0", Some(&ns), &check);
        assert!(ok, "{out}");
        assert_eq!(out, Value::Null);
        plugin("DEL", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
    });
}

#[test]
fn check_names_an_address_taken_away_behind_its_back() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let (_, result) = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
        let cidr = result["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(ns.run(&["ip", "addr", "del", &cidr, "dev", "eth0"]).0);
        let check = with(conf(&ctx, "1.0.0"), "prevResult", result);
        let out = plugin("CHECK", "eth0", Some(&ns), &check);
        assert_eq!(code(&out), 107);
        assert!(
            out.1["details"].as_str().unwrap().contains(&cidr),
            "{}",
            out.1
        );
        plugin("DEL", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
    });
}

#[test]
fn check_of_an_attachment_never_made_is_code_3() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [], "ips": []});
        let check = with(conf(&ctx, "1.0.0"), "prevResult", prev);
        assert_eq!(code(&plugin("CHECK", "eth0", Some(&ns), &check)), 3);
    });
}

#[test]
fn add_of_an_interface_that_exists_fails_and_changes_nothing() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        assert!(plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "1.0.0")).0);
        let again = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
        assert_eq!(code(&again), 100, "{}", again.1);
        assert_eq!(ipv4_inside(&ns, "eth0").lines().count(), 1);
        plugin("DEL", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
    });
}

#[test]
fn del_twice_and_del_without_a_namespace_succeed_and_release_the_address() {
    in_netns(|ctx| async move {
        let mut ns = RuntimeNetns::new();
        let (_, result) = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "0.4.0"));
        let addr = result["ips"][0]["address"].as_str().unwrap().to_owned();
        ns.end();
        assert_eq!(
            plugin("DEL", "eth0", None, &conf(&ctx, "0.4.0")),
            (true, Value::Null)
        );
        assert_eq!(
            plugin("DEL", "eth0", None, &conf(&ctx, "0.4.0")),
            (true, Value::Null)
        );
        assert!(common::state_entries(&ctx, &["addr", "sandbox"]).is_empty());
        // The address is given again.
        let other = RuntimeNetns::new();
        let ip = addr.split('/').next().unwrap();
        let static_ip = asking(conf(&ctx, "0.4.0"), json!({"ips": [ip]}));
        let (ok, out) = plugin("ADD", "eth0", Some(&other), &static_ip);
        assert!(ok, "{out}");
        plugin("DEL", "eth0", Some(&other), &conf(&ctx, "0.4.0"));
    });
}

#[test]
fn a_static_address_that_is_taken_fails_and_leaves_nothing_inside() {
    in_netns(|ctx| async move {
        let a = RuntimeNetns::new();
        let asked = asking(conf(&ctx, "1.0.0"), json!({"ips": ["10.88.0.7"]}));
        assert!(plugin("ADD", "eth0", Some(&a), &asked).0);
        let b = RuntimeNetns::new();
        let out = plugin_as("second", "ADD", Some(&b), &asked, "");
        assert_eq!(code(&out), 102, "{}", out.1);
        assert_eq!(b.interfaces(), 1, "only lo in b");
        plugin("DEL", "eth0", Some(&a), &conf(&ctx, "1.0.0"));
    });
}

#[test]
fn a_mac_asked_by_the_runtime_is_given() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let asked = asking(conf(&ctx, "1.0.0"), json!({"mac": "02:42:0a:58:00:2a"}));
        let (ok, out) = plugin("ADD", "eth0", Some(&ns), &asked);
        assert!(ok, "{out}");
        assert_eq!(out["interfaces"][1]["mac"], "02:42:0a:58:00:2a");
        assert!(ns
            .run(&["ip", "link", "show", "eth0"])
            .1
            .contains("02:42:0a:58:00:2a"));
        plugin("DEL", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
    });
}

#[test]
fn gc_releases_every_attachment_not_listed_as_valid() {
    in_netns(|ctx| async move {
        let (a, b) = (RuntimeNetns::new(), RuntimeNetns::new());
        assert!(plugin("ADD", "eth0", Some(&a), &conf(&ctx, "1.1.0")).0);
        assert!(plugin("ADD", "eth1", Some(&b), &conf(&ctx, "1.1.0")).0);
        let valid = json!([{"containerID": CID, "ifname": "eth0"}]);
        let gc = with(conf(&ctx, "1.1.0"), "cni.dev/valid-attachments", valid);
        assert_eq!(plugin("GC", "eth0", None, &gc), (true, Value::Null));
        assert!(ipv4_inside(&b, "eth1").is_empty(), "eth1 was not valid");
        assert!(!ipv4_inside(&a, "eth0").is_empty(), "eth0 was valid");
        plugin("DEL", "eth0", Some(&a), &conf(&ctx, "1.1.0"));
    });
}

#[test]
fn status_succeeds_where_add_can_work() {
    in_netns(|ctx| async move {
        assert_eq!(
            plugin("STATUS", "eth0", None, &conf(&ctx, "1.1.0")),
            (true, Value::Null)
        );
    });
}

#[test]
fn status_is_code_50_where_the_store_cannot_be_made() {
    in_netns(|ctx| async move {
        std::fs::create_dir_all(&ctx.state).unwrap();
        let file = ctx.state.join("not-a-directory");
        std::fs::write(&file, b"").unwrap();
        let bad = with(conf(&ctx, "1.1.0"), "dataDir", json!(file));
        assert_eq!(code(&plugin("STATUS", "eth0", None, &bad)), 50);
        std::fs::remove_file(&file).unwrap();
    });
}

#[test]
fn a_library_sandbox_and_a_plugin_attachment_share_one_pool() {
    in_netns(|ctx| async move {
        let net = common::network_builder(&ctx.state, BRIDGE, &["10.88.0.0/16"])
            .dns(false)
            .build()
            .await
            .unwrap();
        let pod = net.sandbox("lib").create().await.unwrap();
        let ns = RuntimeNetns::new();
        let (ok, out) = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
        assert!(ok, "{out}");
        let addr = out["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        assert_ne!(addr, pod.ipv4().unwrap().to_string());
        assert_eq!(
            net.attachments().unwrap().len(),
            1,
            "the library sees the plugin's"
        );
        let (ok, ping) = ns.ping(pod.ipv4().unwrap());
        assert!(ok, "{ping}");
        plugin("DEL", "eth0", Some(&ns), &conf(&ctx, "1.0.0"));
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_bad_environment_is_code_4_naming_the_variable() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let out = plugin("ADD", "a/b", Some(&ns), &conf(&ctx, "1.0.0"));
        assert_eq!(code(&out), 4);
        assert!(out.1.to_string().contains("CNI_IFNAME"), "{}", out.1);
        let out = plugin("ADD", "eth0", None, &conf(&ctx, "1.0.0"));
        assert_eq!(code(&out), 4);
        assert!(out.1.to_string().contains("CNI_NETNS"), "{}", out.1);
    });
}

#[test]
fn a_known_field_with_a_bad_value_is_code_7_naming_it() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let out = plugin(
            "ADD",
            "eth0",
            Some(&ns),
            &with(conf(&ctx, "1.0.0"), "mtu", json!(0)),
        );
        assert_eq!(code(&out), 7);
        assert!(out.1.to_string().contains("mtu"), "{}", out.1);
        assert_eq!(ns.interfaces(), 1, "only lo");
    });
}

#[test]
fn a_gateway_podnet_cannot_keep_is_code_2_naming_it() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let ipam = json!({"ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.254"}]]});
        let out = plugin(
            "ADD",
            "eth0",
            Some(&ns),
            &with(conf(&ctx, "1.0.0"), "ipam", ipam),
        );
        assert_eq!(code(&out), 2);
        assert!(out.1.to_string().contains("gateway"), "{}", out.1);
    });
}

#[test]
fn an_unsupported_version_is_code_1() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        assert_eq!(
            code(&plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "0.2.0"))),
            1
        );
    });
}

#[test]
fn undecodable_stdin_is_code_6() {
    let mut cmd = cni("ADD", CID, "eth0");
    cmd.env("CNI_NETNS", "/proc/self/ns/net");
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\x00{not json")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 6);
}

/// `plugin` for container `cid`, with `PODNET_FAILPOINT` set to `crash`
/// (empty: none).
fn plugin_as(
    cid: &str,
    command: &str,
    netns: Option<&RuntimeNetns>,
    stdin: &Value,
    crash: &str,
) -> (bool, Value) {
    let mut cmd = cni(command, cid, "eth0");
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", &ns.path);
    }
    if !crash.is_empty() {
        cmd.env("PODNET_FAILPOINT", crash);
    }
    run(cmd, stdin)
}

/// The steps of an ADD a crash is tried at.
const ADD_STEPS: [&str; 6] = [
    "attach-record",
    "attach-address",
    "attach-veth",
    "attach-inside",
    "attach-port-rules",
    "attach-done",
];

/// `conf` with a port mapping asked by the runtime, so that a crash can
/// leave rules too.
fn conf_with_port(ctx: &Ctx, version: &str) -> Value {
    asking(
        conf(ctx, version),
        json!({"portMappings": [{"hostPort": 18090, "containerPort": 80, "protocol": "tcp"}]}),
    )
}

/// What a test's network holds that a crashed ADD could leave: ports of
/// its bridge, links in the container, store entries, port rules.
async fn leftovers(ctx: &Ctx, ns: &RuntimeNetns) -> Vec<String> {
    let mut out: Vec<String> = common::ports(&ctx.nl, BRIDGE).await.into_iter().collect();
    let (_, links) = ns.run(&["ip", "-o", "link"]);
    out.extend(
        links
            .lines()
            .filter(|l| !l.contains(" lo:"))
            .map(str::to_owned),
    );
    out.extend(
        common::state_entries(ctx, &["addr", "sandbox"])
            .into_iter()
            .map(|p| p.display().to_string()),
    );
    // The port mapping's rules (the network's masquerade stays: it is the
    // network's, not the attachment's).
    for (table, rules) in podnet::internals::podnet_tables().unwrap() {
        if table.ends_with("-aports") {
            out.extend(rules.into_iter().map(|r| format!("{table}: {r}")));
        }
    }
    out
}

#[test]
fn an_add_killed_at_any_step_then_del_leaves_nothing() {
    in_netns(|ctx| async move {
        for step in ADD_STEPS {
            let ns = RuntimeNetns::new();
            let (ok, _) = plugin_as(CID, "ADD", Some(&ns), &conf_with_port(&ctx, "1.0.0"), step);
            assert!(!ok, "ADD survived its crash at {step}");
            let (ok, out) = plugin_as(CID, "DEL", Some(&ns), &conf_with_port(&ctx, "1.0.0"), "");
            assert!(ok, "DEL after a crash at {step}: {out}");
            let left = leftovers(&ctx, &ns).await;
            assert!(
                left.is_empty(),
                "a crash at {step}, then DEL, left {left:?}"
            );
        }
    });
}

#[test]
fn an_add_killed_at_any_step_then_gc_leaves_nothing() {
    in_netns(|ctx| async move {
        for step in ADD_STEPS {
            let ns = RuntimeNetns::new();
            let (ok, _) = plugin_as(CID, "ADD", Some(&ns), &conf_with_port(&ctx, "1.1.0"), step);
            assert!(!ok, "ADD survived its crash at {step}");
            let gc = with(
                conf_with_port(&ctx, "1.1.0"),
                "cni.dev/valid-attachments",
                json!([]),
            );
            let (ok, out) = plugin_as(CID, "GC", None, &gc, "");
            assert!(ok, "GC after a crash at {step}: {out}");
            let left = leftovers(&ctx, &ns).await;
            assert!(left.is_empty(), "a crash at {step}, then GC, left {left:?}");
        }
    });
}

#[test]
fn sixteen_concurrent_adds_get_sixteen_distinct_addresses() {
    in_netns(|ctx| async move {
        let namespaces: Vec<RuntimeNetns> = (0..16).map(|_| RuntimeNetns::new()).collect();
        let conf = conf(&ctx, "1.0.0");
        let addrs: Vec<String> = std::thread::scope(|s| {
            let runs: Vec<_> = namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let conf = &conf;
                    s.spawn(move || plugin_as(&format!("c{i}"), "ADD", Some(ns), conf, ""))
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    let (ok, out) = r.join().unwrap();
                    assert!(ok, "{out}");
                    out["ips"][0]["address"].as_str().unwrap().to_owned()
                })
                .collect()
        });
        let distinct: std::collections::BTreeSet<&String> = addrs.iter().collect();
        assert_eq!(distinct.len(), 16, "{addrs:?}");
        for (i, ns) in namespaces.iter().enumerate() {
            assert!(plugin_as(&format!("c{i}"), "DEL", Some(ns), &conf, "").0);
        }
    });
}

#[test]
fn status_is_code_50_when_the_store_is_read_only() {
    in_netns(|ctx| async move {
        // The store made once, then the plugin run where its directory is
        // mounted read-only (in a mount namespace of the plugin's own).
        assert!(plugin("STATUS", "eth0", None, &conf(&ctx, "1.1.0")).0);
        let dir = ctx.state.display().to_string();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && exec "$2""#)
            .args(["sh", &dir, env!("CARGO_BIN_EXE_podnet-cni")])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "STATUS")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let out = run(cmd, &conf(&ctx, "1.1.0"));
        assert_eq!(code(&out), 50, "{}", out.1);
    });
}

#[test]
fn each_variable_add_needs_is_code_4_naming_it_when_missing() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        // CNI_PATH is optional for ADD: podnet execs no other plugin.
        for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let mut cmd = cni("ADD", CID, "eth0");
            cmd.env("CNI_NETNS", &ns.path).env_remove(missing);
            let out = run(cmd, &conf(&ctx, "1.0.0"));
            assert!(!out.0, "it succeeded without {missing}: {}", out.1);
            assert_eq!(code(&out), 4, "without {missing}: {}", out.1);
            assert!(
                out.1.to_string().contains(missing),
                "without {missing}: {}",
                out.1
            );
        }
        assert_eq!(ns.interfaces(), 1, "only lo");
    });
}

#[test]
fn a_malformed_variable_is_code_4_naming_it() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        for (var, bad) in [
            ("CNI_COMMAND", "ATTACH"),
            ("CNI_CONTAINERID", "-leading-dash"),
            ("CNI_IFNAME", "name-longer-than-15"),
            ("CNI_ARGS", "IP"),
        ] {
            let mut cmd = cni("ADD", CID, "eth0");
            cmd.env("CNI_NETNS", &ns.path).env(var, bad);
            let out = run(cmd, &conf(&ctx, "1.0.0"));
            assert_eq!(code(&out), 4, "{var}={bad}: {}", out.1);
            assert!(out.1.to_string().contains(var), "{var}={bad}: {}", out.1);
        }
        assert_eq!(ns.interfaces(), 1, "only lo");
    });
}

#[test]
fn a_verb_older_than_the_configurations_version_is_code_1() {
    in_netns(|ctx| async move {
        let prev = json!({"cniVersion": "0.3.1", "interfaces": [], "ips": []});
        let ns = RuntimeNetns::new();
        for (verb, version) in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")] {
            let mut c = with(conf(&ctx, version), "prevResult", prev.clone());
            c = with(c, "cni.dev/valid-attachments", json!([]));
            let out = plugin(verb, "eth0", Some(&ns), &c);
            assert_eq!(code(&out), 1, "{verb} at {version}: {}", out.1);
        }
    });
}

#[test]
fn check_names_a_default_route_deleted_behind_its_back() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let (_, result) = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "0.4.0"));
        assert!(ns.run(&["ip", "route", "del", "default"]).0);
        let check = with(conf(&ctx, "0.4.0"), "prevResult", result);
        let out = plugin("CHECK", "eth0", Some(&ns), &check);
        assert_eq!(code(&out), 107);
        assert!(out.1.to_string().contains("default route"), "{}", out.1);
        plugin("DEL", "eth0", Some(&ns), &conf(&ctx, "0.4.0"));
    });
}

#[test]
fn ip_masq_makes_the_networks_masquerade_and_no_default_gateway_no_default_route() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let mut c = with(conf(&ctx, "1.0.0"), "ipMasq", json!(true));
        c["ipam"]["routes"] = json!([]);
        let (ok, out) = plugin("ADD", "eth0", Some(&ns), &c);
        assert!(ok, "{out}");
        let tables = common::nft(&["list", "tables"]);
        assert!(
            tables.contains(&format!("podnet-{BRIDGE}-egress")),
            "{tables}"
        );
        let (_, routes) = ns.run(&["ip", "-4", "route"]);
        assert!(!routes.contains("default"), "{routes}");
        assert_eq!(out["routes"], Value::Null, "{out}");
        plugin("DEL", "eth0", Some(&ns), &c);
    });
}

#[test]
fn add_refuses_the_plugins_own_namespace() {
    in_netns(|ctx| async move {
        let mut cmd = cni("ADD", CID, "eth9");
        cmd.env("CNI_NETNS", "/proc/self/ns/net");
        let out = run(cmd, &conf(&ctx, "1.0.0"));
        assert_eq!(code(&out), 4, "{}", out.1);
        assert!(out.1.to_string().contains("CNI_NETNS"), "{}", out.1);
        assert!(common::link(&ctx.nl, "eth9").await.is_none());
    });
}

#[test]
fn hairpin_mode_puts_the_host_port_in_hairpin_mode() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let c = with(conf(&ctx, "1.0.0"), "hairpinMode", json!(true));
        let (ok, out) = plugin("ADD", "eth0", Some(&ns), &c);
        assert!(ok, "{out}");
        let host = out["interfaces"][0]["name"].as_str().unwrap().to_owned();
        let details = Command::new("ip")
            .args(["-d", "link", "show", &host])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&details.stdout).contains("hairpin on"));
        plugin("DEL", "eth0", Some(&ns), &c);
    });
}

/// `plugin` for container `cid` with `CNI_ARGS` `args`.
fn plugin_with_args(cid: &str, args: &str, netns: &RuntimeNetns, stdin: &Value) -> (bool, Value) {
    let mut cmd = cni("ADD", cid, "eth0");
    cmd.env("CNI_NETNS", &netns.path).env("CNI_ARGS", args);
    run(cmd, stdin)
}

/// The A records `name` has, asked of `server` from inside `ns`.
fn a_records_in(ns: &RuntimeNetns, server: std::net::IpAddr, name: &str) -> Vec<std::net::IpAddr> {
    let query = common::dns_query(name, hickory_proto::rr::RecordType::A, false);
    ns.inside(|| common::dns_exchange(server, &query, std::time::Duration::from_secs(2)))
        .map(|m| common::dns_addresses(&m))
        .unwrap_or_default()
}

/// Whether a DNS server (`podnet-cni --serve-dns`) runs in the calling
/// thread's network namespace.
fn dns_server_runs() -> bool {
    let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let serves = std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"--serve-dns"));
        serves && std::fs::read_link(e.path().join("ns/net")).is_ok_and(|ns| ns == ours)
    })
}

#[test]
fn with_dns_server_pods_resolve_each_other_by_name_and_alias_until_the_last_del() {
    in_netns(|ctx| async move {
        let mut c = with(conf(&ctx, "1.0.0"), "dnsServer", json!(true));
        c = with(c, "dnsUpstream", json!("none"));
        let (a, b) = (RuntimeNetns::new(), RuntimeNetns::new());
        let (ok, ra) = plugin_with_args("ca", "IgnoreUnknown=1;K8S_POD_NAME=web", &a, &c);
        assert!(ok, "{ra}");
        let with_alias = asking(c.clone(), json!({"aliases": {"podnet-test": ["db"]}}));
        let (ok, rb) = plugin_with_args("cb", "K8S_POD_NAME=Store_1", &b, &with_alias);
        assert!(ok, "{rb}");
        assert_eq!(ra["dns"]["nameservers"], json!(["10.88.0.1"]), "{ra}");
        assert_eq!(ra["dns"]["domain"], "podnet.internal", "{ra}");
        let gw: std::net::IpAddr = "10.88.0.1".parse().unwrap();
        let ip = |r: &Value| -> std::net::IpAddr {
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(a_records_in(&b, gw, "web"), vec![ip(&ra)]);
        assert_eq!(a_records_in(&a, gw, "db.podnet.internal"), vec![ip(&rb)]);
        // "Store_1" is no DNS label: left out, not an error.
        assert!(a_records_in(&a, gw, "store_1").is_empty());
        let del = |cid: &str, ns: &RuntimeNetns| plugin_as(cid, "DEL", Some(ns), &c, "").0;
        assert!(dns_server_runs());
        assert!(del("ca", &a) && del("cb", &b));
        common::eventually(
            "the DNS server exits",
            std::time::Duration::from_secs(10),
            async || !dns_server_runs(),
        )
        .await;
    });
}

#[test]
fn port_mappings_of_the_runtime_reach_the_container_until_del() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let mapped = asking(
            conf(&ctx, "1.0.0"),
            json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}),
        );
        let (ok, out) = plugin("ADD", "eth0", Some(&ns), &mapped);
        assert!(ok, "{out}");
        let served = common::serve_once(ns.listen("0.0.0.0:80"));
        let at = std::net::SocketAddr::from(([10, 88, 0, 1], 18080));
        let mut s = std::net::TcpStream::connect_timeout(&at, std::time::Duration::from_secs(5))
            .expect("the host port reaches the container");
        s.write_all(b"mapped").unwrap();
        drop(s);
        assert_eq!(served.join().unwrap(), "mapped");
        // A second container asking for the same host port: 104, nothing made.
        let other = RuntimeNetns::new();
        let (ok, taken) = plugin_as("other", "ADD", Some(&other), &mapped, "");
        assert!(!ok);
        assert_eq!(taken["code"], 104, "{taken}");
        assert_eq!(other.interfaces(), 1, "only lo");
        assert!(plugin("DEL", "eth0", Some(&ns), &mapped).0);
        assert!(
            std::net::TcpStream::connect_timeout(&at, std::time::Duration::from_secs(2)).is_err(),
            "the port is closed after DEL"
        );
    });
}

#[test]
fn an_sctp_port_mapping_is_code_2() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let sctp = asking(
            conf(&ctx, "1.0.0"),
            json!({"portMappings": [{"hostPort": 9, "containerPort": 9, "protocol": "sctp"}]}),
        );
        let out = plugin("ADD", "eth0", Some(&ns), &sctp);
        assert_eq!(code(&out), 2, "{}", out.1);
        assert_eq!(ns.interfaces(), 1, "only lo");
    });
}

#[test]
fn the_runtimes_dns_capability_is_the_results_dns() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let mut c = with(
            conf(&ctx, "1.0.0"),
            "dns",
            json!({"nameservers": ["10.88.0.53"]}),
        );
        c = asking(
            c,
            json!({"dns": {"servers": ["10.88.0.54"], "searches": ["example.test"]}}),
        );
        let (ok, out) = plugin("ADD", "eth0", Some(&ns), &c);
        assert!(ok, "{out}");
        assert_eq!(out["dns"]["nameservers"], json!(["10.88.0.54"]), "{out}");
        assert_eq!(out["dns"]["search"], json!(["example.test"]), "{out}");
        plugin("DEL", "eth0", Some(&ns), &c);
    });
}

#[test]
fn an_add_that_waits_past_its_deadline_for_the_store_is_code_11_and_makes_nothing() {
    in_netns(|ctx| async move {
        // The store made, then its lock held as another process would.
        assert!(plugin("STATUS", "eth0", None, &conf(&ctx, "1.1.0")).0);
        let lock = common::store_dir(&ctx).join("lock");
        let file = std::fs::File::open(&lock).unwrap();
        let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let ns = RuntimeNetns::new();
        let mut cmd = cni("ADD", CID, "eth0");
        cmd.env("CNI_NETNS", &ns.path)
            .env("PODNET_CNI_TIMEOUT", "0.5");
        let out = run(cmd, &conf(&ctx, "1.0.0"));
        assert_eq!(code(&out), 11, "{}", out.1);
        drop(held);
        assert_eq!(ns.interfaces(), 1, "only lo");
        assert!(common::state_entries(&ctx, &["addr", "sandbox"]).is_empty());
    });
}

#[test]
fn status_is_code_51_when_a_container_lost_its_wiring() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let (ok, out) = plugin("ADD", "eth0", Some(&ns), &conf(&ctx, "1.1.0"));
        assert!(ok, "{out}");
        assert!(plugin("STATUS", "eth0", None, &conf(&ctx, "1.1.0")).0);
        let host = out["interfaces"][0]["name"].as_str().unwrap().to_owned();
        let unplugged = Command::new("ip")
            .args(["link", "set", &host, "nomaster"])
            .status()
            .unwrap();
        assert!(unplugged.success());
        let status = plugin("STATUS", "eth0", None, &conf(&ctx, "1.1.0"));
        assert_eq!(code(&status), 51, "{}", status.1);
        assert!(status.1.to_string().contains(&host), "{}", status.1);
        plugin("DEL", "eth0", Some(&ns), &conf(&ctx, "1.1.0"));
    });
}
