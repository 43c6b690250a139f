//! Address allocation: podnet's store beside CNI's host-local plugin, in
//! the same run, from 1 and from 8 processes on one pool.
//!
//! ```text
//! cargo bench --bench ipam              # needs /usr/lib/cni/host-local
//! ```
//! (Debian: `apt-get install containernetworking-plugins`; `CNI_PATH`
//! overrides where host-local is looked for.) Touches no network: both
//! allocate into temporary directories. Prints medians and the ratio of
//! rates podnet / host-local; nothing is asserted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podnet::internals::Ipam;

const POOL: &str = "10.88.0.0/16";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(
            &args[2],
            &args[3],
            args[4].parse().expect("count"),
            &args[5],
        );
        return;
    }
    let host_local = std::env::var("CNI_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/lib/cni"))
        .join("host-local");
    let tmp = std::env::temp_dir().join(format!("podnet-bench-ipam-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let _cleanup = RemoveDir(tmp.clone());

    let fs = match nix::sys::statfs::statfs(&tmp) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => "tmpfs",
        Ok(_) => "not tmpfs (metadata writes cost more there: set TMPDIR to a tmpfs)",
        Err(_) => "unknown",
    };
    println!("store in {} ({fs})", tmp.display());
    println!("allocations from one pool ({POOL}); rates are allocations per second of wall time\n");
    println!(
        "{:<28} {:>10} {:>12} {:>12}",
        "what", "allocs", "rate /s", "median µs"
    );
    let mut rates = Vec::new();
    for procs in [1usize, 8] {
        let per = if procs == 1 { 2000 } else { 250 };
        let (rate, med) = run(procs, per, |i| {
            child_cmd(
                "podnet",
                &tmp.join(format!("podnet-{procs}")),
                per,
                &format!("p{i}"),
            )
        });
        println!(
            "{:<28} {:>10} {:>12.0} {:>12.1}",
            format!("podnet, {procs} process(es)"),
            procs * per,
            rate,
            med
        );
        if !host_local.exists() {
            println!("host-local not found at {}: skipped", host_local.display());
            continue;
        }
        let per_hl = if procs == 1 { 300 } else { 60 };
        let (hl_rate, hl_med) = run(procs, per_hl, |i| {
            let mut c = child_cmd(
                "host-local",
                &tmp.join(format!("hl-{procs}")),
                per_hl,
                &format!("h{i}"),
            );
            c.env("BENCH_HOST_LOCAL", &host_local);
            c
        });
        println!(
            "{:<28} {:>10} {:>12.0} {:>12.1}",
            format!("host-local, {procs} process(es)"),
            procs * per_hl,
            hl_rate,
            hl_med
        );
        rates.push((procs, rate / hl_rate));
    }
    println!();
    for (procs, ratio) in &rates {
        println!("ratio podnet / host-local allocation rate, {procs} process(es): {ratio:.1}x");
    }

    // Does allocation stay flat as the pool fills? Fill most of a /16 and
    // compare the first and the last thousand allocations.
    let ipam = Ipam::open(&tmp.join("fill"), "bench", POOL.parse().expect("pool")).expect("store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let total = 64_000;
    let mut lat = Vec::with_capacity(total);
    for i in 0..total {
        let t = Instant::now();
        rt.block_on(ipam.allocate(&format!("f{i}")))
            .expect("allocate");
        lat.push(t.elapsed());
    }
    let first = median(&mut lat[..1000].to_vec());
    let last = median(&mut lat[total - 1000..].to_vec());
    println!(
        "\nfilling {POOL} to {total}: median of the first 1000 {:.1} µs, of the last 1000 {:.1} µs (ratio {:.2})",
        micros(first),
        micros(last),
        micros(last) / micros(first)
    );
}

fn child_cmd(kind: &str, dir: &Path, count: usize, tag: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("self"));
    c.args([
        "--child",
        kind,
        &dir.to_string_lossy(),
        &count.to_string(),
        tag,
    ])
    .stdout(Stdio::piped());
    c
}

/// Start `procs` children at once; return (allocations per second over the
/// wall time, median per-allocation latency in µs from all children).
fn run(procs: usize, per: usize, cmd: impl Fn(usize) -> Command) -> (f64, f64) {
    let start = Instant::now();
    let children: Vec<_> = (0..procs)
        .map(|i| cmd(i).spawn().expect("spawn child"))
        .collect();
    let mut lat = Vec::new();
    for c in children {
        let out = c.wait_with_output().expect("child");
        assert!(out.status.success(), "child failed");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            lat.push(Duration::from_nanos(l.parse().expect("ns")));
        }
    }
    let wall = start.elapsed();
    assert_eq!(lat.len(), procs * per);
    (
        (procs * per) as f64 / wall.as_secs_f64(),
        micros(median(&mut lat)),
    )
}

/// A child: `count` allocations, one latency (ns) per line.
fn child(kind: &str, dir: &str, count: usize, tag: &str) {
    let dir = Path::new(dir);
    let mut out = String::new();
    match kind {
        "podnet" => {
            let ipam = Ipam::open(dir, "bench", POOL.parse().expect("pool")).expect("store");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            for i in 0..count {
                let t = Instant::now();
                rt.block_on(ipam.allocate(&format!("{tag}-{i}")))
                    .expect("allocate");
                out += &format!("{}\n", t.elapsed().as_nanos());
            }
        }
        _ => {
            let plugin = std::env::var("BENCH_HOST_LOCAL").expect("plugin path");
            let conf = format!(
                r#"{{"cniVersion":"1.0.0","name":"bench","type":"bridge","ipam":{{"type":"host-local","subnet":"{POOL}","dataDir":"{}"}}}}"#,
                dir.display()
            );
            for i in 0..count {
                let t = Instant::now();
                let mut c = Command::new(&plugin)
                    .env("CNI_COMMAND", "ADD")
                    .env("CNI_CONTAINERID", format!("{tag}-{i}"))
                    .env("CNI_NETNS", "/proc/self/ns/net")
                    .env("CNI_IFNAME", "eth0")
                    .env("CNI_PATH", Path::new(&plugin).parent().expect("dir"))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("host-local");
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(conf.as_bytes())
                    .expect("config");
                assert!(c.wait().expect("wait").success(), "host-local failed");
                out += &format!("{}\n", t.elapsed().as_nanos());
            }
        }
    }
    print!("{out}");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
