//! Attachments of namespaces another program holds (what CNI's ADD, DEL,
//! CHECK and GC stand on): each test's namespace plays the host
//! (`common::in_netns`); a `sleep` in a namespace of its own plays the
//! runtime's pause container (`common::RuntimeNetns`), named by path.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{in_netns, Ctx, RuntimeNetns};
use podnet::{Attachment, Error, Network, PortMapping, Protocol};

const BRIDGE: &str = "pna0";
const CID: &str = "0123456789abcdef0123456789abcdef";

/// The test's network (no DNS) on `subnets`, its state in `state`.
async fn network_at(state: &Path, subnets: &[&str]) -> Network {
    common::network_builder(state, BRIDGE, subnets)
        .dns(false)
        .build()
        .await
        .unwrap()
}

/// The test's network on [`common::SUBNET`].
async fn network(ctx: &Ctx) -> Network {
    network_at(&ctx.state, &[common::SUBNET]).await
}

/// The test's network on [`common::SUBNET`] and `fd00:88::/64`.
async fn dual_stack_network(ctx: &Ctx) -> Network {
    network_at(&ctx.state, &[common::SUBNET, "fd00:88::/64"]).await
}

/// Attach `ns` as (`cid`, `eth0`) with the one mapping `port`.
async fn attach_mapping(
    net: &Network,
    cid: &str,
    ns: &RuntimeNetns,
    port: PortMapping,
) -> Attachment {
    net.attach(cid, "eth0", &ns.path)
        .port(port)
        .attach()
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

/// The network's table of attachments' port mappings.
const TABLE: &str = "podnet-pna0-aports";

/// The comments of the rules in [`TABLE`] in the test's namespace, or
/// `None` if there is no such table.
fn port_rules() -> Option<Vec<String>> {
    podnet::internals::podnet_tables()
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == TABLE)
        .map(|(_, rules)| rules)
}

/// Send `msg` from the test's namespace to host port `port` at the
/// gateway (an address of the host namespace); whether it connected.
fn send_to_host_port(port: u16, msg: &str) -> bool {
    send_to(SocketAddr::from(([10, 88, 0, 1], port)), msg)
}

/// Send `msg` from the test's namespace to `at`; whether it connected.
fn send_to(at: SocketAddr, msg: &str) -> bool {
    match TcpStream::connect_timeout(&at, Duration::from_secs(5)) {
        Ok(mut s) => {
            s.write_all(msg.as_bytes()).unwrap();
            true
        }
        Err(_) => false,
    }
}

/// The bridge's `route_localnet` in the test's namespace.
const ROUTE_LOCALNET: &str = "net/ipv4/conf/pna0/route_localnet";

/// Send `msg` from the test's namespace to `127.0.0.1:port`; whether it
/// connected.
fn send_to_loopback(port: u16, msg: &str) -> bool {
    send_to(SocketAddr::from(([127, 0, 0, 1], port)), msg)
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
        let (ok, out) = ns.ping(pod.ipv4().unwrap());
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
        assert_eq!(ns.interfaces(), 1, "only lo inside");
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

#[test]
fn a_mapped_host_port_reaches_a_server_in_the_attached_namespace() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let att = attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        assert_eq!(att.ports, vec![PortMapping::tcp(8080, 80)]);
        let served = common::serve_once(ns.listen("0.0.0.0:80"));
        assert!(send_to_host_port(8080, "through the rule"));
        assert_eq!(served.join().unwrap(), "through the rule");
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_mapping_on_the_unspecified_ipv6_address_serves_both_families() {
    in_netns(|ctx| async move {
        let net = dual_stack_network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(
            &net,
            CID,
            &ns,
            PortMapping::tcp(8080, 80).host_ip("::".parse().unwrap()),
        )
        .await;
        // `[::]:80` inside takes both families.
        let listener = ns.listen("[::]:80");
        for (at, msg) in [("10.88.0.1:8080", "v4"), ("[fd00:88::1]:8080", "v6")] {
            let served = common::serve_once(listener.try_clone().unwrap());
            assert!(send_to(at.parse().unwrap(), msg), "{at}");
            assert_eq!(served.join().unwrap(), msg, "{at}");
        }
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_mapping_on_the_unspecified_address_is_reached_at_127_0_0_1() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        let served = common::serve_once(ns.listen("0.0.0.0:80"));
        assert!(send_to_loopback(8080, "from loopback"));
        assert_eq!(served.join().unwrap(), "from loopback");
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_mapping_on_127_0_0_1_is_reached_there_and_not_at_the_gateway() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let lo = PortMapping::tcp(8080, 80).host_ip("127.0.0.1".parse().unwrap());
        let att = attach_mapping(&net, CID, &ns, lo.clone()).await;
        assert_eq!(att.ports, vec![lo]);
        let listener = ns.listen("0.0.0.0:80");
        let served = common::serve_once(listener.try_clone().unwrap());
        assert!(send_to_loopback(8080, "at 127.0.0.1"));
        assert_eq!(served.join().unwrap(), "at 127.0.0.1");
        assert!(!send_to_host_port(8080, "at the gateway"));
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn route_localnet_is_on_the_bridge_while_a_loopback_mapping_needs_it_only() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "0");
        attach_mapping(
            &net,
            CID,
            &ns,
            PortMapping::tcp(8080, 80).host_ip("10.88.0.1".parse().unwrap()),
        )
        .await;
        assert_eq!(
            common::sysctl(ROUTE_LOCALNET),
            "0",
            "not served at loopback"
        );
        let ns2 = RuntimeNetns::new();
        net.attach(CID, "eth1", &ns2.path)
            .port(PortMapping::tcp(8081, 80))
            .attach()
            .await
            .unwrap();
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "1");
        net.detach(CID, "eth1").await.unwrap();
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "0", "turned back off");
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn route_localnet_that_was_on_before_is_left_on() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        common::set_sysctl(ROUTE_LOCALNET, "1");
        let ns = RuntimeNetns::new();
        attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        net.detach(CID, "eth0").await.unwrap();
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "1");
        common::set_sysctl(ROUTE_LOCALNET, "0");
        net.remove().await.unwrap();
    });
}

#[test]
fn a_pod_cannot_reach_the_hosts_loopback_while_route_localnet_is_on() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "1");
        // A service of the host's loopback only.
        let _service = std::net::TcpListener::bind("127.0.0.2:9999").unwrap();
        // The pod sends to 127.0.0.2 via its gateway, as a hostile one may
        // (its own `lo` takes 127.0.0.0/8 but 127.0.0.1 otherwise).
        for cmd in [
            "ip route del local 127.0.0.0/8 dev lo table local",
            "ip route add 127.0.0.2/32 via 10.88.0.1 dev eth0",
        ] {
            let argv: Vec<&str> = cmd.split(' ').collect();
            assert!(ns.run(&argv).0, "{cmd}");
        }
        ns.inside(|| common::set_sysctl("net/ipv4/conf/eth0/route_localnet", "1"));
        let reached = ns.inside(|| {
            let at = SocketAddr::from(([127, 0, 0, 2], 9999));
            TcpStream::connect_timeout(&at, Duration::from_secs(2)).is_ok()
        });
        assert!(!reached, "the guard drops it");
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn detach_deletes_the_loopback_rules_and_127_0_0_1_is_not_served_after() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(
            &net,
            CID,
            &ns,
            PortMapping::tcp(8080, 80).host_ip("127.0.0.1".parse().unwrap()),
        )
        .await;
        let _listener = ns.listen("0.0.0.0:80");
        assert!(net.detach(CID, "eth0").await.unwrap());
        assert_eq!(port_rules(), Some(vec![]));
        assert!(!send_to_loopback(8080, "no rule"));
        net.remove().await.unwrap();
    });
}

#[test]
fn a_mapping_on_ipv6_loopback_is_refused_with_nothing_made() {
    in_netns(|ctx| async move {
        let net = dual_stack_network(&ctx).await;
        let ns = RuntimeNetns::new();
        let err = net
            .attach(CID, "eth0", &ns.path)
            .port(PortMapping::tcp(8080, 80).host_ip("::1".parse().unwrap()))
            .attach()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        assert!(err.to_string().contains("never routes ::1"), "{err}");
        assert!(common::state_entries(&ctx, &["sandbox", "addr"]).is_empty());
        assert_eq!(port_rules(), None);
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "0");
        net.remove().await.unwrap();
    });
}

#[test]
fn a_mapping_outlives_the_process_that_attached() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let mut child = common::child_command(&ctx, &format!("attach-port {}", ns.path.display()))
            .spawn()
            .unwrap();
        assert!(child.wait().unwrap().success());
        let served = common::serve_once(ns.listen("0.0.0.0:80"));
        assert!(send_to_host_port(8080, "after the exit"));
        assert_eq!(served.join().unwrap(), "after the exit");
        let net = network(&ctx).await;
        assert_eq!(
            net.attachments().unwrap()[0].ports,
            vec![PortMapping::tcp(8080, 80)]
        );
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_host_port_another_attachment_maps_is_in_use_and_nothing_is_made() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let (a, b) = (RuntimeNetns::new(), RuntimeNetns::new());
        attach_mapping(&net, "a", &a, PortMapping::tcp(8080, 80)).await;
        let rules = port_rules().unwrap();
        let stored = common::state_entries(&ctx, &["sandbox", "addr"]);
        // A range that meets 8080, on an address 0.0.0.0 covers.
        let err = net
            .attach("b", "eth0", &b.path)
            .port(
                PortMapping::range(Protocol::Tcp, 8079..=8081, 79..=81)
                    .host_ip("10.88.0.1".parse().unwrap()),
            )
            .attach()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err}");
        assert_eq!(port_rules().unwrap(), rules);
        assert_eq!(common::state_entries(&ctx, &["sandbox", "addr"]), stored);
        assert_eq!(b.interfaces(), 1, "only lo");
        net.detach("a", "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn of_two_attaches_of_one_host_port_at_once_exactly_one_gets_it() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let (a, b) = (RuntimeNetns::new(), RuntimeNetns::new());
        let (ra, rb) = tokio::join!(
            net.attach("a", "eth0", &a.path)
                .port(PortMapping::tcp(8080, 80))
                .attach(),
            net.attach("b", "eth0", &b.path)
                .port(PortMapping::tcp(8080, 81))
                .attach(),
        );
        let won: Vec<&str> = [("a", &ra), ("b", &rb)]
            .into_iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(won.len(), 1, "{ra:?} {rb:?}");
        let lost = if won[0] == "a" { &rb } else { &ra };
        assert!(matches!(lost, Err(Error::PortInUse { .. })), "{lost:?}");
        net.detach(won[0], "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_host_port_a_sandbox_maps_is_in_use_for_an_attachment() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net
            .sandbox("web")
            .port(PortMapping::tcp(8080, 80))
            .create()
            .await
            .unwrap();
        let ns = RuntimeNetns::new();
        let err = net
            .attach(CID, "eth0", &ns.path)
            .port(PortMapping::tcp(8080, 80))
            .attach()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err}");
        assert!(net.attachments().unwrap().is_empty());
        assert_eq!(port_rules(), None);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_sandbox_cannot_map_a_host_port_an_attachment_maps() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        let err = net
            .sandbox("web")
            .port(PortMapping::tcp(8080, 81))
            .create()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err}");
        assert_eq!(net.sandboxes().await.unwrap().len(), 1, "the attachment");
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn mappings_that_need_a_socket_are_refused_before_anything_is_made() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        for m in [
            PortMapping::tcp(8080, 80).real_host(),
            PortMapping::tcp(0, 80),
            PortMapping::tcp(8080, 80).host_ip("fd00:88::1".parse().unwrap()),
        ] {
            let err = net
                .attach(CID, "eth0", &ns.path)
                .port(m.clone())
                .attach()
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }), "{m}: {err}");
        }
        assert!(common::state_entries(&ctx, &["sandbox", "addr"]).is_empty());
        assert_eq!(port_rules(), None);
        net.remove().await.unwrap();
    });
}

#[test]
fn detach_deletes_the_rules_and_the_port_is_refused_after() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        let _listener = ns.listen("0.0.0.0:80");
        assert!(net.detach(CID, "eth0").await.unwrap());
        assert_eq!(port_rules(), Some(vec![]));
        assert!(!send_to_host_port(8080, "no rule"));
        net.remove().await.unwrap();
    });
}

#[test]
fn remove_deletes_the_table_of_attachments_mappings() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(&net, CID, &ns, PortMapping::udp(5353, 53)).await;
        net.detach(CID, "eth0").await.unwrap();
        assert!(common::nft(&["list", "ruleset"]).contains(TABLE));
        net.remove().await.unwrap();
        let left = common::nft(&["list", "ruleset"]);
        assert!(!left.contains("table"), "{left}");
    });
}

#[test]
fn gc_deletes_the_rules_of_an_attachment_whose_namespace_died() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let mut ns = RuntimeNetns::new();
        let att = attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        let rules = port_rules().unwrap();
        assert!(!rules.is_empty());
        ns.end();
        common::eventually("the host end goes", Duration::from_secs(10), async || {
            common::link(&ctx.nl, &att.host_interface).await.is_none()
        })
        .await;
        let report = net.gc().await.unwrap();
        assert_eq!(report.port_rules, rules, "{report:?}");
        assert!(report.port_table, "{report:?}");
        assert_eq!(port_rules(), None);
        net.remove().await.unwrap();
    });
}

#[test]
fn an_attach_killed_after_its_rules_leaves_only_what_gc_takes_away() {
    in_netns(|ctx| async move {
        let ns = RuntimeNetns::new();
        let status = common::child_command(&ctx, &format!("attach-port {}", ns.path.display()))
            .env("PODNET_FAILPOINT", "attach-port-rules")
            .status()
            .unwrap();
        assert!(!status.success(), "killed at the failpoint");
        // A guard and a DNAT in prerouting, a DNAT in output, and
        // masquerades of pod-subnet and loopback clients in postrouting.
        assert_eq!(
            port_rules().map(|r| r.len()),
            Some(5),
            "the rules of one port"
        );
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "1");
        let net = network(&ctx).await;
        let report = net.gc().await.unwrap();
        assert_eq!(report.port_rules.len(), 5, "{report:?}");
        assert_eq!(common::sysctl(ROUTE_LOCALNET), "0", "gc turned it back off");
        assert!(report.port_table, "{report:?}");
        assert_eq!(report.addresses.len(), 1, "{report:?}");
        assert_eq!(port_rules(), None);
        assert!(common::state_entries(&ctx, &["sandbox", "addr"]).is_empty());
        assert_eq!(ns.interfaces(), 1, "only lo");
        net.remove().await.unwrap();
    });
}

#[test]
fn retain_deletes_the_rules_of_the_attachments_it_ends_only() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let (a, b) = (RuntimeNetns::new(), RuntimeNetns::new());
        attach_mapping(&net, "a", &a, PortMapping::tcp(8080, 80)).await;
        let kept = port_rules().unwrap();
        attach_mapping(&net, "b", &b, PortMapping::udp(5353, 53)).await;
        net.retain_attachments(&[("a".into(), "eth0".into())])
            .await
            .unwrap();
        assert_eq!(port_rules().unwrap(), kept);
        net.check_attachment("a", "eth0").await.unwrap();
        net.detach("a", "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn check_names_a_port_rule_deleted_behind_its_back() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        attach_mapping(&net, CID, &ns, PortMapping::tcp(8080, 80)).await;
        net.check_attachment(CID, "eth0").await.unwrap();
        common::nft(&["flush", "chain", "inet", TABLE, "output"]);
        let err = net.check_attachment(CID, "eth0").await.unwrap_err();
        let Error::Broken { missing, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(missing.len(), 1, "{err}");
        assert!(
            missing[0].contains("chain output") && missing[0].contains("0.0.0.0:8080"),
            "{err}"
        );
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}

/// The other side of `child_command`: `attach PATH` attaches `PATH` as
/// (CID, eth0) and exits; `attach-port PATH` does so with TCP host port
/// 8080 mapped to its port 80.
#[test]
#[ignore]
fn child_process() {
    common::child_main(|state, action| async move {
        let (path, ports) = match action.split_once(' ') {
            Some(("attach", path)) => (path.to_owned(), vec![]),
            Some(("attach-port", path)) => (path.to_owned(), vec![PortMapping::tcp(8080, 80)]),
            _ => panic!("unknown action {action:?}"),
        };
        let net = network_at(&state, &[common::SUBNET]).await;
        ports
            .into_iter()
            .fold(net.attach(CID, "eth0", path), |b, m| b.port(m))
            .attach()
            .await
            .unwrap();
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

#[test]
fn an_attachments_store_name_opens_no_sandbox() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let ns = RuntimeNetns::new();
        let att = net.attach(CID, "eth0", &ns.path).attach().await.unwrap();
        let name = att.host_interface.split('-').next().unwrap().to_owned();
        let err = net.open_sandbox(&name).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotFound {
                    what: "sandbox",
                    ..
                }
            ),
            "{err}"
        );
        net.detach(CID, "eth0").await.unwrap();
        net.remove().await.unwrap();
    });
}
