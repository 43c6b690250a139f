//! Rootless ports on the real host, for real: a rootless process publishes
//! a pod's port on the `127.0.0.1` of the namespace it started in (the
//! machine's own, for CI's unprivileged user), and a client there reaches
//! the pod through it; a taken port changes nothing; the port closes with
//! `remove_port`, the sandbox, the network and the process; the socket
//! maker that binds it (`podnet-outer`) fails a request it does not answer
//! and leaves no zombie behind.
//!
//! Its own binary (`harness = false`): `main` never enters a namespace. It
//! plays the user at the machine, the client of every port; the rootless
//! side of each claim is this binary run again as a child (`--pod`), which
//! calls `rootless::enter_private()` itself and does what `main` asks, a
//! line at a time on its stdin (see [`pod_side`]). Nothing is sent to any
//! address but the real host's loopback and the child's own namespaces.
//!
//! ```text
//! cargo test --test hostports
//! setpriv --reuid=podnet-ci --regid=podnet-ci --clear-groups target/debug/deps/hostports-*
//! ```
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use podnet::{Error, PortMapping, Protocol, Sandbox};

/// The pod's servers' port, TCP and UDP: each answers `peer <address>
/// <port>`, the client it sees.
const POD_PORT: u16 = 8000;

/// The pod's TCP echo server: sends back what it reads, until EOF.
const ECHO_PORT: u16 = 8001;

const LOOPBACK: &str = "127.0.0.1";

/// How long the pod side may take to answer one request (a stopped
/// socket maker is given 5 s; nothing else takes more than milliseconds).
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Counts the claims that held, saying each.
struct Passed(u32);

impl Passed {
    fn ok(&mut self, claim: &str) {
        println!("hostports: {claim} ... ok");
        self.0 += 1;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--pod") => return pod_side(Path::new(&args[2]), args.get(3).map(String::as_str)),
        Some("--refused-entry") => return refused_entry(),
        Some("--own-host") => return own_host(Path::new(&args[2]), &args[3]),
        _ => {}
    }
    let state = StateDir(
        std::env::temp_dir().join(format!("podnet-hostports-test-{}", std::process::id())),
    );
    std::fs::create_dir(&state.0).unwrap();
    let state = &state.0;
    let mut passed = Passed(0);

    let mut pod = PodSide::start(&state.join("a"));
    a_tcp_port_on_the_real_hosts_loopback_reaches_the_pod(&mut pod);
    passed.ok("a TCP port on the real host's loopback reaches the pod");
    the_pod_sees_a_loopback_client_come_from_the_gateway(&mut pod);
    passed.ok("the pod sees a loopback client come from the gateway");
    a_udp_port_on_the_real_hosts_loopback_reaches_the_pod(&mut pod);
    passed.ok("a UDP port on the real host's loopback reaches the pod");
    a_large_stream_goes_through_whole_both_ways_with_half_close(&mut pod);
    passed.ok("a large stream goes through whole both ways, with half-close");
    a_taken_port_is_port_in_use_and_creates_nothing(&mut pod);
    passed.ok("a taken port is PortInUse and creates nothing");
    a_taken_port_is_port_in_use_and_adds_nothing(&mut pod);
    passed.ok("a taken port is PortInUse and adds nothing");
    a_taken_second_port_closes_the_first_again(&mut pod);
    passed.ok("a request whose second port is taken closes its first again");
    if let Some(port) = privileged_port() {
        a_privileged_port_is_a_privileged_port_error(&mut pod, port);
        passed.ok("a privileged port is PrivilegedPort, naming the way out");
    } else {
        println!(
            "hostports: this user may bind every port (root, or ip_unprivileged_port_start <= 1), \
             so the privileged-port claim is skipped here"
        );
    }
    remove_port_closes_it(&mut pod);
    passed.ok("remove_port closes it");
    removing_the_sandbox_closes_it(&mut pod);
    passed.ok("removing the sandbox closes it");
    pod.finish();

    let mut pod = PodSide::start(&state.join("b"));
    dropping_the_network_closes_it(&mut pod);
    passed.ok("dropping the network closes it");
    pod.finish();

    let pod = PodSide::start(&state.join("c"));
    the_end_of_the_process_closes_it(pod);
    passed.ok("the end of the process closes it");

    let mut pod = PodSide::start(&state.join("d"));
    a_stopped_socket_maker_fails_the_request_in_time_and_is_ended(&mut pod);
    passed.ok("a stopped socket maker fails the request in time and is ended");
    pod.finish();

    a_failed_entry_leaves_no_socket_maker_behind();
    passed.ok("a failed entry leaves no socket maker behind");

    a_non_loopback_client_is_seen_with_its_own_address(&state.join("e"));
    passed.ok("a non-loopback client is seen with its own address, TCP and UDP");

    a_client_keeps_its_address_where_sources_are_checked_with_marks(&state.join("f"));
    passed.ok("a client keeps its address where sources are checked with marks");

    without_the_kernel_path_a_non_loopback_client_is_seen_from_the_gateway(&state.join("g"));
    passed.ok("without the kernel path a non-loopback client is seen from the gateway");

    println!("hostports: {} passed, 0 failed", passed.0);
}

/// The test's state directory, removed when it ends, a failed claim's
/// panic included.
struct StateDir(std::path::PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Publishing TCP port 0 on the real host's 127.0.0.1 reports a real-host
/// port of the userspace forwarder, and a connection to it from here gets
/// the pod server's answer.
fn a_tcp_port_on_the_real_hosts_loopback_reaches_the_pod(pod: &mut PodSide) {
    let reply = pod.ask(&format!("publish tcp {LOOPBACK} 0"));
    let port = published(&reply);
    assert!(reply.contains(" real-host userspace "), "{reply}");
    assert!(fetch(port).unwrap().starts_with("peer "));
    pod.ask(&format!("unpublish tcp {port}"));
}

/// The pod sees a client of the real host's loopback come from the
/// network's gateway address: the forwarder's connection to it.
fn the_pod_sees_a_loopback_client_come_from_the_gateway(pod: &mut PodSide) {
    let port = published(&pod.ask(&format!("publish tcp {LOOPBACK} 0")));
    let got = fetch(port).unwrap();
    assert!(got.starts_with(&format!("peer {} ", pod.gateway)), "{got}");
    pod.ask(&format!("unpublish tcp {port}"));
}

/// A datagram to a UDP port published on the real host's 127.0.0.1 gets
/// the pod server's answer back.
fn a_udp_port_on_the_real_hosts_loopback_reaches_the_pod(pod: &mut PodSide) {
    let port = published(&pod.ask(&format!("publish udp {LOOPBACK} 0")));
    let sock = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(b"hi", (LOOPBACK, port)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
    let got = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(got.starts_with(&format!("peer {} ", pod.gateway)), "{got}");
    pod.ask(&format!("unpublish udp {port}"));
}

/// 16 MiB sent to the pod's echo server through a real-host port, then a
/// half-close, come back whole and in order, and then EOF.
fn a_large_stream_goes_through_whole_both_ways_with_half_close(pod: &mut PodSide) {
    let port = published(&pod.ask(&format!("publish tcp {LOOPBACK} 0 {ECHO_PORT}")));
    let sent: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect((LOOPBACK, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let data = sent.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == sent, "{} bytes back of {}", back.len(), sent.len());
    pod.ask(&format!("unpublish tcp {port}"));
}

/// A sandbox created with a mapping on a real-host port this process
/// holds fails with PortInUse naming it, and is not made.
fn a_taken_port_is_port_in_use_and_creates_nothing(pod: &mut PodSide) {
    let taken = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let reply = pod.ask(&format!("create other {port}"));
    assert!(
        reply.starts_with(&format!(
            "err PortInUse EADDRINUSE tcp port 127.0.0.1:{port} on the real host is already in use"
        )),
        "{reply}"
    );
    assert_eq!(pod.ask("sandboxes"), "ok web");
    assert_eq!(pod.ask("holders"), "ok 1");
}

/// A create with two real-host ports, the second taken, fails with
/// PortInUse for the second, and the first, bound through podnet-outer
/// before it, is closed again: this process can bind it.
fn a_taken_second_port_closes_the_first_again(pod: &mut PodSide) {
    let free = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let first = free.local_addr().unwrap().port();
    drop(free);
    let taken = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let second = taken.local_addr().unwrap().port();
    let reply = pod.ask(&format!("create other {first} {second}"));
    assert!(
        reply.starts_with(&format!(
            "err PortInUse EADDRINUSE tcp port 127.0.0.1:{second} on the real host"
        )),
        "{reply}"
    );
    assert_eq!(pod.ask("sandboxes"), "ok web");
    TcpListener::bind((LOOPBACK, first)).expect("the first port was closed again");
}

/// add_port on a real-host port this process holds fails with PortInUse,
/// and the sandbox's published ports are as they were.
fn a_taken_port_is_port_in_use_and_adds_nothing(pod: &mut PodSide) {
    let kept = published(&pod.ask(&format!("publish tcp {LOOPBACK} 0")));
    let taken = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let reply = pod.ask(&format!("publish udp {LOOPBACK} {port}"));
    assert!(reply.starts_with("err PortInUse EADDRINUSE"), "{reply}");
    assert_eq!(
        pod.ask("ports"),
        format!("ok tcp 127.0.0.1:{kept} -> {POD_PORT} (real host)")
    );
    pod.ask(&format!("unpublish tcp {kept}"));
}

/// A port below the real host's first unprivileged port is refused with
/// PrivilegedPort (EACCES), whose message says what to do.
fn a_privileged_port_is_a_privileged_port_error(pod: &mut PodSide, port: u16) {
    let reply = pod.ask(&format!("publish tcp {LOOPBACK} {port}"));
    assert!(reply.starts_with("err PrivilegedPort EACCES"), "{reply}");
    assert!(reply.contains("ip_unprivileged_port_start"), "{reply}");
    assert_eq!(pod.ask("ports"), "ok ");
}

/// After remove_port, the real-host port refuses connections, and this
/// process can bind it itself.
fn remove_port_closes_it(pod: &mut PodSide) {
    let port = published(&pod.ask(&format!("publish tcp {LOOPBACK} 0")));
    fetch(port).unwrap();
    assert_eq!(pod.ask(&format!("unpublish tcp {port}")), "ok");
    assert_closed(port);
}

/// Removing the sandbox closes its real-host ports.
fn removing_the_sandbox_closes_it(pod: &mut PodSide) {
    let port = published(&pod.ask(&format!("publish tcp {LOOPBACK} 0")));
    fetch(port).unwrap();
    assert_eq!(pod.ask("remove"), "ok");
    assert_closed(port);
}

/// Dropping every handle of the network (and of its sandbox) closes its
/// real-host ports, soon: a drop does not wait for the forwarder's thread
/// to end.
fn dropping_the_network_closes_it(pod: &mut PodSide) {
    let port = published(&pod.ask(&format!("publish tcp {LOOPBACK} 0")));
    fetch(port).unwrap();
    assert_eq!(pod.ask("drop"), "ok");
    let refused = (0..500).any(|_| {
        let open = TcpStream::connect((LOOPBACK, port)).is_ok();
        open.then(|| std::thread::sleep(Duration::from_millis(10)))
            .is_none()
    });
    assert!(refused, "port {port} still open 5 s after the drop");
    assert_closed(port);
}

/// A process killed with its ports published leaves none open, and its
/// socket maker exits.
fn the_end_of_the_process_closes_it(mut pod: PodSide) {
    let port = published(&pod.ask(&format!("publish tcp {LOOPBACK} 0")));
    fetch(port).unwrap();
    let outer: i32 = pod
        .ask("outer")
        .strip_prefix("ok ")
        .unwrap()
        .parse()
        .unwrap();
    pod.child.kill().unwrap();
    pod.child.wait().unwrap();
    assert_closed(port);
    let gone = (0..500).any(|_| {
        let live = common::proc_stat(outer).is_some_and(|(state, _)| state != 'Z');
        live.then(|| std::thread::sleep(Duration::from_millis(10)))
            .is_none()
    });
    assert!(gone, "podnet-outer {outer} outlived its process");
}

/// A socket maker that does not answer (stopped) fails the request within
/// its timeout (ETIMEDOUT, not a hang), is ended and reaped, and later
/// requests fail at once instead of taking its late answer.
fn a_stopped_socket_maker_fails_the_request_in_time_and_is_ended(pod: &mut PodSide) {
    let outer: i32 = pod
        .ask("outer")
        .strip_prefix("ok ")
        .unwrap()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(outer);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let reply = pod.ask(&format!("publish tcp {LOOPBACK} 0"));
    assert!(reply.starts_with("err Sys ETIMEDOUT"), "{reply}");
    assert!(
        common::proc_stat(outer).is_none(),
        "podnet-outer {outer} was not ended and reaped"
    );
    let reply = pod.ask(&format!("publish tcp {LOOPBACK} 0"));
    assert!(reply.starts_with("err Sys EPIPE"), "{reply}");
    assert!(reply.contains("earlier request broke"), "{reply}");
}

/// The real host is a namespace of this claim's own here (a child that
/// enters private namespaces, with [`OWN_CLIENT`] on its `lo`, runs the
/// pod side as its own child): a client there from that address, not
/// loopback, is seen by the pod with it and its port, over TCP and UDP.
fn a_non_loopback_client_is_seen_with_its_own_address(state: &Path) {
    on_own_host(state, "tcp-udp");
}

/// As [`a_non_loopback_client_is_seen_with_its_own_address`] (TCP), with
/// `src_valid_mark` on in the forwarder's namespace (a new namespace
/// copies it from the initial one, where `wg-quick` turns it on): the
/// kernel then checks the source of the pod's replies with their mark,
/// which must not make the pod's own address look local.
fn a_client_keeps_its_address_where_sources_are_checked_with_marks(state: &Path) {
    on_own_host(state, "src-valid-mark");
}

/// With the userspace forwarder only (`PortForwarding::Userspace`: no
/// nf_tables table to mark the pod's replies), a non-loopback client of a
/// real-host port is seen from the gateway, and the port says so.
fn without_the_kernel_path_a_non_loopback_client_is_seen_from_the_gateway(state: &Path) {
    on_own_host(state, "userspace");
}

/// The client address of the claims on a real host of their own.
const OWN_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 5);

/// Run `own_host(state, case)` in a child, and check it succeeded.
fn on_own_host(state: &Path, case: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .arg("--own-host")
        .arg(state)
        .arg(case)
        .status()
        .unwrap();
    assert!(status.success(), "the own real host's check {case} failed");
}

/// The child of [`on_own_host`]: a real host with [`OWN_CLIENT`] on `lo`,
/// a pod side below it, and the check of `case`.
fn own_host(state: &Path, case: &str) {
    podnet::rootless::enter_private().expect("a real host of our own");
    let client = OWN_CLIENT;
    add_address_to_lo(client);
    let forwarding = (case == "userspace").then_some("userspace");
    let mut pod = PodSide::start_with(state, forwarding);
    if case == "src-valid-mark" {
        let set = pod.ask("sysctl net.ipv4.conf.all.src_valid_mark 1");
        assert_eq!(set, "ok");
    }
    let reply = pod.ask("publish tcp 0.0.0.0 0");
    let (shown, seen) = if case == "userspace" {
        ("gateway", pod.gateway)
    } else {
        ("own-addresses", IpAddr::V4(client))
    };
    assert!(
        reply.ends_with(&format!(" real-host userspace {shown}")),
        "{reply}"
    );
    let port = published(&reply);
    let mut s = tcp_from(
        SocketAddr::from((client, 0)),
        SocketAddr::from((client, port)),
    );
    let local = s.local_addr().unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    if case == "userspace" {
        assert!(got.starts_with(&format!("peer {seen} ")), "{got}");
    } else {
        assert_eq!(got, format!("peer {seen} {}\n", local.port()));
    }
    if case != "tcp-udp" {
        pod.finish();
        return;
    }

    let port = published(&pod.ask("publish udp 0.0.0.0 0"));
    let sock = UdpSocket::bind((client, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(b"hi", (client, port)).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    let local = sock.local_addr().unwrap();
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        format!(
            "peer {client} {}
",
            local.port()
        )
    );
    pod.finish();
}

/// Add `addr`/32 to `lo` of this thread's namespace.
fn add_address_to_lo(addr: std::net::Ipv4Addr) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            handle
                .address()
                .add(1, IpAddr::V4(addr), 32)
                .execute()
                .await
                .unwrap();
        });
}

/// A TCP connection from `from` to `to`.
fn tcp_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only");
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(from),
    )
    .unwrap();
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// enter_private() that fails after forking its socket maker (unshare
/// refused by a seccomp filter, in a child) reaps it: no podnet-outer
/// child is left, not even a zombie.
fn a_failed_entry_leaves_no_socket_maker_behind() {
    let status = Command::new(std::env::current_exe().unwrap())
        .arg("--refused-entry")
        .status()
        .unwrap();
    assert!(status.success(), "the refused entry's check failed");
}

/// The child of [`a_failed_entry_leaves_no_socket_maker_behind`].
fn refused_entry() {
    common::refuse_on_this_thread(nix::libc::SYS_unshare, nix::libc::EPERM);
    let err = podnet::rootless::enter_private().unwrap_err();
    assert!(matches!(err, Error::NotPermitted { .. }), "{err}");
    let me = std::process::id().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
            stat.contains("(podnet-outer)") && after.split_whitespace().nth(1) == Some(&me)
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The real host's first unprivileged port, minus one, if this process
/// could not bind it (it is not root and the sysctl leaves some ports
/// privileged).
fn privileged_port() -> Option<u16> {
    if nix::unistd::geteuid().is_root() {
        return None;
    }
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").ok()?;
    let first: u16 = text.trim().parse().ok()?;
    // PrivilegedPort is said of ports below 1024 (above, an EACCES has
    // another cause).
    (first > 1).then(|| (first - 1).min(1023))
}

/// The port a `publish` reply names.
fn published(reply: &str) -> u16 {
    let Some(rest) = reply.strip_prefix("ok ") else {
        panic!("not published: {reply}");
    };
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// What the pod's server says on a connection to the real host's
/// 127.0.0.1:`port`, read to its end.
fn fetch(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect((LOOPBACK, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = String::new();
    s.read_to_string(&mut got)?;
    Ok(got)
}

/// The real host's 127.0.0.1:`port` refuses connections, and is free to
/// bind.
fn assert_closed(port: u16) {
    let err = TcpStream::connect((LOOPBACK, port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    TcpListener::bind((LOOPBACK, port)).unwrap();
}

/// The rootless side of a claim: this binary run with `--pod`, talked to a
/// line at a time.
struct PodSide {
    child: Child,
    stdin: ChildStdin,
    /// Its stdout's lines, read on a thread of their own so that an
    /// answer that does not come fails the claim in time.
    out: std::sync::mpsc::Receiver<std::io::Result<String>>,
    /// The network's gateway: where the pod sees forwarded clients from.
    gateway: IpAddr,
}

impl PodSide {
    fn start(state: &Path) -> PodSide {
        PodSide::start_with(state, None)
    }

    /// As [`PodSide::start`], with the network's port forwarding
    /// `userspace` if `forwarding` says so (else the default).
    fn start_with(state: &Path, forwarding: Option<&str>) -> PodSide {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--pod")
            .arg(state)
            .args(forwarding)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let ready = out
            .recv_timeout(ANSWER_WAIT)
            .expect("the pod side's first line")
            .unwrap();
        let gateway = ready
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("the pod side did not start: {ready}"))
            .parse()
            .unwrap();
        PodSide {
            child,
            stdin,
            out,
            gateway,
        }
    }

    /// Send `line`; its one-line answer.
    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        match self.out.recv_timeout(ANSWER_WAIT) {
            Ok(answer) => answer.unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the pod side did not answer {line:?} in {ANSWER_WAIT:?}")
            }
            Err(_) => panic!("the pod side ended at {line:?}"),
        }
    }

    /// Ask it to clean up and exit, and check it did.
    fn finish(mut self) {
        assert_eq!(self.ask("exit"), "ok");
        assert!(self.child.wait().unwrap().success());
    }
}

/// The child: rootless, a network and a sandbox `web` whose servers answer
/// on [`POD_PORT`]; then one command a line, one answer a line (`ok ...` or
/// `err <variant> <errno> <message>`):
///
/// - `publish tcp|udp <ip> <port> [<pod port>]`: add a real-host mapping
///   to `web` (default pod port [`POD_PORT`]);
///   `ok <port> real-host|network <forwarder> own-addresses|gateway`
/// - `unpublish tcp|udp <port>`: remove_port of that published port
/// - `create <name> <port>`: a sandbox with a real-host TCP mapping
/// - `sandboxes`, `holders`, `ports`: what there is
/// - `outer`: the PID of this process's podnet-outer
/// - `sysctl <name> <value>`: set it in the network's host namespace
/// - `remove`: remove `web`; `drop`: drop every handle of it and the network
/// - `exit`: remove what is left and end
///
/// `forwarding` `userspace` makes the network's port forwarding
/// `PortForwarding::Userspace`.
fn pod_side(state: &Path, forwarding: Option<&str>) {
    podnet::rootless::enter_private().expect("rootless::enter_private");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut builder = common::network_builder(state, "pnhost0", &["10.88.0.0/16"]);
        if forwarding == Some("userspace") {
            builder = builder.port_forwarding(podnet::PortForwarding::Userspace);
        }
        let net = builder.build().await.expect("build the network");
        let web = net.sandbox("web").create().await.expect("create web");
        serve(&web).await;
        println!("ready {}", net.gateways()[0]);
        let (mut net, mut web) = (Some(net), Some(web));
        let mut lines = BufReader::new(std::io::stdin()).lines();
        while let Some(Ok(line)) = lines.next() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match (words.as_slice(), net.as_ref(), web.as_ref()) {
                (["exit"], ..) => break,
                (["drop"], ..) => {
                    (net, web) = (None, None);
                    "ok".to_owned()
                }
                (["outer"], ..) => format!("ok {}", outer_pid()),
                (["sysctl", name, value], ..) => {
                    let path = format!("/proc/sys/{}", name.replace('.', "/"));
                    match std::fs::write(&path, value) {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => format!("err Io - {path}: {e}"),
                    }
                }
                (words, Some(net), Some(web)) => command(words, net, web).await,
                _ => "err Gone - the network was dropped".to_owned(),
            };
            println!("{answer}");
        }
        if let Some(web) = web {
            web.remove().await.unwrap();
        }
        if let Some(net) = net {
            net.remove().await.unwrap();
        }
        println!("ok");
    });
    let _ = std::fs::remove_dir_all(state);
}

async fn command(words: &[&str], net: &podnet::Network, web: &Sandbox) -> String {
    let proto = |w: &str| match w {
        "udp" => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    match words {
        ["publish", p, ip, port, rest @ ..] => {
            let to = rest.first().map_or(POD_PORT, |p| p.parse().unwrap());
            let m = PortMapping::new(proto(p), port.parse().unwrap(), to)
                .host_ip(ip.parse().unwrap())
                .real_host();
            match web.add_port(m).await {
                Ok(got) => {
                    let netns = match got[0].netns {
                        podnet::PortNetns::RealHost => "real-host",
                        _ => "network",
                    };
                    let shown = if got[0].client_addresses {
                        "own-addresses"
                    } else {
                        "gateway"
                    };
                    format!(
                        "ok {} {netns} {} {shown}",
                        got[0].host.port(),
                        got[0].forwarder
                    )
                }
                Err(e) => error_line(&e),
            }
        }
        ["unpublish", p, port] => {
            let port: u16 = port.parse().unwrap();
            let found = web
                .ports()
                .into_iter()
                .find(|x| x.protocol == proto(p) && x.host.port() == port);
            match found {
                Some(x) => web
                    .remove_port(&x)
                    .await
                    .map_or_else(|e| error_line(&e), |()| "ok".into()),
                None => format!("err NotFound - {p} {port} is not published"),
            }
        }
        ["create", name, ports @ ..] => {
            let mut sandbox = net.sandbox(*name);
            for port in ports {
                let m = PortMapping::tcp(port.parse().unwrap(), POD_PORT)
                    .host_ip(LOOPBACK.parse().unwrap())
                    .real_host();
                sandbox = sandbox.port(m);
            }
            match sandbox.create().await {
                Ok(_) => "ok".to_owned(),
                Err(e) => error_line(&e),
            }
        }
        ["sandboxes"] => {
            let mut names: Vec<String> = net
                .sandboxes()
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect();
            names.sort();
            format!("ok {}", names.join(","))
        }
        ["holders"] => format!("ok {}", common::holders().len()),
        ["ports"] => {
            let ports: Vec<String> = web.ports().iter().map(ToString::to_string).collect();
            format!("ok {}", ports.join(", "))
        }
        ["remove"] => web
            .remove()
            .await
            .map_or_else(|e| error_line(&e), |()| "ok".into()),
        _ => format!("err Unknown - {words:?}"),
    }
}

/// `err <variant> <errno or -> <message>` for `e`.
fn error_line(e: &Error) -> String {
    let debug = format!("{e:?}");
    let variant: String = debug
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let errno = e
        .errno()
        .map_or_else(|| "-".to_owned(), |n| format!("{n:?}"));
    format!("err {variant} {errno} {e}")
}

/// The pod's servers on [`POD_PORT`]: TCP answers `peer <address> <port>`
/// and closes, UDP answers each datagram with it; and TCP echo on
/// [`ECHO_PORT`].
async fn serve(pod: &Sandbox) {
    let echo = common::listen_in(pod, ("0.0.0.0", ECHO_PORT)).await;
    std::thread::spawn(move || {
        for conn in echo.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut out = conn.try_clone().unwrap();
            let _ = std::io::copy(&mut conn, &mut out);
        }
    });
    let tcp = common::listen_in(pod, ("0.0.0.0", POD_PORT)).await;
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut conn) = conn else { return };
            let peer = conn.peer_addr().unwrap();
            let _ = writeln!(conn, "peer {} {}", peer.ip(), peer.port());
        }
    });
    let udp = pod
        .run(|| UdpSocket::bind(("0.0.0.0", POD_PORT)))
        .await
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let answer = format!("peer {} {}\n", from.ip(), from.port());
            let _ = udp.send_to(answer.as_bytes(), from);
        }
    });
}

/// The PID of this process's podnet-outer.
fn outer_pid() -> i32 {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let after = stat.rsplit_once(") ").map(|(_, a)| a)?;
            (stat.contains("(podnet-outer)") && after.split_whitespace().nth(1) == Some(&me))
                .then(|| e.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .expect("a podnet-outer child")
}
