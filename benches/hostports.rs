//! Rootless ports on the real host: throughput and connection rate from a
//! client on the real host's 127.0.0.1 to a server in a rootless pod,
//! through podnet's real-host port (`PortMapping::real_host`) and through
//! rootlesskit's builtin port driver (Debian `rootlesskit`), with a server
//! on the real loopback itself as the floor, all measured in one run.
//!
//! ```text
//! cargo bench --bench hostports              # rounds 7, 64 MiB a transfer
//! cargo bench --bench hostports -- 3 32      # rounds, MiB per throughput trial
//! ```
//!
//! `main` never enters a namespace: it is the client, on the real host. The
//! podnet side is this binary again (`--pod`), which calls
//! `rootless::enter_private()`, makes a network and a sandbox, and
//! publishes the sandbox's servers on the real host's 127.0.0.1. The
//! rootlesskit side is `rootlesskit --net=slirp4netns --port-driver=builtin
//! -p 127.0.0.1:P:5001/tcp ...` running this binary again (`--servers`) in
//! its namespaces: the same servers on its 127.0.0.1. rootlesskit needs
//! subordinate ids; as root the bench gives it `root:100000:65536` in
//! /etc/subuid and /etc/subgid bind-mounted in a mount namespace of its
//! own (the files on disk are not changed); as another user they must be
//! set for that user, or the rootlesskit row is left out. slirp4netns is
//! rootlesskit's network driver only: the builtin driver's data path does
//! not go through it (its parent accepts, its child dials in the
//! namespace and passes the connection back, the parent copies).
//!
//! The servers are threads, one connection at a time, as in
//! `benches/mappings.rs`. Each round measures every path once, in the same
//! order; figures are medians over the rounds, ratios are medians of the
//! per-round ratios. Nothing is asserted. Every port is on loopback.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use podnet::{Forwarder, PortMapping, PortNetns};

use common::tcp::{conn_rate, hello, serve, sink, throughput};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The servers' ports in the pod and in rootlesskit's namespace.
const SINK: u16 = 5001;
const HELLO: u16 = 5002;
const CONNS_PER_TRIAL: usize = 500;
const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

fn main() -> ExitCode {
    let all: Vec<String> = std::env::args().collect();
    match all.get(1).map(String::as_str) {
        Some("--pod") => return exit(pod_side(Path::new(&all[2]))),
        Some("--servers") => return exit(servers_side()),
        _ => {}
    }
    let mut args = all.iter().skip(1).filter(|a| !a.starts_with("--"));
    let parse = |a: Option<&String>, default: usize| match a.map(|a| a.parse::<usize>()) {
        None => Some(default),
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => None,
    };
    let (Some(rounds), Some(mib)) = (parse(args.next(), 7), parse(args.next(), 64)) else {
        eprintln!("usage: hostports [ROUNDS] [MIB]   (both > 0; default 7 and 64)");
        return ExitCode::from(2);
    };
    let dir = std::env::temp_dir().join(format!("podnet-bench-hostports-{}", std::process::id()));
    let result = std::fs::create_dir(&dir)
        .map_err(Into::into)
        .and_then(|()| bench(&dir, rounds, mib));
    let _ = std::fs::remove_dir_all(&dir);
    exit(result)
}

fn exit(result: AnyResult<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostports bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A side of the bench in another process: it prints `ready ...` once
/// serving and ends when its stdin closes.
struct Side {
    child: Child,
    ready: String,
}

impl Side {
    fn spawn(cmd: &mut Command) -> AnyResult<Side> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut ready = String::new();
        out.read_line(&mut ready)?;
        if !ready.starts_with("ready") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not start: {ready:?}").into());
        }
        Ok(Side {
            child,
            ready: ready.trim().to_owned(),
        })
    }

    /// Close its stdin and wait up to 10 s for it to end; then kill it.
    fn end(mut self) {
        drop(self.child.stdin.take());
        for _ in 0..1000 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(dir: &Path, rounds: usize, mib: usize) -> AnyResult<()> {
    let me = std::env::current_exe()?;
    // The floor: the servers on the real loopback, no forwarder at all.
    let direct_sink = serve_on((LOOPBACK, 0), sink)?;
    let direct_hello = serve_on((LOOPBACK, 0), hello)?;
    let podnet = Side::spawn(Command::new(&me).arg("--pod").arg(dir.join("state")))?;
    let mut words = podnet.ready.split_whitespace().skip(1);
    let mut port = || -> AnyResult<u16> { Ok(words.next().ok_or("ready line")?.parse()?) };
    let (podnet_sink, podnet_hello) = (port()?, port()?);
    let rootlesskit = match spawn_rootlesskit(&me, dir) {
        Ok(side) => Some(side),
        Err(e) => {
            eprintln!("hostports bench: rootlesskit row left out: {e}");
            None
        }
    };
    let result = measure(
        rounds,
        mib,
        &[
            ("direct on the real loopback", direct_sink, direct_hello),
            ("podnet real-host port", podnet_sink, podnet_hello),
        ],
        rootlesskit.as_ref().map(|r| r.1),
    );
    podnet.end();
    if let Some((side, _)) = rootlesskit {
        side.end();
    }
    result
}

/// rootlesskit with the builtin port driver publishing this binary's
/// `--servers` on two free ports of the real loopback; it and the ports.
fn spawn_rootlesskit(me: &Path, dir: &Path) -> AnyResult<(Side, (u16, u16))> {
    let free = || -> AnyResult<u16> { Ok(TcpListener::bind((LOOPBACK, 0))?.local_addr()?.port()) };
    let (sink, hello) = (free()?, free()?);
    let state = dir.join("rootlesskit");
    let mut argv: Vec<String> = vec![
        "rootlesskit".into(),
        format!("--state-dir={}", state.display()),
        "--net=slirp4netns".into(),
        "--disable-host-loopback".into(),
        "--port-driver=builtin".into(),
        format!("--publish=127.0.0.1:{sink}:{SINK}/tcp"),
        format!("--publish=127.0.0.1:{hello}:{HELLO}/tcp"),
        me.display().to_string(),
        "--servers".into(),
    ];
    let mut cmd = if nix::unistd::geteuid().is_root() {
        // Subordinate ids for root, in a mount namespace of the bench's
        // own: the files on disk stay as they are.
        let ids = dir.join("subids");
        std::fs::write(&ids, "root:100000:65536\n")?;
        let script = format!(
            "mount --bind {ids} /etc/subuid && mount --bind {ids} /etc/subgid && exec \"$@\"",
            ids = ids.display()
        );
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ]);
        c.args(&argv);
        c
    } else {
        let mut c = Command::new(argv.remove(0));
        c.args(&argv);
        c
    };
    let side = Side::spawn(cmd.stderr(Stdio::null()))?;
    Ok((side, (sink, hello)))
}

/// Every path's throughput and connection rate, `rounds` times, printed
/// with ratios to rootlesskit's (the last row, if there is one).
fn measure(
    rounds: usize,
    mib: usize,
    paths: &[(&str, u16, u16)],
    rootlesskit: Option<(u16, u16)>,
) -> AnyResult<()> {
    let mut paths = paths.to_vec();
    if let Some((sink, hello)) = rootlesskit {
        paths.push(("rootlesskit builtin port driver", sink, hello));
    }
    let at = |port: u16| SocketAddr::from((LOOPBACK, port));
    // Warm-up, untimed.
    for (_, sink, hello) in &paths {
        throughput(at(*sink), 4)?;
        conn_rate(at(*hello), CONNS_PER_TRIAL, &mut Vec::new())?;
    }
    let n = paths.len();
    let (mut tput, mut conns) = (vec![vec![]; n], vec![vec![]; n]);
    let mut each: Vec<Vec<Duration>> = vec![vec![]; n];
    for _ in 0..rounds {
        for (i, (_, sink, hello)) in paths.iter().enumerate() {
            tput[i].push(throughput(at(*sink), mib)?);
            conns[i].push(conn_rate(at(*hello), CONNS_PER_TRIAL, &mut each[i])?);
        }
    }
    println!(
        "hostports bench: {rounds} rounds; per round and path: one {mib} MiB transfer, \
         {CONNS_PER_TRIAL} connections (1 byte each way). Medians; ratios are medians of \
         per-round ratios to the rootlesskit row."
    );
    println!(
        "{:<34} {:>9} {:>7} {:>9} {:>7}",
        "path", "MiB/s", "ratio", "conn/s", "ratio"
    );
    let base = rootlesskit.map(|_| n - 1);
    for (i, (what, _, _)) in paths.iter().enumerate() {
        let ratio = |xs: &[Vec<f64>]| match base {
            Some(b) => {
                let mut r: Vec<f64> = xs[i].iter().zip(&xs[b]).map(|(a, b)| a / b).collect();
                format!("{:.2}", median(&mut r))
            }
            None => "-".to_owned(),
        };
        println!(
            "{:<34} {:>9.0} {:>7} {:>9.0} {:>7}",
            what,
            median(&mut tput[i].clone()),
            ratio(&tput),
            median(&mut conns[i].clone()),
            ratio(&conns),
        );
    }
    println!("one connection (connect, 1 byte each way, close), µs:");
    for (i, (what, _, _)) in paths.iter().enumerate() {
        if let Some((n, med, p95)) = common::stats(&each[i], 1e6) {
            println!("  {what:<34} n={n} median {med:.1} p95 {p95:.1}");
        }
    }
    Ok(())
}

/// The podnet side: rootless, a network, a sandbox serving [`SINK`] and
/// [`HELLO`], both published on the real host's 127.0.0.1; `ready <sink>
/// <hello>` with their host ports; removed when stdin closes.
fn pod_side(state: &Path) -> AnyResult<()> {
    podnet::rootless::enter_private()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let net = podnet::Network::builder("pnhostb0")
            .subnet("10.88.0.0/16".parse()?)
            .state_dir(state)
            .dns(false)
            .build()
            .await?;
        let pod = net.sandbox("bench").create().await?;
        let served = async {
            for (port, f) in [
                (SINK, sink as fn(TcpStream) -> std::io::Result<()>),
                (HELLO, hello),
            ] {
                let l = pod
                    .run(move || TcpListener::bind(("0.0.0.0", port)))
                    .await??;
                serve(l, f);
            }
            let lo = std::net::IpAddr::V4(LOOPBACK);
            let mut host = Vec::new();
            for port in [SINK, HELLO] {
                let p = pod
                    .add_port(PortMapping::tcp(0, port).host_ip(lo).real_host())
                    .await?;
                if p[0].netns != PortNetns::RealHost || p[0].forwarder != Forwarder::Userspace {
                    return Err(format!("{} is not a real-host userspace port", p[0]).into());
                }
                host.push(p[0].host.port().to_string());
            }
            println!("ready {}", host.join(" "));
            // Serve until main closes our stdin.
            tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
            Ok::<(), Box<dyn std::error::Error>>(())
        }
        .await;
        let removed = pod.remove().await;
        let net_removed = net.remove().await;
        served?;
        removed?;
        net_removed?;
        Ok(())
    })
}

/// The rootlesskit side, inside its namespaces: the same servers on its
/// 127.0.0.1; `ready`; ends when stdin closes.
fn servers_side() -> AnyResult<()> {
    serve_on((LOOPBACK, SINK), sink)?;
    serve_on((LOOPBACK, HELLO), hello)?;
    println!("ready");
    std::io::stdout().flush()?;
    std::io::stdin().read_to_end(&mut Vec::new())?;
    Ok(())
}

/// Bind `addr` and serve it with `f` on a thread; its port.
fn serve_on(
    addr: impl std::net::ToSocketAddrs,
    f: fn(TcpStream) -> std::io::Result<()>,
) -> AnyResult<u16> {
    let l = TcpListener::bind(addr)?;
    let port = l.local_addr()?.port();
    serve(l, f);
    Ok(port)
}

fn median(xs: &mut [f64]) -> f64 {
    common::median(xs).unwrap_or(f64::NAN)
}
