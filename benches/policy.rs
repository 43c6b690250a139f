//! Network policy at scale: pod-to-pod TCP connection rate and throughput
//! with 1,000 policies over 1,000 pods against the same network with
//! none, and how long a policy or label change takes at that size and
//! when it is in force.
//!
//! ```text
//! cargo bench --bench policy
//! cargo bench --bench policy -- 5 1000      # ROUNDS (default 5), PODS (default 1000)
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first, so it runs in a user
//! and network namespace of its own (as root too) that plays the host;
//! every packet stays in it and the sandboxes' namespaces, and everything
//! ends with the process.
//!
//! The set-up: network `pnq0` (`10.88.0.0/16`), PODS sandboxes labelled
//! `grp=g<i mod 100>`, a client `cli` (`role=client`) and a server `srv`
//! (`grp=srv`) serving a sink and a one-byte hello.
//!
//! Phases, in one run:
//! 1. **none**: no policy; ROUNDS rounds of the connection rate (2,000
//!    connections) and throughput (256 MiB).
//! 2. **policies**: 1,000 policies applied one by one (each timed: a
//!    policy change at PODS pods). Policy `i` selects `grp=g<i mod 100>`
//!    and lets in `grp=g<(i+1) mod 100>` on TCP 80, and the last one
//!    selects `srv` and lets in `role=client`, so the server's check runs
//!    through every dispatch rule before its own. The same rounds.
//! 3. **none again**: every policy deleted, the same rounds (the drift of
//!    the machine between phases 1 and 3 bounds what the ratio means).
//!
//! The ratio is the median of phase 2 over the median of phases 1 and 3
//! together. Then, with the policies in place: a label change that lets
//! the client in (`set_labels` on a pod the server's policy names) and one
//! that shuts it out again, each timed, and for each the time from the
//! call's return to the first probe that shows it (connection made, or
//! refused by a timeout of 50 ms).
#![allow(clippy::unwrap_used)] // a bench fails loudly

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use podnet::{Labels, Network, Policy, Port, Rule, Sandbox, Selector};

const SINK: u16 = 5001;
const HELLO: u16 = 5002;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("policy bench: {e}");
        return ExitCode::FAILURE;
    }
    let tmp = std::env::temp_dir().join(format!("podnet-bench-policy-{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(bench(rounds, pods, &tmp));
    let _ = std::fs::remove_dir_all(&tmp);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("policy bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sel(k: &str, v: &str) -> Selector {
    Selector::everything().label(k, v).unwrap()
}

/// The connection rate (conn/s) and throughput (MiB/s) from `cli` to
/// `srv`, one round each.
async fn round(cli: &Sandbox, srv: IpAddr) -> (f64, f64) {
    let rate = cli
        .run(move || {
            common::tcp::conn_rate(SocketAddr::new(srv, HELLO), 2000, &mut Vec::new()).unwrap()
        })
        .await
        .unwrap();
    let mib = cli
        .run(move || common::tcp::throughput(SocketAddr::new(srv, SINK), 256).unwrap())
        .await
        .unwrap();
    (rate, mib)
}

async fn phase(name: &str, rounds: usize, cli: &Sandbox, srv: IpAddr) -> (Vec<f64>, Vec<f64>) {
    let (mut rates, mut mibs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (r, m) = round(cli, srv).await;
        rates.push(r);
        mibs.push(m);
    }
    let (mut r, mut m) = (rates.clone(), mibs.clone());
    println!(
        "{name:<14} conn/s median {:>8.0}   MiB/s median {:>8.0}   ({rounds} rounds)",
        common::median(&mut r).unwrap(),
        common::median(&mut m).unwrap()
    );
    (rates, mibs)
}

/// Whether a connection from `cli` to `srv`'s hello is made within 50 ms.
async fn connects(cli: &Sandbox, srv: IpAddr) -> bool {
    cli.run(move || {
        TcpStream::connect_timeout(&SocketAddr::new(srv, HELLO), Duration::from_millis(50)).is_ok()
    })
    .await
    .unwrap()
}

/// The time from now to the first probe that gives `want`, and how many
/// probes that took (1: the change was in force at the first).
async fn until(cli: &Sandbox, srv: IpAddr, want: bool) -> (Duration, usize) {
    let t = Instant::now();
    let mut probes = 1;
    while connects(cli, srv).await != want {
        assert!(t.elapsed() < Duration::from_secs(5), "no change in 5 s");
        probes += 1;
    }
    (t.elapsed(), probes)
}

async fn bench(rounds: usize, pods: usize, tmp: &std::path::Path) -> podnet::Result<()> {
    let net = Network::builder("pnq0")
        .subnet("10.88.0.0/16".parse().unwrap())
        .state_dir(tmp)
        .dns(false)
        .build()
        .await?;
    let mut made = Vec::new();
    for i in 0..pods {
        let s = net
            .sandbox(format!("p{i}"))
            .label("grp", format!("g{}", i % 100))
            .create()
            .await?;
        made.push(s);
    }
    let cli = net.sandbox("cli").label("role", "client").create().await?;
    let srv = net.sandbox("srv").label("grp", "srv").create().await?;
    let (sink, hello) = srv
        .run(|| {
            (
                TcpListener::bind(("0.0.0.0", SINK)).unwrap(),
                TcpListener::bind(("0.0.0.0", HELLO)).unwrap(),
            )
        })
        .await?;
    common::tcp::serve(sink, common::tcp::sink);
    common::tcp::serve(hello, common::tcp::hello);
    let at = srv.ip();
    println!("{pods} pods, {rounds} rounds");

    let (mut r1, mut m1) = phase("none", rounds, &cli, at).await;

    let mut applies = Vec::new();
    for i in 0..1000 {
        let p = if i == 999 {
            Policy::new("p999", sel("grp", "srv"))?.ingress(Rule::new().pods(sel("role", "client")))
        } else {
            Policy::new(&format!("p{i}"), sel("grp", &format!("g{}", i % 100)))?.ingress(
                Rule::new()
                    .pods(sel("grp", &format!("g{}", (i + 1) % 100)))
                    .port(Port::tcp(80)?),
            )
        };
        let t = Instant::now();
        net.apply_policy(&p).await?;
        applies.push(t.elapsed());
    }
    let (mut r2, mut m2) = phase("1000 policies", rounds, &cli, at).await;

    // Label changes at this size: shut the client out, let it in again.
    let mut out_calls = Vec::new();
    let mut in_calls = Vec::new();
    let mut out_seen = Vec::new();
    let mut in_seen = Vec::new();
    for _ in 0..rounds.max(5) {
        let t = Instant::now();
        cli.set_labels(&Labels::from_pairs([("role", "other")])?)
            .await?;
        out_calls.push(t.elapsed());
        out_seen.push(until(&cli, at, false).await.1);
        let t = Instant::now();
        cli.set_labels(&Labels::from_pairs([("role", "client")])?)
            .await?;
        in_calls.push(t.elapsed());
        in_seen.push(until(&cli, at, true).await);
    }

    let mut deletes = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        net.delete_policy(&format!("p{i}")).await?;
        deletes.push(t.elapsed());
    }
    let (r3, m3) = phase("none again", rounds, &cli, at).await;

    r1.extend(r3);
    m1.extend(m3);
    let ratio = |with: &mut Vec<f64>, without: &mut Vec<f64>| {
        common::median(with).unwrap() / common::median(without).unwrap()
    };
    println!(
        "ratio 1000 policies / none: conn/s {:.3}x   MiB/s {:.3}x",
        ratio(&mut r2, &mut r1),
        ratio(&mut m2, &mut m1)
    );
    let show = |what: &str, xs: &[Duration]| {
        let (n, med, p95) = common::stats(xs, 1e3).unwrap();
        println!("{what:<44} median {med:>8.2} ms   p95 {p95:>8.2} ms   (n={n})");
    };
    show("apply_policy, 1st..1000th", &applies);
    show("apply_policy, 901st..1000th", &applies[900..]);
    show("delete_policy, 1000 policies down to 0", &deletes);
    show("set_labels that shuts the client out", &out_calls);
    println!(
        "  refused at the first probe after return: {} of {}",
        out_seen.iter().filter(|&&n| n == 1).count(),
        out_seen.len()
    );
    show("set_labels that lets the client in", &in_calls);
    let through: Vec<Duration> = in_seen.iter().map(|(d, _)| *d).collect();
    show("  return -> first connection made", &through);
    println!(
        "  made at the first probe after return: {} of {}",
        in_seen.iter().filter(|(_, n)| *n == 1).count(),
        in_seen.len()
    );

    cli.remove().await?;
    srv.remove().await?;
    for s in made {
        s.remove().await?;
    }
    net.remove().await
}
