//! Pod DNS beside aardvark-dns (netavark's DNS server, Debian
//! `aardvark-dns`), measured with `dnsperf` (Debian `dnsperf`) from inside a
//! pod: queries per second and latency for the pods' names, and what
//! forwarding other names to an upstream adds to the upstream's own
//! latency. Every figure is a median over rounds in which the sides
//! alternate, beside a baseline of the same round.
//!
//! ```text
//! apt-get install aardvark-dns dnsperf
//! cargo bench --bench dns                 # needs [[bench]] name = "dns", harness = false
//! cargo bench --bench dns -- 9 5 50       # ROUNDS (default 5), SECS per throughput run (5), PODS (50)
//! ```
//!
//! It calls `podnet::rootless::enter_private()` first, so it runs in a user
//! and network namespace of its own (as root too): every packet stays in
//! that namespace and the sandboxes' ones it makes, and all of it ends with
//! the process. It removes what it made before that: aardvark-dns (killed by
//! its PID, from the pid file it writes), the sandboxes, the network, the
//! fake upstream's address and the temporary directory. It finds
//! aardvark-dns at `$AARDVARK_DNS`, `/usr/lib/podman/aardvark-dns` or
//! `/usr/libexec/podman/aardvark-dns`, and dnsperf at `$DNSPERF` or on `$PATH`.
//!
//! The set-up: one dual-stack network (`10.88.0.0/16`, `fd00:88::/64`) with
//! PODS sandboxes `p0`, `p1`, ... and one more, `client`, where dnsperf runs.
//! podnet answers on the gateway `10.88.0.1` port 53; aardvark-dns, given
//! the same names in its config (`pN` and `pN.podnet.internal` as aliases of
//! each sandbox's addresses, so both hit its name table directly, its
//! fastest path), listens on the same address, port 5353. Both run all the
//! time, and only one is queried at a time, so both are reached the same
//! way (client pod -> veth -> bridge -> gateway address) by the same client
//! with the same queries; nothing is started or stopped between runs. The
//! fake upstream is a thread of this process answering every query with
//! one A record (TTL 0) on `198.18.0.53:53` (on `lo` of the bench's
//! namespace): podnet forwards to it (`DnsUpstream::Servers`), and so does
//! aardvark-dns (the network's DNS server in its config; it always uses
//! port 53).
//!
//! What is measured, per round (each round runs every row once; the order
//! of the sides flips or rotates from round to round):
//!
//! - **throughput**: `dnsperf -l SECS` (100 queries outstanding, its
//!   default) with a file of the pods' names (per pod: `pN A`,
//!   `pN.podnet.internal A` and `pN AAAA`), to podnet, to aardvark-dns, and
//!   to the fake upstream: the fake does almost nothing per query, so its
//!   rate is the ceiling of this client on this path;
//! - **latency**: `dnsperf -q 1 -v` (one query outstanding, so no
//!   queueing; each answer's latency printed, in µs) for SECS/2 s, same
//!   file; p50 and p99 of the round's samples;
//! - **throughput, batched client**: the same file from the bench's own
//!   client (`burst_client`: a thread of this process run inside the
//!   client sandbox by `Sandbox::run`, pinned to dnsperf's CPU) for SECS
//!   s, to podnet, to aardvark-dns and to a batched fake upstream (the
//!   same answers, on `198.18.0.53:5300`, taken and sent with
//!   `recvmmsg`/`sendmmsg`). It keeps `BURST_WINDOW` (200) queries
//!   outstanding, sends new ones with `sendmmsg` as answers come (up to
//!   64 a call) and takes answers with `recvmmsg`, so it pays its system
//!   calls per batch: dnsperf on one CPU cannot send twice aardvark-dns's
//!   rate, so its qps ratio is a floor. It counts only well-formed
//!   NOERROR answers with an outstanding ID and the question asked; a
//!   query unanswered after 250 ms is lost. 200 outstanding stay below
//!   what a server socket's default receive buffer (212,992 bytes) holds
//!   when they all come at once;
//! - **forwarded names**: the same latency run with names that are in no
//!   network (`fN.fwd.example A`, 100,000 distinct ones, answered with
//!   TTL 0, so no cache can answer them), directly to the fake upstream,
//!   through podnet and through aardvark-dns; "added" is the round's p50
//!   (p99) through a server minus the round's p50 (p99) direct; and their
//!   throughput through podnet and aardvark-dns at 50 outstanding (podnet
//!   forwards at most 64 queries of one source at once and answers SERVFAIL
//!   beyond that, which dnsperf's default 100 would measure).
//!
//! What bounds each side: with two CPUs or more, this process (podnet's
//! server, its tokio runtime, the fake upstream) and aardvark-dns (which
//! inherits the affinity, so its runtime has one worker) are pinned to the
//! last CPU this process may use, and dnsperf (`taskset`) to the first, so
//! the servers compete for one CPU and never with the client. A server at
//! 100% of its CPU (column `cpu%`) is bound by itself. One below that is
//! bound by the client (dnsperf's send and receive threads on one CPU) and
//! the path: its qps then nears the fake's, and a qps ratio to aardvark-dns
//! is a floor. So each throughput run also takes the server's CPU time
//! (its threads' `/proc/PID/task/*/schedstat`; for podnet, this process's
//! threads but the fake's, which are idle but for it), and `q/cpu-s` is
//! the queries answered per second of it: what the server would answer
//! with a CPU of its own and a client that keeps up. Latencies at one
//! query outstanding are the path's round trip (two veth crossings, two
//! wake-ups) plus the server's time per query; dnsperf prints them to 1 µs.
//! Only UDP is measured: aardvark-dns 1.4 serves no TCP. PTR is not in the
//! mix: aardvark-dns 1.4 answers a PTR and then forwards it as well.
//!
//! The bench's own client's threads and the batched fake's are not
//! counted as podnet's CPU time (they are named `burst-client` and
//! `fake-batched`).
//!
//! It prints one line per round and a table of medians with the ratios
//! podnet/aardvark-dns, and appends one JSON line to
//! `benches/results/dns-<date>.jsonl`. Nothing is asserted. If podnet does
//! not answer (a build without its DNS server), the other rows are still
//! measured and printed, nothing is recorded, and it exits 1.

mod common;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use podnet::{DnsUpstream, Network, Sandbox};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

const BRIDGE: &str = "pndnsbench0";
const DOMAIN: &str = podnet::DEFAULT_DOMAIN;
const PODNET_PORT: u16 = 53;
const AARDVARK_PORT: u16 = 5353;
/// The fake upstream, on `lo` of the bench's namespace.
const FAKE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);
/// The address it answers every query with.
const FAKE_ANSWER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The fake upstream's thread (its name, as /proc shows it).
const FAKE_THREAD: &str = "fake-upstream";
/// The batched fake (`Fake::start_batched`): its port on `FAKE_IP`, its
/// thread.
const FAKE_BATCHED_PORT: u16 = 5300;
const FAKE_BATCHED_THREAD: &str = "fake-batched";
/// Queries outstanding in the forwarded names' throughput runs.
const FORWARDED_OUTSTANDING: u32 = 50;
/// Distinct names in the forwarded-names file.
const FORWARDED_NAMES: usize = 100_000;
/// The bench's own batched client: queries outstanding, datagrams per
/// sendmmsg/recvmmsg, how long a query waits for its answer before it is
/// lost, and its thread's name (so its CPU time is not podnet's).
const BURST_WINDOW: usize = 200;
const BURST: usize = 64;
const BURST_TIMEOUT: Duration = Duration::from_millis(250);
const BURST_THREAD: &str = "burst-client";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let parse = |a: Option<String>, default: u64| match a.map(|a| a.parse::<u64>()) {
        None => Some(default),
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => None,
    };
    let (Some(rounds), Some(secs), Some(pods)) = (
        parse(args.next(), 5),
        parse(args.next(), 5),
        parse(args.next(), 50),
    ) else {
        eprintln!(
            "usage: dns [ROUNDS [SECS [PODS]]]   (all > 0; default 5 rounds, 5 s per throughput \
             run, 50 pods)"
        );
        return ExitCode::from(2);
    };
    let cfg = Config {
        rounds: usize::try_from(rounds).unwrap_or(usize::MAX),
        secs,
        pods: usize::try_from(pods).unwrap_or(usize::MAX),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpus: pin(),
    };
    // Before any thread exists: unshare(CLONE_NEWUSER) refuses a
    // multi-threaded process.
    if let Err(e) = podnet::rootless::enter_private() {
        eprintln!("dns bench: {e}");
        return ExitCode::FAILURE;
    }
    let tmp = std::env::temp_dir().join(format!("podnet-bench-dns-{}", std::process::id()));
    let result = std::fs::create_dir(&tmp)
        .map_err(Into::into)
        .and_then(|()| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Into::into)
        })
        .and_then(|rt| rt.block_on(bench(&cfg, &tmp)));
    let _ = std::fs::remove_dir_all(&tmp);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dns bench: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Config {
    rounds: usize,
    secs: u64,
    pods: usize,
    /// (the client's CPU, the servers' CPU) if pinned.
    cpus: Option<(usize, usize)>,
    /// The CPUs this process could use before pinning.
    nproc: usize,
}

/// Pin this thread (and so every thread and process it makes) to the last
/// CPU it may use, and return (first, last) for dnsperf and the servers;
/// None (nothing pinned) with fewer than two CPUs.
fn pin() -> Option<(usize, usize)> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    let (&first, &last) = (cpus.first()?, cpus.last()?);
    if first == last {
        return None;
    }
    let mut one = CpuSet::new();
    one.set(last).ok()?;
    sched_setaffinity(Pid::from_raw(0), &one).ok()?;
    Some((first, last))
}

/// The external programs and their versions.
struct Tools {
    dnsperf: PathBuf,
    dnsperf_version: String,
    aardvark: PathBuf,
    aardvark_version: String,
}

fn find_tools() -> AnyResult<Tools> {
    let missing = "(Debian: apt-get install aardvark-dns dnsperf)";
    let dnsperf = match std::env::var_os("DNSPERF") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("dnsperf"))
            .find(|p| p.is_file())
            .ok_or(format!("no dnsperf on $PATH {missing}"))?,
    };
    let aardvark = match std::env::var_os("AARDVARK_DNS") {
        Some(p) => PathBuf::from(p),
        None => [
            "/usr/lib/podman/aardvark-dns",
            "/usr/libexec/podman/aardvark-dns",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(format!(
            "no aardvark-dns in /usr/lib/podman or /usr/libexec/podman {missing}"
        ))?,
    };
    // dnsperf -h prints "Version 2.10.0" (and exits 1); aardvark-dns
    // --version prints "aardvark-dns 1.4.0".
    let out = std::process::Command::new(&dnsperf).arg("-h").output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let dnsperf_version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let out = std::process::Command::new(&aardvark)
        .arg("--version")
        .output()?;
    let aardvark_version = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_owned();
    Ok(Tools {
        dnsperf,
        dnsperf_version,
        aardvark,
        aardvark_version,
    })
}

/// Run `ip ARGS` in this process's namespaces.
fn ip(args: &[&str]) -> AnyResult<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into())
    }
}

// ---- the fake upstream ----

/// A UDP DNS server on a thread: every query gets one A record,
/// `FAKE_ANSWER`, TTL 0. Stops when the flag is set (within 100 ms).
struct Fake {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fake {
    fn start(addr: SocketAddr) -> AnyResult<Fake> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(FAKE_THREAD.into())
            .spawn(move || {
                let mut buf = [0u8; 1500];
                while !flag.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(len) = fake_answer(&mut buf, n) {
                        let _ = sock.send_to(&buf[..len], from);
                    }
                }
            })?;
        Ok(Fake {
            stop,
            thread: Some(thread),
        })
    }

    /// The same answers, taken with `recvmmsg` and sent with `sendmmsg`
    /// up to `BURST` at a time: the ceiling of the batched client (one
    /// query at a time, the fake is bound by its own system calls first).
    fn start_batched(addr: SocketAddr) -> AnyResult<Fake> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
        use std::io::{IoSlice, IoSliceMut};
        use std::os::fd::{AsFd, AsRawFd};
        let sock = UdpSocket::bind(addr)?;
        sock.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(FAKE_BATCHED_THREAD.into())
            .spawn(move || {
                let fd = sock.as_raw_fd();
                let mut bufs = vec![0u8; BURST * 1500];
                let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BURST, None);
                // Never iterated: nix's results of sendmmsg read address
                // slots it never wrote. A reply that does not go is lost.
                let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(BURST, None);
                let mut lens = [0usize; BURST];
                let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BURST);
                while !flag.load(Ordering::Relaxed) {
                    to.clear();
                    {
                        let mut slots = bufs.chunks_mut(1500);
                        let mut iovs: [[IoSliceMut<'_>; 1]; BURST] = std::array::from_fn(|_| {
                            [IoSliceMut::new(slots.next().unwrap_or_default())]
                        });
                        let Ok(msgs) =
                            recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                        else {
                            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
                            let _ = poll(&mut fds, PollTimeout::from(100u8));
                            continue;
                        };
                        for (m, len) in msgs.zip(lens.iter_mut()) {
                            *len = m.bytes;
                            to.push(m.address);
                        }
                    }
                    let mut k = 0;
                    for i in 0..to.len() {
                        let at = i * 1500;
                        if let Some(len) = fake_answer(&mut bufs[at..at + 1500], lens[i]) {
                            lens[k] = len;
                            to[k] = to[i];
                            bufs.copy_within(at..at + len, k * 1500);
                            k += 1;
                        }
                    }
                    let iovs: [[IoSlice<'_>; 1]; BURST] = std::array::from_fn(|i| {
                        let len = if i < k { lens[i] } else { 0 };
                        [IoSlice::new(&bufs[i * 1500..i * 1500 + len])]
                    });
                    let _ = sendmmsg(
                        fd,
                        &mut tx,
                        iovs[..k].iter(),
                        &to[..k],
                        [],
                        MsgFlags::empty(),
                    );
                }
            })?;
        Ok(Fake {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Turn the query in `buf[..n]` into its answer in place: the header and
/// the question kept (any EDNS record dropped), one A record appended.
/// None for what is not a one-question query.
fn fake_answer(buf: &mut [u8], n: usize) -> Option<usize> {
    if n < 12 || buf[2] & 0x80 != 0 || buf[4..6] != [0, 1] {
        return None;
    }
    let end = question_end(&buf[..n], 12)?;
    buf[2] = 0x80 | (buf[2] & 0x79); // QR; opcode and RD kept; AA, TC clear
    buf[3] = 0x80; // RA, NOERROR
    buf[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]); // one answer
    let rr = [
        0xc0, 0x0c, // the question's name
        0, 1, 0, 1, // A, IN
        0, 0, 0, 0, // TTL 0
        0, 4,
    ];
    let len = end + rr.len() + 4;
    if len > buf.len() {
        return None;
    }
    buf[end..end + rr.len()].copy_from_slice(&rr);
    buf[end + rr.len()..len].copy_from_slice(&FAKE_ANSWER.octets());
    Some(len)
}

/// Where the question that starts at `at` ends (after its type and class).
fn question_end(msg: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    (i + 4 <= msg.len()).then_some(i + 4)
}

// ---- the probe: one query, its answer checked ----

fn build_query(id: u16, name: &str, qtype: u16) -> AnyResult<Vec<u8>> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len())?);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    Ok(q)
}

/// The addresses in the answer section of `msg` (a reply to `id`), or why not.
fn answer_addrs(msg: &[u8], id: u16) -> Result<Vec<IpAddr>, String> {
    if msg.len() < 12 || msg[0..2] != id.to_be_bytes() || msg[2] & 0x80 == 0 {
        return Err("not a reply to the query".into());
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("rcode {rcode}"));
    }
    let short = || "a short reply".to_string();
    let mut i = question_end(msg, 12).ok_or_else(short)?;
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        // The owner name: labels up to a zero or a pointer.
        loop {
            let b = *msg.get(i).ok_or_else(short)?;
            if b == 0 {
                i += 1;
                break;
            }
            if b & 0xc0 == 0xc0 {
                i += 2;
                break;
            }
            i += 1 + usize::from(b);
        }
        let fixed = msg.get(i..i + 10).ok_or_else(short)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata = msg.get(i + 10..i + 10 + rdlen).ok_or_else(short)?;
        match (
            rtype,
            <[u8; 4]>::try_from(rdata),
            <[u8; 16]>::try_from(rdata),
        ) {
            (1, Ok(a), _) => addrs.push(IpAddr::from(a)),
            (28, _, Ok(a)) => addrs.push(IpAddr::from(a)),
            _ => {}
        }
        i += 10 + rdlen;
    }
    Ok(addrs)
}

/// Ask `server` for `name` (`qtype` 1 or 28) until it answers with `want`
/// among the addresses (up to 3 s), from the calling thread's namespace.
fn probe(server: SocketAddr, name: &str, qtype: u16, want: IpAddr) -> Result<(), String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut last = String::from("no answer");
    let t = Instant::now();
    let mut id: u16 = 0x5000;
    while t.elapsed() < Duration::from_secs(3) {
        id = id.wrapping_add(1);
        let q = build_query(id, name, qtype).map_err(|e| e.to_string())?;
        if let Err(e) = sock.send_to(&q, server) {
            last = e.to_string();
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break;
            };
            match answer_addrs(&buf[..n], id) {
                Ok(addrs) if addrs.contains(&want) => return Ok(()),
                Ok(addrs) => last = format!("answered {addrs:?}"),
                Err(e) if e == "not a reply to the query" => continue,
                Err(e) => last = e,
            }
            break;
        }
    }
    Err(format!(
        "{server} does not answer {name} {} with {want}: {last}",
        if qtype == 28 { "AAAA" } else { "A" }
    ))
}

// ---- dnsperf runs ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// dnsperf's default: 100 queries outstanding.
    Throughput,
    /// One query outstanding, every latency printed.
    Latency,
    /// The bench's own client (`burst_client`): `BURST_WINDOW`
    /// outstanding, sent and received in batches.
    Burst,
}

/// What one run gave.
#[derive(Clone, Debug, Default)]
struct Run {
    qps: f64,
    /// Lost queries, percent.
    lost: f64,
    /// Answers other than NOERROR, and lost queries (latency runs).
    bad: u64,
    /// Latency runs: p50 and p99 (µs) and the sample count.
    p50: f64,
    p99: f64,
    samples: usize,
    /// Queries answered, and the CPU time the server's threads took
    /// meanwhile (s).
    completed: f64,
    cpu: f64,
    /// The run's length (dnsperf -l), s.
    secs: f64,
}

impl Run {
    /// The server's CPU time over the run's length, percent.
    fn busy(&self) -> f64 {
        100.0 * self.cpu / self.secs
    }

    /// Queries answered per second of the server's CPU time: what it would
    /// answer with a CPU of its own and a client that keeps up.
    fn per_cpu(&self) -> f64 {
        if self.cpu > 0.0 {
            self.completed / self.cpu
        } else {
            f64::NAN
        }
    }
}

/// Whose threads are the server's, for its CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    /// This process but the fake upstream's thread (podnet's server is
    /// part of this process; its other threads are idle during a run).
    Podnet,
    /// The fake upstream's thread.
    Fake,
    /// The batched fake's thread.
    FakeBatched,
    /// aardvark-dns's threads.
    Aardvark,
}

/// CPU time (s) so far of the server `cpu` names (`me`: this process).
fn server_cpu(cpu: Cpu, me: u32, aardvark_pid: u32) -> f64 {
    match cpu {
        Cpu::Podnet => cpu_secs(me, |c| {
            c != FAKE_THREAD && c != FAKE_BATCHED_THREAD && c != BURST_THREAD
        }),
        Cpu::Fake => cpu_secs(me, |c| c == FAKE_THREAD),
        Cpu::FakeBatched => cpu_secs(me, |c| c == FAKE_BATCHED_THREAD),
        Cpu::Aardvark => cpu_secs(aardvark_pid, |_| true),
    }
}

/// CPU time (s) so far of `pid`'s threads whose name `keep` accepts, from
/// `/proc/PID/task/*/schedstat` (nanoseconds on a CPU).
fn cpu_secs(pid: u32, keep: impl Fn(&str) -> bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !keep(comm.trim()) {
            continue;
        }
        ns += std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
    }
    Duration::from_nanos(ns).as_secs_f64()
}

/// One row of the table: a server and a query file.
struct Row {
    what: String,
    server: SocketAddr,
    queries: PathBuf,
    mode: Mode,
    /// Queries outstanding (dnsperf -q).
    outstanding: u32,
    cpu: Cpu,
    runs: Vec<Run>,
}

/// Run dnsperf in `client` against `row`'s server for `secs` seconds.
async fn dnsperf(
    client: &Sandbox,
    tools: &Tools,
    cfg: &Config,
    row: &Row,
    secs: u64,
    out: &Path,
    aardvark_pid: u32,
) -> AnyResult<Run> {
    let mut args: Vec<String> = Vec::new();
    let program = match cfg.cpus {
        Some((cpu, _)) => {
            args.extend(["-c".into(), cpu.to_string()]);
            args.push(tools.dnsperf.to_string_lossy().into_owned());
            PathBuf::from("taskset")
        }
        None => tools.dnsperf.clone(),
    };
    args.extend(
        [
            "-s",
            &row.server.ip().to_string(),
            "-p",
            &row.server.port().to_string(),
            "-d",
            &row.queries.to_string_lossy(),
            "-l",
            &secs.to_string(),
            "-t",
            "2",
        ]
        .map(String::from),
    );
    args.extend(["-q".into(), row.outstanding.to_string()]);
    if row.mode == Mode::Latency {
        args.push("-v".into());
    }
    // Everything to a file, read afterwards: no pipe for this process to
    // drain (on the servers' CPU) while the run goes on.
    let file = std::fs::File::create(out)?;
    let me = std::process::id();
    let cpu = || server_cpu(row.cpu, me, aardvark_pid);
    let child = client
        .command(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()?; // not output(), which would pipe stdout
    let cpu0 = cpu();
    let done = child.wait_with_output().await?;
    let used = cpu() - cpu0;
    let text = std::fs::read_to_string(out)?;
    if !done.status.success() {
        return Err(format!(
            "dnsperf {} exited with {}: {}{}",
            args.join(" "),
            done.status,
            text.lines().rev().take(5).collect::<Vec<_>>().join(" / "),
            String::from_utf8_lossy(&done.stderr).trim()
        )
        .into());
    }
    if let Some(codes) = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Response codes:") && (l.contains(", ") || !l.contains("NOERROR")))
    {
        eprintln!("dns bench: {} ({:?}): {codes}", row.what, row.mode);
    }
    let parsed = parse_dnsperf(&text, row.mode).map(|r| Run {
        cpu: used,
        secs: secs as f64,
        ..r
    });
    parsed.map_err(|e| {
        format!(
            "dnsperf {}: {e}; it printed: {}",
            args.join(" "),
            text.lines().rev().take(8).collect::<Vec<_>>().join(" / ")
        )
        .into()
    })
}

/// Run the bench's batched client in `client` against `row`'s server for
/// `secs` seconds, on the client's CPU.
async fn burst(
    client: &Sandbox,
    cfg: &Config,
    row: &Row,
    secs: u64,
    queries: &Arc<Vec<Vec<u8>>>,
    aardvark_pid: u32,
) -> AnyResult<Run> {
    let me = std::process::id();
    let cpu = || server_cpu(row.cpu, me, aardvark_pid);
    let (server, queries, pin) = (row.server, queries.clone(), cfg.cpus.map(|(c, _)| c));
    let cpu0 = cpu();
    let got = client
        .run(move || burst_client(server, &queries, Duration::from_secs(secs), pin))
        .await?;
    let used = cpu() - cpu0;
    let b = got.map_err(|e| format!("{}: burst client: {e}", row.what))?;
    let sent = b.answered + b.bad + b.lost;
    Ok(Run {
        qps: b.answered as f64 / b.secs,
        lost: if sent > 0 {
            100.0 * b.lost as f64 / sent as f64
        } else {
            0.0
        },
        bad: b.bad,
        completed: b.answered as f64,
        cpu: used,
        secs: b.secs,
        ..Run::default()
    })
}

/// What a run of `burst_client` counted.
struct BurstRun {
    /// Well-formed NOERROR answers to an outstanding query of ours.
    answered: u64,
    /// Answers to one of ours that are not that (another code, a broken
    /// packet, another question).
    bad: u64,
    /// Queries with no answer within `BURST_TIMEOUT`.
    lost: u64,
    /// How long it ran, s.
    secs: f64,
}

/// A client that keeps `BURST_WINDOW` queries outstanding to `server`
/// for `length`, cycling through `queries` (each with ID 0): as answers
/// come, as many new queries go, up to `BURST` per `sendmmsg`; answers
/// are taken up to `BURST` per `recvmmsg`. Pinned to CPU `pin`. So it
/// pays two system calls per batch, not per query, and can keep up with
/// a server faster than dnsperf on one CPU can.
fn burst_client(
    server: SocketAddr,
    queries: &[Vec<u8>],
    length: Duration,
    pin: Option<usize>,
) -> Result<BurstRun, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::collections::VecDeque;
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::{AsFd, AsRawFd};
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let _ = nix::sys::prctl::set_name(c"burst-client");
    if let Some(cpu) = pin {
        use nix::sched::{sched_setaffinity, CpuSet};
        let mut set = CpuSet::new();
        set.set(cpu).map_err(|e| err("cpu set", &e))?;
        sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(|e| err("sched_setaffinity", &e))?;
    }
    if queries.is_empty() {
        return Err("no queries".into());
    }
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(any).map_err(|e| err("bind", &e))?;
    sock.connect(server).map_err(|e| err("connect", &e))?;
    sock.set_nonblocking(true)
        .map_err(|e| err("set_nonblocking", &e))?;
    // Room for a window of answers that come at once (the kernel caps it
    // at twice net.core.rmem_max).
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(4 << 20))
        .map_err(|e| err("SO_RCVBUF", &e))?;
    let fd = sock.as_raw_fd();

    // By ID: the outstanding query's index in `queries` and send number.
    let mut pending: Vec<Option<(usize, u64)>> = vec![None; 1 << 16];
    // IDs not in use, reused oldest first, so a late answer to a query
    // given up on finds its ID free (it is then not counted).
    let mut free: VecDeque<u16> = (0..=u16::MAX).collect();
    // (ID, send number, when), in send order: for the time-outs.
    let mut order: VecDeque<(u16, u64, Instant)> = VecDeque::with_capacity(BURST_WINDOW * 2);
    let mut out: Vec<Vec<u8>> = (0..BURST).map(|_| Vec::with_capacity(512)).collect();
    let mut tx = MultiHeaders::<()>::preallocate(BURST, None);
    let no_addrs = [None::<()>; BURST];
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BURST, None);
    let mut inbuf = vec![0u8; BURST * 1500];
    let mut lens = [0usize; BURST];
    let (mut next, mut seq, mut outstanding) = (0usize, 0u64, 0usize);
    let mut run = BurstRun {
        answered: 0,
        bad: 0,
        lost: 0,
        secs: 0.0,
    };
    let start = Instant::now();
    let deadline = start + length;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Give up on what waited too long.
        while let Some(&(id, s, at)) = order.front() {
            if pending[usize::from(id)].is_some_and(|(_, p)| p == s) {
                if now.duration_since(at) < BURST_TIMEOUT {
                    break;
                }
                pending[usize::from(id)] = None;
                free.push_back(id);
                outstanding -= 1;
                run.lost += 1;
            }
            order.pop_front();
        }
        // Fill the window.
        while outstanding < BURST_WINDOW {
            let k = (BURST_WINDOW - outstanding).min(BURST);
            let mut ids = [0u16; BURST];
            for (slot, id_out) in out.iter_mut().zip(ids.iter_mut()).take(k) {
                let id = free.pop_front().ok_or("out of IDs")?;
                slot.clear();
                slot.extend_from_slice(&queries[next]);
                slot[..2].copy_from_slice(&id.to_be_bytes());
                pending[usize::from(id)] = Some((next, seq));
                order.push_back((id, seq, now));
                *id_out = id;
                next = (next + 1) % queries.len();
                seq += 1;
            }
            let iovs: [[IoSlice<'_>; 1]; BURST] =
                std::array::from_fn(|i| [IoSlice::new(out.get(i).map_or(&[][..], |b| b))]);
            let sent = match sendmmsg(
                fd,
                &mut tx,
                iovs[..k].iter(),
                &no_addrs[..k],
                [],
                MsgFlags::empty(),
            ) {
                Ok(r) => r.count(),
                Err(nix::errno::Errno::EAGAIN) => 0,
                Err(e) => return Err(err("sendmmsg", &e)),
            };
            // Take back what did not go.
            for &id in ids[sent..k].iter().rev() {
                pending[usize::from(id)] = None;
                free.push_front(id);
                order.pop_back();
                seq -= 1;
                next = (next + queries.len() - 1) % queries.len();
            }
            outstanding += sent;
            if sent < k {
                break;
            }
        }
        // Take the answers that came; wait a little if none did.
        let n = {
            let mut slots = inbuf.chunks_mut(1500);
            let mut iovs: [[IoSliceMut<'_>; 1]; BURST] =
                std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
            match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
                Ok(msgs) => {
                    let mut n = 0;
                    for (m, len) in msgs.zip(lens.iter_mut()) {
                        *len = if m.flags.contains(MsgFlags::MSG_TRUNC) {
                            0
                        } else {
                            m.bytes
                        };
                        n += 1;
                    }
                    n
                }
                Err(nix::errno::Errno::EAGAIN) => 0,
                Err(e) => return Err(err("recvmmsg", &e)),
            }
        };
        if n == 0 {
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(5u8));
            continue;
        }
        for (i, &len) in lens.iter().enumerate().take(n) {
            let msg = &inbuf[i * 1500..i * 1500 + len];
            if msg.len() < 12 {
                continue;
            }
            let id = u16::from_be_bytes([msg[0], msg[1]]);
            let Some((q, _)) = pending[usize::from(id)].take() else {
                continue; // not outstanding: late, or not ours
            };
            free.push_back(id);
            outstanding -= 1;
            if well_formed(msg, &queries[q], id) {
                run.answered += 1;
            } else {
                run.bad += 1;
            }
        }
    }
    run.secs = start.elapsed().as_secs_f64();
    Ok(run)
}

/// Whether `msg` is a NOERROR answer to `query` sent with ID `id`: a
/// response, opcode QUERY, the same question, and answer records that
/// parse.
fn well_formed(msg: &[u8], query: &[u8], id: u16) -> bool {
    let (Some(end), Some(qend)) = (question_end(msg, 12), question_end(query, 12)) else {
        return false;
    };
    msg[2] & 0x78 == 0
        && msg[4..6] == [0, 1]
        && msg[12..end] == query[12..qend]
        && answer_addrs(msg, id).is_ok()
}

/// dnsperf's statistics, and in latency runs its per-query lines
/// (`> NOERROR p0 A 0.000035`, latency in seconds; `> T ...` a time-out).
fn parse_dnsperf(text: &str, mode: Mode) -> AnyResult<Run> {
    let field = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| {
                v.trim_matches(|c| c == '(' || c == '%' || c == ')')
                    .parse()
                    .ok()
            })
    };
    let qps =
        field("Queries per second:").ok_or("no \"Queries per second\" in dnsperf's output")?;
    let lost = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| {
            v.trim_matches(|c| c == '(' || c == '%' || c == ')')
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let completed = field("Queries completed:").unwrap_or(f64::NAN);
    let mut run = Run {
        qps,
        lost,
        completed,
        ..Run::default()
    };
    // "Response codes:       NOERROR 109728 (100.00%), NXDOMAIN 3 (0.00%)"
    if let Some(codes) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
    {
        let words: Vec<&str> = codes.split_whitespace().collect();
        for pair in words.chunks(3) {
            if let [code, count, ..] = pair {
                if *code != "NOERROR" {
                    run.bad += count.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    if mode == Mode::Latency {
        let mut lat: Vec<Duration> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("> ") else {
                continue;
            };
            let w: Vec<&str> = rest.split_whitespace().collect();
            match (w.first(), w.last().and_then(|s| s.parse::<f64>().ok())) {
                (Some(&"NOERROR"), Some(s)) => lat.push(Duration::from_secs_f64(s)),
                _ => run.bad += 1,
            }
        }
        let (n, p50, _) = common::stats(&lat, 1e6).ok_or("no latencies in dnsperf -v's output")?;
        run.samples = n;
        run.p50 = p50;
        run.p99 = nearest_rank(&lat, 99) * 1e6;
    }
    Ok(run)
}

/// The p-th percentile of `xs` in seconds, by nearest rank.
fn nearest_rank(xs: &[Duration], p: usize) -> f64 {
    let mut v: Vec<f64> = xs.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    let rank = (v.len() * p).div_ceil(100).max(1);
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn median(xs: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.into_iter().collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

// ---- aardvark-dns ----

/// A running aardvark-dns. `run` forks, and the parent exits once the
/// child serves; this process is a child subreaper while the parent runs,
/// so the child becomes its child, known by the pid file it writes, and is
/// killed and reaped here.
struct Aardvark {
    pid: Option<nix::unistd::Pid>,
}

impl Aardvark {
    async fn start(tools: &Tools, dir: &Path) -> AnyResult<Aardvark> {
        use nix::sys::prctl::set_child_subreaper;
        let dir_arg = dir.to_string_lossy().into_owned();
        let port = AARDVARK_PORT.to_string();
        // Nothing else of this process starts or ends processes meanwhile.
        set_child_subreaper(true)?;
        let out = tokio::process::Command::new(&tools.aardvark)
            .args(["-c", &dir_arg, "-p", &port, "run"])
            .stdin(Stdio::null())
            .output()
            .await;
        set_child_subreaper(false)?;
        let out = out?;
        let pid = std::fs::read_to_string(dir.join("aardvark.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .map(nix::unistd::Pid::from_raw);
        let me = Aardvark { pid };
        if !out.status.success() || me.pid.is_none() {
            return Err(format!(
                "aardvark-dns -c {dir_arg} -p {port} run: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(me)
    }

    /// SIGTERM, SIGKILL after 5 s; returns once it is reaped.
    async fn stop(&mut self) -> AnyResult<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let Some(pid) = self.pid else {
            return Ok(());
        };
        kill(pid, Signal::SIGTERM)?;
        let t = Instant::now();
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(_) | Err(nix::errno::Errno::ECHILD) => break,
                Err(e) => return Err(e.into()),
            }
            if t.elapsed() > Duration::from_secs(5) {
                let _ = kill(pid, Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.pid = None;
        Ok(())
    }
}

impl Drop for Aardvark {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

/// aardvark-dns's config for `net`'s sandboxes: a file named after the
/// network, whose first line is the listen address and the network's DNS
/// server, then `id ipv4 ipv6 name,alias` per sandbox.
fn aardvark_config(dir: &Path, gateway: IpAddr, pods: &[&Sandbox]) -> AnyResult<()> {
    let mut text = format!("{gateway} {FAKE_IP}\n");
    for pod in pods {
        let v4 = pod.ipv4().map(|a| a.to_string()).unwrap_or_default();
        let v6 = pod.ipv6().map(|a| a.to_string()).unwrap_or_default();
        let name = pod.name();
        writeln!(text, "{name}id {v4} {v6} {name},{name}.{DOMAIN}")?;
    }
    std::fs::create_dir(dir)?;
    std::fs::write(dir.join(BRIDGE), text)?;
    Ok(())
}

// ---- the bench ----

/// Returns whether everything was measured (and recorded).
async fn bench(cfg: &Config, tmp: &Path) -> AnyResult<bool> {
    let tools = find_tools()?;
    ip(&["addr", "add", &format!("{FAKE_IP}/32"), "dev", "lo"])?;
    let fake = Fake::start(SocketAddr::from((FAKE_IP, 53))).and_then(|f| {
        Fake::start_batched(SocketAddr::from((FAKE_IP, FAKE_BATCHED_PORT))).map(|b| (f, b))
    });
    let result = match fake {
        Ok(fakes) => {
            let r = with_network(cfg, tmp, &tools).await;
            drop(fakes);
            r
        }
        Err(e) => Err(e),
    };
    let unaddr = ip(&["addr", "del", &format!("{FAKE_IP}/32"), "dev", "lo"]);
    let ok = result?;
    unaddr?;
    Ok(ok)
}

async fn with_network(cfg: &Config, tmp: &Path, tools: &Tools) -> AnyResult<bool> {
    let net = Network::builder(BRIDGE)
        .subnet("10.88.0.0/16".parse()?)
        .subnet("fd00:88::/64".parse()?)
        .state_dir(tmp.join("state"))
        .dns_upstream(DnsUpstream::Servers(vec![SocketAddr::from((FAKE_IP, 53))]))
        .build()
        .await?;
    let mut pods: Vec<Sandbox> = Vec::with_capacity(cfg.pods + 1);
    let mut result = Ok(false);
    for i in 0..=cfg.pods {
        let name = if i == cfg.pods {
            "client".to_owned()
        } else {
            format!("p{i}")
        };
        match net.sandbox(name).create().await {
            Ok(pod) => pods.push(pod),
            Err(e) => {
                result = Err(e.into());
                break;
            }
        }
    }
    if result.is_ok() {
        result = with_pods(cfg, tmp, tools, &net, &pods).await;
    }
    for pod in &pods {
        // Removal goes on whatever happens, so nothing is left.
        if let Err(e) = pod.remove().await {
            result = result.and(Err(e.into()));
        }
    }
    drop(pods);
    let removed = net.remove().await;
    let ok = result?;
    removed?;
    Ok(ok)
}

async fn with_pods(
    cfg: &Config,
    tmp: &Path,
    tools: &Tools,
    net: &Network,
    pods: &[Sandbox],
) -> AnyResult<bool> {
    let gateway = *net.gateways().first().ok_or("the network has no gateway")?;
    let (client, named) = pods.split_last().ok_or("no sandboxes")?;
    let all: Vec<&Sandbox> = pods.iter().collect();
    let dir = tmp.join("aardvark");
    aardvark_config(&dir, gateway, &all)?;

    let mut text = String::new();
    for pod in named {
        let name = pod.name();
        writeln!(text, "{name} A\n{name}.{DOMAIN} A")?;
        if pod.ipv6().is_some() {
            writeln!(text, "{name} AAAA")?;
        }
    }
    let pod_names = tmp.join("pods.txt");
    std::fs::write(&pod_names, text)?;
    let mut text = String::with_capacity(FORWARDED_NAMES * 24);
    for i in 0..FORWARDED_NAMES {
        writeln!(text, "f{i}.fwd.example A")?;
    }
    let forwarded = tmp.join("forwarded.txt");
    std::fs::write(&forwarded, text)?;

    let mut aardvark = Aardvark::start(tools, &dir).await?;
    let pid = aardvark.pid.map_or(0, |p| p.as_raw().unsigned_abs());
    let files = (pod_names.as_path(), forwarded.as_path());
    let result = measure(cfg, tmp, tools, gateway, (client, named), files, pid).await;
    let stopped = aardvark.stop().await;
    let ok = result?;
    stopped?;
    Ok(ok)
}

async fn measure(
    cfg: &Config,
    tmp: &Path,
    tools: &Tools,
    gateway: IpAddr,
    (client, named): (&Sandbox, &[Sandbox]),
    (pod_names, forwarded): (&Path, &Path),
    aardvark_pid: u32,
) -> AnyResult<bool> {
    let podnet = SocketAddr::new(gateway, PODNET_PORT);
    let aardvark = SocketAddr::new(gateway, AARDVARK_PORT);
    let fake = SocketAddr::from((FAKE_IP, 53));
    let fake_batched = SocketAddr::from((FAKE_IP, FAKE_BATCHED_PORT));
    let aardvark_name = format!("aardvark-dns {}", tools.aardvark_version);

    // Check every server answers right before measuring anything.
    let first = named.first().ok_or("no named sandboxes")?;
    let last = named.last().ok_or("no named sandboxes")?;
    let mut checks: Vec<(SocketAddr, String, u16, IpAddr)> = Vec::new();
    for server in [podnet, aardvark] {
        if let Some(a) = first.ipv4() {
            checks.push((server, first.name().to_owned(), 1, a.into()));
        }
        if let Some(a) = last.ipv6() {
            checks.push((server, format!("{}.{DOMAIN}", last.name()), 28, a.into()));
        }
        checks.push((server, "probe.fwd.example".into(), 1, FAKE_ANSWER.into()));
    }
    checks.push((fake, "probe.fwd.example".into(), 1, FAKE_ANSWER.into()));
    checks.push((
        fake_batched,
        "probe.fwd.example".into(),
        1,
        FAKE_ANSWER.into(),
    ));
    let failures: Vec<String> = client
        .run(move || {
            checks
                .into_iter()
                .filter_map(|(s, name, t, want)| probe(s, &name, t, want).err())
                .collect()
        })
        .await?;
    for f in &failures {
        eprintln!("dns bench: {f}");
    }
    if failures
        .iter()
        .any(|f| f.starts_with(&aardvark.to_string()))
        || failures.iter().any(|f| f.starts_with(&fake.to_string()))
        || failures
            .iter()
            .any(|f| f.starts_with(&fake_batched.to_string()))
    {
        return Err("aardvark-dns or the fake upstream does not answer right".into());
    }
    let with_podnet = failures.is_empty();
    if !with_podnet {
        eprintln!(
            "dns bench: podnet does not answer right on {podnet} (is its DNS server in this \
             build?): measuring the others only, recording nothing"
        );
    }

    let row = |what: &str, server, queries: &Path, mode| Row {
        what: what.to_owned(),
        server,
        outstanding: match mode {
            Mode::Latency => 1,
            // Below podnet's 64 forwarded queries in flight per source
            // (beyond them it answers SERVFAIL at once).
            Mode::Throughput if queries == forwarded => FORWARDED_OUTSTANDING,
            Mode::Throughput => 100,
            Mode::Burst => u32::try_from(BURST_WINDOW).unwrap_or(u32::MAX),
        },
        queries: queries.to_owned(),
        mode,
        cpu: match server {
            s if s == podnet => Cpu::Podnet,
            s if s == aardvark => Cpu::Aardvark,
            s if s == fake_batched => Cpu::FakeBatched,
            _ => Cpu::Fake,
        },
        runs: Vec::new(),
    };
    use Mode::{Burst, Latency, Throughput};
    // Groups of rows whose order rotates from round to round.
    let mut groups: Vec<Vec<Row>> = vec![
        vec![
            row("podnet", podnet, pod_names, Throughput),
            row(&aardvark_name, aardvark, pod_names, Throughput),
            row("fake upstream (ceiling)", fake, pod_names, Throughput),
        ],
        vec![
            row("podnet", podnet, pod_names, Latency),
            row(&aardvark_name, aardvark, pod_names, Latency),
        ],
        vec![
            row("direct to the fake upstream", fake, forwarded, Latency),
            row("podnet -> fake", podnet, forwarded, Latency),
            row(
                &format!("{aardvark_name} -> fake"),
                aardvark,
                forwarded,
                Latency,
            ),
        ],
        vec![
            row("podnet -> fake", podnet, forwarded, Throughput),
            row(
                &format!("{aardvark_name} -> fake"),
                aardvark,
                forwarded,
                Throughput,
            ),
        ],
        vec![
            row("podnet", podnet, pod_names, Burst),
            row(&aardvark_name, aardvark, pod_names, Burst),
            row(
                "fake upstream, batched (ceiling)",
                fake_batched,
                pod_names,
                Burst,
            ),
        ],
    ];
    if !with_podnet {
        for g in &mut groups {
            g.retain(|r| r.server != podnet);
        }
    }
    let lat_secs = (cfg.secs / 2).max(1);
    let secs_of = |r: &Row| {
        if r.mode != Latency {
            cfg.secs
        } else {
            lat_secs
        }
    };
    let out = tmp.join("dnsperf.out");
    // The same queries as dnsperf's file, for the bench's own client.
    let mut burst_queries = Vec::new();
    for line in std::fs::read_to_string(pod_names)?.lines() {
        let (name, qtype) = line.split_once(' ').ok_or("a bad line in the query file")?;
        let qtype = if qtype == "AAAA" { 28 } else { 1 };
        burst_queries.push(build_query(0, name, qtype)?);
    }
    let burst_queries = Arc::new(burst_queries);

    // Warm-up, untimed: one short run of each row.
    for g in &groups {
        for r in g {
            if r.mode == Burst {
                burst(client, cfg, r, 1, &burst_queries, aardvark_pid).await?;
            } else {
                dnsperf(client, tools, cfg, r, 1, &out, aardvark_pid).await?;
            }
        }
    }
    let per_round: u64 = groups.iter().flatten().map(secs_of).sum();
    eprintln!(
        "dns bench: {} rounds of about {per_round} s each{}",
        cfg.rounds,
        match cfg.cpus {
            Some((c, s)) => format!(" (dnsperf on CPU {c}, the servers on CPU {s})"),
            None => " (nothing pinned: one CPU)".into(),
        }
    );
    let mut loads = Vec::with_capacity(cfg.rounds);
    for round in 0..cfg.rounds {
        loads.push(load1());
        for g in &mut groups {
            let n = g.len();
            for k in 0..n {
                let r = &mut g[(k + round) % n];
                let secs = secs_of(r);
                let run = if r.mode == Burst {
                    burst(client, cfg, r, secs, &burst_queries, aardvark_pid).await?
                } else {
                    dnsperf(client, tools, cfg, r, secs, &out, aardvark_pid).await?
                };
                r.runs.push(run);
            }
        }
        print_round(round, loads[round], &groups);
    }
    let _ = std::fs::remove_file(&out);
    report(cfg, tools, named.len(), &groups, &loads, with_podnet)?;
    Ok(with_podnet)
}

fn print_round(round: usize, load: f64, groups: &[Vec<Row>]) {
    let mut line = format!("round {:>2} (load {load:.2}):", round + 1);
    for r in groups.iter().flatten() {
        let Some(run) = r.runs.last() else { continue };
        let short = r.what.replace("aardvark-dns", "aardvark");
        match r.mode {
            Mode::Throughput => {
                let _ = write!(line, " | {short} {:.0} qps", run.qps);
            }
            Mode::Burst => {
                let _ = write!(line, " | {short} {:.0} qps (burst)", run.qps);
            }
            Mode::Latency => {
                let _ = write!(line, " | {short} p50 {:.1} p99 {:.1} us", run.p50, run.p99);
            }
        }
    }
    println!("{line}");
}

/// The medians over rounds of a row.
struct Medians {
    qps: f64,
    p50: f64,
    p99: f64,
    lost: f64,
    bad: u64,
    busy: f64,
    per_cpu: f64,
}

fn medians(r: &Row) -> Medians {
    Medians {
        qps: median(r.runs.iter().map(|x| x.qps)),
        p50: median(r.runs.iter().map(|x| x.p50)),
        p99: median(r.runs.iter().map(|x| x.p99)),
        lost: median(r.runs.iter().map(|x| x.lost)),
        bad: r.runs.iter().map(|x| x.bad).sum(),
        busy: median(r.runs.iter().map(Run::busy)),
        per_cpu: median(r.runs.iter().map(Run::per_cpu)),
    }
}

/// Median over rounds of `f(a's run, b's run)` for two rows of one group.
fn per_round(a: &Row, b: &Row, f: impl Fn(&Run, &Run) -> f64) -> f64 {
    median(a.runs.iter().zip(&b.runs).map(|(x, y)| f(x, y)))
}

fn report(
    cfg: &Config,
    tools: &Tools,
    pods: usize,
    groups: &[Vec<Row>],
    loads: &[f64],
    with_podnet: bool,
) -> AnyResult<()> {
    let find = |g: usize, what: &str| groups[g].iter().find(|r| r.what.starts_with(what));
    let load = median(loads.iter().copied());
    println!();
    println!(
        "dns bench: {pods} named sandboxes and a client one; dnsperf {} in the client, UDP; {} \
         rounds (sides alternating), medians over rounds; throughput runs {} s at 100 \
         outstanding (forwarded names: {FORWARDED_OUTSTANDING}), latency runs {} s at 1 outstanding; 1-min load median {load:.2}",
        tools.dnsperf_version,
        cfg.rounds,
        cfg.secs,
        (cfg.secs / 2).max(1)
    );
    let head = |what: &str| {
        println!(
            "{what:<34} {:>9} {:>6} {:>6} {:>10} {:>8} {:>8} {:>6}",
            "qps", "lost%", "cpu%", "q/cpu-s", "p50 us", "p99 us", "errors"
        );
    };
    let line = |what: &str, t: Option<&Row>, l: Option<&Row>| {
        let (t, l) = (t.map(medians), l.map(medians));
        let f = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        println!(
            "{what:<34} {:>9} {:>6} {:>6} {:>10} {:>8} {:>8} {:>6}",
            f(t.as_ref().map(|t| t.qps), 0),
            f(t.as_ref().map(|t| t.lost), 2),
            f(t.as_ref().map(|t| t.busy), 0),
            f(t.as_ref().map(|t| t.per_cpu), 0),
            f(l.as_ref().map(|l| l.p50), 1),
            f(l.as_ref().map(|l| l.p99), 1),
            t.as_ref().map_or(0, |t| t.bad) + l.as_ref().map_or(0, |l| l.bad),
        );
    };
    head("pod names (A, AAAA)");
    for r in &groups[0] {
        line(&r.what, Some(r), find(1, &r.what));
    }
    println!(
        "{:<34} {:>9} {:>6} {:>6} {:>10}   (the bench's batched client, {BURST_WINDOW} outstanding)",
        "pod names, batched client", "qps", "lost%", "cpu%", "q/cpu-s"
    );
    for r in &groups[4] {
        let m = medians(r);
        println!(
            "{:<34} {:>9.0} {:>6.2} {:>6.0} {:>10.0} {:>26}",
            r.what,
            m.qps,
            m.lost,
            m.busy,
            m.per_cpu,
            format!("errors {}", m.bad)
        );
    }
    head("forwarded names (A)");
    for r in &groups[2] {
        line(&r.what, find(3, &r.what), Some(r));
    }
    let direct = find(2, "direct").ok_or("no direct row")?;
    for r in groups[2].iter().filter(|r| r.server != direct.server) {
        println!(
            "{}: adds {:+.1} us at p50, {:+.1} us at p99 (medians over rounds of the round's \
             difference)",
            r.what,
            per_round(r, direct, |a, b| a.p50 - b.p50),
            per_round(r, direct, |a, b| a.p99 - b.p99)
        );
    }
    if !with_podnet {
        return Ok(());
    }
    let (Some(pq), Some(aq), Some(fq), Some(pl), Some(al)) = (
        find(0, "podnet"),
        find(0, "aardvark"),
        find(0, "fake"),
        find(1, "podnet"),
        find(1, "aardvark"),
    ) else {
        return Err("a row is missing".into());
    };
    let qps_ratio = per_round(pq, aq, |a, b| a.qps / b.qps);
    let p50_ratio = per_round(pl, al, |a, b| a.p50 / b.p50);
    let p99_ratio = per_round(pl, al, |a, b| a.p99 / b.p99);
    let ceiling = per_round(pq, fq, |a, b| a.qps / b.qps);
    let cpu_ratio = per_round(pq, aq, |a, b| a.per_cpu() / b.per_cpu());
    let pf = find(2, "podnet").ok_or("no forwarded podnet row")?;
    let af = find(2, "aardvark").ok_or("no forwarded aardvark row")?;
    let added_p50 = per_round(pf, direct, |a, b| a.p50 - b.p50);
    let added_p99 = per_round(pf, direct, |a, b| a.p99 - b.p99);
    let aadded_p50 = per_round(af, direct, |a, b| a.p50 - b.p50);
    let aadded_p99 = per_round(af, direct, |a, b| a.p99 - b.p99);
    println!(
        "podnet / aardvark-dns (medians of the per-round ratios): qps {qps_ratio:.2}x, p50 \
         {p50_ratio:.2}x, p99 {p99_ratio:.2}x; queries per CPU-second {cpu_ratio:.2}x; podnet's \
         qps = {ceiling:.2}x the fake upstream's (the client's ceiling)"
    );
    let (Some(pb), Some(ab), Some(fb)) = (find(4, "podnet"), find(4, "aardvark"), find(4, "fake"))
    else {
        return Err("a batched-client row is missing".into());
    };
    let burst_ratio = per_round(pb, ab, |a, b| a.qps / b.qps);
    let burst_ceiling = per_round(pb, fb, |a, b| a.qps / b.qps);
    let burst_cpu_ratio = per_round(pb, ab, |a, b| a.per_cpu() / b.per_cpu());
    println!(
        "with the batched client: podnet / aardvark-dns qps {burst_ratio:.2}x, queries per \
         CPU-second {burst_cpu_ratio:.2}x; podnet's qps = {burst_ceiling:.2}x the fake upstream's"
    );

    // One JSON line per run; a figure that could not be had is null.
    let (date, time) = utc_now();
    let m = |r: &Row| medians(r);
    let (mpq, maq, mfq, mpl, mal) = (m(pq), m(aq), m(fq), m(pl), m(al));
    let (md, mpf, maf) = (m(direct), m(pf), m(af));
    let (mpb, mab, mfb) = (m(pb), m(ab), m(fb));
    let fwd_qps = |what: &str| find(3, what).map_or(f64::NAN, |r| medians(r).qps);
    let num = |v: f64, digits: usize| {
        if v.is_finite() {
            format!("{v:.digits$}")
        } else {
            "null".to_owned()
        }
    };
    let text = |v: &str| format!("\"{}\"", v.replace(['"', '\\'], "_"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fields: Vec<(&str, String)> = vec![
        ("bench", text("dns")),
        ("date", text(&format!("{date}T{time}Z"))),
        ("kernel", text(kernel.trim())),
        ("nproc", cfg.nproc.to_string()),
        ("pinned", cfg.cpus.is_some().to_string()),
        ("load1_median", num(load, 2)),
        ("rounds", cfg.rounds.to_string()),
        ("secs", cfg.secs.to_string()),
        ("pods", pods.to_string()),
        ("dnsperf", text(&tools.dnsperf_version)),
        ("aardvark", text(&tools.aardvark_version)),
        ("podnet_qps", num(mpq.qps, 0)),
        ("aardvark_qps", num(maq.qps, 0)),
        ("fake_qps", num(mfq.qps, 0)),
        ("qps_ratio", num(qps_ratio, 3)),
        ("qps_of_ceiling", num(ceiling, 3)),
        ("podnet_lost_pct", num(mpq.lost, 2)),
        ("aardvark_lost_pct", num(maq.lost, 2)),
        ("podnet_cpu_pct", num(mpq.busy, 1)),
        ("aardvark_cpu_pct", num(maq.busy, 1)),
        ("podnet_q_per_cpu_s", num(mpq.per_cpu, 0)),
        ("aardvark_q_per_cpu_s", num(maq.per_cpu, 0)),
        ("q_per_cpu_ratio", num(cpu_ratio, 3)),
        ("podnet_p50_us", num(mpl.p50, 1)),
        ("podnet_p99_us", num(mpl.p99, 1)),
        ("aardvark_p50_us", num(mal.p50, 1)),
        ("aardvark_p99_us", num(mal.p99, 1)),
        ("p50_ratio", num(p50_ratio, 3)),
        ("p99_ratio", num(p99_ratio, 3)),
        ("upstream_p50_us", num(md.p50, 1)),
        ("upstream_p99_us", num(md.p99, 1)),
        ("podnet_fwd_p50_us", num(mpf.p50, 1)),
        ("podnet_fwd_p99_us", num(mpf.p99, 1)),
        ("aardvark_fwd_p50_us", num(maf.p50, 1)),
        ("aardvark_fwd_p99_us", num(maf.p99, 1)),
        ("podnet_fwd_added_p50_us", num(added_p50, 1)),
        ("podnet_fwd_added_p99_us", num(added_p99, 1)),
        ("aardvark_fwd_added_p50_us", num(aadded_p50, 1)),
        ("aardvark_fwd_added_p99_us", num(aadded_p99, 1)),
        ("podnet_fwd_qps", num(fwd_qps("podnet"), 0)),
        ("aardvark_fwd_qps", num(fwd_qps("aardvark"), 0)),
        ("burst_window", BURST_WINDOW.to_string()),
        ("burst_podnet_qps", num(mpb.qps, 0)),
        ("burst_aardvark_qps", num(mab.qps, 0)),
        ("burst_fake_qps", num(mfb.qps, 0)),
        ("burst_qps_ratio", num(burst_ratio, 3)),
        ("burst_qps_of_ceiling", num(burst_ceiling, 3)),
        ("burst_podnet_lost_pct", num(mpb.lost, 2)),
        ("burst_aardvark_lost_pct", num(mab.lost, 2)),
        ("burst_fake_lost_pct", num(mfb.lost, 2)),
        ("burst_podnet_cpu_pct", num(mpb.busy, 1)),
        ("burst_aardvark_cpu_pct", num(mab.busy, 1)),
        ("burst_fake_cpu_pct", num(mfb.busy, 1)),
        ("burst_podnet_q_per_cpu_s", num(mpb.per_cpu, 0)),
        ("burst_aardvark_q_per_cpu_s", num(mab.per_cpu, 0)),
        ("burst_q_per_cpu_ratio", num(burst_cpu_ratio, 3)),
        (
            "errors",
            (mpq.bad + maq.bad + mpl.bad + mal.bad + mpf.bad + maf.bad).to_string(),
        ),
        ("burst_errors", (mpb.bad + mab.bad + mfb.bad).to_string()),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    let line = format!("{{{}}}", body.join(", "));
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/results")
        .join(format!("dns-{date}.jsonl"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| format!("append to {}: {e}", path.display()))?;
    println!("recorded in {}", path.display());
    Ok(())
}

/// (YYYY-MM-DD, HH:MM:SS) in UTC, now.
fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}
