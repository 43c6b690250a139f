//! What a sandbox is and does, end to end: what create wires and remove
//! unwires, who reaches a sandbox (the host, its members, other sandboxes),
//! addresses and pools, bad input, the ends of holders, the veths of removed
//! sandboxes (deleted in the background, in batches), shards, entering a
//! sandbox and running commands in it.
//!
//! Each test runs in a network namespace of its own (see `common::in_netns`).
//! Members are real processes (`bash`, `cat`) and threads; checks use our
//! own netlink dumps.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    eventually, files_under, in_netns, listen_in, network, ports, send_from, serve_once, snapshot,
    Ctx,
};
use futures::future::join_all;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use podnet::{Error, Network, Phase, Sandbox};

/// Sandboxes `<prefix>0`.. `<prefix>{n-1}`, made at once.
async fn create_many(net: &Network, prefix: &str, n: usize) -> Vec<Sandbox> {
    join_all((0..n).map(|i| net.sandbox(format!("{prefix}{i}")).create()))
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{n} creates: {e}"))
}

/// Remove `pods` at once, their veths' deletions held back until all of
/// them are queued, so that they reach the kernel together; then wait for
/// the deletions.
async fn remove_queued(net: &Network, pods: &[Sandbox]) {
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

/// Remove `pods`, one after the other, then `net`.
async fn remove_all<'a>(net: &Network, pods: impl IntoIterator<Item = &'a Sandbox>) {
    for p in pods {
        p.remove().await.unwrap();
    }
    net.remove().await.unwrap();
}

/// The tag of `pod`'s network: its veth is `<name>-<tag>`, and the veths
/// of its removed sandboxes are `<tag>~...` until they are deleted.
fn tag_of(pod: &Sandbox) -> String {
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

/// `names` as a set, as [`ports`] gives them.
fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// The test's network and a sandbox "web" on it.
async fn web(ctx: &Ctx) -> (Network, Sandbox) {
    let net = network(ctx).await;
    let pod = net.sandbox("web").create().await.expect("create");
    (net, pod)
}

/// The test's network and sandboxes "a" and "b" on it.
async fn a_and_b(ctx: &Ctx) -> (Network, Sandbox, Sandbox) {
    let net = network(ctx).await;
    let a = net.sandbox("a").create().await.unwrap();
    let b = net.sandbox("b").create().await.unwrap();
    (net, a, b)
}

#[test]
fn a_created_sandbox_runs_with_the_first_address_of_the_pool() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        assert_eq!(pod.phase(), Phase::Running);
        assert_eq!(pod.ip().to_string(), "10.88.0.2");
        assert_eq!(pod.gateway().to_string(), "10.88.0.1");
        assert_eq!(pod.name(), "web");
        assert!(pod.netns_path().exists());
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_holder_names_itself_podnet_pause() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        // Named by its first instruction, which it may not have run yet.
        let comm = || std::fs::read_to_string(format!("/proc/{}/comm", pod.holder_pid())).unwrap();
        eventually(
            "the holder names itself",
            Duration::from_secs(10),
            async || comm().trim() == "podnet-pause",
        )
        .await;
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_sandbox_veth_is_a_bridge_port_with_one_queue_each_way() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
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
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn inside_a_sandbox_eth0_has_its_address_and_a_default_route_via_the_gateway() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
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
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn the_host_reaches_a_sandbox_through_the_bridge() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        let server = serve_once(listen_in(&pod, "0.0.0.0:7000").await);
        let mut s = TcpStream::connect((pod.ip(), 7000)).unwrap();
        s.write_all(b"from host").unwrap();
        drop(s);
        assert_eq!(server.join().unwrap(), "from host");
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_removed_sandbox_has_succeeded_and_removing_it_again_is_fine() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        pod.remove().await.expect("remove");
        assert_eq!(pod.phase(), Phase::Succeeded);
        pod.remove().await.expect("remove is idempotent");
        net.remove().await.unwrap();
    });
}

#[test]
fn a_removed_sandbox_leaves_no_port_nor_record_and_its_network_no_file() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        pod.remove().await.expect("remove");
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        let records = common::state_entries(&ctx, &["sandbox"]);
        assert!(records.is_empty(), "{records:?}");
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
        let net = network(&ctx).await;
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
fn members_of_a_sandbox_share_its_localhost() {
    in_netns(|ctx| async move {
        let (net, a) = web(&ctx).await;
        // Member 1 (a thread inside) serves on a's 127.0.0.1.
        let server = serve_once(listen_in(&a, "127.0.0.1:8080").await);
        // Member 2 (a process inside a) reaches it over localhost.
        assert!(send_from(&a, "127.0.0.1", 8080, "hello").await);
        assert_eq!(server.join().unwrap(), "hello");
        remove_all(&net, [&a]).await;
    });
}

#[test]
fn a_server_on_the_localhost_of_a_sandbox_is_out_of_reach_of_outsiders() {
    in_netns(|ctx| async move {
        let (net, a, b) = a_and_b(&ctx).await;
        let l = listen_in(&a, "127.0.0.1:8081").await;
        // Outsiders: the test's own namespace, and another sandbox.
        let err = TcpStream::connect("127.0.0.1:8081").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(!send_from(&b, "127.0.0.1", 8081, "x").await);
        // Nor by a's IP: the server is bound to a's lo only.
        assert!(!send_from(&b, &a.ip().to_string(), 8081, "x").await);
        drop(l);
        remove_all(&net, [&a, &b]).await;
    });
}

#[test]
fn sandboxes_reach_each_other_by_address_and_bind_the_same_port() {
    in_netns(|ctx| async move {
        let (net, a, b) = a_and_b(&ctx).await;
        assert_ne!(a.ip(), b.ip());
        let sa = serve_once(listen_in(&a, "0.0.0.0:9000").await);
        let sb = serve_once(listen_in(&b, "0.0.0.0:9000").await);
        assert!(send_from(&b, &a.ip().to_string(), 9000, "b-to-a").await);
        assert!(send_from(&a, &b.ip().to_string(), 9000, "a-to-b").await);
        assert_eq!(sa.join().unwrap(), "b-to-a");
        assert_eq!(sb.join().unwrap(), "a-to-b");
        remove_all(&net, [&a, &b]).await;
    });
}

#[test]
fn a_socket_made_inside_by_run_keeps_working_from_this_thread() {
    in_netns(|ctx| async move {
        let (net, a, b) = a_and_b(&ctx).await;
        let lb = listen_in(&b, "0.0.0.0:9001").await;
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
        remove_all(&net, [&a, &b]).await;
    });
}

/// Remove `pods` all at once.
async fn remove_at_once(pods: &[Sandbox]) {
    join_all(pods.iter().map(|p| p.remove()))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("removes");
}

#[test]
fn fifty_concurrent_creates_get_the_first_fifty_addresses() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
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
        remove_at_once(&pods).await;
        net.remove().await.unwrap();
    });
}

#[test]
fn fifty_concurrent_removals_leave_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let before = snapshot(&ctx.nl).await;
        let pods = create_many(&net, "p", 50).await;
        remove_at_once(&pods).await;
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        // Their veths are deleted in the background.
        settled(&net).await;
        assert_eq!(snapshot(&ctx.nl).await, before);
        // Their holders die with this process, so they are ended in the
        // background, in one batch, soon after.
        let alive = || {
            pods.iter()
                .filter(|p| common::process_exists(p.holder_pid()))
                .count()
        };
        let took = eventually("the holders end", Duration::from_secs(5), async || {
            alive() == 0
        })
        .await;
        eprintln!("holders ended {took:?} after the removals");
        net.remove().await.unwrap();
        assert!(files_under(&ctx.state).is_empty());
    });
}

/// What [`remove_a_while_held`] leaves.
struct Removed<H> {
    net: Network,
    /// A sandbox that reached a's server before the removal.
    b: Sandbox,
    /// a's veth (its name before the removal renamed it).
    veth: String,
    /// a's server: a's address, port 9000.
    addr: SocketAddr,
    /// What a's renamed veth is named after: `<tag>~`.
    dying: String,
    /// a's server, still open.
    listener: TcpListener,
    /// The hold on the network's veth deletions.
    held: H,
}

/// The test's network with sandboxes "a" (serving on its address) and "b",
/// which reaches a's server; then a removed, the deletion of its veth held
/// back.
async fn remove_a_while_held(ctx: &Ctx) -> Removed<impl Sized> {
    let (net, a, b) = a_and_b(ctx).await;
    let dying = format!("{}~", tag_of(&a));
    let veth = a.host_interface().to_owned();
    let addr = SocketAddr::new(a.ip(), 9000);
    let listener = listen_in(&a, addr).await;
    // b reaches a before the removal.
    reach(&b, addr, Duration::from_secs(5)).await.unwrap();
    let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
    a.remove().await.unwrap();
    Removed {
        net,
        b,
        veth,
        addr,
        dying,
        listener,
        held,
    }
}

/// Whether a thread of `from` connects to `addr` within `within`.
async fn reach(from: &Sandbox, addr: SocketAddr, within: Duration) -> std::io::Result<TcpStream> {
    from.run(move || TcpStream::connect_timeout(&addr, within))
        .await
        .unwrap()
}

#[test]
fn a_removed_sandbox_veth_is_renamed_down_and_off_the_bridge_until_deleted() {
    in_netns(|ctx| async move {
        let r = remove_a_while_held(&ctx).await;
        // The veth is still there, but off the bridge, down and renamed.
        assert_eq!(podnet::internals::veth_deletions_waiting(&r.net), 1);
        let names = links_starting(&ctx, &r.dying).await;
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(names[0].len(), 15, "{names:?}");
        assert!(!common::links(&ctx.nl).await.contains(&r.veth));
        assert!(!ports(&ctx.nl, "pn0").await.contains(&names[0]));
        let renamed = common::link(&ctx.nl, &names[0]).await.unwrap();
        assert!(!renamed.header.flags.contains(LinkFlags::Up));
        // So the old sandbox, whose listener is still open, is out of reach.
        assert!(reach(&r.b, r.addr, Duration::from_millis(300))
            .await
            .is_err());
        drop(r.listener);
        // Then deleted, in a batch of its own.
        drop(r.held);
        settled(&r.net).await;
        assert_eq!(podnet::internals::veth_batches(&r.net), [(1, true)]);
        assert!(links_starting(&ctx, &r.dying).await.is_empty());
        remove_all(&r.net, [&r.b]).await;
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn a_removed_sandbox_frees_its_name_and_address_at_once() {
    in_netns(|ctx| async move {
        let r = remove_a_while_held(&ctx).await;
        // The name and the address are free while the old veth is still
        // there: a new "a" gets both, and is reached, not the old one.
        // (From a new sandbox: b's neighbour entry still has the old one's
        // MAC address for a while, as after any reuse of an address.)
        let again = r.net.sandbox("a").ip(r.addr.ip()).create().await.unwrap();
        assert_eq!(again.host_interface(), r.veth);
        let l2 = listen_in(&again, r.addr).await;
        let accepted = std::thread::spawn(move || l2.accept().map(|(_, peer)| peer));
        let c = r.net.sandbox("c").create().await.unwrap();
        reach(&c, r.addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(accepted.join().unwrap().unwrap().ip(), c.ip());
        drop(r.listener);
        drop(r.held);
        settled(&r.net).await;
        remove_all(&r.net, [&again, &r.b, &c]).await;
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn removing_a_sandbox_whose_veth_is_gone_succeeds_with_nothing_to_delete() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        let gone = common::link_index(&ctx.nl, pod.host_interface()).await;
        ctx.nl.link().del(gone.unwrap()).execute().await.unwrap();
        pod.remove().await.unwrap();
        settled(&net).await;
        // No deletion was sent.
        assert_eq!(podnet::internals::veth_batches(&net), []);
        net.remove().await.unwrap();
        assert!(files_under(&ctx.state).is_empty());
    });
}

#[test]
fn removals_queued_behind_a_deletion_in_flight_go_to_the_kernel_together() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pods = create_many(&net, "r", 5).await;
        let keep = net.sandbox("keep").create().await.unwrap();
        // Links that are not the removals' own stay: another sandbox's
        // veth and a link of somebody else's.
        common::add_veth(&ctx.nl, "other0", "other1").await;
        // Queued behind a deletion held in flight; one of them is deleted
        // meanwhile, under its new name, by somebody else.
        let tag = tag_of(&keep);
        let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
        for p in &pods {
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
        assert_eq!(ports(&ctx.nl, "pn0").await, set(&[keep.host_interface()]));
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
        let net = network(&ctx).await;
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
fn start_time(pid: u32) -> u64 {
    common::proc_stat(i32::try_from(pid).unwrap())
        .expect("process exists")
        .1
}

/// The alias a remover gives a veth it renamed: `podnet removed by PID:START`.
fn removed_by(pid: u32, start: u64) -> Option<String> {
    Some(format!("podnet removed by {pid}:{start}"))
}

/// A process that has ended (its PID free, or someone else's by now), and
/// one that runs.
fn dead_and_live() -> (u32, std::process::Child) {
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let live = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    (dead_pid, live)
}

/// Add a veth for each of `cases` (name, alias, whether gc deletes it), as
/// a remover leaves them that died before its deletion in the background
/// (while a process keeps the namespace): renamed, with the remover in the
/// alias. Then gc deletes exactly those it should, and leaves `pod`'s veth.
async fn gc_takes_exactly(
    ctx: &Ctx,
    net: &Network,
    pod: &Sandbox,
    cases: &[(String, Option<String>, bool)],
) {
    for (i, (name, alias, _)) in cases.iter().enumerate() {
        common::add_veth(&ctx.nl, name, &format!("peer{i}")).await;
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
    for (name, _, gone) in cases {
        assert_eq!(!links.contains(name), *gone, "{name}");
    }
    assert!(links.contains(pod.host_interface()));
}

#[test]
fn gc_deletes_the_renamed_veths_whose_remover_died_or_failed_to() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        let tag = tag_of(&pod);
        let (dead, mut live) = dead_and_live();
        let me = std::process::id();
        let cases = [
            (format!("{tag}~00000000000a"), removed_by(dead, 1), true),
            // Its PID now someone else's.
            (
                format!("{tag}~00000000000b"),
                removed_by(live.id(), 1),
                true,
            ),
            // This process's, not queued: a deletion that failed.
            (
                format!("{tag}~00000000000c"),
                removed_by(me, start_time(me)),
                true,
            ),
        ];
        gc_takes_exactly(&ctx, &net, &pod, &cases).await;
        live.kill().unwrap();
        live.wait().unwrap();
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn gc_leaves_the_renamed_veths_of_a_live_remover_and_links_podnet_did_not_name() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        let tag = tag_of(&pod);
        let (dead, mut live) = dead_and_live();
        let cases = [
            // A live remover's is its own to delete.
            (
                format!("{tag}~00000000000d"),
                removed_by(live.id(), start_time(live.id())),
                false,
            ),
            // Not podnet's doing.
            (format!("{tag}~00000000000e"), None, false),
            (format!("{tag}~0000000000"), removed_by(dead, 1), false),
            (format!("{tag}~00000000000z"), removed_by(dead, 1), false),
        ];
        gc_takes_exactly(&ctx, &net, &pod, &cases).await;
        live.kill().unwrap();
        live.wait().unwrap();
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn gc_of_another_handle_leaves_the_veths_this_process_is_deleting() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let other = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let dying = format!("{}~", tag_of(&pod));
        let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
        pod.remove().await.unwrap();
        let report = other.gc().await.unwrap();
        assert!(
            !report.links.iter().any(|l| l.starts_with(&dying)),
            "took a queued deletion for a failed one: {report:?}"
        );
        drop(held);
        settled(&net).await;
        assert!(!common::links(&ctx.nl)
            .await
            .iter()
            .any(|l| l.starts_with(&dying)));
        net.remove().await.unwrap();
    });
}

#[test]
fn network_remove_waits_for_the_veths_of_removed_sandboxes() {
    in_netns(|ctx| async move {
        let before = snapshot(&ctx.nl).await;
        let net = network(&ctx).await;
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
        let net = network(&ctx).await;
        let pods = create_many(&net, "k", 3).await;
        let prefix = format!("{}~", tag_of(&pods[0]));
        let held = podnet::internals::hold_veth_deletions(&net).expect("none in flight");
        for p in &pods {
            p.remove().await.unwrap();
        }
        // Their holders are ended a moment after the removals, and the
        // kernel then deletes each veth with its namespace, before the
        // deletions held back are sent.
        eventually(
            "the kernel deletes the renamed veths",
            Duration::from_secs(10),
            async || links_starting(&ctx, &prefix).await.is_empty(),
        )
        .await;
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
        let net = network(&ctx).await;
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

/// A network with an IPv4 and an IPv6 pool, on bridge pn6.
async fn dual_stack(ctx: &Ctx) -> Network {
    common::network_builder(&ctx.state, "pn6", &["10.88.0.0/24", "fd00:88::/64"])
        .build()
        .await
        .unwrap()
}

#[test]
fn an_ipv6_pool_gives_sandboxes_addresses_usable_at_once() {
    in_netns(|ctx| async move {
        let net = dual_stack(&ctx).await;
        assert_eq!(net.gateways().len(), 2);
        let a = net.sandbox("a").create().await.unwrap();
        let b = net.sandbox("b").create().await.unwrap();
        assert_eq!(a.ipv6().unwrap().to_string(), "fd00:88::2");
        assert_eq!(b.ipv6().unwrap().to_string(), "fd00:88::3");
        // Usable at once (no DAD wait): b reaches a over IPv6 right away.
        let server = serve_once(listen_in(&a, "[::]:9000").await);
        assert!(send_from(&b, &a.ipv6().unwrap().to_string(), 9000, "v6").await);
        assert_eq!(server.join().unwrap(), "v6");
        remove_all(&net, [&a, &b]).await;
    });
}

#[test]
fn a_sandbox_gets_the_mtu_it_asks_for() {
    in_netns(|ctx| async move {
        let net = dual_stack(&ctx).await;
        let a = net.sandbox("a").mtu(1400).create().await.unwrap();
        assert_eq!(eth0_mtu(&a).await, "1400");
        remove_all(&net, [&a]).await;
    });
}

/// MTU of the sandbox's eth0, as `ip` sees it inside (over netlink: a
/// process inside reads /sys of the mount namespace it came from, whose
/// sysfs shows the host's interfaces).
async fn eth0_mtu(sandbox: &Sandbox) -> String {
    let out = sandbox
        .command("ip")
        .args(["-o", "link", "show", "eth0"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "mtu");
    words
        .next()
        .unwrap_or_else(|| panic!("no mtu in {text:?}"))
        .to_owned()
}

/// MTU of `name` in the test's namespace.
async fn link_mtu(ctx: &Ctx, name: &str) -> Option<u32> {
    common::link(&ctx.nl, name)
        .await?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
}

#[test]
fn without_an_mtu_a_network_takes_its_default_routes_interfaces() {
    in_netns(|ctx| async move {
        common::add_veth(&ctx.nl, "up9", "up9p").await;
        for name in ["up9", "up9p"] {
            let index = common::link_index(&ctx.nl, name).await.unwrap();
            let up = rtnetlink::LinkUnspec::new_with_index(index)
                .mtu(9000)
                .up()
                .build();
            ctx.nl.link().set(up).execute().await.unwrap();
        }
        let index = common::link_index(&ctx.nl, "up9").await.unwrap();
        let default = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .output_interface(index)
            .build();
        ctx.nl.route().add(default).execute().await.unwrap();
        let net = common::network_builder(&ctx.state, "pnm0", &["10.88.0.0/24"])
            .build()
            .await
            .unwrap();
        let a = net.sandbox("a").create().await.unwrap();
        assert_eq!(eth0_mtu(&a).await, "9000");
        assert_eq!(link_mtu(&ctx, "pnm0").await, Some(9000));
        remove_all(&net, [&a]).await;
    });
}

#[test]
fn without_an_mtu_or_a_default_route_a_network_has_the_kernels_1500() {
    in_netns(|ctx| async move {
        let net = common::network_builder(&ctx.state, "pnm0", &["10.88.0.0/24"])
            .build()
            .await
            .unwrap();
        let a = net.sandbox("a").create().await.unwrap();
        assert_eq!(eth0_mtu(&a).await, "1500");
        remove_all(&net, [&a]).await;
    });
}

#[test]
fn static_addresses_are_honoured_and_skipped_by_the_pool() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let a = net
            .sandbox("a")
            .ip("10.88.3.7".parse().unwrap())
            .create()
            .await
            .unwrap();
        assert_eq!(a.ip().to_string(), "10.88.3.7");
        let b = net.sandbox("b").create().await.unwrap();
        assert_eq!(b.ip().to_string(), "10.88.0.2");
        remove_all(&net, [&a, &b]).await;
    });
}

/// A network with a sandbox "taken" and a link "notbr0" (a veth, not a
/// bridge) to collide with, and what a refusal must leave as it is.
struct Refusals {
    net: Network,
    taken: Sandbox,
    before: common::Snapshot,
    files: Vec<PathBuf>,
}

impl Refusals {
    async fn new(ctx: &Ctx) -> Refusals {
        let net = network(ctx).await;
        let taken = net.sandbox("taken").create().await.unwrap();
        common::add_veth(&ctx.nl, "notbr0", "notbr1").await;
        Refusals {
            net,
            taken,
            before: snapshot(&ctx.nl).await,
            files: common::tree_under(&ctx.state),
        }
    }

    /// Links, addresses and state are as they were, and the network still
    /// works; then clean up.
    async fn nothing_changed(self, ctx: &Ctx) {
        assert_eq!(
            snapshot(&ctx.nl).await,
            self.before,
            "links or addresses changed"
        );
        assert_eq!(common::tree_under(&ctx.state), self.files, "state changed");
        let ok = self.net.sandbox("s").create().await.unwrap();
        remove_all(&self.net, [&ok, &self.taken]).await;
    }
}

#[test]
fn bad_sandbox_names_are_refused() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        for name in ["Web", "a_b", "-a", "a-", "", "abcdefghijklm"] {
            let err = r.net.sandbox(name).create().await.unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
        }
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn a_name_in_use_is_refused() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        let err = r.net.sandbox("taken").create().await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn an_address_outside_the_pool_or_reserved_in_it_is_refused_saying_why() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        let cases = [
            ("198.18.0.5", "outside"),
            ("10.88.0.0", "network"),
            ("10.88.0.1", "gateway"),
            ("10.88.255.255", "broadcast"),
        ];
        for (ip, why) in cases {
            let err = r
                .net
                .sandbox("s")
                .ip(ip.parse().unwrap())
                .create()
                .await
                .unwrap_err();
            assert!(matches!(err, Error::AddressNotInPool { .. }), "{ip}: {err}");
            assert!(err.to_string().contains(why), "{err}");
        }
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn an_address_in_use_is_refused_naming_its_owner() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        let err = r
            .net
            .sandbox("s")
            .ip(r.taken.ip())
            .create()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::AddressTaken { ref owner, .. } if owner == "taken"),
            "{err}"
        );
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn an_address_of_a_family_without_a_pool_is_refused() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        let err = r
            .net
            .sandbox("s")
            .ip("fd00::5".parse().unwrap())
            .create()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn a_tiny_mtu_is_refused() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        let err = r.net.sandbox("s").mtu(10).create().await.unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn a_network_on_a_link_that_is_not_a_bridge_is_refused_naming_its_kind() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        let err = common::build_network(&ctx.state, "notbr0", "10.88.0.0/16")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotABridge { .. }), "{err}");
        assert!(err.to_string().contains("veth"), "{err}");
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn bad_bridge_names_are_refused() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        for bridge in ["much-too-long-name", "a/b"] {
            let err = common::build_network(&ctx.state, bridge, "198.19.0.0/24")
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{bridge}: {err}");
        }
        r.nothing_changed(&ctx).await;
    });
}

#[test]
fn a_network_needs_one_ipv4_pool_with_room_for_a_sandbox() {
    in_netns(|ctx| async move {
        let r = Refusals::new(&ctx).await;
        let too_small = &["198.19.0.0/31"][..];
        let none: &[&str] = &[];
        let two = &["198.19.0.0/24", "198.19.1.0/24"][..];
        for subnets in [too_small, none, two] {
            let err = common::network_builder(&ctx.state, "pn1", subnets)
                .build()
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { .. }),
                "{subnets:?}: {err}"
            );
        }
        r.nothing_changed(&ctx).await;
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
        remove_all(&net, [&b]).await;
    });
}

/// The test's network and a sandbox "web" whose holder was killed, once
/// its sandbox says so.
async fn killed(ctx: &Ctx) -> (Network, Sandbox) {
    let (net, pod) = web(ctx).await;
    common::sigkill(pod.holder_pid());
    assert_eq!(pod.wait().await, Phase::Failed);
    (net, pod)
}

#[test]
fn phase_sees_a_killed_holder_within_100_ms_and_for_good() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        assert_eq!(pod.phase(), Phase::Running);
        let killed = Instant::now();
        common::sigkill(pod.holder_pid());
        // phase() alone (no wait) sees the death within 100 ms of the kill,
        // polled every 2 ms; the first phase it gives after Running is
        // Failed.
        let mut phase = Phase::Running;
        let within = Duration::from_millis(100).saturating_sub(killed.elapsed());
        eventually("phase() sees the SIGKILL", within, async || {
            phase = pod.phase();
            phase != Phase::Running
        })
        .await;
        assert_eq!(phase, Phase::Failed);
        eprintln!("phase() was Failed {:?} after SIGKILL", killed.elapsed());
        assert_eq!(pod.phase(), Phase::Failed, "Failed for good");
        assert_eq!(pod.wait().await, Phase::Failed);
        assert_eq!(pod.phase(), Phase::Failed);
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_sandbox_whose_holder_died_refuses_commands_enter_and_run() {
    in_netns(|ctx| async move {
        let (net, pod) = killed(&ctx).await;
        let err = pod.command("true").status().await.unwrap_err();
        assert!(
            matches!(err, Error::HolderDied { ref status, .. } if status.contains("SIGKILL")),
            "{err}"
        );
        let err = pod.enter().unwrap_err();
        assert!(matches!(err, Error::HolderDied { .. }), "{err}");
        let err = pod.run(|| ()).await.unwrap_err();
        assert!(matches!(err, Error::HolderDied { .. }), "{err}");
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_sandbox_whose_holder_died_is_removed_and_its_name_and_address_reused() {
    in_netns(|ctx| async move {
        let (net, pod) = killed(&ctx).await;
        pod.remove().await.expect("remove a failed sandbox");
        assert!(ports(&ctx.nl, "pn0").await.is_empty());
        // The name and the address can be used again at once.
        let again = net.sandbox("web").ip(pod.ip()).create().await.unwrap();
        assert_eq!(again.ip(), pod.ip());
        remove_all(&net, [&again]).await;
    });
}

/// The network namespace this thread is in.
fn my_netns() -> PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").unwrap()
}

/// The network namespace of `pod`.
fn netns_of(pod: &Sandbox) -> PathBuf {
    std::fs::read_link(pod.netns_path()).unwrap()
}

#[test]
fn enter_moves_this_thread_in_and_back_and_guards_nest() {
    in_netns(|ctx| async move {
        let (net, a, b) = a_and_b(&ctx).await;
        let here = my_netns();
        {
            let _in_a = a.enter().unwrap();
            assert_eq!(my_netns(), netns_of(&a));
            // Sockets made inside stay inside after leaving.
            let l = TcpListener::bind("127.0.0.1:5000").unwrap();
            {
                let _in_b = b.enter().unwrap();
                assert_eq!(my_netns(), netns_of(&b));
                assert!(TcpStream::connect("127.0.0.1:5000").is_err());
            }
            assert_eq!(my_netns(), netns_of(&a));
            drop(l);
        }
        assert_eq!(my_netns(), here);
        remove_all(&net, [&a, &b]).await;
    });
}

#[test]
fn an_enter_guard_dropped_out_of_order_panics_having_restored_the_thread() {
    in_netns(|ctx| async move {
        let (net, a, b) = a_and_b(&ctx).await;
        let here = my_netns();
        let outer = a.enter().unwrap();
        let inner = b.enter().unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(outer)));
        assert!(panicked.is_err());
        assert_eq!(my_netns(), here);
        drop(inner); // does nothing: the outer guard restored the thread already
        assert_eq!(my_netns(), here);
        // And entering works as before.
        let again = a.enter().unwrap();
        drop(again);
        assert_eq!(my_netns(), here);
        remove_all(&net, [&a, &b]).await;
    });
}

#[test]
fn remove_on_drop_cleans_up_when_a_test_panics() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
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
        eventually("the holder is reaped", Duration::from_secs(5), async || {
            !common::process_exists(pid)
        })
        .await;
        net.remove().await.unwrap();
    });
}

#[test]
fn a_persistent_holder_is_ended_and_reaped_before_remove_returns() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        // A persistent holder would outlive this process if ending it were
        // left for later.
        let kept = net.sandbox("kept").persistent(true).create().await.unwrap();
        let kept_pid = kept.holder_pid();
        kept.remove().await.unwrap();
        assert!(
            !common::process_exists(kept_pid),
            "persistent holder still there"
        );
        net.remove().await.unwrap();
    });
}

/// The test's network and a sandbox "plain" (its holder dies with this
/// process) just removed: its holder is ended with the namespaces, in the
/// background. Its holder's PID and its address.
async fn plain_removed(ctx: &Ctx) -> (Network, Sandbox, u32, IpAddr) {
    let net = network(ctx).await;
    let plain = net.sandbox("plain").create().await.unwrap();
    let (pid, ip) = (plain.holder_pid(), plain.ip());
    plain.remove().await.unwrap();
    (net, plain, pid, ip)
}

#[test]
fn a_holder_that_dies_with_this_process_ends_soon_after_remove_returns() {
    in_netns(|ctx| async move {
        let (net, _plain, pid, _) = plain_removed(&ctx).await;
        let took = eventually(
            "the holder ends and is reaped",
            Duration::from_secs(5),
            async || !common::process_exists(pid),
        )
        .await;
        eprintln!("ended {took:?} after remove() returned");
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_takes_no_holder_still_ending_for_an_orphan_of_a_new_sandbox_of_its_name() {
    in_netns(|ctx| async move {
        let (net, _plain, pid, ip) = plain_removed(&ctx).await;
        // The name and address are free at once.
        let again = net.sandbox("plain").ip(ip).create().await.unwrap();
        assert_ne!(again.holder_pid(), pid);
        // The old holder bears the same name.
        let report = net.gc().await.unwrap();
        assert!(report.holders.is_empty(), "{report:?}");
        remove_all(&net, [&again]).await;
    });
}

#[test]
fn wait_does_not_wait_for_the_holder_of_a_removed_sandbox() {
    in_netns(|ctx| async move {
        let (net, plain, _, _) = plain_removed(&ctx).await;
        // The sandbox is gone, whether its holder has ended or not.
        let waited = tokio::time::timeout(Duration::from_secs(1), plain.wait()).await;
        assert_eq!(waited, Ok(Phase::Succeeded));
        net.remove().await.unwrap();
    });
}

#[test]
fn dropping_a_sandbox_handle_keeps_the_sandbox() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("kept").create().await.unwrap();
        let (pid, veth) = (pod.holder_pid(), pod.host_interface().to_owned());
        drop(pod);
        assert!(common::process_exists(pid));
        assert!(ports(&ctx.nl, "pn0").await.contains(&veth));
        // Clean up by hand, as a runtime restarting would (re-attach is gc's business).
        common::sigkill(pid);
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
        let net = network(&ctx).await;
        let pod = net.sandbox("kept").create().await.unwrap();
        let pid = pod.holder_pid();
        drop(pod);
        common::sigkill(pid);
        // We are its parent: until we reap it, it stays in /proc as a zombie.
        eventually(
            &format!("holder {pid} reaped"),
            Duration::from_secs(5),
            async || !common::process_exists(pid),
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
fn a_network_built_again_reuses_its_bridge_and_pool() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let a = net.sandbox("a").create().await.unwrap();
        // Built again (another program, or a restart): same bridge, same pool.
        let again = network(&ctx).await;
        let b = again.sandbox("b").create().await.unwrap();
        assert_ne!(a.ip(), b.ip());
        assert_eq!(ports(&ctx.nl, "pn0").await.len(), 2);
        remove_all(&net, [&a, &b]).await;
    });
}

#[test]
fn a_second_network_in_one_namespace_takes_the_same_sandbox_names() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let a = net.sandbox("a").create().await.unwrap();
        let other = common::build_network(&ctx.state, "pn1", "198.19.0.0/24")
            .await
            .unwrap();
        let a1 = other.sandbox("a").create().await.unwrap();
        assert_ne!(a1.host_interface(), a.host_interface());
        remove_all(&net, [&a]).await;
        remove_all(&other, [&a1]).await;
    });
}

#[test]
fn a_network_with_sandboxes_left_is_busy_for_any_handle() {
    in_netns(|ctx| async move {
        let (net, a) = web(&ctx).await;
        let again = network(&ctx).await;
        let err = again.remove().await.unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        remove_all(&net, [&a]).await;
    });
}

#[test]
fn public_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn check(net: &Network, pod: &Sandbox) {
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
        let net = network(&ctx).await;
        // Learn the network's interface suffix, then take "web"'s veth name.
        let probe = net.sandbox("probe").create().await.unwrap();
        let suffix = probe
            .host_interface()
            .trim_start_matches("probe")
            .to_owned();
        probe.remove().await.unwrap();
        // (Its veth is deleted and its holder ended in the background: not
        // part of what follows.)
        settled(&net).await;
        eventually(
            "the probe's holder ends",
            Duration::from_secs(5),
            async || common::holders().is_empty(),
        )
        .await;
        common::add_veth(&ctx.nl, &format!("web{suffix}"), "squat1").await;
        let before = snapshot(&ctx.nl).await;
        let files_before = common::tree_under(&ctx.state);
        let holders_before = common::holders();
        // Fails at the veth, after the address and the holder were made.
        let err = net.sandbox("web").create().await.unwrap_err();
        assert!(
            matches!(err, Error::AlreadyExists { what: "link", .. }),
            "{err}"
        );
        assert_eq!(snapshot(&ctx.nl).await, before);
        assert_eq!(common::tree_under(&ctx.state), files_before);
        assert_eq!(
            common::holders(),
            holders_before,
            "the holder was not stopped"
        );
        net.remove().await.unwrap();
    });
}

#[test]
fn a_sandbox_made_on_a_thread_that_ends_lives_on() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
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
        let state =
            common::proc_stat(i32::try_from(pod.holder_pid()).unwrap()).map(|(state, _)| state);
        assert!(matches!(state, Some('S' | 'R')), "holder state: {state:?}");
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_cancelled_create_leaves_nothing_behind() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let before = snapshot(&ctx.nl).await;
        let holders_before = common::holders();
        // Another holder of the store's lock (as another process's create
        // or gc would be) makes the create wait for it, after its holder is
        // cloned; then the caller gives up.
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(common::store_dir(&ctx).join("lock"))
            .unwrap();
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).unwrap();
        let mut create = Box::pin(net.sandbox("web").create());
        assert!(futures::poll!(&mut create).is_pending());
        eventually("its holder runs", Duration::from_secs(10), async || {
            common::holders().len() == holders_before.len() + 1
        })
        .await;
        drop(create);
        drop(lock);
        // The spawner thread, where clones are made on it, may not have run
        // the clone yet: let it finish its queue (it ends a holder nobody
        // claims), then wait for the end.
        podnet::internals::flush_spawner().await.unwrap();
        let took = eventually(
            "the cancelled holder ends",
            Duration::from_secs(10),
            async || common::holders() == holders_before,
        )
        .await;
        eprintln!("cancelled holder gone after {took:?}");
        assert_eq!(snapshot(&ctx.nl).await, before);
        // Nothing claims a name or an address any more.
        let claims = common::state_entries(&ctx, &["addr", "sandbox"]);
        assert!(claims.is_empty(), "{claims:?}");
        // And the name is free again.
        let pod = net.sandbox("web").create().await.unwrap();
        remove_all(&net, [&pod]).await;
    });
}

/// The test's network with "a" (on the network's own bridge), "b" at
/// address 1,030 of the pool (shard 1) and "c" at address 5,200 (shard 5,
/// whose parent 2 is made with it). The address decides the bridge: 1,020
/// addresses a shard, the first on the network's own bridge; shard k hangs
/// on (k - 1) / 2.
async fn sharded(ctx: &Ctx) -> (Network, [Sandbox; 3]) {
    let net = network(ctx).await;
    let a = net.sandbox("a").create().await.unwrap();
    let b = net.sandbox("b").ip(ip("10.88.4.6")).create().await.unwrap();
    let c = net.sandbox("c").ip(ip("10.88.20.80")).create();
    let c = c.await.unwrap();
    (net, [a, b, c])
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_sandbox_hangs_on_the_shard_bridge_its_address_decides() {
    in_netns(|ctx| async move {
        let (net, [a, b, c]) = sharded(&ctx).await;
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
        remove_all(&net, [&a, &b, &c]).await;
    });
}

#[test]
fn sandboxes_on_different_shards_reach_each_other_by_address() {
    in_netns(|ctx| async move {
        let (net, pods) = sharded(&ctx).await;
        // A port per pair: a listener just closed may still be open for a
        // moment in a child that another test's thread forked (until its
        // exec closes it), so binding the same port again at once can fail
        // (EADDRINUSE).
        for (i, to) in pods.iter().enumerate() {
            for (j, from) in pods.iter().enumerate() {
                if i == j {
                    continue;
                }
                let port = 9100 + u16::try_from(i * pods.len() + j).unwrap();
                let got = serve_once(listen_in(to, ("0.0.0.0", port)).await);
                let msg = format!("{}-to-{}", from.name(), to.name());
                assert!(
                    send_from(from, &to.ip().to_string(), port, &msg).await,
                    "{msg}"
                );
                assert_eq!(got.join().unwrap(), msg);
            }
        }
        remove_all(&net, &pods).await;
    });
}

#[test]
fn the_host_reaches_a_sandbox_of_a_shard_through_the_gateway_bridge() {
    in_netns(|ctx| async move {
        let (net, pods) = sharded(&ctx).await;
        let c = &pods[2];
        let got = serve_once(listen_in(c, "0.0.0.0:9001").await);
        let mut s = TcpStream::connect((c.ip(), 9001)).unwrap();
        s.write_all(b"host").unwrap();
        drop(s);
        assert_eq!(got.join().unwrap(), "host");
        remove_all(&net, &pods).await;
    });
}

#[test]
fn concurrent_creates_in_a_shard_that_does_not_exist_make_it_once() {
    in_netns(|ctx| async move {
        let (net, pods) = sharded(&ctx).await;
        // Shard 3, from address 3,072, hung on shard 1.
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
        remove_all(&net, many.iter().chain(&pods)).await;
    });
}

#[test]
fn gc_deletes_a_veth_of_no_sandbox_on_a_shard_bridge() {
    in_netns(|ctx| async move {
        let (net, pods) = sharded(&ctx).await;
        let stray = format!("zz-{}", tag_of(&pods[0]));
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
        remove_all(&net, &pods).await;
    });
}

#[test]
fn a_shard_bridge_left_without_its_alias_is_adopted_and_keeps_its_trunk() {
    in_netns(|ctx| async move {
        let (net, pods) = sharded(&ctx).await;
        let m = net.sandbox("m").ip(ip("10.88.12.2")).create();
        let m = m.await.unwrap();
        // Shard 7's bridge, left without its alias (its maker died between
        // the two requests) and with no port.
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
        g.remove().await.unwrap();
        m.remove().await.unwrap();
        // A shard's bridge keeps its trunks while the network lives.
        assert_eq!(ports(&ctx.nl, "pn0.3").await, set(&["pn0.3s", "pn0.7p"]));
        remove_all(&net, &pods).await;
    });
}

#[test]
fn a_shard_bridge_is_no_network_bridge() {
    in_netns(|ctx| async move {
        let (net, pods) = sharded(&ctx).await;
        let before = snapshot(&ctx.nl).await;
        let err = common::build_network(&ctx.state, "pn0.1", "198.19.0.0/16")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        assert_eq!(snapshot(&ctx.nl).await, before);
        remove_all(&net, &pods).await;
    });
}

#[test]
fn removing_a_network_takes_its_shards_and_trunks_with_it() {
    in_netns(|ctx| async move {
        let before = snapshot(&ctx.nl).await;
        let (net, pods) = sharded(&ctx).await;
        remove_all(&net, &pods).await;
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

/// The test's network with "a" at address 2 of the pool and "b" at
/// address 968.
async fn first_and_past_900(ctx: &Ctx) -> (Network, Sandbox, Sandbox) {
    let net = network(ctx).await;
    let a = net.sandbox("a").create().await.unwrap();
    let b = net
        .sandbox("b")
        .ip(ip("10.88.3.200"))
        .create()
        .await
        .unwrap();
    (net, a, b)
}

#[test]
fn sandboxes_past_the_first_900_addresses_receive_by_napi() {
    in_netns(|ctx| async move {
        let (net, a, b) = first_and_past_900(&ctx).await;
        // The first 900 addresses keep TSO on their host port and eth0
        // receives through the CPU's backlog; past them, eth0 receives by
        // NAPI (GRO on, TSO off on the sending host port), so a flood to
        // many ports is not cut at the backlog's 1,000 packets.
        assert!(!a.run(|| ethtool_get("eth0", GRO)).await.unwrap());
        assert!(ethtool_get(a.host_interface(), TSO));
        assert!(b.run(|| ethtool_get("eth0", GRO)).await.unwrap());
        assert!(!ethtool_get(b.host_interface(), TSO));
        remove_all(&net, [&a, &b]).await;
    });
}

#[test]
fn neither_end_of_a_veth_has_an_ipv6_address_even_once_up() {
    in_netns(|ctx| async move {
        let (net, a, b) = first_and_past_900(&ctx).await;
        // IPv4 only: neither end of a veth has an IPv6 address (so no DAD,
        // MLD or router solicitation floods the bridge), also once the
        // kernel has seen their carrier (which would give them one).
        let up = LinkAttribute::OperState(netlink_packet_route::link::State::Up);
        for pod in [&a, &b] {
            eventually("the host end is up", Duration::from_secs(5), async || {
                common::link(&ctx.nl, pod.host_interface())
                    .await
                    .is_some_and(|l| l.attributes.contains(&up))
            })
            .await;
            let inside = pod.run(ipv6_interfaces).await.unwrap();
            // IPv6 is there (::1 on lo): its absence on eth0 means something.
            assert!(inside.contains("lo"), "{inside:?}");
            assert!(!inside.contains("eth0"), "{inside:?}");
            assert!(!ipv6_interfaces().contains(pod.host_interface()));
        }
        remove_all(&net, [&a, &b]).await;
    });
}

/// What a command that succeeded printed, trimmed, as a path.
fn printed(out: std::process::Output) -> PathBuf {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().into()
}

#[test]
fn a_command_runs_inside_and_leaves_this_thread_where_it_was() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        let here = my_netns();
        // Spawned from this thread, moved inside for the call and back.
        let out = pod
            .command("readlink")
            .arg("/proc/self/ns/net")
            .output()
            .await
            .unwrap();
        assert_eq!(printed(out), netns_of(&pod));
        assert_eq!(my_netns(), here);
        let mut child = pod.command("sleep").arg("0").spawn().unwrap();
        assert!(child.wait().await.unwrap().success());
        assert_eq!(my_netns(), here);
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_command_spawned_by_its_inner_tokio_command_joins_by_itself() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        let mut cmd = pod.command("readlink");
        cmd.arg("/proc/self/ns/net");
        let out = cmd.inner_mut().output().await.unwrap();
        assert_eq!(printed(out), netns_of(&pod));
        remove_all(&net, [&pod]).await;
    });
}

#[test]
fn a_command_may_run_as_another_user_where_one_is_mapped() {
    in_netns(|ctx| async move {
        let (net, pod) = web(&ctx).await;
        // As root, not under `unshare --map-root-user`, which maps only 0.
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
            assert_eq!(printed(out), PathBuf::from("65534"));
        } else {
            eprintln!("uid 65534 is not mapped here: the uid part is skipped");
        }
        remove_all(&net, [&pod]).await;
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
        let (net, pod) = web(&ctx).await;
        let ns = netns_of(&pod);
        assert!(!holds_fd_to(&ns));
        pod.remove().await.unwrap();
        // Kept for a moment, so namespaces are destroyed in batches (other
        // tests' removals may fill a batch at any time, so when is not
        // asserted), then let go: never leaked.
        let took = eventually(
            &format!("{ns:?} let go"),
            Duration::from_secs(10),
            async || !holds_fd_to(&ns),
        )
        .await;
        eprintln!("namespace let go after {took:?}");
        net.remove().await.unwrap();
    });
}
