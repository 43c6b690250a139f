//! Members: what one is (a program with its arguments, environment, working
//! directory, output, mounts and probes), and the task that runs it: start,
//! probe, end on request or on a failed probe, restart with back-off as the
//! pod's policy says.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::pod::event::{EventKind, KillReason, ProbeKind};
use crate::pod::probe::{kill_group, Probe, Verdict};
use crate::pod::volume::Mount;
use crate::pod::{MemberState, RestartPolicy, Shared};

/// Where a member's output goes. Each run of the member opens it anew.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Discarded.
    Null,
    /// This process's own stdout or stderr.
    Inherit,
    /// Appended to this file (made if missing, mode 0600).
    File(PathBuf),
}

/// A named process of a pod: started inside the pod's sandbox, restarted
/// by the pod's [`RestartPolicy`], watched by its probes.
///
/// ```
/// use podnet::{Member, Probe};
/// let web = Member::new("web", "python3")
///     .args(["-m", "http.server", "8080"])
///     .readiness_probe(Probe::http_get(8080, "/"))
///     .mount("content", "/srv");
/// # let _ = web;
/// ```
#[derive(Debug, Clone)]
pub struct Member {
    pub(crate) name: String,
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) env_clear: bool,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    pub(crate) mounts: Vec<Mount>,
    pub(crate) liveness: Option<Probe>,
    pub(crate) readiness: Option<Probe>,
    pub(crate) startup: Option<Probe>,
}

impl Member {
    /// A member called `name` (a DNS-1123 label, unique in the pod) that
    /// runs `program` (looked up in `PATH` like [`std::process::Command`]).
    /// Its stdin is `/dev/null`; stdout and stderr are inherited.
    pub fn new(name: impl Into<String>, program: impl Into<OsString>) -> Member {
        Member {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_clear: false,
            cwd: None,
            stdout: Output::Inherit,
            stderr: Output::Inherit,
            mounts: Vec::new(),
            liveness: None,
            readiness: None,
            startup: None,
        }
    }

    /// Add an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Member {
        self.args.push(arg.into());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Member
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Member {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Start from an empty environment instead of this process's.
    pub fn env_clear(mut self) -> Member {
        self.env_clear = true;
        self
    }

    /// Working directory (inside the pod's mount namespace, if it has one).
    /// By default this process's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Member {
        self.cwd = Some(dir.into());
        self
    }

    /// Where its stdout goes.
    pub fn stdout(mut self, out: Output) -> Member {
        self.stdout = out;
        self
    }

    /// Where its stderr goes.
    pub fn stderr(mut self, out: Output) -> Member {
        self.stderr = out;
        self
    }

    /// See the pod's volume `volume` at `path`, an existing directory
    /// (absolute). The mount is made in the pod's mount namespace, so every
    /// member sees it there, and the host's directory is left as it is.
    pub fn mount(mut self, volume: impl Into<String>, path: impl Into<PathBuf>) -> Member {
        self.mounts.push(Mount {
            volume: volume.into(),
            path: path.into(),
            read_only: false,
        });
        self
    }

    /// As [`mount`](Member::mount), read-only.
    pub fn mount_read_only(
        mut self,
        volume: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> Member {
        self.mounts.push(Mount {
            volume: volume.into(),
            path: path.into(),
            read_only: true,
        });
        self
    }

    /// Restart the member (per the pod's policy) when this probe fails.
    pub fn liveness_probe(mut self, probe: Probe) -> Member {
        self.liveness = Some(probe);
        self
    }

    /// The member is Ready only while this probe passes.
    pub fn readiness_probe(mut self, probe: Probe) -> Member {
        self.readiness = Some(probe);
        self
    }

    /// Hold the other probes until this one passes once; if it fails
    /// `failure_threshold` times first, the member is ended and restarted
    /// per the pod's policy.
    pub fn startup_probe(mut self, probe: Probe) -> Member {
        self.startup = Some(probe);
        self
    }

    /// A command that runs `program` in the pod as this member would: its
    /// namespaces, environment and directory, its own process group,
    /// stdin from /dev/null. (Exec probes run this way too.)
    pub(crate) fn command(
        &self,
        ctx: &crate::pod::Ctx,
        program: &OsStr,
    ) -> tokio::process::Command {
        let mut cmd = ctx.tokio_command(program, self.cwd.as_deref());
        cmd.stdin(Stdio::null()).process_group(0);
        if self.env_clear {
            cmd.env_clear();
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn open(out: &Output) -> std::io::Result<Stdio> {
        use std::os::unix::fs::OpenOptionsExt;
        Ok(match out {
            Output::Null => Stdio::null(),
            Output::Inherit => Stdio::inherit(),
            Output::File(path) => std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(path)?
                .into(),
        })
    }
}

/// A request to end a member, and whether it may then restart.
pub(crate) type StopRx = watch::Receiver<Option<KillReason>>;

/// How a run of the member ended.
enum Ended {
    Exited(ExitStatus),
    Kill(KillReason),
}

/// Run the member at `index` of the pod until it ends for good; returns
/// its last exit status.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    index: usize,
    spec: Arc<Member>,
    init: bool,
    mut stop: StopRx,
) -> ExitStatus {
    let name = spec.name.clone();
    // Its turn first: init members one after the other, then the rest.
    let mut changes = shared.changes.subscribe();
    loop {
        changes.borrow_and_update();
        if stop.borrow().is_some() {
            return shared.finish(index, None);
        }
        match shared.snapshot(|st| st.gate(index)) {
            Some(true) => break,
            // An init member before it failed for good: it never starts.
            None => return shared.finish(index, None),
            Some(false) => {}
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = stopped(&mut stop) => {}
        }
    }
    let mut delay = shared.backoff.0;
    loop {
        if stop.borrow().is_some() {
            return shared.finish(index, None);
        }
        let started = Instant::now();
        // Set when podnet ended the run because a probe failed.
        let mut probe_kill = false;
        let status = match start(&shared, &spec).await {
            Err(e) => {
                shared.update(|st, ev| {
                    ev.push(EventKind::FailedToStart {
                        member: name.clone(),
                        error: e.to_string(),
                    });
                    st.members[index].last_exit = Some(exit_status(127));
                });
                exit_status(127)
            }
            Ok(mut child) => {
                // A child not yet waited for always has its PID.
                let pid = child.id().unwrap_or_default();
                shared.update(|st, ev| {
                    let m = &mut st.members[index];
                    m.state = MemberState::Running { pid };
                    m.started = spec.startup.is_none();
                    m.ready = spec.startup.is_none() && spec.readiness.is_none();
                    ev.push(EventKind::Started {
                        member: name.clone(),
                        pid,
                        restarts: m.restarts,
                    });
                });
                let ended = tokio::select! {
                    status = child.wait() => match status {
                        Ok(status) => Ended::Exited(status),
                        // Cannot be waited for: treat it as gone.
                        Err(_) => Ended::Kill(KillReason::Stopped),
                    },
                    reason = probes(&shared, index, &spec) => Ended::Kill(reason),
                    reason = stopped(&mut stop) => Ended::Kill(reason),
                };
                let status = match ended {
                    Ended::Exited(status) => status,
                    Ended::Kill(reason) => {
                        shared.events.push(EventKind::Killing {
                            member: name.clone(),
                            reason,
                        });
                        probe_kill = matches!(reason, KillReason::Liveness | KillReason::Startup);
                        terminate(&mut child, shared.grace).await
                    }
                };
                // What the member started goes with it, as a container's
                // processes go with the container.
                kill_group(pid);
                shared.update(|st, ev| {
                    let m = &mut st.members[index];
                    m.ready = false;
                    m.started = false;
                    m.last_exit = Some(status);
                    ev.push(EventKind::Exited {
                        member: name.clone(),
                        status,
                    });
                });
                status
            }
        };
        // As Kubernetes: a member ended by a failing probe is restarted
        // (unless Never) whatever its exit status.
        let restart = stop.borrow().is_none()
            && match shared.policy {
                RestartPolicy::Always if !init => true,
                RestartPolicy::Always | RestartPolicy::OnFailure => !status.success() || probe_kill,
                RestartPolicy::Never => false,
            };
        if !restart {
            return shared.finish(index, Some(status));
        }
        // Kubernetes' back-off: doubled each time up to the maximum, back to
        // the start after a run of twice the maximum.
        if started.elapsed() >= shared.backoff.1.saturating_mul(2) {
            delay = shared.backoff.0;
        }
        shared.update(|st, ev| {
            st.members[index].state = MemberState::BackOff { delay };
            ev.push(EventKind::BackOff {
                member: name.clone(),
                delay,
            });
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => return shared.finish(index, Some(status)),
        }
        delay = delay.saturating_mul(2).min(shared.backoff.1);
        shared.update(|st, _| st.members[index].restarts += 1);
    }
}

/// Start one run of the member.
async fn start(shared: &Shared, spec: &Member) -> Result<Child> {
    let what = |e| Error::io("start member", spec.name.clone(), e);
    let mut cmd = spec.command(&shared.ctx, &spec.program);
    cmd.args(&spec.args)
        .stdout(Member::open(&spec.stdout).map_err(what)?)
        .stderr(Member::open(&spec.stderr).map_err(what)?);
    shared.ctx.spawn_tied(cmd).await.map_err(|e| match e {
        Error::Io { source, .. } => Error::io(
            "start member",
            format!("{:?} ({:?})", spec.name, spec.program),
            source,
        ),
        e => e,
    })
}

/// Resolves when a stop is requested, with its reason.
async fn stopped(stop: &mut StopRx) -> KillReason {
    loop {
        if let Some(reason) = *stop.borrow_and_update() {
            return reason;
        }
        if stop.changed().await.is_err() {
            // The pod is gone: nothing will ever ask.
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM to the member's process group, SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    // Unreaped until `wait` returns, so its PID (and group) is still ours.
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
            return status;
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.start_kill();
    child.wait().await.unwrap_or_else(|_| exit_status(137))
}

/// Runs the member's probes for one run; resolves only when they say the
/// member must be ended.
async fn probes(shared: &Shared, index: usize, spec: &Member) -> KillReason {
    if let Some(probe) = &spec.startup {
        if !watch_probe(shared, index, spec, probe, ProbeKind::Startup).await {
            return KillReason::Startup;
        }
        shared.update(|st, _| {
            let m = &mut st.members[index];
            m.started = true;
            m.ready = spec.readiness.is_none();
        });
    }
    let liveness = async {
        match &spec.liveness {
            Some(p) if !watch_probe(shared, index, spec, p, ProbeKind::Liveness).await => {
                KillReason::Liveness
            }
            _ => std::future::pending().await,
        }
    };
    let readiness = async {
        if let Some(p) = &spec.readiness {
            watch_probe(shared, index, spec, p, ProbeKind::Readiness).await;
        }
        std::future::pending::<KillReason>().await
    };
    tokio::select! {
        reason = liveness => reason,
        reason = readiness => reason,
    }
}

/// Probe periodically and report verdict changes. A startup probe returns
/// `true` at its first pass; startup and liveness probes return `false`
/// when they fail; a readiness probe sets the member's readiness and never
/// returns.
async fn watch_probe(
    shared: &Shared,
    index: usize,
    spec: &Member,
    probe: &Probe,
    kind: ProbeKind,
) -> bool {
    let member = spec.name.as_str();
    tokio::time::sleep(probe.initial_delay).await;
    let mut verdict = Verdict::new();
    let mut ticks = tokio::time::interval(probe.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = probe
            .check(&shared.ctx, |p| spec.command(&shared.ctx, p))
            .await;
        let ok = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        if let Some(passing) = verdict.observe(ok, probe) {
            shared.update(|st, ev| {
                ev.push(EventKind::Probe {
                    member: member.to_owned(),
                    probe: kind,
                    passing,
                    detail,
                });
                if kind == ProbeKind::Readiness {
                    st.members[index].ready = passing;
                }
            });
            match (kind, passing) {
                (ProbeKind::Startup, true) => return true,
                (ProbeKind::Startup | ProbeKind::Liveness, false) => return false,
                _ => {}
            }
        }
    }
}

fn exit_status(code: i32) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(code << 8)
}
