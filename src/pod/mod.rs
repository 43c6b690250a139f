//! Pods: the workload layer on a sandbox. A pod runs named members inside
//! one sandbox with Kubernetes' lifecycle: init members in order, then the
//! others; a restart policy with back-off; liveness, readiness and startup
//! probes; emptyDir-like volumes; a shared hostname and IPC namespace; and a
//! stream of events. Port mappings from the host namespace to a sandbox
//! ([`ports`]) also live here.
//!
//! One future supervises each member (all on one task; each waits for its
//! turn, see `State::gate`); every change goes through
//! [`Shared::update`], which recomputes the phase and Ready condition and
//! appends the events in the order things happened.

mod event;
mod member;
mod probe;
mod volume;

use std::ffi::{CString, OsStr};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use nix::sched::CloneFlags;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpid, Pid};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use event::{Event, EventKind, KillReason, ProbeKind};
pub use member::{Member, Output};
pub use probe::Probe;
pub use volume::Volume;

use crate::error::{Error, Result};
use crate::netns::{self, Cwd, JoinSpec};
use crate::network::Network;
use crate::sandbox::{Phase, Sandbox, SandboxBuilder};
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

/// What everything of one pod shares: what it needs to start processes
/// inside, and its state.
#[derive(Debug)]
pub(crate) struct Shared {
    ctx: Ctx,
    policy: RestartPolicy,
    /// Initial and maximum restart back-off.
    backoff: (Duration, Duration),
    grace: Duration,
    events: Arc<Events>,
    state: Mutex<State>,
    /// Bumped at every change of `state`.
    changes: watch::Sender<u64>,
    /// `remove()` has begun: the holder's end is no failure.
    removing: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Init members first, in order, then the others.
    members: Vec<MemberStatus>,
    inits: usize,
    holder_died: bool,
    /// The holder or the supervisor cannot be followed any more.
    unreadable: bool,
    phase: Phase,
    ready: bool,
}

/// How to start processes inside the pod.
#[derive(Debug)]
pub(crate) struct Ctx {
    pod: String,
    ip: IpAddr,
    pidfd: Arc<OwnedFd>,
    /// The holder's namespaces that members join.
    namespaces: CloneFlags,
}

impl Ctx {
    /// A command that joins the pod (and dies with this process).
    fn tokio_command(&self, program: &OsStr, cwd: Option<&Path>) -> tokio::process::Command {
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
                cwd,
                die_with: Some(getpid()),
            },
        );
        cmd
    }

    /// Spawn from the thread that lives as long as this process, so the
    /// death signal means "this process exited".
    async fn spawn_tied(&self, cmd: tokio::process::Command) -> Result<tokio::process::Child> {
        let program = format!("{:?} in pod {:?}", cmd.as_std().get_program(), self.pod);
        crate::holder::spawn_tied(cmd)
            .await?
            .map_err(|e| Error::io("spawn", program, e))
    }

    /// Run `f` on a thread inside the pod's network namespace.
    async fn run<F, T>(&self, f: F) -> Result<T>
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
    fn update(&self, f: impl FnOnce(&mut State, &Events)) {
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
    async fn wait_until(&self, done: impl Fn(&State) -> bool) {
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
    fn finish(&self, index: usize, status: Option<ExitStatus>) -> ExitStatus {
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

    fn snapshot<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl State {
    /// Whether member `index` may start: init members one after the
    /// other, the rest once every init member has succeeded. `Some(false)`:
    /// not yet; `None`: never (an init member before it failed for good).
    fn gate(&self, index: usize) -> Option<bool> {
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
    fn compute_phase(&self) -> Phase {
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

/// Configures a pod; made by [`Network::pod`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .start().await"]
pub struct PodBuilder {
    sandbox: SandboxBuilder,
    inits: Vec<Member>,
    members: Vec<Member>,
    volumes: Vec<Volume>,
    policy: RestartPolicy,
    backoff: (Duration, Duration),
    grace: Duration,
    hostname: Option<String>,
    share_uts: bool,
    share_ipc: bool,
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

impl Network {
    /// Start configuring a pod called `name` on this network: its sandbox
    /// has the same name (see [`Network::sandbox`] for the rules).
    pub fn pod(&self, name: impl Into<String>) -> PodBuilder {
        PodBuilder {
            sandbox: self.sandbox(name),
            inits: Vec::new(),
            members: Vec::new(),
            volumes: Vec::new(),
            policy: RestartPolicy::Always,
            backoff: (Duration::from_secs(10), Duration::from_secs(300)),
            grace: Duration::from_secs(30),
            hostname: None,
            share_uts: true,
            share_ipc: true,
        }
    }
}

impl PodBuilder {
    /// Add a member; members start together once the init members are done.
    pub fn member(mut self, member: Member) -> Self {
        self.members.push(member);
        self
    }

    /// Add an init member: init members run one after the other, in the
    /// order added, each to a successful end, before the others start.
    /// Their probes are not run.
    pub fn init_member(mut self, member: Member) -> Self {
        self.inits.push(member);
        self
    }

    /// Declare a volume that members mount with [`Member::mount`].
    pub fn volume(mut self, volume: Volume) -> Self {
        self.volumes.push(volume);
        self
    }

    /// The restart policy (default [`RestartPolicy::Always`]).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Restart back-off: the first delay, doubled at each restart up to
    /// `max` (default 10 s and 300 s, as Kubernetes). It starts over after
    /// a member ran for twice `max`.
    pub fn restart_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = (initial, max);
        self
    }

    /// How long a member has between SIGTERM and SIGKILL when it is ended
    /// (default 30 s, as Kubernetes).
    pub fn termination_grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The hostname members see (default: the pod's name).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Whether members share a UTS namespace with the pod's hostname
    /// (default true). Without it they see the host's hostname.
    pub fn share_uts(mut self, share: bool) -> Self {
        self.share_uts = share;
        self
    }

    /// Whether members share an IPC namespace of their own (default true).
    /// Without it they use the host's.
    pub fn share_ipc(mut self, share: bool) -> Self {
        self.share_ipc = share;
        self
    }

    /// Ask for this address for the pod (see [`SandboxBuilder::ip`]).
    pub fn ip(mut self, addr: IpAddr) -> Self {
        self.sandbox = self.sandbox.ip(addr);
        self
    }

    /// Publish a port of the pod on the network's host namespace (see
    /// [`SandboxBuilder::port`]); the published ports are in
    /// `pod.sandbox().ports()`.
    pub fn port(mut self, mapping: crate::PortMapping) -> Self {
        self.sandbox = self.sandbox.port(mapping);
        self
    }

    /// Remove the sandbox when the `Pod` is dropped (see
    /// [`SandboxBuilder::remove_on_drop`]).
    pub fn remove_on_drop(mut self, remove: bool) -> Self {
        self.sandbox = self.sandbox.remove_on_drop(remove);
        self
    }

    /// Check everything that can be checked before anything is made.
    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidConfig { reason });
        let pod = self.sandbox.name();
        if self.members.is_empty() {
            return bad(format!("pod {pod:?} has no members"));
        }
        let mut names = std::collections::HashSet::new();
        for m in self.inits.iter().chain(&self.members) {
            crate::names::check_label("member", &m.name, 63)?;
            if !names.insert(m.name.as_str()) {
                return bad(format!("pod {pod:?}: two members are called {:?}", m.name));
            }
            if m.program.is_empty() {
                return bad(format!("member {:?}: empty program", m.name));
            }
            let nul = |s: &std::ffi::OsStr| s.as_encoded_bytes().contains(&0);
            if nul(&m.program)
                || m.args.iter().any(|a| nul(a))
                || m.env.iter().any(|(k, v)| {
                    nul(k) || nul(v) || k.is_empty() || k.as_encoded_bytes().contains(&b'=')
                })
            {
                return bad(format!(
                    "member {:?}: a NUL byte in its program, arguments or environment, or an environment name that is empty or holds '='",
                    m.name
                ));
            }
            if let Some(dir) = &m.cwd {
                if !dir.is_absolute() || nul(dir.as_os_str()) {
                    return bad(format!(
                        "member {:?}: working directory {} must be absolute, without NUL bytes",
                        m.name,
                        dir.display()
                    ));
                }
            }
            for out in [&m.stdout, &m.stderr] {
                if let Output::File(path) = out {
                    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                    if !parent.unwrap_or(Path::new(".")).is_dir() {
                        return bad(format!(
                            "member {:?}: output file {}: its directory does not exist",
                            m.name,
                            path.display()
                        ));
                    }
                }
            }
            for (probe, kind, one) in [
                (&m.liveness, "liveness", true),
                (&m.readiness, "readiness", false),
                (&m.startup, "startup", true),
            ] {
                if let Some(p) = probe {
                    p.validate(&format!("{kind} probe of member {:?}", m.name), one)?;
                }
            }
            let mut paths = std::collections::HashSet::new();
            for mount in &m.mounts {
                if !self.volumes.iter().any(|v| v.name == mount.volume) {
                    return bad(format!(
                        "member {:?} mounts volume {:?}, which the pod does not declare",
                        m.name, mount.volume
                    ));
                }
                volume::check_mount_point(&m.name, &mount.path)?;
                if !paths.insert(&mount.path) {
                    return bad(format!(
                        "member {:?} mounts two volumes at {}",
                        m.name,
                        mount.path.display()
                    ));
                }
            }
        }
        // One pod mount namespace: a path means one volume, one way, for all.
        let store = self.sandbox.store_dir();
        let mut at: std::collections::HashMap<&Path, &volume::Mount> = Default::default();
        for mount in self
            .inits
            .iter()
            .chain(&self.members)
            .flat_map(|m| &m.mounts)
        {
            if store.starts_with(&mount.path) {
                return bad(format!(
                    "mount path {} holds the state directory {}, where volumes live",
                    mount.path.display(),
                    store.display()
                ));
            }
            match at.insert(&mount.path, mount) {
                Some(other) if other != mount => {
                    return bad(format!(
                        "two members mount {} differently (volume {:?}{} and {:?}{}): members share one mount namespace",
                        mount.path.display(),
                        other.volume,
                        if other.read_only { " read-only" } else { "" },
                        mount.volume,
                        if mount.read_only { " read-only" } else { "" },
                    ));
                }
                _ => {}
            }
        }
        let mut vols = std::collections::HashSet::new();
        for v in &self.volumes {
            crate::names::check_label("volume", &v.name, 63)?;
            if !vols.insert(v.name.as_str()) {
                return bad(format!("pod {pod:?}: two volumes are called {:?}", v.name));
            }
            if v.tmpfs == Some(0) {
                return bad(format!("volume {:?}: a tmpfs size limit of 0", v.name));
            }
        }
        if let Some(h) = &self.hostname {
            if !self.share_uts {
                return bad(format!("pod {pod:?}: a hostname needs share_uts(true)"));
            }
            crate::names::check_label("hostname", h, 63)?;
        }
        if self.backoff.0.is_zero() || self.backoff.1 < self.backoff.0 {
            return bad("restart back-off: initial must be > 0 and <= max".into());
        }
        Ok(())
    }

    /// Make the sandbox (with the pod's namespaces), set its hostname,
    /// make and mount its volumes, and start supervising the members.
    /// Returns at once: the pod is Pending until its members run.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] or [`Error::InvalidName`] for bad settings
    /// (nothing is made); whatever [`SandboxBuilder::create`] returns;
    /// [`Error::Io`], [`Error::Sys`] or [`Error::NotPermitted`] if the
    /// hostname or the volumes cannot be set up (the sandbox is then
    /// removed again).
    pub async fn start(self) -> Result<Pod> {
        let span = tracing::info_span!("podnet.pod.start", pod = %self.sandbox.name());
        tracing::Instrument::instrument(self.start_traced(), span).await
    }

    async fn start_traced(self) -> Result<Pod> {
        self.validate()?;
        let mut namespaces = CloneFlags::empty();
        if self.share_uts {
            namespaces |= CloneFlags::CLONE_NEWUTS;
        }
        if self.share_ipc {
            namespaces |= CloneFlags::CLONE_NEWIPC;
        }
        let mut mounts: Vec<volume::Mount> = Vec::new();
        for m in self
            .inits
            .iter()
            .chain(&self.members)
            .flat_map(|m| &m.mounts)
        {
            if !mounts.contains(m) {
                mounts.push(m.clone());
            }
        }
        if !self.volumes.is_empty() {
            namespaces |= CloneFlags::CLONE_NEWNS;
        }
        let name = self.sandbox.name().to_owned();
        let sandbox = self.sandbox.extra_namespaces(namespaces).create().await?;
        let hostname = self
            .share_uts
            .then(|| self.hostname.clone().unwrap_or_else(|| name.clone()));
        let volumes = self.volumes.clone();
        let setup = async {
            let dir = sandbox.volumes_dir();
            if !volumes.is_empty() {
                volume::make_dirs(&dir, &volumes)?;
            }
            let setup_ns = namespaces & (CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS);
            if setup_ns.is_empty() {
                return Ok(());
            }
            netns::run_in_namespaces(
                sandbox.pidfd(),
                setup_ns,
                format!("pod {name:?}"),
                move || -> Result<()> {
                    if let Some(h) = hostname {
                        nix::unistd::sethostname(&h)
                            .map_err(|e| Error::sys("set hostname of pod", h.clone(), e))?;
                    }
                    if !volumes.is_empty() {
                        volume::mount_all(&dir, &volumes, &mounts)?;
                    }
                    Ok(())
                },
            )
            .await?
        };
        if let Err(e) = setup.await {
            // The sandbox goes, and with it the volumes directory.
            if let Err(undo) = sandbox.remove_now().await {
                return Err(Error::Multiple {
                    op: format!("start pod {name:?}"),
                    errors: vec![e, undo],
                });
            }
            return Err(e);
        }
        Ok(Pod::supervise(
            self.inits,
            self.members,
            sandbox,
            namespaces,
            self.policy,
            self.backoff,
            self.grace,
        ))
    }
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
                crate::sandbox::failpoint("supervise");
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
