//! State that survives crashes: other processes re-attach to sandboxes, gc
//! reclaims what crashed creators left, corrupted state gives clear errors.
//!
//! The "other process" is this test binary run again (`child_process`,
//! ignored unless asked for): it joins the parent test's network namespace
//! and does what `PODNET_CHILD_ACTION` says, possibly dying by SIGKILL at
//! the create step named by `PODNET_FAILPOINT`, or stopping (SIGSTOP) there
//! if it says `stop:<step>` (the `failpoints` feature).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{files_under, in_netns, ports, record_path, reservation_path, Ctx};
use podnet::{Error, Network, Phase};

const BRIDGE: &str = "pn0";

async fn network(ctx: &Ctx) -> Network {
    network_at(&ctx.state).await
}

async fn network_at(state: &Path) -> Network {
    common::build_network(state, BRIDGE, "10.88.0.0/16")
        .await
        .expect("build network")
}

/// This test binary, run as a child doing `action` in the current thread's
/// namespace with the test's state directory.
fn child(ctx: &Ctx, action: &str, failpoint: Option<&str>) -> Command {
    let mut cmd = common::child_command(ctx, action);
    cmd.env_remove("PODNET_FAILPOINT");
    if let Some(step) = failpoint {
        cmd.env("PODNET_FAILPOINT", step);
    }
    cmd
}

/// Holders of sandbox `name` of this test's network still running. A
/// holder that outlived its creator is reparented to PID 1, which reaps it
/// when it gets to it: allow that a moment.
fn holders_named(name: &str) -> BTreeSet<u32> {
    let key = format!("{}{BRIDGE}", common::network_key_prefix());
    let now = || -> BTreeSet<u32> {
        common::holders_of(&key)
            .into_iter()
            .filter(|(_, n)| n == name)
            .map(|(pid, _)| pid as u32)
            .collect()
    };
    for _ in 0..100 {
        if now().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    now()
}

/// The entry point of the child process; does nothing in a normal run.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child_process() {
    let (Ok(netns), Ok(state), Ok(action)) = (
        std::env::var("PODNET_CHILD_NETNS"),
        std::env::var("PODNET_CHILD_STATE"),
        std::env::var("PODNET_CHILD_ACTION"),
    ) else {
        return;
    };
    let ns = std::fs::File::open(&netns).unwrap();
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let net = network_at(Path::new(&state)).await;
        let words: Vec<&str> = action.split_whitespace().collect();
        match words[..] {
            ["create", name, persistent] => {
                let pod = net
                    .sandbox(name)
                    .persistent(persistent == "persistent")
                    .create()
                    .await
                    .unwrap();
                println!("holder={} ip={}", pod.holder_pid(), pod.ip());
            }
            // Create, say so, and hold on until stdin closes; then remove.
            ["create-and-wait", name] => {
                let pod = net.sandbox(name).create().await.unwrap();
                println!("holder={} ip={}", pod.holder_pid(), pod.ip());
                std::io::stdout().flush().unwrap();
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                pod.remove().await.unwrap();
            }
            // A pod whose supervision task panics (failpoint
            // `panic:supervise`): its phase, what wait() says, its members.
            ["pod-lost", name] => {
                let pod = net
                    .pod(name)
                    .member(podnet::Member::new("sleeper", "sleep").arg("60"))
                    .start()
                    .await
                    .unwrap();
                let waited = tokio::time::timeout(std::time::Duration::from_secs(10), pod.wait())
                    .await
                    .expect("wait() returns once the supervision is lost");
                let states: Vec<String> = pod
                    .members()
                    .iter()
                    .map(|m| format!("{}:{:?}", m.name, m.state))
                    .collect();
                println!(
                    "phase={:?} waited={waited:?} members={}",
                    pod.phase(),
                    states.join(",")
                );
                std::io::stdout().flush().unwrap();
                pod.remove().await.unwrap();
            }
            // A create whose holder may not exec (a seccomp filter on this
            // thread, which the clone and any spawner thread inherit).
            ["exec-refused", name] => {
                common::refuse_on_this_thread(nix::libc::SYS_execveat, nix::libc::ENOEXEC);
                let err = net.sandbox(name).create().await.unwrap_err();
                let left = net.sandboxes().await.unwrap().len();
                println!("error={err} errno={:?} left={left}", err.errno());
            }
            _ => panic!("unknown action {action:?}"),
        }
    });
}

#[test]
fn a_holder_that_cannot_exec_fails_the_create_by_name_and_leaves_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let before = common::snapshot(&ctx.nl).await;
        let out = child(&ctx, "exec-refused noexec", None).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = String::from_utf8(out.stdout).unwrap();
        // The child's failed step and its errno, from the child that ran
        // alongside its creator until then.
        assert!(out.contains("exec holder program"), "{out}");
        assert!(out.contains("errno=Some(ENOEXEC)"), "{out}");
        assert!(out.contains(" noexec "), "names the sandbox: {out}");
        assert!(out.contains("left=0"), "{out}");
        assert_eq!(common::snapshot(&ctx.nl).await, before);
        assert!(net.sandboxes().await.unwrap().is_empty());
        assert!(holders_named("noexec").is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_pod_whose_supervision_is_lost_is_unknown() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let out = child(&ctx, "pod-lost lost", Some("panic:supervise"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "the child failed: {stdout}");
        let line = stdout
            .lines()
            .find_map(|l| l.find("phase=").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("no phase printed: {stdout:?}"));
        // Kubernetes' Unknown: the pod's state cannot be obtained. Its
        // member is not left Waiting for ever either.
        assert!(line.starts_with("phase=Unknown waited=Unknown "), "{line}");
        assert!(line.contains("sleeper:Terminated"), "{line}");
        // The child removed its pod: nothing is left.
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}

/// `holder=PID ip=IP` from a child's output.
fn parse(out: &str) -> (u32, String) {
    let at = out
        .find("holder=")
        .unwrap_or_else(|| panic!("the child did not print its sandbox: {out:?}"));
    let mut f = out[at..].split_whitespace();
    let pid = f.next().unwrap()["holder=".len()..].parse().unwrap();
    let ip = f.next().unwrap()["ip=".len()..].to_owned();
    (pid, ip)
}

#[test]
fn a_creator_killed_at_any_step_leaves_only_what_gc_reclaims() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        for step in ["record", "address", "holder", "veth", "inside", "done"] {
            for persistent in ["persistent", "dies-with-creator"] {
                let out = child(&ctx, &format!("create crash {persistent}"), Some(step))
                    .output()
                    .unwrap();
                assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "{step}: the child should die by SIGKILL"
                );
                let mut report = net.gc().await.unwrap_or_else(|e| panic!("{step}: gc: {e}"));
                // A holder killed by its creator's death may still be exiting
                // (gc rightly counts it alive until it is a zombie): ask again.
                let t = std::time::Instant::now();
                while step == "done"
                    && persistent == "dies-with-creator"
                    && report.sandboxes.is_empty()
                    && t.elapsed() < std::time::Duration::from_secs(5)
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    report = net.gc().await.unwrap();
                }
                if step == "done" && persistent == "persistent" {
                    // Complete and persistent: it outlives its creator, and
                    // gc must keep it. Another process takes over.
                    assert!(report.is_empty(), "{report:?}");
                    let pod = net.open_sandbox("crash").await.unwrap();
                    assert_eq!(pod.phase(), Phase::Running);
                    pod.remove().await.unwrap();
                } else if step != "record" {
                    assert_eq!(
                        report.sandboxes,
                        ["crash"],
                        "{step} {persistent}: {report:?}"
                    );
                }
                // A persistent holder made before the record named it (it
                // is cloned before the record is written) is found by its
                // argv and killed: once it has exec'd, which its child does
                // alongside the create, so a creator killed right after the
                // clone may die before it (then a later gc finds it).
                if persistent == "persistent" && step != "done" {
                    let mut holders = report.holders.clone();
                    let t = std::time::Instant::now();
                    while holders.is_empty() && t.elapsed() < std::time::Duration::from_secs(5) {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        holders = net.gc().await.unwrap().holders;
                    }
                    assert_eq!(holders.len(), 1, "{step}: {report:?}");
                }
                // Nothing is left: no veth, no holder, no record, no address.
                // (A holder that dies with its creator exits once it polls
                // its lifeline, after its exec: it may still be on its way.)
                assert!(
                    ports(&ctx.nl, BRIDGE).await.is_empty(),
                    "{step} {persistent}: {report:?}"
                );
                let t = std::time::Instant::now();
                while !holders_named("crash").is_empty()
                    && t.elapsed() < std::time::Duration::from_secs(5)
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                assert!(
                    holders_named("crash").is_empty(),
                    "{step} {persistent}: {report:?}"
                );
                let left: Vec<_> = files_under(&ctx.state)
                    .into_iter()
                    .filter(|f| {
                        f.to_string_lossy().contains("/addr/")
                            || f.to_string_lossy().contains("/sandbox/")
                    })
                    .collect();
                assert!(
                    left.is_empty(),
                    "{step} {persistent}: {left:?} after {report:?}"
                );
                // A second gc finds nothing more.
                assert!(
                    net.gc().await.unwrap().is_empty(),
                    "{step}: gc is not idempotent"
                );
            }
        }
        // The pool is whole: its first address can be had again.
        let pod = net
            .sandbox("after")
            .ip("10.88.0.2".parse().unwrap())
            .create()
            .await
            .unwrap();
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_holder_ends_when_its_creator_exits() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        // The child creates a sandbox that dies with it, and exits normally.
        let out = child(&ctx, "create gone dies-with-creator", None)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let (holder, _) = parse(&String::from_utf8_lossy(&out.stdout));
        let took = common::eventually(
            "the holder ends",
            std::time::Duration::from_secs(10),
            async || holders_named("gone").is_empty(),
        )
        .await;
        eprintln!("holder {holder} ended {took:?} after its creator");
        // Its sandbox is Failed, and gc reclaims it and its veth.
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].phase, Phase::Failed);
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["gone"]);
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_second_process_opens_joins_and_removes_a_persistent_sandbox() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let out = child(&ctx, "create kept persistent", None)
            .output()
            .unwrap();
        assert!(out.status.success());
        let (holder, ip) = parse(&String::from_utf8_lossy(&out.stdout));
        // The creator has exited; the sandbox lives on.
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "kept");
        assert_eq!(listed[0].phase, Phase::Running);
        assert_eq!(listed[0].holder_pid, Some(holder));
        assert_eq!(listed[0].ipv4.unwrap().to_string(), ip);
        assert!(listed[0].persistent);

        let pod = net.open_sandbox("kept").await.unwrap();
        assert_eq!(pod.holder_pid(), holder);
        assert_eq!(pod.ip().to_string(), ip);
        assert_eq!(pod.phase(), Phase::Running);
        let out = pod
            .command("cat")
            .arg("/proc/net/fib_trie")
            .output()
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&ip));
        // gc leaves a live sandbox of another process alone.
        assert!(net.gc().await.unwrap().is_empty());
        pod.remove().await.unwrap();
        assert_eq!(pod.phase(), Phase::Succeeded);
        assert!(holders_named("kept").is_empty());
        assert!(ports(&ctx.nl, BRIDGE).await.is_empty());
        assert!(net.sandboxes().await.unwrap().is_empty());
        let err = net.open_sandbox("kept").await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_never_touches_a_live_sandbox_of_a_running_process() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let mut other = child(&ctx, "create-and-wait theirs", None)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        // The harness prints its own lines first; ours says holder=.
        let mut reader = BufReader::new(other.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("holder=") {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "the child ended early"
            );
        }
        let (holder, _) = parse(&line);
        let mine = net.sandbox("mine").create().await.unwrap();
        let report = net.gc().await.unwrap();
        assert!(report.is_empty(), "{report:?}");
        let phases: Vec<_> = net
            .sandboxes()
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.phase))
            .collect();
        assert_eq!(
            phases,
            [
                ("mine".to_owned(), Phase::Running),
                ("theirs".to_owned(), Phase::Running)
            ]
        );
        assert_eq!(
            holders_named("theirs").into_iter().collect::<Vec<_>>(),
            [holder]
        );
        drop(other.stdin.take()); // let it remove its sandbox and exit
        assert!(other.wait().unwrap().success());
        mine.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_dead_holder_is_failed_in_listings_and_gc_reclaims_it() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("gone").persistent(true).create().await.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pod.holder_pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(pod.wait().await, Phase::Failed);
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed[0].phase, Phase::Failed);
        let err = net.open_sandbox("gone").await.unwrap_err();
        assert!(matches!(err, Error::HolderDied { .. }), "{err}");
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["gone"]);
        assert_eq!(report.addresses, [pod.ip()]);
        assert!(net.sandboxes().await.unwrap().is_empty());
        // The local handle's remove is still fine (everything is gone already).
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn corrupted_state_gives_clear_errors_and_never_panics() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let good = net.sandbox("good").create().await.unwrap();
        let record = files_under(&ctx.state)
            .into_iter()
            .find(|f| f.ends_with("sandbox/good"))
            .unwrap();
        let dir = record.parent().unwrap().to_owned();
        let full = std::fs::read(&record).unwrap();
        type Corrupt<'a> = Box<dyn Fn(&Path) + 'a>;
        let cases: Vec<(&str, Corrupt)> = vec![
            (
                "truncated",
                Box::new(|p: &Path| std::fs::write(p, &full[..full.len() / 3]).unwrap()),
            ),
            (
                "garbage",
                Box::new(|p: &Path| std::fs::write(p, b"\xff\x00not=a\nrecord").unwrap()),
            ),
            (
                "empty",
                Box::new(|p: &Path| std::fs::write(p, b"").unwrap()),
            ),
            (
                "symlink",
                Box::new(|p: &Path| {
                    std::fs::remove_file(p).unwrap();
                    std::os::unix::fs::symlink("/etc/hostname", p).unwrap();
                }),
            ),
        ];
        for (what, corrupt) in &cases {
            let bad = dir.join("bad");
            std::fs::write(&bad, &full).unwrap();
            corrupt(&bad);
            let err = net.open_sandbox("bad").await.unwrap_err();
            assert!(
                matches!(err, Error::StateCorrupt { ref path, .. } if path == &bad),
                "{what}: {err}"
            );
            let listed = net.sandboxes().await.unwrap();
            assert!(
                listed
                    .iter()
                    .any(|s| s.name == "bad" && s.phase == Phase::Unknown),
                "{what}"
            );
            let report = net.gc().await.unwrap();
            assert_eq!(damaged_paths(&report), std::slice::from_ref(&bad), "{what}");
            assert!(
                report.is_empty(),
                "{what}: gc must not reclaim what it cannot read: {report:?}"
            );
            assert_eq!(good.phase(), Phase::Running);
            std::fs::remove_file(&bad).unwrap();
        }
        // State files are owner-only.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&record).unwrap().permissions().mode() & 0o777,
            0o600
        );
        good.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_state_directory_of_another_user_is_refused() {
    in_netns(|ctx| async move {
        std::fs::create_dir_all(&ctx.state).unwrap();
        // Only possible where uid 65534 is mapped (root, or a user namespace that maps it).
        if let Err(e) =
            nix::unistd::chown(&ctx.state, Some(nix::unistd::Uid::from_raw(65534)), None)
        {
            assert!(
                !nix::unistd::geteuid().is_root() || !podnet_in_initial_userns(),
                "root in the initial user namespace must be able to chown: {e}"
            );
            eprintln!("SKIPPED part: cannot chown in this user namespace ({e})");
            return;
        }
        let err = common::build_network(&ctx.state, BRIDGE, "10.88.0.0/16")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::StateCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("another user"), "{err}");
        assert!(common::links(&ctx.nl).await.len() == 1, "nothing was made");
    });
}

fn podnet_in_initial_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

#[test]
fn a_stale_handle_never_removes_a_newer_sandbox_of_the_same_name() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let old = net.sandbox("web").create().await.unwrap();
        let stale = net.open_sandbox("web").await.unwrap();
        old.remove().await.unwrap();
        let new = net.sandbox("web").ip(old.ip()).create().await.unwrap();
        // The stale handle's sandbox is gone; removing it again must leave
        // the new one (same name, same address) alone.
        stale.remove().await.unwrap();
        assert_eq!(new.phase(), Phase::Running);
        assert_eq!(
            ports(&ctx.nl, BRIDGE).await.into_iter().collect::<Vec<_>>(),
            [new.host_interface()]
        );
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].phase, Phase::Running);
        let err = net
            .sandbox("other")
            .ip(new.ip())
            .create()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::AddressTaken { .. }),
            "the new address was released: {err}"
        );
        assert!(net.gc().await.unwrap().is_empty());
        new.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_racing_creates_leaves_them_whole() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        for round in 0..20 {
            let ip = format!("10.88.1.{}", round + 10).parse().unwrap();
            let name = format!("db{round}");
            let (report, pod) = futures::join!(net.gc(), net.sandbox(&name).ip(ip).create());
            let report = report.unwrap();
            let pod = pod
                .unwrap_or_else(|e| panic!("round {round}: create lost to gc: {e} ({report:?})"));
            assert!(
                report.is_empty(),
                "round {round}: gc reclaimed a live create: {report:?}"
            );
            assert_eq!(pod.phase(), Phase::Running);
            pod.remove().await.unwrap();
        }
        net.remove().await.unwrap();
    });
}

/// The paths of the store entries gc reported as damaged.
fn damaged_paths(report: &podnet::GcReport) -> Vec<std::path::PathBuf> {
    report.corrupt.iter().map(|d| d.path.clone()).collect()
}

/// Whether holder `pid` of sandbox `name` of this test's network runs.
fn holder_runs(name: &str, pid: u32) -> bool {
    let key = format!("{}{BRIDGE}", common::network_key_prefix());
    common::holders_of(&key)
        .into_iter()
        .any(|(p, n)| n == name && p as u32 == pid)
}

/// `open_sandbox`, `sandboxes` and `gc` all see sandbox `name`'s record as
/// the corrupt file `record`, and gc reclaims nothing; `what` names the case.
async fn assert_refused_everywhere(net: &Network, name: &str, record: &Path, what: &str) -> Error {
    let err = net.open_sandbox(name).await.unwrap_err();
    assert!(
        matches!(err, Error::StateCorrupt { ref path, .. } if path == record),
        "{what}: open_sandbox: {err}"
    );
    let listed = net.sandboxes().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s.name == name && s.phase == Phase::Unknown),
        "{what}: {listed:?}"
    );
    let report = net.gc().await.unwrap_or_else(|e| panic!("{what}: gc: {e}"));
    assert_eq!(damaged_paths(&report), [record.to_owned()], "{what}");
    assert!(
        report.is_empty(),
        "{what}: gc must not reclaim what it cannot read: {report:?}"
    );
    err
}

#[test]
fn a_record_cut_short_anywhere_is_corrupt_and_gc_leaves_its_live_sandbox_whole() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        // Persistent, made by a process that has exited: a cut record read
        // as a half-made sandbox would be Dead to gc (no holder, creator
        // gone), which would delete its veth, release its address and kill
        // its holder.
        let out = child(&ctx, "create kept persistent", None)
            .output()
            .unwrap();
        assert!(out.status.success());
        let (holder, ip) = parse(&String::from_utf8_lossy(&out.stdout));
        let veth = net
            .open_sandbox("kept")
            .await
            .unwrap()
            .host_interface()
            .to_owned();
        let record = record_path(&ctx, "kept");
        let reservation = reservation_path(&ctx, &ip);
        let full = std::fs::read(&record).unwrap();
        assert!(full.ends_with(b"\n") && full.windows(6).any(|w| w == b"\ndone="));
        // Every strict prefix: each line boundary, and inside every line
        // (the done line's padding included).
        for cut in 0..full.len() {
            let tail = String::from_utf8_lossy(&full[..cut]);
            let what = format!(
                "cut at byte {cut} of {}, after {:?}",
                full.len(),
                tail.rsplit('\n').next().unwrap_or_default()
            );
            std::fs::write(&record, &full[..cut]).unwrap();
            let err = assert_refused_everywhere(&net, "kept", &record, &what).await;
            assert!(
                err.to_string().contains(&*record.to_string_lossy()),
                "{err}"
            );
            // The live sandbox is untouched.
            assert!(holder_runs("kept", holder), "{what}: its holder was killed");
            assert!(
                ports(&ctx.nl, BRIDGE).await.contains(&veth),
                "{what}: its veth was deleted"
            );
            assert!(
                std::fs::symlink_metadata(&reservation).is_ok(),
                "{what}: its address was released"
            );
        }
        std::fs::write(&record, &full).unwrap();
        let pod = net.open_sandbox("kept").await.unwrap();
        assert_eq!((pod.holder_pid(), pod.phase()), (holder, Phase::Running));
        assert!(net.gc().await.unwrap().is_empty());
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_record_whose_veth_is_not_its_own_is_corrupt_and_gc_deletes_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let other = net.sandbox("other").create().await.unwrap();
        let pod = net.sandbox("web").persistent(true).create().await.unwrap();
        let record = record_path(&ctx, "web");
        let full = std::fs::read_to_string(&record).unwrap();
        let line = format!("\nveth={}\n", pod.host_interface());
        assert!(full.contains(&line), "{full}");
        // The done line's check covers only what that line says (holder and
        // addresses), so an edited veth= line passes it: only a check of
        // the veth name itself can catch this.
        let targets = [BRIDGE, other.host_interface(), "lo", "eth0"];
        let damage = |target: &str| {
            std::fs::write(&record, full.replace(&line, &format!("\nveth={target}\n"))).unwrap();
        };
        let links_before = common::links(&ctx.nl).await;
        // Live: a handle opened from the damaged record would delete that
        // interface on remove().
        for target in targets {
            damage(target);
            let what = format!("live, veth={target}");
            let err = assert_refused_everywhere(&net, "web", &record, &what).await;
            assert!(err.to_string().contains("veth"), "{what}: {err}");
            assert_eq!(common::links(&ctx.nl).await, links_before, "{what}");
        }
        // Dead holder: gc's branch for dead sandboxes deletes the veth the
        // record names.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pod.holder_pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(pod.wait().await, Phase::Failed);
        for target in targets {
            damage(target);
            let what = format!("dead, veth={target}");
            assert_refused_everywhere(&net, "web", &record, &what).await;
            let links = common::links(&ctx.nl).await;
            assert!(links.contains(BRIDGE), "{what}: the bridge was deleted");
            assert!(
                links.contains(other.host_interface()),
                "{what}: another sandbox's veth was deleted"
            );
            assert!(links.contains("lo"), "{what}");
        }
        // Repaired, the record is reclaimed as any dead one.
        std::fs::write(&record, &full).unwrap();
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["web"], "{report:?}");
        assert_eq!(other.phase(), Phase::Running);
        pod.remove().await.unwrap();
        other.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_record_of_another_user_is_refused() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let record = record_path(&ctx, "web");
        // Only possible where uid 65534 is mapped (root, or a user namespace
        // that maps it); CI runs this as root too.
        if let Err(e) = nix::unistd::chown(&record, Some(nix::unistd::Uid::from_raw(65534)), None) {
            assert!(
                !nix::unistd::geteuid().is_root() || !podnet_in_initial_userns(),
                "root in the initial user namespace must be able to chown: {e}"
            );
            eprintln!("SKIPPED part: cannot chown in this user namespace ({e})");
            pod.remove().await.unwrap();
            net.remove().await.unwrap();
            return;
        }
        let err = assert_refused_everywhere(&net, "web", &record, "uid 65534").await;
        let text = err.to_string();
        assert!(
            text.contains(&*record.to_string_lossy()) && text.contains("uid 65534"),
            "{text}"
        );
        assert_eq!(pod.phase(), Phase::Running);
        assert!(holder_runs("web", pod.holder_pid()));
        assert!(ports(&ctx.nl, BRIDGE).await.contains(pod.host_interface()));
        nix::unistd::chown(&record, Some(nix::unistd::geteuid()), None).unwrap();
        assert_eq!(
            net.open_sandbox("web").await.unwrap().phase(),
            Phase::Running
        );
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_sandbox_another_process_is_making_is_pending_until_its_creator_dies() {
    in_netns(|ctx| async move {
        use nix::sys::signal::{kill, Signal};
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let net = network(&ctx).await;
        // The child stops itself half-way through create(), after its veth
        // is made and the store's lock released: a create in progress.
        let mut other = child(&ctx, "create making dies-with-creator", Some("stop:veth"))
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(other.id() as i32);
        // A failing assertion must not leave it stopped for ever.
        struct KillIfStopped(Option<nix::unistd::Pid>);
        impl Drop for KillIfStopped {
            fn drop(&mut self) {
                if let Some(pid) = self.0 {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
        }
        let mut guard = KillIfStopped(Some(pid));
        // Blocks this test's thread only; the child needs nothing from it.
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {}
            status => panic!("the child should stop at its failpoint: {status:?}"),
        }
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let info = &listed[0];
        assert_eq!(
            (info.name.as_str(), info.phase, info.holder_pid),
            ("making", Phase::Pending, None),
            "{info:?}"
        );
        let err = net.open_sandbox("making").await.unwrap_err();
        assert!(matches!(err, Error::HolderDied { .. }), "{err}");
        // gc leaves a create in progress alone: its record, its address,
        // its holder and its veth.
        let report = net.gc().await.unwrap();
        assert!(report.is_empty(), "{report:?}");
        assert!(std::fs::symlink_metadata(reservation_path(&ctx, "10.88.0.2")).is_ok());
        assert_eq!(ports(&ctx.nl, BRIDGE).await.len(), 1);
        let key = format!("{}{BRIDGE}", common::network_key_prefix());
        // Its holder's child execs alongside the create, stopped or not.
        common::eventually(
            "the holder has exec'd",
            std::time::Duration::from_secs(5),
            async || common::holders_of(&key).iter().any(|(_, n)| n == "making"),
        )
        .await;
        assert_eq!(net.sandboxes().await.unwrap()[0].phase, Phase::Pending);
        // Its creator dies half-way: Failed, and gc reclaims it all.
        kill(pid, Signal::SIGKILL).unwrap();
        assert_eq!(other.wait().unwrap().signal(), Some(9));
        guard.0 = None; // reaped: its PID is no longer its
        assert_eq!(net.sandboxes().await.unwrap()[0].phase, Phase::Failed);
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["making"], "{report:?}");
        assert!(ports(&ctx.nl, BRIDGE).await.is_empty(), "{report:?}");
        // Its holder exits by its lifeline, or by gc's kill: soon.
        common::eventually(
            "the holder ends",
            std::time::Duration::from_secs(5),
            async || holders_named("making").is_empty(),
        )
        .await;
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}
