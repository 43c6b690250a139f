//! `Command`: a `tokio::process::Command` whose child joins a sandbox,
//! spawned from inside the sandbox's network namespace or joining it in a
//! `pre_exec` hook, and the `Sandbox` methods that make one.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Arc;

use nix::sched::CloneFlags;

use super::{Sandbox, SbInner};
use crate::error::{Error, Result};
use crate::netns;

impl Sandbox {
    /// A command whose process joins the sandbox: a
    /// [`tokio::process::Command`] whose child starts inside it (see
    /// [`Command`] for how).
    ///
    /// ```no_run
    /// # async fn f(pod: &podnet::Sandbox) -> podnet::Result<()> {
    /// let out = pod.command("cat").arg("/proc/net/dev").output().await?;
    /// assert!(String::from_utf8_lossy(&out.stdout).contains("eth0"));
    /// # Ok(()) }
    /// ```
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_string_lossy().into_owned(),
            inner: tokio::process::Command::new(program),
            sandbox: self.inner.clone(),
            joins_in_child: false,
            mounts_error: None,
        }
    }

    /// A command whose child joins these namespaces of the holder (a
    /// pod's); after joining a mount namespace it changes back to the
    /// directory it was in (this process's, or the one set with
    /// `current_dir`), looked up again inside.
    pub(crate) fn command_joining(
        &self,
        program: impl AsRef<OsStr>,
        namespaces: CloneFlags,
    ) -> Command {
        let program_name = program.as_ref().to_string_lossy().into_owned();
        let mut inner = tokio::process::Command::new(program);
        netns::join_with_on_exec(
            &mut inner,
            self.inner.holder.pidfd().clone(),
            netns::JoinSpec {
                namespaces,
                mounts: None,
                cwd: namespaces
                    .contains(CloneFlags::CLONE_NEWNS)
                    .then_some(netns::Cwd::Keep),
                die_with: None,
            },
        );
        Command {
            inner,
            program: program_name,
            sandbox: self.inner.clone(),
            joins_in_child: true,
            mounts_error: None,
        }
    }
}

/// A [`tokio::process::Command`] whose child joins a sandbox; made by
/// [`Sandbox::command`]. The methods mirror tokio's; [`inner_mut`](Command::inner_mut)
/// reaches the rest.
///
/// The child is spawned from the calling thread moved into the sandbox's
/// network namespace for the call (and back), so it starts there with no
/// hook between fork and exec, and std spawns it as fast as any command
/// (`posix_spawn`). When the network has DNS, the child sees the
/// sandbox's own resolv.conf and /etc/hosts, in a mount namespace this
/// handle makes at its first command; it is then spawned, still with no
/// hook, from a short-lived thread that has joined both namespaces. Once [`inner_mut`](Command::inner_mut) has been called,
/// the child joins in a `pre_exec` hook instead, so the tokio command joins
/// however it is spawned.
#[derive(Debug)]
pub struct Command {
    inner: tokio::process::Command,
    program: String,
    sandbox: Arc<SbInner>,
    /// Whether the child joins in a `pre_exec` hook (pod members, which
    /// join a mount namespace too, and commands whose `inner_mut` was
    /// taken) rather than by being spawned from inside.
    joins_in_child: bool,
    /// Why the commands' mount namespace could not be made, when
    /// `inner_mut` tried: the spawn returns it.
    mounts_error: Option<Error>,
}

impl Command {
    /// Add an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.inner.arg(arg);
        self
    }

    /// Add arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.args(args);
        self
    }

    /// Set an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> &mut Self {
        self.inner.env(key, val);
        self
    }

    /// Set environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.inner.envs(vars);
        self
    }

    /// Remove an environment variable.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.inner.env_remove(key);
        self
    }

    /// Start from an empty environment.
    pub fn env_clear(&mut self) -> &mut Self {
        self.inner.env_clear();
        self
    }

    /// Working directory of the child.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.inner.current_dir(dir);
        self
    }

    /// The child's stdin.
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stdin(cfg);
        self
    }

    /// The child's stdout.
    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stdout(cfg);
        self
    }

    /// The child's stderr.
    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Self {
        self.inner.stderr(cfg);
        self
    }

    /// Kill the child when its [`tokio::process::Child`] is dropped.
    pub fn kill_on_drop(&mut self, kill: bool) -> &mut Self {
        self.inner.kill_on_drop(kill);
        self
    }

    /// Run the child as user `id` (it joins the sandbox first). Not for a
    /// pod's [`command`](crate::Pod::command) nor after
    /// [`inner_mut`](Command::inner_mut): their child joins in a `pre_exec`
    /// hook, std switches identity before such hooks run, and the join
    /// would then fail with EPERM.
    pub fn uid(&mut self, id: u32) -> &mut Self {
        self.inner.uid(id);
        self
    }

    /// Run the child as group `id`; as [`uid`](Command::uid).
    pub fn gid(&mut self, id: u32) -> &mut Self {
        self.inner.gid(id);
        self
    }

    /// Put the child in process group `pgroup` (0: a new group, led by it).
    pub fn process_group(&mut self, pgroup: i32) -> &mut Self {
        self.inner.process_group(pgroup);
        self
    }

    /// The wrapped tokio command, for everything else (more `pre_exec`
    /// hooks, which run after the sandbox is joined). From this call on the
    /// child joins in a `pre_exec` hook, so the tokio command joins the
    /// sandbox however it is spawned; it then starts by fork and exec,
    /// not `posix_spawn`, and may not switch `uid` or `gid`.
    pub fn inner_mut(&mut self) -> &mut tokio::process::Command {
        if !self.joins_in_child {
            let pidfd = self.sandbox.holder.pidfd().clone();
            match self.sandbox.command_mounts() {
                Ok(None) => netns::join_on_exec(&mut self.inner, pidfd),
                // The next spawn reports it; every spawn, by whatever
                // means, fails rather than start without the files.
                Err(e) => {
                    let errno = e.errno().unwrap_or(nix::errno::Errno::EIO);
                    netns::refuse_on_exec(&mut self.inner, errno);
                    self.mounts_error = Some(e);
                }
                Ok(Some(mounts)) => netns::join_with_on_exec(
                    &mut self.inner,
                    pidfd,
                    netns::JoinSpec {
                        namespaces: CloneFlags::CLONE_NEWNET,
                        mounts: Some(mounts),
                        cwd: Some(netns::Cwd::Keep),
                        die_with: None,
                    },
                ),
            }
            self.joins_in_child = true;
        }
        &mut self.inner
    }

    fn spawn_error(&self, e: std::io::Error) -> Error {
        let e = Error::io("spawn in sandbox", &self.program, e);
        self.sandbox.holder_error(e)
    }

    /// `f` (a spawn of the tokio command), unless the child joins by
    /// itself: from this thread moved into the sandbox's network namespace
    /// for the call or, when the commands have a mount namespace of their
    /// own (which a thread of a multi-threaded process cannot join and
    /// leave), from a thread that joins both.
    fn spawn_inside<T: Send>(
        &mut self,
        f: impl FnOnce(&mut tokio::process::Command) -> T + Send,
    ) -> Result<T> {
        self.sandbox.check_alive()?;
        if let Some(e) = self.mounts_error.take() {
            return Err(e);
        }
        if self.joins_in_child {
            return Ok(f(&mut self.inner));
        }
        let what = format!("sandbox {:?}", self.sandbox.name);
        let pidfd = self.sandbox.holder.pidfd().clone();
        if let Some(mounts) = self.sandbox.command_mounts()? {
            let inner = &mut self.inner;
            return netns::on_thread_in(mounts.as_fd(), pidfd.as_fd(), &what, || f(inner))
                .map_err(|e| self.sandbox.holder_error(e));
        }
        let _inside =
            netns::enter(pidfd.as_fd(), &what).map_err(|e| self.sandbox.holder_error(e))?;
        Ok(f(&mut self.inner))
    }

    /// Start the child inside the sandbox.
    ///
    /// # Errors
    /// [`Error::HolderDied`] if the sandbox has Failed; [`Error::Io`] naming
    /// the program if it cannot be started.
    pub fn spawn(&mut self) -> Result<tokio::process::Child> {
        self.spawn_inside(tokio::process::Command::spawn)?
            .map_err(|e| self.spawn_error(e))
    }

    /// Run the child to completion, collecting its output.
    ///
    /// # Errors
    /// As [`spawn`](Command::spawn).
    pub async fn output(&mut self) -> Result<Output> {
        // tokio spawns the child when output() is called, not when polled.
        let running = self.spawn_inside(tokio::process::Command::output)?;
        running.await.map_err(|e| self.spawn_error(e))
    }

    /// Run the child to completion and return its exit status.
    ///
    /// # Errors
    /// As [`spawn`](Command::spawn).
    pub async fn status(&mut self) -> Result<ExitStatus> {
        let running = self.spawn_inside(tokio::process::Command::status)?;
        running.await.map_err(|e| self.spawn_error(e))
    }
}
