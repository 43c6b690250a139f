//! Port mappings, end to end: what is published and reported, who reaches
//! a mapping (the host, the pod itself, other pods), TCP half-closes, UDP
//! flows, refusals, the ends of mappings (with the holder, the sandbox, the
//! handle, the creating process), the kernel's tables and rules per process
//! and per network, and the choice of forwarder.
//!
//! Each test runs in a network namespace of its own (see `common::in_netns`):
//! that namespace is the network's host, and "the host port" is a port
//! there. Real programs on both ends where it matters: `curl` on the host
//! side, `python3 -m http.server` and a python3 UDP echo server as members
//! of the sandbox.
//!
//! Most tests run twice (a module per test, `userspace` and `kernel`):
//! once with the userspace forwarder, once with the kernel's nf_tables DNAT
//! (forced, so a kernel that refuses fails the test rather than falling
//! back). The kernel runs reach mappings at the bridge's address (loopback
//! destinations are the forwarder's by design) and turn on IPv4 forwarding
//! in the test's own namespace, so arriving traffic (hairpin) is DNATed too.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, in_netns, listen_in, snapshot, Ctx};
use podnet::{Error, Forwarder, GcReport, Network, PortForwarding, PortMapping, Protocol, Sandbox};

const BRIDGE: &str = "pnp0";

/// How long the ends of mappings that come "soon" may take.
const SOON: Duration = Duration::from_secs(5);

/// Which forwarder a run of a test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Userspace,
    Kernel,
}

impl Via {
    fn from_env() -> Via {
        match std::env::var("PODNET_CHILD_VIA").as_deref() {
            Ok("kernel") => Via::Kernel,
            _ => Via::Userspace,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Via::Userspace => "userspace",
            Via::Kernel => "kernel",
        }
    }

    /// The forwarder of a mapping on a non-loopback host address.
    fn forwarder(self) -> Forwarder {
        match self {
            Via::Userspace => Forwarder::Userspace,
            Via::Kernel => Forwarder::Kernel,
        }
    }

    /// Where clients reach host port `port`: loopback for the forwarder,
    /// the bridge's address for the kernel (loopback is never DNATed).
    fn at(self, port: u16) -> SocketAddr {
        let ip = match self {
            Via::Userspace => [127, 0, 0, 1],
            Via::Kernel => [10, 88, 0, 1],
        };
        SocketAddr::from((ip, port))
    }

    /// How many kernel rules a mapping of this run has: prerouting,
    /// output and postrouting, or none.
    fn rules_per_mapping(self) -> usize {
        match self {
            Via::Userspace => 0,
            Via::Kernel => 3,
        }
    }
}

/// Run `$body(Via)` as two tests, `$name::userspace` and `$name::kernel`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn userspace() {
                super::$name(super::Via::Userspace);
            }
            #[test]
            fn kernel() {
                super::$name(super::Via::Kernel);
            }
        }
    };
}

async fn network_at(state: &Path, via: Via) -> Network {
    network_named(state, via, BRIDGE, "10.88.0.0/16").await
}

async fn network_named(state: &Path, via: Via, bridge: &str, subnet: &str) -> Network {
    let how = match via {
        Via::Userspace => PortForwarding::Userspace,
        Via::Kernel => {
            // This test's own namespace: DNATed arriving packets are forwarded.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
            PortForwarding::Kernel
        }
    };
    common::network_builder(state, bridge, &[subnet])
        .port_forwarding(how)
        .build()
        .await
        .expect("build network")
}

async fn network(ctx: &Ctx, via: Via) -> Network {
    network_at(&ctx.state, via).await
}

/// The comments of the network's kernel rules (none without a table).
async fn rules(net: &Network) -> Vec<String> {
    podnet::internals::port_rules(net)
        .await
        .unwrap()
        .unwrap_or_default()
}

/// Whether `addr` can be bound by a TCP listener now, i.e. no listener
/// holds it (std sets SO_REUSEADDR, so connections in TIME_WAIT do not
/// count).
fn tcp_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The TCP mapping on `at` was let go by the call that ended it: this
/// process holds no socket on its port any more, and soon the port can be
/// bound again. (Not at once: a child that another test's thread forked
/// holds copies of this process's sockets until its exec, and on a loaded
/// machine that is long enough to see.)
async fn assert_tcp_let_go(at: SocketAddr) {
    assert!(
        !common::holds_socket_on("tcp", at.port()),
        "this process still has a socket on {at}"
    );
    eventually(&format!("{at} is free"), SOON, async || tcp_free(at)).await;
}

/// Soon, nothing listens on `at` (see [`assert_tcp_let_go`] for why not
/// at once).
async fn assert_unreachable(at: SocketAddr) {
    eventually(&format!("nothing listens on {at}"), SOON, async || {
        TcpStream::connect(at).is_err()
    })
    .await;
}

/// `python3 -m http.server` in `pod` on `port`, serving a directory with
/// `hello.txt`; returns once it answers on the pod's address.
async fn http_server(pod: &Sandbox, port: u16, dir: &Path) -> tokio::process::Child {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("hello.txt"),
        format!("hello from {}\n", pod.name()),
    )
    .unwrap();
    let child = pod
        .command("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "0.0.0.0"])
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 in the sandbox");
    let at = SocketAddr::new(pod.ip(), port);
    eventually("http.server listens", SOON, async || {
        TcpStream::connect(at).is_ok()
    })
    .await;
    child
}

/// `curl` run by a thread of this test's namespace (the host), or by a
/// member of `inside`.
async fn curl(inside: Option<&Sandbox>, url: &str) -> (bool, String) {
    // --noproxy: an http_proxy in the environment must not take the request
    // out of the test's namespace.
    let args = ["-sS", "--noproxy", "*", "--max-time", "10", url];
    let out = match inside {
        Some(pod) => pod.command("curl").args(args).output().await.unwrap(),
        None => tokio::process::Command::new("curl")
            .args(args)
            .output()
            .await
            .unwrap(),
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Fetch `url` with curl (from the host, or from a member of `inside`):
/// it succeeds with web's hello.txt.
async fn assert_hello(inside: Option<&Sandbox>, url: &str, what: &str) {
    let (ok, body) = curl(inside, url).await;
    assert!(ok, "{what}: {url}: {body}");
    assert_eq!(body, "hello from web\n", "{what}: {url}");
}

/// The network of `via` with sandbox "web" publishing TCP 8080 (on every
/// address of the host) to its port 8000.
async fn web(ctx: &Ctx, via: Via) -> (Network, Sandbox) {
    let net = network(ctx, via).await;
    let pod = net
        .sandbox("web")
        .port(PortMapping::tcp(8080, 8000))
        .create()
        .await
        .unwrap();
    (net, pod)
}

/// [`web`], with `python3 -m http.server` serving on its port 8000.
async fn web_serving(ctx: &Ctx, via: Via) -> (Network, Sandbox, tokio::process::Child) {
    let (net, pod) = web(ctx, via).await;
    let server = http_server(&pod, 8000, &ctx.state.join("www")).await;
    (net, pod, server)
}

/// Remove `pod`, then `net`.
async fn remove(net: &Network, pod: &Sandbox) {
    pod.remove().await.unwrap();
    net.remove().await.unwrap();
}

both!(a_tcp_mapping_is_published_as_asked_with_a_rule_per_hook_by_the_kernel);
fn a_tcp_mapping_is_published_as_asked_with_a_rule_per_hook_by_the_kernel(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = web(&ctx, via).await;
        let published = pod.ports();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].protocol, Protocol::Tcp);
        assert_eq!(published[0].host, addr("0.0.0.0:8080"));
        assert_eq!(published[0].pod_port, 8000);
        assert_eq!(published[0].forwarder, via.forwarder());
        // prerouting, output, postrouting; each rule names its sandbox.
        let made = rules(&net).await;
        assert_eq!(made.len(), via.rules_per_mapping(), "{made:?}");
        assert!(made
            .iter()
            .all(|c| c.contains(" web@") && c.contains(" tcp 0.0.0.0:8080 ")));
        remove(&net, &pod).await;
    });
}

both!(curl_reaches_python_http_server_in_the_pod_through_a_tcp_mapping);
fn curl_reaches_python_http_server_in_the_pod_through_a_tcp_mapping(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod, _server) = web_serving(&ctx, via).await;
        // From the host: loopback, and the bridge's address.
        for url in [
            "http://127.0.0.1:8080/hello.txt",
            "http://10.88.0.1:8080/hello.txt",
        ] {
            assert_hello(None, url, "from the host").await;
        }
        remove(&net, &pod).await;
    });
}

both!(a_pod_reaches_its_own_published_port_at_the_gateway);
fn a_pod_reaches_its_own_published_port_at_the_gateway(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod, _server) = web_serving(&ctx, via).await;
        // Hairpin, by the forwarder's socket: see docs/port-forwarding.md.
        assert_hello(Some(&pod), "http://10.88.0.1:8080/hello.txt", "hairpin").await;
        remove(&net, &pod).await;
    });
}

both!(another_pod_reaches_a_published_port_at_the_gateway);
fn another_pod_reaches_a_published_port_at_the_gateway(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod, _server) = web_serving(&ctx, via).await;
        // By the kernel: masqueraded, so the reply comes back through the
        // host.
        let other = net.sandbox("other").create().await.unwrap();
        let url = "http://10.88.0.1:8080/hello.txt";
        assert_hello(Some(&other), url, "from another pod").await;
        other.remove().await.unwrap();
        remove(&net, &pod).await;
    });
}

both!(many_connections_in_a_row_are_each_forwarded);
fn many_connections_in_a_row_are_each_forwarded(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod, _server) = web_serving(&ctx, via).await;
        for _ in 0..20 {
            let mut s = TcpStream::connect(via.at(8080)).unwrap();
            s.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n").unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
            assert!(reply.ends_with("hello from web\n"), "{reply}");
        }
        remove(&net, &pod).await;
    });
}

both!(a_mapping_is_gone_when_remove_returns_and_its_table_with_the_network);
fn a_mapping_is_gone_when_remove_returns_and_its_table_with_the_network(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod, _server) = web_serving(&ctx, via).await;
        pod.remove().await.unwrap();
        // Let go at once; soon nothing listens, and the port is free.
        assert_tcp_let_go(addr("0.0.0.0:8080")).await;
        assert_unreachable(addr("127.0.0.1:8080")).await;
        assert_unreachable(addr("10.88.0.1:8080")).await;
        assert!(pod.ports().is_empty());
        // Its rules went with it, and the table goes with the network.
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
        assert_eq!(podnet::internals::port_rules(&net).await.unwrap(), None);
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
    });
}

/// A server in `pod` on `port` that answers every connection with
/// `answer`, or else the port it was made on, and closes.
async fn echo_port(pod: &Sandbox, port: u16, answer: Option<&'static str>) {
    let l = listen_in(pod, ("0.0.0.0", port)).await;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = match answer {
                Some(a) => write!(s, "{a}"),
                None => write!(s, "{port}"),
            };
        }
    });
}

/// A server in `pod` on each of `ports` that answers every connection with
/// the port it was made on and closes.
async fn port_echoes(pod: &Sandbox, ports: &[u16]) {
    for &port in ports {
        echo_port(pod, port, None).await;
    }
}

fn read_from(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    got
}

/// The network of `via` with sandbox "eph": TCP 7000 on an ephemeral port
/// of 127.0.0.1 and an ephemeral range for TCP 7001-7002; servers on
/// 7000-7004 answer with their port.
async fn eph(ctx: &Ctx, via: Via) -> (Network, Sandbox) {
    let net = network(ctx, via).await;
    let pod = net
        .sandbox("eph")
        .port(PortMapping::tcp(0, 7000).host_ip("127.0.0.1".parse().unwrap()))
        .port(PortMapping::range(Protocol::Tcp, 0..=0, 7001..=7002))
        .create()
        .await
        .unwrap();
    port_echoes(&pod, &[7000, 7001, 7002, 7003, 7004]).await;
    (net, pod)
}

/// Add TCP 9103-9104 to 7003-7004 to `pod`.
async fn add_range(pod: &Sandbox) -> Vec<podnet::PublishedPort> {
    pod.add_port(PortMapping::range(Protocol::Tcp, 9103..=9104, 7003..=7004))
        .await
        .unwrap()
}

both!(ephemeral_ports_and_ranges_are_published_and_reported);
fn ephemeral_ports_and_ranges_are_published_and_reported(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = eph(&ctx, via).await;
        let published = pod.ports();
        assert_eq!(
            published.iter().map(|p| p.pod_port).collect::<Vec<_>>(),
            [7000, 7001, 7002]
        );
        assert_eq!(published[0].host.ip().to_string(), "127.0.0.1");
        // Loopback is the forwarder's whatever the network's choice.
        assert_eq!(published[0].forwarder, Forwarder::Userspace);
        assert_eq!(published[1].forwarder, via.forwarder());
        let mut hosts: Vec<u16> = published.iter().map(|p| p.host.port()).collect();
        assert!(hosts.iter().all(|p| *p != 0), "{published:?}");
        hosts.sort_unstable();
        hosts.dedup();
        assert_eq!(hosts.len(), 3, "{published:?}");
        for p in &published {
            let at = SocketAddr::new("127.0.0.1".parse().unwrap(), p.host.port());
            assert_eq!(read_from(at), p.pod_port.to_string(), "{p}");
            if !p.host.ip().is_loopback() {
                assert_eq!(read_from(via.at(p.host.port())), p.pod_port.to_string());
            }
        }
        remove(&net, &pod).await;
    });
}

both!(a_range_added_to_a_live_sandbox_is_published);
fn a_range_added_to_a_live_sandbox_is_published(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = eph(&ctx, via).await;
        let added = add_range(&pod).await;
        assert_eq!(added.len(), 2);
        assert_eq!(read_from(via.at(9103)), "7003");
        assert_eq!(read_from(via.at(9104)), "7004");
        assert_eq!(pod.ports().len(), 5);
        assert_eq!(rules(&net).await.len(), 4 * via.rules_per_mapping());
        remove(&net, &pod).await;
    });
}

both!(removing_one_mapping_leaves_the_others);
fn removing_one_mapping_leaves_the_others(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = eph(&ctx, via).await;
        let added = add_range(&pod).await;
        // This process serves it (so that it can be seen to let go).
        assert!(common::holds_socket_on("tcp", 9103));
        pod.remove_port(&added[0]).await.unwrap();
        assert_tcp_let_go(addr("0.0.0.0:9103")).await;
        assert_unreachable(via.at(9103)).await;
        assert_eq!(read_from(via.at(9104)), "7004");
        assert_eq!(pod.ports().len(), 4);
        let left = rules(&net).await;
        assert_eq!(left.len(), 3 * via.rules_per_mapping(), "{left:?}");
        assert!(!left.iter().any(|c| c.contains(":9103 ")), "{left:?}");
        assert!(matches!(
            pod.remove_port(&added[0]).await,
            Err(Error::NotFound { .. })
        ));
        remove(&net, &pod).await;
    });
}

both!(a_mapping_on_the_unspecified_ipv6_address_serves_both_families);
fn a_mapping_on_the_unspecified_ipv6_address_serves_both_families(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = eph(&ctx, via).await;
        // `::`: every IPv4 and IPv6 address of the host namespace.
        let dual = pod
            .add_port(PortMapping::tcp(0, 7000).host_ip("::".parse().unwrap()))
            .await
            .unwrap();
        let port = dual[0].host.port();
        assert_eq!(read_from(SocketAddr::from(([127, 0, 0, 1], port))), "7000");
        assert_eq!(
            read_from(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port))),
            "7000"
        );
        // IPv4 clients of `::` reach the pod's IPv4 address by the kernel.
        assert_eq!(dual[0].forwarder, via.forwarder());
        assert_eq!(read_from(via.at(port)), "7000");
        pod.remove_port(&dual[0]).await.unwrap();
        remove(&net, &pod).await;
    });
}

both!(another_handle_sees_the_same_mappings_and_its_remove_frees_them_all);
fn another_handle_sees_the_same_mappings_and_its_remove_frees_them_all(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = eph(&ctx, via).await;
        add_range(&pod).await;
        let published = pod.ports();
        // Another handle of this process.
        let again = net.open_sandbox("eph").await.unwrap();
        assert_eq!(again.ports(), published);
        again.remove().await.unwrap();
        for p in &published {
            assert_tcp_let_go(p.host).await;
        }
        assert!(pod.ports().is_empty());
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
    });
}

/// The network of `via` with sandbox "half" publishing TCP 9200 to its
/// port 80 and 9201 to 81.
async fn half(ctx: &Ctx, via: Via) -> (Network, Sandbox) {
    let net = network(ctx, via).await;
    let pod = net
        .sandbox("half")
        .port(PortMapping::tcp(9200, 80))
        .port(PortMapping::tcp(9201, 81))
        .create()
        .await
        .unwrap();
    (net, pod)
}

/// A connection to `at`, timing out reads after 10 s.
fn connect(at: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(at).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

both!(a_clients_half_close_is_forwarded_to_the_pod);
fn a_clients_half_close_is_forwarded_to_the_pod(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = half(&ctx, via).await;
        // 80: read to EOF, then answer on the same connection.
        let l80 = listen_in(&pod, "0.0.0.0:80").await;
        let server80 = std::thread::spawn(move || {
            let (mut s, _) = l80.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            write!(s, "got {} bytes", got.len()).unwrap();
        });
        let mut c = connect(via.at(9200));
        c.write_all(&[7u8; 100_000]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "got 100000 bytes");
        server80.join().unwrap();
        remove(&net, &pod).await;
    });
}

both!(a_pods_half_close_is_forwarded_to_the_client);
fn a_pods_half_close_is_forwarded_to_the_client(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = half(&ctx, via).await;
        // 81: speak first and shut down writing, then read to EOF.
        let l81 = listen_in(&pod, "0.0.0.0:81").await;
        let server81 = std::thread::spawn(move || {
            let (mut s, _) = l81.accept().unwrap();
            s.write_all(b"banner").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            got
        });
        let mut c = connect(via.at(9201));
        let mut banner = String::new();
        c.read_to_string(&mut banner).unwrap(); // EOF arrives while we may still write
        assert_eq!(banner, "banner");
        c.write_all(b"still writing after your EOF").unwrap();
        drop(c);
        assert_eq!(server81.join().unwrap(), "still writing after your EOF");
        remove(&net, &pod).await;
    });
}

both!(a_client_of_a_pod_port_nothing_listens_on_is_reset_or_refused);
fn a_client_of_a_pod_port_nothing_listens_on_is_reset_or_refused(via: Via) {
    in_netns(move |ctx| async move {
        let (net, pod) = half(&ctx, via).await;
        // Reset (the forwarder accepted first) or refused (the pod's kernel
        // answered the SYN itself, through DNAT).
        pod.add_port(PortMapping::tcp(9202, 82)).await.unwrap();
        match via {
            Via::Userspace => {
                let mut c = connect(via.at(9202));
                let mut buf = [0u8; 1];
                let err = c.read(&mut buf).unwrap_err();
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
            }
            Via::Kernel => {
                let err = TcpStream::connect(via.at(9202)).unwrap_err();
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
            }
        }
        remove(&net, &pod).await;
    });
}

/// A python3 UDP echo server in `pod` on `port`: answers each datagram
/// with it and the source port it came from (`<data> from <port>`).
fn udp_echo(pod: &Sandbox, port: u16) -> tokio::process::Child {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0', {port}))\n\
         while True:\n    d, a = s.recvfrom(65535)\n    s.sendto(d + b' from %d' % a[1], a)\n"
    );
    pod.command("python3")
        .args(["-c", &script])
        .kill_on_drop(true)
        .spawn()
        .expect("python3 in the sandbox")
}

/// Send `msg` from `sock` to `to` until an answer comes (the first may be
/// lost while the server starts); returns the answer.
fn ask(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let answer = format!("{msg} from ");
    for _ in 0..50 {
        sock.send_to(msg.as_bytes(), to).unwrap();
        // Late answers to an earlier ask (resent) are skipped.
        while let Ok(n) = sock.recv(&mut buf) {
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            if got.starts_with(&answer) {
                return got;
            }
        }
    }
    panic!("no answer to {msg:?} from {to}");
}

/// The pod-side source port in an answer of `udp_echo`.
fn seen_port(answer: &str) -> u16 {
    answer.rsplit(' ').next().unwrap().parse().unwrap()
}

/// How long a UDP flow of [`dns`] may be idle: long enough that a loaded
/// machine does not end a flow between two asks that expect it kept.
const IDLE: Duration = Duration::from_secs(2);

/// The network of `via` with sandbox "dns" publishing UDP 5300 to its
/// port 5353 (flows idle for [`IDLE`] end), where a UDP echo server runs;
/// and two clients of the mapping, "a" and "b", with their first answers.
struct Dns {
    net: Network,
    pod: Sandbox,
    _server: tokio::process::Child,
    a: UdpSocket,
    a1: String,
    b: UdpSocket,
    b1: String,
}

impl Dns {
    async fn new(ctx: &Ctx, via: Via) -> Dns {
        let net = network(ctx, via).await;
        let pod = net
            .sandbox("dns")
            .port(PortMapping::udp(5300, 5353).udp_idle_timeout(IDLE))
            .create()
            .await
            .unwrap();
        let _server = udp_echo(&pod, 5353);
        let a = UdpSocket::bind(via.at(0)).unwrap();
        let b = UdpSocket::bind(via.at(0)).unwrap();
        let a1 = ask(&a, via.at(5300), "a1");
        assert!(a1.starts_with("a1 from "), "{a1}");
        let b1 = ask(&b, via.at(5300), "b1");
        assert!(b1.starts_with("b1 from "), "{b1}");
        Dns {
            net,
            pod,
            _server,
            a,
            a1,
            b,
            b1,
        }
    }

    async fn remove(self) {
        remove(&self.net, &self.pod).await;
    }
}

both!(udp_clients_get_a_flow_each_that_they_keep_while_in_use);
fn udp_clients_get_a_flow_each_that_they_keep_while_in_use(via: Via) {
    in_netns(move |ctx| async move {
        let d = Dns::new(&ctx, via).await;
        assert_eq!(d.pod.ports()[0].forwarder, via.forwarder());
        // Two clients, two flows: the pod sees two sources, and each
        // client gets its own answers.
        assert_ne!(seen_port(&d.a1), seen_port(&d.b1));
        // Within the idle timeout, a client keeps its flow.
        let a2 = ask(&d.a, via.at(5300), "a2");
        assert_eq!(a2, format!("a2 from {}", seen_port(&d.a1)));
        d.remove().await;
    });
}

both!(a_large_udp_datagram_goes_through_whole);
fn a_large_udp_datagram_goes_through_whole(via: Via) {
    in_netns(move |ctx| async move {
        let d = Dns::new(&ctx, via).await;
        let big = "x".repeat(8000);
        let answer = ask(&d.b, via.at(5300), &big);
        assert!(
            answer == format!("{big} from {}", seen_port(&d.b1)),
            "{} bytes back",
            answer.len()
        );
        d.remove().await;
    });
}

#[test]
fn the_forwarder_ends_a_udp_flow_left_idle() {
    in_netns(move |ctx| async move {
        let d = Dns::new(&ctx, Via::Userspace).await;
        // A new flow, a new source.
        tokio::time::sleep(IDLE * 3).await;
        let a3 = ask(&d.a, Via::Userspace.at(5300), "a3");
        assert!(a3.starts_with("a3 from "), "{a3}");
        assert_ne!(seen_port(&a3), seen_port(&d.a1), "the idle flow was kept");
        d.remove().await;
    });
}

#[test]
fn the_kernel_keeps_the_client_port_of_a_udp_flow() {
    in_netns(move |ctx| async move {
        // Conntrack keeps the flow (its own UDP timeout): the pod sees the
        // client's own port.
        let d = Dns::new(&ctx, Via::Kernel).await;
        assert_eq!(seen_port(&d.a1), d.a.local_addr().unwrap().port());
        assert_eq!(seen_port(&d.b1), d.b.local_addr().unwrap().port());
        d.remove().await;
    });
}

both!(an_ephemeral_udp_mapping_is_reached_at_the_bridge_address_and_freed_with_its_sandbox);
fn an_ephemeral_udp_mapping_is_reached_at_the_bridge_address_and_freed_with_its_sandbox(via: Via) {
    in_netns(move |ctx| async move {
        let d = Dns::new(&ctx, via).await;
        let added = d.pod.add_port(PortMapping::udp(0, 5353)).await.unwrap();
        let eph = SocketAddr::new("10.88.0.1".parse().unwrap(), added[0].host.port());
        let c = UdpSocket::bind("10.88.0.1:0").unwrap();
        assert!(ask(&c, eph, "c1").starts_with("c1 from "));
        d.pod.remove().await.unwrap();
        // Free once no process holds the forwarder's sockets: a child that
        // another test's thread forked may hold copies until its exec.
        let ephemeral = added[0].host;
        eventually("the removed sandbox's ports are free", SOON, async || {
            UdpSocket::bind("0.0.0.0:5300").is_ok() && UdpSocket::bind(ephemeral).is_ok()
        })
        .await;
        assert!(rules(&d.net).await.is_empty());
        d.net.remove().await.unwrap();
    });
}

/// The network of `via`, with TCP 8081 and UDP 8092 of the host taken
/// by this test (the listener and socket returned).
async fn ports_taken(ctx: &Ctx, via: Via) -> (Network, TcpListener, UdpSocket) {
    let net = network(ctx, via).await;
    let tcp = TcpListener::bind("0.0.0.0:8081").unwrap();
    let udp = UdpSocket::bind("0.0.0.0:8092").unwrap();
    (net, tcp, udp)
}

/// A create of "web" with TCP 8070, then the taken 8081: refused.
async fn create_with_taken_tcp(net: &Network) -> Error {
    net.sandbox("web")
        .port(PortMapping::tcp(8070, 80))
        .port(PortMapping::tcp(8081, 80))
        .create()
        .await
        .unwrap_err()
}

/// A create of "web" with UDP 8091-8093, whose second port is taken:
/// refused.
async fn create_with_taken_udp(net: &Network) -> Error {
    net.sandbox("web")
        .port(PortMapping::range(Protocol::Udp, 8091..=8093, 53..=55))
        .create()
        .await
        .unwrap_err()
}

/// Mappings that make no sense: to port 0, and a range onto one of
/// another length.
fn bad_mappings() -> [PortMapping; 2] {
    [
        PortMapping::tcp(8000, 0),
        PortMapping::range(Protocol::Tcp, 8000..=8001, 80..=82),
    ]
}

both!(a_taken_tcp_host_port_is_a_clear_error_naming_it);
fn a_taken_tcp_host_port_is_a_clear_error_naming_it(via: Via) {
    in_netns(move |ctx| async move {
        let (net, _tcp, _udp) = ports_taken(&ctx, via).await;
        let err = create_with_taken_tcp(&net).await;
        match &err {
            Error::PortInUse {
                sandbox,
                protocol,
                address,
                netns,
                errno,
            } => {
                assert_eq!(sandbox, "web");
                assert_eq!(*netns, podnet::PortNetns::Network);
                assert_eq!(*protocol, Protocol::Tcp);
                assert_eq!(address.to_string(), "0.0.0.0:8081");
                assert_eq!(*errno, nix::errno::Errno::EADDRINUSE);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.errno(), Some(nix::errno::Errno::EADDRINUSE));
        let text = err.to_string();
        assert!(
            text.contains("tcp") && text.contains("0.0.0.0:8081") && text.contains("\"web\""),
            "{text}"
        );
        net.remove().await.unwrap();
    });
}

both!(a_taken_port_of_a_udp_range_is_a_clear_error_naming_it);
fn a_taken_port_of_a_udp_range_is_a_clear_error_naming_it(via: Via) {
    in_netns(move |ctx| async move {
        let (net, _tcp, _udp) = ports_taken(&ctx, via).await;
        let err = create_with_taken_udp(&net).await;
        assert!(
            matches!(&err, Error::PortInUse { address, protocol: Protocol::Udp, .. } if address.port() == 8092),
            "{err:?}"
        );
        net.remove().await.unwrap();
    });
}

both!(a_mapping_to_port_0_or_onto_a_range_of_another_length_is_refused);
fn a_mapping_to_port_0_or_onto_a_range_of_another_length_is_refused(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        for bad in bad_mappings() {
            let err = net.sandbox("web").port(bad).create().await.unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        }
        net.remove().await.unwrap();
    });
}

both!(a_refused_create_changes_nothing_and_frees_the_ports_it_bound);
fn a_refused_create_changes_nothing_and_frees_the_ports_it_bound(via: Via) {
    in_netns(move |ctx| async move {
        let (net, _tcp, _udp) = ports_taken(&ctx, via).await;
        let before = snapshot(&ctx.nl).await;
        let files_before = common::tree_under(&ctx.state);
        create_with_taken_tcp(&net).await;
        create_with_taken_udp(&net).await;
        for bad in bad_mappings() {
            net.sandbox("web").port(bad).create().await.unwrap_err();
        }
        assert_eq!(snapshot(&ctx.nl).await, before);
        assert_eq!(common::tree_under(&ctx.state), files_before);
        assert!(net.sandboxes().await.unwrap().is_empty());
        assert!(common::holders().is_empty());
        // The ports bound before the taken ones are free soon, not at once:
        // see the ephemeral UDP mapping's test.
        eventually(
            "the ports bound before the taken ones are free",
            SOON,
            async || tcp_free(addr("0.0.0.0:8070")) && UdpSocket::bind("0.0.0.0:8091").is_ok(),
        )
        .await;
        // Not even the table: it is made by the first mapping that binds.
        assert_eq!(podnet::internals::port_rules(&net).await.unwrap(), None);
        net.remove().await.unwrap();
    });
}

both!(add_port_with_a_taken_host_port_is_all_or_nothing);
fn add_port_with_a_taken_host_port_is_all_or_nothing(via: Via) {
    in_netns(move |ctx| async move {
        let (net, _tcp, _udp) = ports_taken(&ctx, via).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let err = pod
            .add_port(PortMapping::range(Protocol::Tcp, 8080..=8081, 80..=81))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err:?}");
        assert!(pod.ports().is_empty());
        assert_tcp_let_go(addr("0.0.0.0:8080")).await;
        assert!(rules(&net).await.is_empty());
        remove(&net, &pod).await;
    });
}

both!(add_port_on_a_host_address_the_host_does_not_have_is_a_clear_error);
fn add_port_on_a_host_address_the_host_does_not_have_is_a_clear_error(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let err = pod
            .add_port(PortMapping::tcp(8080, 80).host_ip("198.18.0.1".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(
            err.errno(),
            Some(nix::errno::Errno::EADDRNOTAVAIL),
            "{err:?}"
        );
        assert!(err.to_string().contains("198.18.0.1:8080"), "{err}");
        assert!(pod.ports().is_empty());
        assert!(rules(&net).await.is_empty());
        remove(&net, &pod).await;
    });
}

both!(a_mapping_ends_with_its_holder);
fn a_mapping_ends_with_its_holder(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        // The holder dies: the mapping ends with it, nobody calls remove().
        let pod = net
            .sandbox("dies")
            .port(PortMapping::tcp(9300, 80))
            .create()
            .await
            .unwrap();
        assert!(!tcp_free(addr("0.0.0.0:9300")));
        common::sigkill(pod.holder_pid());
        eventually("the mapping of a dead holder ends", SOON, async || {
            tcp_free(addr("0.0.0.0:9300"))
        })
        .await;
        assert!(pod.ports().is_empty());
        // Its rules first, then its socket.
        assert!(rules(&net).await.is_empty());
        remove(&net, &pod).await;
    });
}

both!(remove_on_drop_ends_the_mappings_of_a_dropped_sandbox);
fn remove_on_drop_ends_the_mappings_of_a_dropped_sandbox(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let pod = net
            .sandbox("dropped")
            .port(PortMapping::udp(9301, 53))
            .port(PortMapping::tcp(9301, 80))
            .remove_on_drop(true)
            .create()
            .await
            .unwrap();
        assert!(UdpSocket::bind("0.0.0.0:9301").is_err());
        drop(pod);
        eventually("the mappings of a dropped sandbox end", SOON, async || {
            UdpSocket::bind("0.0.0.0:9301").is_ok() && tcp_free(addr("0.0.0.0:9301"))
        })
        .await;
        eventually("the dropped sandbox is gone", SOON, async || {
            common::holders().is_empty()
        })
        .await;
        eventually("its rules are gone", SOON, async || {
            rules(&net).await.is_empty()
        })
        .await;
        // The removal task ends the sandbox before the network may go.
        eventually("the network is removed", SOON, async || {
            net.remove().await.is_ok()
        })
        .await;
    });
}

both!(a_plain_drop_keeps_a_mapping_serving);
fn a_plain_drop_keeps_a_mapping_serving(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let pod = net
            .sandbox("kept")
            .port(PortMapping::tcp(9302, 80))
            .create()
            .await
            .unwrap();
        port_echoes(&pod, &[80]).await;
        drop(pod);
        assert_eq!(read_from(via.at(9302)), "80");
        let pod = net.open_sandbox("kept").await.unwrap();
        assert_eq!(pod.ports().len(), 1);
        pod.remove().await.unwrap();
        assert_tcp_let_go(addr("0.0.0.0:9302")).await;
        net.remove().await.unwrap();
    });
}

#[test]
#[ignore = "run by the other tests as a child process"]
fn child_process() {
    common::child_main(|state, action| async move {
        match action.as_str() {
            "refused-rule-auto" => refused_rule_auto(&state).await,
            "refused-rule-kernel" => refused_rule_kernel(&state).await,
            // Publish a port, say so, and wait to be killed.
            "publish-and-wait" => {
                let net = network_at(&state, Via::from_env()).await;
                let pod = net
                    .sandbox("crash")
                    .port(PortMapping::tcp(9400, 80))
                    .port(PortMapping::udp(9400, 53))
                    .create()
                    .await
                    .unwrap();
                port_echoes(&pod, &[80]).await;
                println!("published {:?}", pod.ports());
                std::io::stdout().flush().unwrap();
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            }
            _ => panic!("unknown action {action:?}"),
        }
    });
}

/// In a child run with `PODNET_FAILPOINT=nft-rule` (every rule it adds
/// names a chain that does not exist, so the kernel refuses the batch with
/// ENOENT, as for a rule whose expression's module is missing): the network
/// of `state` with port forwarding `how`.
async fn refusing_network(state: &Path, how: PortForwarding) -> Network {
    assert_eq!(
        std::env::var("PODNET_FAILPOINT").as_deref(),
        Ok("nft-rule"),
        "run by the tests of a refused rule"
    );
    common::network_builder(state, BRIDGE, &["10.88.0.0/16"])
        .port_forwarding(how)
        .build()
        .await
        .unwrap()
}

/// `Auto` serves the mapping by the forwarder and leaves no rule.
async fn refused_rule_auto(state: &Path) {
    let net = refusing_network(state, PortForwarding::Auto).await;
    let pod = net
        .sandbox("refused")
        .port(PortMapping::tcp(9800, 80))
        .create()
        .await
        .unwrap();
    port_echoes(&pod, &[80]).await;
    // The table was made (nf_tables is allowed), but not the rules.
    assert!(podnet::internals::port_table(&net).is_some());
    assert_eq!(rules(&net).await, Vec::<String>::new());
    assert_eq!(pod.ports()[0].forwarder, Forwarder::Userspace);
    assert_eq!(read_from(Via::Kernel.at(9800)), "80");
    assert_eq!(read_from(Via::Userspace.at(9800)), "80");
    // add_port too.
    let added = pod.add_port(PortMapping::udp(9801, 53)).await.unwrap();
    assert_eq!(added[0].forwarder, Forwarder::Userspace);
    remove(&net, &pod).await;
    println!("refused-rule ok");
}

/// `Kernel` fails the create and changes nothing.
async fn refused_rule_kernel(state: &Path) {
    let forced = refusing_network(state, PortForwarding::Kernel).await;
    let err = forced
        .sandbox("refused")
        .port(PortMapping::tcp(9800, 80))
        .create()
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(nix::errno::Errno::ENOENT), "{err:?}");
    assert!(err.to_string().contains("add DNAT rules"), "{err}");
    assert!(forced.sandboxes().await.unwrap().is_empty());
    assert!(tcp_free(addr("0.0.0.0:9800")));
    assert_eq!(rules(&forced).await, Vec::<String>::new());
    forced.remove().await.unwrap();
    println!("refused-rule ok");
}

/// Run the child `action` with rules refused (`PODNET_FAILPOINT=nft-rule`):
/// it succeeds, and leaves no table.
fn refused_rule(ctx: &Ctx, action: &str) {
    let out = common::child_command(ctx, action)
        .env("PODNET_FAILPOINT", "nft-rule")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("refused-rule ok"), "{stdout}");
    assert!(podnet::internals::podnet_tables().unwrap().is_empty());
}

#[test]
fn a_refused_rule_falls_back_to_userspace_under_auto() {
    in_netns(|ctx| async move { refused_rule(&ctx, "refused-rule-auto") });
}

#[test]
fn a_refused_rule_fails_a_create_under_kernel_and_changes_nothing() {
    in_netns(|ctx| async move { refused_rule(&ctx, "refused-rule-kernel") });
}

/// Start a child that publishes TCP and UDP 9400 for a sandbox "crash"
/// (`publish-and-wait`) and wait until it has. A child that hangs before
/// publishing fails the test, not CI.
fn publishing_child(ctx: &Ctx, via: Via) -> std::process::Child {
    let (child, _) = common::spawn_until(
        common::child_command(ctx, "publish-and-wait")
            .env("PODNET_CHILD_VIA", via.name())
            .stdin(Stdio::piped()),
        "published [",
        Duration::from_secs(60),
    );
    child
}

/// SIGKILL `proc`: no cleanup of any kind.
fn kill(mut proc: std::process::Child) {
    proc.kill().unwrap();
    let status = proc.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
}

/// gc until it reclaims the sandbox of a killed creator (its holder was
/// killed with it); there is never a rule left to reclaim.
async fn reclaim_crash(net: &Network) -> GcReport {
    let mut report = net.gc().await.unwrap();
    eventually(
        "gc reclaims the killed creator's sandbox",
        SOON,
        async || {
            assert!(report.port_rules.is_empty(), "{report:?}");
            if report.sandboxes.is_empty() {
                report = net.gc().await.unwrap();
            }
            !report.sandboxes.is_empty()
        },
    )
    .await;
    assert_eq!(report.sandboxes, ["crash"], "{report:?}");
    assert!(report.port_rules.is_empty(), "{report:?}");
    report
}

both!(another_processs_mapping_is_served_from_a_table_of_its_own);
fn another_processs_mapping_is_served_from_a_table_of_its_own(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let proc = publishing_child(&ctx, via);
        // The child's forwarder serves the mapping.
        assert_eq!(read_from(via.at(9400)), "80");
        assert!(UdpSocket::bind("0.0.0.0:9400").is_err());
        // Its rules are in a table of its own (this process made none).
        let tables = podnet::internals::podnet_tables().unwrap();
        assert_eq!(podnet::internals::port_table(&net), None);
        match via {
            Via::Kernel => {
                assert_eq!(tables.len(), 1, "{tables:?}");
                assert!(tables[0].0.starts_with("podnet-pnp0-"), "{tables:?}");
                assert_eq!(tables[0].1.len(), 6, "{tables:?}");
            }
            Via::Userspace => assert!(tables.is_empty(), "{tables:?}"),
        }
        kill(proc);
        reclaim_crash(&net).await;
        net.remove().await.unwrap();
    });
}

both!(a_killed_creators_ports_and_table_go_with_it_at_once);
fn a_killed_creators_ports_and_table_go_with_it_at_once(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        kill(publishing_child(&ctx, via));
        // The kernel closed its sockets: both ports are free at once, and
        // its table went with its nf_tables socket, rules and all, before
        // any gc.
        assert!(tcp_free(addr("0.0.0.0:9400")));
        assert!(UdpSocket::bind("0.0.0.0:9400").is_ok());
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
        assert!(TcpStream::connect(Via::Kernel.at(9400)).is_err());
        reclaim_crash(&net).await;
        net.remove().await.unwrap();
    });
}

both!(gc_reclaims_a_killed_creators_sandbox_with_no_rule_left_to_reclaim);
fn gc_reclaims_a_killed_creators_sandbox_with_no_rule_left_to_reclaim(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        kill(publishing_child(&ctx, via));
        reclaim_crash(&net).await;
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}

both!(a_killed_creators_port_can_be_published_again_and_gc_leaves_its_rules);
fn a_killed_creators_port_can_be_published_again_and_gc_leaves_its_rules(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        kill(publishing_child(&ctx, via));
        reclaim_crash(&net).await;
        let pod = net
            .sandbox("crash")
            .port(PortMapping::tcp(9400, 80))
            .create()
            .await
            .unwrap();
        assert_eq!(pod.ports()[0].host.port(), 9400);
        // gc leaves the rules of a live sandbox alone.
        assert!(net.gc().await.unwrap().port_rules.is_empty());
        assert_eq!(rules(&net).await.len(), via.rules_per_mapping());
        remove(&net, &pod).await;
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
    });
}

#[test]
fn two_processes_on_one_network_keep_their_tables_apart() {
    in_netns(|ctx| async move {
        let net = network(&ctx, Via::Kernel).await;
        let pod = net
            .sandbox("here")
            .port(PortMapping::tcp(9410, 80))
            .create()
            .await
            .unwrap();
        port_echoes(&pod, &[80]).await;
        let proc = publishing_child(&ctx, Via::Kernel);
        let mine = podnet::internals::port_table(&net).unwrap();
        let tables = podnet::internals::podnet_tables().unwrap();
        assert_eq!(tables.len(), 2, "{tables:?}");
        let (ours, theirs): (Vec<_>, Vec<_>) = tables.into_iter().partition(|(t, _)| *t == mine);
        assert_eq!(ours[0].1.len(), 3, "{ours:?}");
        assert!(ours[0].1.iter().all(|c| c.contains(" here@")), "{ours:?}");
        assert_eq!(theirs[0].1.len(), 6, "{theirs:?}");
        assert!(
            theirs[0].1.iter().all(|c| c.contains(" crash@")),
            "{theirs:?}"
        );
        assert_eq!(read_from(Via::Kernel.at(9410)), "80");
        assert_eq!(read_from(Via::Kernel.at(9400)), "80");
        // This process's gc and removals touch its own table only.
        assert!(net.gc().await.unwrap().port_rules.is_empty());
        pod.remove().await.unwrap();
        let after = podnet::internals::podnet_tables().unwrap();
        assert!(after.contains(&(mine.clone(), Vec::new())), "{after:?}");
        assert!(after.contains(&theirs[0]), "{after:?}");
        assert_eq!(read_from(Via::Kernel.at(9400)), "80");
        // The other process's end takes its table only.
        kill(proc);
        assert_eq!(
            podnet::internals::podnet_tables().unwrap(),
            [(mine, Vec::new())]
        );
        eventually("crash is reclaimed", SOON, async || {
            let report = net.gc().await.unwrap();
            report.sandboxes.contains(&"crash".to_owned())
        })
        .await;
        net.remove().await.unwrap();
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
    });
}

#[test]
fn a_cancelled_add_port_leaves_no_rule() {
    in_netns(|ctx| async move {
        let net = network(&ctx, Via::Kernel).await;
        let pod = net
            .sandbox("cancel")
            .port(PortMapping::tcp(9420, 80))
            .create()
            .await
            .unwrap();
        let before = rules(&net).await;
        assert_eq!(before.len(), 3);
        // Hold the table's socket, so the rules of the next request wait
        // to be added; give up on the request meanwhile.
        let hold = podnet::internals::hold_port_table(&net).unwrap();
        let range = PortMapping::range(Protocol::Tcp, 9500..=9599, 7000..=7099);
        let mut request = Box::pin(pod.add_port(range));
        // Run it until its 100 ports' rules are being added, then drop it.
        tokio::select! {
            got = &mut request => panic!("add_port returned while the table was held: {got:?}"),
            _ = eventually(
                "the request's rules are being added",
                Duration::from_secs(10),
                async || podnet::internals::installing(&net) == 100,
            ) => {}
        }
        drop(request);
        drop(hold);
        // The rules go in, and are deleted again as nobody took them.
        eventually(
            "the rules of the cancelled request are gone",
            Duration::from_secs(10),
            async || podnet::internals::installing(&net) == 0 && rules(&net).await == before,
        )
        .await;
        // Nothing was published and the ports are free.
        assert_eq!(pod.ports().len(), 1);
        assert_tcp_let_go(addr("0.0.0.0:9500")).await;
        assert_tcp_let_go(addr("0.0.0.0:9599")).await;
        assert!(net.gc().await.unwrap().port_rules.is_empty());
        // The same request, not cancelled, publishes them all.
        let range = PortMapping::range(Protocol::Tcp, 9500..=9599, 7000..=7099);
        assert_eq!(pod.add_port(range).await.unwrap().len(), 100);
        assert_eq!(rules(&net).await.len(), 303);
        pod.remove().await.unwrap();
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
    });
}

/// Two kernel networks in the test's namespace, pnpa (10.88.0.0/16) and
/// pnpb (198.19.0.0/16), each with a sandbox "web": a's publishes TCP 9500
/// and answers "80", b's publishes 9501 and answers "b".
struct TwoNetworks {
    a: Network,
    b: Network,
    pa: Sandbox,
    pb: Sandbox,
}

impl TwoNetworks {
    async fn new(ctx: &Ctx) -> TwoNetworks {
        let (sa, sb) = (ctx.state.join("a"), ctx.state.join("b"));
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::create_dir_all(&sb).unwrap();
        let a = network_named(&sa, Via::Kernel, "pnpa", "10.88.0.0/16").await;
        let b = network_named(&sb, Via::Kernel, "pnpb", "198.19.0.0/16").await;
        let pa = a
            .sandbox("web")
            .port(PortMapping::tcp(9500, 80))
            .create()
            .await
            .unwrap();
        let pb = b
            .sandbox("web")
            .port(PortMapping::tcp(9501, 80))
            .create()
            .await
            .unwrap();
        port_echoes(&pa, &[80]).await;
        echo_port(&pb, 80, Some("b")).await;
        TwoNetworks { a, b, pa, pb }
    }

    async fn remove(self) {
        remove(&self.a, &self.pa).await;
        remove(&self.b, &self.pb).await;
    }
}

#[test]
fn two_networks_in_one_namespace_have_a_table_each_and_serve_at_either_bridge() {
    in_netns(|ctx| async move {
        let two = TwoNetworks::new(&ctx).await;
        assert_eq!(two.pa.ports()[0].forwarder, Forwarder::Kernel);
        assert_eq!(two.pb.ports()[0].forwarder, Forwarder::Kernel);
        // Each reached at either bridge's address (both are local).
        for ip in [[10, 88, 0, 1], [198, 19, 0, 1]] {
            assert_eq!(read_from(SocketAddr::from((ip, 9500))), "80");
            assert_eq!(read_from(SocketAddr::from((ip, 9501))), "b");
        }
        let (ra, rb) = (rules(&two.a).await, rules(&two.b).await);
        assert_eq!((ra.len(), rb.len()), (3, 3));
        // A table each, both owned by this process.
        let (ta, tb) = (
            podnet::internals::port_table(&two.a).unwrap(),
            podnet::internals::port_table(&two.b).unwrap(),
        );
        assert!(ta.starts_with("podnet-pnpa-") && tb.starts_with("podnet-pnpb-"));
        assert_eq!(podnet::internals::podnet_tables().unwrap().len(), 2);
        assert!(ra.iter().all(|c| c.contains(":9500 ")), "{ra:?}");
        assert!(rb.iter().all(|c| c.contains(":9501 ")), "{rb:?}");
        two.remove().await;
    });
}

#[test]
fn gc_of_one_network_leaves_the_rules_of_another_in_the_namespace() {
    in_netns(|ctx| async move {
        let two = TwoNetworks::new(&ctx).await;
        let rb = rules(&two.b).await;
        // Its records are not in this store.
        assert!(two.a.gc().await.unwrap().port_rules.is_empty());
        assert_eq!(rules(&two.b).await, rb);
        two.remove().await;
    });
}

#[test]
fn removing_one_network_leaves_another_in_the_namespace_serving() {
    in_netns(|ctx| async move {
        let two = TwoNetworks::new(&ctx).await;
        let rb = rules(&two.b).await;
        let tb = podnet::internals::port_table(&two.b).unwrap();
        remove(&two.a, &two.pa).await;
        assert_eq!(podnet::internals::port_rules(&two.a).await.unwrap(), None);
        assert_eq!(rules(&two.b).await, rb);
        assert_eq!(
            podnet::internals::podnet_tables().unwrap(),
            [(tb, rb.clone())]
        );
        assert_eq!(read_from(SocketAddr::from(([198, 19, 0, 1], 9501))), "b");
        remove(&two.b, &two.pb).await;
    });
}

#[test]
fn the_default_is_auto_which_uses_the_kernel_where_nf_tables_is_allowed() {
    in_netns(|ctx| async move {
        let net = common::build_network(&ctx.state, BRIDGE, "10.88.0.0/16")
            .await
            .unwrap();
        let pod = net
            .sandbox("default")
            .port(PortMapping::tcp(9600, 80))
            .port(PortMapping::tcp(9601, 80).host_ip("127.0.0.1".parse().unwrap()))
            .create()
            .await
            .unwrap();
        port_echoes(&pod, &[80]).await;
        // Where nf_tables refuses there is no table, and the forwarder
        // serves; here (root, or a user namespace on Linux 5.12 or later)
        // the kernel does, from a table of this process.
        let table = podnet::internals::port_rules(&net).await.unwrap();
        let want = if table.is_some() {
            Forwarder::Kernel
        } else {
            Forwarder::Userspace
        };
        assert_eq!(pod.ports()[0].forwarder, want);
        assert_eq!(want, Forwarder::Kernel, "nf_tables is allowed here");
        // Loopback is the forwarder's whatever the mode.
        assert_eq!(pod.ports()[1].forwarder, Forwarder::Userspace);
        assert_eq!(read_from(addr("10.88.0.1:9600")), "80");
        assert_eq!(read_from(addr("127.0.0.1:9600")), "80");
        assert_eq!(read_from(addr("127.0.0.1:9601")), "80");
        pod.remove().await.unwrap();
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
    });
}

#[test]
fn userspace_forwarding_makes_no_table() {
    in_netns(|ctx| async move {
        let net = network(&ctx, Via::Userspace).await;
        let pod = net
            .sandbox("user")
            .port(PortMapping::tcp(9602, 80))
            .create()
            .await
            .unwrap();
        assert_eq!(pod.ports()[0].forwarder, Forwarder::Userspace);
        assert_eq!(podnet::internals::port_table(&net), None);
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
        remove(&net, &pod).await;
    });
}

#[test]
fn a_wide_range_is_one_batch_of_rules_and_goes_in_one() {
    in_netns(|ctx| async move {
        let net = network(&ctx, Via::Kernel).await;
        let pod = net
            .sandbox("wide")
            .port(PortMapping::range(
                Protocol::Tcp,
                20000..=20299,
                30000..=30299,
            ))
            .create()
            .await
            .unwrap();
        assert_eq!(pod.ports().len(), 300);
        assert_eq!(rules(&net).await.len(), 900);
        port_echoes(&pod, &[30123]).await;
        assert_eq!(read_from(Via::Kernel.at(20123)), "30123");
        pod.remove().await.unwrap();
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
    });
}

/// A kernel network with an IPv4 and an IPv6 pool, IPv6 forwarding on
/// (IPv4 forwarding not), and a sandbox "six" publishing TCP 9700 on `::`
/// to a dual-stack server on its port 80 that answers whether the client
/// came by IPv4 or IPv6.
async fn six(ctx: &Ctx) -> (Network, Sandbox) {
    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
    let net = common::network_builder(&ctx.state, BRIDGE, &["10.88.0.0/16", "fd00:88::/64"])
        .port_forwarding(PortForwarding::Kernel)
        .build()
        .await
        .unwrap();
    let pod = net
        .sandbox("six")
        .port(PortMapping::tcp(9700, 80).host_ip("::".parse().unwrap()))
        .create()
        .await
        .unwrap();
    let l = listen_in(&pod, "[::]:80").await;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            // A dual-stack socket: IPv4 peers are IPv4-mapped.
            let v4 = match s.peer_addr().unwrap().ip() {
                std::net::IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
                std::net::IpAddr::V4(_) => true,
            };
            let _ = write!(s, "{}", if v4 { "v4" } else { "v6" });
        }
    });
    (net, pod)
}

#[test]
fn a_mapping_on_the_unspecified_ipv6_address_goes_through_the_kernel_for_both_families() {
    in_netns(|ctx| async move {
        let (net, pod) = six(&ctx).await;
        assert_eq!(pod.ports()[0].forwarder, Forwarder::Kernel);
        // IPv4 clients to the pod's IPv4 address, IPv6 ones to its IPv6
        // address. IPv6 is forwarded here, IPv4 not: 3 rules for IPv6,
        // only the output one for IPv4.
        let made = rules(&net).await;
        assert_eq!(made.len(), 4, "{made:?}");
        assert_eq!(read_from(addr("10.88.0.1:9700")), "v4");
        assert_eq!(read_from(addr("[fd00:88::1]:9700")), "v6");
        remove(&net, &pod).await;
    });
}

#[test]
fn dropping_every_handle_to_a_network_ends_its_mappings_and_its_table() {
    in_netns(|ctx| async move {
        let (net, pod) = six(&ctx).await;
        // The sandbox stays: a plain drop removes nothing.
        drop(pod);
        drop(net);
        eventually("the table goes", SOON, async || {
            podnet::internals::podnet_tables().unwrap().is_empty()
        })
        .await;
        eventually("the port is free", SOON, async || {
            tcp_free(addr("[::]:9700"))
        })
        .await;
        let net = network(&ctx, Via::Kernel).await;
        net.open_sandbox("six")
            .await
            .unwrap()
            .remove()
            .await
            .unwrap();
        net.remove().await.unwrap();
    });
}
