//! Running without root: a user and a network namespace where the caller
//! is root (user_namespaces(7)), shared and persistent per user
//! ([`enter`], until [`teardown`]) or private to the process
//! ([`enter_private`]), optionally with a way out through pasta
//! ([`Entry::uplink`]), and whether the process has `CAP_NET_ADMIN` and
//! `CAP_SYS_ADMIN` over the host network namespace, which podnet needs.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{getegid, geteuid};

use crate::error::{Error, Result};
use crate::holder::{HolderSpec, HOLDER_COMM};
use crate::paths::{in_initial_userns, outer_uid};

mod outer;
mod pasta;

pub(crate) use outer::{
    has_outside, listener_outside, socket_outside, Kind as SocketKind, Outside,
};
pub use pasta::{uplink, uplink_ended, Pasta};

/// How to enter rootless namespaces: this user's shared host
/// ([`Entry::shared`], as [`enter`]) or namespaces of this process only
/// ([`Entry::private`], as [`enter_private`]), with or without an uplink.
///
/// Without an uplink the rootless host namespace reaches nothing beyond
/// itself. With one ([`Entry::uplink`]), pasta (Debian `passt`) gives it
/// an interface and a default route to the machine's network, from the
/// namespaces the process came from; a network built there with egress
/// lets its pods out through it, and the gateway address pasta gives the
/// namespace reaches the machine's own loopback.
///
/// ```no_run
/// fn main() -> podnet::Result<()> {
///     podnet::rootless::Entry::private()
///         .uplink(podnet::rootless::Pasta::new())
///         .enter()?;
///     // ... start the runtime, build networks with egress ...
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Entry {
    shared: bool,
    uplink: Option<Pasta>,
}

impl Entry {
    /// This user's shared, persistent rootless host (see [`enter`]).
    pub fn shared() -> Entry {
        Entry {
            shared: true,
            uplink: None,
        }
    }

    /// A user and network namespace of this process only (see
    /// [`enter_private`]).
    pub fn private() -> Entry {
        Entry {
            shared: false,
            uplink: None,
        }
    }

    /// Give the rootless host namespace a way out through `pasta`.
    ///
    /// pasta runs in the namespaces the process came from and ends with the
    /// rootless host namespace: with the process for private namespaces,
    /// with the shared host's holder (at [`teardown`]) for the shared one,
    /// whose later entries find and keep it (and start a new one if it
    /// has died). [`uplink()`](uplink) says whether it still runs; if it
    /// dies, sandboxes and networks go on, without a way out.
    pub fn uplink(mut self, pasta: Pasta) -> Self {
        self.uplink = Some(pasta);
        self
    }

    /// Enter. Call it first thing in `main`, before any other thread
    /// starts (see [`enter`]).
    ///
    /// # Errors
    /// As [`enter`]; with an uplink also [`Error::ProgramMissing`] if pasta
    /// is not installed and [`Error::Uplink`] (with pasta's own message) if
    /// it cannot start. Those are found before anything is changed, except
    /// that pasta can only fail to attach once the namespaces exist: for
    /// private namespaces, the process has then entered them already.
    pub fn enter(&self) -> Result<()> {
        if self.shared {
            enter_shared(self.uplink.as_ref())
        } else {
            enter_private_with(self.uplink.as_ref())
        }
    }
}

/// Capability bits (capabilities(7)).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Enter this user's shared rootless host: a user namespace (where the
/// caller is root) and a network namespace, kept alive by a holder process
/// (`podnet-pause rootless-host <uid>`) so that they outlive the caller.
///
/// The first call of a user makes them; later calls, from any process of
/// that user, join them. So rootless sandboxes made
/// [`persistent`](crate::SandboxBuilder::persistent) outlive their creator,
/// and two rootless programs of one user share one bridge and one address
/// pool, as rootless podman does with its pause process. The holder's PID
/// is kept in `rootless-host` in the user's state directory
/// (`$XDG_RUNTIME_DIR/podnet`, else `/tmp/podnet-<uid>`); [`teardown`] ends
/// it and everything inside. `lo` of the host namespace is up.
///
/// Call it first thing in `main`, before starting the tokio runtime or any
/// other thread: joining a user namespace refuses a multi-threaded process.
/// Just before it changes namespaces, it forks `podnet-outer`, a small
/// process that stays in the namespaces the caller came from and makes
/// sockets there for it, so that the networks' DNS servers can forward to
/// the host's resolvers, and ports can be published on the real host
/// ([`PortMapping::real_host`](crate::PortMapping::real_host)); it exits
/// with the caller.
/// A process that is already in a user namespace of its own (under
/// `unshare --user`) cannot join the shared one; it gets private namespaces
/// instead, as from [`enter_private`].
///
/// ```no_run
/// fn main() -> podnet::Result<()> {
///     podnet::rootless::enter()?;
///     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
///     rt.block_on(async {
///         let net = podnet::Network::builder("podnet0")
///             .subnet("10.88.0.0/16".parse().unwrap())
///             .build()
///             .await?;
///         // Still there after this process exits; open_sandbox("web") re-attaches.
///         let pod = net.sandbox("web").persistent(true).create().await?;
///         Ok(())
///     })
/// }
/// ```
///
/// # Errors
/// [`Error::Sys`] with `EINVAL` if the process already has more than one
/// thread; [`Error::NotPermitted`] if user namespaces are disabled for this
/// user (`kernel.unprivileged_userns_clone`, `user.max_user_namespaces`);
/// [`Error::Io`] if the state directory or the id maps cannot be written.
pub fn enter() -> Result<()> {
    Entry::shared().enter()
}

fn enter_shared(uplink: Option<&Pasta>) -> Result<()> {
    single_threaded()?;
    if !in_initial_userns() {
        // Already in a user namespace of its own: the shared host (a child
        // of the initial one) is not ours to join, nor to make from here.
        return enter_private_with(uplink);
    }
    let dir = host_dir();
    crate::paths::ensure_private_dir(&dir)?;
    let lock_path = dir.join("rootless.lock");
    let lock =
        crate::paths::open_private(&lock_path).map_err(|e| Error::io("open", &lock_path, e))?;
    // Serialises makers: two first calls at once make one host.
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, errno)| Error::sys("lock", lock_path.display().to_string(), errno))?;
    let pid_file = dir.join(HOST_FILE);
    let uplink_file = dir.join(UPLINK_FILE);
    // Checked (pasta installed, /dev/net/tun usable) before anything is made.
    let supervisor = uplink.map(pasta::Supervisor::fork).transpose()?;
    let outer = outer::Outer::start()?;
    if let Some(pid) = live_host(&pid_file) {
        let (up, started) = match (live_uplink(&uplink_file), supervisor) {
            (Some(up), _) => (Some(up), false),
            (None, Some(sup)) => {
                let up = sup.start(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)))?;
                record_uplink(&uplink_file, &up, uplink)?;
                (Some(up), true)
            }
            (None, None) => (None, false),
        };
        return match join(pid) {
            Ok(()) => {
                outer.keep();
                if let Some(up) = up {
                    up.keep();
                }
                Ok(())
            }
            // In a user namespace of our own: the shared one is not ours to join.
            Err(e)
                if matches!(e.errno(), Some(Errno::EPERM | Errno::EINVAL))
                    || matches!(e, Error::NotPermitted { .. }) =>
            {
                drop(outer);
                if let Some(up) = up.filter(|_| started) {
                    up.end();
                    let _ = fs::remove_file(&uplink_file);
                }
                enter_private_with(uplink)
            }
            Err(e) => Err(e),
        };
    }
    let (uid, gid) = (geteuid(), getegid());
    let holder = crate::holder::spawn_here(&HolderSpec {
        argv: vec![HOLDER_COMM.into(), HOST_ARG.into(), uid.to_string()],
        namespaces: CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET,
        die_with_creator: false,
    })?;
    let pid = holder.pid();
    let proc = format!("/proc/{pid}");
    let maps = [
        ("setgroups", "deny".to_owned()),
        ("uid_map", format!("0 {uid} 1")),
        ("gid_map", format!("0 {gid} 1")),
    ];
    for (file, content) in maps {
        let path = format!("{proc}/{file}");
        if let Err(e) = fs::write(&path, content) {
            let _ = holder.kill();
            return Err(Error::io("write", path, e));
        }
    }
    let tmp = dir.join(format!(".{HOST_FILE}.tmp"));
    let record = format!("{} {}\n", pid, holder.start_time());
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, record.as_bytes()))
        .and_then(|()| fs::rename(&tmp, &pid_file));
    if let Err(e) = written {
        let _ = holder.kill();
        return Err(Error::io("write", pid_file, e));
    }
    // pasta attaches while the process is still outside: if it fails, the
    // new host goes again and nothing has changed for the process.
    let up = match supervisor.map(|sup| sup.start(pid)).transpose() {
        Ok(up) => up,
        Err(e) => {
            let _ = holder.kill();
            let _ = fs::remove_file(&pid_file);
            return Err(e);
        }
    };
    if let (Some(up), Some(pasta)) = (&up, uplink) {
        if let Err(e) = record_uplink(&uplink_file, up, Some(pasta)) {
            let _ = holder.kill();
            let _ = fs::remove_file(&pid_file);
            return Err(e);
        }
    }
    join(u32::try_from(pid.as_raw()).unwrap_or(0))?;
    outer.keep();
    if let Some(up) = up {
        up.keep();
    }
    Ok(())
}

/// Enter a new user namespace and a new network namespace of this process
/// only, mapped so that the caller is root inside; they end with the
/// process, and nothing outside is touched.
///
/// For programs that must leave nothing behind (demos, test harnesses,
/// one-off tools); [`enter`] is the shared, persistent variant. The same
/// rule applies: call it before starting any thread. It works for root too,
/// which then also stays off the machine's real network. `lo` of the new
/// host namespace is up. As [`enter`], it forks `podnet-outer` first.
///
/// # Errors
/// As [`enter`].
pub fn enter_private() -> Result<()> {
    Entry::private().enter()
}

fn enter_private_with(uplink: Option<&Pasta>) -> Result<()> {
    single_threaded()?;
    let (uid, gid) = (geteuid(), getegid());
    let supervisor = uplink.map(pasta::Supervisor::fork).transpose()?;
    let outer = outer::Outer::start()?;
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
        .map_err(|errno| Error::sys("unshare", "a user and a network namespace", errno))?;
    // setgroups must be denied before an unprivileged process may write gid_map.
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    crate::link::loopback_up_blocking()?;
    outer.keep();
    if let Some(sup) = supervisor {
        sup.start(nix::unistd::getpid())?.keep();
    }
    Ok(())
}

/// End this user's shared rootless host (see [`enter`]): its holder and
/// every other process in its user namespace (sandbox holders, their
/// members). Returns whether there was one. Callable from outside the
/// namespace or from inside it (the caller itself is spared, and the
/// namespaces go when it exits).
///
/// # Errors
/// [`Error::Sys`] if a process cannot be signalled.
pub fn teardown() -> Result<bool> {
    let dir = host_dir();
    let pid_file = dir.join(HOST_FILE);
    let Some(host) = live_host(&pid_file) else {
        let _ = fs::remove_file(&pid_file);
        return Ok(false);
    };
    let userns = fs::read_link(format!("/proc/{host}/ns/user"))
        .map_err(|e| Error::io("read", format!("/proc/{host}/ns/user"), e))?;
    let me = std::process::id();
    let mut victims = Vec::new();
    for entry in fs::read_dir("/proc")
        .map_err(|e| Error::io("list", "/proc", e))?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && fs::read_link(format!("/proc/{pid}/ns/user")).ok().as_ref() == Some(&userns)
        {
            victims.push(pid);
        }
    }
    victims.push(host);
    // A namespace full of holders would keep the user namespace alive: end them all.
    for pid in victims {
        let target = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
        match nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => {
                return Err(Error::sys(
                    "kill",
                    format!("process {pid} of the rootless host"),
                    errno,
                ))
            }
        }
    }
    let _ = fs::remove_file(&pid_file);
    // Its pasta ends with the holder (its supervisor sees to that).
    let _ = fs::remove_file(dir.join(UPLINK_FILE));
    let _ = fs::remove_file(dir.join("rootless.lock"));
    let _ = fs::remove_dir(&dir); // only if nothing else is kept there
    Ok(true)
}

/// Where the shared host is recorded: the user's default state directory,
/// as seen from outside any user namespace, so that [`teardown`] finds it
/// from inside the host too (where root is the user mapped to 0).
fn host_dir() -> std::path::PathBuf {
    if std::env::var_os("PODNET_STATE_DIR").is_some() {
        return crate::paths::default_root();
    }
    if outer_uid() == 0 {
        std::path::PathBuf::from("/run/podnet")
    } else {
        crate::paths::default_root()
    }
}

/// The file, in the user's state directory, naming the shared host's holder.
const HOST_FILE: &str = "rootless-host";
/// The holder's argv[1], which marks it as a rootless host.
const HOST_ARG: &str = "rootless-host";

/// The file, in the user's state directory, naming the shared host's
/// uplink: `PID START PROGRAM`.
const UPLINK_FILE: &str = "rootless-uplink";

/// The shared host's uplink recorded in `file`, if it still runs.
fn live_uplink(file: &std::path::Path) -> Option<pasta::Running> {
    let text = fs::read_to_string(file).ok()?;
    let mut f = text.trim_end_matches('\n').splitn(3, ' ');
    let pid: u32 = f.next()?.parse().ok()?;
    let start: u64 = f.next()?.parse().ok()?;
    let program = f.next().unwrap_or("pasta").to_owned();
    pasta::Running::adopt(program, pid, start)
}

/// Record the shared host's uplink `up` in `file` (atomically: a reader
/// sees the old record or the new one).
fn record_uplink(file: &std::path::Path, up: &pasta::Running, pasta: Option<&Pasta>) -> Result<()> {
    let raw = nix::unistd::Pid::from_raw(i32::try_from(up.pid()).unwrap_or(0));
    let start = crate::ident::proc_start_time(raw).unwrap_or(0);
    let program = pasta.map_or_else(|| "pasta".to_owned(), |p| p.display_name());
    let tmp = file.with_extension("tmp");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(
                &mut f,
                format!("{} {start} {program}\n", up.pid()).as_bytes(),
            )
        })
        .and_then(|()| fs::rename(&tmp, file))
        .map_err(|e| Error::io("write", file, e))
}

/// The PID of the live shared host named by `pid_file`, if any: alive with
/// the recorded start time, and a rootless-host holder (not a reused PID).
fn live_host(pid_file: &std::path::Path) -> Option<u32> {
    let text = fs::read_to_string(pid_file).ok()?;
    let mut f = text.split_whitespace();
    let pid: i32 = f.next()?.parse().ok()?;
    let start: u64 = f.next()?.parse().ok()?;
    if !crate::ident::is_alive(pid, start) {
        return None;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0);
    (args.next() == Some(HOLDER_COMM.as_bytes()) && args.next() == Some(HOST_ARG.as_bytes()))
        .then(|| u32::try_from(pid).ok())
        .flatten()
}

/// Join the user and network namespaces of process `pid`.
fn join(pid: u32) -> Result<()> {
    let open = |ns: &str| -> Result<fs::File> {
        let path = format!("/proc/{pid}/ns/{ns}");
        fs::File::open(&path).map_err(|e| Error::io("open", path, e))
    };
    let (user, net) = (open("user")?, open("net")?);
    setns(user, CloneFlags::CLONE_NEWUSER).map_err(|errno| {
        Error::sys(
            "join the user namespace of the rootless host",
            pid.to_string(),
            errno,
        )
    })?;
    setns(net, CloneFlags::CLONE_NEWNET).map_err(|errno| {
        Error::sys(
            "join the network namespace of the rootless host",
            pid.to_string(),
            errno,
        )
    })?;
    crate::link::loopback_up_blocking()
}

fn single_threaded() -> Result<()> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(Error::Sys {
            op: "enter a user namespace",
            object: format!("from a process with {threads} threads (call it before starting any)"),
            errno: Errno::EINVAL,
        });
    }
    Ok(())
}

fn write_proc(path: &'static str, content: &str) -> Result<()> {
    fs::write(path, content).map_err(|e| Error::io("write", path, e))
}

fn thread_count() -> Result<usize> {
    let dir = "/proc/self/task";
    fs::read_dir(dir)
        .map(|d| d.count())
        .map_err(|e| Error::io("list", dir, e))
}

/// Fail fast with [`Error::NotPermitted`] unless the process has
/// `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` in its user namespace. (Whether that
/// namespace owns the host network namespace only the kernel can say: an
/// EPERM from it becomes the same error.)
pub(crate) fn check_privilege(op: &str) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("read", "/proc/self/status", e))?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let need = (1u64 << CAP_NET_ADMIN) | (1u64 << CAP_SYS_ADMIN);
    if caps & need == need {
        Ok(())
    } else {
        Err(Error::not_permitted(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_refuses_a_multithreaded_process() {
        // The test harness runs this on a thread of its own: more than one.
        let err = enter_private().unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EINVAL));
        let err = enter().unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EINVAL));
        assert!(err.to_string().contains("threads"), "{err}");
    }

    #[test]
    fn outer_uid_of_an_unmapped_process_is_its_uid() {
        if in_initial_userns() {
            assert_eq!(outer_uid(), geteuid().as_raw());
        }
    }
}
