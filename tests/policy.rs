//! Network policy with Kubernetes' semantics, probed as Kubernetes' own
//! network-policy e2e tests do: 9 pods (`ns` x, y, z by `pod` a, b, c),
//! TCP and UDP on ports 80 and 81, and for each policy the whole matrix of
//! who reaches whom, with real connections, compared with the expected
//! one. In namespaces the tests make.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use common::cluster::{self, Pod};
use std::time::Duration;

use common::{in_netns, Ctx};
use podnet::{
    Error, IpBlock, Labels, Network, Policy, Port, Protocol, Requirement, Rule, Selector,
};

const BRIDGE: &str = "pnp0";

async fn network(ctx: &Ctx) -> Network {
    common::network_without_dns(ctx, BRIDGE).await
}

fn sel(key: &str, value: &str) -> Selector {
    Selector::everything().label(key, value).unwrap()
}

/// The cluster, `policies` applied, the matrix checked against `expect`,
/// and everything removed.
fn check(
    policies: Vec<Policy>,
    expect: impl Fn(&Pod, &Pod, Protocol, u16) -> bool + Send + 'static,
) {
    in_netns(move |ctx| async move {
        let net = network(&ctx).await;
        let pods = cluster::start(&net).await;
        for p in &policies {
            net.apply_policy(p).await.unwrap();
        }
        cluster::assert_matrix(&pods, expect).await;
        cluster::stop(&net, pods).await;
    });
}

#[test]
fn without_a_policy_every_pod_reaches_every_pod() {
    check(vec![], |_, _, _, _| true);
}

#[test]
fn deny_all_ingress_cuts_every_pod_off() {
    check(
        vec![Policy::new("deny-all", Selector::everything()).unwrap()],
        |_, _, _, _| false,
    );
}

#[test]
fn a_policy_allowing_one_group_lets_only_that_group_in() {
    let p = Policy::new("x-from-x", sel("ns", "x"))
        .unwrap()
        .ingress(Rule::new().pods(sel("ns", "x")));
    check(vec![p], |from, to, _, _| {
        to.group != "x" || from.group == "x"
    });
}

#[test]
fn a_policy_allowing_one_port_lets_only_that_port_in() {
    let p = Policy::new("tcp-80", Selector::everything())
        .unwrap()
        .ingress(Rule::new().port(Port::tcp(80).unwrap()));
    check(vec![p], |_, _, proto, port| {
        proto == Protocol::Tcp && port == 80
    });
}

#[test]
fn a_port_range_allows_each_port_in_it_of_its_protocol_only() {
    let p = Policy::new("udp-80-81", sel("ns", "y"))
        .unwrap()
        .ingress(Rule::new().port(Port::range(Protocol::Udp, 80, 81).unwrap()));
    check(vec![p], |_, to, proto, _| {
        to.group != "y" || proto == Protocol::Udp
    });
}

#[test]
fn an_ip_block_with_an_except_lets_the_block_in_but_the_except() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pods = cluster::start(&net).await;
        // x/b's address is left out of the pool's block.
        let xb = pods.iter().find(|p| p.id() == "x/b").unwrap().ip;
        let block = IpBlock::parse(common::SUBNET)
            .unwrap()
            .except(&format!("{xb}/32"))
            .unwrap();
        let p = Policy::new("a-from-block", sel("pod", "a"))
            .unwrap()
            .ingress(Rule::new().block(block));
        net.apply_policy(&p).await.unwrap();
        cluster::assert_matrix(&pods, |from, to, _, _| to.pod != "a" || from.id() != "x/b").await;
        cluster::stop(&net, pods).await;
    });
}

#[test]
fn an_egress_deny_keeps_a_group_from_reaching_anyone() {
    let p = Policy::new("y-no-egress", sel("ns", "y"))
        .unwrap()
        .without_ingress()
        .isolate_egress();
    check(vec![p], |from, _, _, _| from.group != "y");
}

#[test]
fn an_egress_rule_lets_out_only_its_port() {
    let p = Policy::new("x-out-udp-81", sel("ns", "x"))
        .unwrap()
        .without_ingress()
        .egress(Rule::new().port(Port::udp(81).unwrap()));
    check(vec![p], |from, _, proto, port| {
        from.group != "x" || (proto == Protocol::Udp && port == 81)
    });
}

#[test]
fn two_policies_on_one_pod_add_up() {
    let from_x = Policy::new("z-from-x", sel("ns", "z"))
        .unwrap()
        .ingress(Rule::new().pods(sel("ns", "x")));
    let from_y = Policy::new("z-from-y", sel("ns", "z"))
        .unwrap()
        .ingress(Rule::new().pods(sel("ns", "y")));
    check(vec![from_x, from_y], |from, to, _, _| {
        to.group != "z" || from.group != "z"
    });
}

#[test]
fn egress_and_ingress_must_both_allow() {
    // x may only send to TCP 80; z takes only from x.
    let x_out = Policy::new("x-out-tcp-80", sel("ns", "x"))
        .unwrap()
        .without_ingress()
        .egress(Rule::new().port(Port::tcp(80).unwrap()));
    let z_in = Policy::new("z-from-x", sel("ns", "z"))
        .unwrap()
        .ingress(Rule::new().pods(sel("ns", "x")));
    check(vec![x_out, z_in], |from, to, proto, port| {
        let out = from.group != "x" || (proto == Protocol::Tcp && port == 80);
        let inn = to.group != "z" || from.group == "x";
        out && inn
    });
}

#[test]
fn match_expressions_select_with_their_operators() {
    // Every pod not in x takes only from pods a and b.
    let not_x = Selector::everything()
        .require(Requirement::NotIn {
            key: "ns".into(),
            values: vec!["x".into()],
        })
        .unwrap();
    let a_or_b = Selector::everything()
        .require(Requirement::In {
            key: "pod".into(),
            values: vec!["a".into(), "b".into()],
        })
        .unwrap();
    let p = Policy::new("not-x-from-ab", not_x)
        .unwrap()
        .ingress(Rule::new().pods(a_or_b));
    check(vec![p], |from, to, _, _| to.group == "x" || from.pod != "c");
}

#[test]
fn a_rule_takes_its_peers_and_its_ports_together() {
    // From group y, on TCP 81 only.
    let p = Policy::new("x-from-y-81", sel("ns", "x")).unwrap().ingress(
        Rule::new()
            .pods(sel("ns", "y"))
            .port(Port::tcp(81).unwrap()),
    );
    check(vec![p], |from, to, proto, port| {
        to.group != "x" || (from.group == "y" && proto == Protocol::Tcp && port == 81)
    });
}

#[test]
fn a_label_changed_at_run_time_takes_effect_when_set_labels_returns() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pods = cluster::start(&net).await;
        let p = Policy::new("x-from-clients", sel("ns", "x"))
            .unwrap()
            .ingress(Rule::new().pods(sel("role", "client")));
        net.apply_policy(&p).await.unwrap();
        cluster::assert_matrix(&pods, |_, to, _, _| to.group != "x").await;
        let ya = pods.iter().find(|p| p.id() == "y/a").unwrap();
        let labels = Labels::from_pairs([("ns", "y"), ("pod", "a"), ("role", "client")]).unwrap();
        ya.sandbox.set_labels(&labels).await.unwrap();
        cluster::assert_matrix(&pods, |from, to, _, _| {
            to.group != "x" || from.id() == "y/a"
        })
        .await;
        cluster::stop(&net, pods).await;
    });
}

#[test]
fn a_pod_made_after_a_policy_is_selected_by_it() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let p = Policy::new("deny-x", sel("ns", "x")).unwrap();
        net.apply_policy(&p).await.unwrap();
        let pods = cluster::start(&net).await;
        cluster::assert_matrix(&pods, |_, to, _, _| to.group != "x").await;
        cluster::stop(&net, pods).await;
    });
}

#[test]
fn deleting_a_policy_lets_everything_in_again() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pods = cluster::start(&net).await;
        let p = Policy::new("deny-all", Selector::everything()).unwrap();
        net.apply_policy(&p).await.unwrap();
        cluster::assert_matrix(&pods, |_, _, _, _| false).await;
        assert!(net.delete_policy("deny-all").await.unwrap());
        assert!(!net.delete_policy("deny-all").await.unwrap());
        assert!(net.policies().unwrap().is_empty());
        cluster::assert_matrix(&pods, |_, _, _, _| true).await;
        cluster::stop(&net, pods).await;
    });
}

#[test]
fn a_block_of_a_family_the_network_lacks_is_refused_and_changes_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let p = Policy::new("v6", Selector::everything())
            .unwrap()
            .ingress(Rule::new().block(IpBlock::parse("fd00:88::/64").unwrap()));
        let err = net.apply_policy(&p).await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        assert!(net.policies().unwrap().is_empty());
        net.remove().await.unwrap();
    });
}

/// The child of the cross-process claims: applies or deletes a policy on
/// the parent's network, then exits.
#[test]
#[ignore = "run by the tests below, as a child process"]
fn child_process() {
    common::child_main(|state, action| async move {
        let net = common::network_builder(&state, BRIDGE, &[common::SUBNET])
            .dns(false)
            .build()
            .await
            .unwrap();
        match action.as_str() {
            "deny-x" => net
                .apply_policy(&Policy::new("deny-x", sel("ns", "x")).unwrap())
                .await
                .unwrap(),
            "delete" => assert!(net.delete_policy("deny-x").await.unwrap()),
            other => panic!("unknown action {other:?}"),
        }
        println!("child done");
    });
}

fn run_child(ctx: &Ctx, action: &str) {
    let out = common::child_command(ctx, action).output().unwrap();
    assert!(out.status.success(), "child {action}: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("child done"));
}

#[test]
fn a_policy_applied_by_another_process_holds_for_this_ones_pods_after_it_exits() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pods = cluster::start(&net).await;
        run_child(&ctx, "deny-x");
        assert_eq!(net.policies().unwrap().len(), 1);
        cluster::assert_matrix(&pods, |_, to, _, _| to.group != "x").await;
        run_child(&ctx, "delete");
        cluster::assert_matrix(&pods, |_, _, _, _| true).await;
        cluster::stop(&net, pods).await;
    });
}

#[test]
fn the_host_is_a_peer_like_any_address() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pods = cluster::start(&net).await;
        let gateway = net.gateways()[0];
        // x takes only from the host (the gateway's address); y may send
        // nowhere.
        let x = Policy::new("x-from-host", sel("ns", "x"))
            .unwrap()
            .ingress(Rule::new().block(IpBlock::new(gateway, 32).unwrap()));
        let y = Policy::new("y-no-egress", sel("ns", "y"))
            .unwrap()
            .without_ingress()
            .isolate_egress();
        net.apply_policy(&x).await.unwrap();
        net.apply_policy(&y).await.unwrap();
        let host = cluster::serve_here(gateway);
        for p in &pods {
            let at = std::net::SocketAddr::new(p.ip, 80);
            let from_host =
                tokio::task::spawn_blocking(move || cluster::reaches(Protocol::Tcp, at))
                    .await
                    .unwrap();
            assert!(from_host, "host -> {}", p.id());
            let to_host = p
                .sandbox
                .run(move || cluster::reaches(Protocol::Tcp, host))
                .await
                .unwrap();
            assert_eq!(to_host, p.group != "y", "{} -> host", p.id());
        }
        cluster::assert_matrix(&pods, |from, to, _, _| from.group != "y" && to.group != "x").await;
        cluster::stop(&net, pods).await;
    });
}

#[test]
fn gc_after_a_crash_leaves_no_address_of_a_gone_sandbox_in_the_rules() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        net.apply_policy(&Policy::new("deny-all", Selector::everything()).unwrap())
            .await
            .unwrap();
        let pod = net
            .sandbox("gone")
            .label("ns", "x")
            .persistent(true)
            .create()
            .await
            .unwrap();
        let ip = pod.ip().to_string();
        assert!(common::nft(&["list", "table", "inet", "podnet-pnp0-policy"]).contains(&ip));
        // A crash: the holder dies, nobody removes the sandbox. Dead as gc
        // sees it once it is a zombie (or reaped).
        common::sigkill(pod.holder_pid());
        let pid = i32::try_from(pod.holder_pid()).unwrap();
        common::eventually("the holder dies", Duration::from_secs(5), async || {
            common::proc_stat(pid).is_none_or(|(state, _)| state == 'Z')
        })
        .await;
        net.gc().await.unwrap();
        let table = common::nft(&["list", "table", "inet", "podnet-pnp0-policy"]);
        assert!(!table.contains(&ip), "{table}");
        drop(pod);
        net.delete_policy("deny-all").await.unwrap();
        net.remove().await.unwrap();
        assert!(!common::nft(&["list", "tables"]).contains("podnet-pnp0-policy"));
    });
}

#[test]
fn a_network_without_policies_needs_no_nf_tables_to_be_collected_and_removed() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        // As a kernel without nf_tables answers a netlink socket of it.
        common::refuse_on_this_thread(nix::libc::SYS_socket, nix::libc::EPROTONOSUPPORT);
        net.gc().await.unwrap();
        net.remove().await.unwrap();
    });
}
