//! Configuring and starting a pod: [`PodBuilder`], made by
//! [`Network::pod`], validates members, volumes and the hostname, then
//! starts the sandbox and one supervising future per member.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::netns;
use crate::network::Network;
use crate::sandbox::SandboxBuilder;

use super::*;

/// Configures a pod; made by [`Network::pod`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .start().await"]
pub struct PodBuilder {
    pub(super) sandbox: SandboxBuilder,
    pub(super) inits: Vec<Member>,
    pub(super) members: Vec<Member>,
    pub(super) volumes: Vec<Volume>,
    pub(super) policy: RestartPolicy,
    pub(super) backoff: (Duration, Duration),
    pub(super) grace: Duration,
    pub(super) hostname: Option<String>,
    pub(super) share_uts: bool,
    pub(super) share_ipc: bool,
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

    /// Another DNS name of the pod (see [`SandboxBuilder::alias`]); several
    /// pods may share one.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.sandbox = self.sandbox.alias(alias);
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
        let dns = self.sandbox.network_has_dns();
        if !self.volumes.is_empty() || dns {
            namespaces |= CloneFlags::CLONE_NEWNS;
        }
        let name = self.sandbox.name().to_owned();
        let sandbox = self.sandbox.extra_namespaces(namespaces).create().await?;
        let hostname = self
            .share_uts
            .then(|| self.hostname.clone().unwrap_or_else(|| name.clone()));
        let volumes = self.volumes.clone();
        let files = sandbox.name_files(hostname.as_deref());
        let what = format!("pod {name:?}");
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
                    if !setup_ns.contains(CloneFlags::CLONE_NEWNS) {
                        return Ok(());
                    }
                    crate::sandbox::make_mounts_slaves(&what)?;
                    if !volumes.is_empty() {
                        volume::mount_all(&dir, &volumes, &mounts)?;
                    }
                    // After the volumes: one mounted on /etc would hide them.
                    if let Some(files) = files {
                        files.mount()?;
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
