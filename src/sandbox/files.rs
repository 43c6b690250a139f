//! The resolv.conf and /etc/hosts that a sandbox's processes see when its
//! network has DNS: written to the store, mounted over the host's files in
//! a mount namespace of the sandbox's (a pod's holder's, or one that
//! `Sandbox::command` makes per handle), and unlinked at once, so they live
//! exactly as long as their mounts. The host's files are never written.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::host::NetInner;

/// Where glibc (and every other resolver) reads its servers.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where it reads static names.
const HOSTS: &str = "/etc/hosts";

/// The two files of one sandbox, ready to mount.
#[derive(Debug)]
pub(crate) struct NameFiles {
    /// Whose store the files are written to before they are mounted.
    net: Arc<NetInner>,
    sandbox: String,
    resolv_conf: String,
    hosts: String,
}

impl NameFiles {
    /// The files of sandbox `name` with addresses `addrs` (and `hostname`,
    /// if it has one of its own), or `None` if the network has no DNS.
    pub(crate) fn of(
        net: &Arc<NetInner>,
        name: &str,
        hostname: Option<&str>,
        addrs: &[IpAddr],
    ) -> Option<NameFiles> {
        let dns = net.dns.as_ref()?;
        Some(NameFiles {
            net: net.clone(),
            sandbox: name.to_owned(),
            resolv_conf: dns.settings.resolv_conf(),
            hosts: dns.settings.hosts(name, hostname, addrs),
        })
    }

    /// Mount both files over the host's, in the calling thread's mount
    /// namespace (whose mounts must already be slaves: see
    /// [`make_mounts_slaves`]). A file the host does not have at all (not
    /// even as a dangling symlink) is left out: podnet makes no paths.
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be written to the store;
    /// [`Error::Sys`] or [`Error::NotPermitted`] if it cannot be mounted.
    pub(crate) fn mount(&self) -> Result<()> {
        for (target, content) in [(RESOLV_CONF, &self.resolv_conf), (HOSTS, &self.hosts)] {
            let target = Path::new(target);
            if std::fs::symlink_metadata(target).is_err() {
                tracing::warn!(
                    sandbox = %self.sandbox,
                    "the host has no {}: the sandbox's processes have none either",
                    target.display()
                );
                continue;
            }
            let source = self.net.store.write_scratch(content)?;
            let mounted = crate::sys::mount_file_over(&source, target);
            let _ = std::fs::remove_file(&source);
            mounted.map_err(|e| {
                Error::sys(
                    "mount the DNS file over",
                    format!("{} for sandbox {:?}", target.display(), self.sandbox),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

/// Make every mount of the calling thread's mount namespace a slave
/// (`mount --make-rslave /`): the host's later mounts still reach it,
/// nothing mounted in it reaches the host.
pub(crate) fn make_mounts_slaves(what: &str) -> Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| Error::sys("make mounts slaves (mount --make-rslave /) for", what, e))
}

/// A new mount namespace: a copy of this process's mounts, with `files`
/// mounted in it. It is made on a thread of its own (a thread of a
/// multi-threaded process cannot change its mount namespace while it
/// shares its filesystem context) and kept by the returned fd.
///
/// # Errors
/// [`Error::NotPermitted`] without `CAP_SYS_ADMIN` in this process's user
/// namespace; what [`NameFiles::mount`] returns.
pub(crate) fn namespace_with(files: &NameFiles) -> Result<OwnedFd> {
    let what = format!("sandbox {:?}", files.sandbox);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("podnet-mounts".into())
            .spawn_scoped(s, || -> Result<OwnedFd> {
                nix::sched::unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)
                    .map_err(|e| Error::sys("make a mount namespace for", what.as_str(), e))?;
                make_mounts_slaves(&what)?;
                files.mount()?;
                std::fs::File::open("/proc/thread-self/ns/mnt")
                    .map(OwnedFd::from)
                    .map_err(|e| {
                        Error::io("open mount namespace of", "/proc/thread-self/ns/mnt", e)
                    })
            })
            .map_err(|e| Error::io("start a thread to make the mounts of", what.as_str(), e))?
            .join()
            .unwrap_or_else(|_| {
                Err(Error::sys(
                    "make a mount namespace for",
                    what.as_str(),
                    Errno::ECHILD,
                ))
            })
    })
}
