//! The rootless path, for real: without privilege every entry point fails
//! fast; in private namespaces the whole path works; on the shared rootless
//! host a second process finds, re-attaches to and adds to what a first one
//! left, publishes a port below 1024, has its pods' outside names forwarded
//! from the namespace it came from, lets pods reach beyond it with egress,
//! and tears the host down.
//!
//! Its own binary (`harness = false`) because entering a user namespace
//! needs a single-threaded process: `main` runs each claim in turn, a
//! function of its own, and stops at the first that fails. CI runs it as an
//! unprivileged user; run as root it skips the "without privilege" part.
//! It runs itself again as child processes: one for private namespaces, one
//! that makes the shared rootless host and exits before this one joins it.
//!
//! ```text
//! cargo test --test rootless
//! setpriv --reuid=nobody --regid=nogroup --clear-groups target/debug/deps/rootless-*
//! ```
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::net::TcpListener;
use std::path::Path;

use common::{listen_in, send_from, serve_once, FakeUpstream};
use podnet::{DnsUpstream, Error, Network, Phase, Sandbox};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Counts the claims that held, saying each.
struct Passed(u32);

impl Passed {
    fn ok(&mut self, claim: &str) {
        println!("rootless: {claim} ... ok");
        self.0 += 1;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The state directory of this run (children are told it), so two runs
    // at once do not share one.
    let state = match args.get(2) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("podnet-rootless-test-{}", std::process::id())),
    };
    match args.get(1).map(String::as_str) {
        Some("--private") => return private(&state.with_extension("private")),
        Some("--shared-first") => return shared_first(&state),
        _ => {}
    }
    let mut passed = Passed(0);
    // A shared rootless host of this test's own, never the user's real one;
    // the children inherit it. (Still single-threaded: setting is sound.)
    let host_dir =
        std::env::temp_dir().join(format!("podnet-rootless-host-{}", std::process::id()));
    std::env::set_var("PODNET_STATE_DIR", &host_dir);

    if nix::unistd::geteuid().is_root() {
        println!("rootless: running as root, so the unprivileged check is skipped here");
    } else {
        without_privilege_every_entry_point_fails_fast_having_made_nothing(&state);
        passed.ok("without privilege every entry point fails fast, having made nothing");
    }

    the_whole_path_works_in_private_namespaces(&state);
    passed.ok("the whole path works in private namespaces");

    // However this ends, the test's shared host goes.
    let _teardown = Teardown;
    a_first_process_makes_the_shared_host_and_leaves_a_persistent_sandbox(&state);
    passed.ok("a first process makes the shared host and leaves a persistent sandbox");
    let (udp, tcp) = FakeUpstream::bind_loopback();
    podnet::rootless::enter().expect("join the shared rootless host");
    let fake = FakeUpstream::serve(udp, tcp);
    runtime().block_on(async {
        let net = common::network_builder(&state, "pnshared", &["10.88.0.0/16"])
            .dns_upstream(DnsUpstream::Servers(vec![fake.addr]))
            .build()
            .await
            .expect("build network in the shared rootless host");
        let first = a_second_process_sees_the_first_ones_sandbox_and_reattaches(&net).await;
        passed.ok("a second process sees the first one's sandbox and re-attaches");
        let second =
            a_second_process_adds_a_sandbox_from_the_same_pool_on_the_same_bridge(&net, &first)
                .await;
        passed.ok("a second process adds a sandbox from the same pool, on the same bridge");
        a_port_below_1024_is_published_on_the_rootless_host(&second).await;
        passed.ok("a port below 1024 is published on the rootless host");
        outside_names_are_forwarded_from_the_namespace_the_process_left(&second, &fake).await;
        passed.ok("outside names are forwarded from the namespace the process left");
        first.remove().await.unwrap();
        second.remove().await.unwrap();
        net.remove().await.unwrap();
        pods_reach_beyond_the_shared_rootless_host_with_egress(&state).await;
        passed.ok("pods reach beyond the shared rootless host with egress");
    });
    the_shared_host_is_torn_down_once();
    passed.ok("the shared host is torn down once");
    let _ = std::fs::remove_dir_all(&state);
    println!("rootless: {} passed, 0 failed", passed.0);
}

/// Without privilege, building a network is refused, naming the ways to
/// get it, and makes no state directory.
fn without_privilege_every_entry_point_fails_fast_having_made_nothing(state: &Path) {
    // A current-thread runtime starts no thread, so enter() still works after it.
    let err = runtime()
        .block_on(common::build_network(state, "pn0", "10.88.0.0/16"))
        .unwrap_err();
    assert!(matches!(err, Error::NotPermitted { .. }), "{err}");
    let text = err.to_string();
    for way in [
        "root",
        "unshare --user --map-root-user --net",
        "rootless::enter()",
    ] {
        assert!(text.contains(way), "{text} does not name {way}");
    }
    assert!(!state.exists(), "a refused build made {}", state.display());
}

/// The whole path, in a child process (enter_private and the shared
/// enter() cannot both happen in one process): see [`private`].
fn the_whole_path_works_in_private_namespaces(state: &Path) {
    assert!(run_self("--private", state), "private rootless run failed");
}

/// A first process makes the shared rootless host, a persistent sandbox
/// "first" on it, and exits: see [`shared_first`].
fn a_first_process_makes_the_shared_host_and_leaves_a_persistent_sandbox(state: &Path) {
    assert!(
        run_self("--shared-first", state),
        "first shared rootless process failed"
    );
}

/// This binary run again as a child doing `part` (see `main`) with state
/// directory `state`; whether it succeeded.
fn run_self(part: &str, state: &Path) -> bool {
    std::process::Command::new(std::env::current_exe().unwrap())
        .arg(part)
        .arg(state)
        .status()
        .unwrap()
        .success()
}

/// Joined to the same namespaces, this process lists the first one's
/// sandbox, running, and re-attaches to it.
async fn a_second_process_sees_the_first_ones_sandbox_and_reattaches(net: &Network) -> Sandbox {
    let listed = net.sandboxes().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "first");
    assert_eq!(listed[0].phase, Phase::Running);
    net.open_sandbox("first").await.expect("re-attach")
}

/// A sandbox of this process gets another address of the same pool, and
/// reaches the first one's by it: they share one bridge.
async fn a_second_process_adds_a_sandbox_from_the_same_pool_on_the_same_bridge(
    net: &Network,
    first: &Sandbox,
) -> Sandbox {
    let second = net.sandbox("second").create().await.expect("create second");
    assert_ne!(first.ip(), second.ip(), "one pool: distinct addresses");
    reaches_by_ip(&second, first).await;
    second
}

/// A port mapping on the rootless host, below 1024: this user namespace
/// owns the host namespace, so binding 80 is allowed, and a client of the
/// host reaches the sandbox through it.
async fn a_port_below_1024_is_published_on_the_rootless_host(second: &Sandbox) {
    let published = second
        .add_port(podnet::PortMapping::tcp(80, 9001))
        .await
        .expect("publish port 80 rootless");
    assert_eq!(published[0].host.port(), 80);
    let l = listen_in(second, "0.0.0.0:9001").await;
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        std::io::Write::write_all(&mut s, b"through the mapping").unwrap();
    });
    let mut got = String::new();
    std::io::Read::read_to_string(
        &mut std::net::TcpStream::connect("127.0.0.1:80").unwrap(),
        &mut got,
    )
    .unwrap();
    assert_eq!(got, "through the mapping");
    server.join().unwrap();
}

/// Egress on the shared rootless host, as root does it: `build()` turns on
/// forwarding in the host namespace (the user namespace's own) and makes
/// the masquerade table there, and a pod reaches a server in a namespace
/// beyond that host (over a veth of the test's own, `common::Outside`),
/// which sees the host's uplink address.
async fn pods_reach_beyond_the_shared_rootless_host_with_egress(state: &Path) {
    let (conn, nl, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    let _outside = common::Outside::start(&nl, "up0").await;
    let net = common::network_builder(state, "pnegress", &["10.88.0.0/16"])
        .dns(false)
        .egress(true)
        .enable_forwarding(true)
        .build()
        .await
        .expect("build a network with egress on the shared rootless host");
    let pod = net.sandbox("out").create().await.unwrap();
    let seen = pod
        .run(|| {
            let addr = (common::Outside::V4, common::Outside::PORT);
            let mut s = std::net::TcpStream::connect(addr)?;
            let mut seen = String::new();
            std::io::Read::read_to_string(&mut s, &mut seen)?;
            Ok::<_, std::io::Error>(seen)
        })
        .await
        .unwrap()
        .expect("reach the outside");
    assert_eq!(seen, common::Outside::HOST_V4);
    pod.remove().await.unwrap();
    net.remove().await.unwrap();
}

/// Tearing the shared host down says it was there; the second time, that
/// it is gone.
fn the_shared_host_is_torn_down_once() {
    assert!(
        podnet::rootless::teardown().unwrap(),
        "the shared host was there"
    );
    assert!(!podnet::rootless::teardown().unwrap(), "and is gone");
}

/// A member process of `from` connects to `to`'s address, and `to` sees it
/// come from `from`'s address.
async fn reaches_by_ip(from: &Sandbox, to: &Sandbox) {
    let l = listen_in(to, "0.0.0.0:9000").await;
    let ok = send_from(from, &to.ip().to_string(), 9000, "hi").await;
    assert!(ok, "{} could not reach {}", from.name(), to.name());
    let (_, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), from.ip());
}

struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = podnet::rootless::teardown();
    }
}

async fn shared_network(state: &Path) -> Network {
    common::build_network(state, "pnshared", "10.88.0.0/16")
        .await
        .expect("build network in the shared rootless host")
}

/// The first process of the shared host: a persistent sandbox, then exit.
fn shared_first(state: &Path) {
    podnet::rootless::enter().expect("make the shared rootless host");
    runtime().block_on(async {
        let net = shared_network(state).await;
        let pod = net
            .sandbox("first")
            .persistent(true)
            .create()
            .await
            .expect("create first");
        assert_eq!(pod.phase(), Phase::Running);
    });
}

/// The whole path inside private namespaces, a claim at a time: mapped to
/// root inside, two running sandboxes with distinct addresses of a dual
/// stack network, members sharing localhost, one sandbox reaching the
/// other, removal.
fn private(state: &Path) {
    // A fake upstream on this machine's own loopback, bound before the
    // process leaves its network namespace.
    let (udp, tcp) = FakeUpstream::bind_loopback();
    podnet::rootless::enter_private().expect("rootless::enter_private");
    assert!(nix::unistd::geteuid().is_root(), "mapped to root inside");
    let fake = FakeUpstream::serve(udp, tcp);
    the_socket_maker_holds_only_stdio_and_its_socket_pair();
    runtime().block_on(async {
        let net = common::network_builder(state, "pn0", &["10.88.0.0/16", "fd00:88::/64"])
            .dns_upstream(DnsUpstream::Servers(vec![fake.addr]))
            .build()
            .await
            .expect("build network rootless");
        let a = net.sandbox("a").create().await.expect("create a");
        let b = net.sandbox("b").create().await.expect("create b");
        assert_eq!(a.phase(), Phase::Running);
        assert_ne!(a.ip(), b.ip());
        members_share_localhost(&a).await;
        reaches_by_ip(&b, &a).await;
        outside_names_are_forwarded_from_the_namespace_the_process_left(&a, &fake).await;
        a.remove().await.unwrap();
        b.remove().await.unwrap();
        assert_eq!(a.phase(), Phase::Succeeded);
        net.remove().await.unwrap();
    });
}

/// The `podnet-outer` child of this process keeps none of its fds (the
/// fake upstream's sockets were open when it was forked): only 0–2 (on
/// `/dev/null`) and 3, its end of the socket pair.
fn the_socket_maker_holds_only_stdio_and_its_socket_pair() {
    let me = std::process::id().to_string();
    let outer = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
            stat.contains("(podnet-outer)") && after.split_whitespace().nth(1) == Some(&me)
        })
        .expect("a podnet-outer child");
    // Their targets are not ours to read from inside the user namespace.
    let mut fds: Vec<u32> = std::fs::read_dir(outer.join("fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2, 3]);
}

/// glibc in `pod` resolves a name that is not the network's through the
/// network's DNS, which forwards it to `fake`, on the loopback of the
/// namespace this process was in before it entered rootless ones: over
/// UDP, and over TCP for an answer too big for UDP (glibc asks again over
/// TCP once the truncated answer comes).
async fn outside_names_are_forwarded_from_the_namespace_the_process_left(
    pod: &Sandbox,
    fake: &FakeUpstream,
) {
    let out = pod
        .command("getent")
        .args(["ahostsv4", "example.test"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("198.18.0.99 "), "over UDP: {text:?}");
    let out = pod
        .command("getent")
        .args(["ahostsv4", "big.test"])
        .output()
        .await
        .unwrap();
    let addrs: std::collections::BTreeSet<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(addrs.len(), 100, "over TCP: {addrs:?}");
    assert_eq!(fake.count("example.test"), 1);
}

/// A member thread of `pod` serves on its 127.0.0.1, and a member process
/// reaches it there.
async fn members_share_localhost(pod: &Sandbox) {
    let l: TcpListener = listen_in(pod, "127.0.0.1:8080").await;
    let server = serve_once(l);
    assert!(send_from(pod, "127.0.0.1", 8080, "local").await);
    assert_eq!(server.join().unwrap(), "local");
}
