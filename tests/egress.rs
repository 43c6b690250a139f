//! Egress as root: pods reaching beyond the host through the network's
//! masquerade (docs/egress.md). Each test's namespace plays the host
//! (`common::in_netns`), with a veth to a second namespace of its own that
//! plays "the outside" (`common::Outside`: a server on 198.18.0.1 and
//! fd00:88::1:0:0:1 that answers with the client's address as it sees
//! it). The outside has no route back to the pools, so only masqueraded
//! traffic is answered. Forwarding sysctls are set in the test's own
//! namespace only.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::{eventually, in_netns, listen_in, Ctx, Outside};
use podnet::{Error, NetworkBuilder, Sandbox};

const BRIDGE: &str = "pne0";
const V4: &str = "10.88.0.0/16";
const V6: &str = "fd00:88::/80";
const IPV4_FORWARD: &str = "net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "net/ipv6/conf/all/forwarding";
/// How long a connection that cannot be answered is given.
const SHORT: Duration = Duration::from_secs(2);

fn builder(ctx: &Ctx, subnets: &[&str]) -> NetworkBuilder {
    common::network_builder(&ctx.state, BRIDGE, subnets).dns(false)
}

/// The host with forwarding on and the outside attached.
async fn host(ctx: &Ctx) -> Outside {
    common::set_sysctl(IPV4_FORWARD, "1");
    common::set_sysctl(IPV6_FORWARD, "1");
    Outside::start(&ctx.nl, "up0").await
}

/// Connect from `pod` to `ip`:`port`, within [`SHORT`]; what the server
/// wrote back.
async fn fetch_from(pod: &Sandbox, ip: &str, port: u16) -> std::io::Result<String> {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    pod.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, SHORT)?;
        s.set_read_timeout(Some(SHORT))?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    })
    .await
    .unwrap()
}

/// The egress tables of the test's namespace (whichever process made
/// them), with their rules' comments.
fn egress_tables() -> Vec<(String, Vec<String>)> {
    podnet::internals::podnet_tables()
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name.ends_with("-egress"))
        .collect()
}

/// The store's notes on the egress table (`egress-*` files, sorted).
fn egress_notes(ctx: &Ctx) -> Vec<String> {
    let mut notes: Vec<String> = common::files_under(&ctx.state)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter(|n| n.starts_with("egress-"))
        .collect();
    notes.sort();
    notes
}

/// Run the child `action` with `PODNET_FAILPOINT=<step>`, which kills it
/// there (SIGKILL).
fn child_killed_at(ctx: &Ctx, action: &str, step: &str) {
    use std::os::unix::process::ExitStatusExt;
    let status = common::child_command(ctx, action)
        .env("PODNET_FAILPOINT", step)
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "killed at {step}: {status:?}");
}

fn our_table() -> Vec<(String, Vec<String>)> {
    vec![(
        format!("podnet-{BRIDGE}-egress"),
        vec![format!("podnet egress {V4}")],
    )]
}

#[test]
fn a_pod_reaches_the_outside_with_egress_and_the_server_sees_the_uplink_address() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        assert_eq!(egress_tables(), our_table());
        let pod = net.sandbox("web").create().await.unwrap();
        let seen = fetch_from(&pod, Outside::V4, Outside::PORT).await.unwrap();
        assert_eq!(seen, Outside::HOST_V4);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn without_egress_a_pod_does_not_reach_the_outside() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4]).build().await.unwrap();
        assert_eq!(egress_tables(), vec![]);
        let pod = net.sandbox("web").create().await.unwrap();
        // Forwarded unmasqueraded, the SYN reaches the outside, whose
        // answer has no way back: the connect times out.
        let got = fetch_from(&pod, Outside::V4, Outside::PORT).await;
        assert!(
            got.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
            "{got:?}"
        );
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_destination_the_host_cannot_route_to_fails_in_the_pod_at_once() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        let pod = net.sandbox("web").create().await.unwrap();
        // The host has no default route: 198.19.0.1 is in no route of it.
        // It answers the pod's SYN with an ICMP unreachable, which ends the
        // connect with that errno, as on any host without a route.
        let got = fetch_from(&pod, "198.19.0.1", Outside::PORT).await;
        let errno = got.as_ref().err().and_then(std::io::Error::raw_os_error);
        assert!(
            matches!(
                errno,
                Some(nix::libc::ENETUNREACH | nix::libc::EHOSTUNREACH)
            ),
            "{got:?}"
        );
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn ipv6_pods_reach_the_outside_with_egress_as_the_host() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4, V6]).egress(true).build().await.unwrap();
        let mut want = our_table();
        want[0].1.push(format!("podnet egress {V6}"));
        assert_eq!(egress_tables(), want);
        let pod = net.sandbox("web").create().await.unwrap();
        let seen = fetch_from(&pod, Outside::V6, Outside::PORT).await.unwrap();
        assert_eq!(seen, Outside::HOST_V6);
        let seen = fetch_from(&pod, Outside::V4, Outside::PORT).await.unwrap();
        assert_eq!(seen, Outside::HOST_V4);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
        // And without egress, IPv6 does not get out either.
        let net = builder(&ctx, &[V4, V6]).build().await.unwrap();
        let pod = net.sandbox("web").create().await.unwrap();
        assert!(fetch_from(&pod, Outside::V6, Outside::PORT).await.is_err());
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn pods_and_the_host_see_pod_addresses_with_egress_on() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4, V6]).egress(true).build().await.unwrap();
        let a = net.sandbox("a").create().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        let b_ips: Vec<IpAddr> = vec![b.ipv4().unwrap().into(), b.ipv6().unwrap().into()];
        let a_ips: [IpAddr; 2] = [a.ipv4().unwrap().into(), a.ipv6().unwrap().into()];
        for (any, a_ip) in [("0.0.0.0:8000", a_ips[0]), ("[::]:8001", a_ips[1])] {
            let l = listen_in(&a, any).await;
            let port = l.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                let (_, from) = l.accept().unwrap();
                from.ip()
            });
            fetch_from(&b, &a_ip.to_string(), port).await.unwrap();
            let from = server.join().unwrap();
            assert!(b_ips.contains(&from), "pod a saw {from}, b is {b_ips:?}");
        }
        // Pod to host: a server on the host's uplink address sees the pod.
        let l = std::net::TcpListener::bind((Outside::HOST_V4, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || l.accept().unwrap().1.ip());
        fetch_from(&b, Outside::HOST_V4, port).await.unwrap();
        assert_eq!(server.join().unwrap(), b.ip());
        a.remove().await.unwrap();
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn the_rules_go_with_network_remove() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        let pod = net.sandbox("web").create().await.unwrap();
        assert!(matches!(net.remove().await, Err(Error::Busy { .. })));
        assert_eq!(egress_tables(), our_table(), "kept while a sandbox is");
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
        assert_eq!(egress_tables(), vec![]);
        assert_eq!(common::sysctl(IPV4_FORWARD), "1", "forwarding is left on");
    });
}

/// The kernel's handle of the egress table (`nft -a`): a table made
/// again has a new one.
fn egress_table_handle() -> String {
    let table = format!("podnet-{BRIDGE}-egress");
    let text = common::nft(&["-a", "list", "table", "inet", &table]);
    let first = text.lines().next().unwrap_or_default().to_owned();
    assert!(first.contains("# handle"), "{text}");
    first
}

#[test]
fn a_build_that_finds_the_egress_table_as_it_should_be_leaves_it_alone() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let first = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        let handle = egress_table_handle();
        let second = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        assert_eq!(egress_table_handle(), handle, "the table was made again");
        drop(second);
        first.remove().await.unwrap();
    });
}

#[test]
fn a_build_makes_an_egress_table_flushed_behind_its_back_again() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let first = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        common::nft(&["flush", "table", "inet", &format!("podnet-{BRIDGE}-egress")]);
        assert_eq!(egress_tables()[0].1, Vec::<String>::new());
        let second = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        assert_eq!(egress_tables(), our_table());
        drop(second);
        first.remove().await.unwrap();
    });
}

#[test]
fn gc_takes_the_rules_away_when_no_sandbox_needs_them_and_a_create_brings_them_back() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        let pod = net.sandbox("web").create().await.unwrap();
        assert!(!net.gc().await.unwrap().egress);
        assert_eq!(egress_tables(), our_table());
        pod.remove().await.unwrap();
        assert!(net.gc().await.unwrap().egress);
        assert_eq!(egress_tables(), vec![]);
        let pod = net.sandbox("web").create().await.unwrap();
        assert_eq!(egress_tables(), our_table());
        let seen = fetch_from(&pod, Outside::V4, Outside::PORT).await.unwrap();
        assert_eq!(seen, Outside::HOST_V4);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_persistent_sandbox_keeps_egress_after_its_creator_exits() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let mut child = common::child_command(&ctx, "persistent");
        let status = child.status().unwrap();
        assert!(status.success());
        assert_eq!(egress_tables(), our_table());
        // Another process of the network, which did not ask for egress,
        // sees the table and keeps it.
        let net = builder(&ctx, &[V4]).build().await.unwrap();
        assert!(!net.gc().await.unwrap().egress);
        assert_eq!(egress_tables(), our_table());
        let pod = net.open_sandbox("keep").await.unwrap();
        let seen = fetch_from(&pod, Outside::V4, Outside::PORT).await.unwrap();
        assert_eq!(seen, Outside::HOST_V4);
        pod.remove().await.unwrap();
        assert!(net.gc().await.unwrap().egress);
        assert_eq!(egress_tables(), vec![]);
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_after_a_crashed_creator_removes_the_rules() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let (mut child, _) = common::spawn_until(
            &mut common::child_command(&ctx, "crash"),
            "made",
            Duration::from_secs(30),
        );
        let holders = common::holders();
        assert_eq!(holders.len(), 1);
        let net = builder(&ctx, &[V4]).build().await.unwrap();
        assert!(!net.gc().await.unwrap().egress, "its sandbox lives");
        child.kill().unwrap();
        child.wait().unwrap();
        eventually("the holder dies with its creator", SHORT * 5, async || {
            common::holders().is_empty()
        })
        .await;
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["doomed"]);
        assert!(report.egress);
        assert_eq!(egress_tables(), vec![]);
        net.remove().await.unwrap();
    });
}

#[test]
fn forwarding_off_and_not_asked_is_a_clear_error_and_changes_nothing() {
    in_netns(|ctx| async move {
        common::set_sysctl(IPV4_FORWARD, "0");
        common::set_sysctl(IPV6_FORWARD, "1");
        let before = common::snapshot(&ctx.nl).await;
        let err = builder(&ctx, &[V4, V6])
            .egress(true)
            .build()
            .await
            .unwrap_err();
        match &err {
            Error::ForwardingOff { network, sysctl } => {
                assert_eq!(network, BRIDGE);
                assert_eq!(*sysctl, "net.ipv4.ip_forward");
            }
            other => panic!("{other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("net.ipv4.ip_forward"), "{text}");
        assert!(text.contains(".enable_forwarding(true)"), "{text}");
        assert_eq!(common::snapshot(&ctx.nl).await, before);
        assert_eq!(common::sysctl(IPV4_FORWARD), "0");
        assert_eq!(egress_tables(), vec![]);
        assert_eq!(
            common::files_under(&ctx.state),
            Vec::<std::path::PathBuf>::new()
        );
        // IPv6 alike.
        common::set_sysctl(IPV4_FORWARD, "1");
        common::set_sysctl(IPV6_FORWARD, "0");
        let err = builder(&ctx, &[V4, V6]).egress(true).build().await;
        assert!(
            matches!(
                err,
                Err(Error::ForwardingOff {
                    sysctl: "net.ipv6.conf.all.forwarding",
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(common::sysctl(IPV6_FORWARD), "0");
    });
}

#[test]
fn forwarding_asked_is_turned_on() {
    in_netns(|ctx| async move {
        let _outside = Outside::start(&ctx.nl, "up0").await;
        common::set_sysctl(IPV4_FORWARD, "0");
        common::set_sysctl(IPV6_FORWARD, "0");
        let net = builder(&ctx, &[V4, V6])
            .egress(true)
            .enable_forwarding(true)
            .build()
            .await
            .unwrap();
        assert_eq!(common::sysctl(IPV4_FORWARD), "1");
        assert_eq!(common::sysctl(IPV6_FORWARD), "1");
        let pod = net.sandbox("web").create().await.unwrap();
        let seen = fetch_from(&pod, Outside::V4, Outside::PORT).await.unwrap();
        assert_eq!(seen, Outside::HOST_V4);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
        assert_eq!(common::sysctl(IPV4_FORWARD), "1", "never turned back off");
    });
}

#[test]
fn a_crash_between_noting_the_table_and_making_it_leaves_a_note_that_gc_clears() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        child_killed_at(&ctx, "build", "egress-noted");
        assert_eq!(egress_tables(), vec![]);
        assert_eq!(egress_notes(&ctx), ["egress-table"]);
        let net = builder(&ctx, &[V4]).build().await.unwrap();
        assert!(!net.gc().await.unwrap().egress, "there was no table");
        assert_eq!(egress_notes(&ctx), Vec::<String>::new());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_crash_between_making_the_table_and_noting_it_made_leaves_a_table_that_gc_deletes() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        child_killed_at(&ctx, "build", "egress-table");
        assert_eq!(egress_tables(), our_table());
        assert_eq!(egress_notes(&ctx), ["egress-table"]);
        let net = builder(&ctx, &[V4]).build().await.unwrap();
        assert!(net.gc().await.unwrap().egress);
        assert_eq!(egress_tables(), vec![]);
        assert_eq!(egress_notes(&ctx), Vec::<String>::new());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_crash_in_gc_between_deleting_the_table_and_its_note_leaves_a_note_the_next_gc_clears() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        child_killed_at(&ctx, "gc", "egress-deleted");
        assert_eq!(egress_tables(), vec![]);
        assert_eq!(egress_notes(&ctx), ["egress-table"]);
        let net = builder(&ctx, &[V4]).build().await.unwrap();
        assert!(!net.gc().await.unwrap().egress, "the table was gone");
        assert_eq!(egress_notes(&ctx), Vec::<String>::new());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_create_after_a_crash_half_way_through_deleting_the_table_makes_it_again() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let net = builder(&ctx, &[V4]).egress(true).build().await.unwrap();
        child_killed_at(&ctx, "gc", "egress-deleted");
        assert_eq!(egress_tables(), vec![]);
        let pod = net.sandbox("web").create().await.unwrap();
        assert_eq!(egress_tables(), our_table());
        assert_eq!(egress_notes(&ctx), ["egress-made", "egress-table"]);
        let seen = fetch_from(&pod, Outside::V4, Outside::PORT).await.unwrap();
        assert_eq!(seen, Outside::HOST_V4);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
        assert_eq!(egress_tables(), vec![]);
    });
}

#[test]
fn two_processes_building_the_network_at_once_make_one_table_both_use() {
    in_netns(|ctx| async move {
        let _outside = host(&ctx).await;
        let mut children: Vec<_> = ["keep-a", "keep-b"]
            .iter()
            .map(|name| {
                common::child_command(&ctx, &format!("persistent {name}"))
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in &mut children {
            assert!(child.wait().unwrap().success());
        }
        assert_eq!(egress_tables(), our_table());
        let net = builder(&ctx, &[V4]).build().await.unwrap();
        for name in ["keep-a", "keep-b"] {
            let pod = net.open_sandbox(name).await.unwrap();
            let seen = fetch_from(&pod, Outside::V4, Outside::PORT).await.unwrap();
            assert_eq!(seen, Outside::HOST_V4, "{name}");
            pod.remove().await.unwrap();
        }
        net.remove().await.unwrap();
        assert_eq!(egress_tables(), vec![]);
    });
}

#[test]
fn a_build_that_fails_leaves_forwarding_as_it_was() {
    in_netns(|ctx| async move {
        common::set_sysctl(IPV4_FORWARD, "0");
        // Not a bridge: the build fails after the forwarding check.
        common::add_veth(&ctx.nl, BRIDGE, "pne0p").await;
        let err = builder(&ctx, &[V4])
            .egress(true)
            .enable_forwarding(true)
            .build()
            .await;
        assert!(matches!(err, Err(Error::NotABridge { .. })), "{err:?}");
        assert_eq!(common::sysctl(IPV4_FORWARD), "0");
        assert_eq!(egress_tables(), vec![]);
    });
}

/// The child's side of the tests above (run by `common::child_command`).
#[test]
#[ignore = "run by the tests above as a child process"]
fn child_process() {
    common::child_main(|state, action| async move {
        let net = common::network_builder(&state, BRIDGE, &[V4])
            .dns(false)
            .egress(true)
            .build()
            .await
            .unwrap();
        match action.split_once(' ').unwrap_or((&action, "keep")) {
            ("persistent", name) => {
                net.sandbox(name).persistent(true).create().await.unwrap();
                println!("made");
            }
            ("build", _) => {}
            ("gc", _) => {
                net.gc().await.unwrap();
            }
            ("crash", _) => {
                let _pod = net.sandbox("doomed").create().await.unwrap();
                println!("made");
                tokio::time::sleep(Duration::from_secs(600)).await;
            }
            other => panic!("unknown action {other:?}"),
        }
    });
}
