//! What a disk filesystem costs the store: sandboxes made and removed
//! alternately on a network whose store is on ext4 and on one whose store
//! is on a tmpfs, in one process, so that both sides see the same machine
//! load, with a fork+exec of `true` between them as the yardstick; and
//! `podnet-cni` ADD and DEL exec'd the same way with its `ipam.dataDir` on
//! each (a namespace per round and side held by a `sleep`, as a pause
//! container holds one).
//!
//! ```text
//! cargo bench --bench store_disk          # 100 pairs
//! cargo bench --bench store_disk -- 300   # another number of pairs
//! ```
//!
//! It needs root (a loop device): without it, it says so and measures
//! nothing. It makes a mount namespace of its own (private propagation, so
//! the machine's mounts are untouched), a 256 MiB ext4 image in
//! `$TMPDIR` mounted through a loop device, and a tmpfs, both in a
//! directory `podnet-bench-store-disk-<pid>` there. A child process then
//! calls `podnet::rootless::enter_private()` (its own user and network
//! namespaces: the machine's network is never touched) and, after one
//! untimed warm-up create and remove on each network, runs N rounds of one
//! fork+exec, one create on each network (the side that goes first
//! alternating), then removes the sandboxes the same way, timed. Then it
//! removes the networks, and the parent unmounts both filesystems and
//! deletes the image. The loop device is detached as soon as it is
//! mounted (`losetup -d` of a busy device clears it on unmount), so it
//! goes with the mount even if the bench is killed. The ratios are the
//! medians of the per-round ratios (ext4 / tmpfs), which cancel the load
//! that both operations of a round share. Nothing is asserted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use common::cni::{Holder, Plugin};
use common::timed_create;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use podnet::{Network, Sandbox};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Set in the child: the directory holding the two mounts.
const CHILD_ENV: &str = "PODNET_BENCH_STORE_DISK_DIR";

fn main() -> ExitCode {
    let n = match common::rounds_arg("store_disk") {
        Ok(n) => n,
        Err(code) => return code,
    };
    let result = match std::env::var_os(CHILD_ENV) {
        Some(dir) => child(Path::new(&dir), n),
        None if !nix::unistd::geteuid().is_root() => {
            println!("store_disk bench: skipped: it needs root to mount an ext4 image");
            return ExitCode::SUCCESS;
        }
        None => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store_disk bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run `cmd`, failing with its stderr if it fails; its trimmed stdout.
fn run(cmd: &mut Command) -> AnyResult<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Make the mounts in a mount namespace of our own, run the bench in a
/// child, and take everything away again whatever happened.
fn parent() -> AnyResult<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let base = std::env::temp_dir().join(format!("podnet-bench-store-disk-{}", std::process::id()));
    std::fs::create_dir(&base)?;
    let mut mounted = Vec::new();
    let result = setup_and_run(&base, &mut mounted);
    for dir in mounted.iter().rev() {
        if let Err(e) = umount2(dir, MntFlags::empty()) {
            eprintln!("store_disk bench: unmount {}: {e}", dir.display());
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn setup_and_run(base: &Path, mounted: &mut Vec<PathBuf>) -> AnyResult<()> {
    let (img, ext4, tmpfs) = (base.join("ext4.img"), base.join("ext4"), base.join("tmpfs"));
    std::fs::File::create(&img)?.set_len(256 << 20)?;
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
    std::fs::create_dir(&ext4)?;
    std::fs::create_dir(&tmpfs)?;
    std::fs::create_dir(base.join("host"))?;
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img))?;
    let mounted_ext4 = mount(
        Some(dev.as_str()),
        &ext4,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    );
    // Detached now: busy, it is cleared when the filesystem is unmounted.
    let detached = run(Command::new("losetup").args(["-d", &dev]));
    mounted_ext4?;
    mounted.push(ext4.clone());
    detached?;
    mount(
        Some("tmpfs"),
        &tmpfs,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64m,mode=0700"),
    )?;
    mounted.push(tmpfs.clone());
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(CHILD_ENV, base)
        .status()?;
    if !status.success() {
        return Err(format!("the measuring child {status}").into());
    }
    Ok(())
}

fn child(base: &Path, n: usize) -> AnyResult<()> {
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process, and the runtime below is current-thread.
    podnet::rootless::enter_private()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(bench(base, n))
}

async fn timed_remove(sandbox: Option<Sandbox>) -> AnyResult<Duration> {
    let sandbox = sandbox.ok_or("a sandbox is missing")?;
    let t = Instant::now();
    sandbox.remove().await?;
    Ok(t.elapsed())
}

/// The stores' places, in the order of [`Samples`]' arrays.
const SIDES: [&str; SIDE_COUNT] = ["ext4 image", "host $TMPDIR", "tmpfs"];
const SIDE_COUNT: usize = 3;
/// The side the others are compared with.
const TMPFS: usize = 2;

#[derive(Default)]
struct Samples {
    create: [Vec<Duration>; SIDE_COUNT],
    remove: [Vec<Duration>; SIDE_COUNT],
    add: [Vec<Duration>; SIDE_COUNT],
    del: [Vec<Duration>; SIDE_COUNT],
    fork_exec: Vec<Duration>,
}

/// podnet-cni on each side's store: `ipam.dataDir` there, a bridge and a
/// 198.18.0.0/15 pool of its own (in [`SIDES`]' order).
fn plugins(base: &Path) -> [Plugin; SIDE_COUNT] {
    let dirs = ["ext4", "host", "tmpfs"];
    std::array::from_fn(|k| Plugin {
        name: SIDES[k],
        exe: PathBuf::from(env!("CARGO_BIN_EXE_podnet-cni")),
        conf: common::cni::conf(
            "podnet-cni",
            &format!("pnbc{k}"),
            &format!("198.18.{}.0/18", 64 * k),
            &format!("198.18.{}.1", 64 * k),
            &base.join(dirs[k]).join("cni"),
        ),
    })
}

/// The order of the sides in round `i`: each goes first, second and
/// third equally often.
fn order(i: usize) -> [usize; SIDE_COUNT] {
    let k = i % SIDE_COUNT;
    let mut o = [0; SIDE_COUNT];
    for (j, side) in o.iter_mut().enumerate() {
        *side = (k + j) % SIDE_COUNT;
    }
    o
}

/// N rounds of creates, then of removes, on `nets` (in [`SIDES`]' order);
/// `made` holds what is not removed yet, per network.
async fn rounds(
    nets: [&Network; SIDE_COUNT],
    plugins: &[Plugin; SIDE_COUNT],
    n: usize,
    made: &mut [Vec<Sandbox>; SIDE_COUNT],
) -> AnyResult<Samples> {
    let mut s = Samples::default();
    // The runtime's namespaces of the ADDs, one per round and side.
    let holders: Vec<[Holder; SIDE_COUNT]> = (0..n)
        .map(|_| Ok([Holder::new()?, Holder::new()?, Holder::new()?]))
        .collect::<AnyResult<_>>()?;
    for (i, held) in holders.iter().enumerate() {
        s.fork_exec.push(common::fork_exec().await?);
        for side in order(i) {
            let d = timed_create(nets[side], format!("s{i}"), &mut made[side]).await?;
            s.create[side].push(d);
        }
        for side in order(i) {
            s.add[side].push(plugins[side].exec("ADD", i, &held[side].path())?);
        }
    }
    for (i, held) in holders.iter().enumerate() {
        for side in order(i) {
            s.remove[side].push(timed_remove(made[side].pop()).await?);
        }
        for side in order(i) {
            s.del[side].push(plugins[side].exec("DEL", i, &held[side].path())?);
        }
    }
    Ok(s)
}

async fn bench(base: &Path, n: usize) -> AnyResult<()> {
    // ext4 image, host $TMPDIR (the directory holding the mounts), tmpfs.
    let places = [
        ("pnbext0", "ext4"),
        ("pnbhost0", "host"),
        ("pnbtmp0", "tmpfs"),
    ];
    let mut nets = Vec::with_capacity(SIDE_COUNT);
    let mut built = Ok(());
    for (k, (bridge, dir)) in places.into_iter().enumerate() {
        match Network::builder(bridge)
            .subnet(format!("10.88.{}.0/18", 64 * k).parse()?)
            .state_dir(base.join(dir).join("state"))
            .build()
            .await
        {
            Ok(net) => nets.push(net),
            Err(e) => {
                built = Err(e);
                break;
            }
        }
    }
    let mut made: [Vec<Sandbox>; SIDE_COUNT] = Default::default();
    let measured = match (
        &built,
        <[&Network; SIDE_COUNT]>::try_from(nets.iter().collect::<Vec<_>>()),
    ) {
        (Ok(()), Ok(sides)) => {
            async {
                for net in sides {
                    let warm = net.sandbox("warm").create().await?;
                    warm.remove().await?;
                }
                let plugins = plugins(base);
                for p in &plugins {
                    let h = Holder::new()?;
                    p.exec("ADD", usize::MAX, &h.path())?;
                    p.exec("DEL", usize::MAX, &h.path())?;
                }
                common::fork_exec().await?;
                rounds(sides, &plugins, n, &mut made).await
            }
            .await
        }
        _ => Err("a network was not built".into()),
    };
    // Removal goes on whatever happened, so nothing is left.
    let mut failed = None;
    for sandbox in made.iter().flatten() {
        if let Err(e) = sandbox.remove().await {
            failed = failed.or(Some(e));
        }
    }
    drop(made);
    for net in nets {
        if let Err(e) = net.remove().await {
            failed = failed.or(Some(e));
        }
    }
    built?;
    let s = measured?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    report(&s, n)
}

fn report(s: &Samples, n: usize) -> AnyResult<()> {
    let fe = stats(&s.fork_exec).ok_or("no samples")?;
    println!(
        "store_disk bench: N={n} rounds of a fork+exec and a create on each store, \
         then N of a remove on each (ms)"
    );
    println!(
        "{:<40} {:>5} {:>9} {:>9} {:>12}",
        "what", "n", "median", "p95", "x fork+exec"
    );
    println!(
        "{:<40} {:>5} {:>9.3} {:>9.3} {:>11.2}x",
        "fork+exec `true` (tokio)", fe.0, fe.1, fe.2, 1.0
    );
    let all = [
        ("create", &s.create),
        ("remove", &s.remove),
        ("podnet-cni ADD", &s.add),
        ("podnet-cni DEL", &s.del),
    ];
    for (what, xs) in all {
        for (side, place) in SIDES.iter().enumerate() {
            let st = stats(&xs[side]).ok_or("no samples")?;
            println!(
                "{:<40} {:>5} {:>9.3} {:>9.3} {:>11.2}x",
                format!("{what}, store on {place}"),
                st.0,
                st.1,
                st.2,
                st.1 / fe.1
            );
        }
    }
    for (what, xs) in all {
        let mem = &xs[TMPFS];
        for side in (0..SIDE_COUNT).filter(|&k| k != TMPFS) {
            let disk = &xs[side];
            let mut ratios: Vec<f64> = disk
                .iter()
                .zip(mem)
                .map(|(d, m)| d.as_secs_f64() / m.as_secs_f64())
                .collect();
            let ratio = common::median(&mut ratios).ok_or("no samples")?;
            let (d, m) = (
                stats(disk).ok_or("no samples")?,
                stats(mem).ok_or("no samples")?,
            );
            println!(
                "{what}, {} / tmpfs: {ratio:.3}x (median of per-round ratios); \
                 ratio of medians {:.3}x ({:.3} / {:.3} ms)",
                SIDES[side],
                d.1 / m.1,
                d.1,
                m.1
            );
        }
    }
    Ok(())
}

/// (count, median, p95) in milliseconds.
fn stats(xs: &[Duration]) -> Option<(usize, f64, f64)> {
    common::stats(xs, 1e3)
}
