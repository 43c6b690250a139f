//! The sandbox core, end to end, each test in a network namespace of its own
//! (see `common::in_netns`). Members are real processes (`bash`, `cat`) and
//! threads; checks use our own netlink dumps.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{files_under, in_netns, ports, snapshot, Ctx};
use futures::future::join_all;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use podnet::{Error, Network, Phase};

async fn network(ctx: &Ctx, bridge: &str) -> Network {
    common::build_network(&ctx.state, bridge, "10.88.0.0/16")
        .await
        .expect("build network")
}

/// Sandboxes `<prefix>0`.. `<prefix>{n-1}`, made at once.
async fn create_many(net: &Network, prefix: &str, n: usize) -> Vec<podnet::Sandbox> {
    join_all((0..n).map(|i| net.sandbox(format!("{prefix}{i}")).create()))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{n} creates: {e}"))
}

/// Remove `pods` at once, their veths' deletions held back until all of
/// them are queued, so that they reach the kernel together; then wait for
/// the deletions.
async fn remove_queued(net: &Network, pods: &[podnet::Sandbox]) {
    let held = podnet::internals::hold_veth_deletions(net).expect("none in flight");
    join_all(pods.iter().map(|p| p.remove()))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("removes");
    // Each removal returned with its veth renamed and queued.
    assert_eq!(podnet::internals::veth_deletions_waiting(net), pods.len());
    drop(held);
    settled(net).await;
}

/// The tag of `pod`'s network: its veth is `<name>-<tag>`, and the veths
/// of its removed sandboxes are `<tag>~...` until they are deleted.
fn tag_of(pod: &podnet::Sandbox) -> String {
    let (_, tag) = pod.host_interface().rsplit_once('-').expect("<name>-<tag>");
    tag.to_owned()
}

/// Wait for `net`'s veth deletions in the background.
async fn settled(net: &Network) {
    podnet::internals::veth_deletions_settled(net)
        .await
        .expect("veth deletions");
}

/// The links whose names start with `prefix`.
async fn links_starting(ctx: &Ctx, prefix: &str) -> Vec<String> {
    common::links(&ctx.nl)
        .await
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Accept one connection and read it to the end.
fn serve_once(l: TcpListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    })
}

/// A member process that sends `msg` to `addr:port` over bash's /dev/tcp;
/// returns whether it connected.
async fn send_from(pod: &podnet::Sandbox, addr: &str, port: u16, msg: &str) -> bool {
    pod.command("bash")
        .arg("-c")
        .arg(format!("echo -n {msg} > /dev/tcp/{addr}/{port}"))
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("run bash in sandbox")
        .success()
}

#[test]
fn create_wires_a_running_sandbox_and_remove_unwires_it() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("web").create().await.expect("create");
        assert_eq!(pod.phase(), Phase::Running);
        assert_eq!(pod.ip().to_string(), "10.88.0.2");
        assert_eq!(pod.gateway().to_string(), "10.88.0.1");
        assert_eq!(pod.name(), "web");
        assert!(pod.netns_path().exists());
        // Named by its first instruction, which it may not have run yet.
        let comm = || std::fs::read_to_string(format!("/proc/{}/comm", pod.holder_pid())).unwrap();
        common::eventually(
            "the holder names itself",
            Duration::from_secs(10),
            async || comm().trim() == "podnet-pause",
        )
        .await;
        assert_eq!(
            ports(&ctx.nl, "pn0").await.into_iter().collect::<Vec<_>>(),
            [pod.host_interface().to_owned()]
        );
        // One queue each way, made so (not cut down after registration).
        let attrs = common::link(&ctx.nl, pod.host_interface())
            .await
            .unwrap()
            .attributes;
        for q in [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)] {
            assert!(attrs.contains(&q), "{q:?} in {attrs:?}");
        }
        // Inside: lo and eth0 up, the address, a default route via the gateway.
        let out = pod
            .command("cat")
            .args(["/proc/net/route", "/proc/net/fib_trie"])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("eth0\t00000000\t0100580A"),
            "default via 10.88.0.1:\n{text}"
        );
        assert!(text.contains("10.88.0.2"), "{text}");
        // The host reaches the sandbox through the bridge.
        let l = pod
            .run(|| TcpListener::bind("0.0.0.0:7000"))
            .await
            .unwrap()
            .unwrap();
        let server = serve_once(l);
        let mut s = TcpStream::connect((pod.ip(), 7000)).unwrap();
        s.write_all(b"from host").unwrap();
        drop(s);
        assert_eq!(server.join().unwrap(), "from host");

        pod.remove().await.expect("remove");
        assert_eq!(pod.phase(), Phase::Succeeded);
        pod.remove().await.expect("remove is idempotent");
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        assert!(files_under(&ctx.state)
            .iter()
            .all(|f| !f.to_string_lossy().contains("/sandbox/")));
        net.remove().await.unwrap();
        assert!(
            files_under(&ctx.state).is_empty(),
            "{:?}",
            files_under(&ctx.state)
        );
    });
}

#[test]
fn the_bridge_mac_does_not_follow_its_ports() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let mac = common::mac(&ctx.nl, "pn0").await;
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        // Without a pinned address a bridge takes its lowest port's MAC, so
        // it would change as sandboxes come and go.
        let mut pods = Vec::new();
        for i in 0..4 {
            pods.push(net.sandbox(format!("m{i}")).create().await.unwrap());
            assert_eq!(common::mac(&ctx.nl, "pn0").await, mac);
        }
        for p in pods.drain(..) {
            p.remove().await.unwrap();
            assert_eq!(common::mac(&ctx.nl, "pn0").await, mac);
        }
        net.remove().await.unwrap();
    });
}

#[test]
fn members_share_localhost_and_outsiders_cannot_reach_it() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let a = net.sandbox("a").create().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        // Member 1 (a thread inside) serves on a's 127.0.0.1.
        let l = a
            .run(|| TcpListener::bind("127.0.0.1:8080"))
            .await
            .unwrap()
            .unwrap();
        let server = serve_once(l);
        // Member 2 (a process inside a) reaches it over localhost.
        assert!(send_from(&a, "127.0.0.1", 8080, "hello").await);
        assert_eq!(server.join().unwrap(), "hello");

        let l = a
            .run(|| TcpListener::bind("127.0.0.1:8081"))
            .await
            .unwrap()
            .unwrap();
        // Outsiders: the test's own namespace, and another sandbox.
        let err = TcpStream::connect("127.0.0.1:8081").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(!send_from(&b, "127.0.0.1", 8081, "x").await);
        // Nor by a's IP: the server is bound to a's lo only.
        assert!(!send_from(&b, &a.ip().to_string(), 8081, "x").await);
        drop(l);

        a.remove().await.unwrap();
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn pods_reach_each_other_by_ip_and_bind_the_same_port() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let a = net.sandbox("a").create().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        assert_ne!(a.ip(), b.ip());
        let la = a
            .run(|| TcpListener::bind("0.0.0.0:9000"))
            .await
            .unwrap()
            .unwrap();
        let lb = b
            .run(|| TcpListener::bind("0.0.0.0:9000"))
            .await
            .unwrap()
            .unwrap();
        let (sa, sb) = (serve_once(la), serve_once(lb));
        assert!(send_from(&b, &a.ip().to_string(), 9000, "b-to-a").await);
        assert!(send_from(&a, &b.ip().to_string(), 9000, "a-to-b").await);
        assert_eq!(sa.join().unwrap(), "b-to-a");
        assert_eq!(sb.join().unwrap(), "a-to-b");
        // A socket made inside by run() keeps working from this thread.
        let lb = b
            .run(|| TcpListener::bind("0.0.0.0:9001"))
            .await
            .unwrap()
            .unwrap();
        let ip_b = b.ip();
        let client = a
            .run(move || {
                let mut s = TcpStream::connect((ip_b, 9001))?;
                s.write_all(b"thread")
            })
            .await
            .unwrap();
        client.unwrap();
        let (mut s, peer) = lb.accept().unwrap();
        assert_eq!(peer.ip(), a.ip());
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "thread");
        a.remove().await.unwrap();
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn fifty_concurrent_creates_get_fifty_addresses_and_removal_leaves_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let before = snapshot(&ctx.nl).await;
        let pods = create_many(&net, "p", 50).await;
        let ips: HashSet<IpAddr> = pods.iter().map(|p| p.ip()).collect();
        assert_eq!(ips.len(), 50);
        // host-local's order: .2 up to .51, whatever the interleaving.
        let want: HashSet<IpAddr> = (2..52)
            .map(|i| format!("10.88.0.{i}").parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        assert_eq!(ports(&ctx.nl, "pn0").await.len(), 50);
        assert!(pods.iter().all(|p| p.phase() == Phase::Running));
        join_all(pods.iter().map(|p| p.remove()))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("50 removes");
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        // Their veths are deleted in the background.
        settled(&net).await;
        assert_eq!(snapshot(&ctx.nl).await, before);
        // Their holders die with this process, so they are ended in the
        // background, in one batch, soon after.
        let alive = || {
            pods.iter()
                .filter(|p| std::path::Path::new(&format!("/proc/{}", p.holder_pid())).exists())
                .count()
        };
        let took = common::eventually("the holders end", Duration::from_secs(5), async || {
            alive() == 0
        })
        .await;
        eprintln!("holders ended {took:?} after the removals");
        net.remove().await.unwrap();
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn a_removal_frees_name_port_and_address_at_once_and_deletes_the_veth_after() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let a = net.sandbox("a").create().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        let tag = tag_of(&a);
        let dying = format!("{tag}~");
        let (veth, ip) = (a.host_interface().to_owned(), a.ip());
        let addr = std::net::SocketAddr::new(ip, 9000);
        let listener = a
            .run(move || TcpListener::bind(addr))
            .await
            .unwrap()
            .unwrap();
        let reach = |within| b.run(move || TcpStream::connect_timeout(&addr, within));
        // b reaches a before the removal.
        reach(Duration::from_secs(5)).await.unwrap().unwrap();

        let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
        a.remove().await.unwrap();
        // The veth is still there, but off the bridge, down and renamed.
        assert_eq!(podnet::internals::veth_deletions_waiting(&net), 1);
        let names = links_starting(&ctx, &dying).await;
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(names[0].len(), 15, "{names:?}");
        assert!(!common::links(&ctx.nl).await.contains(&veth));
        assert!(!ports(&ctx.nl, "pn0").await.contains(&names[0]));
        let renamed = common::link(&ctx.nl, &names[0]).await.unwrap();
        assert!(!renamed.header.flags.contains(LinkFlags::Up));
        // So the old sandbox, whose listener is still open, is out of reach.
        assert!(reach(Duration::from_millis(300)).await.unwrap().is_err());
        // The name and the address are free at once: a new "a" gets both,
        // and is reached, not the old one. (From a new sandbox: b's
        // neighbour entry still has the old one's MAC address for a while,
        // as after any reuse of an address.)
        let again = net.sandbox("a").ip(ip).create().await.unwrap();
        assert_eq!(again.host_interface(), veth);
        let l2 = again
            .run(move || TcpListener::bind(addr))
            .await
            .unwrap()
            .unwrap();
        let accepted = std::thread::spawn(move || l2.accept().map(|(_, peer)| peer));
        let c = net.sandbox("c").create().await.unwrap();
        c.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(accepted.join().unwrap().unwrap().ip(), c.ip());
        drop(listener);

        drop(held);
        settled(&net).await;
        assert_eq!(podnet::internals::veth_batches(&net), [(1, true)]);
        assert!(links_starting(&ctx, &dying).await.is_empty());
        for p in [again, b, c] {
            p.remove().await.unwrap();
        }
        net.remove().await.unwrap();
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn removals_queued_behind_a_deletion_in_flight_go_to_the_kernel_together() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pods = create_many(&net, "r", 6).await;
        let keep = net.sandbox("keep").create().await.unwrap();
        // Links that are not the removals' own stay: another sandbox's
        // veth and a link of somebody else's.
        ctx.nl
            .link()
            .add(rtnetlink::LinkVeth::new("other0", "other1").build())
            .execute()
            .await
            .unwrap();
        // A veth deleted already: its removal still succeeds, with nothing
        // left to delete.
        let gone = common::link_index(&ctx.nl, pods[5].host_interface()).await;
        ctx.nl.link().del(gone.unwrap()).execute().await.unwrap();
        pods[5].remove().await.unwrap();

        // Queued behind a deletion held in flight; one of them is deleted
        // meanwhile, under its new name, by somebody else.
        let tag = tag_of(&keep);
        let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
        for p in &pods[..5] {
            p.remove().await.unwrap();
        }
        assert_eq!(podnet::internals::veth_deletions_waiting(&net), 5);
        let renamed = links_starting(&ctx, &format!("{tag}~")).await;
        assert_eq!(renamed.len(), 5, "{renamed:?}");
        let index = common::link_index(&ctx.nl, &renamed[0]).await.unwrap();
        ctx.nl.link().del(index).execute().await.unwrap();
        drop(held);
        // A link gone already is no failure.
        settled(&net).await;
        // In one kernel operation, not the one-by-one fallback.
        assert_eq!(podnet::internals::veth_batches(&net), [(5, true)]);
        let want: std::collections::BTreeSet<String> = [keep.host_interface().to_owned()].into();
        assert_eq!(ports(&ctx.nl, "pn0").await, want);
        assert!(common::links(&ctx.nl).await.contains("other0"));
        assert!(links_starting(&ctx, &format!("{tag}~")).await.is_empty());
        assert_eq!(keep.phase(), Phase::Running);

        // On its own, a deletion is a batch of its own.
        keep.remove().await.unwrap();
        settled(&net).await;
        assert_eq!(
            podnet::internals::veth_batches(&net),
            [(5, true), (1, true)]
        );
        net.remove().await.unwrap();
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn a_veth_is_deleted_even_while_a_process_keeps_its_namespace() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("a").create().await.unwrap();
        let tag = tag_of(&pod);
        let mut member = pod.command("sleep").arg("30").spawn().unwrap();
        pod.remove().await.unwrap();
        settled(&net).await;
        assert!(links_starting(&ctx, &format!("{tag}~")).await.is_empty());
        assert!(links_starting(&ctx, "a-").await.is_empty());
        // The member is still there, in a namespace with only lo.
        assert!(member.try_wait().unwrap().is_none());
        member.kill().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// The start time of process `pid`.
fn start_time(pid: i32) -> u64 {
    common::proc_stat(pid).expect("process exists").1
}

#[test]
fn gc_deletes_the_veths_of_removed_sandboxes_that_no_process_deleted() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("a").create().await.unwrap();
        let tag = tag_of(&pod);
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (live_pid, me) = (live.id(), std::process::id());
        let removed_by = |pid: u32, start: u64| Some(format!("podnet removed by {pid}:{start}"));
        // (name, alias, whether gc deletes it). As a remover leaves them
        // that died before its deletion in the background (while a process
        // keeps the namespace): renamed, with the remover in the alias.
        let cases = [
            (format!("{tag}~00000000000a"), removed_by(dead_pid, 1), true),
            // Its PID now someone else's.
            (format!("{tag}~00000000000b"), removed_by(live_pid, 1), true),
            // This process's, not queued: a deletion that failed.
            (
                format!("{tag}~00000000000c"),
                removed_by(me, start_time(me as i32)),
                true,
            ),
            // A live remover's is its own to delete.
            (
                format!("{tag}~00000000000d"),
                removed_by(live_pid, start_time(live_pid as i32)),
                false,
            ),
            // Not podnet's doing.
            (format!("{tag}~00000000000e"), None, false),
            (format!("{tag}~0000000000"), removed_by(dead_pid, 1), false),
            (
                format!("{tag}~00000000000z"),
                removed_by(dead_pid, 1),
                false,
            ),
        ];
        for (i, (name, alias, _)) in cases.iter().enumerate() {
            ctx.nl
                .link()
                .add(rtnetlink::LinkVeth::new(name, &format!("peer{i}")).build())
                .execute()
                .await
                .unwrap();
            if let Some(alias) = alias {
                ctx.nl
                    .link()
                    .set(
                        rtnetlink::LinkUnspec::new_with_name(name)
                            .alias(alias)
                            .build(),
                    )
                    .execute()
                    .await
                    .unwrap();
            }
        }
        let mut report = net.gc().await.unwrap();
        report.links.sort();
        let want: Vec<String> = cases.iter().filter(|c| c.2).map(|c| c.0.clone()).collect();
        assert_eq!(report.links, want);
        let links = common::links(&ctx.nl).await;
        for (name, _, gone) in &cases {
            assert_eq!(!links.contains(name), *gone, "{name}");
        }
        assert!(links.contains(pod.host_interface()));
        live.kill().unwrap();
        live.wait().unwrap();
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn network_remove_waits_for_the_veths_of_removed_sandboxes() {
    in_netns(|ctx| async move {
        let before = snapshot(&ctx.nl).await;
        let net = network(&ctx, "pn0").await;
        let pods = create_many(&net, "w", 3).await;
        let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
        for p in &pods {
            p.remove().await.unwrap();
        }
        let removing = net.remove();
        tokio::pin!(removing);
        // Not while the deletions are held back.
        let early = tokio::time::timeout(Duration::from_millis(200), &mut removing).await;
        assert!(early.is_err(), "returned with veths left: {early:?}");
        drop(held);
        removing.await.unwrap();
        assert_eq!(snapshot(&ctx.nl).await, before);
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn veths_the_kernel_deleted_with_their_namespaces_are_no_failure() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pods = create_many(&net, "k", 3).await;
        let tag = tag_of(&pods[0]);
        let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
        for p in &pods {
            p.remove().await.unwrap();
        }
        // Their holders are ended a moment after the removals, and the
        // kernel then deletes each veth with its namespace, before the
        // deletions held back are sent.
        let prefix = format!("{tag}~");
        let t = std::time::Instant::now();
        loop {
            let renamed = links_starting(&ctx, &prefix).await;
            if renamed.is_empty() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{renamed:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        // Links gone already are no failure.
        settled(&net).await;
        // Nothing was left to delete one by one.
        assert_eq!(podnet::internals::veth_batches(&net), [(3, true)]);
        net.remove().await.unwrap();
    });
}

#[test]
fn a_long_queue_of_removals_goes_in_batches_of_at_most_64() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pods = create_many(&net, "q", 70).await;
        remove_queued(&net, &pods).await;
        assert_eq!(
            podnet::internals::veth_batches(&net),
            [(64, true), (6, true)]
        );
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        net.remove().await.unwrap();
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn ipv4_and_ipv6_pools_give_both_addresses_and_routes() {
    in_netns(|ctx| async move {
        let net = Network::builder("pn6")
            .subnet("10.88.0.0/24".parse().unwrap())
            .subnet("fd00:88::/64".parse().unwrap())
            .state_dir(&ctx.state)
            .build()
            .await
            .unwrap();
        assert_eq!(net.gateways().len(), 2);
        let a = net.sandbox("a").mtu(1400).create().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        assert_eq!(a.ipv6().unwrap().to_string(), "fd00:88::2");
        assert_eq!(b.ipv6().unwrap().to_string(), "fd00:88::3");
        // Usable at once (no DAD wait): b reaches a over IPv6 right away.
        let la = a
            .run(|| TcpListener::bind("[::]:9000"))
            .await
            .unwrap()
            .unwrap();
        let server = serve_once(la);
        assert!(send_from(&b, &a.ipv6().unwrap().to_string(), 9000, "v6").await);
        assert_eq!(server.join().unwrap(), "v6");
        let out = a
            .command("cat")
            .arg("/sys/class/net/eth0/mtu")
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1400");
        a.remove().await.unwrap();
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn static_addresses_are_honoured_and_checked() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let a = net
            .sandbox("a")
            .ip("10.88.3.7".parse().unwrap())
            .create()
            .await
            .unwrap();
        assert_eq!(a.ip().to_string(), "10.88.3.7");
        let b = net.sandbox("b").create().await.unwrap();
        assert_eq!(b.ip().to_string(), "10.88.0.2");
        a.remove().await.unwrap();
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn bad_input_gets_the_right_error_and_changes_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let taken = net.sandbox("taken").create().await.unwrap();
        // A link that is not a bridge, to collide with.
        ctx.nl
            .link()
            .add(rtnetlink::LinkVeth::new("notbr0", "notbr1").build())
            .execute()
            .await
            .unwrap();
        let before = snapshot(&ctx.nl).await;
        let files_before = common::tree_under(&ctx.state);

        for name in ["Web", "a_b", "-a", "a-", "", "abcdefghijklm"] {
            let err = net.sandbox(name).create().await.unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
        }
        let err = net.sandbox("taken").create().await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        let cases = [
            ("10.89.0.5", "outside"),
            ("10.88.0.0", "network"),
            ("10.88.0.1", "gateway"),
            ("10.88.255.255", "broadcast"),
        ];
        for (ip, why) in cases {
            let err = net
                .sandbox("s")
                .ip(ip.parse().unwrap())
                .create()
                .await
                .unwrap_err();
            assert!(matches!(err, Error::AddressNotInPool { .. }), "{ip}: {err}");
            assert!(err.to_string().contains(why), "{err}");
        }
        let err = net.sandbox("s").ip(taken.ip()).create().await.unwrap_err();
        assert!(
            matches!(err, Error::AddressTaken { ref owner, .. } if owner == "taken"),
            "{err}"
        );
        let err = net
            .sandbox("s")
            .ip("fd00::5".parse().unwrap())
            .create()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        let err = net.sandbox("s").mtu(10).create().await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");

        let build = |bridge: &str, subnet: &str| {
            Network::builder(bridge)
                .subnet(subnet.parse().unwrap())
                .state_dir(&ctx.state)
                .build()
        };
        let err = build("notbr0", "10.88.0.0/16").await.unwrap_err();
        assert!(matches!(err, Error::NotABridge { .. }), "{err}");
        assert!(err.to_string().contains("veth"), "{err}");
        let err = build("pn1", "10.90.0.0/31").await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        let err = build("much-too-long-name", "10.90.0.0/24")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        let err = build("a/b", "10.90.0.0/24").await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        let err = Network::builder("pn1")
            .state_dir(&ctx.state)
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        let err = Network::builder("pn1")
            .subnet("10.90.0.0/24".parse().unwrap())
            .subnet("10.91.0.0/24".parse().unwrap())
            .state_dir(&ctx.state)
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");

        assert_eq!(
            snapshot(&ctx.nl).await,
            before,
            "links or addresses changed"
        );
        assert_eq!(
            common::tree_under(&ctx.state),
            files_before,
            "state changed"
        );
        // The network still works after all that.
        let ok = net.sandbox("s").create().await.unwrap();
        ok.remove().await.unwrap();
        taken.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_full_pool_is_a_clear_error() {
    in_netns(|ctx| async move {
        // One address: .2
        let net = common::build_network(&ctx.state, "pn0", "10.88.0.0/30")
            .await
            .unwrap();
        let a = net.sandbox("a").create().await.unwrap();
        let before = snapshot(&ctx.nl).await;
        let err = net.sandbox("b").create().await.unwrap_err();
        assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");
        assert_eq!(snapshot(&ctx.nl).await, before);
        a.remove().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        assert_eq!(b.ip().to_string(), "10.88.0.2");
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_killed_holder_fails_the_sandbox_and_remove_still_cleans_up() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("web").create().await.unwrap();
        assert_eq!(pod.phase(), Phase::Running);
        let killed = std::time::Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pod.holder_pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // phase() alone (no wait) sees the death within 100 ms: polled
        // every 2 ms, the time measured from the kill.
        let seen = loop {
            let phase = pod.phase();
            let elapsed = killed.elapsed();
            if phase != Phase::Running {
                assert_eq!(phase, Phase::Failed);
                break elapsed;
            }
            assert!(
                elapsed < std::time::Duration::from_millis(100),
                "phase() still says Running {elapsed:?} after SIGKILL"
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        eprintln!("phase() was Failed {seen:?} after SIGKILL");
        assert_eq!(pod.phase(), Phase::Failed, "Failed for good");
        assert_eq!(pod.wait().await, Phase::Failed);
        assert_eq!(pod.phase(), Phase::Failed);
        let err = pod.command("true").status().await.unwrap_err();
        assert!(
            matches!(err, Error::HolderDied { ref status, .. } if status.contains("SIGKILL")),
            "{err}"
        );
        let err = pod.enter().unwrap_err();
        assert!(matches!(err, Error::HolderDied { .. }), "{err}");
        let err = pod.run(|| ()).await.unwrap_err();
        assert!(matches!(err, Error::HolderDied { .. }), "{err}");
        pod.remove().await.expect("remove a failed sandbox");
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        // The name and the address can be used again at once.
        let again = net.sandbox("web").ip(pod.ip()).create().await.unwrap();
        assert_eq!(again.ip(), pod.ip());
        again.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn enter_moves_this_thread_in_and_back_and_guards_nest() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let a = net.sandbox("a").create().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        let my_ns = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let here = my_ns();
        let ns_a = std::fs::read_link(a.netns_path()).unwrap();
        let ns_b = std::fs::read_link(b.netns_path()).unwrap();
        {
            let _in_a = a.enter().unwrap();
            assert_eq!(my_ns(), ns_a);
            // Sockets made inside stay inside after leaving.
            let l = TcpListener::bind("127.0.0.1:5000").unwrap();
            {
                let _in_b = b.enter().unwrap();
                assert_eq!(my_ns(), ns_b);
                assert!(TcpStream::connect("127.0.0.1:5000").is_err());
            }
            assert_eq!(my_ns(), ns_a);
            drop(l);
        }
        assert_eq!(my_ns(), here);
        // Out-of-order drops panic, having restored what they found.
        let outer = a.enter().unwrap();
        let inner = b.enter().unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(outer)));
        assert!(panicked.is_err());
        assert_eq!(my_ns(), here);
        drop(inner); // does nothing: the outer guard restored the thread already
        assert_eq!(my_ns(), here);
        let _again = a.enter().unwrap();
        drop(_again);
        assert_eq!(my_ns(), here);
        a.remove().await.unwrap();
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn remove_on_drop_cleans_up_when_a_test_panics() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let state = ctx.state.clone();
        let pid = {
            let pod = net
                .sandbox("doomed")
                .remove_on_drop(true)
                .create()
                .await
                .unwrap();
            let pid = pod.holder_pid();
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _pod = pod;
                panic!("a failing test");
            }));
            assert!(unwound.is_err());
            pid
        };
        // The holder was killed, the veth taken off the bridge (and its
        // name freed) and the state released at once...
        assert!(files_under(&state)
            .iter()
            .all(|f| !f.to_string_lossy().contains("doomed")));
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        assert!(links_starting(&ctx, "doomed-").await.is_empty());
        // ...and the veth is deleted in the background, the holder reaped by
        // the task the drop left on this runtime.
        settled(&net).await;
        assert_eq!(podnet::internals::veth_batches(&net), [(1, true)]);
        common::eventually("the holder is reaped", Duration::from_secs(5), async || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
        .await;
        net.remove().await.unwrap();
    });
}

#[test]
fn a_persistent_holder_ends_before_remove_returns_and_others_soon_after() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let proc_of = |pid: u32| std::path::PathBuf::from(format!("/proc/{pid}"));
        // A persistent holder would outlive this process if ending it were
        // left for later: it is killed and reaped before remove() returns.
        let kept = net.sandbox("kept").persistent(true).create().await.unwrap();
        let kept_pid = kept.holder_pid();
        kept.remove().await.unwrap();
        assert!(!proc_of(kept_pid).exists(), "persistent holder still there");
        // One that dies with this process is ended with the namespaces, in
        // the background; the name and address are free at once.
        let plain = net.sandbox("plain").create().await.unwrap();
        let (plain_pid, ip) = (plain.holder_pid(), plain.ip());
        plain.remove().await.unwrap();
        let t = std::time::Instant::now();
        let again = net.sandbox("plain").ip(ip).create().await.unwrap();
        assert_ne!(again.holder_pid(), plain_pid);
        // gc does not take the old holder, which bears the same name, for
        // an orphan of the new sandbox.
        let report = net.gc().await.unwrap();
        assert!(report.holders.is_empty(), "{report:?}");
        // wait() does not wait for the holder's end: the sandbox is gone.
        let waited = tokio::time::timeout(Duration::from_secs(1), plain.wait()).await;
        assert_eq!(waited, Ok(Phase::Succeeded));
        let left = Duration::from_secs(5).saturating_sub(t.elapsed());
        common::eventually("the holder ends and is reaped", left, async || {
            !proc_of(plain_pid).exists()
        })
        .await;
        eprintln!("ended {:?} after remove() returned", t.elapsed());
        again.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn dropping_a_sandbox_handle_keeps_the_sandbox() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("kept").create().await.unwrap();
        let (pid, veth) = (pod.holder_pid(), pod.host_interface().to_owned());
        drop(pod);
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(ports(&ctx.nl, "pn0").await.contains(&veth));
        // Clean up by hand, as a runtime restarting would (re-attach is gc's business).
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // The kernel may have deleted it with the namespace already.
        let _ = ctx
            .nl
            .link()
            .del_with_message(rtnetlink::LinkUnspec::new_with_name(&veth).build())
            .execute()
            .await;
        for f in files_under(&ctx.state) {
            std::fs::remove_file(f).unwrap();
        }
    });
}

#[test]
fn the_holder_of_a_dropped_handle_is_reaped_when_it_ends() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("kept").create().await.unwrap();
        let pid = pod.holder_pid();
        drop(pod);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // We are its parent: until we reap it, it stays in /proc as a zombie.
        let proc = format!("/proc/{pid}");
        common::eventually(
            &format!("holder {pid} reaped"),
            Duration::from_secs(5),
            async || !std::path::Path::new(&proc).exists(),
        )
        .await;
        // And gc reclaims the rest.
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["kept"]);
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_bridge_that_exists_is_reused_and_a_second_network_coexists() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let a = net.sandbox("a").create().await.unwrap();
        // Built again (another program, or a restart): same bridge, same pool.
        let again = network(&ctx, "pn0").await;
        let b = again.sandbox("b").create().await.unwrap();
        assert_ne!(a.ip(), b.ip());
        assert_eq!(ports(&ctx.nl, "pn0").await.len(), 2);
        // Another network in the same namespace, same sandbox names.
        let other = common::build_network(&ctx.state, "pn1", "10.89.0.0/24")
            .await
            .unwrap();
        let a1 = other.sandbox("a").create().await.unwrap();
        assert_ne!(a1.host_interface(), a.host_interface());
        let err = again.remove().await.unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        for p in [&a, &b, &a1] {
            p.remove().await.unwrap();
        }
        net.remove().await.unwrap();
        other.remove().await.unwrap();
    });
}

#[test]
fn public_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn check(net: &Network, pod: &podnet::Sandbox) {
        is_send(&Network::builder("x").build());
        is_send(&net.sandbox("x").create());
        is_send(&pod.remove());
        is_send(&pod.run(|| 1));
        is_send(&pod.wait());
        is_send(&pod.command("x").output());
        is_send(&pod.command("x").status());
        is_send(&net.clone().remove());
    }
    let _ = check;
}

#[test]
fn a_failure_half_way_rolls_back_what_was_made() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        // Learn the network's interface suffix, then take "web"'s veth name.
        let probe = net.sandbox("probe").create().await.unwrap();
        let suffix = probe
            .host_interface()
            .trim_start_matches("probe")
            .to_owned();
        probe.remove().await.unwrap();
        // (Its veth is deleted in the background: not part of what follows.)
        settled(&net).await;
        let squatter = format!("web{suffix}");
        ctx.nl
            .link()
            .add(rtnetlink::LinkVeth::new(&squatter, "squat1").build())
            .execute()
            .await
            .unwrap();
        let before = snapshot(&ctx.nl).await;
        let files_before = common::tree_under(&ctx.state);
        let holders_before = holders();
        // Fails at the veth, after the address and the holder were made.
        let err = net.sandbox("web").create().await.unwrap_err();
        assert!(
            matches!(err, Error::AlreadyExists { what: "link", .. }),
            "{err}"
        );
        assert_eq!(snapshot(&ctx.nl).await, before);
        assert_eq!(common::tree_under(&ctx.state), files_before);
        assert_eq!(holders(), holders_before, "the holder was not stopped");
        net.remove().await.unwrap();
    });
}

#[test]
fn a_sandbox_made_on_a_thread_that_ends_lives_on() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let on_thread = net.clone();
        let made = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(on_thread.sandbox("t").create())
            })
            .join()
        });
        let pod = made.await.unwrap().unwrap().unwrap();
        // The thread (and runtime) that made it, and cloned its holder, is
        // gone; the holder dies with this process, not with that thread.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pod.phase(), Phase::Running);
        let state = common::proc_stat(pod.holder_pid() as i32).map(|(state, _)| state);
        assert!(matches!(state, Some('S' | 'R')), "holder state: {state:?}");
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_cancelled_create_leaves_nothing_behind() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let before = snapshot(&ctx.nl).await;
        let holders_before = holders();
        // Another holder of the store's lock (as another process's create
        // or gc would be) makes the create wait for it, after its holder is
        // cloned; then the caller gives up.
        let store = files_under(&ctx.state)
            .into_iter()
            .find(|f| f.ends_with("bridge-made-here"))
            .expect("the store")
            .with_file_name("lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&store)
            .unwrap();
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let mut create = Box::pin(net.sandbox("web").create());
        assert!(futures::poll!(&mut create).is_pending());
        common::eventually("its holder runs", Duration::from_secs(10), async || {
            holders().len() == holders_before.len() + 1
        })
        .await;
        drop(create);
        drop(lock);
        // The spawner thread, where clones are made on it, may not have run
        // the clone yet: let it finish its queue (it ends a holder nobody
        // claims), then wait for the end.
        podnet::internals::flush_spawner().await.unwrap();
        let took = common::eventually(
            "the cancelled holder ends",
            Duration::from_secs(10),
            async || holders() == holders_before,
        )
        .await;
        eprintln!("cancelled holder gone after {took:?}");
        assert_eq!(snapshot(&ctx.nl).await, before);
        // Nothing claims a name or an address any more.
        assert!(files_under(&ctx.state).iter().all(|f| {
            let f = f.to_string_lossy();
            !f.contains("/addr/") && !f.contains("/sandbox/")
        }));
        // And the name is free again.
        let pod = net.sandbox("web").create().await.unwrap();
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// PIDs of live holders of this test's namespace (not other tests', not zombies).
fn holders() -> HashSet<u32> {
    common::holders_of(&common::network_key_prefix())
        .into_iter()
        .map(|(pid, _)| pid as u32)
        .collect()
}

#[test]
fn a_network_shards_its_sandboxes_over_bridges_that_reach_each_other() {
    in_netns(|ctx| async move {
        let before = snapshot(&ctx.nl).await;
        let net = network(&ctx, "pn0").await;
        // The address decides the bridge: 1,020 addresses a shard, the
        // first on the network's own bridge; shard k hangs on (k - 1) / 2.
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let a = net.sandbox("a").create().await.unwrap();
        // Address 1,030 of the pool: shard 1.
        let b = net.sandbox("b").ip(ip("10.88.4.6")).create();
        let b = b.await.unwrap();
        // Address 5,200: shard 5, whose parent 2 is made with it.
        let c = net.sandbox("c").ip(ip("10.88.20.80")).create();
        let c = c.await.unwrap();
        let set = |names: &[&str]| -> std::collections::BTreeSet<String> {
            names.iter().map(|n| (*n).to_owned()).collect()
        };
        assert_eq!(
            ports(&ctx.nl, "pn0").await,
            set(&[a.host_interface(), "pn0.1p", "pn0.2p"])
        );
        assert_eq!(
            ports(&ctx.nl, "pn0.1").await,
            set(&[b.host_interface(), "pn0.1s"])
        );
        assert_eq!(ports(&ctx.nl, "pn0.2").await, set(&["pn0.2s", "pn0.5p"]));
        assert_eq!(
            ports(&ctx.nl, "pn0.5").await,
            set(&[c.host_interface(), "pn0.5s"])
        );
        // Every pod reaches every other by address, across shards. A port
        // per pair: a listener just closed may still be open for a moment in
        // a child that another test's thread forked (until its exec closes
        // it), so binding the same port again at once can fail (EADDRINUSE).
        let pods = [&a, &b, &c];
        for (i, to) in pods.iter().enumerate() {
            for (j, from) in pods.iter().enumerate() {
                if i == j {
                    continue;
                }
                let port = 9100 + u16::try_from(i * pods.len() + j).unwrap();
                let l = to
                    .run(move || TcpListener::bind(("0.0.0.0", port)))
                    .await
                    .unwrap()
                    .unwrap();
                let got = serve_once(l);
                let msg = format!("{}-to-{}", from.name(), to.name());
                assert!(
                    send_from(from, &to.ip().to_string(), port, &msg).await,
                    "{msg}"
                );
                assert_eq!(got.join().unwrap(), msg);
            }
        }
        // The host reaches a pod of a shard (through the gateway's bridge).
        let l = c
            .run(|| TcpListener::bind("0.0.0.0:9001"))
            .await
            .unwrap()
            .unwrap();
        let got = serve_once(l);
        let mut s = TcpStream::connect((c.ip(), 9001)).unwrap();
        s.write_all(b"host").unwrap();
        drop(s);
        assert_eq!(got.join().unwrap(), "host");
        // Concurrent creates in a shard that does not exist yet (3, from
        // address 3,072) make it once, hung on shard 1.
        let many: Vec<_> = join_all((2..22).map(|i| {
            net.sandbox(format!("m{i}"))
                .ip(ip(&format!("10.88.12.{i}")))
                .create()
        }))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("20 creates in shard 3");
        assert_eq!(ports(&ctx.nl, "pn0.3").await.len(), 21);
        assert!(ports(&ctx.nl, "pn0.1").await.contains("pn0.3p"));
        // gc deletes a veth of no sandbox on a shard's bridge.
        let tag = tag_of(&a);
        let stray = format!("zz-{tag}");
        let shard5 = common::link_index(&ctx.nl, "pn0.5").await.unwrap();
        ctx.nl
            .link()
            .add(
                rtnetlink::LinkVeth::new(&stray, "zzpeer")
                    .controller(shard5)
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let report = net.gc().await.unwrap();
        assert_eq!(report.links, vec![stray]);
        // A shard's bridge left without its alias (its maker died between
        // the two requests) and with no port is adopted, not refused.
        ctx.nl
            .link()
            .add(rtnetlink::LinkBridge::new("pn0.7").build())
            .execute()
            .await
            .unwrap();
        let g = net.sandbox("g").ip(ip("10.88.28.10")).create();
        let g = g.await.expect("a create in shard 7 adopts its bridge");
        assert!(ports(&ctx.nl, "pn0.7").await.contains(g.host_interface()));
        assert!(ports(&ctx.nl, "pn0.3").await.contains("pn0.7p"));
        // A shard is no network's bridge: refused, and nothing changes.
        let before_refusal = snapshot(&ctx.nl).await;
        let err = common::build_network(&ctx.state, "pn0.1", "10.89.0.0/16")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        assert_eq!(snapshot(&ctx.nl).await, before_refusal);
        g.remove().await.unwrap();
        for p in many.iter().chain([&a, &b, &c]) {
            p.remove().await.unwrap();
        }
        assert_eq!(ports(&ctx.nl, "pn0.3").await, set(&["pn0.3s", "pn0.7p"]));
        // Removing the network takes its shards and trunks with it.
        net.remove().await.unwrap();
        assert_eq!(snapshot(&ctx.nl).await, before);
    });
}

/// Whether a legacy ethtool flag (`ETHTOOL_GGRO`, `ETHTOOL_GTSO`) is on
/// for link `name` in this thread's namespace.
fn ethtool_get(name: &str, cmd: u32) -> bool {
    use nix::libc;
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut value = EthtoolValue { cmd, data: 0 };
    // SAFETY: plain data; zeroes are valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: the ifreq and the value it points to outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), 0x8946, &mut ifr) };
    assert_eq!(rc, 0, "SIOCETHTOOL {cmd:#x} {name}");
    value.data != 0
}
const GRO: u32 = 0x2b;
const TSO: u32 = 0x1e;

/// Interfaces with an IPv6 address in this thread's namespace (not
/// `/proc/net`, which is the main thread's).
fn ipv6_interfaces() -> HashSet<String> {
    std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect()
}

#[test]
fn ports_flood_no_ipv6_and_sandboxes_past_900_receive_by_napi() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        // Address 2 of the pool, and address 968.
        let a = net.sandbox("a").create().await.unwrap();
        let ip: IpAddr = "10.88.3.200".parse().unwrap();
        let b = net.sandbox("b").ip(ip).create().await.unwrap();
        // The first 900 addresses keep TSO on their host port and eth0
        // receives through the CPU's backlog; past them, eth0 receives by
        // NAPI (GRO on, TSO off on the sending host port), so a flood to
        // many ports is not cut at the backlog's 1,000 packets.
        assert!(!a.run(|| ethtool_get("eth0", GRO)).await.unwrap());
        assert!(ethtool_get(a.host_interface(), TSO));
        assert!(b.run(|| ethtool_get("eth0", GRO)).await.unwrap());
        assert!(!ethtool_get(b.host_interface(), TSO));
        // IPv4 only: neither end of a veth has an IPv6 address (so no DAD,
        // MLD or router solicitation floods the bridge), also once the
        // kernel has seen their carrier (which would give them one).
        for pod in [&a, &b] {
            let up = LinkAttribute::OperState(netlink_packet_route::link::State::Up);
            let t = std::time::Instant::now();
            while !common::link(&ctx.nl, pod.host_interface())
                .await
                .is_some_and(|l| l.attributes.contains(&up))
            {
                assert!(t.elapsed() < Duration::from_secs(5), "host end never up");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let inside = pod.run(ipv6_interfaces).await.unwrap();
            // IPv6 is there (::1 on lo): its absence on eth0 means something.
            assert!(inside.contains("lo"), "{inside:?}");
            assert!(!inside.contains("eth0"), "{inside:?}");
            assert!(!ipv6_interfaces().contains(pod.host_interface()));
        }
        a.remove().await.unwrap();
        b.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn commands_run_inside_however_they_are_spawned_and_may_switch_user() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("a").create().await.unwrap();
        let inside = std::fs::read_link(pod.netns_path()).unwrap();
        let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let ns_of = |out: std::process::Output| -> std::path::PathBuf {
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().trim().into()
        };
        // Spawned from this thread, moved inside for the call and back.
        let out = pod
            .command("readlink")
            .arg("/proc/self/ns/net")
            .output()
            .await
            .unwrap();
        assert_eq!(ns_of(out), inside);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            here
        );
        let mut child = pod.command("sleep").arg("0").spawn().unwrap();
        assert!(child.wait().await.unwrap().success());
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            here
        );
        // Through the inner tokio command: the child joins by itself.
        let mut cmd = pod.command("readlink");
        cmd.arg("/proc/self/ns/net");
        let out = cmd.inner_mut().output().await.unwrap();
        assert_eq!(ns_of(out), inside);
        // Another user, where this user namespace maps one (as root, not
        // under `unshare --map-root-user`, which maps only 0).
        let mapped = std::fs::read_to_string("/proc/self/uid_map")
            .unwrap()
            .lines()
            .any(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                f.len() == 3 && f[0] <= 65534 && 65534 < f[0] + f[2]
            });
        if mapped {
            let out = pod
                .command("id")
                .arg("-u")
                .uid(65534)
                .gid(65534)
                .output()
                .await
                .unwrap();
            assert_eq!(ns_of(out), std::path::PathBuf::from("65534"));
        } else {
            eprintln!("uid 65534 is not mapped here: the uid part is skipped");
        }
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// Whether this process holds an fd to the namespace `ns` ("net:[…]").
fn holds_fd_to(ns: &std::path::Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == ns))
}

#[test]
fn a_removed_sandbox_namespace_is_let_go_soon_after() {
    in_netns(|ctx| async move {
        let net = network(&ctx, "pn0").await;
        let pod = net.sandbox("a").create().await.unwrap();
        let ns = std::fs::read_link(pod.netns_path()).unwrap();
        assert!(!holds_fd_to(&ns));
        pod.remove().await.unwrap();
        // Kept for a moment, so namespaces are destroyed in batches (other
        // tests' removals may fill a batch at any time, so when is not
        // asserted), then let go: never leaked.
        let took = common::eventually(
            &format!("{ns:?} let go"),
            Duration::from_secs(10),
            async || !holds_fd_to(&ns),
        )
        .await;
        eprintln!("namespace let go after {took:?}");
        net.remove().await.unwrap();
    });
}
