//! Attachments of namespaces another program holds (what CNI's ADD, DEL,
//! CHECK and GC stand on): each test's namespace plays the host
//! (`common::in_netns`); a `sleep` in a namespace of its own plays the
//! runtime's pause container (`common::RuntimeNetns`), named by path.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::net::IpAddr;

use common::{in_netns, Ctx, RuntimeNetns};
use podnet::{Error, Network};

const BRIDGE: &str = "pna0";
const CID: &str = "0123456789abcdef0123456789abcdef";

async fn network(ctx: &Ctx) -> Network {
    common::network_builder(&ctx.state, BRIDGE, &[common::SUBNET])
        .dns(false)
        .build()
        .await
        .unwrap()
}

/// The IPv4 addresses on `ifname` inside `ns`.
fn addresses_inside(ns: &RuntimeNetns, ifname: &str) -> Vec<IpAddr> {
    let (ok, out) = ns.run(&["ip", "-o", "-4", "addr", "show", "dev", ifname]);
    if !ok {
        return Vec::new();
    }
    out.lines()
        .filter_map(|l| {
            let cidr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            cidr.split('/').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn an_attachment_gets_the_asked_interface_with_an_address_of_the_pool() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let att = net.attach(CID, "net1", &ns.path).attach().await.unwrap();
        assert_eq!(att.ifname, "net1");
        assert_eq!(att.addresses.len(), 1);
        let ip = att.addresses[0].ip();
        assert!(common::SUBNET
            .parse::<ipnetwork::IpNetwork>()
            .unwrap()
            .contains(ip));
        assert_eq!(addresses_inside(&ns, "net1"), vec![ip]);
        let (_, route) = ns.run(&["ip", "-4", "route", "show", "default"]);
        assert!(route.contains("via 10.88.0.1 dev net1"), "{route}");
        assert!(net.detach(CID, "net1").await.unwrap());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_sandbox_and_an_attachment_share_one_pool_and_reach_each_other() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let ns = RuntimeNetns::new();
        let att = net.attach(CID, "eth0", &ns.path).attach().await.unwrap();
        let ip = att.addresses[0].ip();
        assert_ne!(Some(ip), pod.ipv4().map(IpAddr::V4));
        let (ok, out) = ns.run(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &pod.ipv4().unwrap().to_string(),
        ]);
        assert!(ok, "ping from the attachment to the sandbox: {out}");
        pod.remove().await.unwrap();
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn attaching_an_interface_name_the_namespace_has_fails_and_changes_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let err = net.attach(CID, "lo", &ns.path).attach().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::AlreadyExists {
                    what: "interface",
                    ..
                }
            ),
            "{err}"
        );
        assert!(net.attachments().unwrap().is_empty());
        assert!(common::state_entries(&ctx, &["sandbox", "addr"]).is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn attaching_the_same_key_twice_fails_and_keeps_the_first() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let first = net.attach(CID, "eth0", &ns.path).attach().await.unwrap();
        let other = RuntimeNetns::new();
        let err = net
            .attach(CID, "eth0", &other.path)
            .attach()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::AlreadyExists {
                    what: "attachment",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            net.check_attachment(CID, "eth0").await.unwrap().addresses,
            first.addresses
        );
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let bad = [
            net.attach("", "eth0", &ns.path).attach().await.unwrap_err(),
            net.attach("-x", "eth0", &ns.path)
                .attach()
                .await
                .unwrap_err(),
            net.attach(CID, "a/b", &ns.path).attach().await.unwrap_err(),
            net.attach(CID, "eth0", "relative/path")
                .attach()
                .await
                .unwrap_err(),
            net.attach(CID, "eth0", "/nonexistent/netns")
                .attach()
                .await
                .unwrap_err(),
            net.attach(CID, "eth0", &ns.path)
                .mac([1, 0, 0, 0, 0, 1])
                .attach()
                .await
                .unwrap_err(),
            net.attach(CID, "eth0", &ns.path)
                .ip("10.99.0.2".parse().unwrap())
                .attach()
                .await
                .unwrap_err(),
        ];
        assert!(matches!(bad[0], Error::InvalidName { .. }), "{}", bad[0]);
        assert!(matches!(bad[1], Error::InvalidName { .. }), "{}", bad[1]);
        assert!(matches!(bad[2], Error::InvalidName { .. }), "{}", bad[2]);
        assert!(matches!(bad[3], Error::InvalidConfig { .. }), "{}", bad[3]);
        assert!(matches!(bad[4], Error::NotFound { .. }), "{}", bad[4]);
        assert!(matches!(bad[5], Error::InvalidConfig { .. }), "{}", bad[5]);
        assert!(
            matches!(bad[6], Error::AddressNotInPool { .. }),
            "{}",
            bad[6]
        );
        assert!(common::state_entries(&ctx, &["sandbox", "addr"]).is_empty());
        assert_eq!(
            ns.run(&["ip", "-o", "link"]).1.lines().count(),
            1,
            "only lo inside"
        );
        net.remove().await.unwrap();
    });
}

#[test]
fn a_static_address_and_mac_are_given_as_asked() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let mac = [0x02, 0x42, 0x0a, 0x58, 0, 0x09];
        let att = net
            .attach(CID, "eth0", &ns.path)
            .ip("10.88.0.9".parse().unwrap())
            .mac(mac)
            .attach()
            .await
            .unwrap();
        assert_eq!(att.addresses[0].to_string(), "10.88.0.9/16");
        assert_eq!(att.mac, Some(mac));
        let (_, link) = ns.run(&["ip", "-o", "link", "show", "eth0"]);
        assert!(link.contains("02:42:0a:58:00:09"), "{link}");
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn without_default_routes_only_the_pool_is_routed() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        net.attach(CID, "eth0", &ns.path)
            .default_routes(false)
            .attach()
            .await
            .unwrap();
        let (_, routes) = ns.run(&["ip", "-4", "route"]);
        assert!(!routes.contains("default"), "{routes}");
        assert!(routes.contains("10.88.0.0/16 dev eth0"), "{routes}");
        net.check_attachment(CID, "eth0").await.unwrap();
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn detach_releases_the_address_and_a_second_detach_succeeds() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let ip = net
            .attach(CID, "eth0", &ns.path)
            .attach()
            .await
            .unwrap()
            .addresses[0]
            .ip();
        assert!(net.detach(CID, "eth0").await.unwrap());
        assert!(!net.detach(CID, "eth0").await.unwrap());
        assert!(addresses_inside(&ns, "eth0").is_empty());
        assert!(common::state_entries(&ctx, &["sandbox", "addr"]).is_empty());
        // The address is free again: asked for, it is given.
        let again = RuntimeNetns::new();
        net.attach("other", "eth0", &again.path)
            .ip(ip)
            .attach()
            .await
            .unwrap();
        net.detach("other", "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn detach_after_the_namespace_is_gone_releases_the_address() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let mut ns = RuntimeNetns::new();
        net.attach(CID, "eth0", &ns.path).attach().await.unwrap();
        ns.end();
        assert!(net.detach(CID, "eth0").await.unwrap());
        assert!(common::state_entries(&ctx, &["sandbox", "addr"]).is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_keeps_an_attachment_while_its_namespace_lives_and_reclaims_it_after() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let mut ns = RuntimeNetns::new();
        let att = net.attach(CID, "eth0", &ns.path).attach().await.unwrap();
        let report = net.gc().await.unwrap();
        assert!(report.is_empty(), "{report:?}");
        net.check_attachment(CID, "eth0").await.unwrap();
        ns.end();
        // The kernel deletes the veth with the namespace, in its own time.
        common::eventually(
            "the host end goes",
            std::time::Duration::from_secs(10),
            async || common::link(&ctx.nl, &att.host_interface).await.is_none(),
        )
        .await;
        let report = net.gc().await.unwrap();
        assert_eq!(report.addresses, vec![att.addresses[0].ip()], "{report:?}");
        assert!(net.attachments().unwrap().is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn check_names_an_address_that_was_taken_away() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let att = net.attach(CID, "eth0", &ns.path).attach().await.unwrap();
        let cidr = att.addresses[0].to_string();
        assert!(ns.run(&["ip", "addr", "del", &cidr, "dev", "eth0"]).0);
        let err = net.check_attachment(CID, "eth0").await.unwrap_err();
        let Error::Broken { missing, .. } = &err else {
            panic!("{err}");
        };
        assert!(missing.iter().any(|m| m.contains(&cidr)), "{err}");
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn check_names_an_interface_that_was_deleted() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        net.attach(CID, "eth0", &ns.path).attach().await.unwrap();
        assert!(ns.run(&["ip", "link", "del", "eth0"]).0);
        let err = net.check_attachment(CID, "eth0").await.unwrap_err();
        assert!(err.to_string().contains("interface eth0"), "{err}");
        assert!(net.detach(CID, "eth0").await.unwrap());
        net.remove().await.unwrap();
    });
}

#[test]
fn check_of_an_unknown_key_is_not_found() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let err = net.check_attachment(CID, "eth0").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotFound {
                    what: "attachment",
                    ..
                }
            ),
            "{err}"
        );
        net.remove().await.unwrap();
    });
}

#[test]
fn retain_ends_the_attachments_not_kept_and_no_sandbox() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let (a, b) = (RuntimeNetns::new(), RuntimeNetns::new());
        net.attach("a", "eth0", &a.path).attach().await.unwrap();
        net.attach("b", "eth0", &b.path).attach().await.unwrap();
        let ended = net
            .retain_attachments(&[("a".into(), "eth0".into())])
            .await
            .unwrap();
        assert_eq!(ended, vec![("b".to_owned(), "eth0".to_owned())]);
        let left: Vec<String> = net
            .attachments()
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        assert_eq!(left, vec!["a"]);
        assert!(addresses_inside(&b, "eth0").is_empty());
        assert_eq!(net.sandboxes().await.unwrap().len(), 2, "the sandbox and a");
        pod.remove().await.unwrap();
        net.detach("a", "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn an_attachment_made_by_a_process_that_exited_is_kept_by_gc() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let mut child = common::child_command(&ctx, &format!("attach {}", ns.path.display()))
            .spawn()
            .unwrap();
        assert!(child.wait().unwrap().success());
        let net = network(&ctx).await;
        assert!(net.gc().await.unwrap().is_empty());
        assert_eq!(net.attachments().unwrap().len(), 1);
        net.check_attachment(CID, "eth0").await.unwrap();
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

/// The other side of `child_command`: `attach PATH` attaches `PATH` as
/// (CID, eth0) and exits.
#[test]
#[ignore]
fn child_process() {
    common::child_main(|state, action| async move {
        let Some(path) = action.strip_prefix("attach ") else {
            panic!("unknown action {action:?}");
        };
        let net = common::network_builder(&state, BRIDGE, &[common::SUBNET])
            .dns(false)
            .build()
            .await
            .unwrap();
        net.attach(CID, "eth0", path).attach().await.unwrap();
    });
}

/// `ip -d link show NAME` in the test's namespace.
fn ip_details(name: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hairpin_mode_is_on_for_the_host_port_only_when_asked() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let (a, b) = (RuntimeNetns::new(), RuntimeNetns::new());
        let on = net
            .attach("a", "eth0", &a.path)
            .hairpin(true)
            .attach()
            .await
            .unwrap();
        let off = net.attach("b", "eth0", &b.path).attach().await.unwrap();
        assert!(ip_details(&on.host_interface).contains("hairpin on"));
        assert!(ip_details(&off.host_interface).contains("hairpin off"));
        net.detach("a", "eth0").await.unwrap();
        net.detach("b", "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn an_attachment_resolves_by_its_aliases_and_not_by_its_record_name() {
    in_netns(|ctx| async move {
        let net = common::network_builder(&ctx.state, BRIDGE, &[common::SUBNET])
            .build()
            .await
            .unwrap();
        let ns = RuntimeNetns::new();
        let att = net
            .attach(CID, "eth0", &ns.path)
            .alias("db")
            .attach()
            .await
            .unwrap();
        let ip = att.addresses[0].ip();
        common::eventually(
            "db resolves",
            std::time::Duration::from_secs(5),
            async || net.resolve("db").is_ok_and(|a| a == vec![ip]),
        )
        .await;
        let record_name = att.host_interface.split('-').next().unwrap().to_owned();
        assert!(net.resolve(&record_name).is_err(), "{record_name}");
        net.detach(CID, "eth0").await.unwrap();
        common::eventually(
            "db is gone",
            std::time::Duration::from_secs(5),
            async || net.resolve("db").is_err(),
        )
        .await;
        net.remove().await.unwrap();
    });
}
