//! The rootless host namespace's way out through pasta (Debian `passt`):
//! what a process that entered rootless namespaces with an uplink can
//! reach, how long pasta lives, and what happens without it.
//!
//! Its own binary (`harness = false`): entering a user namespace needs a
//! single-threaded process, and each claim needs a process of its own, so
//! `main` runs itself again once per claim (`--claim NAME`) and checks
//! what the child printed and how it exited. Nothing is sent to any
//! address but the real host's loopback (127.0.0.1, reached through the
//! gateway address pasta gives the namespace, here 198.18.100.1) and the
//! test's own namespaces. CI runs it as root and as an unprivileged user;
//! pasta needs `/dev/net/tun` readable and writable by that user (.ci/run
//! sets mode 0666, as distributions ship it).
//!
//! ```text
//! cargo test --test uplink
//! ```
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use podnet::rootless::{Entry, Pasta};
use podnet::Error;

/// The addresses pasta gives the rootless host namespace in these tests,
/// so that nothing depends on (or is copied from) the machine's own.
const PASTA_ARGS: [&str; 6] = ["-a", "198.18.100.2", "-n", "24", "-g", "198.18.100.1"];
const GATEWAY: &str = "198.18.100.1";

fn pasta() -> Pasta {
    Pasta::new().args(PASTA_ARGS)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The claims, each run in a child process of its own.
const CLAIMS: &[(&str, &str)] = &[
    (
        "reach",
        "the rootless host reaches a server on the real loopback at pasta's gateway",
    ),
    ("ends", "pasta ends with the process of private namespaces"),
    (
        "missing",
        "without pasta on PATH the error names the package, and entering without it works",
    ),
    (
        "killed",
        "a killed pasta is reported by uplink() and sandboxes go on",
    ),
    (
        "shared",
        "the shared host's pasta outlives its starter, is found by the next entry, ends at teardown",
    ),
    (
        "pod",
        "a pod of a network with egress reaches a server on the real loopback through pasta",
    ),
    (
        "ended",
        "uplink_ended() returns the uplink error when pasta is killed",
    ),
    (
        "egress-after-loss",
        "after pasta died, building a network with egress is the uplink error and makes nothing",
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("--claim"), Some(name)) = (args.get(1).map(String::as_str), args.get(2)) {
        return claim(name);
    }
    if !have_pasta() {
        let why = "pasta (Debian passt) is not installed";
        assert_ne!(
            std::env::var("PODNET_REQUIRE_PRIV").as_deref(),
            Ok("1"),
            "PODNET_REQUIRE_PRIV=1 but {why}"
        );
        println!("uplink: SKIPPED: {why}");
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--"));
    let mut passed = 0;
    for (name, what) in CLAIMS {
        if filter.is_some_and(|f| !what.contains(f.as_str()) && name != f) {
            continue;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--claim", name])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("claim held"),
            "uplink: {what}: FAILED ({})\n{stdout}\n{stderr}",
            out.status
        );
        if name == &"ends" {
            pasta_of_a_finished_child_is_gone(&stdout);
        }
        println!("uplink: {what} ... ok");
        passed += 1;
    }
    println!("uplink: {passed} passed, 0 failed");
}

fn have_pasta() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("pasta").is_file()))
}

fn claim(name: &str) {
    match name {
        "reach" => the_rootless_host_reaches_the_real_loopback_at_pastas_gateway(),
        "ends" => pasta_ends_with_the_process(),
        "missing" => without_pasta_the_error_names_the_package_and_the_rest_works(),
        "killed" => a_killed_pasta_is_reported_and_sandboxes_go_on(),
        "shared" => the_shared_hosts_pasta_outlives_its_starter(),
        "shared-first" => shared_first(),
        "pod" => a_pod_with_egress_reaches_the_real_loopback_through_pasta(),
        "ended" => uplink_ended_returns_the_error_when_pasta_is_killed(),
        "egress-after-loss" => egress_after_pasta_died_is_the_uplink_error(),
        other => panic!("no claim {other}"),
    }
    println!("claim held");
}

/// Answer each connection on `l` with "hello" and close it.
fn serve(l: TcpListener) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { return };
        let _ = c.write_all(b"hello");
    }
}

/// Answer each connection on `l` with "hello from " and the address the
/// client came from.
fn serve_peer(l: TcpListener) {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { return };
        let peer = c
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let _ = c.write_all(format!("hello from {peer}").as_bytes());
    }
}

/// pasta killed by SIGKILL (it is the process's own uplink).
fn kill_uplink() {
    let pid = podnet::rootless::uplink().unwrap().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("podnet-uplink-test-{}", std::process::id()))
}

fn fetch(addr: &str, port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("{addr}:{port}").parse().unwrap(),
        Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = String::new();
    s.read_to_string(&mut got)?;
    Ok(got)
}

fn the_rootless_host_reaches_the_real_loopback_at_pastas_gateway() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    Entry::private().uplink(pasta()).enter().unwrap();
    std::thread::spawn(move || serve(l));
    assert!(podnet::rootless::uplink().unwrap().is_some());
    assert_eq!(fetch(GATEWAY, port).unwrap(), "hello");
}

fn pasta_ends_with_the_process() {
    Entry::private().uplink(pasta()).enter().unwrap();
    let pid = podnet::rootless::uplink().unwrap().unwrap();
    println!("pasta pid {pid}");
}

/// The parent's part of "ends": the pasta its child printed is gone soon
/// after the child exited (its supervisor ends it).
fn pasta_of_a_finished_child_is_gone(stdout: &str) {
    let pid: i32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pasta pid "))
        .unwrap()
        .parse()
        .unwrap();
    pasta_ends_within_5_s(pid, "after its process exited");
}

/// Fail unless pasta `pid` has ended within 5 s; `when` names the event
/// it should have ended with.
fn pasta_ends_within_5_s(pid: i32, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_pasta(pid) {
        assert!(Instant::now() < deadline, "pasta {pid} still runs {when}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live pasta (which may exec a variant of itself
/// built for the CPU: `passt.avx2`).
fn is_pasta(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| (s.contains(" (pasta") || s.contains(" (passt")) && !s.contains(") Z "))
}

fn without_pasta_the_error_names_the_package_and_the_rest_works() {
    let net_before = std::fs::read_link("/proc/self/ns/net").unwrap();
    // A PATH without it: the process's own, as a runtime would have it.
    std::env::set_var("PATH", "/nonexistent");
    let err = Entry::private().uplink(Pasta::new()).enter().unwrap_err();
    assert!(
        matches!(
            err,
            Error::ProgramMissing {
                package: "passt",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("pasta") && err.to_string().contains("passt"),
        "{err}"
    );
    // Nothing changed: still in the namespaces it started in.
    assert_eq!(std::fs::read_link("/proc/self/ns/net").unwrap(), net_before);
    assert!(podnet::rootless::uplink().unwrap().is_none());
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    podnet::rootless::enter_private().unwrap();
    assert!(podnet::rootless::uplink().unwrap().is_none());
    let state = std::env::temp_dir().join(format!("podnet-uplink-test-{}", std::process::id()));
    runtime().block_on(async {
        let net = common::network_builder(&state, "pnup0", &["10.88.0.0/16"])
            .build()
            .await
            .unwrap();
        let web = net.sandbox("web").create().await.unwrap();
        assert!(web.command("true").status().await.unwrap().success());
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

fn a_killed_pasta_is_reported_and_sandboxes_go_on() {
    Entry::private().uplink(pasta()).enter().unwrap();
    let pid = podnet::rootless::uplink().unwrap().unwrap();
    let state = std::env::temp_dir().join(format!("podnet-uplink-test-{}", std::process::id()));
    runtime().block_on(async {
        let net = common::network_builder(&state, "pnup0", &["10.88.0.0/16"])
            .build()
            .await
            .unwrap();
        let web = net.sandbox("web").create().await.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        common::eventually(
            "uplink() reports pasta gone",
            Duration::from_secs(5),
            async || matches!(podnet::rootless::uplink(), Err(Error::Uplink { .. })),
        )
        .await;
        let err = podnet::rootless::uplink().unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
        assert!(web.command("true").status().await.unwrap().success());
        let other = net.sandbox("other").create().await.unwrap();
        other.remove().await.unwrap();
        web.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// The child of "shared" that makes the shared host with pasta and exits.
fn shared_first() {
    Entry::shared().uplink(pasta()).enter().unwrap();
    let pid = podnet::rootless::uplink().unwrap().unwrap();
    println!("pasta pid {pid}");
}

fn the_shared_hosts_pasta_outlives_its_starter() {
    // A shared host of this test's own, never the user's real one.
    let host_dir = std::env::temp_dir().join(format!("podnet-uplink-host-{}", std::process::id()));
    std::env::set_var("PODNET_STATE_DIR", &host_dir);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--claim", "shared-first"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid: i32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pasta pid "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        is_pasta(pid),
        "pasta {pid} ended with the process that started it"
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Not asking for an uplink: the host has one, and this entry keeps it.
    podnet::rootless::enter().unwrap();
    std::thread::spawn(move || serve(l));
    assert_eq!(
        podnet::rootless::uplink().unwrap(),
        Some(u32::try_from(pid).unwrap())
    );
    assert_eq!(fetch(GATEWAY, port).unwrap(), "hello");
    assert!(podnet::rootless::teardown().unwrap());
    pasta_ends_within_5_s(pid, "after teardown");
    let _ = std::fs::remove_dir_all(&host_dir);
}

fn a_pod_with_egress_reaches_the_real_loopback_through_pasta() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    Entry::private().uplink(pasta()).enter().unwrap();
    std::thread::spawn(move || serve_peer(l));
    runtime().block_on(async {
        let net = common::network_builder(&state_dir(), "pnup0", &["10.88.0.0/16"])
            .egress(true)
            .enable_forwarding(true)
            .build()
            .await
            .unwrap();
        let pod = net.sandbox("web").create().await.unwrap();
        let got = pod
            .run(move || fetch(GATEWAY, port))
            .await
            .unwrap()
            .unwrap();
        // Masqueraded to the rootless host, then pasta's own socket on the
        // real loopback.
        assert_eq!(got, "hello from 127.0.0.1");
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

fn uplink_ended_returns_the_error_when_pasta_is_killed() {
    Entry::private().uplink(pasta()).enter().unwrap();
    runtime().block_on(async {
        let ended = tokio::spawn(podnet::rootless::uplink_ended());
        tokio::task::yield_now().await;
        assert!(
            !ended.is_finished(),
            "uplink_ended() returned while pasta runs"
        );
        kill_uplink();
        let err = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("uplink_ended() returns once pasta is gone")
            .unwrap()
            .expect("an error");
        assert!(matches!(err, Error::Uplink { .. }), "{err}");
        assert!(err.to_string().contains("exited"), "{err}");
    });
}

fn egress_after_pasta_died_is_the_uplink_error() {
    Entry::private().uplink(pasta()).enter().unwrap();
    kill_uplink();
    runtime().block_on(async {
        common::eventually(
            "uplink() reports pasta gone",
            Duration::from_secs(5),
            async || podnet::rootless::uplink().is_err(),
        )
        .await;
        let err = common::network_builder(&state_dir(), "pnup0", &["10.88.0.0/16"])
            .egress(true)
            .enable_forwarding(true)
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Uplink { .. }), "{err}");
        let (conn, nl, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        assert!(
            common::link(&nl, "pnup0").await.is_none(),
            "a bridge was made"
        );
        // Without egress the network does not need the way out.
        let net = common::network_builder(&state_dir(), "pnup0", &["10.88.0.0/16"])
            .build()
            .await
            .unwrap();
        net.remove().await.unwrap();
    });
}
