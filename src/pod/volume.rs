//! emptyDir-like volumes: a directory per volume, made with the pod and
//! removed with its sandbox (or by gc), bind-mounted at each member's path
//! in the pod's own mount namespace, which its holder keeps. The host's
//! directories under those paths are never changed.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use crate::error::{Error, Result};

/// A volume the pod's members share, like Kubernetes' `emptyDir`: empty
/// when the pod is made, gone when it is removed.
///
/// ```
/// use podnet::Volume;
/// let scratch = Volume::new("scratch");
/// let cache = Volume::tmpfs("cache", 64 << 20); // in memory, at most 64 MiB
/// # let _ = (scratch, cache);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub(crate) name: String,
    /// `Some(bytes)`: a tmpfs of at most that size.
    pub(crate) tmpfs: Option<u64>,
}

impl Volume {
    /// A volume in a directory under the network's state directory (on
    /// disk, or in memory if that directory is, as `/run` and
    /// `$XDG_RUNTIME_DIR` usually are), with no size limit of its own.
    pub fn new(name: impl Into<String>) -> Volume {
        Volume {
            name: name.into(),
            tmpfs: None,
        }
    }

    /// A volume in memory (tmpfs), of at most `size_limit` bytes.
    pub fn tmpfs(name: impl Into<String>, size_limit: u64) -> Volume {
        Volume {
            name: name.into(),
            tmpfs: Some(size_limit),
        }
    }
}

/// Where a member sees a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub volume: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// Check a mount point: absolute, an existing directory. podnet mounts
/// over existing directories and never makes paths on the host.
pub(crate) fn check_mount_point(member: &str, path: &Path) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidConfig {
            reason: format!("member {member:?}: mount path {}: {reason}", path.display()),
        })
    };
    if !path.is_absolute() {
        return bad("must be absolute");
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bad("is not a directory"),
        Err(e) => bad(&format!(
            "{e} (podnet mounts over an existing directory, it makes no paths on the host)"
        )),
    }
}

/// Make the volumes' directories under `dir` (on the host, mode 0777 as
/// Kubernetes' emptyDir, so members of any uid can write).
pub(crate) fn make_dirs(dir: &Path, volumes: &[Volume]) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |op, path: &Path, e| Error::io(op, path.display().to_string(), e);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(|e| io("create volumes directory", dir, e))?;
    for v in volumes {
        let path = dir.join(&v.name);
        std::fs::create_dir(&path).map_err(|e| io("create volume", &path, e))?;
        // Not subject to the umask, unlike mkdir's mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| io("set mode of volume", &path, e))?;
    }
    Ok(())
}

/// Mount the volumes; runs on a thread inside the pod's fresh mount
/// namespace, whose mounts are already slaves. Nothing made here outlives
/// that namespace.
pub(crate) fn mount_all(dir: &Path, volumes: &[Volume], mounts: &[Mount]) -> Result<()> {
    let err =
        |op: &'static str, path: &Path, errno| Error::sys(op, path.display().to_string(), errno);
    for v in volumes {
        if let Some(size) = v.tmpfs {
            let path = dir.join(&v.name);
            mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(format!("size={size},mode=0777").as_str()),
            )
            .map_err(|e| err("mount tmpfs volume", &path, e))?;
        }
    }
    for m in mounts {
        let source = dir.join(&m.volume);
        mount(
            Some(&source),
            &m.path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("bind-mount volume at", &m.path, e))?;
        if m.read_only {
            // A remount must keep the flags the kernel locked on the mount
            // (in a user namespace): carry over what is set.
            let st = statvfs(&m.path).map_err(|e| err("statvfs", &m.path, e))?;
            let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            for (fs, ms) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if st.flags().contains(fs) {
                    flags |= ms;
                }
            }
            mount(None::<&str>, &m.path, None::<&str>, flags, None::<&str>)
                .map_err(|e| err("make volume read-only at", &m.path, e))?;
        }
    }
    Ok(())
}
