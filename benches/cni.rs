//! `podnet-cni` beside the CNI reference plugins: ADD and DEL exec'd as a
//! runtime execs them (the configuration on stdin, the verb and the
//! container in `CNI_*`, timed from spawn to exit), for podnet-cni and for
//! `bridge` + `host-local` (Debian `containernetworking-plugins`, which
//! execs host-local itself), with the same features asked of both
//! (`isGateway`, `ipMasq`, a default route, a veth per container), and the
//! library's own `create()` and `remove()` for scale, all in one run.
//!
//! ```text
//! cargo bench --bench cni                  # N = 1, 50, 200, 1000
//! cargo bench --bench cni -- 1,50          # other N
//! ```
//!
//! Per N: N namespaces are made (untimed; each held by a `sleep` of the
//! bench's own, as a pause container holds one), then N ADDs one after
//! another, then N DELs, for each plugin in turn (the plugin that goes
//! first alternating with N), then N creates and N removes of the
//! library; an N below 20 is run that many times over (N = 1: 20
//! networks of one container, one after another). The figures are the median and p95 of the N operations, and
//! the ratios podnet-cni / reference of each. It needs root; it runs in a
//! network namespace of its own (the machine's network is never touched),
//! on 10.88.0.0/17 (podnet-cni), 10.88.128.0/17 (reference) and
//! 198.18.0.0/16 (library), with the stores in a temporary directory of
//! `$TMPDIR` (the same filesystem for both plugins), removed at the end.
//! Nothing is asserted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::cni::{conf, Holder, Plugin, REFERENCE_DIR};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The fewest operations a figure is the median of: an N below it is
/// measured that many times over (N = 1: 20 networks of one container).
const MIN_SAMPLES: usize = 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let ns: Vec<usize> = match args.first() {
        None => vec![1, 50, 200, 1000],
        Some(list) => match list.split(',').map(str::parse).collect() {
            Ok(v) => v,
            Err(_) => {
                eprintln!("usage: cargo bench --bench cni [-- N[,N...]]");
                return ExitCode::FAILURE;
            }
        },
    };
    if !nix::unistd::geteuid().is_root() {
        println!("cni bench: skipped: it needs root (bridges, and the reference plugin)");
        return ExitCode::SUCCESS;
    }
    if !Path::new(REFERENCE_DIR).join("bridge").exists() {
        println!("cni bench: skipped: no {REFERENCE_DIR}/bridge (apt-get install containernetworking-plugins)");
        return ExitCode::SUCCESS;
    }
    // Before any thread: the bench's own network namespace.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        eprintln!("cni bench: cannot make a network namespace: {e}");
        return ExitCode::FAILURE;
    }
    let dir = std::env::temp_dir().join(format!("podnet-bench-cni-{}", std::process::id()));
    let result = std::fs::create_dir(&dir)
        .map_err(Into::into)
        .and_then(|()| run("ip", &["link", "set", "lo", "up"]))
        .and_then(|()| bench(&dir, &ns));
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(dir: &Path, ns: &[usize]) -> AnyResult<()> {
    let podnet = Plugin {
        name: "podnet-cni",
        exe: PathBuf::from(env!("CARGO_BIN_EXE_podnet-cni")),
        conf: conf(
            "podnet-cni",
            "pnbc0",
            "10.88.0.0/17",
            "10.88.0.1",
            &dir.join("store"),
        ),
    };
    let reference = Plugin {
        name: "bridge+host-local",
        exe: Path::new(REFERENCE_DIR).join("bridge"),
        conf: conf(
            "bridge",
            "pnbr0",
            "10.88.128.0/17",
            "10.88.128.1",
            &dir.join("store"),
        ),
    };
    // One untimed ADD and DEL each: the bridges, tables and stores made.
    for p in [&podnet, &reference] {
        let h = Holder::new()?;
        p.exec("ADD", usize::MAX, &h.path())?;
        p.exec("DEL", usize::MAX, &h.path())?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let net = rt.block_on(
        podnet::Network::builder("pnbl0")
            .subnet("198.18.0.0/16".parse()?)
            .state_dir(dir.join("library"))
            .dns(false)
            .egress(true)
            .enable_forwarding(true)
            .build(),
    )?;
    println!(
        "cni bench: ADD and DEL exec'd one after another (ms), median / p95 over N; \
         isGateway, ipMasq and a default route for both plugins; the library's \
         create/remove in-process for scale"
    );
    println!(
        "{:>5}  {:<18} {:>8} {:>8} {:>8} {:>8}",
        "N", "", "ADD med", "ADD p95", "DEL med", "DEL p95"
    );
    for (k, &n) in ns.iter().enumerate() {
        let mut rows = Vec::new();
        let order: [&Plugin; 2] = if k % 2 == 0 {
            [&podnet, &reference]
        } else {
            [&reference, &podnet]
        };
        for p in order {
            rows.push((p.name, one_plugin(p, n)?));
        }
        rows.sort_by_key(|(name, _)| *name != "podnet-cni");
        let lib = rt.block_on(library(&net, n))?;
        for (name, (add, del)) in rows.iter().chain(std::iter::once(&("library", lib))) {
            let (a, d) = (stats(add), stats(del));
            println!(
                "{n:>5}  {name:<18} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                a.0, a.1, d.0, d.1
            );
        }
        let (pa, pd) = (stats(&rows[0].1 .0), stats(&rows[0].1 .1));
        let (ra, rd) = (stats(&rows[1].1 .0), stats(&rows[1].1 .1));
        println!(
            "{n:>5}  {:<18} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            "podnet / reference",
            pa.0 / ra.0,
            pa.1 / ra.1,
            pd.0 / rd.0,
            pd.1 / rd.1
        );
    }
    rt.block_on(net.remove())?;
    Ok(())
}

/// N ADDs, then N DELs, of `p` (below `MIN_SAMPLES`, that as many
/// times over): their durations.
fn one_plugin(p: &Plugin, n: usize) -> AnyResult<(Vec<Duration>, Vec<Duration>)> {
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for _ in 0..MIN_SAMPLES.div_ceil(n) {
        let holders: Vec<Holder> = (0..n).map(|_| Holder::new()).collect::<AnyResult<_>>()?;
        for (i, h) in holders.iter().enumerate() {
            add.push(p.exec("ADD", i, &h.path())?);
        }
        for (i, h) in holders.iter().enumerate() {
            del.push(p.exec("DEL", i, &h.path())?);
        }
    }
    Ok((add, del))
}

/// N creates, then N removes, of the library.
async fn library(net: &podnet::Network, n: usize) -> AnyResult<(Vec<Duration>, Vec<Duration>)> {
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for _ in 0..MIN_SAMPLES.div_ceil(n) {
        let mut made = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            made.push(net.sandbox(format!("b{i}")).create().await?);
            add.push(t.elapsed());
        }
        for s in made {
            let t = Instant::now();
            s.remove().await?;
            del.push(t.elapsed());
        }
    }
    Ok((add, del))
}

/// (median, p95) in ms.
fn stats(xs: &[Duration]) -> (f64, f64) {
    common::stats(xs, 1e3).map_or((f64::NAN, f64::NAN), |(_, m, p)| (m, p))
}

fn run(cmd: &str, args: &[&str]) -> AnyResult<()> {
    let status = Command::new(cmd).args(args).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {args:?}: {status}").into())
    }
}
