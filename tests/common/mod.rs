//! Every networking test runs through [`in_netns`]: a new thread, a new
//! network namespace for it, `lo` up, a current-thread runtime and a
//! temporary state directory. Tests therefore run in parallel, never
//! collide, and never touch the machine's real network.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use nix::sched::{unshare, CloneFlags};
use rtnetlink::{Handle, LinkUnspec};

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

/// Build network `bridge` with one pool, `subnet`, and its store in `state`.
pub async fn build_network(
    state: &Path,
    bridge: &str,
    subnet: &str,
) -> podnet::Result<podnet::Network> {
    podnet::Network::builder(bridge)
        .subnet(subnet.parse().unwrap())
        .state_dir(state)
        .build()
        .await
}

/// Wait until `cond` holds, polling every 10 ms; fail the test, naming
/// `what`, if it does not within `within`. Returns how long it took.
pub async fn eventually(
    what: &str,
    within: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) -> std::time::Duration {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    t.elapsed()
}

/// Links (with whether each is up) and addresses: what "nothing changed"
/// compares.
pub async fn snapshot(nl: &Handle) -> (BTreeSet<(String, bool)>, BTreeSet<(u32, IpAddr)>) {
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
/// (`PODNET_CHILD_NETNS`) and does `action` with the test's state directory.
/// stdout is piped, stderr inherited.
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
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit());
    cmd
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
