//! The rootless host namespace's way out: pasta (Debian `passt`), a
//! userspace network stack made for this, attached to that namespace.
//!
//! pasta must run in the namespaces the process came from (its sockets
//! there carry the namespace's traffic) and attaches to the rootless host
//! by PID. So, before the process changes namespaces, it forks a
//! supervisor that stays there ([`Supervisor::fork`]); once the namespace
//! exists, the process tells it the PID to attach to
//! ([`Supervisor::start`]). The supervisor runs `pasta --foreground
//! --config-net ... PID`, waits until pasta says it is ready (its `--pid`
//! file, a pipe), reports pasta's PID back, and then watches both: when
//! the namespace's holder exits it ends pasta, when pasta exits it exits
//! too. It is detached (forked twice), so a shared host's pasta outlives
//! the process that started it, and is nobody's zombie.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, read, write, ForkResult, Pid};

use crate::error::{Error, Result};

/// The Debian package that has pasta.
const PACKAGE: &str = "passt";
/// What pasta is needed for, in errors.
const PURPOSE: &str = "a rootless uplink";
/// How long pasta may take to be ready (it takes milliseconds).
const READY_WAIT: Duration = Duration::from_secs(10);
/// How long pasta gets to exit on SIGTERM before SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(1);
/// Where pasta's readiness pipe is in its process (its `--pid` file).
const READY_FD: RawFd = 5;
/// Most of pasta's own message kept for an error.
const MESSAGE_MAX: usize = 3500;

/// pasta as the uplink of the rootless host namespace: which program, and
/// options to add to podnet's own.
///
/// podnet runs `pasta --foreground --quiet --runas UID:GID --config-net -t
/// none -u none -T none -U none --pid FILE [your options] PID` (UID and GID
/// the process's own): pasta configures the
/// namespace's interface, addresses and default route as it does by
/// default (copied from the host's), forwards no ports of its own (podnet
/// publishes ports itself), and maps the gateway address it gives the
/// namespace to the host's loopback. Options added here come after
/// podnet's, so `-a`, `-n`, `-g`, `-i` and the like pick other addresses
/// or another outbound interface.
///
/// ```
/// let pasta = podnet::rootless::Pasta::new().args(["-a", "198.18.100.2", "-n", "24", "-g", "198.18.100.1"]);
/// # let _ = pasta;
/// ```
#[derive(Debug, Clone)]
pub struct Pasta {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Default for Pasta {
    fn default() -> Self {
        Pasta::new()
    }
}

impl Pasta {
    /// `pasta` from `PATH`, with podnet's options only.
    pub fn new() -> Pasta {
        Pasta {
            program: PathBuf::from("pasta"),
            args: Vec::new(),
        }
    }

    /// Run this program instead: a path, or a name looked up on `PATH`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Add one option for pasta, after podnet's own.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Add options for pasta, after podnet's own.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }

    /// The program's name, as errors and the shared host's record say it.
    pub(super) fn display_name(&self) -> String {
        self.name()
    }

    /// The program to exec: the path itself if it has a `/`, else the
    /// first executable of that name on `PATH`.
    fn resolve(&self) -> Result<PathBuf> {
        let missing = || Error::ProgramMissing {
            program: self.name(),
            package: PACKAGE,
            purpose: PURPOSE,
        };
        let found = if self.program.as_os_str().as_bytes().contains(&b'/') {
            executable(&self.program).then(|| self.program.clone())
        } else {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(&self.program))
                    .find(|p| executable(p))
            })
        };
        found.ok_or_else(missing)
    }

    /// The argv to exec, for attaching to `target`.
    fn argv(&self, program: &Path, target: Pid) -> std::result::Result<Vec<CString>, Errno> {
        let ready = format!("/proc/self/fd/{READY_FD}");
        let target = target.to_string();
        // As the process is: pasta run as root would otherwise change to
        // nobody, who may not open the namespaces it is to attach to.
        let runas = format!("{}:{}", nix::unistd::geteuid(), nix::unistd::getegid());
        let ours: [&OsStr; 16] = [
            program.as_os_str(),
            "--foreground".as_ref(),
            "--quiet".as_ref(),
            "--runas".as_ref(),
            runas.as_ref(),
            "--config-net".as_ref(),
            "-t".as_ref(),
            "none".as_ref(),
            "-u".as_ref(),
            "none".as_ref(),
            "-T".as_ref(),
            "none".as_ref(),
            "-U".as_ref(),
            "none".as_ref(),
            "--pid".as_ref(),
            ready.as_ref(),
        ];
        ours.into_iter()
            .chain(self.args.iter().map(OsString::as_os_str))
            .chain(std::iter::once(OsStr::new(&target)))
            .map(|a| CString::new(a.as_bytes()).map_err(|_| Errno::EINVAL))
            .collect()
    }
}

fn executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file()
}

/// pasta needs `/dev/net/tun` readable and writable by the user (mode 0666,
/// as distributions ship it): say so before anything is started.
fn check_tun(program: &str) -> Result<()> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Uplink {
            program: program.to_owned(),
            reason: format!(
                "cannot start: /dev/net/tun cannot be opened for reading and writing ({e}); \
                 pasta needs it so for this user, as distributions ship it (mode 0666)"
            ),
        }),
    }
}

/// A running uplink: pasta's PID and a pidfd that pins it.
#[derive(Debug)]
pub(super) struct Running {
    program: String,
    pid: u32,
    pidfd: OwnedFd,
}

impl Running {
    /// The uplink pasta `pid` recorded with `start` time, if it is still
    /// that process.
    pub(super) fn adopt(program: String, pid: u32, start: u64) -> Option<Running> {
        let raw = Pid::from_raw(i32::try_from(pid).ok()?);
        let pidfd = crate::holder::pidfd_of(raw, start).ok()??;
        Some(Running {
            program,
            pid,
            pidfd,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// End it (SIGTERM; its supervisor then exits too).
    pub(super) fn end(self) {
        if let Ok(raw) = i32::try_from(self.pid) {
            // Only while its pidfd says it has not exited: the PID is
            // still pasta's then (its supervisor reaps it only after).
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0)) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
            }
        }
    }

    /// Keep it as this process's uplink (the first one kept stays).
    pub(super) fn keep(self) {
        let _ = UPLINK.set(self);
    }
}

/// This process's uplink, once it entered rootless namespaces with one.
static UPLINK: OnceLock<Running> = OnceLock::new();

/// Whether the rootless host namespace this process entered has a way out:
/// `Ok(None)` if it was entered without an uplink (or not entered),
/// `Ok(Some(pid))` while pasta runs, [`Error::Uplink`] once it has exited
/// (killed, or crashed). Sandboxes and networks do not depend on it: they
/// keep working, and only traffic beyond the host stops.
///
/// # Errors
/// [`Error::Uplink`] if pasta has ended.
pub fn uplink() -> Result<Option<u32>> {
    let Some(up) = UPLINK.get() else {
        return Ok(None);
    };
    let mut fds = [PollFd::new(up.pidfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => Ok(Some(up.pid)),
        Ok(_) => Err(Error::Uplink {
            program: up.program.clone(),
            reason: format!(
                "(PID {}) has exited: the rootless host namespace has no way out any more",
                up.pid
            ),
        }),
        Err(errno) => Err(Error::sys(
            "poll the uplink",
            format!("PID {}", up.pid),
            errno,
        )),
    }
}

/// Wait for the uplink of the rootless host namespace this process entered
/// to end: `None` at once if it was entered without one (or not entered);
/// otherwise, once pasta has exited, the [`Error::Uplink`] that
/// [`uplink()`] returns from then on. A runtime can spawn it to learn of
/// the loss when it happens, instead of at its next call:
///
/// ```no_run
/// # async fn f() {
/// tokio::spawn(async {
///     if let Some(e) = podnet::rootless::uplink_ended().await {
///         eprintln!("{e}");
///     }
/// });
/// # }
/// ```
///
/// # Panics
/// Outside a tokio runtime with I/O enabled.
pub async fn uplink_ended() -> Option<Error> {
    let up = UPLINK.get()?;
    let pid = Pid::from_raw(i32::try_from(up.pid).unwrap_or(0));
    match crate::holder::exited(pid, &up.pidfd).await {
        Ok(()) => uplink().err(),
        Err(e) => Some(e),
    }
}

/// A supervisor forked in the namespaces the process came from, waiting
/// to be told what to attach pasta to.
#[derive(Debug)]
pub(super) struct Supervisor {
    program: String,
    /// Where the target's PID is sent; closing it unsent ends the supervisor.
    ctl: OwnedFd,
    /// Where its report comes.
    reply: OwnedFd,
}

impl Supervisor {
    /// Check that pasta can run, then fork the supervisor (twice: it is
    /// nobody's child). Only while the process has one thread (the caller
    /// checks), before it changes namespaces.
    ///
    /// # Errors
    /// [`Error::ProgramMissing`] if pasta is not installed, [`Error::Uplink`]
    /// if `/dev/net/tun` cannot be used; nothing is started then.
    pub(super) fn fork(pasta: &Pasta) -> Result<Supervisor> {
        let program = pasta.resolve()?;
        let name = pasta.name();
        check_tun(&name)?;
        let what = "the rootless uplink's supervisor";
        let (ctl_r, ctl_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("make a pipe for", what, e))?;
        let (reply_r, reply_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("make a pipe for", what, e))?;
        let pasta = pasta.clone();
        // SAFETY: the process has a single thread (checked by the caller:
        // `single_threaded`), so no lock or allocator state can be held by
        // another thread at the fork, and the child may run any code.
        match unsafe { nix::unistd::fork() } {
            Err(e) => Err(Error::sys("fork", what, e)),
            Ok(ForkResult::Child) => {
                drop((ctl_w, reply_r));
                // SAFETY: as above; this child has one thread too.
                match unsafe { nix::unistd::fork() } {
                    Ok(ForkResult::Child) => supervise(ctl_r, reply_w, &program, &pasta),
                    _ => exit_now(0),
                }
            }
            Ok(ForkResult::Parent { child }) => {
                drop((ctl_r, reply_w));
                reap(child);
                Ok(Supervisor {
                    program: name,
                    ctl: ctl_w,
                    reply: reply_r,
                })
            }
        }
    }

    /// Attach pasta to the namespaces of `target` and wait until it is
    /// ready.
    ///
    /// # Errors
    /// [`Error::Uplink`] with pasta's own message if it fails to start or
    /// is not ready within 10 s.
    pub(super) fn start(self, target: Pid) -> Result<Running> {
        let fail = |reason: String| Error::Uplink {
            program: self.program.clone(),
            reason,
        };
        let pid = target.as_raw().to_ne_bytes();
        match write(&self.ctl, &pid) {
            Ok(4) => {}
            Ok(_) => {
                return Err(fail(
                    "cannot start: its supervisor took a short request".into(),
                ))
            }
            Err(e) => return Err(fail(format!("cannot start: its supervisor is gone ({e})"))),
        }
        let mut fds = [PollFd::new(self.reply.as_fd(), PollFlags::POLLIN)];
        let wait = READY_WAIT + TERM_WAIT + Duration::from_secs(1);
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Err(fail("cannot start: its supervisor did not answer".into())),
            Ok(_) => {}
            Err(e) => return Err(fail(format!("cannot start: poll ({e})"))),
        }
        let mut buf = vec![0u8; 4096];
        let n = read_retrying(self.reply.as_fd(), &mut buf)
            .map_err(|e| fail(format!("cannot start: read its supervisor's report ({e})")))?;
        let Some((code, pid, text)) = parse_report(&buf[..n]) else {
            return Err(fail(
                "cannot start: its supervisor ended without a report".into(),
            ));
        };
        if code != 0 {
            return Err(fail(text));
        }
        let raw = Pid::from_raw(i32::try_from(pid).unwrap_or(0));
        let start = crate::ident::proc_start_time(raw)
            .ok_or_else(|| fail(format!("(PID {pid}) exited as soon as it was ready")))?;
        Running::adopt(self.program.clone(), pid, start)
            .ok_or_else(|| fail(format!("(PID {pid}) exited as soon as it was ready")))
            .inspect(|r| {
                tracing::debug!(pid = r.pid, target = %target, "rootless uplink: pasta is ready");
            })
    }
}

/// `(code, pasta's pid, message)` of a supervisor's report.
fn parse_report(buf: &[u8]) -> Option<(i32, u32, String)> {
    let code = i32::from_ne_bytes(buf.get(0..4)?.try_into().ok()?);
    let pid = u32::from_ne_bytes(buf.get(4..8)?.try_into().ok()?);
    let text = String::from_utf8_lossy(&buf[8..]).trim().to_owned();
    Some((code, pid, text))
}

fn report(code: i32, pid: u32, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + text.len().min(MESSAGE_MAX));
    out.extend_from_slice(&code.to_ne_bytes());
    out.extend_from_slice(&pid.to_ne_bytes());
    let mut end = text.len().min(MESSAGE_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&text.as_bytes()[..end]);
    out
}

fn read_retrying(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::result::Result<usize, Errno> {
    loop {
        match read(fd, buf) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

fn reap(child: Pid) {
    loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// End the forked process at once: no atexit handlers, no stdio flushing
/// (they belong to the process it was forked from).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions; it does not return.
    unsafe { nix::libc::_exit(code) }
}

/// The supervisor's life (see the module's doc). Never returns.
fn supervise(ctl: OwnedFd, reply: OwnedFd, program: &Path, pasta: &Pasta) -> ! {
    let _ = nix::sys::prctl::set_name(c"podnet-uplink");
    // Out of the caller's session: a terminal's ^C to its process group
    // must not end a shared host's uplink.
    let _ = nix::unistd::setsid();
    let (ctl, reply) = keep_only(ctl, reply);
    let mut pid = [0u8; 4];
    let target = match read_retrying(ctl.as_fd(), &mut pid) {
        Ok(4) => Pid::from_raw(i32::from_ne_bytes(pid)),
        // The entry failed or was dropped before it started pasta.
        _ => exit_now(0),
    };
    drop(ctl);
    let say = |code: i32, pid: u32, text: &str| {
        let _ = write(&reply, &report(code, pid, text));
    };
    let target_fd =
        match crate::holder::pidfd_of(target, crate::ident::proc_start_time(target).unwrap_or(0)) {
            Ok(Some(fd)) => fd,
            _ => {
                say(
                    1,
                    0,
                    &format!("cannot start: the namespace's process {target} is gone"),
                );
                exit_now(1)
            }
        };
    let (pasta_pid, ready, stderr) = match spawn(program, pasta, target) {
        Ok(v) => v,
        Err(text) => {
            say(1, 0, &text);
            exit_now(1)
        }
    };
    let Some(pasta_fd) = crate::ident::proc_start_time(pasta_pid)
        .and_then(|start| crate::holder::pidfd_of(pasta_pid, start).ok().flatten())
    else {
        let status = wait_status(pasta_pid);
        say(1, 0, &format!("exited at once ({status})"));
        exit_now(1)
    };
    let mut message = Vec::new();
    match wait_ready(&ready, &stderr, &pasta_fd, &mut message) {
        Ok(()) => say(0, u32::try_from(pasta_pid.as_raw()).unwrap_or(0), ""),
        Err(why) => {
            end(pasta_pid, &pasta_fd);
            let status = wait_status(pasta_pid);
            let said = String::from_utf8_lossy(&message).trim().to_owned();
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            };
            say(1, 0, &format!("failed to start: {why} ({status}){said}"));
            exit_now(1)
        }
    }
    drop((reply, ready));
    watch(target_fd, pasta_pid, pasta_fd, stderr)
}

/// Fork and exec pasta for `target`, with its `--pid` file at
/// [`READY_FD`] and its stderr on a pipe: (its PID, the readiness pipe,
/// the stderr pipe), or why not.
fn spawn(
    program: &Path,
    pasta: &Pasta,
    target: Pid,
) -> std::result::Result<(Pid, OwnedFd, OwnedFd), String> {
    let argv = pasta
        .argv(program, target)
        .map_err(|_| "cannot start: an option has a NUL byte".to_owned())?;
    let path = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| "cannot start: the program's path has a NUL byte".to_owned())?;
    let (ready_r, ready_w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("cannot start: pipe ({e})"))?;
    let (err_r, err_w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("cannot start: pipe ({e})"))?;
    // SAFETY: the supervisor has one thread (it was forked from a
    // single-threaded process), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("cannot start: fork ({e})")),
        Ok(ForkResult::Child) => {
            drop((ready_r, err_r));
            exec_pasta(&path, &argv, ready_w, err_w)
        }
        Ok(ForkResult::Parent { child }) => {
            // Only pasta holds the write ends: their end of file is its exit.
            drop((ready_w, err_w));
            Ok((child, ready_r, err_r))
        }
    }
}

/// In pasta's child: its stderr and `--pid` pipe in place, every other fd
/// closed, then exec. Never returns.
fn exec_pasta(path: &CString, argv: &[CString], ready: OwnedFd, stderr: OwnedFd) -> ! {
    use nix::libc;
    let (ready, stderr) = (ready.into_raw_fd(), stderr.into_raw_fd());
    // SAFETY: plain fd calls on raw fds of this single-threaded child. The
    // two pipes are first copied above 9 (out of the way of the slots they
    // go to), then placed at 2 and READY_FD without close-on-exec; every
    // fd above READY_FD is closed, as is 3 and 4 (close-on-exec anyway).
    unsafe {
        let ready = libc::fcntl(ready, libc::F_DUPFD_CLOEXEC, 10);
        let stderr = libc::fcntl(stderr, libc::F_DUPFD_CLOEXEC, 10);
        if ready < 0 || stderr < 0 {
            exit_now(127);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
        if libc::dup2(stderr, 2) != 2 || libc::dup2(ready, READY_FD) != READY_FD {
            exit_now(127);
        }
        libc::close(3);
        libc::close(4);
        libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32);
    }
    // Signals as a new program expects them (as std's Command does): Rust
    // ignores SIGPIPE, and an ignored disposition survives exec; pasta of
    // Debian 12 refuses to start with SIGPIPE already ignored.
    // SAFETY: setting a disposition to SIG_DFL runs no handler code.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) };
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    let _ = nix::unistd::execv(path, argv);
    let _ = write(
        // SAFETY: fd 2 is the stderr pipe placed above, open until exit.
        unsafe { BorrowedFd::borrow_raw(2) },
        format!("exec {}: {}\n", path.to_string_lossy(), Errno::last()).as_bytes(),
    );
    exit_now(127)
}

/// Wait until pasta writes its PID to the `--pid` pipe; what it says on
/// stderr meanwhile is kept in `message`.
fn wait_ready(
    ready: &OwnedFd,
    stderr: &OwnedFd,
    pasta: &OwnedFd,
    message: &mut Vec<u8>,
) -> std::result::Result<(), &'static str> {
    let deadline = Instant::now() + READY_WAIT;
    let mut stderr_open = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("not ready after 10 s");
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = vec![
            PollFd::new(ready.as_fd(), PollFlags::POLLIN),
            PollFd::new(pasta.as_fd(), PollFlags::POLLIN),
        ];
        if stderr_open {
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return Err("poll failed"),
        }
        let revents = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .unwrap_or(PollFlags::empty())
        };
        let (ready_ev, pasta_ev, err_ev) = (revents(0), revents(1), revents(2));
        if !err_ev.is_empty() {
            let mut buf = [0u8; 1024];
            match read_retrying(stderr.as_fd(), &mut buf) {
                Ok(0) | Err(_) => stderr_open = false,
                Ok(n) => {
                    if message.len() < MESSAGE_MAX {
                        message.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        if !ready_ev.is_empty() {
            let mut buf = [0u8; 32];
            // Its PID: ready. End of file with nothing: it exited first.
            return match read_retrying(ready.as_fd(), &mut buf) {
                Ok(n) if n > 0 => Ok(()),
                _ => Err("it exited before it was ready"),
            };
        }
        if !pasta_ev.is_empty() && !stderr_open {
            return Err("it exited before it was ready");
        }
    }
}

/// Ask pasta to exit (SIGTERM), then make it (SIGKILL).
fn end(pid: Pid, pidfd: &OwnedFd) {
    let _ = kill(pid, Signal::SIGTERM);
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(TERM_WAIT.as_millis()).unwrap_or(1000);
    if !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(1)) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Reap pasta, saying how it ended.
fn wait_status(pid: Pid) -> String {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::Exited(_, code)) => return format!("exit status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => return format!("killed by {sig}"),
            Ok(other) => return format!("{other:?}"),
            Err(e) => return format!("not reaped: {e}"),
        }
    }
}

/// Until either ends: the namespace's holder (then pasta is ended) or
/// pasta. pasta's stderr is drained meanwhile, so it never blocks on it.
fn watch(target: OwnedFd, pasta_pid: Pid, pasta: OwnedFd, stderr: OwnedFd) -> ! {
    let mut stderr_open = true;
    loop {
        let mut fds = vec![
            PollFd::new(target.as_fd(), PollFlags::POLLIN),
            PollFd::new(pasta.as_fd(), PollFlags::POLLIN),
        ];
        if stderr_open {
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => {
                end(pasta_pid, &pasta);
                let _ = wait_status(pasta_pid);
                exit_now(1)
            }
        }
        let revents = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .unwrap_or(PollFlags::empty())
        };
        let (target_ev, pasta_ev, err_ev) = (revents(0), revents(1), revents(2));
        if !target_ev.is_empty() {
            end(pasta_pid, &pasta);
            let _ = wait_status(pasta_pid);
            exit_now(0)
        }
        if !pasta_ev.is_empty() {
            let _ = wait_status(pasta_pid);
            exit_now(0)
        }
        if !err_ev.is_empty() {
            let mut buf = [0u8; 4096];
            if matches!(read_retrying(stderr.as_fd(), &mut buf), Ok(0) | Err(_)) {
                stderr_open = false;
            }
        }
    }
}

/// In the supervisor: stdio on /dev/null, `ctl` and `reply` at 3 and 4,
/// every other fd closed (the caller's sockets, pidfds and files must not
/// be held by a process that outlives it).
fn keep_only(ctl: OwnedFd, reply: OwnedFd) -> (OwnedFd, OwnedFd) {
    use nix::libc;
    let (ctl, reply) = (ctl.into_raw_fd(), reply.into_raw_fd());
    // SAFETY: plain fd calls on raw fds of this single-threaded, forked
    // process. Both fds are first copied above 9, out of the way of the
    // slots 0-4; the copies are placed at 3 and 4 and every fd above 4 is
    // closed, the originals included. The two returned are owned by the
    // caller only.
    unsafe {
        let ctl = libc::fcntl(ctl, libc::F_DUPFD_CLOEXEC, 10);
        let reply = libc::fcntl(reply, libc::F_DUPFD_CLOEXEC, 10);
        if ctl < 0 || reply < 0 {
            exit_now(1);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        if libc::dup3(ctl, 3, libc::O_CLOEXEC) != 3 || libc::dup3(reply, 4, libc::O_CLOEXEC) != 4 {
            exit_now(1);
        }
        libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32);
        (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_not_on_path_is_missing_naming_the_package() {
        let err = Pasta::new()
            .program("podnet-no-such-pasta")
            .resolve()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ProgramMissing {
                    package: "passt",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("passt"), "{err}");
    }

    #[test]
    fn a_path_that_is_not_executable_is_missing() {
        use std::os::unix::fs::PermissionsExt;
        let file = std::env::temp_dir().join(format!("podnet-pasta-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let got = Pasta::new().program(&file).resolve();
        std::fs::remove_file(&file).unwrap();
        let err = got.unwrap_err();
        assert!(matches!(err, Error::ProgramMissing { .. }), "{err}");
    }

    #[test]
    fn podnet_options_come_first_and_the_target_last() {
        let argv = Pasta::new()
            .args(["-a", "198.18.100.2"])
            .argv(Path::new("/usr/bin/pasta"), Pid::from_raw(42))
            .unwrap();
        let argv: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(argv[0], "/usr/bin/pasta");
        assert!(argv.contains(&"--config-net") && argv.contains(&"--foreground"));
        assert_eq!(&argv[argv.len() - 3..], ["-a", "198.18.100.2", "42"]);
    }

    #[test]
    fn a_report_reads_back_and_a_short_one_is_none() {
        assert_eq!(
            parse_report(&report(0, 1234, "")),
            Some((0, 1234, String::new()))
        );
        assert_eq!(
            parse_report(&report(1, 0, "no tun")),
            Some((1, 0, "no tun".into()))
        );
        assert_eq!(parse_report(&[1, 2, 3]), None);
        let long = "é".repeat(MESSAGE_MAX);
        assert!(report(1, 0, &long).len() <= 8 + MESSAGE_MAX);
    }
}
