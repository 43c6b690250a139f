//! What one pod's supervision shares: how to start processes inside the
//! pod (`Ctx`), and its state, which every change goes through
//! ([`Shared::update`]: it recomputes the phase and the Ready condition and
//! appends the events in the order things happened).

use std::ffi::{CString, OsStr};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::getpid;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::netns::{self, Cwd, JoinSpec};
use crate::sandbox::Phase;
use event::Events;

use super::*;

/// What everything of one pod shares: what it needs to start processes
/// inside, and its state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) ctx: Ctx,
    pub(super) policy: RestartPolicy,
    /// Initial and maximum restart back-off.
    pub(super) backoff: (Duration, Duration),
    pub(super) grace: Duration,
    pub(super) events: Arc<Events>,
    pub(super) state: Mutex<State>,
    /// Bumped at every change of `state`.
    pub(super) changes: watch::Sender<u64>,
    /// `remove()` has begun: the holder's end is no failure.
    pub(super) removing: AtomicBool,
}

#[derive(Debug)]
pub(super) struct State {
    /// Init members first, in order, then the others.
    pub(super) members: Vec<MemberStatus>,
    pub(super) inits: usize,
    pub(super) holder_died: bool,
    /// The holder or the supervisor cannot be followed any more.
    pub(super) unreadable: bool,
    pub(super) phase: Phase,
    pub(super) ready: bool,
}

/// How to start processes inside the pod.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(super) pod: String,
    pub(super) ip: IpAddr,
    pub(super) pidfd: Arc<OwnedFd>,
    /// The holder's namespaces that members join.
    pub(super) namespaces: CloneFlags,
}

impl Ctx {
    /// A command that joins the pod (and dies with this process).
    pub(super) fn tokio_command(
        &self,
        program: &OsStr,
        cwd: Option<&Path>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        // Joining a mount namespace moves the process to its root: the
        // directory is changed after the join (and looked up inside).
        let cwd = match cwd {
            Some(dir) => Some(Cwd::Path(
                CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default(),
            )),
            None => self
                .namespaces
                .contains(CloneFlags::CLONE_NEWNS)
                .then_some(Cwd::Keep),
        };
        netns::join_with_on_exec(
            &mut cmd,
            self.pidfd.clone(),
            JoinSpec {
                namespaces: self.namespaces,
                mounts: None,
                cwd,
                die_with: Some(getpid()),
            },
        );
        cmd
    }

    /// Spawn from the thread that lives as long as this process, so the
    /// death signal means "this process exited".
    pub(super) async fn spawn_tied(
        &self,
        cmd: tokio::process::Command,
    ) -> Result<tokio::process::Child> {
        let program = format!("{:?} in pod {:?}", cmd.as_std().get_program(), self.pod);
        crate::holder::spawn_tied(cmd)
            .await?
            .map_err(|e| Error::io("spawn", program, e))
    }

    /// Run `f` on a thread inside the pod's network namespace.
    pub(super) async fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        netns::run_inside(self.pidfd.clone(), format!("pod {:?}", self.pod), f).await
    }
}

impl Shared {
    /// Change the state; then recompute phase and readiness and log their
    /// changes after the events `f` logged.
    pub(super) fn update(&self, f: impl FnOnce(&mut State, &Events)) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st, &self.events);
        let phase = st.compute_phase();
        if phase != st.phase {
            st.phase = phase;
            self.events.push(EventKind::Phase(phase));
        }
        let ready = phase == Phase::Running
            && st.members[st.inits..]
                .iter()
                .all(|m| m.ready && matches!(m.state, MemberState::Running { .. }));
        if ready != st.ready {
            st.ready = ready;
            self.events.push(EventKind::Ready(ready));
        }
        drop(st);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Wait until `done` holds for the state.
    pub(super) async fn wait_until(&self, done: impl Fn(&State) -> bool) {
        let mut rx = self.changes.subscribe();
        loop {
            rx.mark_unchanged();
            if self.snapshot(&done) {
                return;
            }
            // The sender lives in `self`: this only wakes on changes.
            let _ = rx.changed().await;
        }
    }

    /// The member at `index` ended for good; returns its last status.
    pub(super) fn finish(&self, index: usize, status: Option<ExitStatus>) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        let mut last = ExitStatus::from_raw(0);
        self.update(|st, _| {
            let m = &mut st.members[index];
            // Never started (stopped while waiting): counts as a failure.
            let status = status
                .or(m.last_exit)
                .unwrap_or(ExitStatus::from_raw(Signal::SIGTERM as i32));
            m.state = MemberState::Terminated { status };
            m.ready = false;
            last = status;
        });
        last
    }

    pub(super) fn snapshot<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl State {
    /// Whether member `index` may start: init members one after the
    /// other, the rest once every init member has succeeded. `Some(false)`:
    /// not yet; `None`: never (an init member before it failed for good).
    pub(super) fn gate(&self, index: usize) -> Option<bool> {
        for m in &self.members[..index.min(self.inits)] {
            match m.state {
                MemberState::Terminated { status } if status.success() => {}
                MemberState::Terminated { .. } => return None,
                _ => return Some(false),
            }
        }
        Some(true)
    }

    /// The pod's phase, as Kubernetes defines it.
    pub(super) fn compute_phase(&self) -> Phase {
        if self.holder_died {
            return Phase::Failed;
        }
        if self.unreadable {
            return Phase::Unknown;
        }
        let (inits, apps) = self.members.split_at(self.inits);
        let failed = |m: &MemberStatus| matches!(m.state, MemberState::Terminated { status } if !status.success());
        if self.gate(self.inits) != Some(true) {
            return if inits.iter().any(failed) {
                Phase::Failed
            } else {
                Phase::Pending
            };
        }
        if apps.iter().any(|m| m.state == MemberState::Waiting) {
            Phase::Pending
        } else if apps.iter().any(|m| {
            matches!(
                m.state,
                MemberState::Running { .. } | MemberState::BackOff { .. }
            )
        }) {
            Phase::Running
        } else if apps.iter().any(failed) {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    }
}
