//! Egress as root: TCP throughput and connection rate from a pod to a
//! server beyond the host, through podnet's egress, beside the same path
//! made by hand (a veth pair and one masquerade rule, no podnet) in the
//! same run. Rounds interleave the two sides (the order flips each round);
//! the figures are medians over rounds, and the ratio is podnet's over the
//! hand-made path's.
//!
//! ```text
//! cargo bench --bench egress
//! cargo bench --bench egress -- 7 3         # ROUNDS (default 5), SECS per run (default 3)
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first, so it runs in a user
//! and network namespace of its own (as root too) that plays the host;
//! every packet stays in it and the namespaces it makes, and all of it ends
//! with the process (the network and the temporary directory are removed
//! before). It runs `ip` (iproute2) to wire the hand-made path and the
//! outside; podnet itself never does.
//!
//! The set-up, in the bench's namespace (the host, forwarding on):
//! - the outside: a namespace of a thread of its own over the veth
//!   `up0`–`up0p` (`198.18.0.2/24` here, `198.18.0.1/24` there, no route
//!   back to the pods), with a sink on port 5001 (reads to the end) and
//!   acceptors (accept and drop) on 5002 for podnet's side and 5003 for
//!   the hand-made one: both sides are masqueraded to `198.18.0.2`, and
//!   conntrack keeps a closed connection 10 s, so on one port the second
//!   side of a round would find the first side's source ports taken and
//!   pay (or fail) nf_nat's search for free ones;
//! - podnet: network `pnb0`, pool `10.88.0.0/17`, `.egress(true)`, one
//!   sandbox; the client runs in it by `Sandbox::run`;
//! - by hand: a namespace of a thread of its own with `eth0`
//!   (`10.88.128.2/24`, default route via `10.88.128.1`) paired with `hm0`
//!   here (`10.88.128.1/24`), and the table `inet handmade` with one
//!   srcnat chain and one rule, `ip saddr 10.88.128.0/24 ip daddr !=
//!   10.88.128.0/24 masquerade` (made by `podnet::internals::
//!   masquerade_table`, the same encoding as podnet's rule).
//!
//! Per side and round: **throughput**, one connection writing 128 KiB
//! buffers for SECS s (bytes the client wrote / time, in Gbit/s); and
//! **connections/s**, connect and close (SO_LINGER 0, so no TIME_WAIT
//! fills the port space) one after the other for SECS s.
#![allow(clippy::unwrap_used)] // a bench fails loudly

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};

const SINK: u16 = 5001;
/// The acceptors of the connection rate: podnet's side, the hand-made one.
const ACCEPT_PODNET: u16 = 5002;
const ACCEPT_HAND: u16 = 5003;
const OUTSIDE: &str = "198.18.0.1";

fn ip(args: &str) {
    let st = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .unwrap();
    assert!(st.success(), "ip {args}");
}

/// A namespace kept by a parked thread; its fd.
fn new_netns() -> File {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        tx.send(File::open("/proc/thread-self/ns/net").unwrap())
            .unwrap();
        // The fd keeps the namespace; this thread only needs to exist
        // until then.
    });
    rx.recv().unwrap()
}

/// Run `f` on a new thread inside namespace `ns`.
fn run_in<T: Send + 'static>(ns: &File, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.try_clone().unwrap();
    std::thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A pair `host`–`peer`, the peer moved into `ns` as `eth0`, addressed
/// and up on both ends; the peer gets a default route via `host_ip`.
fn wire(ns: &File, host: &str, host_cidr: &str, peer_cidr: &str, via: Option<&str>) {
    let peer = format!("{host}p");
    ip(&format!("link add {host} type veth peer name {peer}"));
    let fd = ns.try_clone().unwrap();
    let path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    );
    ip(&format!("link set {peer} netns {path}"));
    ip(&format!("addr add {host_cidr} dev {host}"));
    ip(&format!("link set {host} up"));
    let (peer_cidr, via) = (peer_cidr.to_owned(), via.map(str::to_owned));
    run_in(ns, move || {
        ip("link set lo up");
        ip(&format!("link set {peer} name eth0"));
        ip(&format!("addr add {peer_cidr} dev eth0"));
        ip("link set eth0 up");
        if let Some(via) = via {
            ip(&format!("route add default via {via}"));
        }
    });
    drop(fd);
}

fn serve(outside: &File) {
    let (sink, accs) = run_in(outside, || {
        (
            TcpListener::bind((OUTSIDE, SINK)).unwrap(),
            [ACCEPT_PODNET, ACCEPT_HAND].map(|p| TcpListener::bind((OUTSIDE, p)).unwrap()),
        )
    });
    std::thread::spawn(move || {
        for c in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    for acc in accs {
        std::thread::spawn(move || for _ in acc.incoming() {});
    }
}

/// (Gbit/s, connections/s) from the calling thread's namespace, the
/// connections to the acceptor on port `accept`.
fn measure(secs: u64, accept: u16) -> (f64, f64) {
    let run = Duration::from_secs(secs);
    let sink = SocketAddr::new(OUTSIDE.parse::<IpAddr>().unwrap(), SINK);
    let mut s = TcpStream::connect(sink).unwrap();
    let buf = vec![7u8; 128 * 1024];
    let (t, mut bytes) = (Instant::now(), 0u64);
    while t.elapsed() < run {
        s.write_all(&buf).unwrap();
        bytes += buf.len() as u64;
    }
    let gbits = bytes as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9;
    drop(s);
    let acc = SocketAddr::new(OUTSIDE.parse::<IpAddr>().unwrap(), accept);
    let (t, mut n) = (Instant::now(), 0u64);
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    while t.elapsed() < run {
        let c = TcpStream::connect(acc).unwrap();
        nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::Linger, &linger).unwrap();
        drop(c);
        n += 1;
    }
    (gbits, n as f64 / t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("egress bench: {e}");
        return ExitCode::FAILURE;
    }
    let tmp = std::env::temp_dir().join(format!("podnet-bench-egress-{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(bench(rounds, secs, &tmp));
    let _ = std::fs::remove_dir_all(&tmp);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(rounds: usize, secs: u64, tmp: &std::path::Path) -> podnet::Result<()> {
    ip("link set lo up");
    let outside = new_netns();
    wire(&outside, "up0", "198.18.0.2/24", "198.18.0.1/24", None);
    serve(&outside);
    let hand = new_netns();
    wire(
        &hand,
        "hm0",
        "10.88.128.1/24",
        "10.88.128.2/24",
        Some("10.88.128.1"),
    );
    podnet::internals::masquerade_table("handmade", &[("10.88.128.0".parse().unwrap(), 24)])?;
    let net = podnet::Network::builder("pnb0")
        .subnet("10.88.0.0/17".parse().unwrap())
        .state_dir(tmp)
        .dns(false)
        .egress(true)
        .enable_forwarding(true)
        .build()
        .await?;
    let pod = net.sandbox("client").create().await?;
    let (mut p_tp, mut p_cr, mut h_tp, mut h_cr) = (vec![], vec![], vec![], vec![]);
    println!("round  podnet Gbit/s  conn/s   hand-made Gbit/s  conn/s");
    for r in 0..rounds {
        let mut podnet_side = None;
        let mut hand_side = None;
        for side in [r % 2, 1 - r % 2] {
            if side == 0 {
                podnet_side = Some(pod.run(move || measure(secs, ACCEPT_PODNET)).await?);
            } else {
                hand_side = Some(run_in(&hand, move || measure(secs, ACCEPT_HAND)));
            }
        }
        let (p, h) = (podnet_side.unwrap(), hand_side.unwrap());
        println!(
            "{r:5}  {:13.2}  {:7.0}   {:16.2}  {:7.0}",
            p.0, p.1, h.0, h.1
        );
        p_tp.push(p.0);
        p_cr.push(p.1);
        h_tp.push(h.0);
        h_cr.push(h.1);
    }
    let (pt, pc, ht, hc) = (median(p_tp), median(p_cr), median(h_tp), median(h_cr));
    println!(
        "median throughput: podnet {pt:.2} Gbit/s, hand-made {ht:.2} Gbit/s, ratio {:.3}",
        pt / ht
    );
    println!(
        "median conn/s:     podnet {pc:.0}, hand-made {hc:.0}, ratio {:.3}",
        pc / hc
    );
    pod.remove().await?;
    net.remove().await
}
