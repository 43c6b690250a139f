//! What joining a sandbox costs, against the same work done without podnet
//! in the same run: a process (`pod.command`), a closure on a thread
//! (`pod.run`), and the current thread (`pod.enter`).
//!
//! ```text
//! cargo bench --bench join            # needs [[bench]] name = "join", harness = false
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first (not `enter()`, whose
//! shared rootless host outlives the process), so it runs as any user allowed
//! to make user namespaces (root included), never touches the machine's real
//! network, and leaves nothing behind. Baseline and podnet samples alternate (the order flips every
//! iteration) after a warm-up, so drift in the machine's load hits both
//! alike. Nothing is asserted: it prints medians, p95 and podnet/baseline.

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use podnet::Network;

/// Warm-up iterations, then measured ones (each gives one sample per row).
const WARMUP: usize = 30;
const SAMPLES: usize = 300;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process, and the runtime below is current-thread.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("join bench: {e}");
        return ExitCode::FAILURE;
    }
    let state = std::env::temp_dir().join(format!("podnet-bench-join-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(bench(&state)));
    let _ = std::fs::remove_dir(&state); // net.remove() leaves nothing; this is for errors
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("join bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One row of the table: a podnet operation and what it is compared with.
struct Row {
    what: &'static str,
    baseline_name: &'static str,
    baseline: Vec<Duration>,
    podnet: Vec<Duration>,
}

impl Row {
    fn new(what: &'static str, baseline_name: &'static str) -> Row {
        Row {
            what,
            baseline_name,
            baseline: Vec::with_capacity(SAMPLES),
            podnet: Vec::with_capacity(SAMPLES),
        }
    }
}

async fn bench(state: &std::path::Path) -> AnyResult<()> {
    let net = Network::builder("pnbench0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(state)
        .build()
        .await?;
    let pod = net.sandbox("join").create().await?;
    let result = measure(&pod).await;
    pod.remove().await?;
    net.remove().await?;
    let rows = result?;
    print_table(&rows);
    Ok(())
}

async fn measure(pod: &podnet::Sandbox) -> AnyResult<Vec<Row>> {
    let mut command = Row::new(
        "pod.command(\"true\").status()",
        "tokio Command::new(\"true\").status()",
    );
    // Not asked for, but it splits (a): std spawns a Command that has a
    // pre_exec hook (as pod.command's setns does) with fork + exec instead of
    // posix_spawn (clone(CLONE_VM|CLONE_VFORK)); this row pays that switch
    // without setns, against the same tokio baseline.
    let mut pre_exec = Row::new(
        "tokio Command \"true\" + no-op pre_exec",
        "tokio Command::new(\"true\").status()",
    );
    let mut run = Row::new("pod.run(|| ())", "std::thread::spawn(|| ()).join()");
    let mut enter = Row::new("pod.enter() + drop", "-");

    for i in 0..WARMUP + SAMPLES {
        let keep = i >= WARMUP;
        let podnet_first = i % 2 == 1;
        for podnet_turn in [podnet_first, !podnet_first] {
            // (a) a process that joins the sandbox vs a plain one
            let d = if podnet_turn {
                timed_status(async { Ok(pod.command("true").status().await?) }).await?
            } else {
                timed_status(async { Ok(tokio::process::Command::new("true").status().await?) })
                    .await?
            };
            if keep {
                push(&mut command, podnet_turn, d);
            }

            // (a') the fork path without setns (podnet_turn) vs the same baseline
            let mut cmd = tokio::process::Command::new("true");
            if podnet_turn {
                // SAFETY: the hook runs in the child between fork and exec
                // and does nothing at all.
                unsafe {
                    cmd.pre_exec(|| Ok(()));
                }
            }
            let d = timed_status(async { Ok(cmd.status().await?) }).await?;
            if keep {
                push(&mut pre_exec, podnet_turn, d);
            }

            // (b) a closure on a thread inside vs a plain thread
            let t = Instant::now();
            if podnet_turn {
                pod.run(|| ()).await?;
            } else {
                std::thread::spawn(|| ())
                    .join()
                    .map_err(|_| "thread panicked")?;
            }
            let d = t.elapsed();
            if keep {
                push(&mut run, podnet_turn, d);
            }
        }

        // (c) the current thread in and out (no baseline)
        let t = Instant::now();
        {
            let _inside = pod.enter()?;
        }
        let d = t.elapsed();
        if keep {
            enter.podnet.push(d);
        }
    }
    Ok(vec![command, pre_exec, run, enter])
}

fn push(row: &mut Row, podnet: bool, d: Duration) {
    if podnet {
        row.podnet.push(d);
    } else {
        row.baseline.push(d);
    }
}

/// Time `run` (a command run to completion); a failed run is an error.
async fn timed_status(
    run: impl std::future::Future<Output = AnyResult<std::process::ExitStatus>>,
) -> AnyResult<Duration> {
    let t = Instant::now();
    let status = run.await?;
    let d = t.elapsed();
    if !status.success() {
        return Err(format!("true exited with {status}").into());
    }
    Ok(d)
}

/// (median, p95) in microseconds.
fn stats(xs: &[Duration]) -> Option<(f64, f64)> {
    common::stats(xs, 1e6).map(|(_, median, p95)| (median, p95))
}

fn print_table(rows: &[Row]) {
    println!(
        "join bench: {SAMPLES} samples each after {WARMUP} warm-up iterations, baseline and podnet alternating (us)"
    );
    println!(
        "{:<40} {:>10} {:>10} | {:<38} {:>10} {:>10} | {:>7}",
        "podnet", "median", "p95", "baseline", "median", "p95", "ratio"
    );
    for r in rows {
        let Some((pm, pp)) = stats(&r.podnet) else {
            continue;
        };
        match stats(&r.baseline) {
            Some((bm, bp)) => println!(
                "{:<40} {:>10.1} {:>10.1} | {:<38} {:>10.1} {:>10.1} | {:>6.2}x",
                r.what,
                pm,
                pp,
                r.baseline_name,
                bm,
                bp,
                pm / bm
            ),
            None => println!(
                "{:<40} {:>10.1} {:>10.1} | {:<38} {:>10} {:>10} | {:>7}",
                r.what, pm, pp, r.baseline_name, "-", "-", "-"
            ),
        }
    }
    let ratio = |r: &Row| -> String {
        match (stats(&r.podnet), stats(&r.baseline)) {
            (Some((p, _)), Some((b, _))) => format!("{:.2}x", p / b),
            _ => "-".into(),
        }
    };
    let enter_median = rows
        .iter()
        .find(|r| r.baseline.is_empty())
        .and_then(|r| stats(&r.podnet))
        .map_or_else(|| "-".into(), |(m, _)| format!("{m:.1} us"));
    println!(
        "join: command {} of a plain spawn, run {} of a plain thread, enter+drop {} (medians)",
        rows.first().map_or_else(|| "-".into(), ratio),
        rows.get(2).map_or_else(|| "-".into(), ratio),
        enter_median
    );
}
