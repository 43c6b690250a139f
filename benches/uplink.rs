//! Rootless egress through pasta: TCP throughput and connection rate from
//! a client in a rootless pod to a server on the real host's 127.0.0.1,
//! through podnet's egress and pasta (Debian `passt`), beside pasta's own
//! figure for the same path (the client in pasta's namespace, no pod) and
//! beside slirp4netns (Debian `slirp4netns`), with the real loopback
//! itself as the floor, all measured in one run.
//!
//! ```text
//! cargo bench --bench uplink              # 5 rounds of 1 s trials, pod MTU 65520
//! cargo bench --bench uplink -- 7 2 1500  # ROUNDS, SECS per trial, MTU of the network (0: podnet's default)
//! ```
//!
//! `main` never enters a namespace: it owns the servers, on the real
//! host's 127.0.0.1 only (a sink that reads to the end and answers with
//! the byte count, and one acceptor per path that accepts and drops), and
//! it starts the clients, each this binary again (`--client KIND ...`):
//! - **podnet**: `Entry::private().uplink(Pasta::new().args(["-a",
//!   "198.18.100.2", "-n", "24", "-g", "198.18.100.1"])).enter()`, a
//!   network `pnupb0` (pool `10.88.0.0/16`, `.egress(true)
//!   .enable_forwarding(true)`, MTU 65520 unless told otherwise), one
//!   sandbox; the client runs in it (`Sandbox::run`) to the gateway
//!   `198.18.100.1`: pod, veth, bridge, masquerade, pasta, the real
//!   loopback;
//! - **pasta alone**: the same entry with the same pasta, the client in
//!   the rootless host namespace itself, to the same gateway;
//! - **slirp4netns**: `unshare --user --map-root-user --net`, with
//!   `slirp4netns --configure --mtu=65520 PID tap0` started from here
//!   (without `--disable-host-loopback`, so `10.0.2.2` is the host's
//!   loopback; 65520 is the MTU podman gives it); the client to
//!   `10.0.2.2`;
//! - **direct**: the client with no namespace, to `127.0.0.1`.
//!
//! Per path and round: **throughput**, one connection writing 128 KiB
//! buffers for SECS s, then half-closing and waiting for the sink's count
//! (bytes it counted / time until the count, in MiB/s; a count short of
//! what was sent is counted and shown: pasta 2023-03 sometimes ends the
//! host side of a stream before its tail, or resets it, a trial of 0
//! MiB/s), with the client namespace's
//! retransmission timeouts and retransmitted segments meanwhile (for the
//! direct path those are the real host's, whatever else runs there);
//! **connections/s**, connect and close (SO_LINGER 0) one after the other
//! for SECS s, to that path's own acceptor. Each round measures every
//! path once, the first path rotating each round; figures are medians
//! over rounds, ratios medians of the per-round ratios. Nothing is
//! asserted.
//!
//! Nothing leaves the real loopback and the bench's own namespaces: pasta
//! and slirp4netns map their gateway to the real host's 127.0.0.1, where
//! the only servers are. It runs as root and as an unprivileged user
//! (pasta needs `/dev/net/tun` mode 0666, as distributions ship it). Each
//! client ends when its stdin closes and takes its namespaces with it;
//! pasta ends with its namespace, slirp4netns with its `--exit-fd`; the
//! temporary directory is removed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use podnet::rootless::{Entry, Pasta};

use common::tcp::sink;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The addresses pasta gives the rootless host namespace, as in
/// tests/uplink.rs: nothing copied from the machine's own.
const PASTA_ARGS: [&str; 6] = ["-a", "198.18.100.2", "-n", "24", "-g", "198.18.100.1"];
const PASTA_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// slirp4netns's default gateway, which it maps to the host's loopback.
const SLIRP_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// pasta's default MTU, and the one podman gives slirp4netns.
const UPLINK_MTU: u32 = 65520;
const CHUNK: usize = 128 * 1024;
/// Seconds of each path's warm-up trials.
const WARM_UP: f64 = 0.3;

/// The paths, in the order of the table.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Direct,
    Podnet,
    Pasta,
    Slirp,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Direct, Kind::Podnet, Kind::Pasta, Kind::Slirp];

    fn flag(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Podnet => "podnet",
            Kind::Pasta => "pasta",
            Kind::Slirp => "slirp",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Direct => "direct on the real loopback",
            Kind::Podnet => "podnet pod > bridge > pasta",
            Kind::Pasta => "pasta alone",
            Kind::Slirp => "slirp4netns",
        }
    }

    fn server(self) -> IpAddr {
        IpAddr::V4(match self {
            Kind::Direct => Ipv4Addr::LOCALHOST,
            Kind::Podnet | Kind::Pasta => PASTA_GATEWAY,
            Kind::Slirp => SLIRP_GATEWAY,
        })
    }
}

fn main() -> ExitCode {
    let all: Vec<String> = std::env::args().collect();
    if all.get(1).map(String::as_str) == Some("--client") {
        let kind = all.get(2).cloned().unwrap_or_default();
        return exit(client_side(&all[2..]).map_err(|e| format!("{kind} client: {e}").into()));
    }
    let mut args = all.iter().skip(1).filter(|a| !a.starts_with("--"));
    let rounds = args.next().map_or(Ok(5), |a| a.parse::<usize>());
    let secs = args.next().map_or(Ok(1.0), |a| a.parse::<f64>());
    let mtu = args.next().map_or(Ok(UPLINK_MTU), |a| a.parse::<u32>());
    let (Ok(rounds), Ok(secs), Ok(mtu)) = (rounds, secs, mtu) else {
        eprintln!("usage: uplink [ROUNDS] [SECS] [MTU]   (default 5, 1 and 65520; MTU 0: podnet's default)");
        return ExitCode::from(2);
    };
    if rounds == 0 || !secs.is_finite() || secs <= 0.0 {
        eprintln!("uplink bench: ROUNDS and SECS must be > 0");
        return ExitCode::from(2);
    }
    let dir = std::env::temp_dir().join(format!("podnet-bench-uplink-{}", std::process::id()));
    let result = std::fs::create_dir(&dir)
        .map_err(Into::into)
        .and_then(|()| bench(&dir, rounds, secs, mtu));
    let _ = std::fs::remove_dir_all(&dir);
    exit(result)
}

fn exit(result: AnyResult<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uplink bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A client in another process: it prints `ready` once it can measure,
/// answers each line `tput PORT SECS` / `conn PORT SECS` with a line of
/// figures, and ends
/// when its stdin closes.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn spawn(cmd: &mut Command) -> AnyResult<Client> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut client = Client {
            child,
            stdin,
            stdout,
        };
        let line = client.line()?;
        if line != "ready" {
            client.end();
            return Err(format!("{cmd:?} did not start: {line:?}").into());
        }
        Ok(client)
    }

    fn line(&mut self) -> AnyResult<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }

    /// Ask for one trial's figures.
    fn ask(&mut self, what: &str, port: u16, secs: f64) -> AnyResult<Vec<f64>> {
        let stdin = self.stdin.as_mut().ok_or("client ended")?;
        writeln!(stdin, "{what} {port} {secs}")?;
        stdin.flush()?;
        let line = self.line()?;
        let figures: Result<Vec<f64>, _> = line.split_whitespace().map(str::parse).collect();
        match figures {
            Ok(f) if !f.is_empty() => Ok(f),
            _ => Err(format!("client answered {what} with {line:?}").into()),
        }
    }

    /// Close its stdin and wait up to 10 s for it to end; then kill it.
    fn end(mut self) {
        drop(self.stdin.take());
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

/// slirp4netns attached to a client's namespace; it exits when its
/// `--exit-fd` (this end's pipe to its shell's stdin) closes.
struct Slirp {
    child: Child,
}

impl Slirp {
    fn attach(pid: u32) -> AnyResult<Slirp> {
        // fd 3: the exit pipe (our stdin pipe), fd 4: the ready pipe (our
        // stdout pipe); without --disable-host-loopback, 10.0.2.2 is the
        // host's loopback.
        let script = format!(
            "exec slirp4netns --configure --mtu={UPLINK_MTU} --exit-fd=3 --ready-fd=4 \
             \"$1\" tap0 3<&0 4>&1 </dev/null >/dev/null"
        );
        let mut child = Command::new("sh")
            .args(["-c", &script, "sh", &pid.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut ready = [0u8; 1];
        let got = child
            .stdout
            .take()
            .ok_or("no stdout")?
            .read(&mut ready)
            .unwrap_or(0);
        let slirp = Slirp { child };
        if got == 0 {
            slirp.end();
            return Err("slirp4netns exited before it was ready".into());
        }
        Ok(slirp)
    }

    fn end(mut self) {
        drop(self.child.stdin.take());
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(dir: &Path, rounds: usize, secs: f64, mtu: u32) -> AnyResult<()> {
    let me = std::env::current_exe()?;
    let sink = serve((Ipv4Addr::LOCALHOST, 0), sink)?;
    // One acceptor per path: no path finds another's closed connections
    // in the way of its ports.
    let mut acceptors = Vec::new();
    for _ in Kind::ALL {
        acceptors.push(acceptor()?);
    }
    let mut clients: Vec<Client> = Vec::new();
    let mut slirp = None;
    let started = (|| -> AnyResult<()> {
        for kind in Kind::ALL {
            let mut cmd = if kind == Kind::Slirp {
                let mut c = Command::new("unshare");
                c.args(["--user", "--map-root-user", "--net"]).arg(&me);
                c
            } else {
                Command::new(&me)
            };
            cmd.args(["--client", kind.flag()]);
            if kind == Kind::Podnet {
                cmd.arg(dir.join("state")).arg(mtu.to_string());
            }
            let client = Client::spawn(&mut cmd)?;
            if kind == Kind::Slirp {
                // unshare exec'd the client: its PID is in the namespaces.
                slirp = Some(Slirp::attach(client.child.id())?);
            }
            clients.push(client);
        }
        Ok(())
    })();
    let result = started.and_then(|()| measure(&mut clients, sink, &acceptors, rounds, secs, mtu));
    for c in clients {
        c.end();
    }
    if let Some(s) = slirp {
        s.end();
    }
    result
}

/// Every path's figures, `rounds` times, printed with medians and ratios.
fn measure(
    clients: &mut [Client],
    sink: u16,
    acceptors: &[u16],
    rounds: usize,
    secs: f64,
    mtu: u32,
) -> AnyResult<()> {
    let n = clients.len();
    // Warm-up (its figures are not kept).
    for (c, acc) in clients.iter_mut().zip(acceptors) {
        c.ask("tput", sink, WARM_UP)?;
        c.ask("conn", *acc, WARM_UP)?;
    }
    let (mut tput, mut conns) = (vec![vec![]; n], vec![vec![]; n]);
    // Per trial, one connection's median and p95 time, µs.
    let (mut one_med, mut one_p95) = (vec![vec![]; n], vec![vec![]; n]);
    // Per path, retransmission timeouts and retransmitted segments summed
    // over its throughput trials.
    let mut losses = vec![(0.0, 0.0); n];
    // Per path, throughput trials whose sink counted less than was sent.
    let mut short = vec![0.0; n];
    let mtu = if mtu == 0 {
        "podnet's default".to_owned()
    } else {
        mtu.to_string()
    };
    println!(
        "uplink bench: {rounds} rounds; per round and path one {secs} s throughput trial \
         (128 KiB writes) and {secs} s of connect + close (SO_LINGER 0); network MTU {mtu}"
    );
    println!(
        "round  {}",
        header(|k| format!("{:>8} {:>7}", k.flag(), "conn/s"))
    );
    for r in 0..rounds {
        for j in 0..n {
            let i = (r + j) % n;
            let t = clients[i].ask("tput", sink, secs)?;
            tput[i].push(t[0]);
            losses[i].0 += t.get(1).ok_or("no timeouts")?;
            losses[i].1 += t.get(2).ok_or("no retransmits")?;
            short[i] += t.get(3).ok_or("no count check")?;
            let c = clients[i].ask("conn", acceptors[i], secs)?;
            conns[i].push(c[0]);
            one_med[i].push(*c.get(1).ok_or("no median")?);
            one_p95[i].push(*c.get(2).ok_or("no p95")?);
        }
        let cells: Vec<String> = (0..n)
            .map(|i| format!("{:>8.0} {:>7.0}", tput[i][r], conns[i][r]))
            .collect();
        println!("{r:5}  {}", cells.join("  "));
    }
    println!(
        "medians over rounds (one connection: connect + close, µs; RTOs and \
         retransmitted segments: the client's namespace's, summed over the \
         throughput trials; short: trials whose sink counted less than was sent):"
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "path", "MiB/s", "conn/s", "one med", "one p95", "RTOs", "retrans", "short"
    );
    for (i, kind) in Kind::ALL.iter().enumerate() {
        println!(
            "{:<30} {:>9.0} {:>9.0} {:>9.1} {:>9.1} {:>9} {:>9} {:>6}",
            kind.what(),
            median(&mut tput[i].clone()),
            median(&mut conns[i].clone()),
            median(&mut one_med[i]),
            median(&mut one_p95[i]),
            losses[i].0,
            losses[i].1,
            short[i],
        );
    }
    println!("ratios (medians of per-round ratios):");
    println!("{:<30} {:>9} {:>9}", "", "MiB/s", "conn/s");
    let at = |k: Kind| Kind::ALL.iter().position(|x| *x == k).unwrap_or(0);
    for (a, b) in [
        (Kind::Podnet, Kind::Pasta),
        (Kind::Podnet, Kind::Slirp),
        (Kind::Pasta, Kind::Slirp),
        (Kind::Podnet, Kind::Direct),
    ] {
        let ratio = |xs: &[Vec<f64>]| {
            let mut r: Vec<f64> = xs[at(a)]
                .iter()
                .zip(&xs[at(b)])
                .map(|(x, y)| x / y)
                .collect();
            median(&mut r)
        };
        println!(
            "{:<30} {:>9.3} {:>9.3}",
            format!("{} / {}", a.flag(), b.flag()),
            ratio(&tput),
            ratio(&conns)
        );
    }
    Ok(())
}

fn header(cell: impl Fn(Kind) -> String) -> String {
    Kind::ALL.map(cell).join("  ")
}

/// A client: set up its path (`KIND [STATE MTU]`), print `ready`,
/// answer requests from stdin until it closes.
fn client_side(args: &[String]) -> AnyResult<()> {
    let kind = Kind::ALL
        .into_iter()
        .find(|k| args.first().map(String::as_str) == Some(k.flag()))
        .ok_or("--client KIND")?;
    let server = kind.server();
    if matches!(kind, Kind::Podnet | Kind::Pasta) {
        // First thing: a user namespace refuses a multi-threaded process.
        Entry::private()
            .uplink(
                Pasta::new().args(PASTA_ARGS).args(
                    std::env::var("BENCH_PASTA_EXTRA")
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                ),
            )
            .enter()?;
    }
    if kind != Kind::Podnet {
        println!("ready");
        std::io::stdout().flush()?;
        for line in std::io::stdin().lines() {
            let figure = one(&line?, server)?;
            println!("{figure}");
            std::io::stdout().flush()?;
        }
        return Ok(());
    }
    let state = args.get(1).ok_or("--client podnet STATE MTU")?;
    let mtu: u32 = args.get(2).ok_or("--client podnet STATE MTU")?.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut b = podnet::Network::builder("pnupb0")
            .subnet("10.88.0.0/16".parse()?)
            .state_dir(state)
            .dns(false)
            .egress(true)
            .enable_forwarding(true);
        if mtu != 0 {
            b = b.mtu(mtu);
        }
        let net = b.build().await?;
        let served = async {
            let pod = net.sandbox("client").create().await?;
            let asked = async {
                // stdin on a thread of its own: the runtime stays free.
                let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
                std::thread::spawn(move || {
                    for line in std::io::stdin().lines() {
                        let Ok(line) = line else { return };
                        if tx.blocking_send(line).is_err() {
                            return;
                        }
                    }
                });
                println!("ready");
                std::io::stdout().flush()?;
                while let Some(line) = rx.recv().await {
                    let figure = pod
                        .run(move || one(&line, server).map_err(|e| e.to_string()))
                        .await??;
                    println!("{figure}");
                    std::io::stdout().flush()?;
                }
                Ok::<(), Box<dyn std::error::Error>>(())
            }
            .await;
            let removed = pod.remove().await;
            asked?;
            removed?;
            Ok::<(), Box<dyn std::error::Error>>(())
        }
        .await;
        let net_removed = net.remove().await;
        served?;
        net_removed?;
        Ok(())
    })
}

/// One request, `tput PORT SECS` or `conn PORT SECS`, measured from the
/// calling thread's namespace to `server`.
fn one(line: &str, server: IpAddr) -> AnyResult<String> {
    let mut words = line.split_whitespace();
    let (Some(what), Some(port), Some(secs)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("request {line:?}").into());
    };
    let at = SocketAddr::new(server, port.parse()?);
    let run = Duration::from_secs_f64(secs.parse()?);
    match what {
        "tput" => throughput(at, run),
        "conn" => conn_rate(at, run),
        _ => Err(format!("no request {line:?}").into()),
    }
}

/// Bind `addr` and serve each connection with `f` on a thread of its own;
/// its port.
fn serve(
    addr: impl std::net::ToSocketAddrs,
    f: fn(TcpStream) -> std::io::Result<()>,
) -> AnyResult<u16> {
    let l = TcpListener::bind(addr)?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || f(s));
        }
    });
    Ok(port)
}

/// A listener on the real loopback that accepts and drops, on the
/// accepting thread itself, with a backlog of 4096 (std's 128 overflows
/// when the thread is off the CPU a few ms, and a dropped SYN costs the
/// client 1 s); its port.
fn acceptor() -> AnyResult<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    // listen(2) again on a listening socket sets its backlog.
    nix::sys::socket::listen(&l, nix::sys::socket::Backlog::new(4096)?)?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || for _ in l.incoming() {});
    Ok(port)
}

/// MiB/s the sink at `at` counted of 128 KiB buffers written for `run`
/// (until it has answered), the retransmission timeouts and retransmitted
/// segments of the calling thread's namespace meanwhile, and 1 if the sink
/// counted fewer bytes than were written (the stream lost its tail, or
/// was reset: then MIBPS is 0), else 0: `MIBPS TIMEOUTS RETRANS SHORT`.
fn throughput(at: SocketAddr, run: Duration) -> AnyResult<String> {
    let before = tcp_losses()?;
    let chunk = vec![7u8; CHUNK];
    let t = Instant::now();
    let mut s = TcpStream::connect(at)?;
    let mut sent: u64 = 0;
    let counted = (|| -> std::io::Result<u64> {
        while t.elapsed() < run {
            s.write_all(&chunk)?;
            sent += CHUNK as u64;
        }
        s.shutdown(Shutdown::Write)?;
        let mut count = [0u8; 8];
        s.read_exact(&mut count)?;
        Ok(u64::from_le_bytes(count))
    })();
    let secs = t.elapsed().as_secs_f64();
    // A stream the path reset before the sink answered counted nothing
    // this trial can know of: 0 MiB/s, and a short trial.
    let got = match counted {
        Ok(got) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => return Err(e.into()),
    };
    if got == 0 && sent > 0 {
        let after = tcp_losses()?;
        return Ok(format!("0 {} {} 1", after.0 - before.0, after.1 - before.1));
    }
    if got > sent {
        return Err(format!("sink at {at} got {got} bytes of {sent} sent").into());
    }
    let after = tcp_losses()?;
    Ok(format!(
        "{} {} {} {}",
        got as f64 / (1024.0 * 1024.0) / secs,
        after.0 - before.0,
        after.1 - before.1,
        u8::from(got < sent)
    ))
}

/// (TcpExt TCPTimeouts, Tcp RetransSegs) of the calling thread's network
/// namespace.
fn tcp_losses() -> AnyResult<(u64, u64)> {
    let field = |file: &str, table: &str, name: &str| -> AnyResult<u64> {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))?;
        let mut rows = text.lines().filter(|l| l.starts_with(table));
        let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
            return Err(format!("no {table} in {file}").into());
        };
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .ok_or(format!("no {name} in {file}"))?;
        Ok(values
            .split_whitespace()
            .nth(i)
            .ok_or("short row")?
            .parse()?)
    };
    Ok((
        field("netstat", "TcpExt:", "TCPTimeouts")?,
        field("snmp", "Tcp:", "RetransSegs")?,
    ))
}

/// Connections per second, connect and close (SO_LINGER 0, so the
/// client's side keeps no TIME_WAIT) one after the other for `run`, and
/// one connection's median and p95 time in µs: `RATE MEDIAN P95`.
fn conn_rate(at: SocketAddr, run: Duration) -> AnyResult<String> {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut each = Vec::new();
    let t = Instant::now();
    while t.elapsed() < run {
        let c = Instant::now();
        let s = TcpStream::connect(at)?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)?;
        drop(s);
        each.push(c.elapsed());
    }
    let rate = each.len() as f64 / t.elapsed().as_secs_f64();
    let (_, med, p95) = common::stats(&each, 1e6).ok_or("no connection")?;
    Ok(format!("{rate} {med} {p95}"))
}

fn median(xs: &mut [f64]) -> f64 {
    common::median(xs).unwrap_or(f64::NAN)
}
