//! What a network's DNS costs `create()`: sandboxes made alternately on a
//! network with DNS (the default) and on one without, in one process, so
//! that both sides see the same machine load, with a fork+exec of `true`
//! between them as the yardstick.
//!
//! ```text
//! cargo bench --bench create_dns          # 100 pairs
//! cargo bench --bench create_dns -- 300   # another number of pairs
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first, so it runs as any
//! user allowed to make user namespaces (root included), never touches the
//! machine's real network, and leaves nothing behind. After one untimed
//! warm-up create and remove on each network, N rounds each time one
//! fork+exec, one create on the DNS network and one on the other, the side
//! that goes first alternating from round to round; then everything is
//! removed. The ratio is the median of the per-round ratios (with DNS /
//! without), which cancels the load that both creates of a round share.
//! Nothing is asserted.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::timed_create;
use podnet::{Network, Sandbox};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let n = match common::rounds_arg("create_dns") {
        Ok(n) => n,
        Err(code) => return code,
    };
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process, and the runtime below is current-thread.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("create_dns bench: {e}");
        return ExitCode::FAILURE;
    }
    let state =
        std::env::temp_dir().join(format!("podnet-bench-create-dns-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|rt| rt.block_on(bench(&state, n)));
    let _ = std::fs::remove_dir(&state); // net.remove() leaves nothing; this is for errors
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("create_dns bench: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Samples {
    with: Vec<Duration>,
    without: Vec<Duration>,
    fork_exec: Vec<Duration>,
}

async fn rounds(
    dns: &Network,
    plain: &Network,
    n: usize,
    made: &mut Vec<Sandbox>,
) -> AnyResult<Samples> {
    let mut s = Samples {
        with: Vec::with_capacity(n),
        without: Vec::with_capacity(n),
        fork_exec: Vec::with_capacity(n),
    };
    for i in 0..n {
        s.fork_exec.push(common::fork_exec().await?);
        if i % 2 == 0 {
            s.with.push(timed_create(dns, format!("d{i}"), made).await?);
            s.without
                .push(timed_create(plain, format!("p{i}"), made).await?);
        } else {
            s.without
                .push(timed_create(plain, format!("p{i}"), made).await?);
            s.with.push(timed_create(dns, format!("d{i}"), made).await?);
        }
    }
    Ok(s)
}

async fn bench(state: &std::path::Path, n: usize) -> AnyResult<()> {
    let dns = Network::builder("pnbdns0")
        .subnet("10.88.0.0/17".parse()?)
        .state_dir(state)
        .build()
        .await?;
    let plain = match Network::builder("pnbplain0")
        .subnet("10.88.128.0/17".parse()?)
        .state_dir(state)
        .dns(false)
        .build()
        .await
    {
        Ok(net) => net,
        Err(e) => {
            let _ = dns.remove().await;
            return Err(e.into());
        }
    };
    let mut made = Vec::with_capacity(2 * n + 2);
    let measured = async {
        for net in [&dns, &plain] {
            let warm = net.sandbox("warm").create().await?;
            warm.remove().await?;
        }
        common::fork_exec().await?;
        rounds(&dns, &plain, n, &mut made).await
    }
    .await;
    // Removal goes on whatever happened, so nothing is left.
    let mut failed = None;
    for sandbox in &made {
        if let Err(e) = sandbox.remove().await {
            failed = failed.or(Some(e));
        }
    }
    drop(made);
    for net in [dns, plain] {
        if let Err(e) = net.remove().await {
            failed = failed.or(Some(e));
        }
    }
    let s = measured?;
    if let Some(e) = failed {
        return Err(e.into());
    }

    let mut ratios: Vec<f64> = s
        .with
        .iter()
        .zip(&s.without)
        .map(|(w, wo)| w.as_secs_f64() / wo.as_secs_f64())
        .collect();
    let (Some(w), Some(wo), Some(fe)) = (stats(&s.with), stats(&s.without), stats(&s.fork_exec))
    else {
        return Err("no samples".into());
    };
    let ratio = common::median(&mut ratios).ok_or("no samples")?;
    println!(
        "create_dns bench: N={n} rounds of a fork+exec, a create with DNS and one without (ms)"
    );
    println!(
        "{:<34} {:>5} {:>9} {:>9} {:>12}",
        "what", "n", "median", "p95", "x fork+exec"
    );
    for (what, st) in [
        ("create, network with DNS", w),
        ("create, network without DNS", wo),
        ("fork+exec `true` (tokio)", fe),
    ] {
        println!(
            "{:<34} {:>5} {:>9.3} {:>9.3} {:>11.2}x",
            what,
            st.0,
            st.1,
            st.2,
            st.1 / fe.1
        );
    }
    println!(
        "with DNS / without: {ratio:.3}x (median of per-round ratios); \
         medians {:.3} / {:.3} ms",
        w.1, wo.1
    );
    Ok(())
}

/// (count, median, p95) in milliseconds.
fn stats(xs: &[Duration]) -> Option<(usize, f64, f64)> {
    common::stats(xs, 1e3)
}
