//! Sandbox create and remove latency, with a fork+exec of `true` measured in
//! the same run as the yardstick.
//!
//! ```text
//! cargo bench --bench create          # needs [[bench]] name = "create", harness = false
//! cargo bench --bench create -- 200   # another N (default 50)
//! cargo bench --bench create -- 50 5000  # with 5,000 more fds open
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first (not `enter()`, whose
//! shared rootless host outlives the process), so it runs as any user allowed
//! to make user namespaces (root included), never touches the machine's real
//! network, and leaves nothing behind. One untimed warm-up create and remove, then N sandboxes are
//! created one after another, then removed one after another. Before each
//! create and each remove, one `tokio::process::Command::new("true").status()`
//! is timed, so the baseline sees the same machine load as podnet. Nothing
//! is asserted. For the kernel floor and other tools, see `benches/peers/run.sh`.

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use podnet::{Network, Sandbox};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; the others are N and the extra fds.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let parsed = |i: usize, default: usize| args.get(i).map_or(Ok(default), |a| a.parse::<usize>());
    let (n, fds) = match (parsed(0, 50), parsed(1, 0)) {
        (Ok(n), Ok(fds)) if n > 0 && args.len() <= 2 => (n, fds),
        _ => {
            eprintln!(
                "usage: create [N [FDS]]   (N > 0 sandboxes, default 50; FDS more open fds, default 0)"
            );
            return ExitCode::from(2);
        }
    };
    // A runtime holds many fds of its own (sockets, pidfds, files): every
    // clone or fork that copies the fd table pays for them.
    let _extra = match open_fds(fds, n) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("create bench: cannot open {fds} more fds: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process, and the runtime below is current-thread.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("create bench: {e}");
        return ExitCode::FAILURE;
    }
    let state = std::env::temp_dir().join(format!("podnet-bench-create-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(bench(&state, n, fds)));
    let _ = std::fs::remove_dir(&state); // net.remove() leaves nothing; this is for errors
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("create bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `count` open fds (of /dev/null), with the soft `RLIMIT_NOFILE` raised
/// (up to the hard limit) to fit them beside `n` sandboxes' pidfds.
fn open_fds(count: usize, n: usize) -> AnyResult<Vec<std::fs::File>> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if count == 0 {
        return Ok(Vec::new());
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = u64::try_from(count + n + 256)?;
    if want > soft {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard)?;
    }
    let null = std::fs::File::open("/dev/null")?;
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        fds.push(null.try_clone()?);
    }
    Ok(fds)
}

async fn bench(state: &std::path::Path, n: usize, fds: usize) -> AnyResult<()> {
    let net = Network::builder("pnbench0")
        .subnet("10.88.0.0/16".parse()?)
        .state_dir(state)
        .build()
        .await?;

    // Warm-up, untimed: the first create also makes the holder program's
    // memfd and the pidfd that holders watch.
    let warm = net.sandbox("warm").create().await?;
    warm.remove().await?;
    common::fork_exec().await?;

    let mut pods: Vec<Sandbox> = Vec::with_capacity(n);
    let (mut create, mut remove) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut fe_create, mut fe_remove) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut failed: Option<Box<dyn std::error::Error>> = None;
    let t0 = Instant::now();
    for i in 0..n {
        match common::fork_exec().await {
            Ok(d) => fe_create.push(d),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        let t = Instant::now();
        match net.sandbox(format!("c{i}")).create().await {
            Ok(pod) => {
                create.push(t.elapsed());
                pods.push(pod);
            }
            Err(e) => {
                failed = Some(e.into());
                break;
            }
        }
    }
    let create_wall = t0.elapsed();
    let t0 = Instant::now();
    for pod in &pods {
        // Removal goes on whatever happens, so nothing is left.
        if let Ok(d) = common::fork_exec().await {
            fe_remove.push(d);
        }
        let t = Instant::now();
        match pod.remove().await {
            Ok(()) => remove.push(t.elapsed()),
            Err(e) => failed = failed.or(Some(e.into())),
        }
    }
    let remove_wall = t0.elapsed();
    drop(pods);
    let net_removed = net.remove().await;
    if let Some(e) = failed {
        return Err(e);
    }
    net_removed?;

    let fe_all: Vec<Duration> = fe_create.iter().chain(&fe_remove).copied().collect();
    let (Some(c), Some(r), Some(fc), Some(fr), Some(fa)) = (
        stats(&create),
        stats(&remove),
        stats(&fe_create),
        stats(&fe_remove),
        stats(&fe_all),
    ) else {
        return Err("no samples".into());
    };
    println!(
        "create bench: N={n} sandboxes one at a time (after 1 warm-up), {fds} more fds open, each \
         create and each remove preceded by one timed fork+exec of `true` (ms)"
    );
    println!(
        "{:<44} {:>5} {:>9} {:>9} {:>9} {:>12}",
        "what", "n", "median", "p95", "wall", "x fork+exec"
    );
    let row = |what: &str, s: (usize, f64, f64), wall: Option<Duration>, base: Option<f64>| {
        let wall = wall.map_or_else(|| "-".into(), |w| format!("{:.1}", w.as_secs_f64() * 1e3));
        let ratio = base.map_or_else(|| "-".into(), |b| format!("{:.1}x", s.1 / b));
        println!(
            "{:<44} {:>5} {:>9.3} {:>9.3} {:>9} {:>12}",
            what, s.0, s.1, s.2, wall, ratio
        );
    };
    row("podnet create", c, Some(create_wall), Some(fa.1));
    row("podnet remove", r, Some(remove_wall), Some(fa.1));
    row("fork+exec `true` (tokio), during creates", fc, None, None);
    row("fork+exec `true` (tokio), during removes", fr, None, None);
    row("fork+exec `true` (tokio), all", fa, None, None);
    println!(
        "create: median {:.3} ms = {:.1}x a fork+exec ({:.3} ms); remove: median {:.3} ms = {:.1}x \
         (walls include the interleaved fork+execs)",
        c.1,
        c.1 / fa.1,
        fa.1,
        r.1,
        r.1 / fa.1
    );
    Ok(())
}

/// (count, median, p95) in milliseconds.
fn stats(xs: &[Duration]) -> Option<(usize, f64, f64)> {
    common::stats(xs, 1e3)
}
