//! What the benches share.

pub mod cni;
pub mod tcp;

use std::time::{Duration, Instant};

/// (count, median, p95) of `xs` in units of `1/per_second` s (1e3: ms,
/// 1e6: µs). The median of an even count is the mean of the two middle
/// values; p95 is by nearest rank, as benches/peers/lib/summarize.py computes it.
pub fn stats(xs: &[Duration], per_second: f64) -> Option<(usize, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * per_second).collect();
    let median = median(&mut v)?;
    let n = v.len();
    let rank = (n * 95).div_ceil(100).max(1);
    Some((n, median, v[rank - 1]))
}

/// The median of `v` (sorted in place); of an even count, the mean of the
/// two middle values.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The rounds a bench named `bench` is asked for: its one optional
/// argument N > 0 (default 100), cargo bench's own `--` flags passed over;
/// `Err` with the usage printed (exit code 2) for anything else.
#[allow(dead_code)] // not every bench that shares this module uses it
pub fn rounds_arg(bench: &str) -> Result<usize, std::process::ExitCode> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.as_slice() {
        [] => Ok(100),
        [n] => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(rounds_usage(bench)),
        },
        _ => Err(rounds_usage(bench)),
    }
}

fn rounds_usage(bench: &str) -> std::process::ExitCode {
    eprintln!("usage: {bench} [N]   (N > 0 rounds, default 100)");
    std::process::ExitCode::from(2)
}

/// One timed create of sandbox `name` on `net`, kept in `made`.
#[allow(dead_code)] // not every bench that shares this module uses it
pub async fn timed_create(
    net: &podnet::Network,
    name: String,
    made: &mut Vec<podnet::Sandbox>,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let sandbox = net.sandbox(name).create().await?;
    let d = t.elapsed();
    made.push(sandbox);
    Ok(d)
}

/// The yardstick of the create benches: one timed
/// `tokio::process::Command::new("true").status()`.
#[allow(dead_code)] // not every bench that shares this module uses it
pub async fn fork_exec() -> Result<Duration, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let status = tokio::process::Command::new("true").status().await?;
    let d = t.elapsed();
    if status.success() {
        Ok(d)
    } else {
        Err(format!("true exited with {status}").into())
    }
}
