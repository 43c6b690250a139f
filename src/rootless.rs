//! Running without root: entering a user namespace of our own, and telling
//! whether the process has the privilege podnet needs.
//!
//! podnet needs `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` in the user namespace
//! that owns the host network namespace (the one the bridge lives in).
//! [`enter`] gets both for an unprivileged user: it unshares a user and a
//! network namespace and maps the caller to root inside (user_namespaces(7)).
//! Everything podnet then makes lives inside those namespaces; nothing
//! outside is touched, and everything goes when the process exits.

use std::fs;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{getegid, geteuid};

use crate::error::{Error, Result};

/// Capability bits (capabilities(7)).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Enter a new user namespace and a new network namespace, mapped so that
/// the caller is root inside.
///
/// Call it first thing in `main`, before starting the tokio runtime or any
/// other thread: `unshare(CLONE_NEWUSER)` refuses a multi-threaded process.
/// Afterwards the process is the "host" of its own network (with `lo` up):
/// build a [`Network`](crate::Network) and create sandboxes as usual. It
/// works for root too, which then also stays off the machine's real network.
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
///         let pod = net.sandbox("web").create().await?;
///         pod.remove().await
///     })
/// }
/// ```
///
/// # Errors
/// [`Error::Sys`] with `EINVAL` if the process already has more than one
/// thread; [`Error::NotPermitted`] if user namespaces are disabled for this
/// user (`kernel.unprivileged_userns_clone`, `user.max_user_namespaces`);
/// [`Error::Io`] if the id maps cannot be written.
pub fn enter() -> Result<()> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(Error::Sys {
            op: "enter a user namespace",
            object: format!("from a process with {threads} threads (call it before starting any)"),
            errno: Errno::EINVAL,
        });
    }
    let (uid, gid) = (geteuid(), getegid());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
        .map_err(|errno| Error::sys("unshare", "a user and a network namespace", errno))?;
    // setgroups must be denied before an unprivileged process may write gid_map.
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    // The new host namespace behaves like a host: its loopback works.
    crate::link::loopback_up_blocking()
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

/// Whether the process is in the machine's initial user namespace, whose
/// uid map is the identity over the whole range.
pub(crate) fn in_initial_userns() -> bool {
    fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

/// The effective uid as the parent user namespace sees it (the real user
/// behind a `--map-root-user`), or the uid itself if it is not mapped.
pub(crate) fn outer_uid() -> u32 {
    let uid = geteuid().as_raw();
    let Ok(map) = fs::read_to_string("/proc/self/uid_map") else {
        return uid;
    };
    for line in map.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [inside, outside, count] = f[..] {
            let u = u64::from(uid);
            if u >= inside && u < inside + count {
                return u32::try_from(outside + (u - inside)).unwrap_or(uid);
            }
        }
    }
    uid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_refuses_a_multithreaded_process() {
        // The test harness runs this on a thread of its own: more than one.
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
