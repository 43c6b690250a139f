//! Port mappings: throughput, connection rate and request/response rate
//! through podnet's two forwarders, the kernel's (nf_tables DNAT rules that
//! podnet makes) and the userspace one, as a ratio to talking to the
//! sandbox's address directly, all measured in the same run.
//!
//! ```text
//! cargo bench --bench mappings              # needs [[bench]] name = "mappings", harness = false
//! cargo bench --bench mappings -- 9 128     # rounds (default 7), MiB per throughput trial (default 64)
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first, so it runs as any
//! user allowed to make user namespaces (root included), never touches the
//! machine's real network, and leaves nothing behind: the nf_tables table
//! lives and dies with the bench's private network namespace (and is
//! deleted with the network before that). The network forces kernel
//! forwarding; its mappings on the gateway address are the kernel's, and
//! the same ports mapped on 127.0.0.1 are the userspace forwarder's (podnet
//! never DNATs loopback destinations). The bench checks each mapping
//! reports the forwarder it measures.
//!
//! The servers are threads of this process inside the sandbox (std
//! sockets, one connection at a time); the client is this process's main
//! thread in the host namespace. Each round measures every path once, in
//! the same order; figures are medians over the rounds, and ratios are
//! medians of the per-round ratios to the direct path. Nothing is asserted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use podnet::{Forwarder, Network, PortForwarding, PortMapping, Protocol};

use common::tcp::{conn_rate, hello, serve, sink, throughput};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Ports of the three servers inside the sandbox.
const SINK: u16 = 5001;
const HELLO: u16 = 5002;
const ECHO: u16 = 5003;
/// The userspace forwarder publishes them at 127.0.0.1:18001..=18003, the
/// kernel at the gateway address's 28001..=28003.
const MAPPED: u16 = 18001;
const DNAT: u16 = 28001;
const CONNS_PER_TRIAL: usize = 500;
const RR_PER_TRIAL: usize = 5000;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let parse = |a: Option<String>, default: usize| match a.map(|a| a.parse::<usize>()) {
        None => Some(default),
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => None,
    };
    let (Some(rounds), Some(mib)) = (parse(args.next(), 7), parse(args.next(), 64)) else {
        eprintln!("usage: ports [ROUNDS] [MIB]   (both > 0; default 7 and 64)");
        return ExitCode::from(2);
    };
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("ports bench: {e}");
        return ExitCode::FAILURE;
    }
    let state = std::env::temp_dir().join(format!("podnet-bench-ports-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(bench(&state, rounds, mib)));
    let _ = std::fs::remove_dir_all(&state);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ports bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Echo 1-byte messages until EOF.
fn echo(mut s: TcpStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 {
        s.write_all(&b)?;
    }
    Ok(())
}

/// Request/response round trips per second on one connection.
fn rr_rate(at: SocketAddr) -> AnyResult<f64> {
    let mut s = TcpStream::connect(at)?;
    s.set_nodelay(true)?;
    let mut b = [0u8; 1];
    let t = Instant::now();
    for _ in 0..RR_PER_TRIAL {
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
    }
    Ok(RR_PER_TRIAL as f64 / t.elapsed().as_secs_f64())
}

fn median(xs: &mut [f64]) -> f64 {
    common::median(xs).unwrap_or(f64::NAN)
}

async fn bench(state: &std::path::Path, rounds: usize, mib: usize) -> AnyResult<()> {
    let net = Network::builder("pnports0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(state)
        .port_forwarding(PortForwarding::Kernel)
        .build()
        .await?;
    let gw = net.gateways()[0];
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    let pod = net
        .sandbox("bench")
        .port(PortMapping::range(Protocol::Tcp, MAPPED..=MAPPED + 2, SINK..=ECHO).host_ip(lo))
        .port(PortMapping::range(Protocol::Tcp, DNAT..=DNAT + 2, SINK..=ECHO).host_ip(gw))
        .create()
        .await?;
    let result = async {
        for (port, f) in [
            (SINK, sink as fn(TcpStream) -> std::io::Result<()>),
            (HELLO, hello),
            (ECHO, echo),
        ] {
            let l = pod
                .run(move || TcpListener::bind(("0.0.0.0", port)))
                .await??;
            serve(l, f);
        }
        for p in pod.ports() {
            let want = if p.host.ip() == lo {
                Forwarder::Userspace
            } else {
                Forwarder::Kernel
            };
            if p.forwarder != want {
                return Err(
                    format!("{p} is forwarded by the {}, not the {want}", p.forwarder).into(),
                );
            }
        }
        let paths = [
            (
                "direct to the pod's address",
                SocketAddr::new(pod.ip(), SINK),
            ),
            ("podnet mapping, userspace", SocketAddr::new(lo, MAPPED)),
            (
                "podnet mapping, kernel (nf_tables)",
                SocketAddr::new(gw, DNAT),
            ),
        ];
        let at = |base: SocketAddr, off: u16| SocketAddr::new(base.ip(), base.port() + off);
        // Warm-up, untimed.
        for (_, base) in &paths {
            throughput(*base, 4)?;
            conn_rate(at(*base, 1), CONNS_PER_TRIAL, &mut Vec::new())?;
        }
        let n = paths.len();
        let (mut tput, mut conns, mut rr) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
        let mut each: Vec<Vec<Duration>> = vec![vec![]; n];
        for _ in 0..rounds {
            for (i, (_, base)) in paths.iter().enumerate() {
                tput[i].push(throughput(*base, mib)?);
                conns[i].push(conn_rate(at(*base, 1), CONNS_PER_TRIAL, &mut each[i])?);
                rr[i].push(rr_rate(at(*base, 2))?);
            }
        }
        println!(
            "ports bench: {rounds} rounds; per round and path: one {mib} MiB transfer, \
             {CONNS_PER_TRIAL} connections (1 byte each way), {RR_PER_TRIAL} 1-byte round trips \
             on one connection. Medians; ratios are medians of per-round ratios to direct."
        );
        println!(
            "{:<36} {:>10} {:>7} {:>10} {:>7} {:>10} {:>7}",
            "path", "MiB/s", "ratio", "conn/s", "ratio", "rr/s", "ratio"
        );
        for (i, (what, _)) in paths.iter().enumerate() {
            let ratio = |xs: &[Vec<f64>]| {
                let mut r: Vec<f64> = xs[i].iter().zip(&xs[0]).map(|(a, b)| a / b).collect();
                median(&mut r)
            };
            println!(
                "{:<36} {:>10.0} {:>7.2} {:>10.0} {:>7.2} {:>10.0} {:>7.2}",
                what,
                median(&mut tput[i].clone()),
                ratio(&tput),
                median(&mut conns[i].clone()),
                ratio(&conns),
                median(&mut rr[i].clone()),
                ratio(&rr),
            );
        }
        println!("one connection (connect, 1 byte each way, close), µs:");
        for (i, (what, _)) in paths.iter().enumerate() {
            if let Some((n, med, p95)) = common::stats(&each[i], 1e6) {
                println!("  {what:<36} n={n} median {med:.1} p95 {p95:.1}");
            }
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    // Removal goes on whatever happened, so nothing is left.
    let removed = pod.remove().await;
    let net_removed = net.remove().await;
    result?;
    removed?;
    net_removed?;
    Ok(())
}
