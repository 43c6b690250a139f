//! Pods: members, restart policy, phases, probes, volumes, hostname and
//! IPC, events. Real programs (`sh`, `python3`) run as members, each test in
//! a network namespace of its own (see `common`).
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{in_netns, Ctx};
use futures::StreamExt;
use podnet::{
    Error, EventKind, KillReason, Member, MemberState, Network, Output, Phase, Pod, Probe,
    ProbeKind, RestartPolicy, Volume,
};

async fn network(ctx: &Ctx) -> Network {
    common::build_network(&ctx.state, "pn0", "10.88.0.0/16")
        .await
        .expect("build network")
}

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

/// Wait (up to 10 s) until no process is left in `target` (a PID, or a
/// negated process group): dead ones may wait a moment for their reaper.
async fn gone(target: nix::unistd::Pid) {
    let t = std::time::Instant::now();
    while nix::sys::signal::kill(target, None).is_ok() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sh(name: &str, script: &str) -> Member {
    Member::new(name, "sh").args(["-c", script])
}

fn fast(b: podnet::PodBuilder) -> podnet::PodBuilder {
    // A long maximum: back-off starts over only after a run of twice it.
    b.restart_backoff(Duration::from_millis(20), Duration::from_secs(10))
        .termination_grace_period(Duration::from_secs(5))
}

#[test]
fn on_failure_restarts_a_failing_member_until_it_succeeds() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let runs = scratch.path("runs");
        // Fails on its first two runs, succeeds on the third.
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
        let m = pod.member("flaky").unwrap();
        assert_eq!(m.restarts, 2);
        assert!(matches!(m.state, MemberState::Terminated { status } if status.success()));
        let events = events_until(&pod, |e| *e == EventKind::Phase(Phase::Succeeded)).await;
        let backoffs = events
            .iter()
            .filter(|e| matches!(e, EventKind::BackOff { .. }))
            .count();
        assert_eq!(backoffs, 2, "{events:#?}");
        let restarts: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                EventKind::Started { restarts, .. } => Some(*restarts),
                _ => None,
            })
            .collect();
        assert_eq!(restarts, [0, 1, 2]);
        // Exponential back-off: 20 ms, then 40 ms.
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn all_zero_ends_succeeded_and_the_events_tell_the_story_in_order() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
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
        // The whole story, from the start, even though we subscribed late.
        let events = events_until(&pod, |e| *e == EventKind::Phase(Phase::Succeeded)).await;
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
        let pos = |f: &dyn Fn(&EventKind) -> bool| events.iter().position(f).unwrap();
        let started = |m: &'static str| move |e: &EventKind| matches!(e, EventKind::Started { member, .. } if member == m);
        let exited_ok = |m: &'static str| move |e: &EventKind| matches!(e, EventKind::Exited { member, status } if member == m && status.success());
        // Init members one after the other, then the rest.
        assert!(pos(&started("one")) < pos(&exited_ok("one")));
        assert!(pos(&exited_ok("one")) < pos(&started("two")));
        assert!(pos(&exited_ok("two")) < pos(&started("main")));
        assert!(pos(&exited_ok("two")) < pos(&started("side")));
        let running = pos(&|e| *e == EventKind::Phase(Phase::Running));
        assert!(pos(&started("main")) < running && pos(&started("side")) < running);
        let succeeded = pos(&|e| *e == EventKind::Phase(Phase::Succeeded));
        assert!(pos(&exited_ok("main")) < succeeded && pos(&exited_ok("side")) < succeeded);
        // The stream ends with the pod.
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

/// An HTTP server: `/healthz` answers 200 for the first `healthy` requests,
/// then the server stops answering (it accepts nothing more);
/// `/ready` answers 200 while `flag` exists, else 503. (A plain TCPServer:
/// `http.server.HTTPServer` looks its own name up in DNS when it binds,
/// which in a pod with no DNS server waits for the resolver's timeouts.)
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
        let kill = events
            .iter()
            .position(|e| {
                matches!(
                    e,
                    EventKind::Killing {
                        reason: KillReason::Liveness,
                        ..
                    }
                )
            })
            .unwrap_or_else(|| panic!("{events:#?}"));
        let failing = events
            .iter()
            .position(|e| {
                matches!(e, EventKind::Probe { probe: ProbeKind::Liveness, passing: false, detail, .. } if detail.contains("timed out"))
            })
            .unwrap_or_else(|| panic!("{events:#?}"));
        assert!(failing < kill);
        assert!(events.iter().any(|e| matches!(
            e,
            EventKind::Probe { probe: ProbeKind::Liveness, passing: true, detail, .. } if detail == "HTTP 200"
        )));
        assert_eq!(pod.member("web").unwrap().restarts, 1);
        assert_eq!(pod.phase(), Phase::Running);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_startup_probe_gates_the_others_and_ends_a_member_that_never_starts() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let started = scratch.path("started");
        let probe = |p: Probe| p.period(Duration::from_millis(50)).failure_threshold(4);
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
                probe(Probe::exec(["test", "-e", started.to_str().unwrap()]))
                    .failure_threshold(400),
            )
            .readiness_probe(probe(Probe::tcp(7000)));
        // Never creates it: ended after four failures, then restarted.
        let never = sh("never", "sleep 600").startup_probe(probe(Probe::exec(["false"])));
        let pod = fast(net.pod("web"))
            .restart_policy(RestartPolicy::OnFailure)
            .member(slow)
            .member(never)
            .start()
            .await
            .unwrap();
        let events = events_until(&pod, |e| {
            matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: true, .. } if member == "slow")
        })
        .await;
        let pos = |f: &dyn Fn(&EventKind) -> bool| events.iter().position(f);
        let startup_ok = pos(&|e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Startup, passing: true, .. } if member == "slow")).unwrap();
        let ready_ok = pos(&|e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: true, .. } if member == "slow")).unwrap();
        assert!(startup_ok < ready_ok);
        assert!(!events.iter().any(|e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: false, .. } if member == "slow")), "no readiness check before startup passed: {events:#?}");
        let events = events_until(
            &pod,
            |e| matches!(e, EventKind::Started { member, restarts: 1, .. } if member == "never"),
        )
        .await;
        assert!(events.iter().any(|e| matches!(e, EventKind::Killing { member, reason: KillReason::Startup } if member == "never")));
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn members_share_volumes_at_different_paths_and_the_host_sees_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
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
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\ntmpfs\n");
        // The mounts live in the pod's mount namespace only.
        for dir in [&a, &b, &m] {
            assert_eq!(
                std::fs::read_dir(dir).unwrap().count(),
                0,
                "{}",
                dir.display()
            );
        }
        // The volume directory is in the state directory until removal.
        let volumes = common::tree_under(&ctx.state)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/volumes/"))
            .count();
        assert!(volumes > 0);
        pod.remove().await.unwrap();
        assert!(!common::tree_under(&ctx.state)
            .iter()
            .any(|p| p.to_string_lossy().contains("/volumes/")));
        net.remove().await.unwrap();
    });
}

#[test]
fn members_see_the_pod_hostname_and_share_an_ipc_namespace() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let report = |name: &str| {
            sh(name, "hostname; readlink /proc/self/ns/ipc")
                .stdout(Output::File(scratch.path(name)))
        };
        let pod = fast(net.pod("named"))
            .restart_policy(RestartPolicy::Never)
            .member(report("one"))
            .member(report("two"))
            .start()
            .await
            .unwrap();
        assert_eq!(pod.wait().await, Phase::Succeeded);
        let one = std::fs::read_to_string(scratch.path("one")).unwrap();
        let two = std::fs::read_to_string(scratch.path("two")).unwrap();
        assert_eq!(one, two, "same hostname, same IPC namespace");
        let mut lines = one.lines();
        assert_eq!(lines.next(), Some("named"));
        let ours = std::fs::read_link("/proc/thread-self/ns/ipc").unwrap();
        assert_ne!(lines.next().unwrap(), ours.to_str().unwrap());
        // Commands joined to the pod see the same.
        let out = pod.command("hostname").output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "named\n");
        pod.remove().await.unwrap();

        // A hostname of its own; and both can be turned off.
        let pod = fast(net.pod("named"))
            .hostname("custom")
            .restart_policy(RestartPolicy::Never)
            .member(report("three"))
            .start()
            .await
            .unwrap();
        pod.wait().await;
        let three = std::fs::read_to_string(scratch.path("three")).unwrap();
        assert_eq!(three.lines().next(), Some("custom"));
        pod.remove().await.unwrap();
        let pod = fast(net.pod("named"))
            .share_uts(false)
            .share_ipc(false)
            .restart_policy(RestartPolicy::Never)
            .member(report("four"))
            .start()
            .await
            .unwrap();
        pod.wait().await;
        let four = std::fs::read_to_string(scratch.path("four")).unwrap();
        let host = nix::unistd::gethostname().unwrap();
        let mut lines = four.lines();
        assert_eq!(lines.next(), host.to_str());
        assert_eq!(lines.next(), ours.to_str());
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn stopping_a_member_sends_term_then_kill_to_its_whole_group() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let flag = scratch.path("trapped");
        let pod = net
            .pod("stop")
            .termination_grace_period(Duration::from_millis(300))
            // Ignores SIGTERM (and so does its child `sleep`).
            .member(sh(
                "stubborn",
                &format!("trap '' TERM; sleep 600 & touch {}; wait", flag.display()),
            ))
            .member(sh("polite", "sleep 600"))
            .start()
            .await
            .unwrap();
        // Once the flag exists, SIGTERM is ignored.
        let t = std::time::Instant::now();
        while !flag.exists() {
            assert!(t.elapsed() < Duration::from_secs(30), "{:?}", pod.members());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let MemberState::Running { pid } = pod.member("stubborn").unwrap().state else {
            panic!("not running");
        };
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
        let group = nix::unistd::Pid::from_raw(-i32::try_from(pid).unwrap());
        gone(group).await;
        assert_eq!(
            nix::sys::signal::kill(group, None),
            Err(nix::errno::Errno::ESRCH)
        );
        // The other one keeps running, and is not restarted after a stop.
        assert!(matches!(
            pod.member("polite").unwrap().state,
            MemberState::Running { .. }
        ));
        assert_eq!(pod.phase(), Phase::Running);
        assert!(matches!(
            pod.stop_member("nobody").await,
            Err(Error::NotFound { what: "member", .. })
        ));
        pod.stop().await;
        let polite = pod.member("polite").unwrap();
        assert!(
            matches!(polite.state, MemberState::Terminated { status } if status.signal() == Some(15))
        );
        assert_eq!(polite.restarts, 0);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_dead_holder_fails_the_pod_and_ends_its_members() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = fast(net.pod("doomed"))
            .member(sh("main", "sleep 600"))
            .start()
            .await
            .unwrap();
        events_until(&pod, |e| *e == EventKind::Phase(Phase::Running)).await;
        let holder = nix::unistd::Pid::from_raw(i32::try_from(pod.sandbox().holder_pid()).unwrap());
        nix::sys::signal::kill(holder, nix::sys::signal::Signal::SIGKILL).unwrap();
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        let group = nix::unistd::Pid::from_raw(-i32::try_from(pid).unwrap());
        gone(group).await;
        assert_eq!(
            nix::sys::signal::kill(group, None),
            Err(nix::errno::Errno::ESRCH)
        );
        // remove_on_drop removes the sandbox in the background.
        let t = std::time::Instant::now();
        while !net.sandboxes().await.unwrap().is_empty() && t.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(net.sandboxes().await.unwrap(), []);
        net.remove().await.unwrap();
    });
}

#[test]
fn bad_pod_settings_are_refused_and_change_nothing() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let dir = scratch.dir("d");
        let before = common::snapshot(&ctx.nl).await;
        let files = common::tree_under(&ctx.state);
        let holders = common::holders_of(&common::network_key_prefix()).len();
        let ok = || sh("main", "true");
        let cases: Vec<(&str, podnet::PodBuilder)> = vec![
            ("no members", net.pod("p")),
            ("duplicate member", net.pod("p").member(ok()).member(ok())),
            ("bad member name", net.pod("p").member(sh("Main", "true"))),
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
        for (what, builder) in cases {
            match builder.start().await {
                Err(Error::InvalidConfig { .. } | Error::InvalidName { .. }) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        assert_eq!(common::snapshot(&ctx.nl).await, before);
        assert_eq!(common::tree_under(&ctx.state), files);
        assert_eq!(
            common::holders_of(&common::network_key_prefix()).len(),
            holders
        );
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        let holder = nix::unistd::Pid::from_raw(i32::try_from(pod.sandbox().holder_pid()).unwrap());
        nix::sys::signal::kill(holder, nix::sys::signal::Signal::SIGKILL).unwrap();
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

#[test]
fn always_restarts_after_success_but_init_members_only_after_failure() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let runs = scratch.path("init-runs");
        let pod = fast(net.pod("loop"))
            .init_member(sh("init", &format!("echo run >> {}", runs.display())))
            .member(sh("main", "exit 0"))
            .start()
            .await
            .unwrap();
        // main exits 0 and is restarted: Always.
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
        // A stop during a back-off ends it there, without a restart.
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
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        let pid = nix::unistd::Pid::from_raw(pid);
        gone(pid).await;
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH)
        );
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn http_redirects_pass_exec_probes_time_out_and_a_probe_kill_restarts_under_on_failure() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
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
        // Exits 0 on SIGTERM; its liveness probe hangs, so it is ended and,
        // under OnFailure, restarted all the same.
        let probes = scratch.path("probes");
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
            .member(web)
            .member(hung)
            .start()
            .await
            .unwrap();
        let events = events_until(
            &pod,
            |e| matches!(e, EventKind::Started { member, restarts: 2, .. } if member == "hung"),
        )
        .await;
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
        events_until(&pod, |e| matches!(e, EventKind::Probe { member, probe: ProbeKind::Readiness, passing: true, detail } if member == "web" && detail == "HTTP 302")).await;
        // Each timed-out probe's process group (its sh and its sleep) was
        // ended; the last probe may still be under way.
        let groups = std::fs::read_to_string(&probes).unwrap();
        let groups: Vec<i32> = groups.lines().map(|l| l.parse().unwrap()).collect();
        assert!(groups.len() >= 2, "{groups:?}");
        for pgid in &groups[..groups.len() - 1] {
            let group = nix::unistd::Pid::from_raw(-pgid);
            gone(group).await;
            assert_eq!(
                nix::sys::signal::kill(group, None),
                Err(nix::errno::Errno::ESRCH)
            );
        }
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn members_mounting_one_path_differently_are_refused() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let scratch = Scratch::new(&ctx);
        let dir = scratch.dir("d");
        for builder in [
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
            net.pod("p")
                .member(sh("one", "true").current_dir("relative")),
            net.pod("p")
                .member(sh("one", "true").stdout(Output::File(scratch.path("missing/out")))),
            net.pod("p").member(sh("one", "true").arg("a\0b")),
        ] {
            assert!(matches!(
                builder.start().await,
                Err(Error::InvalidConfig { .. })
            ));
        }
        // The same mount twice is fine.
        let pod = fast(net.pod("p"))
            .restart_policy(RestartPolicy::Never)
            .volume(Volume::new("a"))
            .member(sh("one", "true").mount("a", &dir))
            .member(sh("two", "true").mount("a", &dir))
            .start()
            .await
            .unwrap();
        assert_eq!(pod.wait().await, Phase::Succeeded);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
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
        common::eventually(
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
        let left: Vec<_> = common::tree_under(&ctx.state)
            .into_iter()
            .filter(|p| {
                let p = p.to_string_lossy();
                ["/addr/", "/sandbox/", "/volumes/"]
                    .iter()
                    .any(|d| p.contains(d))
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(net.sandboxes().await.unwrap().is_empty());
        net.remove().await.unwrap();
    });
}
