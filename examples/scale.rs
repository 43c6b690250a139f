//! Many sandboxes on one network: `scale [N]` (default 5,000) creates N
//! sandboxes one after another with a progress line, checks that a sample of
//! them, spread over every bridge the network uses, reach each other by IP,
//! removes them all, and prints the median and p95 of each phase.
//!
//! ```text
//! cargo build --release --example scale && ./target/release/examples/scale 5000
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first (as root too), so it
//! works in a user and network namespace of its own and never touches the
//! machine's network; its state directory is a temporary one, removed at the
//! end. It raises its soft `RLIMIT_NOFILE` to the hard limit, because every
//! live `Sandbox` keeps its holder's pidfd open (one fd per sandbox).
//!
//! A Linux bridge takes at most 1,023 ports, so the network spreads its
//! sandboxes over bridges by address (1,020 addresses each, joined into one
//! segment): 5,000 sandboxes hang on 5 bridges. The first 100 are removed
//! one by one, the rest with up to 64 removals in flight, and the cost per
//! sandbox of each way (wall time / sandboxes) is printed side by side.

use std::error::Error;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::StreamExt;
use podnet::{Network, Sandbox};

type AnyResult<T> = Result<T, Box<dyn Error>>;

fn main() -> ExitCode {
    let n: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 5000,
        Some(Ok(n)) if n > 0 => n,
        _ => {
            eprintln!("usage: scale [N]");
            return ExitCode::from(2);
        }
    };
    // Before any thread: unshare(CLONE_NEWUSER) refuses a multi-threaded process.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("scale: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = raise_nofile() {
        eprintln!("scale: {e}");
        return ExitCode::FAILURE;
    }
    let state = std::env::temp_dir().join(format!("podnet-scale-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Box::<dyn Error>::from)
        .and_then(|rt| rt.block_on(run(n, &state)));
    let _ = std::fs::remove_dir_all(&state);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("scale: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit.
fn raise_nofile() -> AnyResult<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(())
}

/// Returns whether all N were made, checked and removed.
async fn run(n: usize, state: &std::path::Path) -> AnyResult<bool> {
    let net = Network::builder("pnscale0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(state)
        .build()
        .await?;
    let mut pods: Vec<Sandbox> = Vec::with_capacity(n);
    let mut create = Vec::with_capacity(n);
    let mut stopped = None;
    let t0 = Instant::now();
    for i in 0..n {
        let start = Instant::now();
        match net.sandbox(format!("s{i}")).create().await {
            Ok(pod) => pods.push(pod),
            Err(e) => {
                stopped = Some(e);
                break;
            }
        }
        create.push(start.elapsed());
        if (i + 1) % 100 == 0 || i + 1 == n {
            eprint!(
                "\rcreated {}/{n}, last 100: median {:.2} ms",
                i + 1,
                ms(median(&create[create.len().saturating_sub(100)..]))
            );
            let _ = std::io::stderr().flush();
        }
    }
    let create_wall = t0.elapsed();
    eprintln!();
    if let Some(e) = &stopped {
        eprintln!("stopped at {} sandboxes: {e}", pods.len());
    }

    // A sample, spread over the whole range: each one reaches the next.
    let made = pods.len();
    let sample: Vec<usize> = if made < 2 {
        Vec::new()
    } else {
        let mut s: Vec<usize> = (0..8).map(|k| k * (made - 1) / 7).collect();
        s.dedup();
        s
    };
    let mut reached = 0;
    for w in sample.windows(2) {
        let (from, to) = (&pods[w[0]], &pods[w[1]]);
        if reaches(from, to).await? {
            reached += 1;
        } else {
            eprintln!("{} did not reach {}", from.name(), to.name());
        }
    }
    let pairs = sample.len().saturating_sub(1);
    eprintln!("reach check: {reached}/{pairs} sample pairs");

    // One by one first, then many at once: the cost per sandbox of each.
    let one_by_one = made.min(100);
    let mut remove = Vec::with_capacity(made);
    let t1 = Instant::now();
    for pod in &pods[..one_by_one] {
        let start = Instant::now();
        pod.remove().await?;
        remove.push(start.elapsed());
    }
    let serial_wall = t1.elapsed();
    let t2 = Instant::now();
    let mut timed = futures::stream::iter(&pods[one_by_one..])
        .map(|pod| async move {
            let start = Instant::now();
            pod.remove().await.map(|()| start.elapsed())
        })
        .buffer_unordered(64);
    while let Some(took) = timed.next().await {
        remove.push(took?);
        if remove.len() % 100 == 0 || remove.len() == made {
            eprint!("\rremoved {}/{made}", remove.len());
            let _ = std::io::stderr().flush();
        }
    }
    drop(timed);
    let parallel_wall = t2.elapsed();
    let remove_wall = t1.elapsed();
    eprintln!();
    drop(pods);
    net.remove().await?;

    let per = |wall: Duration, count: usize| ms(wall) / count.max(1) as f64;
    if made > one_by_one {
        println!(
            "remove cost per sandbox: one by one {:.2} ms ({one_by_one}), 64 in flight {:.2} ms ({}): {:.2}x",
            per(serial_wall, one_by_one),
            per(parallel_wall, made - one_by_one),
            made - one_by_one,
            per(parallel_wall, made - one_by_one) / per(serial_wall, one_by_one)
        );
    }
    // The create median of each thousand: podnet's own cost must not grow
    // with N (the kernel's does, as bridges fill).
    let thousands: Vec<String> = create
        .chunks(1000)
        .map(|c| format!("{:.2}", ms(median(c))))
        .collect();
    println!("create median ms per thousand: {}", thousands.join(", "));
    println!("phase   count  median ms  p95 ms  wall s");
    for (phase, times, wall) in [
        ("create", &create, create_wall),
        ("remove", &remove, remove_wall),
    ] {
        println!(
            "{phase:<7} {:>5}  {:>9.2}  {:>6.2}  {:>6.1}",
            times.len(),
            ms(median(times)),
            ms(p95(times)),
            wall.as_secs_f64()
        );
    }
    Ok(stopped.is_none() && reached == pairs)
}

/// A member of `from` connects to `to`'s address.
async fn reaches(from: &Sandbox, to: &Sandbox) -> AnyResult<bool> {
    let listener = to.run(|| TcpListener::bind("0.0.0.0:9000")).await??;
    let addr = (to.ip(), 9000);
    let connected = from
        .run(move || TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5)).is_ok())
        .await?;
    drop(listener);
    Ok(connected)
}

fn sorted(ds: &[Duration]) -> Vec<Duration> {
    let mut v = ds.to_vec();
    v.sort();
    v
}

fn median(ds: &[Duration]) -> Duration {
    sorted(ds).get(ds.len() / 2).copied().unwrap_or_default()
}

fn p95(ds: &[Duration]) -> Duration {
    let v = sorted(ds);
    // Nearest rank.
    let rank = (v.len() * 95).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
