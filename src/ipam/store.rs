//! The store's files: opening a network's store directory, its lock, the
//! sandbox records on disk (published whole, the done line filled in
//! place, read back with their checks), the bridge marker and cleanup.
//! Address reservations are in `alloc`, pod volumes in `volumes`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use nix::libc;
use nix::unistd::geteuid;

use super::record::{Record, DONE_DAMAGED, TORN};
use crate::error::{Error, Result};
use crate::paths::{ensure_private_dir, open_private};

/// The most bytes a record file may have (a record is a few hundred).
const RECORD_MAX: u64 = 4096;

/// Where the kernel tells this boot's id, a UUID made anew at every boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The store's note of the boot it was last opened in.
const BOOT_FILE: &str = "boot";

/// The files of the store's top directory that speak of kernel state (a
/// bridge, a table), which no reboot keeps.
const BOOT_BOUND_NOTES: [&str; 5] = [
    "bridge-made-here",
    "egress-table",
    "egress-made",
    ATTACH_PORTS_NOTE,
    LOCALNET_NOTE,
];

/// The store's note that the network's shared table of attachments' port
/// mappings may exist (`host::aports`): written before the table is first
/// made, taken away after it is deleted, so gc and `Network::remove()`
/// touch nf_tables for it only where it may be.
const ATTACH_PORTS_NOTE: &str = "attach-ports-table";

/// The store's note that podnet turned on `route_localnet` of the
/// network's bridge (`host::localnet`): written before the sysctl is
/// written, taken away after it is written back to 0.
const LOCALNET_NOTE: &str = "route-localnet";

/// A record just published by [`Store::create_record`], still open, so
/// that its holder can be filled in without another lookup.
#[derive(Debug)]
pub(crate) struct RecordFile {
    file: File,
    done_at: u64,
    /// The hash of the record's head, which the done line's check continues.
    head_hash: u64,
}

pub(super) fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::io(op, path, e)
}

/// The store's two notes on the network's egress table (`host::egress`
/// makes and deletes it), empty files whose being there is what they say.
/// The table is made between them and deleted between them, so a crash at
/// any point leaves notes that say at least what is there:
/// [`Made`](EgressNote::Made) only where the table is, and
/// [`Table`](EgressNote::Table) wherever it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EgressNote {
    /// `egress-table`: the table may exist (written before it is made,
    /// taken away after it is deleted), so gc and `Network::remove()` must
    /// delete it; without it they leave nf_tables alone.
    Table,
    /// `egress-made`: the table exists (written after it is made, taken
    /// away before it is deleted), so a create need not make it.
    Made,
}

impl EgressNote {
    fn file(self) -> &'static str {
        match self {
            EgressNote::Table => "egress-table",
            EgressNote::Made => "egress-made",
        }
    }
}

/// One network's store.
///
/// Layout, under `<root>/netns-<host netns cookie>/<network>/`:
///
/// ```text
/// lock               flock(2)ed around allocation and record creation (the
///                    kernel drops it if we die); gc holds it while it runs
/// next-v4, next-v6   index of the last address handed out (a hint, not a truth)
/// addr/<ip>          a symlink whose target is "<sandbox>@<instance id>"
/// sandbox/<name>     the sandbox's record (key=value lines)
/// bridge-made-here   present if podnet made the bridge
/// egress-table       present while the network's egress table may exist
/// egress-made        present while it surely does (see [`EgressNote`])
/// attach-ports-table present while the table of attachments' port
///                    mappings may exist
/// route-localnet     present while route_localnet of the bridge may be on
///                    because podnet turned it on
/// boot               the boot id of the boot it was last opened in
/// volumes/<owner>/   pod volumes of a sandbox instance (see `volumes`)
/// labels/<owner>     a sandbox instance's labels (see `labels`)
/// ```
///
/// Why symlinks: `symlink(2)` creates the link and its content in one atomic
/// step and fails with EEXIST if the name is taken, so two processes can never
/// both own an address, and a crash can never leave a half-written
/// reservation. Records are written to a temporary file first, then
/// published with `link(2)` (exclusive: a duplicate sandbox name fails).
/// The one later change, the holder and the addresses once the sandbox is
/// made, is filled into a fixed-width line with a check
/// (`done=PID:START,IPV4,IPV6,FNV`, blank until then) by one `pwrite`:
/// a crash leaves the record whole, with or without its holder, and a
/// reader that catches the line half-written sees the check fail and reads
/// again. The allocation cursor makes the next free address
/// one `symlink` away while the pool fills in order, as CNI host-local does.
///
/// Files are created 0600 and opened with `O_NOFOLLOW`; directories are made
/// 0700 and must belong to us.
#[derive(Debug)]
pub(crate) struct Store {
    pub(super) dir: PathBuf,
    pub(super) network: String,
    /// The network's tag (see `NetInner::tag`): its sandboxes' host-side
    /// veths are `<name>-<tag>`, which records are checked against.
    tag: String,
    /// The cursor files (`next-v4`, `next-v6`), opened once: read and
    /// written with one `pread`/`pwrite` each, only under the lock.
    pub(super) cursors: [std::sync::OnceLock<File>; 2],
}

/// Unique names for temporary files within this process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Open (making it if needed) the store of network `network` in the host
    /// namespace identified by `host`.
    pub(crate) fn open(root: &Path, host: &str, network: &str) -> Result<Store> {
        let host_dir = root.join(host);
        let dir = host_dir.join(network);
        for d in [
            root,
            &host_dir,
            &dir,
            &dir.join("addr"),
            &dir.join("sandbox"),
        ] {
            ensure_private_dir(d)?;
        }
        Ok(Store {
            dir,
            network: network.to_owned(),
            tag: crate::names::tag(network),
            cursors: Default::default(),
        })
    }

    /// Forget what the store keeps of an earlier boot, if it was last
    /// opened in one: every record, every reservation, the notes on the
    /// bridge and the egress table, and temporary files. None of what they
    /// name outlives a reboot (holders are processes; veths, bridges and
    /// tables are the kernel's), and a PID and start time of an earlier
    /// boot may match a process of this one. Then note this boot. A store
    /// with no note of a boot, or a note that is not a boot id, is kept
    /// whole (it may be in use) and noted. Returns whether it forgot.
    pub(crate) async fn forget_earlier_boot(&self) -> Result<bool> {
        let now = fs::read_to_string(BOOT_ID)
            .map_err(|e| io_err("read the boot id", Path::new(BOOT_ID), e))?;
        let now = now.trim();
        if self.noted_boot().as_deref() == Some(now) {
            return Ok(false);
        }
        // Under the lock, and looked at again: another process of this
        // boot may have forgotten it and started using it meanwhile.
        let _lock = self.lock().await?;
        let earlier = match self.noted_boot() {
            Some(noted) if noted == now => return Ok(false),
            Some(_) => true,
            None => false,
        };
        if earlier {
            for sub in ["sandbox", "addr"] {
                let dir = self.dir.join(sub);
                for entry in fs::read_dir(&dir).map_err(|e| io_err("list", &dir, e))? {
                    let path = entry.map_err(|e| io_err("list", &dir, e))?.path();
                    remove_entry(&path)?;
                }
            }
            for entry in fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))? {
                let entry = entry.map_err(|e| io_err("list", &self.dir, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") || BOOT_BOUND_NOTES.contains(&name.as_ref()) {
                    remove_entry(&entry.path())?;
                }
            }
        }
        let (tmp, _) = self.write_temp(now)?;
        let path = self.dir.join(BOOT_FILE);
        let renamed = fs::rename(&tmp, &path);
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed.map_err(|e| io_err("write state file", &path, e))?;
        if earlier {
            tracing::info!(store = %self.dir.display(), "forgot the sandboxes of an earlier boot");
        }
        Ok(earlier)
    }

    /// The boot id the store notes, if it holds one.
    fn noted_boot(&self) -> Option<String> {
        let path = self.dir.join(BOOT_FILE);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        if !f.metadata().ok()?.file_type().is_file() {
            return None;
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(&f, 64), &mut text).ok()?;
        let id = text.trim();
        let well_formed = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        well_formed.then(|| id.to_owned())
    }

    /// Another handle to the same store, for a reader of its records (the
    /// DNS server's thread).
    pub(crate) fn reader(&self) -> Store {
        Store {
            dir: self.dir.clone(),
            network: self.network.clone(),
            tag: self.tag.clone(),
            cursors: Default::default(),
        }
    }

    /// The directory of the sandboxes' records.
    pub(crate) fn records_dir(&self) -> PathBuf {
        self.dir.join("sandbox")
    }

    /// The store's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join("sandbox").join(name)
    }

    pub(super) fn addr_path(&self, addr: IpAddr) -> PathBuf {
        self.dir.join("addr").join(addr.to_string())
    }

    /// Write `content` to a new temporary file in the store and return its
    /// path and the file.
    pub(super) fn write_temp(&self, content: &str) -> Result<(PathBuf, File)> {
        self.write_temp_mode(content, 0o600)
    }

    /// Write `content` to a new temporary file of the store readable by
    /// all (`mode 0644`), for the caller to mount elsewhere and then
    /// remove; gc removes it if this process dies first.
    pub(crate) fn write_scratch(&self, content: &str) -> Result<PathBuf> {
        let (path, file) = self.write_temp_mode(content, 0o644)?;
        // Not subject to the umask, unlike open's mode.
        if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o644)) {
            let _ = fs::remove_file(&path);
            return Err(io_err("chmod state file", &path, e));
        }
        Ok(path)
    }

    fn write_temp_mode(&self, content: &str, mode: u32) -> Result<(PathBuf, File)> {
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(".tmp-{}-{seq}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io_err("create state file", &path, e))?;
        f.write_all(content.as_bytes())
            .map_err(|e| io_err("write state file", &path, e))?;
        Ok((path, f))
    }

    /// Publish a new record; a record of that name already there is
    /// [`Error::AlreadyExists`]. Returns it open, for [`set_done`](Store::set_done).
    pub(crate) fn create_record(&self, rec: &Record) -> Result<RecordFile> {
        let (text, head_hash) = rec.encode();
        // A reader refuses a longer file: it would be a record nobody
        // could read again (an attachment with many port mappings).
        if text.len() as u64 > RECORD_MAX {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "the record of {:?} would be {} bytes, more than a record's {RECORD_MAX} \
                     (fewer port mappings, or a shorter namespace path)",
                    rec.name,
                    text.len()
                ),
            });
        }
        let done_at = text
            .rfind("\ndone=")
            .map(|i| i + 1)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| Error::sys("encode record", &rec.name, nix::errno::Errno::EINVAL))?;
        let (tmp, file) = self.write_temp(&text)?;
        let path = self.record_path(&rec.name);
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(RecordFile {
                file,
                done_at,
                head_hash,
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                what: "sandbox",
                name: rec.name.clone(),
            }),
            Err(e) => Err(io_err("publish state file", &path, e)),
        }
    }

    /// Fill in the holder and the addresses of a record made by
    /// [`create_record`](Store::create_record): the sandbox is made.
    ///
    /// In place, with one `pwrite` of the fixed-width `done=` line (a rename
    /// over the record costs ext4 a forced allocation and a journal
    /// transaction). A crash before or after the write leaves a
    /// whole record (not done, or done); a reader that meets the line half
    /// written sees its check fail and reads again.
    pub(crate) fn set_done(&self, file: &RecordFile, rec: &Record) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let line = rec.done_line(file.head_hash);
        let path = self.record_path(&rec.name);
        file.file
            .write_all_at(&line.as_bytes()["done=".len()..], file.done_at + 5)
            .map_err(|e| io_err("write state file", &path, e))?;
        // The write is through the temporary name the file was opened by,
        // so watchers of `sandbox/` (the DNS servers of every process) hear
        // of it by this: a touch of its published name (IN_ATTRIB).
        let now = nix::sys::time::TimeSpec::UTIME_NOW;
        if let Err(errno) = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &now,
            &now,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        ) {
            tracing::warn!(path = %path.display(), %errno, "touch of a done record failed: \
                DNS servers see the sandbox at their next full read");
        }
        Ok(())
    }

    /// Read a record; `None` if there is none of that name.
    pub(crate) fn read_record(&self, name: &str) -> Result<Option<Record>> {
        // A holder line caught half-written is read again: the write is
        // one pwrite of a few bytes, over almost at once, unless its
        // writer was descheduled: then a few sleeps of a millisecond.
        let mut tries = 0;
        loop {
            match self.read_record_once(name) {
                Err(Error::StateCorrupt { reason, .. }) if reason == TORN && tries < 120 => {
                    tries += 1;
                    if tries <= 100 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                Err(Error::StateCorrupt { path, reason }) if reason == TORN => {
                    return Err(Error::StateCorrupt {
                        path,
                        reason: DONE_DAMAGED.into(),
                    })
                }
                other => return other,
            }
        }
    }

    fn read_record_once(&self, name: &str) -> Result<Option<Record>> {
        let path = self.record_path(name);
        // O_NONBLOCK: a FIFO put in its place must not hang the open (it
        // is then refused below, as not a regular file).
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::StateCorrupt {
                    path,
                    reason: "it is a symlink".into(),
                })
            }
            Err(e) => return Err(io_err("open state file", &path, e)),
        };
        // What was opened, not what the path names now: a record steers gc
        // to links, addresses and processes, so only our own is believed.
        let meta = f
            .metadata()
            .map_err(|e| io_err("inspect state file", &path, e))?;
        let refuse = |reason: String| Error::StateCorrupt {
            path: path.clone(),
            reason: format!("refusing it: {reason}"),
        };
        if !meta.file_type().is_file() {
            return Err(refuse("it is not a regular file".into()));
        }
        let me = geteuid().as_raw();
        if meta.uid() != me {
            return Err(refuse(format!(
                "it belongs to uid {}, not to uid {me} (us)",
                meta.uid()
            )));
        }
        // A record is a few hundred bytes: a larger file is no record, and
        // is not read whole.
        if meta.len() > RECORD_MAX {
            return Err(refuse(format!(
                "it is {} bytes long, more than a record's {RECORD_MAX}",
                meta.len()
            )));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&f, RECORD_MAX + 1), &mut bytes)
            .map_err(|e| io_err("read state file", &path, e))?;
        if bytes.len() as u64 > RECORD_MAX {
            return Err(refuse("it grew past a record's size while read".into()));
        }
        let text = String::from_utf8(bytes).map_err(|_| Error::StateCorrupt {
            path: path.clone(),
            reason: "it is not UTF-8 text".into(),
        })?;
        Record::decode(&text, &path, &self.network, &self.tag).map(Some)
    }

    /// Remove the record of `name` if it is still the one with `id` (not a
    /// later sandbox of the same name). A missing one is not an error.
    pub(crate) fn remove_record_if(&self, name: &str, id: &str) -> Result<()> {
        match self.read_record(name) {
            Ok(Some(rec)) if rec.id == id => self.remove_record(name),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Remove a record; a missing one is not an error.
    pub(crate) fn remove_record(&self, name: &str) -> Result<()> {
        let path = self.record_path(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove state file", &path, e)),
            _ => Ok(()),
        }
    }

    /// Hold the store's lock. Contended only for the length of an
    /// allocation, but another process holds it, so wait off the runtime.
    pub(crate) async fn lock(&self) -> Result<Flock<File>> {
        let path = self.dir.join("lock");
        let file = open_private(&path).map_err(|e| io_err("open lock file", &path, e))?;
        // flock, not fcntl(F_SETLK): a POSIX record lock would not exclude
        // two threads of this process (fcntl(2)). Each call opens the file
        // anew, so each holds its own open file description.
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
                    .await
                    .map_err(|_| {
                        Error::sys("lock", path.display().to_string(), nix::errno::Errno::EINTR)
                    })?
                    .map_err(|(_, errno)| Error::sys("lock", path.display().to_string(), errno))
            }
            Err((_, errno)) => Err(Error::sys("lock", path.display().to_string(), errno)),
        }
    }

    /// Note that podnet made the bridge, so that removing the network may
    /// delete it.
    pub(crate) fn mark_bridge_ours(&self) -> Result<()> {
        let path = self.dir.join("bridge-made-here");
        open_private(&path)
            .map(drop)
            .map_err(|e| io_err("create state file", &path, e))
    }

    /// Whether podnet made the bridge.
    pub(crate) fn bridge_is_ours(&self) -> bool {
        self.dir.join("bridge-made-here").exists()
    }

    /// Write the note `note` on the network's egress table (`host::egress`);
    /// one that is there already is fine.
    pub(crate) fn note_egress(&self, note: EgressNote) -> Result<()> {
        let path = self.dir.join(note.file());
        open_private(&path)
            .map(drop)
            .map_err(|e| io_err("create state file", &path, e))
    }

    /// Whether the note `note` on the egress table is there. Anything but
    /// a missing file is an error, not an answer: a note is never guessed.
    pub(crate) fn egress_noted(&self, note: EgressNote) -> Result<bool> {
        let path = self.dir.join(note.file());
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("look for state file", &path, e)),
        }
    }

    /// Take away the note `note` on the egress table; a missing one is
    /// fine.
    pub(crate) fn unnote_egress(&self, note: EgressNote) -> Result<()> {
        let path = self.dir.join(note.file());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove state file", &path, e)),
            _ => Ok(()),
        }
    }

    /// Write the note that the table of attachments' port mappings may
    /// exist; one that is there already is fine.
    pub(crate) fn note_attach_ports(&self) -> Result<()> {
        let path = self.dir.join(ATTACH_PORTS_NOTE);
        open_private(&path)
            .map(drop)
            .map_err(|e| io_err("create state file", &path, e))
    }

    /// Whether the note on the table of attachments' port mappings is
    /// there (anything but a missing file is an error).
    pub(crate) fn attach_ports_noted(&self) -> Result<bool> {
        let path = self.dir.join(ATTACH_PORTS_NOTE);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("look for state file", &path, e)),
        }
    }

    /// Take away the note on the table of attachments' port mappings.
    pub(crate) fn unnote_attach_ports(&self) -> Result<()> {
        let path = self.dir.join(ATTACH_PORTS_NOTE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove state file", &path, e)),
            _ => Ok(()),
        }
    }

    /// Write the note that podnet turns on `route_localnet` of the
    /// network's bridge; one that is there already is fine.
    pub(crate) fn note_localnet(&self) -> Result<()> {
        let path = self.dir.join(LOCALNET_NOTE);
        open_private(&path)
            .map(drop)
            .map_err(|e| io_err("create state file", &path, e))
    }

    /// Whether the note that podnet turned on `route_localnet` is there
    /// (anything but a missing file is an error).
    pub(crate) fn localnet_noted(&self) -> Result<bool> {
        let path = self.dir.join(LOCALNET_NOTE);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("look for state file", &path, e)),
        }
    }

    /// Take away the note on `route_localnet`; a missing one is fine.
    pub(crate) fn unnote_localnet(&self) -> Result<()> {
        let path = self.dir.join(LOCALNET_NOTE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove state file", &path, e)),
            _ => Ok(()),
        }
    }

    /// Names of the sandboxes with a record.
    pub(crate) fn sandbox_names(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("sandbox");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("list", &dir, e))? {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Delete the store: its files, its directories, and the host
    /// namespace's directory if that is left empty. The caller checks that
    /// no sandbox is left.
    pub(crate) fn destroy(&self) -> Result<()> {
        fs::remove_dir_all(&self.dir).map_err(|e| io_err("remove store", &self.dir, e))?;
        // The host namespace's directory, then the root, if nothing else is
        // in them (ENOTEMPTY: another network still has a store).
        let mut dir = self.dir.parent();
        for _ in 0..2 {
            match dir {
                Some(d) if fs::remove_dir(d).is_ok() => dir = d.parent(),
                _ => break,
            }
        }
        Ok(())
    }

    /// Remove temporary files left by processes that died while writing
    /// them (`.tmp-<pid>-<seq>`). Returns how many.
    pub(crate) fn remove_stale_temp_files(&self) -> usize {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(".tmp-")) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// The path of a sandbox's record, for reports.
    pub(crate) fn record_file(&self, name: &str) -> PathBuf {
        self.record_path(name)
    }
}

/// Remove a file, a symlink or a directory tree (never following a
/// symlink); a missing one is fine.
fn remove_entry(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove state file", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ident::Ident;
    use crate::ipam::record::DONE_WIDTH;
    use std::net::Ipv4Addr;

    /// Record "a" of no holder and no address.
    fn record_a(persistent: bool) -> Record {
        Record {
            name: "a".into(),
            id: "1-2-3".into(),
            creator: Ident { pid: 1, start: 1 },
            holder: None,
            ipv4: None,
            ipv6: None,
            veth: format!("a-{}", crate::names::tag("br0")),
            persistent,
            aliases: Vec::new(),
            attached: None,
        }
    }

    /// A fresh directory for a test's store, named by `tag`.
    pub(in crate::ipam) fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "podnet-ipam-{tag}-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn duplicate_record_is_already_exists_and_symlinked_records_are_refused() {
        let root = temp_root("rec");
        let store = Store::open(&root, "netns-test", "br0").unwrap();
        let rec = record_a(true);
        store.create_record(&rec).unwrap();
        assert!(matches!(
            store.create_record(&rec),
            Err(Error::AlreadyExists { .. })
        ));
        assert_eq!(store.read_record("a").unwrap(), Some(rec));
        std::os::unix::fs::symlink("/etc/passwd", store.dir().join("sandbox/evil")).unwrap();
        assert!(matches!(
            store.read_record("evil"),
            Err(Error::StateCorrupt { .. })
        ));
        // Nor is a FIFO waited on.
        nix::unistd::mkfifo(
            &store.dir().join("sandbox/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = store.read_record("fifo").unwrap_err();
        assert!(
            matches!(&err, Error::StateCorrupt { reason, .. } if reason.contains("regular")),
            "{err}"
        );
        store.remove_record("a").unwrap();
        store.remove_record("a").unwrap();
        assert_eq!(store.read_record("a").unwrap(), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_done_line_is_filled_in_place_and_a_torn_one_is_refused() {
        let root = temp_root("done");
        let store = Store::open(&root, "netns-test", "br0").unwrap();
        let mut rec = record_a(false);
        let file = store.create_record(&rec).unwrap();
        assert_eq!(store.read_record("a").unwrap(), Some(rec.clone()));
        let path = store.dir().join("sandbox/a");
        let len = fs::metadata(&path).unwrap().len();
        rec.holder = Some(Ident {
            pid: i32::MAX,
            start: u64::MAX,
        });
        rec.ipv4 = Some(Ipv4Addr::new(255, 255, 255, 254));
        rec.ipv6 = Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap());
        store.set_done(&file, &rec).unwrap();
        assert_eq!(store.read_record("a").unwrap(), Some(rec.clone()));
        assert_eq!(fs::metadata(&path).unwrap().len(), len, "written in place");
        // A reader that catches the line half-written: a prefix of the value.
        let text = fs::read_to_string(&path).unwrap();
        let at = text.find("done=").unwrap() + "done=".len();
        for cut in [3, 12, 30, 60, 100] {
            let mut torn = text.clone().into_bytes();
            torn[at + cut..at + DONE_WIDTH].fill(b' ');
            fs::write(&path, &torn).unwrap();
            let err = store.read_record_once("a").unwrap_err();
            assert!(
                matches!(&err, Error::StateCorrupt { reason, .. } if reason == TORN),
                "{err}"
            );
            // Torn at every read: damaged, not being written.
            let err = store.read_record("a").unwrap_err();
            assert!(
                matches!(&err, Error::StateCorrupt { reason, .. } if reason == DONE_DAMAGED),
                "{err}"
            );
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_state_dir_that_is_a_symlink_is_refused() {
        let root = temp_root("symlink");
        fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        let err = Store::open(&root.join("link"), "netns-test", "br0").unwrap_err();
        assert!(matches!(err, Error::StateCorrupt { .. }), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
