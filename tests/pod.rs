//! Pods: members and init members, restart policies and back-off, phases,
//! probes (startup, liveness, readiness; TCP, HTTP, exec), stopping, volumes,
//! hostname and IPC, events, bad settings. Real programs (`sh`, `python3`)
//! run as members, each test in a network namespace of its own (see
//! `common`).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, in_netns, network, network_builder, Ctx, BRIDGE, SUBNET};
use futures::StreamExt;
use podnet::{
    Error, EventKind, KillReason, Member, MemberState, Network, Output, Phase, Pod, PodBuilder,
    Probe, ProbeKind, RestartPolicy, Volume,
};

/// A directory for a test's files (mount points, flags), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(ctx: &Ctx) -> Scratch {
        let dir = ctx.state.with_extension("scratch");
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Read events until `stop` says so (and return them all, that one
/// included); fails after 30 s.
async fn events_until(pod: &Pod, stop: impl Fn(&EventKind) -> bool) -> Vec<EventKind> {
    let mut stream = Box::pin(pod.events());
    let mut seen = Vec::new();
    let read = async {
        while let Some(e) = stream.next().await {
            let done = stop(&e.kind);
            seen.push(e.kind);
            if done {
                return;
            }
        }
        panic!("the event stream ended");
    };
    if tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .is_err()
    {
        panic!("timed out waiting; events so far: {seen:#?}");
    }
    seen
}

/// No process is left in `target` (a PID, or a negated process group)
/// within 10 s: dead ones may wait a moment for their reaper.
async fn assert_gone(target: nix::unistd::Pid) {
    let alive = || nix::sys::signal::kill(target, None).is_ok();
    eventually(
        &format!("{target} ends"),
        Duration::from_secs(10),
        async || !alive(),
    )
    .await;
    assert_eq!(
        nix::sys::signal::kill(target, None),
        Err(nix::errno::Errno::ESRCH)
    );
}

/// The process group a member leads.
fn group_of(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(-i32::try_from(pid).unwrap())
}

fn sh(name: &str, script: &str) -> Member {
    Member::new(name, "sh").args(["-c", script])
}

fn fast(b: PodBuilder) -> PodBuilder {
    // A long maximum: back-off starts over only after a run of twice it.
    b.restart_backoff(Duration::from_millis(20), Duration::from_secs(10))
        .termination_grace_period(Duration::from_secs(5))
}

/// Remove `pod`, then `net`.
async fn remove(net: &Network, pod: Pod) {
    pod.remove().await.unwrap();
    net.remove().await.unwrap();
}

/// A pod "job" under OnFailure whose member "flaky" fails on its first two
/// runs and succeeds on the third; once it has succeeded, its events.
async fn flaky_job(net: &Network, scratch: &Scratch) -> (Pod, Vec<EventKind>) {
    let runs = scratch.path("runs");
    let script = format!(
        "echo run >> {f}; [ $(wc -l < {f}) -ge 3 ] || exit 1",
        f = runs.display()
    );
    let pod = fast(net.pod("job"))
        .restart_policy(RestartPolicy::OnFailure)
        .member(sh("flaky", &script))
        .start()
        .await
        .unwrap();
    assert_eq!(pod.wait().await, Phase::Succeeded);
    let events = events_until(&pod, |e| *e == EventKind::Phase(Phase::Succeeded)).await;
    (pod, events)
}

/// A started pod `name` of one member, `main`, that sleeps.
async fn sleeper(net: &Network, name: &str) -> Pod {
    fast(net.pod(name))
        .member(sh("main", "sleep 600"))
        .start()
        .await
        .unwrap()
}

#[test]
fn on_failure_restarts_a_failing_member_until_it_succeeds() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, events) = flaky_job(&net, &scratch).await;
        let m = pod.member("flaky").unwrap();
        assert_eq!(m.restarts, 2);
        assert!(matches!(m.state, MemberState::Terminated { status } if status.success()));
        let restarts: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                EventKind::Started { restarts, .. } => Some(*restarts),
                _ => None,
            })
            .collect();
        assert_eq!(restarts, [0, 1, 2]);
        remove(&net, pod).await;
    });
}

#[test]
fn restarts_back_off_exponentially() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, events) = flaky_job(&net, &scratch).await;
        let backoffs = events
            .iter()
            .filter(|e| matches!(e, EventKind::BackOff { .. }))
            .count();
        assert_eq!(backoffs, 2, "{events:#?}");
        // 20 ms, then 40 ms.
        let delays: Vec<Duration> = events
            .iter()
            .filter_map(|e| match e {
                EventKind::BackOff { delay, .. } => Some(*delay),
                _ => None,
            })
            .collect();
        assert_eq!(
            delays,
            [Duration::from_millis(20), Duration::from_millis(40)]
        );
        remove(&net, pod).await;
    });
}

#[test]
fn never_ends_failed_and_keeps_the_exit_status() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = fast(net.pod("job"))
            .restart_policy(RestartPolicy::Never)
            .member(sh("ok", "exit 0"))
            .member(sh("bad", "sleep 0.1; exit 3"))
            .start()
            .await
            .unwrap();
        assert_eq!(pod.wait().await, Phase::Failed);
        assert_eq!(pod.phase(), Phase::Failed);
        let bad = pod.member("bad").unwrap();
        assert_eq!(bad.restarts, 0);
        assert_eq!(bad.last_exit.unwrap().code(), Some(3));
        remove(&net, pod).await;
    });
}

/// A pod "job" under Never: init members "one" and "two" append their
/// names to a log, then "main" checks the log says one, two and "side"
/// sleeps a moment; all exit 0. Once it has succeeded, its events, read
/// from the start although read late.
async fn all_zero(net: &Network, scratch: &Scratch) -> (Pod, Vec<EventKind>) {
    let log = scratch.path("log");
    let append = |word: &str| format!("echo {word} >> {}", log.display());
    let check = format!(
        "[ \"$(cat {})\" = \"$(printf 'one\\ntwo')\" ]",
        log.display()
    );
    let pod = fast(net.pod("job"))
        .restart_policy(RestartPolicy::Never)
        .init_member(sh("one", &append("one")))
        .init_member(sh("two", &append("two")))
        .member(sh("main", &check))
        .member(sh("side", "sleep 0.2"))
        .start()
        .await
        .unwrap();
    assert_eq!(pod.wait().await, Phase::Succeeded);
    let events = events_until(&pod, |e| *e == EventKind::Phase(Phase::Succeeded)).await;
    (pod, events)
}

/// Where in `events` the first that `f` matches is.
fn pos(events: &[EventKind], f: &dyn Fn(&EventKind) -> bool) -> usize {
    events
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("{events:#?}"))
}

fn started(m: &'static str) -> impl Fn(&EventKind) -> bool {
    move |e| matches!(e, EventKind::Started { member, .. } if member == m)
}

fn exited_ok(m: &'static str) -> impl Fn(&EventKind) -> bool {
    move |e| matches!(e, EventKind::Exited { member, status } if member == m && status.success())
}

#[test]
fn a_late_subscriber_reads_a_pods_phases_from_the_start() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, events) = all_zero(&net, &scratch).await;
        let phases: Vec<&EventKind> = events
            .iter()
            .filter(|e| matches!(e, EventKind::Phase(_)))
            .collect();
        assert_eq!(
            phases,
            [
                &EventKind::Phase(Phase::Pending),
                &EventKind::Phase(Phase::Running),
                &EventKind::Phase(Phase::Succeeded)
            ],
            "{events:#?}"
        );
        remove(&net, pod).await;
    });
}

#[test]
fn init_members_run_one_after_the_other_before_the_rest() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, events) = all_zero(&net, &scratch).await;
        let at = |f: &dyn Fn(&EventKind) -> bool| pos(&events, f);
        assert!(at(&started("one")) < at(&exited_ok("one")));
        assert!(at(&exited_ok("one")) < at(&started("two")));
        assert!(at(&exited_ok("two")) < at(&started("main")));
        assert!(at(&exited_ok("two")) < at(&started("side")));
        remove(&net, pod).await;
    });
}

#[test]
fn a_pod_runs_once_its_members_started_and_succeeds_once_all_exited_zero() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, events) = all_zero(&net, &scratch).await;
        let at = |f: &dyn Fn(&EventKind) -> bool| pos(&events, f);
        let running = at(&|e| *e == EventKind::Phase(Phase::Running));
        assert!(at(&started("main")) < running && at(&started("side")) < running);
        let succeeded = at(&|e| *e == EventKind::Phase(Phase::Succeeded));
        assert!(at(&exited_ok("main")) < succeeded && at(&exited_ok("side")) < succeeded);
        remove(&net, pod).await;
    });
}

#[test]
fn the_event_stream_of_a_pod_ends_when_it_is_removed() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, events) = all_zero(&net, &scratch).await;
        let mut stream = Box::pin(pod.events());
        pod.remove().await.unwrap();
        let rest: Vec<_> =
            tokio::time::timeout(Duration::from_secs(10), stream.by_ref().collect::<Vec<_>>())
                .await
                .expect("the stream ends after remove");
        assert_eq!(rest.len(), events.len());
        net.remove().await.unwrap();
    });
}

#[test]
fn a_failed_init_member_under_never_fails_the_pod_and_nothing_else_starts() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = fast(net.pod("job"))
            .restart_policy(RestartPolicy::Never)
            .init_member(sh("setup", "exit 2"))
            .member(sh("main", "exit 0"))
            .start()
            .await
            .unwrap();
        assert_eq!(pod.wait().await, Phase::Failed);
        let events = events_until(&pod, |e| *e == EventKind::Phase(Phase::Failed)).await;
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, EventKind::Started { member, .. } if member == "main")),
            "{events:#?}"
        );
        assert!(matches!(
            pod.member("main").unwrap().state,
            MemberState::Terminated { .. }
        ));
        remove(&net, pod).await;
    });
}

/// An HTTP server: `/healthz` answers 200 for the first `healthy` requests,
/// then the server stops answering (it accepts nothing more);
/// `/ready` answers 200 while `flag` exists, else 503.
fn server(port: u16, healthy: u32, flag: &Path) -> Member {
    let script = format!(
        r#"
import http.server, os, socketserver, time
n = 0
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        global n
        if self.path == "/healthz":
            n += 1
            if n > {healthy}:
                time.sleep(3600)
            code = 200
        else:
            code = 200 if os.path.exists({flag:?}) else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer(("0.0.0.0", {port}), H).serve_forever()
"#,
        flag = flag.display().to_string()
    );
    Member::new("web", "python3").args(["-c", &script])
}

#[test]
fn a_liveness_probe_restarts_a_server_that_stops_answering() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        // The startup probe holds the liveness probe until the server listens.
        let web = server(8080, 2, &scratch.path("unused"))
            .startup_probe(
                Probe::tcp(8080)
                    .period(Duration::from_millis(50))
                    .failure_threshold(200),
            )
            .liveness_probe(
                Probe::http_get(8080, "/healthz")
                    .period(Duration::from_millis(100))
                    .timeout(Duration::from_secs(1))
                    .failure_threshold(2),
            );
        let pod = fast(net.pod("web")).member(web).start().await.unwrap();
        let events = events_until(&pod, |e| {
            matches!(e, EventKind::Started { restarts: 1, .. })
        })
        .await;
        let kill = pos(&events, &|e| {
            matches!(
                e,
                EventKind::Killing {
                    reason: KillReason::Liveness,
                    ..
                }
            )
        });
        let failing = pos(
            &events,
            &|e| matches!(e, EventKind::Probe { probe: ProbeKind::Liveness, passing: false, detail, .. } if detail.contains("timed out")),
        );
        assert!(failing < kill);
        assert!(events.iter().any(|e| matches!(
            e,
            EventKind::Probe { probe: ProbeKind::Liveness, passing: true, detail, .. } if detail == "HTTP 200"
        )));
        assert_eq!(pod.member("web").unwrap().restarts, 1);
        assert_eq!(pod.phase(), Phase::Running);
        remove(&net, pod).await;
    });
}

#[test]
fn a_readiness_probe_flips_ready_both_ways() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let flag = scratch.path("ready");
        let web = server(8080, u32::MAX, &flag).readiness_probe(
            Probe::http_get(8080, "/ready")
                .period(Duration::from_millis(50))
                .failure_threshold(1),
        );
        // A second member without probes: ready as soon as it runs.
        let pod = fast(net.pod("web"))
            .member(web)
            .member(sh("idle", "sleep 600"))
            .start()
            .await
            .unwrap();
        let events = events_until(&pod, |e| {
            matches!(
                e,
                EventKind::Probe {
                    probe: ProbeKind::Readiness,
                    passing: false,
                    ..
                }
            )
        })
        .await;
        assert!(!events.contains(&EventKind::Ready(true)), "{events:#?}");
        assert!(!pod.ready());
        std::fs::write(&flag, "").unwrap();
        events_until(&pod, |e| *e == EventKind::Ready(true)).await;
        assert!(pod.ready());
        assert!(pod.member("web").unwrap().ready);
        std::fs::remove_file(&flag).unwrap();
        let events = events_until(&pod, |e| *e == EventKind::Ready(false)).await;
        // The log replays: the last Ready event is the false one, after a true.
        let readies: Vec<&EventKind> = events
            .iter()
            .filter(|e| matches!(e, EventKind::Ready(_)))
            .collect();
        assert_eq!(readies, [&EventKind::Ready(true), &EventKind::Ready(false)]);
        assert!(!pod.ready());
        assert_eq!(pod.phase(), Phase::Running, "readiness never restarts");
        remove(&net, pod).await;
    });
}

/// A probe every 50 ms that fails after four failures.
fn every_50_ms(p: Probe) -> Probe {
    p.period(Duration::from_millis(50)).failure_threshold(4)
}

#[test]
fn a_startup_probe_holds_the_readiness_probe_until_it_passes() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let started = scratch.path("started");
        // Creates its flag after a while: the startup probe passes, then
        // the TCP readiness probe is run and passes.
        let slow = Member::new("slow", "python3")
            .args([
                "-c",
                &format!(
                    "import socket, time; time.sleep(0.3); open({:?}, 'w').close(); \
                     s = socket.socket(); s.bind(('0.0.0.0', 7000)); s.listen(); time.sleep(600)",
                    started.display().to_string()
                ),
            ])
            .startup_probe(
                every_50_ms(Probe::exec(["test", "-e", started.to_str().unwrap()]))
                    .failure_threshold(400),
            )
            .readiness_probe(every_50_ms(Probe::tcp(7000)));
        let pod = fast(net.pod("web"))
            .restart_policy(RestartPolicy::OnFailure)
            .member(slow)
            .start()
            .await
            .unwrap();
        let events = events_until(&pod, |e| {
            matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: true, .. } if member == "slow")
        })
        .await;
        let startup_ok = pos(
            &events,
            &|e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Startup, passing: true, .. } if member == "slow"),
        );
        let ready_ok = pos(
            &events,
            &|e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: true, .. } if member == "slow"),
        );
        assert!(startup_ok < ready_ok);
        assert!(!events.iter().any(|e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: false, .. } if member == "slow")), "no readiness check before startup passed: {events:#?}");
        remove(&net, pod).await;
    });
}

#[test]
fn a_member_whose_startup_probe_never_passes_is_killed_and_restarted() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        // Ended after four failures, then restarted.
        let never = sh("never", "sleep 600").startup_probe(every_50_ms(Probe::exec(["false"])));
        let pod = fast(net.pod("web"))
            .restart_policy(RestartPolicy::OnFailure)
            .member(never)
            .start()
            .await
            .unwrap();
        let events = events_until(
            &pod,
            |e| matches!(e, EventKind::Started { member, restarts: 1, .. } if member == "never"),
        )
        .await;
        assert!(events.iter().any(|e| matches!(e, EventKind::Killing { member, reason: KillReason::Startup } if member == "never")));
        remove(&net, pod).await;
    });
}

/// What [`shared_volumes`] mounted where.
struct Mounts {
    /// The writer's mount of volume "shared".
    a: PathBuf,
    /// The reader's (read-only) mount of "shared".
    b: PathBuf,
    /// The writer's mount of the 1 MiB tmpfs volume "mem".
    m: PathBuf,
    /// Where the reader's stdout went.
    out: PathBuf,
}

/// A pod "vol" under Never with a volume "shared" and a 1 MiB tmpfs
/// volume "mem": init member "writer" writes a message to shared (at
/// `a`) and the file system type of mem (at `m`) and fails to write
/// 2 MiB to mem; "reader" prints both from its read-only mount of shared
/// (at `b`); "ro" cannot write there. Once it has succeeded.
async fn shared_volumes(net: &Network, scratch: &Scratch) -> (Pod, Mounts) {
    let (a, b, m) = (scratch.dir("a"), scratch.dir("b"), scratch.dir("m"));
    let out = scratch.path("out");
    let writer = sh(
        "writer",
        &format!(
            "echo hello > {a}/msg && stat -f -c %T {m} > {a}/fstype && \
             ! dd if=/dev/zero of={m}/big bs=65536 count=32 2>/dev/null",
            a = a.display(),
            m = m.display()
        ),
    )
    .mount("shared", &a)
    .mount("mem", &m);
    let reader = sh(
        "reader",
        &format!("cat {b}/msg {b}/fstype", b = b.display()),
    )
    .mount_read_only("shared", &b)
    .stdout(Output::File(out.clone()));
    let pod = fast(net.pod("vol"))
        .restart_policy(RestartPolicy::Never)
        .volume(Volume::new("shared"))
        .volume(Volume::tmpfs("mem", 1 << 20))
        .init_member(writer)
        .member(reader)
        .member(
            sh("ro", &format!("! touch {}/nope 2>/dev/null", b.display()))
                .mount_read_only("shared", &b),
        )
        .start()
        .await
        .unwrap();
    assert_eq!(pod.wait().await, Phase::Succeeded, "{:#?}", pod.members());
    (pod, Mounts { a, b, m, out })
}

/// `to` as a path relative to the working directory.
fn relative_to_cwd(to: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.join(to.strip_prefix("/").unwrap())
}

#[test]
fn a_pod_on_a_relative_state_dir_mounts_its_volumes() {
    in_netns(|ctx| async move {
        let relative = relative_to_cwd(&ctx.state);
        assert!(relative.is_relative());
        let net = network_builder(&relative, BRIDGE, &[SUBNET])
            .build()
            .await
            .unwrap();
        let scratch = Scratch::new(&ctx);
        let dir = scratch.dir("v");
        let pod = fast(net.pod("vol"))
            .restart_policy(RestartPolicy::Never)
            .volume(Volume::new("v"))
            .member(sh("w", &format!("echo hi > {}/f", dir.display())).mount("v", &dir))
            .start()
            .await
            .unwrap();
        assert_eq!(pod.wait().await, Phase::Succeeded, "{:#?}", pod.members());
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn members_share_volumes_at_different_paths_read_only_where_asked() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, mounts) = shared_volumes(&net, &scratch).await;
        assert_eq!(
            std::fs::read_to_string(&mounts.out).unwrap(),
            "hello\ntmpfs\n"
        );
        remove(&net, pod).await;
    });
}

#[test]
fn volume_mounts_live_in_the_pods_mount_namespace_only() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, mounts) = shared_volumes(&net, &scratch).await;
        for dir in [&mounts.a, &mounts.b, &mounts.m] {
            assert_eq!(
                std::fs::read_dir(dir).unwrap().count(),
                0,
                "{}",
                dir.display()
            );
        }
        remove(&net, pod).await;
    });
}

#[test]
fn a_volume_directory_is_in_the_state_directory_until_removal() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, _) = shared_volumes(&net, &scratch).await;
        assert!(!common::state_entries(&ctx, &["volumes"]).is_empty());
        pod.remove().await.unwrap();
        assert!(common::state_entries(&ctx, &["volumes"]).is_empty());
        net.remove().await.unwrap();
    });
}

/// A member `name` that prints its hostname and IPC namespace to a file
/// of its name in `scratch`.
fn report(scratch: &Scratch, name: &str) -> Member {
    sh(name, "hostname; readlink /proc/self/ns/ipc").stdout(Output::File(scratch.path(name)))
}

/// This thread's IPC namespace.
fn our_ipc() -> String {
    let ns = std::fs::read_link("/proc/thread-self/ns/ipc").unwrap();
    ns.to_str().unwrap().to_owned()
}

/// A pod "named" under Never with members "one" and "two" that [`report`];
/// once it has succeeded.
async fn named(net: &Network, scratch: &Scratch) -> Pod {
    let pod = fast(net.pod("named"))
        .restart_policy(RestartPolicy::Never)
        .member(report(scratch, "one"))
        .member(report(scratch, "two"))
        .start()
        .await
        .unwrap();
    assert_eq!(pod.wait().await, Phase::Succeeded);
    pod
}

#[test]
fn members_see_the_pod_name_as_hostname_and_share_an_ipc_namespace_of_the_pod() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let pod = named(&net, &scratch).await;
        let one = std::fs::read_to_string(scratch.path("one")).unwrap();
        let two = std::fs::read_to_string(scratch.path("two")).unwrap();
        assert_eq!(one, two, "same hostname, same IPC namespace");
        let mut lines = one.lines();
        assert_eq!(lines.next(), Some("named"));
        assert_ne!(lines.next().unwrap(), our_ipc());
        remove(&net, pod).await;
    });
}

#[test]
fn commands_joined_to_a_pod_see_its_hostname() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let pod = named(&net, &scratch).await;
        let out = pod.command("hostname").output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "named\n");
        remove(&net, pod).await;
    });
}

#[test]
fn a_pod_may_have_a_hostname_of_its_own() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let pod = fast(net.pod("named"))
            .hostname("custom")
            .restart_policy(RestartPolicy::Never)
            .member(report(&scratch, "three"))
            .start()
            .await
            .unwrap();
        pod.wait().await;
        let three = std::fs::read_to_string(scratch.path("three")).unwrap();
        assert_eq!(three.lines().next(), Some("custom"));
        remove(&net, pod).await;
    });
}

#[test]
fn a_pod_may_share_neither_uts_nor_ipc() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let pod = fast(net.pod("named"))
            .share_uts(false)
            .share_ipc(false)
            .restart_policy(RestartPolicy::Never)
            .member(report(&scratch, "four"))
            .start()
            .await
            .unwrap();
        pod.wait().await;
        let four = std::fs::read_to_string(scratch.path("four")).unwrap();
        let host = nix::unistd::gethostname().unwrap();
        let mut lines = four.lines();
        assert_eq!(lines.next(), host.to_str());
        assert_eq!(lines.next(), Some(&*our_ipc()));
        remove(&net, pod).await;
    });
}

/// A pod "stop" with a grace period of 300 ms: "stubborn" ignores SIGTERM
/// (and so does the `sleep` it starts), "polite" does not. Once stubborn
/// ignores it: the pod and stubborn's PID.
async fn stubborn_and_polite(net: &Network, scratch: &Scratch) -> (Pod, u32) {
    let flag = scratch.path("trapped");
    let pod = net
        .pod("stop")
        .termination_grace_period(Duration::from_millis(300))
        .member(sh(
            "stubborn",
            &format!("trap '' TERM; sleep 600 & touch {}; wait", flag.display()),
        ))
        .member(sh("polite", "sleep 600"))
        .start()
        .await
        .unwrap();
    eventually(
        "stubborn traps SIGTERM",
        Duration::from_secs(30),
        async || flag.exists(),
    )
    .await;
    let MemberState::Running { pid } = pod.member("stubborn").unwrap().state else {
        panic!("not running");
    };
    (pod, pid)
}

#[test]
fn stopping_a_member_sends_term_then_kill_after_the_grace_period_to_its_whole_group() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, pid) = stubborn_and_polite(&net, &scratch).await;
        let t = std::time::Instant::now();
        pod.stop_member("stubborn").await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "SIGKILL came early"
        );
        let m = pod.member("stubborn").unwrap();
        assert!(
            matches!(m.state, MemberState::Terminated { status } if status.signal() == Some(9)),
            "{m:?}"
        );
        // Its group is gone too (the sleep it started, once PID 1 reaps it).
        assert_gone(group_of(pid)).await;
        remove(&net, pod).await;
    });
}

#[test]
fn stopping_a_member_leaves_the_others_running() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, _) = stubborn_and_polite(&net, &scratch).await;
        pod.stop_member("stubborn").await.unwrap();
        assert!(matches!(
            pod.member("polite").unwrap().state,
            MemberState::Running { .. }
        ));
        assert_eq!(pod.phase(), Phase::Running);
        remove(&net, pod).await;
    });
}

#[test]
fn stopping_a_pod_ends_a_member_by_sigterm_and_restarts_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, _) = stubborn_and_polite(&net, &scratch).await;
        pod.stop().await;
        let polite = pod.member("polite").unwrap();
        assert!(
            matches!(polite.state, MemberState::Terminated { status } if status.signal() == Some(15))
        );
        assert_eq!(polite.restarts, 0);
        remove(&net, pod).await;
    });
}

#[test]
fn stopping_a_member_the_pod_does_not_have_is_not_found() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = sleeper(&net, "stop").await;
        assert!(matches!(
            pod.stop_member("nobody").await,
            Err(Error::NotFound { what: "member", .. })
        ));
        remove(&net, pod).await;
    });
}

#[test]
fn a_dead_holder_fails_the_pod_and_ends_its_members() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = sleeper(&net, "doomed").await;
        events_until(&pod, |e| *e == EventKind::Phase(Phase::Running)).await;
        common::sigkill(pod.sandbox().holder_pid());
        assert_eq!(pod.wait().await, Phase::Failed);
        let events = events_until(&pod, |e| matches!(e, EventKind::Exited { .. })).await;
        assert!(
            events.iter().any(
                |e| matches!(e, EventKind::HolderDied { status } if status.contains("SIGKILL"))
            ),
            "{events:#?}"
        );
        assert!(events.iter().any(|e| matches!(
            e,
            EventKind::Killing {
                reason: KillReason::HolderDied,
                ..
            }
        )));
        pod.stop().await;
        assert!(matches!(
            pod.member("main").unwrap().state,
            MemberState::Terminated { .. }
        ));
        remove(&net, pod).await;
    });
}

#[test]
fn dropping_a_pod_kills_its_members() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = fast(net.pod("drop"))
            .remove_on_drop(true)
            .member(sh("main", "sleep 600 & wait"))
            .start()
            .await
            .unwrap();
        events_until(&pod, |e| *e == EventKind::Phase(Phase::Running)).await;
        let MemberState::Running { pid } = pod.member("main").unwrap().state else {
            panic!("not running");
        };
        drop(pod);
        assert_gone(group_of(pid)).await;
        // remove_on_drop removes the sandbox in the background.
        eventually(
            "the sandbox is removed",
            Duration::from_secs(10),
            async || net.sandboxes().await.unwrap().is_empty(),
        )
        .await;
        assert_eq!(net.sandboxes().await.unwrap(), []);
        net.remove().await.unwrap();
    });
}

/// Each of `cases` (what, builder) is refused as invalid, and nothing
/// changed: links, addresses, state, holders.
async fn assert_refused(ctx: &Ctx, cases: Vec<(&str, PodBuilder)>) {
    let before = common::snapshot(&ctx.nl).await;
    let files = common::tree_under(&ctx.state);
    let holders = common::holders();
    for (what, builder) in cases {
        match builder.start().await {
            Err(Error::InvalidConfig { .. } | Error::InvalidName { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(common::snapshot(&ctx.nl).await, before);
    assert_eq!(common::tree_under(&ctx.state), files);
    assert_eq!(common::holders(), holders);
}

fn ok() -> Member {
    sh("main", "true")
}

#[test]
fn bad_member_lists_are_refused_and_change_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let cases = vec![
            ("no members", net.pod("p")),
            ("duplicate member", net.pod("p").member(ok()).member(ok())),
            ("bad member name", net.pod("p").member(sh("Main", "true"))),
        ];
        assert_refused(&ctx, cases).await;
        net.remove().await.unwrap();
    });
}

#[test]
fn bad_volumes_and_mounts_are_refused_and_change_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let dir = scratch.dir("d");
        let cases = vec![
            (
                "undeclared volume",
                net.pod("p").member(ok().mount("v", &dir)),
            ),
            (
                "missing mount path",
                net.pod("p")
                    .volume(Volume::new("v"))
                    .member(ok().mount("v", scratch.path("missing"))),
            ),
            (
                "relative mount path",
                net.pod("p")
                    .volume(Volume::new("v"))
                    .member(ok().mount("v", "d")),
            ),
            (
                "duplicate volume",
                net.pod("p")
                    .volume(Volume::new("v"))
                    .volume(Volume::new("v"))
                    .member(ok()),
            ),
            (
                "zero tmpfs",
                net.pod("p").volume(Volume::tmpfs("v", 0)).member(ok()),
            ),
        ];
        assert_refused(&ctx, cases).await;
        net.remove().await.unwrap();
    });
}

#[test]
fn bad_probes_hostnames_back_offs_and_pod_names_are_refused_and_change_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let cases = vec![
            (
                "bad probe",
                net.pod("p")
                    .member(ok().liveness_probe(Probe::tcp(80).success_threshold(2))),
            ),
            (
                "hostname without uts",
                net.pod("p").hostname("h").share_uts(false).member(ok()),
            ),
            ("bad hostname", net.pod("p").hostname("a_b").member(ok())),
            (
                "bad back-off",
                net.pod("p")
                    .restart_backoff(Duration::ZERO, Duration::ZERO)
                    .member(ok()),
            ),
            ("bad pod name", net.pod("P").member(ok())),
        ];
        assert_refused(&ctx, cases).await;
        net.remove().await.unwrap();
    });
}

#[test]
fn a_member_that_cannot_start_counts_as_exit_127() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = fast(net.pod("job"))
            .restart_policy(RestartPolicy::Never)
            .member(Member::new("ghost", "/nonexistent/program"))
            .start()
            .await
            .unwrap();
        assert_eq!(pod.wait().await, Phase::Failed);
        let events = events_until(&pod, |e| *e == EventKind::Phase(Phase::Failed)).await;
        assert!(events.iter().any(|e| matches!(e, EventKind::FailedToStart { member, error } if member == "ghost" && error.contains("nonexistent"))), "{events:#?}");
        assert_eq!(
            pod.member("ghost").unwrap().last_exit.unwrap().code(),
            Some(127)
        );
        remove(&net, pod).await;
    });
}

#[test]
fn gc_removes_the_volumes_of_a_pod_whose_holder_died() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let pod = fast(net.pod("gone"))
            .volume(Volume::new("v"))
            .member(sh("main", "sleep 600").mount("v", scratch.dir("v")))
            .start()
            .await
            .unwrap();
        common::sigkill(pod.sandbox().holder_pid());
        assert_eq!(pod.wait().await, Phase::Failed);
        pod.stop().await;
        // The handle is dropped without remove: gc reclaims the rest.
        drop(pod);
        let report = net.gc().await.unwrap();
        assert_eq!(report.sandboxes, ["gone"]);
        assert_eq!(report.volumes.len(), 1, "{report:?}");
        assert!(!report.volumes[0].exists());
        net.remove().await.unwrap();
    });
}

/// A pod "loop" (Always, the default) whose init member appends to
/// `runs` and whose main member exits 0 at once.
async fn looping(net: &Network, runs: &Path) -> Pod {
    fast(net.pod("loop"))
        .init_member(sh("init", &format!("echo run >> {}", runs.display())))
        .member(sh("main", "exit 0"))
        .start()
        .await
        .unwrap()
}

#[test]
fn always_restarts_a_member_that_succeeded_but_not_an_init_member() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let runs = scratch.path("init-runs");
        let pod = looping(&net, &runs).await;
        events_until(
            &pod,
            |e| matches!(e, EventKind::Started { member, restarts: 2, .. } if member == "main"),
        )
        .await;
        assert_eq!(pod.phase(), Phase::Running);
        // The init member ran once: it succeeded.
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
        let init = pod.member("init").unwrap();
        assert_eq!(init.restarts, 0);
        assert!(matches!(init.state, MemberState::Terminated { status } if status.success()));
        remove(&net, pod).await;
    });
}

#[test]
fn a_stop_during_a_back_off_ends_the_member_there_without_a_restart() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let pod = looping(&net, &scratch.path("init-runs")).await;
        events_until(&pod, |e| matches!(e, EventKind::BackOff { .. })).await;
        pod.stop().await;
        let main = pod.member("main").unwrap();
        assert!(
            matches!(main.state, MemberState::Terminated { .. }),
            "{main:?}"
        );
        let before = main.restarts;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pod.member("main").unwrap().restarts, before);
        remove(&net, pod).await;
    });
}

#[test]
fn stopping_members_that_wait_behind_a_crash_looping_init_member_returns() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = fast(net.pod("stuck"))
            .restart_policy(RestartPolicy::OnFailure)
            .init_member(sh("init", "exit 1"))
            .member(sh("main", "sleep 600"))
            .start()
            .await
            .unwrap();
        events_until(&pod, |e| matches!(e, EventKind::BackOff { .. })).await;
        assert_eq!(
            pod.phase(),
            Phase::Pending,
            "init crash loops keep a pod Pending"
        );
        tokio::time::timeout(Duration::from_secs(10), pod.stop_member("main"))
            .await
            .expect("stop_member of a member that never started returns")
            .unwrap();
        assert!(matches!(
            pod.member("main").unwrap().state,
            MemberState::Terminated { .. }
        ));
        tokio::time::timeout(Duration::from_secs(10), pod.remove())
            .await
            .expect("remove returns")
            .unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn what_a_member_started_goes_when_it_exits() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let pids = scratch.path("pids");
        // Leaves a background sleep behind, in its process group.
        let pod = fast(net.pod("leaky"))
            .restart_policy(RestartPolicy::Never)
            .member(sh(
                "main",
                &format!("sleep 600 & echo $! > {}", pids.display()),
            ))
            .start()
            .await
            .unwrap();
        pod.wait().await;
        let pid: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_gone(nix::unistd::Pid::from_raw(pid)).await;
        remove(&net, pod).await;
    });
}

#[test]
fn an_http_probe_takes_a_redirect_for_a_pass() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let redirect = r#"
import http.server, signal, socketserver, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()
socketserver.TCPServer.allow_reuse_address = True
socketserver.TCPServer(("0.0.0.0", 8080), H).serve_forever()
"#;
        let web = Member::new("web", "python3")
            .args(["-c", redirect])
            .readiness_probe(Probe::http_get(8080, "/").period(Duration::from_millis(50)));
        let pod = fast(net.pod("probes"))
            .restart_policy(RestartPolicy::OnFailure)
            .member(web)
            .start()
            .await
            .unwrap();
        events_until(&pod, |e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: true, detail } if member == "web" && detail == "HTTP 302")).await;
        remove(&net, pod).await;
    });
}

/// A pod "probes" under OnFailure with a member "hung" that exits 0 on
/// SIGTERM and whose liveness exec probe hangs (it writes its PID, its
/// process group's, to `probes` first and sleeps 5 s; the probe times out
/// after 200 ms); once hung has been restarted twice: the pod and its
/// events.
async fn hung(net: &Network, probes: &Path) -> (Pod, Vec<EventKind>) {
    let hung = sh("hung", "trap 'exit 0' TERM; while :; do sleep 0.05; done")
        .env("PROBE_SLEEP", "5")
        .liveness_probe(
            Probe::exec([
                "sh".to_owned(),
                "-c".to_owned(),
                format!("echo $$ >> {}; sleep $PROBE_SLEEP", probes.display()),
            ])
            .period(Duration::from_millis(50))
            .timeout(Duration::from_millis(200))
            .failure_threshold(1),
        );
    let pod = fast(net.pod("probes"))
        .restart_policy(RestartPolicy::OnFailure)
        .member(hung)
        .start()
        .await
        .unwrap();
    let events = events_until(
        &pod,
        |e| matches!(e, EventKind::Started { member, restarts: 2, .. } if member == "hung"),
    )
    .await;
    (pod, events)
}

#[test]
fn a_hung_exec_probe_times_out_and_its_kill_restarts_even_a_clean_exit_under_on_failure() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let (pod, events) = hung(&net, &scratch.path("probes")).await;
        let has = |f: &dyn Fn(&EventKind) -> bool| events.iter().any(f);
        assert!(
            has(
                &|e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Liveness, passing: false, detail } if member == "hung" && detail.contains("timed out"))
            ),
            "{events:#?}"
        );
        assert!(
            has(
                &|e| matches!(e, EventKind::Exited { member, status } if member == "hung" && status.success())
            ),
            "{events:#?}"
        );
        remove(&net, pod).await;
    });
}

#[test]
fn a_timed_out_exec_probe_has_its_process_group_ended() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let probes = scratch.path("probes");
        let (pod, _) = hung(&net, &probes).await;
        // Each timed-out probe's process group (its sh and its sleep) was
        // ended; the last probe may still be under way.
        let groups = std::fs::read_to_string(&probes).unwrap();
        let groups: Vec<u32> = groups.lines().map(|l| l.parse().unwrap()).collect();
        assert!(groups.len() >= 2, "{groups:?}");
        for pgid in &groups[..groups.len() - 1] {
            assert_gone(group_of(*pgid)).await;
        }
        remove(&net, pod).await;
    });
}

/// Each of `builders` fails to start as invalid configuration.
async fn assert_invalid_config(builders: impl IntoIterator<Item = PodBuilder>) {
    for builder in builders {
        assert!(matches!(
            builder.start().await,
            Err(Error::InvalidConfig { .. })
        ));
    }
}

#[test]
fn members_mounting_one_path_differently_are_refused() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let dir = scratch.dir("d");
        assert_invalid_config([
            net.pod("p")
                .volume(Volume::new("a"))
                .volume(Volume::new("b"))
                .member(sh("one", "true").mount("a", &dir))
                .member(sh("two", "true").mount("b", &dir)),
            net.pod("p")
                .volume(Volume::new("a"))
                .member(sh("one", "true").mount("a", &dir))
                .member(sh("two", "true").mount_read_only("a", &dir)),
            net.pod("p")
                .volume(Volume::new("a"))
                .member(sh("one", "true").mount("a", "/")),
        ])
        .await;
        net.remove().await.unwrap();
    });
}

#[test]
fn a_relative_directory_an_output_in_no_directory_or_a_nul_in_an_argument_is_refused() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        assert_invalid_config([
            net.pod("p")
                .member(sh("one", "true").current_dir("relative")),
            net.pod("p")
                .member(sh("one", "true").stdout(Output::File(scratch.path("missing/out")))),
            net.pod("p").member(sh("one", "true").arg("a\0b")),
        ])
        .await;
        net.remove().await.unwrap();
    });
}

#[test]
fn members_mounting_one_volume_at_one_path_alike_are_fine() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let dir = scratch.dir("d");
        let pod = fast(net.pod("p"))
            .restart_policy(RestartPolicy::Never)
            .volume(Volume::new("a"))
            .member(sh("one", "true").mount("a", &dir))
            .member(sh("two", "true").mount("a", &dir))
            .start()
            .await
            .unwrap();
        assert_eq!(pod.wait().await, Phase::Succeeded);
        remove(&net, pod).await;
    });
}

#[test]
fn a_pod_publishes_a_port_that_reaches_its_ready_server() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let flag = scratch.path("ready");
        std::fs::write(&flag, "").unwrap();
        let web = server(8080, u32::MAX, &flag)
            .readiness_probe(Probe::http_get(8080, "/ready").period(Duration::from_millis(50)));
        let pod = fast(net.pod("web"))
            .port(podnet::PortMapping::tcp(0, 8080).host_ip("127.0.0.1".parse().unwrap()))
            .member(web)
            .start()
            .await
            .unwrap();
        events_until(&pod, |e| *e == EventKind::Ready(true)).await;
        let published = pod.sandbox().ports();
        assert_eq!(published.len(), 1);
        assert_ne!(published[0].host.port(), 0);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(published[0].host)
            .await
            .unwrap();
        s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.0 200"), "{got}");
        pod.remove().await.unwrap();
        // The host port is free again (within moments: a child another
        // test's thread forked may hold a copy of the socket until its exec).
        eventually(
            "the host port is free",
            Duration::from_secs(5),
            async || std::net::TcpListener::bind(published[0].host).is_ok(),
        )
        .await;
        net.remove().await.unwrap();
    });
}

#[test]
fn a_volume_that_may_not_be_mounted_is_a_clear_error_and_leaves_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let before = common::snapshot(&ctx.nl).await;
        common::refuse_on_this_thread(nix::libc::SYS_mount, nix::libc::EPERM);
        let err = fast(net.pod("vol"))
            .volume(Volume::tmpfs("mem", 1 << 20))
            .member(sh("m", "true").mount("mem", "/mnt"))
            .start()
            .await
            .unwrap_err();
        // Not a silent fallback to a plain directory: the mount's refusal,
        // named.
        assert!(matches!(err, Error::NotPermitted { .. }), "{err}");
        assert!(err.to_string().contains("mount"), "{err}");
        // The sandbox and the volume's directory went again.
        assert_eq!(common::snapshot(&ctx.nl).await, before);
        let left = common::state_entries(&ctx, &["addr", "sandbox", "volumes"]);
        assert!(left.is_empty(), "{left:?}");
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}
