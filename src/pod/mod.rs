//! Pods: named members in one sandbox with Kubernetes' lifecycle (init
//! members, then the others; restarts with back-off; probes; emptyDir-like
//! volumes; a shared hostname and IPC namespace; events). One future
//! supervises each member, all on one task; this file holds the public
//! types and the [`Pod`] handle.

mod builder;
mod event;
mod member;
mod probe;
mod state;
mod volume;

use std::ffi::OsStr;
use std::net::IpAddr;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use nix::sched::CloneFlags;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use builder::PodBuilder;
pub use event::{Event, EventKind, KillReason, ProbeKind};
pub use member::{Member, Output};
pub use probe::Probe;
use state::State;
pub(crate) use state::{Ctx, Shared};
pub use volume::Volume;

use crate::error::{Error, Result};
use crate::sandbox::{Phase, Sandbox};
use event::Events;
use member::StopRx;

/// When a pod's members are restarted after they end, as Kubernetes'
/// `restartPolicy`. Init members are restarted only when they fail, unless
/// the policy is `Never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RestartPolicy {
    /// Always (the Kubernetes default): the pod runs until stopped.
    #[default]
    Always,
    /// When it exits with a failure (non-zero, or a signal).
    OnFailure,
    /// Never: the pod ends when its members have.
    Never,
}

/// Where a member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// Not started yet (init members still running, or about to start).
    Waiting,
    /// Its process runs.
    Running {
        /// Its PID (also its process group).
        pid: u32,
    },
    /// It ended and will be restarted after this delay.
    BackOff {
        /// The back-off before the restart.
        delay: Duration,
    },
    /// It ended for good.
    Terminated {
        /// How it ended the last time (127 if it could not be started).
        status: ExitStatus,
    },
}

/// A member's status, as [`Pod::members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStatus {
    /// The member's name.
    pub name: String,
    /// Whether it is an init member.
    pub init: bool,
    /// Where it is in its life.
    pub state: MemberState,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Whether it passes its readiness probe (or runs and has none).
    pub ready: bool,
    /// Whether its startup probe has passed (or it runs and has none).
    pub started: bool,
    /// How its last run ended.
    pub last_exit: Option<ExitStatus>,
}

/// A pod: members running in one sandbox, with Kubernetes' lifecycle.
///
/// ```
/// # async fn f(net: &podnet::Network) -> podnet::Result<()> {
/// use futures::StreamExt;
/// use podnet::{Member, Phase, RestartPolicy};
///
/// let pod = net
///     .pod("job")
///     .restart_policy(RestartPolicy::Never)
///     .member(Member::new("main", "sh").args(["-c", "hostname"]))
///     .start()
///     .await?;
/// let mut events = pod.events();
/// while let Some(event) = events.next().await {
///     println!("{:?}", event.kind);
///     if matches!(event.kind, podnet::EventKind::Phase(Phase::Succeeded | Phase::Failed)) {
///         break;
///     }
/// }
/// pod.remove().await?;
/// # Ok(()) }
/// ```
///
/// # Members and this process
/// The pod's supervision runs in this process: its members are its
/// children, started from a thread that lives as long as the process, and
/// are killed when this process exits. Dropping a `Pod` kills its members
/// (SIGKILL to each member's process group) and leaves the sandbox as a
/// dropped [`Sandbox`] would; [`remove`](Pod::remove) stops them
/// gracefully and removes the sandbox and the volumes.
#[derive(Debug)]
pub struct Pod {
    sandbox: Sandbox,
    shared: Arc<Shared>,
    /// One per member, in the order of `State::members`.
    stops: Arc<[StopTx]>,
    /// The members' supervisor, and the holder's watcher.
    tasks: [JoinHandle<()>; 2],
}

type StopTx = watch::Sender<Option<KillReason>>;

/// Ends the members' supervision for good when dropped: a member not
/// Terminated yet (the task panicked) is marked so, and the pod Unknown.
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let panicking = std::thread::panicking();
        self.0.update(|st, _| {
            for m in &mut st.members {
                if !matches!(m.state, MemberState::Terminated { .. }) {
                    let status = ExitStatus::from_raw(Signal::SIGKILL as i32);
                    m.state = MemberState::Terminated { status };
                    m.ready = false;
                    st.unreadable |= panicking;
                }
            }
        });
    }
}

/// Ask a member to end (the first reason given wins).
fn stop(tx: &StopTx, reason: KillReason) {
    tx.send_if_modified(|r| {
        let first = r.is_none();
        r.get_or_insert(reason);
        first
    });
}

impl Pod {
    fn supervise(
        inits: Vec<Member>,
        members: Vec<Member>,
        sandbox: Sandbox,
        namespaces: CloneFlags,
        policy: RestartPolicy,
        backoff: (Duration, Duration),
        grace: Duration,
    ) -> Pod {
        let status = |m: &Member, init| MemberStatus {
            name: m.name.clone(),
            init,
            state: MemberState::Waiting,
            restarts: 0,
            ready: false,
            started: false,
            last_exit: None,
        };
        let events = Events::new();
        events.push(EventKind::Phase(Phase::Pending));
        let shared = Arc::new(Shared {
            ctx: Ctx {
                pod: sandbox.name().to_owned(),
                ip: sandbox.ip(),
                pidfd: sandbox.pidfd(),
                namespaces: namespaces | CloneFlags::CLONE_NEWNET,
            },
            policy,
            backoff,
            grace,
            events,
            state: Mutex::new(State {
                members: inits
                    .iter()
                    .map(|m| status(m, true))
                    .chain(members.iter().map(|m| status(m, false)))
                    .collect(),
                inits: inits.len(),
                holder_died: false,
                unreadable: false,
                phase: Phase::Pending,
                ready: false,
            }),
            changes: watch::Sender::new(0),
            removing: AtomicBool::new(false),
        });
        let all: Vec<(Arc<Member>, bool)> = inits
            .into_iter()
            .map(|m| (Arc::new(m), true))
            .chain(members.into_iter().map(|m| (Arc::new(m), false)))
            .collect();
        let (stops, rxs): (Vec<_>, Vec<StopRx>) = all.iter().map(|_| watch::channel(None)).unzip();
        let stops: Arc<[StopTx]> = stops.into();
        // Init members one after the other, then the others together.
        let run = {
            let shared = shared.clone();
            async move {
                // Whatever happens to this task, no waiter is left hanging.
                let _guard = EndGuard(shared.clone());
                crate::failpoint::failpoint("supervise");
                // Each waits for its turn (State::gate) or a stop.
                let members =
                    all.into_iter()
                        .zip(rxs)
                        .enumerate()
                        .map(|(index, ((spec, init), rx))| {
                            member::supervise(shared.clone(), index, spec, init, rx)
                        });
                futures::future::join_all(members).await;
            }
        };
        let run = tokio::spawn(run);
        // The holder dying fails the pod and ends its members.
        let watcher = {
            let shared = shared.clone();
            let stops = stops.clone();
            let pidfd = sandbox.pidfd();
            let pid = sandbox.holder_pid();
            tokio::spawn(async move {
                let status = crate::holder::exit_status(pid, &pidfd).await;
                if shared.removing.load(Ordering::Acquire) {
                    return;
                }
                let Ok(status) = status else {
                    // The holder cannot be watched (no fd left, say): its
                    // state is unknown, and nothing is ended for that.
                    shared.update(|st, _| st.unreadable = true);
                    return;
                };
                shared.update(|st, ev| {
                    st.holder_died = true;
                    ev.push(EventKind::HolderDied { status });
                });
                for s in stops.iter() {
                    stop(s, KillReason::HolderDied);
                }
            })
        };
        Pod {
            sandbox,
            shared,
            stops,
            tasks: [run, watcher],
        }
    }

    /// The pod's name (its sandbox's).
    pub fn name(&self) -> &str {
        self.sandbox.name()
    }

    /// The pod's sandbox: its address, joining it, its holder.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The pod's address (see [`Sandbox::ip`]).
    pub fn ip(&self) -> IpAddr {
        self.sandbox.ip()
    }

    /// The pod's phase, as Kubernetes defines it: Pending until its
    /// members run; Running while at least one runs or is restarting;
    /// Succeeded when all ended with 0 and none will restart; Failed when
    /// all ended and one failed, or the holder died; Unknown when the
    /// holder's state cannot be read.
    pub fn phase(&self) -> Phase {
        match (self.sandbox.phase(), self.shared.snapshot(|st| st.phase)) {
            // Seen before the watcher has told the members.
            (Phase::Failed, _) if !self.shared.removing.load(Ordering::Acquire) => Phase::Failed,
            (Phase::Unknown, _) => Phase::Unknown,
            (_, phase) => phase,
        }
    }

    /// The pod's Ready condition: it is Running and every member runs and
    /// passes its readiness probe (or has none).
    pub fn ready(&self) -> bool {
        self.shared.snapshot(|st| st.ready)
    }

    /// Every member's status, init members first.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.shared.snapshot(|st| st.members.clone())
    }

    /// One member's status.
    pub fn member(&self, name: &str) -> Option<MemberStatus> {
        self.shared
            .snapshot(|st| st.members.iter().find(|m| m.name == name).cloned())
    }

    /// What happens to the pod: every event since it was made (the last
    /// 4096), then new ones as they happen. The stream ends when the pod
    /// is removed or dropped.
    pub fn events(&self) -> BoxStream<'static, Event> {
        self.shared.events.stream()
    }

    /// Wait until the pod is Succeeded or Failed (or Unknown: it can no
    /// longer be followed), and return which.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> Phase {
        self.shared
            .wait_until(|st| matches!(st.phase, Phase::Succeeded | Phase::Failed | Phase::Unknown))
            .await;
        self.phase()
    }

    /// A command that joins the pod as a member does (its network, and
    /// its mount, UTS and IPC namespaces where it has them), without being
    /// one: not supervised, not restarted, not killed with the pod.
    pub fn command(&self, program: impl AsRef<OsStr>) -> crate::Command {
        self.sandbox
            .command_joining(program, self.shared.ctx.namespaces)
    }

    /// End member `name` (SIGTERM to its process group, SIGKILL after the
    /// grace period) and do not restart it. Returns once it has ended.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the pod has no such member.
    pub async fn stop_member(&self, name: &str) -> Result<()> {
        let index = self
            .shared
            .snapshot(|st| st.members.iter().position(|m| m.name == name))
            .ok_or_else(|| Error::NotFound {
                what: "member",
                name: name.to_owned(),
            })?;
        stop(&self.stops[index], KillReason::Stopped);
        self.shared
            .wait_until(|st| matches!(st.members[index].state, MemberState::Terminated { .. }))
            .await;
        Ok(())
    }

    /// End every member (SIGTERM, SIGKILL after the grace period), none
    /// to be restarted; returns once all have ended. The sandbox stays.
    pub async fn stop(&self) {
        for index in 0..self.stops.len() {
            stop(&self.stops[index], KillReason::Stopped);
        }
        self.shared
            .wait_until(|st| {
                st.members
                    .iter()
                    .all(|m| matches!(m.state, MemberState::Terminated { .. }))
            })
            .await;
    }

    /// Stop the members, then remove the sandbox and the volumes.
    /// Idempotent. The event stream ends.
    ///
    /// # Errors
    /// As [`Sandbox::remove`].
    pub async fn remove(&self) -> Result<()> {
        self.stop().await;
        // The holder's end is no failure now.
        self.shared.removing.store(true, Ordering::Release);
        let result = self.sandbox.remove().await;
        self.shared.events.close();
        result
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Kill every running member's process group while its leader is
        // still unreaped (its task holds it), then the tasks.
        self.shared.snapshot(|st| {
            for m in &st.members {
                if let MemberState::Running { pid } = m.state {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        });
        for t in &self.tasks {
            t.abort();
        }
        self.shared.events.close();
    }
}
