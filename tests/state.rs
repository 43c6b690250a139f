//! State that survives crashes: other processes see and re-attach to
//! sandboxes, gc reclaims what crashed creators left and never what a live
//! process owns, and damaged or foreign state gives clear errors.
//!
//! The "other process" is this test binary run again (`child_process`,
//! ignored unless asked for; see `common::child_command`): it joins the
//! parent test's network namespace and does what `PODNET_CHILD_ACTION`
//! says, possibly dying by SIGKILL at the create step named by
//! `PODNET_FAILPOINT`, or stopping (SIGSTOP) there if it says
//! `stop:<step>` (the `failpoints` feature).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    child_command, eventually, in_netns, network, ports, record_path, reservation_path, Ctx, BRIDGE,
};
use podnet::{Error, GcReport, Network, Phase, Sandbox};

/// Holders of sandbox `name` of this test's network that run now.
fn holders_named(name: &str) -> BTreeSet<u32> {
    let key = format!("{}{BRIDGE}", common::network_key_prefix());
    common::holders_of(&key)
        .into_iter()
        .filter(|(_, n)| n == name)
        .map(|(pid, _)| u32::try_from(pid).unwrap())
        .collect()
}

/// Wait up to `within` until no holder of sandbox `name` runs. A holder
/// that outlived its creator is reparented to PID 1, which reaps it when it
/// gets to it; one that dies with its creator exits once it polls its
/// lifeline, after its exec.
async fn no_holder_named(name: &str, within: Duration, what: &str) {
    eventually(
        &format!("{what}: no holder of {name}"),
        within,
        async || holders_named(name).is_empty(),
    )
    .await;
}

/// The entry point of the child process; does nothing in a normal run.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child_process() {
    common::child_main(|state, action| async move {
        let net = common::build_network(&state, BRIDGE, common::SUBNET)
            .await
            .expect("build network");
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
            // `panic:supervise`).
            ["pod-lost", name] => pod_lost(&net, name).await,
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

/// In a child: start pod `name` with a member that sleeps, and print its
/// phase once its supervision is lost, what wait() says, and its members.
async fn pod_lost(net: &Network, name: &str) {
    let pod = net
        .pod(name)
        .member(podnet::Member::new("sleeper", "sleep").arg("60"))
        .start()
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), pod.wait())
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

#[test]
fn a_holder_that_cannot_exec_fails_the_create_by_name_and_leaves_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let before = common::snapshot(&ctx.nl).await;
        let out = child_command(&ctx, "exec-refused noexec").output().unwrap();
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
        no_holder_named("noexec", Duration::from_secs(1), "after the create").await;
        net.remove().await.unwrap();
    });
}

#[test]
fn a_pod_whose_supervision_is_lost_is_unknown() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let out = child_command(&ctx, "pod-lost lost")
            .env("PODNET_FAILPOINT", "panic:supervise")
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

/// How a child's sandbox is told to end: `persistent`, or with its creator.
fn kind(persistent: bool) -> &'static str {
    if persistent {
        "persistent"
    } else {
        "dies-with-creator"
    }
}

/// A child creates sandbox `name` and exits normally: its holder's PID
/// and its address.
fn created_by_child(ctx: &Ctx, name: &str, persistent: bool) -> (u32, String) {
    let out = child_command(ctx, &format!("create {name} {}", kind(persistent)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// A child creating sandbox "crash" is killed at create step `step`; then
/// gc, again while a holder killed by its creator's death may still be
/// exiting (gc rightly counts it alive until it is a zombie).
async fn kill_creator_at(ctx: &Ctx, net: &Network, step: &str, persistent: bool) -> GcReport {
    let out = child_command(ctx, &format!("create crash {}", kind(persistent)))
        .env("PODNET_FAILPOINT", step)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{step}: the child should die by SIGKILL"
    );
    let mut report = net.gc().await.unwrap_or_else(|e| panic!("{step}: gc: {e}"));
    if step == "done" && !persistent {
        eventually(
            "gc reclaims the sandbox once its holder has exited",
            Duration::from_secs(5),
            async || {
                if report.sandboxes.is_empty() {
                    report = net.gc().await.unwrap();
                }
                !report.sandboxes.is_empty()
            },
        )
        .await;
    }
    report
}

/// A creator killed at create step `step` leaves only what gc reclaims: no
/// veth, no holder, no record, no address, and the pool whole. But a
/// complete persistent sandbox (`done`) outlives it, and gc keeps it.
fn a_creator_killed_at(step: &'static str, persistent: bool) {
    in_netns(move |ctx| async move {
        let what = format!("{step} {}", kind(persistent));
        let net = network(&ctx).await;
        let report = kill_creator_at(&ctx, &net, step, persistent).await;
        if step == "done" && persistent {
            // Complete and persistent: gc must keep it. Another process
            // takes over.
            assert!(report.is_empty(), "{report:?}");
            let pod = net.open_sandbox("crash").await.unwrap();
            assert_eq!(pod.phase(), Phase::Running);
            pod.remove().await.unwrap();
        } else if step != "record" {
            assert_eq!(report.sandboxes, ["crash"], "{what}: {report:?}");
        }
        // A persistent holder made before the record named it (it is cloned
        // before the record is written) is found by its argv and killed:
        // once it has exec'd, which its child does alongside the create, so
        // a creator killed right after the clone may die before it (then a
        // later gc finds it).
        if persistent && step != "done" {
            let mut holders = report.holders.clone();
            eventually(
                &format!("{what}: gc kills the holder"),
                Duration::from_secs(5),
                async || {
                    if holders.is_empty() {
                        holders = net.gc().await.unwrap().holders;
                    }
                    !holders.is_empty()
                },
            )
            .await;
            assert_eq!(holders.len(), 1, "{step}: {report:?}");
        }
        // Nothing is left: no veth, no holder, no record, no address.
        assert!(
            ports(&ctx.nl, BRIDGE).await.is_empty(),
            "{what}: {report:?}"
        );
        no_holder_named("crash", Duration::from_secs(6), &what).await;
        let left = common::state_entries(&ctx, &["addr", "sandbox"]);
        assert!(left.is_empty(), "{what}: {left:?} after {report:?}");
        // A second gc finds nothing more.
        assert!(
            net.gc().await.unwrap().is_empty(),
            "{step}: gc is not idempotent"
        );
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

/// Tests `$name::persistent` and `$name::dies_with_creator`: a creator
/// killed at create step `$step`, its sandbox persistent or not, leaves
/// only what gc reclaims.
macro_rules! killed_at {
    ($name:ident, $step:literal) => {
        mod $name {
            #[test]
            fn persistent() {
                super::a_creator_killed_at($step, true);
            }
            #[test]
            fn dies_with_creator() {
                super::a_creator_killed_at($step, false);
            }
        }
    };
}

killed_at!(
    a_creator_killed_at_its_record_leaves_only_what_gc_reclaims,
    "record"
);
killed_at!(
    a_creator_killed_at_the_address_leaves_only_what_gc_reclaims,
    "address"
);
killed_at!(
    a_creator_killed_at_the_holder_leaves_only_what_gc_reclaims,
    "holder"
);
killed_at!(
    a_creator_killed_at_the_veth_leaves_only_what_gc_reclaims,
    "veth"
);
killed_at!(
    a_creator_killed_inside_leaves_only_what_gc_reclaims,
    "inside"
);

#[test]
fn a_creator_killed_when_done_leaves_a_sandbox_that_dies_with_it_to_gc() {
    a_creator_killed_at("done", false);
}

#[test]
fn a_complete_persistent_sandbox_outlives_its_killed_creator_and_gc_keeps_it() {
    a_creator_killed_at("done", true);
}

#[test]
fn a_holder_ends_when_its_creator_exits_and_gc_reclaims_its_sandbox() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        // The child creates a sandbox that dies with it, and exits normally.
        let (holder, _) = created_by_child(&ctx, "gone", false);
        let took = eventually("the holder ends", Duration::from_secs(10), async || {
            holders_named("gone").is_empty()
        })
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
fn a_persistent_sandbox_is_listed_running_after_its_creator_exits() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let (holder, ip) = created_by_child(&ctx, "kept", true);
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "kept");
        assert_eq!(listed[0].phase, Phase::Running);
        assert_eq!(listed[0].holder_pid, Some(holder));
        assert_eq!(listed[0].ipv4.unwrap().to_string(), ip);
        assert!(listed[0].persistent);
        net.open_sandbox("kept")
            .await
            .unwrap()
            .remove()
            .await
            .unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_second_process_opens_and_joins_a_persistent_sandbox_that_gc_leaves_alone() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let (holder, ip) = created_by_child(&ctx, "kept", true);
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
        net.remove().await.unwrap();
    });
}

#[test]
fn a_second_process_removes_a_persistent_sandbox_for_good() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        created_by_child(&ctx, "kept", true);
        let pod = net.open_sandbox("kept").await.unwrap();
        pod.remove().await.unwrap();
        assert_eq!(pod.phase(), Phase::Succeeded);
        no_holder_named("kept", Duration::from_secs(1), "after remove").await;
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
        let (mut other, line) = common::spawn_until(
            child_command(&ctx, "create-and-wait theirs").stdin(Stdio::piped()),
            "holder=",
            Duration::from_secs(60),
        );
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
        common::sigkill(pod.holder_pid());
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

/// The paths of the store entries gc reported as damaged.
fn damaged_paths(report: &GcReport) -> Vec<PathBuf> {
    report.corrupt.iter().map(|d| d.path.clone()).collect()
}

/// Whether holder `pid` of sandbox `name` of this test's network runs.
fn holder_runs(name: &str, pid: u32) -> bool {
    holders_named(name).contains(&pid)
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
fn a_record_truncated_garbled_emptied_or_a_symlink_is_refused_everywhere() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let good = net.sandbox("good").create().await.unwrap();
        let full = std::fs::read(record_path(&ctx, "good")).unwrap();
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
        let bad = record_path(&ctx, "bad");
        for (what, corrupt) in &cases {
            std::fs::write(&bad, &full).unwrap();
            corrupt(&bad);
            assert_refused_everywhere(&net, "bad", &bad, what).await;
            assert_eq!(good.phase(), Phase::Running);
            std::fs::remove_file(&bad).unwrap();
        }
        good.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn state_files_are_owner_only() {
    in_netns(|ctx| async move {
        use std::os::unix::fs::PermissionsExt;
        let net = network(&ctx).await;
        let good = net.sandbox("good").create().await.unwrap();
        let record = record_path(&ctx, "good");
        assert_eq!(
            std::fs::metadata(&record).unwrap().permissions().mode() & 0o777,
            0o600
        );
        good.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// Whether this process is in the initial user namespace (which maps every
/// uid to itself).
fn podnet_in_initial_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// Give `path` to uid 65534; false (saying so) where this user namespace
/// cannot, which only root in the initial user namespace always can.
fn chown_to_nobody(path: &Path) -> bool {
    match nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(65534)), None) {
        Ok(()) => true,
        Err(e) => {
            assert!(
                !nix::unistd::geteuid().is_root() || !podnet_in_initial_userns(),
                "root in the initial user namespace must be able to chown: {e}"
            );
            eprintln!("SKIPPED part: cannot chown in this user namespace ({e})");
            false
        }
    }
}

#[test]
fn a_state_directory_of_another_user_is_refused() {
    in_netns(|ctx| async move {
        std::fs::create_dir_all(&ctx.state).unwrap();
        // Only possible where uid 65534 is mapped (root, or a user namespace that maps it).
        if !chown_to_nobody(&ctx.state) {
            return;
        }
        let err = common::build_network(&ctx.state, BRIDGE, common::SUBNET)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::StateCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("another user"), "{err}");
        assert!(common::links(&ctx.nl).await.len() == 1, "nothing was made");
    });
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

#[test]
fn a_record_cut_short_anywhere_is_corrupt_and_gc_leaves_its_live_sandbox_whole() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        // Persistent, made by a process that has exited: a cut record read
        // as a half-made sandbox would be Dead to gc (no holder, creator
        // gone), which would delete its veth, release its address and kill
        // its holder.
        let (holder, ip) = created_by_child(&ctx, "kept", true);
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

/// Sandbox "web" (persistent) beside "other", and a way to damage web's
/// record so that its `veth=` line names another interface: the bridge,
/// other's veth, `lo` or `eth0`. The done line's check covers only what
/// that line says (holder and addresses), so an edited veth= line passes
/// it: only a check of the veth name itself can catch this.
struct VethNotItsOwn {
    net: Network,
    other: Sandbox,
    web: Sandbox,
    record: PathBuf,
    full: String,
    line: String,
}

impl VethNotItsOwn {
    async fn new(ctx: &Ctx) -> VethNotItsOwn {
        let net = network(ctx).await;
        let other = net.sandbox("other").create().await.unwrap();
        let web = net.sandbox("web").persistent(true).create().await.unwrap();
        let record = record_path(ctx, "web");
        let full = std::fs::read_to_string(&record).unwrap();
        let line = format!("\nveth={}\n", web.host_interface());
        assert!(full.contains(&line), "{full}");
        VethNotItsOwn {
            net,
            other,
            web,
            record,
            full,
            line,
        }
    }

    fn targets(&self) -> [String; 4] {
        [BRIDGE, self.other.host_interface(), "lo", "eth0"].map(str::to_owned)
    }

    fn damage(&self, target: &str) {
        let damaged = self.full.replace(&self.line, &format!("\nveth={target}\n"));
        std::fs::write(&self.record, damaged).unwrap();
    }

    async fn remove(self) {
        self.web.remove().await.unwrap();
        self.other.remove().await.unwrap();
        self.net.remove().await.unwrap();
    }
}

#[test]
fn a_record_naming_a_veth_not_its_own_is_corrupt_while_its_holder_lives() {
    in_netns(|ctx| async move {
        let s = VethNotItsOwn::new(&ctx).await;
        let links_before = common::links(&ctx.nl).await;
        // A handle opened from the damaged record would delete that
        // interface on remove().
        for target in s.targets() {
            s.damage(&target);
            let what = format!("live, veth={target}");
            let err = assert_refused_everywhere(&s.net, "web", &s.record, &what).await;
            assert!(err.to_string().contains("veth"), "{what}: {err}");
            assert_eq!(common::links(&ctx.nl).await, links_before, "{what}");
        }
        std::fs::write(&s.record, &s.full).unwrap();
        s.remove().await;
    });
}

#[test]
fn a_record_naming_a_veth_not_its_own_makes_gc_delete_nothing_once_its_holder_died() {
    in_netns(|ctx| async move {
        let s = VethNotItsOwn::new(&ctx).await;
        // gc's branch for dead sandboxes deletes the veth the record names.
        common::sigkill(s.web.holder_pid());
        assert_eq!(s.web.wait().await, Phase::Failed);
        for target in s.targets() {
            s.damage(&target);
            let what = format!("dead, veth={target}");
            assert_refused_everywhere(&s.net, "web", &s.record, &what).await;
            let links = common::links(&ctx.nl).await;
            assert!(links.contains(BRIDGE), "{what}: the bridge was deleted");
            assert!(
                links.contains(s.other.host_interface()),
                "{what}: another sandbox's veth was deleted"
            );
            assert!(links.contains("lo"), "{what}");
        }
        // Repaired, the record is reclaimed as any dead one.
        std::fs::write(&s.record, &s.full).unwrap();
        let report = s.net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["web"], "{report:?}");
        assert_eq!(s.other.phase(), Phase::Running);
        s.remove().await;
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
        if !chown_to_nobody(&record) {
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

/// A child that stopped itself (SIGSTOP) half-way through creating sandbox
/// "making", after its veth is made and the store's lock released: a
/// create in progress. Killed on drop, so that a failing assertion does not
/// leave it stopped for ever.
struct StoppedCreator(Option<std::process::Child>);

impl StoppedCreator {
    fn start(ctx: &Ctx) -> StoppedCreator {
        use nix::sys::signal::Signal;
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let child = child_command(ctx, "create making dies-with-creator")
            .env("PODNET_FAILPOINT", "stop:veth")
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        let creator = StoppedCreator(Some(child));
        // Blocks this test's thread only; the child needs nothing from it.
        match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
            Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {}
            status => panic!("the child should stop at its failpoint: {status:?}"),
        }
        creator
    }

    /// Its creator dies half-way: the sandbox is Failed, and gc reclaims
    /// it all.
    async fn kill_and_reclaim(mut self, ctx: &Ctx, net: &Network) {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(9));
        assert_eq!(net.sandboxes().await.unwrap()[0].phase, Phase::Failed);
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["making"], "{report:?}");
        assert!(ports(&ctx.nl, BRIDGE).await.is_empty(), "{report:?}");
        // Its holder exits by its lifeline, or by gc's kill: soon.
        eventually("the holder ends", Duration::from_secs(5), async || {
            holders_named("making").is_empty()
        })
        .await;
        assert!(net.sandboxes().await.unwrap().is_empty());
    }
}

impl Drop for StoppedCreator {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_sandbox_another_process_is_making_is_pending() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let creator = StoppedCreator::start(&ctx);
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
        // Its holder's child execs alongside the create, stopped or not:
        // still Pending.
        eventually(
            "the holder has exec'd",
            Duration::from_secs(5),
            async || !holders_named("making").is_empty(),
        )
        .await;
        assert_eq!(net.sandboxes().await.unwrap()[0].phase, Phase::Pending);
        creator.kill_and_reclaim(&ctx, &net).await;
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_leaves_a_create_in_progress_alone() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let creator = StoppedCreator::start(&ctx);
        // Its record, its address, its holder and its veth.
        let report = net.gc().await.unwrap();
        assert!(report.is_empty(), "{report:?}");
        assert!(std::fs::symlink_metadata(reservation_path(&ctx, "10.88.0.2")).is_ok());
        assert_eq!(ports(&ctx.nl, BRIDGE).await.len(), 1);
        creator.kill_and_reclaim(&ctx, &net).await;
        net.remove().await.unwrap();
    });
}

#[test]
fn a_create_whose_creator_died_half_way_is_failed_and_gc_reclaims_it() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        StoppedCreator::start(&ctx)
            .kill_and_reclaim(&ctx, &net)
            .await;
        net.remove().await.unwrap();
    });
}

/// The test's network without DNS (so that a second build in the same
/// process serves nothing twice).
async fn network_without_dns(ctx: &Ctx) -> Network {
    common::network_builder(&ctx.state, BRIDGE, &[common::SUBNET])
        .dns(false)
        .build()
        .await
        .expect("build network")
}

/// Leave in the test's store what a power loss can leave of a sandbox
/// "old" (an empty record, its address 10.88.0.2 reserved), and the note
/// of boot `boot`.
fn leave_what_a_power_loss_can(ctx: &Ctx, boot: &str) {
    let store = common::store_dir(ctx);
    std::fs::write(store.join("sandbox/old"), b"").unwrap();
    std::os::unix::fs::symlink("old@1-2-3", reservation_path(ctx, "10.88.0.2")).unwrap();
    std::fs::write(store.join("boot"), boot).unwrap();
}

#[test]
fn a_store_of_an_earlier_boot_is_emptied_when_its_network_is_built() {
    in_netns(|ctx| async move {
        drop(network_without_dns(&ctx).await);
        leave_what_a_power_loss_can(&ctx, "00000000-0000-0000-0000-000000000000");
        let egress_note = common::store_dir(&ctx).join("egress-made");
        std::fs::write(&egress_note, b"").unwrap();
        let net = network_without_dns(&ctx).await;
        assert!(net.sandboxes().await.unwrap().is_empty());
        assert!(
            !egress_note.exists(),
            "the note of a table of that boot stays"
        );
        let old = net
            .sandbox("old")
            .ip("10.88.0.2".parse().unwrap())
            .create()
            .await
            .unwrap();
        assert!(net.gc().await.unwrap().is_empty());
        old.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_store_noting_no_boot_is_kept_whole_when_its_network_is_built() {
    in_netns(|ctx| async move {
        drop(network_without_dns(&ctx).await);
        leave_what_a_power_loss_can(&ctx, "");
        let net = network_without_dns(&ctx).await;
        let listed = net.sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].phase, Phase::Unknown);
        let err = net
            .sandbox("new")
            .ip("10.88.0.2".parse().unwrap())
            .create()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AddressTaken { .. }), "{err}");
        std::fs::remove_file(record_path(&ctx, "old")).unwrap();
        net.gc().await.unwrap();
        net.remove().await.unwrap();
    });
}
