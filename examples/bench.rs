//! podnet as a peer of the sandbox create/teardown harness in
//! `benches/peers` (docs/performance.md, "The peer protocol"): `bench N C`
//! makes N sandboxes with at most C creates in flight, runs `$BENCH_CHECK N`,
//! removes them all with at most C removals in flight, and prints one JSON
//! line on stdout.
//!
//! ```text
//! benches/peers/run.sh -n 1,50,200 -r 3 floor-fork podnet   # as root; builds this example
//! ```
//!
//! It expects to run inside the round's namespaces, which `run.sh` makes,
//! with the bridge `$BENCH_BRIDGE` already up and `$BENCH_GW` on it. So it
//! does NOT call `podnet::rootless::enter()`: that would move it away from
//! the bridge. It refuses to run without `$BENCH_BRIDGE`; for a quick try by
//! hand, stay off the machine's network with
//! `BENCH_BRIDGE=pnb0 unshare --user --map-root-user --net target/release/examples/bench 5 1`
//! (podnet then makes the bridge; `$BENCH_TMP` defaults to the current directory).
//!
//! The network has DNS, as by default, unless `BENCH_DNS=0`.
//!
//! Only the JSON line goes to stdout; everything else goes to stderr.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use podnet::{Network, Sandbox};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (n, c) = match parse_args(&args) {
        Ok(nc) => nc,
        Err(e) => {
            eprintln!("bench: {e}\nusage: bench N [C]");
            return ExitCode::from(2);
        }
    };
    // One at a time (C = 1) on a current-thread runtime: nothing to
    // overlap, and no cross-thread wake-ups in what is timed. With C > 1,
    // one worker per CPU (at most C): podnet's host-side requests go over a
    // socket per create in flight and its holders are cloned on the worker
    // that creates, so creates and removals in flight use both CPUs, as the
    // C worker threads of the floor peer do.
    let rt = if c == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(c.min(cpus))
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(n, c)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> AnyResult<(usize, usize)> {
    let n: usize = args.first().ok_or("missing N")?.parse()?;
    let c: usize = match args.get(1) {
        Some(c) => c.parse()?,
        None => 1,
    };
    if n == 0 || c == 0 || args.len() > 2 {
        return Err("N and C must be positive integers".into());
    }
    Ok((n, c.min(n)))
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

async fn run(n: usize, c: usize) -> AnyResult<String> {
    let peer = env_or("BENCH_PEER", "podnet");
    // Required, so that a stray run by hand does not make a bridge in the
    // machine's own namespace: run.sh always sets it.
    let bridge = std::env::var("BENCH_BRIDGE").map_err(|_| {
        "BENCH_BRIDGE is not set: run me through benches/peers/run.sh, or by hand only \
         inside namespaces of your own (unshare --user --map-root-user --net) with it set"
    })?;
    let subnet = env_or("BENCH_SUBNET", "10.88.0.0/16");
    let tmp = std::env::var_os("BENCH_TMP")
        .map(PathBuf::from)
        .map_or_else(std::env::current_dir, Ok)?;
    // The store goes to $BENCH_TMP/state (the disk, like the CNI peer's
    // host-local files) unless BENCH_STATE_DIR names another place, such as
    // /run/podnet-bench: inside a round of run.sh, /run is a tmpfs of the
    // round's own, as /run, podnet's default as root, is on most machines.
    let state =
        std::env::var_os("BENCH_STATE_DIR").map_or_else(|| tmp.join("state"), PathBuf::from);

    // Untimed: the bridge exists already (podnet reuses it), the store is new.
    // BENCH_DNS=0 builds the network without DNS, to measure what it costs.
    let dns = env_or("BENCH_DNS", "1") != "0";
    let net = Network::builder(bridge.as_str())
        .subnet(subnet.parse()?)
        .state_dir(state)
        .dns(dns)
        .build()
        .await?;

    let (pods, create_ms, create_wall) = create_all(&net, n, c).await;
    let result = match pods.iter().find_map(|r| r.as_ref().err()) {
        Some(e) => Err(format!("create failed: {e}").into()),
        None => check(n).await,
    };
    let pods: Vec<Sandbox> = pods.into_iter().filter_map(Result::ok).collect();
    let made = pods.len();
    let (removed, teardown_ms, teardown_wall) = remove_all(pods, c).await;
    result?;
    removed?;
    // Untimed by the protocol, reported beside it: remove() returns with
    // the veth off the bridge and renamed, and leaves its deletion to the
    // background; Network::remove() waits for the deletions still queued.
    let t = Instant::now();
    net.remove().await?;
    let settle = t.elapsed();
    eprintln!(
        "{peer}: {made} sandboxes made, checked and removed; the last veth deletions \
         took {:.1} ms more",
        ms(settle)
    );

    Ok(format!(
        "{{\"peer\":{},\"n\":{n},\"c\":{c},\"create_ms\":[{}],\"teardown_ms\":[{}],\
         \"create_wall_ms\":{:.3},\"teardown_wall_ms\":{:.3},\"settle_ms\":{:.3}}}",
        json_string(&peer),
        join_ms(&create_ms),
        join_ms(&teardown_ms),
        ms(create_wall),
        ms(teardown_wall),
        ms(settle),
    ))
}

/// Create `b0`..`b{n-1}`, at most `c` at a time; each create is timed from
/// the call to its return. Returns every outcome, the latencies of those that
/// succeeded, and the phase's wall time.
async fn create_all(
    net: &Network,
    n: usize,
    c: usize,
) -> (Vec<podnet::Result<Sandbox>>, Vec<Duration>, Duration) {
    let t0 = Instant::now();
    let outcomes: Vec<(podnet::Result<Sandbox>, Duration)> = stream::iter(0..n)
        .map(|i| {
            // A task each, so that with C > 1 they run on any worker.
            let net = net.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let pod = net.sandbox(format!("b{i}")).create().await;
                (pod, start.elapsed())
            })
        })
        .buffer_unordered(c)
        .map(|joined| joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
        .collect()
        .await;
    let wall = t0.elapsed();
    let times = outcomes
        .iter()
        .filter(|(p, _)| p.is_ok())
        .map(|(_, t)| *t)
        .collect();
    (outcomes.into_iter().map(|(p, _)| p).collect(), times, wall)
}

/// Remove every sandbox, at most `c` at a time, each timed.
async fn remove_all(pods: Vec<Sandbox>, c: usize) -> (AnyResult<()>, Vec<Duration>, Duration) {
    let t0 = Instant::now();
    let outcomes: Vec<(podnet::Result<()>, Duration)> = stream::iter(pods)
        .map(|pod| {
            tokio::spawn(async move {
                let start = Instant::now();
                let r = pod.remove().await;
                (r, start.elapsed())
            })
        })
        .buffer_unordered(c.max(1))
        .map(|joined| joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
        .collect()
        .await;
    let wall = t0.elapsed();
    let times = outcomes.iter().map(|(_, t)| *t).collect();
    let result = match outcomes.into_iter().find_map(|(r, _)| r.err()) {
        Some(e) => Err(format!("remove failed: {e}").into()),
        None => Ok(()),
    };
    (result, times, wall)
}

/// Run `$BENCH_CHECK n`, untimed, with its output on our stderr.
async fn check(n: usize) -> AnyResult<()> {
    let Some(cmd) = std::env::var_os("BENCH_CHECK").filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    let status = tokio::process::Command::new(&cmd)
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} {n} failed: {status}", cmd.to_string_lossy()).into())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn join_ms(ds: &[Duration]) -> String {
    ds.iter()
        .map(|d| format!("{:.3}", ms(*d)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A JSON string literal (the peer name comes from the environment).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
