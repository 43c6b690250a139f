//! Port mappings, end to end, each test in a network namespace of its own
//! (see `common::in_netns`): that namespace is the network's host, and
//! "the host port" is a port there. Real programs on both ends where it
//! matters: `curl` on the host side, `python3 -m http.server` and a python3
//! UDP echo server as members of the sandbox.
//!
//! Every test runs twice (a module per test, `userspace` and `kernel`):
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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{in_netns, snapshot, Ctx};
use podnet::{Error, Forwarder, Network, PortForwarding, PortMapping, Protocol, Sandbox};

const BRIDGE: &str = "pnp0";

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
    Network::builder(bridge)
        .subnet(subnet.parse().unwrap())
        .state_dir(state)
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

/// Wait up to 5 s for `cond`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    common::eventually(what, Duration::from_secs(5), async || cond()).await;
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
    eventually("http.server listens", || TcpStream::connect(at).is_ok()).await;
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

both!(curl_reaches_python_http_server_in_the_pod_through_a_tcp_mapping);
fn curl_reaches_python_http_server_in_the_pod_through_a_tcp_mapping(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let pod = net
            .sandbox("web")
            .port(PortMapping::tcp(8080, 8000))
            .create()
            .await
            .unwrap();
        let published = pod.ports();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].protocol, Protocol::Tcp);
        assert_eq!(published[0].host, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(published[0].pod_port, 8000);
        assert_eq!(published[0].forwarder, via.forwarder());
        // prerouting, output, postrouting; each rule names its sandbox.
        let made = rules(&net).await;
        assert_eq!(
            made.len(),
            if via == Via::Kernel { 3 } else { 0 },
            "{made:?}"
        );
        assert!(made
            .iter()
            .all(|c| c.contains(" web@") && c.contains(" tcp 0.0.0.0:8080 ")));
        let _server = http_server(&pod, 8000, &ctx.state.join("www")).await;

        // From the host: loopback, and the bridge's address.
        for url in [
            "http://127.0.0.1:8080/hello.txt",
            "http://10.88.0.1:8080/hello.txt",
        ] {
            let (ok, body) = curl(None, url).await;
            assert!(ok, "{url}: {body}");
            assert_eq!(body, "hello from web\n", "{url}");
        }
        // Hairpin: the pod reaches its own published port at the gateway
        // (by the forwarder's socket: see the README).
        let (ok, body) = curl(Some(&pod), "http://10.88.0.1:8080/hello.txt").await;
        assert!(ok, "hairpin: {body}");
        assert_eq!(body, "hello from web\n");
        // Another pod reaches it at the gateway too (by the kernel:
        // masqueraded, so the reply comes back through the host).
        let other = net.sandbox("other").create().await.unwrap();
        let (ok, body) = curl(Some(&other), "http://10.88.0.1:8080/hello.txt").await;
        assert!(ok, "from another pod: {body}");
        assert_eq!(body, "hello from web\n");
        other.remove().await.unwrap();
        // Many connections in a row, each a new forwarded connection.
        for _ in 0..20 {
            let mut s = TcpStream::connect(via.at(8080)).unwrap();
            s.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n").unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");
            assert!(reply.ends_with("hello from web\n"), "{reply}");
        }

        pod.remove().await.unwrap();
        // Gone when remove() returns: nothing listens, the port is free.
        assert!(TcpStream::connect("127.0.0.1:8080").is_err());
        assert!(TcpStream::connect("10.88.0.1:8080").is_err());
        assert!(tcp_free("0.0.0.0:8080".parse().unwrap()));
        assert!(pod.ports().is_empty());
        // Its rules went with it, and the table goes with the network.
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
        assert_eq!(podnet::internals::port_rules(&net).await.unwrap(), None);
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
    });
}

/// A server in `pod` on each of `ports` that answers every connection with
/// the port it was made on and closes.
async fn port_echoes(pod: &Sandbox, ports: &[u16]) {
    for &port in ports {
        let l = pod
            .run(move || TcpListener::bind(("0.0.0.0", port)))
            .await
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let _ = write!(s, "{port}");
            }
        });
    }
}

fn read_from(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    got
}

both!(ephemeral_ports_and_ranges_are_published_and_reported);
fn ephemeral_ports_and_ranges_are_published_and_reported(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let pod = net
            .sandbox("eph")
            .port(PortMapping::tcp(0, 7000).host_ip("127.0.0.1".parse().unwrap()))
            .port(PortMapping::range(Protocol::Tcp, 0..=0, 7001..=7002))
            .create()
            .await
            .unwrap();
        port_echoes(&pod, &[7000, 7001, 7002, 7003, 7004]).await;
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

        // A range with host ports, added to the live sandbox.
        let added = pod
            .add_port(PortMapping::range(Protocol::Tcp, 9103..=9104, 7003..=7004))
            .await
            .unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(read_from(via.at(9103)), "7003");
        assert_eq!(read_from(via.at(9104)), "7004");
        assert_eq!(pod.ports().len(), 5);
        let kernel_rules = if via == Via::Kernel { 3 } else { 0 };
        assert_eq!(rules(&net).await.len(), 4 * kernel_rules);

        // Removing one leaves the others.
        pod.remove_port(&added[0]).await.unwrap();
        assert!(tcp_free("0.0.0.0:9103".parse().unwrap()));
        assert!(TcpStream::connect(via.at(9103)).is_err());
        assert_eq!(read_from(via.at(9104)), "7004");
        assert_eq!(pod.ports().len(), 4);
        let left = rules(&net).await;
        assert_eq!(left.len(), 3 * kernel_rules, "{left:?}");
        assert!(!left.iter().any(|c| c.contains(":9103 ")), "{left:?}");
        assert!(matches!(
            pod.remove_port(&added[0]).await,
            Err(Error::NotFound { .. })
        ));

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

        // Another handle of this process sees the same mappings.
        let again = net.open_sandbox("eph").await.unwrap();
        assert_eq!(again.ports(), pod.ports());

        again.remove().await.unwrap();
        for p in &published {
            assert!(tcp_free(p.host), "{p}");
        }
        assert!(tcp_free("0.0.0.0:9104".parse().unwrap()));
        assert!(pod.ports().is_empty());
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
    });
}

both!(tcp_half_close_is_forwarded_both_ways);
fn tcp_half_close_is_forwarded_both_ways(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let pod = net
            .sandbox("half")
            .port(PortMapping::tcp(9200, 80))
            .port(PortMapping::tcp(9201, 81))
            .create()
            .await
            .unwrap();
        // 80: read to EOF, then answer on the same connection.
        let l80 = pod
            .run(|| TcpListener::bind("0.0.0.0:80"))
            .await
            .unwrap()
            .unwrap();
        let server80 = std::thread::spawn(move || {
            let (mut s, _) = l80.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            write!(s, "got {} bytes", got.len()).unwrap();
        });
        // 81: speak first and shut down writing, then read to EOF.
        let l81 = pod
            .run(|| TcpListener::bind("0.0.0.0:81"))
            .await
            .unwrap()
            .unwrap();
        let server81 = std::thread::spawn(move || {
            let (mut s, _) = l81.accept().unwrap();
            s.write_all(b"banner").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            got
        });

        let mut c = TcpStream::connect(via.at(9200)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&[7u8; 100_000]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "got 100000 bytes");
        server80.join().unwrap();

        let mut c = TcpStream::connect(via.at(9201)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut banner = String::new();
        c.read_to_string(&mut banner).unwrap(); // EOF arrives while we may still write
        assert_eq!(banner, "banner");
        c.write_all(b"still writing after your EOF").unwrap();
        drop(c);
        assert_eq!(server81.join().unwrap(), "still writing after your EOF");

        // A port nothing listens on in the pod: the client is reset (the
        // forwarder accepted first) or refused (the pod's kernel answered
        // the SYN itself, through DNAT).
        pod.add_port(PortMapping::tcp(9202, 82)).await.unwrap();
        match via {
            Via::Userspace => {
                let mut c = TcpStream::connect(via.at(9202)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 1];
                let err = c.read(&mut buf).unwrap_err();
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
            }
            Via::Kernel => {
                let err = TcpStream::connect(via.at(9202)).unwrap_err();
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
            }
        }

        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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

both!(udp_round_trip_keeps_a_flow_per_client_that_ends_when_idle);
fn udp_round_trip_keeps_a_flow_per_client_that_ends_when_idle(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        // Long enough that a loaded machine does not end a flow between two
        // asks that expect it kept.
        let idle = Duration::from_secs(2);
        let pod = net
            .sandbox("dns")
            .port(PortMapping::udp(5300, 5353).udp_idle_timeout(idle))
            .create()
            .await
            .unwrap();
        let _server = udp_echo(&pod, 5353);
        assert_eq!(pod.ports()[0].forwarder, via.forwarder());
        let to = via.at(5300);
        let a = UdpSocket::bind(via.at(0)).unwrap();
        let b = UdpSocket::bind(via.at(0)).unwrap();

        let a1 = ask(&a, to, "a1");
        assert!(a1.starts_with("a1 from "), "{a1}");
        let b1 = ask(&b, to, "b1");
        assert!(b1.starts_with("b1 from "), "{b1}");
        // Two clients, two flows: the pod sees two sources, and each
        // client gets its own answers.
        assert_ne!(seen_port(&a1), seen_port(&b1));
        // Within the idle timeout, a client keeps its flow.
        let a2 = ask(&a, to, "a2");
        assert_eq!(a2, format!("a2 from {}", seen_port(&a1)));
        // A large datagram goes through whole.
        let big = "x".repeat(8000);
        let answer = ask(&b, to, &big);
        assert!(
            answer == format!("{big} from {}", seen_port(&b1)),
            "{} bytes back",
            answer.len()
        );

        match via {
            // After the idle timeout the flow is gone: a new one, a new source.
            Via::Userspace => {
                tokio::time::sleep(idle * 3).await;
                let a3 = ask(&a, to, "a3");
                assert!(a3.starts_with("a3 from "), "{a3}");
                assert_ne!(seen_port(&a3), seen_port(&a1), "the idle flow was kept");
            }
            // Conntrack keeps the flow (its own UDP timeout): the pod sees
            // the client's own port.
            Via::Kernel => {
                assert_eq!(seen_port(&a1), a.local_addr().unwrap().port());
                assert_eq!(seen_port(&b1), b.local_addr().unwrap().port());
            }
        }

        // An ephemeral UDP port, through the bridge's address.
        let added = pod.add_port(PortMapping::udp(0, 5353)).await.unwrap();
        let eph = SocketAddr::new("10.88.0.1".parse().unwrap(), added[0].host.port());
        let c = UdpSocket::bind("10.88.0.1:0").unwrap();
        assert!(ask(&c, eph, "c1").starts_with("c1 from "));

        pod.remove().await.unwrap();
        // Free once no process holds the forwarder's sockets: a child that
        // another test's thread forked may hold copies until its exec.
        let ephemeral = added[0].host;
        eventually("the removed sandbox's ports are free", || {
            UdpSocket::bind("0.0.0.0:5300").is_ok() && UdpSocket::bind(ephemeral).is_ok()
        })
        .await;
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
    });
}

both!(a_taken_host_port_is_a_clear_error_and_changes_nothing);
fn a_taken_host_port_is_a_clear_error_and_changes_nothing(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let _tcp = TcpListener::bind("0.0.0.0:8081").unwrap();
        let _udp = UdpSocket::bind("0.0.0.0:8092").unwrap();
        let before = snapshot(&ctx.nl).await;
        let files_before = common::tree_under(&ctx.state);

        let err = net
            .sandbox("web")
            .port(PortMapping::tcp(8070, 80))
            .port(PortMapping::tcp(8081, 80))
            .create()
            .await
            .unwrap_err();
        match &err {
            Error::PortInUse {
                sandbox,
                protocol,
                address,
                errno,
            } => {
                assert_eq!(sandbox, "web");
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
        // The second port of a UDP range is taken: the first is released.
        let err = net
            .sandbox("web")
            .port(PortMapping::range(Protocol::Udp, 8091..=8093, 53..=55))
            .create()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::PortInUse { address, protocol: Protocol::Udp, .. } if address.port() == 8092),
            "{err:?}"
        );
        // Bad input.
        for bad in [
            PortMapping::tcp(8000, 0),
            PortMapping::range(Protocol::Tcp, 8000..=8001, 80..=82),
        ] {
            let err = net.sandbox("web").port(bad).create().await.unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        }
        // Nothing was made, and the ports bound before the taken ones are free.
        assert_eq!(snapshot(&ctx.nl).await, before);
        assert_eq!(common::tree_under(&ctx.state), files_before);
        assert!(net.sandboxes().await.unwrap().is_empty());
        assert!(common::holders_of(&common::network_key_prefix()).is_empty());
        // (Soon, not at once: see the ephemeral-port check above.)
        eventually("the ports bound before the taken ones are free", || {
            tcp_free("0.0.0.0:8070".parse().unwrap()) && UdpSocket::bind("0.0.0.0:8091").is_ok()
        })
        .await;
        // Not even the table: it is made by the first mapping that binds.
        assert_eq!(podnet::internals::port_rules(&net).await.unwrap(), None);

        // The same on a live sandbox: add_port is all or nothing.
        let pod = net.sandbox("web").create().await.unwrap();
        let err = pod
            .add_port(PortMapping::range(Protocol::Tcp, 8080..=8081, 80..=81))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PortInUse { .. }), "{err:?}");
        assert!(pod.ports().is_empty());
        assert!(tcp_free("0.0.0.0:8080".parse().unwrap()));
        // A host address that is not one of the host namespace's.
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

both!(mappings_end_with_the_holder_and_with_remove_on_drop);
fn mappings_end_with_the_holder_and_with_remove_on_drop(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        // The holder dies: the mapping ends with it, nobody calls remove().
        let pod = net
            .sandbox("dies")
            .port(PortMapping::tcp(9300, 80))
            .create()
            .await
            .unwrap();
        assert!(!tcp_free("0.0.0.0:9300".parse().unwrap()));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pod.holder_pid()).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        eventually("the mapping of a dead holder ends", || {
            tcp_free("0.0.0.0:9300".parse().unwrap())
        })
        .await;
        assert!(pod.ports().is_empty());
        // Its rules first, then its socket.
        assert!(rules(&net).await.is_empty());
        pod.remove().await.unwrap();

        // remove_on_drop: dropping the handle ends the mapping.
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
        eventually("the mappings of a dropped sandbox end", || {
            UdpSocket::bind("0.0.0.0:9301").is_ok() && tcp_free("0.0.0.0:9301".parse().unwrap())
        })
        .await;
        eventually("the dropped sandbox is gone", || {
            common::holders_of(&common::network_key_prefix()).is_empty()
        })
        .await;
        let t = Instant::now();
        while !rules(&net).await.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5), "rules left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A plain drop removes nothing: the mapping keeps serving.
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
        assert!(tcp_free("0.0.0.0:9302".parse().unwrap()));
        // Wait for the dropped sandbox's removal task before removing the network.
        eventually("all sandboxes are gone", || {
            common::holders_of(&common::network_key_prefix()).is_empty()
        })
        .await;
        let t = Instant::now();
        while net.remove().await.is_err() {
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// This test binary, run as a child in the current thread's namespace.
fn child(ctx: &Ctx, via: Via, action: &str) -> Command {
    let mut cmd = common::child_command(ctx, action);
    cmd.env("PODNET_CHILD_VIA", via.name())
        .stdin(Stdio::piped());
    cmd
}

#[test]
#[ignore = "run by the other tests as a child process"]
fn child_process() {
    let (Ok(netns), Ok(state), Ok(action)) = (
        std::env::var("PODNET_CHILD_NETNS"),
        std::env::var("PODNET_CHILD_STATE"),
        std::env::var("PODNET_CHILD_ACTION"),
    ) else {
        return;
    };
    let ns = std::fs::File::open(&netns).unwrap();
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if action == "refused-rule" {
            return refused_rule(Path::new(&state)).await;
        }
        let net = network_at(Path::new(&state), Via::from_env()).await;
        match action.as_str() {
            // Publish a port, say so, and wait to be killed.
            "publish-and-wait" => {
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
/// ENOENT, as for a rule whose expression's module is missing): `Auto`
/// serves the mapping by the forwarder and leaves no rule; `Kernel` fails
/// and changes nothing. Prints `refused-rule ok` at the end.
async fn refused_rule(state: &Path) {
    assert_eq!(
        std::env::var("PODNET_FAILPOINT").as_deref(),
        Ok("nft-rule"),
        "run by a_refused_rule_falls_back_to_userspace_with_auto_only"
    );
    let net = Network::builder(BRIDGE)
        .subnet("10.88.0.0/16".parse().unwrap())
        .state_dir(state)
        .port_forwarding(PortForwarding::Auto)
        .build()
        .await
        .unwrap();
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
    pod.remove().await.unwrap();
    net.remove().await.unwrap();

    let forced = Network::builder(BRIDGE)
        .subnet("10.88.0.0/16".parse().unwrap())
        .state_dir(state)
        .port_forwarding(PortForwarding::Kernel)
        .build()
        .await
        .unwrap();
    let err = forced
        .sandbox("refused")
        .port(PortMapping::tcp(9800, 80))
        .create()
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(nix::errno::Errno::ENOENT), "{err:?}");
    assert!(err.to_string().contains("add DNAT rules"), "{err}");
    assert!(forced.sandboxes().await.unwrap().is_empty());
    assert!(tcp_free("0.0.0.0:9800".parse().unwrap()));
    assert_eq!(rules(&forced).await, Vec::<String>::new());
    forced.remove().await.unwrap();
    println!("refused-rule ok");
}

#[test]
fn a_refused_rule_falls_back_to_userspace_with_auto_only() {
    in_netns(|ctx| async move {
        let out = common::child_command(&ctx, "refused-rule")
            .env("PODNET_FAILPOINT", "nft-rule")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("refused-rule ok"), "{stdout}");
        assert!(podnet::internals::podnet_tables().unwrap().is_empty());
    });
}

/// Start a child that publishes TCP and UDP 9400 for a sandbox "crash"
/// (`publish-and-wait`) and wait until it has.
fn publishing_child(ctx: &Ctx, via: Via) -> std::process::Child {
    let mut proc = child(ctx, via, "publish-and-wait").spawn().unwrap();
    // The harness of the child prints its own lines first.
    let out = std::io::BufReader::new(proc.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = std::io::BufRead::lines(out)
            .map_while(Result::ok)
            .find(|l| l.contains("published ["));
        let _ = tx.send(line);
    });
    // A child that hangs before publishing fails the test, not CI.
    let line = rx.recv_timeout(Duration::from_secs(60));
    if !matches!(line, Ok(Some(_))) {
        proc.kill().unwrap();
        proc.wait().unwrap();
        panic!("the child did not publish: {line:?}");
    }
    proc
}

both!(a_killed_creator_leaves_no_mapping_no_table_and_gc_reclaims_its_sandbox);
fn a_killed_creator_leaves_no_mapping_no_table_and_gc_reclaims_its_sandbox(via: Via) {
    in_netns(move |ctx| async move {
        let net = network(&ctx, via).await;
        let mut proc = publishing_child(&ctx, via);
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

        proc.kill().unwrap(); // SIGKILL: no cleanup of any kind
        let status = proc.wait().unwrap();
        assert_eq!(status.signal(), Some(9));
        // The kernel closed its sockets: both ports are free at once, and
        // its table went with its nf_tables socket, rules and all, before
        // any gc.
        assert!(tcp_free("0.0.0.0:9400".parse().unwrap()));
        assert!(UdpSocket::bind("0.0.0.0:9400").is_ok());
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);
        assert!(TcpStream::connect(Via::Kernel.at(9400)).is_err());
        // Its sandbox (holder killed with its creator) is gc's; there is no
        // rule left to reclaim.
        let t = Instant::now();
        let mut report = net.gc().await.unwrap();
        while report.sandboxes.is_empty() && t.elapsed() < Duration::from_secs(5) {
            assert!(report.port_rules.is_empty(), "{report:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            report = net.gc().await.unwrap();
        }
        assert_eq!(report.sandboxes, ["crash"], "{report:?}");
        assert!(report.port_rules.is_empty(), "{report:?}");
        assert!(net.sandboxes().await.unwrap().is_empty());
        // The port can be published again, by this process.
        let pod = net
            .sandbox("crash")
            .port(PortMapping::tcp(9400, 80))
            .create()
            .await
            .unwrap();
        assert_eq!(pod.ports()[0].host.port(), 9400);
        // gc leaves the rules of a live sandbox alone.
        assert!(net.gc().await.unwrap().port_rules.is_empty());
        assert_eq!(
            rules(&net).await.len(),
            if via == Via::Kernel { 3 } else { 0 }
        );
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        let mut proc = publishing_child(&ctx, Via::Kernel);
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
        proc.kill().unwrap();
        proc.wait().unwrap();
        assert_eq!(
            podnet::internals::podnet_tables().unwrap(),
            [(mine, Vec::new())]
        );
        let t = Instant::now();
        while !net
            .gc()
            .await
            .unwrap()
            .sandboxes
            .contains(&"crash".to_owned())
        {
            assert!(t.elapsed() < Duration::from_secs(5), "crash not reclaimed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
        let t = Instant::now();
        // Run it until its 100 ports' rules are being added, then drop it.
        while podnet::internals::installing(&net) != 100 {
            tokio::select! {
                got = &mut request => panic!("add_port returned while the table was held: {got:?}"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no rule was being added"
            );
        }
        drop(request);
        drop(hold);
        // The rules go in, and are deleted again as nobody took them.
        let t = Instant::now();
        while podnet::internals::installing(&net) != 0 || rules(&net).await != before {
            assert!(t.elapsed() < Duration::from_secs(10), "rules left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing was published and the ports are free.
        assert_eq!(pod.ports().len(), 1);
        assert!(tcp_free("0.0.0.0:9500".parse().unwrap()));
        assert!(tcp_free("0.0.0.0:9599".parse().unwrap()));
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

#[test]
fn two_networks_in_one_namespace_keep_their_kernel_rules_apart() {
    in_netns(|ctx| async move {
        let (sa, sb) = (ctx.state.join("a"), ctx.state.join("b"));
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::create_dir_all(&sb).unwrap();
        let a = network_named(&sa, Via::Kernel, "pnpa", "10.88.0.0/16").await;
        let b = network_named(&sb, Via::Kernel, "pnpb", "10.89.0.0/16").await;
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
        let lb = pb
            .run(|| TcpListener::bind("0.0.0.0:80"))
            .await
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            for s in lb.incoming() {
                let Ok(mut s) = s else { return };
                let _ = write!(s, "b");
            }
        });
        assert_eq!(pa.ports()[0].forwarder, Forwarder::Kernel);
        assert_eq!(pb.ports()[0].forwarder, Forwarder::Kernel);
        // Each reached at either bridge's address (both are local).
        for ip in [[10, 88, 0, 1], [10, 89, 0, 1]] {
            assert_eq!(read_from(SocketAddr::from((ip, 9500))), "80");
            assert_eq!(read_from(SocketAddr::from((ip, 9501))), "b");
        }
        let (ra, rb) = (rules(&a).await, rules(&b).await);
        assert_eq!((ra.len(), rb.len()), (3, 3));
        // A table each, both owned by this process.
        let (ta, tb) = (
            podnet::internals::port_table(&a).unwrap(),
            podnet::internals::port_table(&b).unwrap(),
        );
        assert!(ta.starts_with("podnet-pnpa-") && tb.starts_with("podnet-pnpb-"));
        assert_eq!(podnet::internals::podnet_tables().unwrap().len(), 2);
        assert!(ra.iter().all(|c| c.contains(":9500 ")), "{ra:?}");
        assert!(rb.iter().all(|c| c.contains(":9501 ")), "{rb:?}");
        // gc of one leaves the other's rules alone (its records are not
        // in this store).
        assert!(a.gc().await.unwrap().port_rules.is_empty());
        assert_eq!(rules(&b).await, rb);
        // Removing one network's sandbox and the network itself leaves the
        // other serving.
        pa.remove().await.unwrap();
        a.remove().await.unwrap();
        assert_eq!(podnet::internals::port_rules(&a).await.unwrap(), None);
        assert_eq!(rules(&b).await, rb);
        assert_eq!(
            podnet::internals::podnet_tables().unwrap(),
            [(tb, rb.clone())]
        );
        assert_eq!(read_from(SocketAddr::from(([10, 89, 0, 1], 9501))), "b");
        pb.remove().await.unwrap();
        b.remove().await.unwrap();
    });
}

#[test]
fn the_default_is_auto_which_uses_the_kernel_where_nf_tables_is_allowed() {
    in_netns(|ctx| async move {
        let net = Network::builder(BRIDGE)
            .subnet("10.88.0.0/16".parse().unwrap())
            .state_dir(&ctx.state)
            .build()
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
        assert_eq!(read_from("10.88.0.1:9600".parse().unwrap()), "80");
        assert_eq!(read_from("127.0.0.1:9600".parse().unwrap()), "80");
        assert_eq!(read_from("127.0.0.1:9601".parse().unwrap()), "80");
        pod.remove().await.unwrap();
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
        assert_eq!(podnet::internals::podnet_tables().unwrap(), []);

        // Userspace: no table at all.
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        assert_eq!(read_from(via_kernel(20123)), "30123");
        pod.remove().await.unwrap();
        assert!(rules(&net).await.is_empty());
        net.remove().await.unwrap();
    });
}

fn via_kernel(port: u16) -> SocketAddr {
    Via::Kernel.at(port)
}

#[test]
fn ipv6_goes_through_the_kernel_and_dropping_the_network_ends_its_rules() {
    in_netns(|ctx| async move {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
        let net = Network::builder(BRIDGE)
            .subnet("10.88.0.0/16".parse().unwrap())
            .subnet("fd00:88::/64".parse().unwrap())
            .state_dir(&ctx.state)
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
        let l = pod
            .run(|| TcpListener::bind("[::]:80"))
            .await
            .unwrap()
            .unwrap();
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
        assert_eq!(pod.ports()[0].forwarder, Forwarder::Kernel);
        // `::` by the kernel: IPv4 clients to the pod's IPv4 address, IPv6
        // ones to its IPv6 address. IPv6 is forwarded here, IPv4 not: 3
        // rules for IPv6, only the output one for IPv4.
        let made = rules(&net).await;
        assert_eq!(made.len(), 4, "{made:?}");
        assert_eq!(read_from("10.88.0.1:9700".parse().unwrap()), "v4");
        assert_eq!(read_from("[fd00:88::1]:9700".parse().unwrap()), "v6");
        // Dropping every handle to the network ends its mappings, its
        // table included (the sandbox stays: a plain drop removes nothing).
        drop(pod);
        drop(net);
        let t = Instant::now();
        while !podnet::internals::podnet_tables().unwrap().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5), "table left");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eventually("the port is free", || {
            tcp_free("[::]:9700".parse().unwrap())
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
