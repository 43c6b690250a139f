//! What the integration tests share. Every networking test runs through
//! [`in_netns`]: a new thread, a new network namespace for it, `lo` up, a
//! current-thread runtime and a temporary state directory. Tests therefore
//! run in parallel, never collide, and never touch the machine's real
//! network.
//!
//! One of each, used by every test file:
//! - waiting: [`eventually`], for anything a test waits on;
//! - networks: [`network_builder`] (and [`build_network`], [`network`] on
//!   top of it);
//! - child processes: [`child_command`] runs this test binary again as a
//!   child, [`child_main`] is the child's side, [`spawn_until`] waits for a
//!   child's line;
//! - lookups: links ([`links`], [`link`], [`ports`], ...), the store
//!   ([`store_dir`], [`record_path`], [`reservation_path`],
//!   [`state_entries`]) and holders ([`holders`], [`holders_of`]).
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use nix::sched::{unshare, CloneFlags};
use rtnetlink::{Handle, LinkUnspec};

pub mod cluster;

/// What a test body gets.
pub struct Ctx {
    /// A state directory of its own (removed after the test; the test
    /// asserts it is empty of files first).
    pub state: PathBuf,
    /// A netlink handle in the test's namespace, for checking.
    pub nl: Handle,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Run `body` in a fresh network namespace on a thread of its own. Skips
/// (printing why) when namespaces cannot be made, unless
/// `PODNET_REQUIRE_PRIV=1`, which turns the skip into a failure.
pub fn in_netns<F, Fut>(body: F)
where
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        if let Err(errno) = unshare(CloneFlags::CLONE_NEWNET) {
            let why = format!("cannot unshare a network namespace ({errno}): run as root or under `unshare --user --map-root-user`");
            if std::env::var("PODNET_REQUIRE_PRIV").as_deref() == Ok("1") {
                panic!("PODNET_REQUIRE_PRIV=1 but {why}");
            }
            eprintln!("SKIPPED: {why}");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state = std::env::temp_dir().join(format!(
            "podnet-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _cleanup = RemoveDir(state.clone());
        // Persistent holders outlive a failing test by design: end those of
        // this namespace however the test ends.
        let _holders = KillHolders(network_key_prefix());
        rt.block_on(async move {
            let (conn, nl, _) = rtnetlink::new_connection().expect("netlink");
            tokio::spawn(conn);
            nl.link()
                .set(LinkUnspec::new_with_index(1).up().build())
                .execute()
                .await
                .expect("lo up");
            body(Ctx { state, nl }).await;
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `netns-<cookie>/`: how holders of networks in the calling thread's
/// namespace name it in their argv (podnet keys by `SO_NETNS_COOKIE`).
pub fn network_key_prefix() -> String {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: nix::libc::c_int = 71;
    let sock = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    let mut cookie: u64 = 0;
    let mut len: nix::libc::socklen_t = 8; // size_of::<u64>()
                                           // SAFETY: getsockopt writes at most `len` bytes into the u64.
    let rc = unsafe {
        nix::libc::getsockopt(
            sock.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_NETNS_COOKIE");
    format!("netns-{cookie}/")
}

/// Live (not zombie) holders whose network key starts with `prefix`, with
/// the sandbox name they hold.
pub fn holders_of(prefix: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let zombie = proc_stat(pid).is_some_and(|(state, _)| state == 'Z');
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if !zombie
            && args.first() == Some(&&b"podnet-pause"[..])
            && args
                .get(1)
                .is_some_and(|k| k.starts_with(prefix.as_bytes()))
        {
            let name =
                String::from_utf8_lossy(args.get(2).copied().unwrap_or_default()).into_owned();
            out.push((pid, name));
        }
    }
    out
}

/// The state (`R`, `S`, `Z`, ...) and start time of process `pid`, from
/// `/proc/PID/stat` (fields 3 and 22), if it exists.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// PIDs of the live holders of the networks of the calling thread's
/// namespace (not other tests', not zombies).
pub fn holders() -> BTreeSet<u32> {
    holders_of(&network_key_prefix())
        .into_iter()
        .map(|(pid, _)| u32::try_from(pid).unwrap())
        .collect()
}

/// Whether process `pid` is in `/proc` (a zombie not yet reaped is).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether this process has an fd to a `proto` (`"tcp"` or `"udp"`)
/// socket bound to `port` in the calling thread's namespace, over IPv4 or
/// IPv6. What a test can check at once after podnet closed a socket: a
/// child that another test's thread forked holds copies of this process's
/// fds until its exec, so the port itself may stay taken a moment longer.
pub fn holds_socket_on(proto: &str, port: u16) -> bool {
    let mut inodes = BTreeSet::new();
    for table in [proto.to_owned(), format!("{proto}6")] {
        let text =
            std::fs::read_to_string(format!("/proc/thread-self/net/{table}")).unwrap_or_default();
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f.get(1).and_then(|a| a.rsplit(':').next());
            if local.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port) {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_str().is_some_and(|t| inodes.contains(t)))
        })
}

/// SIGKILL process `pid` (a holder, say).
pub fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

struct KillHolders(String);

impl Drop for KillHolders {
    fn drop(&mut self) {
        for (pid, _) in holders_of(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file and directory under `dir`.
pub fn tree_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            out.extend(tree_under(&p));
        }
    }
    out.sort();
    out
}

/// Every file (not directory) under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => out.extend(files_under(&p)),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
    out
}

fn link_name(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every link in the test's namespace.
async fn dump_links(nl: &Handle) -> Vec<LinkMessage> {
    nl.link()
        .get()
        .execute()
        .try_collect()
        .await
        .expect("dump links")
}

/// Names of all links in the test's namespace.
pub async fn links(nl: &Handle) -> BTreeSet<String> {
    let all = dump_links(nl).await;
    all.iter().map(link_name).collect()
}

/// Link `name` as a dump shows it, if there is one.
pub async fn link(nl: &Handle, name: &str) -> Option<LinkMessage> {
    dump_links(nl)
        .await
        .into_iter()
        .find(|l| link_name(l) == name)
}

/// The hardware address of link `name`.
pub async fn mac(nl: &Handle, name: &str) -> Vec<u8> {
    link(nl, name)
        .await
        .expect("link exists")
        .attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(m),
            _ => None,
        })
        .expect("link has an address")
}

/// The index of link `name`, if there is one.
pub async fn link_index(nl: &Handle, name: &str) -> Option<u32> {
    link(nl, name).await.map(|l| l.header.index)
}

/// Names of the ports of bridge `bridge`.
pub async fn ports(nl: &Handle, bridge: &str) -> BTreeSet<String> {
    let Some(index) = link_index(nl, bridge).await else {
        return BTreeSet::new();
    };
    dump_links(nl)
        .await
        .iter()
        .filter(|l| l.attributes.contains(&LinkAttribute::Controller(index)))
        .map(link_name)
        .collect()
}

/// All (ifindex, address) pairs in the test's namespace, but IPv6
/// link-local ones: the kernel adds those by itself to a bridge the first
/// time it has carrier (addrconf), which is no change of ours.
pub async fn addresses(nl: &Handle) -> BTreeSet<(u32, IpAddr)> {
    let all: Vec<_> = nl
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .expect("dump addresses");
    all.iter()
        .flat_map(|m| {
            m.attributes.iter().filter_map(move |a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) if ip.is_unicast_link_local() => None,
                AddressAttribute::Address(ip) => Some((m.header.index, *ip)),
                _ => None,
            })
        })
        .collect()
}

/// The directory of the test's network store (the one holding `addr/` and
/// `sandbox/`); there must be exactly one network.
pub fn store_dir(ctx: &Ctx) -> PathBuf {
    let dirs: Vec<PathBuf> = tree_under(&ctx.state)
        .into_iter()
        .filter(|p| p.ends_with("addr") && p.is_dir())
        .filter_map(|p| p.parent().map(Path::to_owned))
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "one store under {}: {dirs:?}",
        ctx.state.display()
    );
    dirs[0].clone()
}

/// The record of sandbox `name` in the test's store.
pub fn record_path(ctx: &Ctx, name: &str) -> PathBuf {
    store_dir(ctx).join("sandbox").join(name)
}

/// The reservation of address `ip` in the test's store.
pub fn reservation_path(ctx: &Ctx, ip: &str) -> PathBuf {
    store_dir(ctx).join("addr").join(ip)
}

/// What the test's state directory holds in directories named one of
/// `kinds` (`"addr"`, `"sandbox"`, `"volumes"`): what claims an address, a
/// name or a volume.
pub fn state_entries(ctx: &Ctx, kinds: &[&str]) -> Vec<PathBuf> {
    tree_under(&ctx.state)
        .into_iter()
        .filter(|p| {
            let p = p.to_string_lossy();
            kinds.iter().any(|k| p.contains(&format!("/{k}/")))
        })
        .collect()
}

/// Add a veth pair `name`–`peer` in the test's namespace (a link that is
/// not podnet's, or one made to look like one).
pub async fn add_veth(nl: &Handle, name: &str, peer: &str) {
    nl.link()
        .add(rtnetlink::LinkVeth::new(name, peer).build())
        .execute()
        .await
        .unwrap_or_else(|e| panic!("add veth {name}: {e}"));
}

/// A TCP listener on `addr` inside `pod`, made by a thread of it.
pub async fn listen_in(
    pod: &podnet::Sandbox,
    addr: impl ToSocketAddrs + Send + 'static,
) -> TcpListener {
    pod.run(move || TcpListener::bind(addr))
        .await
        .expect("run in the sandbox")
        .expect("bind in the sandbox")
}

/// Accept one connection and read it to the end, on a thread of its own.
pub fn serve_once(l: TcpListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    })
}

/// A member process of `pod` that sends `msg` to `addr:port` over bash's
/// /dev/tcp; whether it connected.
pub async fn send_from(pod: &podnet::Sandbox, addr: &str, port: u16, msg: &str) -> bool {
    pod.command("bash")
        .arg("-c")
        .arg(format!("echo -n {msg} > /dev/tcp/{addr}/{port}"))
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("run bash in sandbox")
        .success()
}

/// Network `bridge` of one pool ([`SUBNET`]) without DNS, its store in the
/// test's state directory.
pub async fn network_without_dns(ctx: &Ctx, bridge: &str) -> podnet::Network {
    network_builder(&ctx.state, bridge, &[SUBNET])
        .dns(false)
        .build()
        .await
        .unwrap()
}

/// The bridge of the network most tests use ([`network`]).
pub const BRIDGE: &str = "pn0";

/// The pool of the network most tests use ([`network`]).
pub const SUBNET: &str = "10.88.0.0/16";

/// Network `bridge` with a pool for each of `subnets` and its store in
/// `state`, to be built (`.build().await`) once the test has added what
/// it needs (port forwarding, say). The one way tests make networks. Its
/// DNS forwards nothing (`DnsUpstream::None`): no name a test's pod looks
/// up ever leaves the test's namespace, even as a query.
pub fn network_builder(state: &Path, bridge: &str, subnets: &[&str]) -> podnet::NetworkBuilder {
    subnets.iter().fold(
        podnet::Network::builder(bridge)
            .state_dir(state)
            .dns_upstream(podnet::DnsUpstream::None),
        |builder, subnet| builder.subnet(subnet.parse().unwrap()),
    )
}

/// Build network `bridge` with one pool, `subnet`, and its store in `state`.
pub async fn build_network(
    state: &Path,
    bridge: &str,
    subnet: &str,
) -> podnet::Result<podnet::Network> {
    network_builder(state, bridge, &[subnet]).build().await
}

/// The test's network: [`BRIDGE`] with the pool [`SUBNET`], its store in
/// the test's state directory.
pub async fn network(ctx: &Ctx) -> podnet::Network {
    build_network(&ctx.state, BRIDGE, SUBNET)
        .await
        .expect("build network")
}

/// Wait until `cond` holds, polling every 10 ms (a fiftieth of `within` if
/// that is less); fail the test, naming `what`, if it does not within
/// `within`. Returns how long it took. `cond` is an async closure, so it
/// may ask netlink, gc or the store as well as look at `/proc`
/// (`async || !path.exists()`); it may keep what it saw in a variable of
/// the test's.
pub async fn eventually(
    what: &str,
    within: Duration,
    mut cond: impl AsyncFnMut() -> bool,
) -> Duration {
    // A short wait is polled more often: a fiftieth of it.
    let period = (within / 50).min(Duration::from_millis(10));
    let t = Instant::now();
    while !cond().await {
        assert!(t.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(period).await;
    }
    t.elapsed()
}

/// Links (with whether each is up) and addresses: what "nothing changed"
/// compares.
pub type Snapshot = (BTreeSet<(String, bool)>, BTreeSet<(u32, IpAddr)>);

/// The [`Snapshot`] of the test's namespace now.
pub async fn snapshot(nl: &Handle) -> Snapshot {
    let links = dump_links(nl)
        .await
        .iter()
        .map(|l| {
            let up = l
                .header
                .flags
                .contains(netlink_packet_route::link::LinkFlags::Up);
            (link_name(l), up)
        })
        .collect();
    (links, addresses(nl).await)
}

/// This test binary run again as a child: only its ignored test
/// `child_process`, which joins the calling thread's network namespace
/// (`PODNET_CHILD_NETNS`) and does `action` with the test's state directory
/// (see [`child_main`]). stdout is piped, stderr inherited; no failpoint
/// unless the caller sets `PODNET_FAILPOINT`.
pub fn child_command(ctx: &Ctx, action: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_process",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(
        "PODNET_CHILD_NETNS",
        format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            nix::unistd::gettid()
        ),
    )
    .env("PODNET_CHILD_STATE", &ctx.state)
    .env("PODNET_CHILD_ACTION", action)
    .env_remove("PODNET_FAILPOINT")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit());
    cmd
}

/// The child's side of [`child_command`], the body of a test binary's
/// ignored `child_process` test: join the parent's network namespace and
/// run `body(state directory, action)` on a current-thread runtime. Does
/// nothing in a normal run (`--ignored` without a parent).
pub fn child_main<F, Fut>(body: F)
where
    F: FnOnce(PathBuf, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let (Ok(netns), Ok(state), Ok(action)) = (
        std::env::var("PODNET_CHILD_NETNS"),
        std::env::var("PODNET_CHILD_STATE"),
        std::env::var("PODNET_CHILD_ACTION"),
    ) else {
        return;
    };
    let ns = std::fs::File::open(&netns).unwrap();
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body(PathBuf::from(state), action));
}

/// Spawn `cmd` (its stdout piped) and wait up to `within` for a line of its
/// stdout that contains `marker` (the child's harness prints lines of its
/// own first); the child and that line. The rest of its stdout is read and
/// dropped until it ends, so the child never writes to a closed pipe. A
/// child that ends or hangs first is killed and fails the test.
pub fn spawn_until(
    cmd: &mut std::process::Command,
    marker: &str,
    within: Duration,
) -> (std::process::Child, String) {
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().expect("stdout piped"));
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_owned();
    std::thread::spawn(move || {
        let mut lines = out.lines().map_while(Result::ok);
        let _ = tx.send(lines.by_ref().find(|l| l.contains(&wanted)));
        lines.for_each(drop);
    });
    match rx.recv_timeout(within) {
        Ok(Some(line)) => (child, line),
        got => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child printed no line with {marker:?}: {got:?}");
        }
    }
}

/// Make system call `nr` fail with `errno` on this thread and the threads
/// and processes it starts from now on (a seccomp filter; `no_new_privs`
/// first, as the kernel requires of an unprivileged filter). Other tests'
/// threads are untouched.
pub fn refuse_on_this_thread(nr: nix::libc::c_long, errno: i32) {
    use nix::libc;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    let mut prog = [
        f(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        f(JEQ_K, 0, 3, ARCH),
        f(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        f(JEQ_K, 0, 1, nr as u32),
        f(RET_K, 0, 0, RET_ERRNO | errno as u32),
        f(RET_K, 0, 0, RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).unwrap(),
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl(2) with a filter program that outlives the call.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A DNS query for `name` of `qtype` (with EDNS if `edns`), as bytes.
pub fn dns_query(name: &str, qtype: hickory_proto::rr::RecordType, edns: bool) -> Vec<u8> {
    use hickory_proto::op::{Edns, Message, Query};
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        hickory_proto::rr::Name::from_ascii(name).unwrap(),
        qtype,
    ));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Ask `server` (UDP, port 53) about `name` from inside `pod`; the reply,
/// or `None` after three tries of a second each, as a stub resolver asks
/// (a test machine under load may be slow to answer one).
pub async fn dns_ask(
    pod: &podnet::Sandbox,
    server: IpAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> Option<hickory_proto::op::Message> {
    let packet = dns_query(name, qtype, false);
    pod.run(move || (0..3).find_map(|_| dns_exchange(server, &packet, Duration::from_secs(1))))
        .await
        .unwrap()
}

/// One UDP exchange with `server`:53 from this thread's namespace.
pub fn dns_exchange(
    server: IpAddr,
    packet: &[u8],
    wait: Duration,
) -> Option<hickory_proto::op::Message> {
    let any: IpAddr = if server.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let sock = std::net::UdpSocket::bind((any, 0)).unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(packet, (server, 53)).unwrap();
    let mut buf = [0u8; 65535];
    let id = &packet[..2];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if &buf[..2] == id {
            return hickory_proto::op::Message::from_vec(&buf[..n]).ok();
        }
    }
}

/// The addresses in the answer section of `m`.
pub fn dns_addresses(m: &hickory_proto::op::Message) -> Vec<IpAddr> {
    use hickory_proto::rr::RData;
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// A DNS server of the test's own, in its namespace, on UDP and TCP
/// `addr`: it answers every name with A 198.18.0.99, except `*.slow.test`
/// (never answered) and `big.test` (over UDP: truncated, TC set; over TCP:
/// 100 A records). It counts the queries it got and whether each had
/// EDNS. Stops when dropped.
pub struct FakeUpstream {
    pub addr: std::net::SocketAddr,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeUpstream {
    pub fn start(addr: std::net::SocketAddr) -> FakeUpstream {
        let udp = std::net::UdpSocket::bind(addr).unwrap();
        let tcp = TcpListener::bind(addr).unwrap();
        FakeUpstream::serve(udp, tcp)
    }

    /// Sockets for a fake on a free port of this namespace's 127.0.0.1,
    /// UDP and TCP alike: bound now (before a process changes namespace,
    /// say), served later with [`serve`](FakeUpstream::serve).
    pub fn bind_loopback() -> (std::net::UdpSocket, TcpListener) {
        loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr) {
                return (udp, tcp);
            }
        }
    }

    /// Serve on sockets bound already (their namespace is the one they
    /// were made in).
    pub fn serve(udp: std::net::UdpSocket, tcp: TcpListener) -> FakeUpstream {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let addr = udp.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    if let Some(r) = fake_answer(&buf[..n], false, &s) {
                        let _ = udp.send_to(&r, from);
                    }
                }
            }
        });
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let mut len = [0u8; 2];
                if c.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if c.read_exact(&mut q).is_err() {
                    continue;
                }
                if let Some(r) = fake_answer(&q, true, &s) {
                    let mut out = u16::try_from(r.len()).unwrap().to_be_bytes().to_vec();
                    out.extend(r);
                    let _ = std::io::Write::write_all(&mut c, &out);
                }
            }
        });
        FakeUpstream { addr, seen, stop }
    }

    /// How many queries for `name` it got.
    pub fn count(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn fake_answer(
    q: &[u8],
    tcp: bool,
    seen: &std::sync::Mutex<Vec<(String, bool)>>,
) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::{rdata::A, RData, Record};
    let query = Message::from_vec(q).ok()?;
    let name = query.queries.first()?.name().to_ascii();
    let name = name.trim_end_matches('.').to_owned();
    seen.lock()
        .unwrap()
        .push((name.clone(), query.edns.is_some()));
    if name.ends_with(".slow.test") {
        return None;
    }
    let mut r = Message::response(query.metadata.id, OpCode::Query);
    r.metadata.recursion_available = true;
    r.add_queries(query.queries.iter().cloned());
    if let Some(e) = &query.edns {
        r.set_edns(e.clone());
    }
    let qname = query.queries[0].name().clone();
    let count = if name == "big.test" { 100 } else { 1 };
    if name == "big.test" && !tcp {
        r.metadata.truncation = true;
    } else {
        for i in 0..count {
            let ip = std::net::Ipv4Addr::new(198, 18, 1, i);
            r.add_answer(Record::from_rdata(qname.clone(), 60, RData::A(A(ip))));
        }
        if count == 1 {
            r.answers[0] =
                Record::from_rdata(qname, 60, RData::A(A("198.18.0.99".parse().unwrap())));
        }
    }
    r.to_vec().ok()
}

/// "The outside" of egress tests and benches: a network namespace of its
/// own (on a thread of its own), joined to the caller's namespace, which
/// plays the host, by a veth `<name>`–`<name>p`: `198.18.0.1/24` and
/// `fd00:88::1:0:0:1/96` outside, `198.18.0.2/24` and `fd00:88::1:0:0:2/96`
/// on the host's end. It has no route to the pools, so only masqueraded
/// traffic of pods is answered. A TCP server on port [`Outside::PORT`]
/// (both families) writes each client's address as it sees it and closes.
/// Dropping it ends the thread, and the namespace with the veth goes.
pub struct Outside {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Outside {
    pub const PORT: u16 = 7000;
    pub const V4: &'static str = "198.18.0.1";
    pub const V6: &'static str = "fd00:88::1:0:0:1";
    pub const HOST_V4: &'static str = "198.18.0.2";
    pub const HOST_V6: &'static str = "fd00:88::1:0:0:2";

    /// Make it, from a thread in the host namespace, with handle `nl` there.
    pub async fn start(nl: &Handle, name: &str) -> Outside {
        use std::os::fd::AsRawFd;
        let no_dad = |dir: &str| {
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("{dir}/{conf}/accept_dad"), "0");
            }
        };
        no_dad("/proc/sys/net/ipv6/conf");
        let peer = format!("{name}p");
        add_veth(nl, name, &peer).await;
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0");
        let (fd_tx, fd_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let peer_name = peer.clone();
        let thread = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            no_dad("/proc/sys/net/ipv6/conf");
            fd_tx
                .send(std::fs::File::open("/proc/thread-self/ns/net").unwrap())
                .unwrap();
            go_rx.recv().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (conn, h, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(conn);
                h.link()
                    .set(LinkUnspec::new_with_index(1).up().build())
                    .execute()
                    .await
                    .unwrap();
                let index = link_index(&h, &peer_name).await.unwrap();
                for (ip, prefix) in [(Outside::V4, 24), (Outside::V6, 96)] {
                    h.address()
                        .add(index, ip.parse().unwrap(), prefix)
                        .execute()
                        .await
                        .unwrap();
                }
                h.link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .unwrap();
            });
            let listeners: Vec<TcpListener> = [Outside::V4, Outside::V6]
                .iter()
                .map(|ip| {
                    // An IPv6 address is tentative (EADDRNOTAVAIL) until
                    // the kernel's addrconf has seen the link up.
                    let addr = (ip.parse::<IpAddr>().unwrap(), Outside::PORT);
                    let t = Instant::now();
                    let l = loop {
                        match TcpListener::bind(addr) {
                            Ok(l) => break l,
                            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                                let _ = e;
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            Err(e) => panic!("bind {addr:?}: {e}"),
                        }
                    };
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            ready_tx.send(()).unwrap();
            while !st.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((mut c, from)) = l.accept() {
                        idle = false;
                        let _ = std::io::Write::write_all(&mut c, from.ip().to_string().as_bytes());
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        let ns = fd_rx.recv().unwrap();
        nl.link()
            .set(
                LinkUnspec::new_with_name(&peer)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        go_tx.send(()).unwrap();
        let index = link_index(nl, name).await.unwrap();
        for (ip, prefix) in [(Outside::HOST_V4, 24), (Outside::HOST_V6, 96)] {
            nl.address()
                .add(index, ip.parse().unwrap(), prefix)
                .execute()
                .await
                .unwrap();
        }
        nl.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the outside is ready");
        Outside {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Set sysctl `path` (under /proc/sys) to `value` in the calling thread's
/// network namespace.
pub fn set_sysctl(path: &str, value: &str) {
    std::fs::write(format!("/proc/sys/{path}"), value).unwrap();
}

/// Sysctl `path` (under /proc/sys) in the calling thread's namespace.
pub fn sysctl(path: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A network namespace held the way a container runtime holds one (its
/// pause container): a `sleep` of the test's own in a namespace made for
/// it, named by path (`/proc/<pid>/ns/net`), with `lo` up. Ended (by its
/// PID) when dropped, or by [`RuntimeNetns::end`].
pub struct RuntimeNetns {
    child: Option<std::process::Child>,
    /// The path a runtime would pass as `CNI_NETNS`.
    pub path: PathBuf,
}

impl RuntimeNetns {
    /// A fresh namespace, held by a child of this test.
    pub fn new() -> RuntimeNetns {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600");
        // SAFETY: between fork and exec the child only calls unshare(2),
        // which allocates nothing in this process.
        unsafe {
            cmd.pre_exec(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        // spawn() returns once the exec happened: the namespace is made.
        let child = cmd.spawn().expect("start the runtime's namespace holder");
        let path = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
        let ns = RuntimeNetns {
            child: Some(child),
            path,
        };
        assert!(ns.run(&["ip", "link", "set", "lo", "up"]).0, "lo up");
        ns
    }

    /// Run `argv` inside (`nsenter --net`); whether it succeeded, and its
    /// stdout.
    pub fn run(&self, argv: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg("--")
            .args(argv)
            .output()
            .expect("run nsenter");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// How many interfaces there are inside (1: `lo` alone).
    pub fn interfaces(&self) -> usize {
        let (ok, links) = self.run(&["ip", "-o", "link"]);
        assert!(ok, "ip link inside {}", self.path.display());
        links.lines().count()
    }

    /// One ping from inside to `ip` (two seconds' wait): whether it was
    /// answered, and what ping printed.
    pub fn ping(&self, ip: impl std::fmt::Display) -> (bool, String) {
        self.run(&["ping", "-c", "1", "-W", "2", &ip.to_string()])
    }

    /// Run `f` on a thread of its own inside the namespace.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&self.path).unwrap();
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// A TCP listener on `addr` inside (a socket stays in the namespace it
    /// was made in, so it may be served from any thread).
    pub fn listen(&self, addr: &str) -> TcpListener {
        self.inside(|| TcpListener::bind(addr).unwrap())
    }

    /// End the namespace (its holder is killed and reaped; the kernel
    /// then deletes what is in it).
    pub fn end(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Default for RuntimeNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RuntimeNetns {
    fn drop(&mut self) {
        self.end();
    }
}

/// `nft ARGS` in the test's namespace; its stdout. Looked for in sbin too:
/// an unprivileged user's PATH (CI's rootless run) may not have it.
pub fn nft(args: &[&str]) -> String {
    let nft = ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft");
    let out = std::process::Command::new(nft).args(args).output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
