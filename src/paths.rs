//! Where podnet keeps its files and who they belong to: the default state
//! root, private directories and files (0700/0600, never through a
//! symlink), and the caller's user namespace as those choices see it.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::libc;
use nix::unistd::geteuid;

use crate::error::{Error, Result};

/// The default root of all stores: `$PODNET_STATE_DIR` if set (an
/// absolute path), else `/run/podnet` for root in the machine's initial user
/// namespace, else `$XDG_RUNTIME_DIR/podnet`, else `/tmp/podnet-<uid>` (uid
/// as seen outside any user namespace).
pub(crate) fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PODNET_STATE_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir;
        }
    }
    if geteuid().is_root() && in_initial_userns() {
        return PathBuf::from("/run/podnet");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if dir.is_absolute() && dir.is_dir() {
            return dir.join("podnet");
        }
    }
    PathBuf::from(format!("/tmp/podnet-{}", outer_uid()))
}

/// Make `dir` (mode 0700) if it is missing, and check that it is a real
/// directory of ours that nobody else may write.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create state directory", dir, e)),
    }
    let meta =
        fs::symlink_metadata(dir).map_err(|e| Error::io("inspect state directory", dir, e))?;
    let reason = if !meta.file_type().is_dir() {
        "it is not a directory (a symlink?)"
    } else if meta.uid() != geteuid().as_raw() {
        "it belongs to another user"
    } else if meta.mode() & 0o022 != 0 {
        "others may write to it"
    } else {
        return Ok(());
    };
    Err(Error::StateCorrupt {
        path: dir.to_owned(),
        reason: format!("refusing state directory: {reason}"),
    })
}

/// Open (making it if needed, 0600) a file of the store for reading and
/// writing, never through a symlink.
pub(crate) fn open_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
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
