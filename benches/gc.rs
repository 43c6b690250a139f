//! What gc's last check costs: `gc()` over N live sandboxes with nothing
//! to release (the check is skipped) beside `gc()` with one unowned
//! reservation planted before each run (the check dumps the addresses of
//! every live holder's namespace), alternated in the same run.
//!
//! ```text
//! cargo bench --bench gc          # N = 100
//! cargo bench --bench gc -- 400   # another N
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first, so it runs as any
//! user allowed to make user namespaces, never touches the machine's real
//! network, and leaves nothing behind. Nothing is asserted.

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use podnet::Network;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// gc runs of each kind.
const RUNS: usize = 31;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n = match args.first().map_or(Ok(100), |a| a.parse::<usize>()) {
        Ok(n) if n > 0 && args.len() <= 1 => n,
        _ => {
            eprintln!("usage: gc [N]   (N > 0 live sandboxes, default 100)");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("gc bench: {e}");
        return ExitCode::FAILURE;
    }
    let state = std::env::temp_dir().join(format!("podnet-bench-gc-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(bench(&state, n)));
    let _ = std::fs::remove_dir_all(&state);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gc bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The store's `addr/` directory under `state`.
fn addr_dir(state: &std::path::Path) -> AnyResult<std::path::PathBuf> {
    for host in std::fs::read_dir(state)? {
        let dir = host?.path().join("pnbench0").join("addr");
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    Err("no store".into())
}

async fn bench(state: &std::path::Path, n: usize) -> AnyResult<()> {
    let net = Network::builder("pnbench0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(state)
        .build()
        .await?;
    let mut pods = Vec::with_capacity(n);
    for i in 0..n {
        pods.push(net.sandbox(format!("g{i}")).create().await?);
    }
    let addr = addr_dir(state)?;
    net.gc().await?;
    let (mut quiet, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = net.gc().await?;
        quiet.push(t.elapsed());
        if !r.is_empty() {
            return Err(format!("gc reclaimed {r:?}").into());
        }
        std::os::unix::fs::symlink("ghost@1-2-3", addr.join("10.88.255.254"))?;
        let t = Instant::now();
        let r = net.gc().await?;
        checked.push(t.elapsed());
        if r.addresses.len() != 1 {
            return Err(format!("gc did not release the planted address: {r:?}").into());
        }
    }
    for p in &pods {
        p.remove().await?;
    }
    net.remove().await?;
    let ms = |xs: &[Duration]| common::stats(xs, 1e3).map_or(f64::NAN, |(_, m, _)| m);
    let (q, c) = (ms(&quiet), ms(&checked));
    println!("gc over {n} live sandboxes, {RUNS} runs each, medians:");
    println!("  nothing to release        {q:8.3} ms");
    println!("  one address to release    {c:8.3} ms   ({:.2}x)", c / q);
    println!(
        "  the last check: {:.1} µs per live holder",
        (c - q).max(0.0) * 1e3 / n as f64
    );
    Ok(())
}
